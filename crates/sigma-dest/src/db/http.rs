//! `&db` over HTTP (DESIGN §9): `GET`/`HEAD`/`PUT`/`DELETE <route>/<key>`
//! and `GET <route>/?prefix=P`. Everything that touches the store is
//! answered later, from the blocking pool; input errors are answered at
//! once. Every answer carries the request's identity.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use sigma_core::response::{json_error, json_error_message, json_response};
use sigma_core::{Handled, HttpRequest, Tagged};
use sigma_http::{Header, Method, RequestHead, Response};

use sigma_store::{KvTags, Precondition};

use super::keys::{self, Compare};
use super::{etag, DbService, Fail, Scope, MAX_LIST};

/// The content type of a value stored without one.
const DEFAULT_CONTENT_TYPE: &[u8] = b"application/octet-stream";

/// What a request addresses.
enum Target {
    /// `<route>` or `<route>/`, with the query.
    Collection(Bytes),
    /// `<route>/<key>`, the key decoded.
    Key(String),
}

/// Answers one request for the route whose path (without a trailing `/`)
/// is `prefix`.
pub(super) fn handle(
    svc: &Arc<DbService>,
    prefix: &str,
    scope: &Scope,
    req: Tagged<HttpRequest>,
) -> Handled {
    let identity = req.identity;
    let ready = |resp: Response| Handled::Ready(Tagged::new(identity.clone(), resp));
    let Some(ns) = scope.namespace(&identity) else {
        let mut r = error(Fail::Unauthenticated);
        r.headers.push(Header::new(
            &b"WWW-Authenticate"[..],
            &b"Bearer realm=\"sigma\""[..],
        ));
        return ready(r);
    };
    let HttpRequest { head, body } = req.msg;
    let target = match target(&head, prefix, svc.config.max_key) {
        Ok(t) => t,
        Err(f) => return ready(error(f)),
    };
    let svc = Arc::clone(svc);
    let fut = match (head.method, target) {
        (Method::Get | Method::Head, Target::Collection(query)) => {
            let params = match list_params(&query, svc.config.max_key) {
                Ok(l) => l,
                Err(f) => return ready(error(f)),
            };
            let route = prefix.to_owned();
            Box::pin(async move { list(&svc, ns, params, &route).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
        }
        (_, Target::Collection(_)) => return ready(not_allowed("GET, HEAD")),
        (Method::Get | Method::Head, Target::Key(key)) => {
            let pre = match preconditions(&head) {
                Ok(p) => p,
                Err(f) => return ready(error(f)),
            };
            Box::pin(async move { get(&svc, ns, key, pre).await })
        }
        (Method::Put | Method::Delete, Target::Key(_)) if !scope.may_write(&identity) => {
            return ready(error(Fail::Forbidden))
        }
        (Method::Put, Target::Key(key)) => {
            if body.len() > svc.config.max_value {
                return ready(error(Fail::TooLarge));
            }
            let ct = match head.header("content-type") {
                Some(h) if !h.value.is_empty() => h.value.clone(),
                _ => Bytes::from_static(DEFAULT_CONTENT_TYPE),
            };
            // Printable ASCII only, so it is also valid UTF-8.
            let ct = match keys::check_content_type(&ct).map(|()| String::from_utf8(ct.to_vec())) {
                Ok(Ok(ct)) => ct,
                _ => return ready(error(Fail::InvalidContentType)),
            };
            let pre = match preconditions(&head) {
                Ok(p) => p,
                Err(f) => return ready(error(f)),
            };
            Box::pin(async move { put(&svc, ns, key, body, ct, pre).await })
        }
        (Method::Delete, Target::Key(key)) => {
            let pre = match preconditions(&head) {
                Ok(p) => p,
                Err(f) => return ready(error(f)),
            };
            Box::pin(async move { delete(&svc, ns, key, pre).await })
        }
        (_, Target::Key(_)) => return ready(not_allowed("GET, HEAD, PUT, DELETE")),
    };
    Handled::Later(Box::pin(async move { Tagged::new(identity, fut.await) }))
}

/// The collection or the key a request's path names.
fn target(head: &RequestHead, prefix: &str, max_key: usize) -> Result<Target, Fail> {
    let path = head.path();
    // The route table matched `prefix` at a segment boundary.
    let rest = path.strip_prefix(prefix.as_bytes()).ok_or(Fail::NotFound)?;
    let raw = match rest {
        b"" | b"/" => {
            let query = match head.target.iter().position(|&b| b == b'?') {
                Some(i) => head.target.slice(i.saturating_add(1)..),
                None => Bytes::new(),
            };
            return Ok(Target::Collection(query));
        }
        _ => rest.strip_prefix(b"/").ok_or(Fail::NotFound)?,
    };
    let key = keys::decode_path(raw).ok_or(Fail::InvalidKey)?;
    keys::check_key(&key, max_key)?;
    Ok(Target::Key(key))
}

/// A listing's parameters.
struct ListParams {
    prefix: String,
    after: Option<String>,
    limit: usize,
}

fn list_params(query: &[u8], max_key: usize) -> Result<ListParams, Fail> {
    let (mut prefix, mut after, mut limit) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query) {
        match &*k {
            "prefix" if prefix.is_none() => prefix = Some(v.into_owned()),
            "after" if after.is_none() => after = Some(v.into_owned()),
            "limit" if limit.is_none() => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST).contains(n))
                    .ok_or(Fail::BadRequest)?;
                limit = Some(n);
            }
            _ => {}
        }
    }
    let prefix = prefix.unwrap_or_default();
    keys::check_prefix(&prefix, max_key)?;
    if let Some(a) = &after {
        keys::check_prefix(a, max_key)?;
    }
    Ok(ListParams {
        prefix,
        after,
        limit: limit.unwrap_or(MAX_LIST),
    })
}

/// `If-Match` and `If-None-Match`.
fn preconditions(head: &RequestHead) -> Result<Precondition, Fail> {
    let field = |name: &str, compare| -> Result<Option<KvTags>, Fail> {
        let mut values = head
            .headers
            .iter()
            .filter(|h| h.is(name))
            .map(|h| &h.value[..])
            .peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        keys::parse_tags(values, compare).map(Some)
    };
    Ok(Precondition {
        if_match: field("if-match", Compare::Strong)?,
        if_none_match: field("if-none-match", Compare::Weak)?,
    })
}

async fn get(svc: &Arc<DbService>, ns: String, key: String, pre: Precondition) -> Response {
    let entry = svc
        .blocking(move |s| s.store.kv_get(&ns, &key).map_err(|e| super::store_fail(&e)))
        .await;
    let entry = match entry {
        Ok(e) => e,
        Err(f) => return error(f),
    };
    let version = entry.as_ref().map(|e| e.version);
    if let Some(m) = &pre.if_match {
        if !m.matches(version) {
            return error(Fail::PreconditionFailed);
        }
    }
    let Some(entry) = entry else {
        return error(Fail::NotFound);
    };
    let tag = Header::new(&b"ETag"[..], etag(entry.version));
    if pre
        .if_none_match
        .as_ref()
        .is_some_and(|n| n.matches(version))
    {
        return Response::new(304, vec![tag, cache_control()], Bytes::new());
    }
    Response::new(
        200,
        vec![
            Header::new(&b"Content-Type"[..], entry.content_type),
            tag,
            cache_control(),
            Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
            Header::new(&b"Content-Security-Policy"[..], &b"sandbox"[..]),
        ],
        entry.value,
    )
}

async fn put(
    svc: &Arc<DbService>,
    ns: String,
    key: String,
    value: Bytes,
    content_type: String,
    pre: Precondition,
) -> Response {
    let put = svc
        .write(move |s| s.put_now(&ns, &key, &value, &content_type, &pre))
        .await;
    match put {
        Ok(p) => Response::new(
            if p.created { 201 } else { 200 },
            vec![Header::new(&b"ETag"[..], etag(p.version))],
            Bytes::new(),
        ),
        Err(f) => error(f),
    }
}

async fn delete(svc: &Arc<DbService>, ns: String, key: String, pre: Precondition) -> Response {
    match svc.write(move |s| s.delete_now(&ns, &key, &pre)).await {
        Ok(true) => Response::new(204, Vec::new(), Bytes::new()),
        Ok(false) => error(Fail::NotFound),
        Err(f) => error(f),
    }
}

async fn list(svc: &Arc<DbService>, ns: String, p: ListParams, route: &str) -> Response {
    let prefix = p.prefix.clone();
    let after = p.after.clone();
    // One more than asked, to know whether more follow.
    let want = p.limit.saturating_add(1);
    let items = svc
        .blocking(move |s| {
            s.store
                .kv_list(&ns, &prefix, after.as_deref(), want)
                .map_err(|e| super::store_fail(&e))
        })
        .await;
    let mut items = match items {
        Ok(i) => i,
        Err(f) => return error(f),
    };
    let more = items.len() > p.limit;
    items.truncate(p.limit);
    let body: Vec<_> = items
        .iter()
        .map(|m| json!({"key": m.key, "etag": etag(m.version), "size": m.size}))
        .collect();
    let mut resp = json_response(200, serde_json::Value::Array(body));
    if let (true, Some(last)) = (more, items.last()) {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("prefix", &p.prefix)
            .append_pair("after", &last.key)
            .append_pair("limit", &p.limit.to_string())
            .finish();
        resp.headers.push(Header::new(
            &b"Link"[..],
            format!("<{route}/?{query}>; rel=\"next\""),
        ));
    }
    resp
}

fn cache_control() -> Header {
    Header::new(&b"Cache-Control"[..], &b"private, no-cache"[..])
}

/// `{"error": CODE, "message": TEXT}` with the code's status.
/// `Unavailable` (the store is unreachable) adds `Retry-After`.
fn error(f: Fail) -> Response {
    let mut r = json_error_message(f.status(), f.code(), f.message());
    if f == Fail::Unavailable {
        r.headers.push(Header::new(
            &b"Retry-After"[..],
            super::RETRY_AFTER_SECS.to_string().into_bytes(),
        ));
    }
    r
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = json_error(405, "method_not_allowed");
    r.headers.push(Header::new(&b"Allow"[..], allow.as_bytes()));
    r
}
