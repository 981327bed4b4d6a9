//! `&db` over WebSocket: JSON requests performed in order by one task per
//! socket, answers and watch notifications through the socket's push
//! queue (formats in the module documentation of [`super`] and in
//! `docs/db.md`).
//!
//! The protocol style is the one of `&broadcast` and the session socket
//! (DESIGN §6): a `"type"` field, an optional `"id"` echoed on the answer,
//! `{"type":"result","id"?,…}` for a success and
//! `{"type":"error","code":CODE,"message":TEXT,"id"?}` for a refusal.

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sigma_core::{Principal, Tagged, WsEndpoint, WsSender};
use sigma_http::WsMessage;
use tokio::sync::mpsc;

use sigma_store::Precondition;

use super::keys::{self, Compare};
use super::{etag, text, DbService, Fail, Scope, MAX_LIST, SOCKET_QUEUE};

/// Longest `id` string echoed back, in bytes.
pub(super) const MAX_ID_LEN: usize = 256;

/// Longest field name quoted back in an `unknown field` message, in
/// characters (the rest is cut, so an answer stays small).
const MAX_QUOTED_NAME: usize = 64;

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

/// A refused request: its failure (the code) and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    fail: Fail,
    message: Cow<'static, str>,
}

impl Refused {
    /// A malformed message (`bad_message`), saying what is wrong.
    fn bad(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            fail: Fail::BadRequest,
            message: message.into(),
        }
    }

    /// The `code` over WebSocket: a malformed message is `bad_message`
    /// (as on every socket of sigma), the rest as over HTTP.
    fn code(&self) -> &'static str {
        match self.fail {
            Fail::BadRequest => "bad_message",
            f => f.code(),
        }
    }
}

impl From<Fail> for Refused {
    fn from(fail: Fail) -> Self {
        Self {
            fail,
            message: Cow::Borrowed(fail.message()),
        }
    }
}

/// A request as the worker gets it: parsed, or the answer to a bad one
/// (with the request's `id` when it had a valid one).
type Job = Result<Request, (Option<Value>, Refused)>;

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
            WsMessage::Binary(_) => Err((None, Refused::bad("messages are JSON text frames"))),
        };
        let queue = match &self.queue {
            Some(q) => q,
            None => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return Some(self.reply(job_id(&job), Err(Fail::Internal.into())));
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
                Some(self.reply(job_id(&job), Err(Fail::Busy.into())))
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                Some(self.reply(job_id(&job), Err(Fail::Internal.into())))
            }
        }
    }
}

impl DbSocket {
    fn reply(&self, id: Option<&Value>, r: Result<Value, Refused>) -> Tagged<WsMessage> {
        Tagged::new(self.identity.clone(), text(answer_text(id, r)))
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

fn job_id(job: &Job) -> Option<&Value> {
    match job {
        Ok(r) => r.id.as_ref(),
        Err((id, _)) => id.as_ref(),
    }
}

/// `{"type":"result","id"?:ID,...}` or
/// `{"type":"error","code":CODE,"message":TEXT,"id"?:ID}`.
fn answer_text(id: Option<&Value>, r: Result<Value, Refused>) -> String {
    let mut fields = match r {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => Map::new(),
        Err(refused) => {
            let mut m = Map::new();
            m.insert("code".into(), Value::from(refused.code()));
            m.insert("message".into(), Value::from(refused.message.into_owned()));
            m.insert("type".into(), Value::from("error"));
            m
        }
    };
    fields
        .entry("type")
        .or_insert_with(|| Value::from("result"));
    if let Some(id) = id {
        fields.insert("id".into(), id.clone());
    }
    Value::Object(fields).to_string()
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
                let r = perform(&svc, &scope, &identity, &push, socket, req)
                    .await
                    .map_err(Refused::from);
                (id, r)
            }
            Err((id, refused)) => (id, Err(refused)),
        };
        let msg = Tagged::new(identity.clone(), text(answer_text(id.as_ref(), result)));
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
    id: Option<Value>,
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

/// Every field a request may have; each `type` takes some of them
/// ([`allowed`]) and refuses the others.
const FIELDS: [&str; 11] = [
    "type",
    "id",
    "key",
    "value",
    "value_base64",
    "content_type",
    "if_match",
    "if_none_match",
    "prefix",
    "after",
    "limit",
];

/// The fields besides `type` and `id` that requests of type `ty` take.
fn allowed(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "get" => &["key"],
        "put" => &[
            "key",
            "value",
            "value_base64",
            "content_type",
            "if_match",
            "if_none_match",
        ],
        "delete" => &["key", "if_match", "if_none_match"],
        "list" => &["prefix", "after", "limit"],
        "watch" | "unwatch" => &["prefix"],
        _ => return None,
    })
}

/// `name` quoted for an error message, cut to [`MAX_QUOTED_NAME`]
/// characters.
fn quoted(name: &str) -> String {
    let mut s: String = name.chars().take(MAX_QUOTED_NAME).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    Value::from(s).to_string()
}

/// The request's `id`: absent, a number, or a string of at most
/// [`MAX_ID_LEN`] bytes.
fn valid_id(id: Option<&Value>) -> Result<Option<Value>, Refused> {
    match id {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(v @ Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(v.clone())),
        Some(Value::String(_)) => Err(Refused::bad("\"id\" is longer than 256 bytes")),
        Some(_) => Err(Refused::bad("\"id\" must be a string or a number")),
    }
}

/// Parses and validates a request (without touching the store).
fn parse(t: &str, svc: &DbService) -> Job {
    let Ok(v) = serde_json::from_str::<Value>(t) else {
        return Err((None, Refused::bad("the message is not JSON")));
    };
    let Value::Object(obj) = v else {
        return Err((None, Refused::bad("a message is a JSON object")));
    };
    let id = valid_id(obj.get("id")).map_err(|r| (None, r))?;
    let op = op(&obj, svc).map_err(|r| (id.clone(), r))?;
    Ok(Request { id, op })
}

fn unknown_type(ty: &str) -> Refused {
    Refused::bad(format!(
        "unknown type {} (get, put, delete, list, watch, unwatch)",
        quoted(ty)
    ))
}

/// A string field (absent: `None`).
fn string(obj: &Map<String, Value>, name: &'static str) -> Result<Option<String>, Refused> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refused::bad(format!("\"{name}\" must be a string"))),
    }
}

fn op(obj: &Map<String, Value>, svc: &DbService) -> Result<Op, Refused> {
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(Refused::bad("\"type\" must be a string")),
        None if obj.contains_key("op") => {
            return Err(Refused::bad(
                "\"type\" is missing (the field is \"type\", not \"op\")",
            ))
        }
        None => return Err(Refused::bad("\"type\" is missing")),
    };
    let Some(takes) = allowed(ty) else {
        return Err(unknown_type(ty));
    };
    // Fields a type does not take are refused rather than ignored.
    for name in obj.keys() {
        let name = name.as_str();
        if name == "type" || name == "id" || takes.contains(&name) {
            continue;
        }
        return Err(Refused::bad(if FIELDS.contains(&name) {
            format!("{} is not a field of {ty}", quoted(name))
        } else {
            format!("unknown field {}", quoted(name))
        }));
    }
    let max_key = svc.config.max_key;
    let key = || -> Result<String, Refused> {
        let k = string(obj, "key")?.ok_or_else(|| Refused::bad("\"key\" is missing"))?;
        keys::check_key(&k, max_key)?;
        Ok(k)
    };
    let prefix = || -> Result<String, Refused> {
        let p = string(obj, "prefix")?.unwrap_or_default();
        keys::check_prefix(&p, max_key)?;
        Ok(p)
    };
    let pre = || -> Result<Precondition, Refused> {
        let tags = |name, compare| -> Result<_, Refused> {
            string(obj, name)?
                .map(|s| {
                    keys::parse_ws_tags(&s, compare).map_err(|_| {
                        Refused::bad(format!("\"{name}\" is not \"*\" or a list of ETags"))
                    })
                })
                .transpose()
        };
        Ok(Precondition {
            if_match: tags("if_match", Compare::Strong)?,
            if_none_match: tags("if_none_match", Compare::Weak)?,
        })
    };
    Ok(match ty {
        "get" => Op::Get { key: key()? },
        "put" => {
            let key = key()?;
            let (value, default_ct) = match (string(obj, "value")?, string(obj, "value_base64")?) {
                (Some(v), None) => (v.into_bytes(), "text/plain; charset=utf-8"),
                (None, Some(b)) => (
                    BASE64
                        .decode(b)
                        .map_err(|_| Refused::bad("\"value_base64\" is not base64"))?,
                    "application/octet-stream",
                ),
                (None, None) => {
                    return Err(Refused::bad("\"value\" or \"value_base64\" is missing"))
                }
                (Some(_), Some(_)) => {
                    return Err(Refused::bad(
                        "\"value\" and \"value_base64\" cannot both be given",
                    ))
                }
            };
            if value.len() > svc.config.max_value {
                return Err(Fail::TooLarge.into());
            }
            let content_type = match string(obj, "content_type")? {
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
                pre: pre()?,
            }
        }
        "delete" => Op::Delete {
            key: key()?,
            pre: pre()?,
        },
        "list" => {
            let limit = match obj.get("limit") {
                None => MAX_LIST,
                Some(n) => n
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or_else(|| {
                        Refused::bad(format!("\"limit\" must be an integer from 1 to {MAX_LIST}"))
                    })?,
            };
            let after = match string(obj, "after")? {
                Some(a) => {
                    keys::check_prefix(&a, max_key)?;
                    Some(a)
                }
                None => None,
            };
            Op::List {
                prefix: prefix()?,
                after,
                limit,
            }
        }
        "watch" => Op::Watch { prefix: prefix()? },
        "unwatch" => Op::Unwatch { prefix: prefix()? },
        _ => return Err(unknown_type(ty)),
    })
}

/// Performs one request; the result's fields besides `type` and `id`.
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

    /// The answer to a request that does not parse, as JSON.
    fn refusal(t: &str) -> Value {
        match parse(t, &svc()) {
            Ok(_) => panic!("{t} parsed"),
            Err((id, r)) => serde_json::from_str(&answer_text(id.as_ref(), Err(r))).unwrap(),
        }
    }

    /// `(id, code)` of a refused request.
    fn code(t: &str) -> (Value, String) {
        let v = refusal(t);
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        (v["id"].clone(), v["code"].as_str().unwrap().to_owned())
    }

    fn c(id: Value, code: &str) -> (Value, String) {
        (id, code.to_owned())
    }

    #[test]
    fn bad_requests_are_refused_with_their_id() {
        let bad = "bad_message";
        assert_eq!(code("nope"), c(Value::Null, bad));
        assert_eq!(code("[1]"), c(Value::Null, bad));
        assert_eq!(code(r#"{"type":"get","id":3}"#), c(json!(3), bad));
        assert_eq!(
            code(r#"{"type":"get","key":"k","id":"a","bogus":1}"#),
            c(json!("a"), bad)
        );
        assert_eq!(
            code(r#"{"type":"get","key":"k","id":[1]}"#),
            c(Value::Null, bad)
        );
        assert_eq!(
            code(r#"{"type":"get","key":"k","id":null}"#),
            c(Value::Null, bad)
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            code(&format!(r#"{{"type":"get","key":"k","id":"{long}"}}"#)),
            c(Value::Null, bad)
        );
        let longest = "x".repeat(MAX_ID_LEN);
        assert!(parse(
            &format!(r#"{{"type":"get","key":"k","id":"{longest}"}}"#),
            &svc()
        )
        .is_ok());
        assert_eq!(code(r#"{"type":"frob","id":1}"#), c(json!(1), bad));
        assert_eq!(code(r#"{"type":7,"id":1}"#), c(json!(1), bad));
        assert_eq!(code(r#"{"type":"get","key":7,"id":1}"#), c(json!(1), bad));
        assert_eq!(
            code(r#"{"type":"get","key":"..","id":1}"#),
            c(json!(1), "invalid_key")
        );
        assert_eq!(
            code(r#"{"type":"get","key":"123456789","id":1}"#),
            c(json!(1), "invalid_key")
        );
        assert_eq!(
            code(r#"{"type":"put","key":"k","value":"123456789","id":1}"#),
            c(json!(1), "too_large")
        );
        assert_eq!(code(r#"{"type":"put","key":"k","id":1}"#), c(json!(1), bad));
        assert_eq!(
            code(r#"{"type":"put","key":"k","value":"a","value_base64":"YQ==","id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"put","key":"k","value_base64":"%%","id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"put","key":"k","value":"a","if_match":"x","id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"put","key":"k","value":"a","content_type":"\u0001","id":1}"#),
            c(json!(1), "invalid_content_type")
        );
        assert_eq!(
            code(r#"{"type":"get","key":"k","prefix":"p","id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"list","limit":0,"id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"list","limit":1.5,"id":1}"#),
            c(json!(1), bad)
        );
        assert_eq!(
            code(r#"{"type":"watch","prefix":"123456789","id":1}"#),
            c(json!(1), "invalid_key")
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let message = |t: &str| refusal(t)["message"].as_str().unwrap().to_owned();
        // An old-style request names the field it should have used.
        let m = message(r#"{"op":"get","key":"k","id":1}"#);
        assert!(m.contains("\"type\""), "{m}");
        assert!(m.contains("\"op\""), "{m}");
        assert_eq!(
            refusal(r#"{"op":"get","key":"k","id":1}"#),
            json!({"type": "error", "code": "bad_message", "message": m, "id": 1})
        );
        assert!(message(r#"{"type":"get"}"#).contains("\"key\""));
        assert!(message(r#"{"type":"get","key":"k","prefix":""}"#).contains("\"prefix\""));
        // A long unknown name is quoted cut short.
        let name = "n".repeat(10_000);
        let m = message(&format!(r#"{{"type":"get","key":"k","{name}":1}}"#));
        assert!(m.starts_with("unknown field"), "{m}");
        assert!(m.len() < 2 * MAX_QUOTED_NAME, "{m}");
        let m = message(&format!(r#"{{"type":"{name}"}}"#));
        assert!(m.len() < 2 * MAX_QUOTED_NAME + 64, "{m}");
        // No id: none on the answer.
        assert!(refusal("{}").get("id").is_none());
    }

    #[test]
    fn good_requests_parse() {
        let s = svc();
        for t in [
            r#"{"type":"get","key":"k","id":1}"#,
            r#"{"type":"get","key":"k","id":-1.5}"#,
            r#"{"type":"put","key":"k","value":"v","if_match":"\"v3\"","id":1}"#,
            r#"{"type":"put","key":"k","value_base64":"AAE=","if_none_match":"*"}"#,
            r#"{"type":"delete","key":"k","if_match":"v3","id":"x"}"#,
            r#"{"type":"list","prefix":"a/","after":"a/1","limit":5,"id":1}"#,
            r#"{"type":"list","id":1}"#,
            r#"{"type":"watch","prefix":"","id":1}"#,
            r#"{"type":"unwatch","prefix":"a","id":1}"#,
        ] {
            assert!(parse(t, &s).is_ok(), "{t}");
        }
    }

    #[test]
    fn answers() {
        let answer = |id: Option<Value>, r| -> Value {
            serde_json::from_str(&answer_text(id.as_ref(), r)).unwrap()
        };
        assert_eq!(
            answer(Some(json!(1)), Ok(Value::Null)),
            json!({"type": "result", "id": 1})
        );
        assert_eq!(answer(None, Ok(Value::Null)), json!({"type": "result"}));
        assert_eq!(
            answer(Some(json!("a")), Ok(json!({"etag": "\"v1\""}))),
            json!({"type": "result", "id": "a", "etag": "\"v1\""})
        );
        assert_eq!(
            answer(None, Err(Fail::Busy.into())),
            json!({"type": "error", "code": "busy", "message": Fail::Busy.message()})
        );
        assert_eq!(
            answer(Some(json!(2)), Err(Fail::NotFound.into())),
            json!({"type": "error", "code": "not_found", "message": "no such key", "id": 2})
        );
    }
}
