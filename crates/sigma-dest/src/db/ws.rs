//! `&db` over WebSocket: JSON requests performed in order by one task per
//! socket, replies and watch notifications through the socket's push
//! queue (formats in the module documentation of [`super`]).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sigma_core::{Principal, Tagged, WsEndpoint, WsSender};
use sigma_http::WsMessage;
use tokio::sync::mpsc;

use sigma_store::Precondition;

use super::keys::{self, Compare};
use super::{etag, text, DbService, Fail, Scope, MAX_LIST, SOCKET_QUEUE};

/// Longest `id` string echoed back.
const MAX_ID_LEN: usize = 256;

/// One socket's endpoint.
struct DbSocket {
    svc: Arc<DbService>,
    scope: Arc<Scope>,
    identity: Principal,
    push: WsSender,
    socket: u64,
    /// The worker's queue, started with the first request.
    queue: Option<mpsc::Sender<Job>>,
}

/// A request as the worker gets it: parsed, or the reply to a bad one.
type Job = Result<Request, (Value, Fail)>;

/// The endpoint for a socket authenticated as `identity`.
pub(super) fn open(
    svc: &Arc<DbService>,
    scope: &Arc<Scope>,
    identity: &Principal,
    push: WsSender,
) -> Box<dyn WsEndpoint> {
    Box::new(DbSocket {
        svc: Arc::clone(svc),
        scope: Arc::clone(scope),
        identity: identity.clone(),
        push,
        socket: svc.watches.socket_id(),
        queue: None,
    })
}

impl WsEndpoint for DbSocket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        let job = match &msg.msg {
            WsMessage::Text(t) => parse(t.as_str(), &self.svc),
            WsMessage::Binary(_) => Err((Value::Null, Fail::BadRequest)),
        };
        let queue = match &self.queue {
            Some(q) => q,
            None => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return Some(self.reply(job_id(&job), Err(Fail::Internal)));
                };
                let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
                rt.spawn(worker(
                    Arc::clone(&self.svc),
                    Arc::clone(&self.scope),
                    self.identity.clone(),
                    self.push.clone(),
                    self.socket,
                    rx,
                ));
                self.queue.insert(tx)
            }
        };
        match queue.try_send(job) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(job)) => {
                Some(self.reply(job_id(&job), Err(Fail::Busy)))
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                Some(self.reply(job_id(&job), Err(Fail::Internal)))
            }
        }
    }
}

impl DbSocket {
    fn reply(&self, id: Value, r: Result<Value, Fail>) -> Tagged<WsMessage> {
        Tagged::new(self.identity.clone(), text(reply_text(id, r)))
    }
}

impl Drop for DbSocket {
    fn drop(&mut self) {
        // The worker forgets the socket's watches too, after its last job.
        if let Some(ns) = self.scope.namespace(&self.identity) {
            self.svc.watches.forget(&ns, self.socket);
        }
    }
}

fn job_id(job: &Job) -> Value {
    match job {
        Ok(r) => r.id.clone(),
        Err((id, _)) => id.clone(),
    }
}

/// `{"id":N,"ok":true,...}` or `{"id":N,"ok":false,"error":CODE}`.
fn reply_text(id: Value, r: Result<Value, Fail>) -> String {
    let v = match r {
        Ok(Value::Object(mut fields)) => {
            fields.insert("id".into(), id);
            fields.insert("ok".into(), Value::Bool(true));
            Value::Object(fields)
        }
        Ok(_) => json!({"id": id, "ok": true}),
        Err(f) => json!({"id": id, "ok": false, "error": f.code()}),
    };
    v.to_string()
}

/// Performs the socket's requests in order until the socket is gone.
async fn worker(
    svc: Arc<DbService>,
    scope: Arc<Scope>,
    identity: Principal,
    push: WsSender,
    socket: u64,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(job) = rx.recv().await {
        let (id, result) = match job {
            Ok(req) => {
                let id = req.id.clone();
                (
                    id,
                    perform(&svc, &scope, &identity, &push, socket, req).await,
                )
            }
            Err((id, f)) => (id, Err(f)),
        };
        let msg = Tagged::new(identity.clone(), text(reply_text(id, result)));
        if push.push(msg).is_err() {
            // Gone, or too slow and being closed.
            break;
        }
    }
    if let Some(ns) = scope.namespace(&identity) {
        svc.watches.forget(&ns, socket);
    }
}

/// A request over WebSocket, validated.
struct Request {
    id: Value,
    op: Op,
}

enum Op {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Vec<u8>,
        content_type: String,
        pre: Precondition,
    },
    Delete {
        key: String,
        pre: Precondition,
    },
    List {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
    Watch {
        prefix: String,
    },
    Unwatch {
        prefix: String,
    },
}

/// The JSON of a request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    op: String,
    #[serde(default)]
    id: Value,
    key: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    content_type: Option<String>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<u64>,
}

/// Just the `id` of a request that does not parse, to answer it.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Value,
}

fn valid_id(id: Value) -> Result<Value, Fail> {
    match &id {
        Value::Null | Value::Number(_) => Ok(id),
        Value::String(s) if s.len() <= MAX_ID_LEN => Ok(id),
        _ => Err(Fail::BadRequest),
    }
}

/// Parses and validates a request (without touching the store).
fn parse(t: &str, svc: &DbService) -> Job {
    let raw: Raw = match serde_json::from_str(t) {
        Ok(r) => r,
        Err(_) => {
            let id = serde_json::from_str::<IdOnly>(t)
                .ok()
                .and_then(|i| valid_id(i.id).ok())
                .unwrap_or(Value::Null);
            return Err((id, Fail::BadRequest));
        }
    };
    let id = valid_id(raw.id.clone()).map_err(|f| (Value::Null, f))?;
    let op = op(raw, svc).map_err(|f| (id.clone(), f))?;
    Ok(Request { id, op })
}

fn op(raw: Raw, svc: &DbService) -> Result<Op, Fail> {
    let max_key = svc.config.max_key;
    let key = |k: Option<String>| -> Result<String, Fail> {
        let k = k.ok_or(Fail::BadRequest)?;
        keys::check_key(&k, max_key)?;
        Ok(k)
    };
    let prefix = |p: Option<String>| -> Result<String, Fail> {
        let p = p.unwrap_or_default();
        keys::check_prefix(&p, max_key)?;
        Ok(p)
    };
    let pre = |m: Option<String>, n: Option<String>| -> Result<Precondition, Fail> {
        Ok(Precondition {
            if_match: m
                .map(|s| keys::parse_ws_tags(&s, Compare::Strong))
                .transpose()?,
            if_none_match: n
                .map(|s| keys::parse_ws_tags(&s, Compare::Weak))
                .transpose()?,
        })
    };
    // Fields an op does not take are refused rather than ignored.
    let unused = |fields: &[bool]| {
        if fields.iter().any(|&set| set) {
            Err(Fail::BadRequest)
        } else {
            Ok(())
        }
    };
    Ok(match raw.op.as_str() {
        "get" => {
            unused(&[
                raw.value.is_some(),
                raw.value_base64.is_some(),
                raw.content_type.is_some(),
                raw.if_match.is_some(),
                raw.if_none_match.is_some(),
                raw.prefix.is_some(),
                raw.after.is_some(),
                raw.limit.is_some(),
            ])?;
            Op::Get { key: key(raw.key)? }
        }
        "put" => {
            unused(&[
                raw.prefix.is_some(),
                raw.after.is_some(),
                raw.limit.is_some(),
            ])?;
            let key = key(raw.key)?;
            let (value, default_ct) = match (raw.value, raw.value_base64) {
                (Some(v), None) => (v.into_bytes(), "text/plain; charset=utf-8"),
                (None, Some(b)) => (
                    BASE64.decode(b).map_err(|_| Fail::BadRequest)?,
                    "application/octet-stream",
                ),
                _ => return Err(Fail::BadRequest),
            };
            if value.len() > svc.config.max_value {
                return Err(Fail::TooLarge);
            }
            let content_type = match raw.content_type {
                Some(ct) if !ct.is_empty() => {
                    keys::check_content_type(ct.as_bytes())?;
                    ct
                }
                _ => default_ct.to_owned(),
            };
            Op::Put {
                key,
                value,
                content_type,
                pre: pre(raw.if_match, raw.if_none_match)?,
            }
        }
        "delete" => {
            unused(&[
                raw.value.is_some(),
                raw.value_base64.is_some(),
                raw.content_type.is_some(),
                raw.prefix.is_some(),
                raw.after.is_some(),
                raw.limit.is_some(),
            ])?;
            Op::Delete {
                key: key(raw.key)?,
                pre: pre(raw.if_match, raw.if_none_match)?,
            }
        }
        "list" => {
            unused(&[
                raw.key.is_some(),
                raw.value.is_some(),
                raw.value_base64.is_some(),
                raw.content_type.is_some(),
                raw.if_match.is_some(),
                raw.if_none_match.is_some(),
            ])?;
            let limit = match raw.limit {
                None => MAX_LIST,
                Some(n) => usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or(Fail::BadRequest)?,
            };
            let after = match raw.after {
                Some(a) => {
                    keys::check_prefix(&a, max_key)?;
                    Some(a)
                }
                None => None,
            };
            Op::List {
                prefix: prefix(raw.prefix)?,
                after,
                limit,
            }
        }
        "watch" | "unwatch" => {
            unused(&[
                raw.key.is_some(),
                raw.value.is_some(),
                raw.value_base64.is_some(),
                raw.content_type.is_some(),
                raw.if_match.is_some(),
                raw.if_none_match.is_some(),
                raw.after.is_some(),
                raw.limit.is_some(),
            ])?;
            let prefix = prefix(raw.prefix)?;
            if raw.op == "watch" {
                Op::Watch { prefix }
            } else {
                Op::Unwatch { prefix }
            }
        }
        _ => return Err(Fail::BadRequest),
    })
}

/// Performs one request; the reply's fields besides `id` and `ok`.
async fn perform(
    svc: &Arc<DbService>,
    scope: &Scope,
    identity: &Principal,
    push: &WsSender,
    socket: u64,
    req: Request,
) -> Result<Value, Fail> {
    let ns = scope.namespace(identity).ok_or(Fail::Unauthenticated)?;
    if matches!(req.op, Op::Put { .. } | Op::Delete { .. }) && !scope.may_write(identity) {
        return Err(Fail::Forbidden);
    }
    match req.op {
        Op::Get { key } => {
            let k = key.clone();
            let entry = svc
                .blocking(move |s| s.store.kv_get(&ns, &k).map_err(|e| super::store_fail(&e)))
                .await?
                .ok_or(Fail::NotFound)?;
            let mut v = json!({
                "key": key,
                "etag": etag(entry.version),
                "content_type": entry.content_type,
            });
            let value = match String::from_utf8(entry.value) {
                Ok(s) => ("value", Value::String(s)),
                Err(e) => ("value_base64", Value::String(BASE64.encode(e.into_bytes()))),
            };
            if let Value::Object(fields) = &mut v {
                fields.insert(value.0.into(), value.1);
            }
            Ok(v)
        }
        Op::Put {
            key,
            value,
            content_type,
            pre,
        } => {
            let p = svc
                .write(move |s| s.put_now(&ns, &key, &value, &content_type, &pre))
                .await?;
            Ok(json!({"etag": etag(p.version), "created": p.created}))
        }
        Op::Delete { key, pre } => {
            if svc.write(move |s| s.delete_now(&ns, &key, &pre)).await? {
                Ok(Value::Null)
            } else {
                Err(Fail::NotFound)
            }
        }
        Op::List {
            prefix,
            after,
            limit,
        } => {
            let want = limit.saturating_add(1);
            let mut items = svc
                .blocking(move |s| {
                    s.store
                        .kv_list(&ns, &prefix, after.as_deref(), want)
                        .map_err(|e| super::store_fail(&e))
                })
                .await?;
            let more = items.len() > limit;
            items.truncate(limit);
            let items: Vec<_> = items
                .iter()
                .map(|m| json!({"key": m.key, "etag": etag(m.version), "size": m.size}))
                .collect();
            Ok(json!({"items": items, "more": more}))
        }
        Op::Watch { prefix } => {
            svc.watches.watch(&ns, socket, identity, push, &prefix)?;
            Ok(Value::Null)
        }
        Op::Unwatch { prefix } => {
            svc.watches.unwatch(&ns, socket, &prefix);
            Ok(Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::config::DbConfig;
    use sigma_store::RedbStore;

    fn svc() -> Arc<DbService> {
        let store: Arc<dyn sigma_store::Store> = Arc::new(RedbStore::in_memory().unwrap());
        DbService::new(
            store,
            &DbConfig {
                max_value: 8,
                max_key: 8,
            },
        )
    }

    fn code(t: &str) -> (Value, &'static str) {
        match parse(t, &svc()) {
            Ok(_) => panic!("{t} parsed"),
            Err((id, f)) => (id, f.code()),
        }
    }

    #[test]
    fn bad_requests_are_refused_with_their_id() {
        assert_eq!(code("nope"), (Value::Null, "bad_request"));
        assert_eq!(code(r#"{"op":"get","id":3}"#), (json!(3), "bad_request"));
        assert_eq!(
            code(r#"{"op":"get","key":"k","id":"a","bogus":1}"#),
            (json!("a"), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"get","key":"k","id":[1]}"#),
            (Value::Null, "bad_request")
        );
        assert_eq!(code(r#"{"op":"frob","id":1}"#), (json!(1), "bad_request"));
        assert_eq!(
            code(r#"{"op":"get","key":"..","id":1}"#),
            (json!(1), "invalid_key")
        );
        assert_eq!(
            code(r#"{"op":"get","key":"123456789","id":1}"#),
            (json!(1), "invalid_key")
        );
        assert_eq!(
            code(r#"{"op":"put","key":"k","value":"123456789","id":1}"#),
            (json!(1), "too_large")
        );
        assert_eq!(
            code(r#"{"op":"put","key":"k","id":1}"#),
            (json!(1), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"put","key":"k","value":"a","value_base64":"YQ==","id":1}"#),
            (json!(1), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"put","key":"k","value":"a","if_match":"x","id":1}"#),
            (json!(1), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"put","key":"k","value":"a","content_type":"\u0001","id":1}"#),
            (json!(1), "invalid_content_type")
        );
        assert_eq!(
            code(r#"{"op":"get","key":"k","prefix":"p","id":1}"#),
            (json!(1), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"list","limit":0,"id":1}"#),
            (json!(1), "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"watch","prefix":"123456789","id":1}"#),
            (json!(1), "invalid_key")
        );
    }

    #[test]
    fn good_requests_parse() {
        let s = svc();
        for t in [
            r#"{"op":"get","key":"k","id":1}"#,
            r#"{"op":"put","key":"k","value":"v","if_match":"\"v3\"","id":1}"#,
            r#"{"op":"put","key":"k","value_base64":"AAE=","if_none_match":"*"}"#,
            r#"{"op":"delete","key":"k","if_match":"v3","id":"x"}"#,
            r#"{"op":"list","prefix":"a/","after":"a/1","limit":5,"id":1}"#,
            r#"{"op":"list","id":1}"#,
            r#"{"op":"watch","prefix":"","id":1}"#,
            r#"{"op":"unwatch","prefix":"a","id":1}"#,
        ] {
            assert!(parse(t, &s).is_ok(), "{t}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            serde_json::from_str::<Value>(&reply_text(json!(1), Ok(Value::Null))).unwrap(),
            json!({"id": 1, "ok": true})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&reply_text(json!("a"), Ok(json!({"etag": "\"v1\""}))))
                .unwrap(),
            json!({"id": "a", "ok": true, "etag": "\"v1\""})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&reply_text(Value::Null, Err(Fail::Busy))).unwrap(),
            json!({"id": null, "ok": false, "error": "busy"})
        );
    }
}
