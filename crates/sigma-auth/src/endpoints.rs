//! The requests `A` answers itself (DESIGN §4, §9): `GET /login` (the
//! bundled page), `POST /login`, `POST /logout`, `GET /auth/whoami`,
//! `POST /auth/token` (a token bound to the caller's session by its
//! `sid`, throttled per session: 429 + `Retry-After`).
//!
//! Login: throttled per client address, per (user, client network) for
//! failures and by a global failure ceiling (429 + `Retry-After`,
//! [`super::throttle`]); the password checked off the executor with
//! bounded concurrency behind a bounded queue (full: 503 + `Retry-After`
//! at once, [`super::password::Verifier::admit`]); a uniform 401 for a
//! wrong password and an unknown user (no enumeration), a fresh session id
//! on success (the old session, if any, is revoked: rotation), and the
//! `sigma_session` cookie. JSON clients get JSON; form posts get a 303 to a
//! same-origin `next` (never an open redirect).

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use sigma_http::{Header, Method, Response};

use super::{Auth, Principal, Provider, TokenRefused, Via};
use crate::Tagged;
use sigma_core::{Answer, Capabilities, Destination, Handled, HttpRequest, Request};

/// The bundled login page.
const LOGIN_PAGE: &str = include_str!("../assets/login.html");

/// `Retry-After` of a login refused because the Argon2 queue is full.
const QUEUE_FULL_RETRY_SECS: u64 = 1;

// Shared with the OAuth endpoints (`oauth` must not import this module,
// which dispatches to it); re-exported under their old paths.
pub use crate::call::{html_escape, query_param, redirect, safe_next, Call};
// One definition of each, in `sigma-core` (destinations use them too).
pub use sigma_core::response::{
    json_error, json_error_message, json_error_with, json_response, no_store,
};

/// True for the paths `A` answers itself: they always see the caller's
/// identity, whatever route would otherwise match them.
pub fn is_endpoint(path: &[u8]) -> bool {
    matches!(path, b"/login" | b"/logout") || path.starts_with(b"/auth/")
}

/// `A`'s endpoints as a destination like any other: dispatch hands it the
/// requests whose path [`is_endpoint`] (before any route), and applies the
/// reply rule to what it answers. One is made per request: it carries how
/// `A` authenticated the request and the client's address, which a
/// [`Request`] does not.
pub struct Endpoints {
    /// `A`.
    pub auth: Arc<Auth>,
    /// How the request was authenticated.
    pub via: Via,
    /// The client's address (after trusted proxies).
    pub client_ip: std::net::IpAddr,
}

/// The name of `A`'s endpoints in logs (`dest`).
pub const NAME: &str = "&auth";

impl Destination for Endpoints {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => {
                let call = Call {
                    req: &req.msg,
                    identity: &req.identity,
                    via: &self.via,
                    client_ip: self.client_ip,
                };
                Answer::Http(handle(&self.auth, call).unwrap_or_else(|| {
                    Handled::Ready(Tagged::new(
                        req.identity.clone(),
                        json_error(404, "not_found"),
                    ))
                }))
            }
            other => other.not_taken(),
        }
    }
}

/// Answers `call` if it is one of `A`'s own endpoints.
pub fn handle(auth: &Arc<Auth>, call: Call<'_>) -> Option<Handled> {
    let head = &call.req.head;
    let tag = |resp: Response| Handled::Ready(Tagged::new(call.identity.clone(), resp));
    let resp = match (head.method, head.path()) {
        (Method::Get | Method::Head, b"/login") => tag(login_page(
            query_param(&head.target, "next").as_deref(),
            None,
            auth,
        )),
        (Method::Post, b"/login") => return Some(login(auth, &call)),
        (Method::Post, b"/logout") => return Some(logout(auth, &call)),
        (Method::Get | Method::Head, b"/auth/whoami") => tag(whoami(call.identity)),
        (Method::Post, b"/auth/token") => tag(token(auth, &call)),
        (_, b"/login" | b"/logout" | b"/auth/whoami" | b"/auth/token") => {
            tag(json_error(405, "method_not_allowed"))
        }
        // `/auth/<provider>/login` and `/auth/<provider>/callback`.
        _ => return super::oauth::handle(auth, &call),
    };
    Some(resp)
}

#[derive(Deserialize)]
struct LoginJson {
    user: String,
    password: String,
}

/// The login form or JSON body.
struct Credentials {
    user: String,
    password: String,
    next: Option<String>,
    json: bool,
}

fn parse_credentials(req: &HttpRequest) -> Option<Credentials> {
    let ct = req
        .head
        .header("content-type")
        .map(|h| h.value.to_ascii_lowercase())
        .unwrap_or_default();
    if ct.starts_with(b"application/json") {
        let j: LoginJson = serde_json::from_slice(&req.body).ok()?;
        Some(Credentials {
            user: j.user,
            password: j.password,
            next: None,
            json: true,
        })
    } else if ct.starts_with(b"application/x-www-form-urlencoded") {
        let (mut user, mut password, mut next) = (None, None, None);
        for (k, v) in form_urlencoded::parse(&req.body) {
            match &*k {
                "user" => user = Some(v.into_owned()),
                "password" => password = Some(v.into_owned()),
                "next" => next = Some(v.into_owned()),
                _ => {}
            }
        }
        Some(Credentials {
            user: user?,
            password: password?,
            next,
            json: false,
        })
    } else {
        None
    }
}

/// The 429 of a refused login attempt, counted and logged.
fn throttled(
    auth: &Auth,
    t: crate::throttle::Throttled,
    user: &str,
    client: std::net::IpAddr,
) -> sigma_http::Response {
    auth.metrics.reject(t.reason);
    if auth.metrics.may_log() {
        tracing::warn!(
            target: crate::SECURITY,
            event = "login_throttled",
            user = %user,
            client = %client,
            limit = t.reason,
            "login throttled"
        );
    }
    let secs = t.retry_after_secs();
    with_retry_after(
        json_error_with(
            429,
            "too_many_attempts",
            serde_json::json!({"retry_after": secs}),
        ),
        secs,
    )
}

fn login(auth: &Arc<Auth>, call: &Call<'_>) -> Handled {
    let identity = call.identity.clone();
    let tag = |resp| Handled::Ready(Tagged::new(identity.clone(), resp));
    // Login CSRF: a cross-site page must not log a visitor in.
    if auth.same_origin(&call.req.head).is_err() {
        auth.metrics.reject("cross_site");
        auth.security_cross_site(call);
        return tag(json_error(403, "cross_site"));
    }
    let Some(creds) = parse_credentials(call.req) else {
        return tag(json_error_message(
            400,
            "bad_request",
            "expected a form (user, password) or JSON {\"user\", \"password\"}",
        ));
    };
    let attempt = match auth.throttle.begin(call.client_ip, &creds.user) {
        Ok(attempt) => attempt,
        Err(t) => return tag(throttled(auth, t, &creds.user, call.client_ip)),
    };
    // The Argon2 queue: full means answer now, not wait behind a flood.
    let Some(ticket) = auth.passwords.admit() else {
        auth.throttle.unverified(attempt);
        auth.metrics.reject("login_queue_full");
        if auth.metrics.may_log() {
            tracing::warn!(client = %call.client_ip, "login refused: password queue full");
        }
        return tag(with_retry_after(
            json_error_with(
                503,
                "busy",
                serde_json::json!({"retry_after": QUEUE_FULL_RETRY_SECS}),
            ),
            QUEUE_FULL_RETRY_SECS,
        ));
    };
    let auth = Arc::clone(auth);
    let client = call.client_ip;
    let old = match call.via {
        Via::Cookie(id) => Some(id.clone()),
        _ => None,
    };
    Handled::Later(Box::pin(async move {
        if let Some(shared) = &auth.shared_throttle {
            let now = auth.clock().unix_ms() / 1000;
            if let Err(t) = shared.check(client, &creds.user, now).await {
                auth.throttle.unverified(attempt);
                return Tagged::new(identity, throttled(&auth, t, &creds.user, client));
            }
        }
        let phc = if sigma_store::valid_user_name(&creds.user) {
            match auth.store.user_get(&creds.user) {
                Ok(u) => u.map(|u| u.phc),
                // PostgreSQL is down: 503, not "wrong password".
                Err(e) if e.is_unavailable() => return Tagged::new(identity, store_failure(&e)),
                Err(_) => None,
            }
        } else {
            None
        };
        // An unknown user is verified against a dummy hash: same answer,
        // same time.
        let ok = auth.passwords.verify(ticket, phc, creds.password).await;
        if !ok {
            // The attempt's failure budget stays spent, on every node.
            drop(attempt);
            if let Some(shared) = &auth.shared_throttle {
                shared.failed(client, &creds.user).await;
            }
            auth.metrics.reject("login_failed");
            if auth.metrics.may_log() {
                tracing::warn!(
                    target: crate::SECURITY,
                    event = "login_failed",
                    user = %creds.user,
                    client = %client,
                    "login failed"
                );
            }
            let resp = if creds.json {
                json_error(401, "invalid_credentials")
            } else {
                let mut r = login_page(
                    creds.next.as_deref(),
                    Some("Wrong user or password."),
                    &auth,
                );
                r.status = 401;
                r
            };
            return Tagged::new(identity, resp);
        }
        auth.throttle.succeeded(attempt);
        let now = auth.clock().unix_ms();
        let store_auth = Arc::clone(&auth);
        let user = creds.user.clone();
        let created = tokio::task::spawn_blocking(move || {
            if let Some(old) = old {
                // Rotation: the pre-login session id never survives login.
                let _ = store_auth.sessions.revoke(&old);
            }
            store_auth
                .sessions
                .create(&user, &Provider::Password, Vec::new(), now)
        })
        .await;
        let id = match created {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not store a session");
                return Tagged::new(identity, store_failure(&e));
            }
            Err(_) => return Tagged::new(identity, json_error(500, "internal")),
        };
        auth.metrics.count("login_ok");
        tracing::info!(user = %creds.user, "login");
        let cookie = Header::new(&b"Set-Cookie"[..], auth.sessions.set_cookie(&id));
        let mut resp = if creds.json {
            json_response(200, json!({"user": creds.user}))
        } else {
            redirect(&safe_next(creds.next.as_deref()))
        };
        resp.headers.push(cookie);
        Tagged::new(identity, resp)
    }))
}

/// Seconds in `Retry-After` while the store is unreachable.
const STORE_RETRY_SECS: u64 = 5;

/// A store failure: 503 `unavailable` with `Retry-After` while the store
/// cannot be reached (PostgreSQL down), else 500 `internal`.
fn store_failure(e: &sigma_store::StoreError) -> Response {
    if e.is_unavailable() {
        with_retry_after(
            json_error_with(
                503,
                "unavailable",
                serde_json::json!({"retry_after": STORE_RETRY_SECS}),
            ),
            STORE_RETRY_SECS,
        )
    } else {
        json_error(500, "internal")
    }
}

fn logout(auth: &Arc<Auth>, call: &Call<'_>) -> Handled {
    let identity = call.identity.clone();
    let session = match call.via {
        Via::Cookie(id) => {
            if auth.same_origin(&call.req.head).is_err() {
                auth.metrics.reject("cross_site");
                auth.security_cross_site(call);
                let r = json_error(403, "cross_site");
                return Handled::Ready(Tagged::new(identity, r));
            }
            Some(id.clone())
        }
        _ => None,
    };
    let auth = Arc::clone(auth);
    Handled::Later(Box::pin(async move {
        if let Some(id) = session {
            // The revocation is durable before the client hears of it.
            let a = Arc::clone(&auth);
            match tokio::task::spawn_blocking(move || a.sessions.revoke(&id)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not revoke a session");
                    return Tagged::new(identity, store_failure(&e));
                }
                Err(_) => return Tagged::new(identity, json_error(500, "internal")),
            }
        }
        let mut r = Response::new(204, vec![no_store()], Bytes::new());
        r.headers.push(Header::new(
            &b"Set-Cookie"[..],
            auth.sessions.clear_cookie(),
        ));
        Tagged::new(identity, r)
    }))
}

impl Auth {
    /// The security event of a refused cross-site request to one of
    /// `A`'s endpoints (rate-limited).
    fn security_cross_site(&self, call: &Call<'_>) {
        if self.metrics.may_log() {
            tracing::warn!(
                target: crate::SECURITY,
                event = "cross_site",
                client = %call.client_ip,
                path = %String::from_utf8_lossy(call.req.head.path()),
                "cross-site request refused"
            );
        }
    }
}

fn whoami(identity: &Principal) -> Response {
    let body = match identity {
        // `groups` only when there are some (the shape older clients know).
        Some(id) if id.groups.is_empty() => {
            json!({"user": id.user, "provider": id.provider.to_string()})
        }
        Some(id) => {
            json!({"user": id.user, "provider": id.provider.to_string(), "groups": id.groups})
        }
        None => json!({"user": null, "provider": null}),
    };
    json_response(200, body)
}

fn token(auth: &Auth, call: &Call<'_>) -> Response {
    let (Some(id), Via::Cookie(session)) = (call.identity, call.via) else {
        return json_error(401, "unauthenticated");
    };
    if auth.same_origin(&call.req.head).is_err() {
        auth.metrics.reject("cross_site");
        auth.security_cross_site(call);
        return json_error(403, "cross_site");
    }
    match auth.issue_token(&id.user, session) {
        Ok((token, expires_in)) => {
            json_response(200, json!({"token": token, "expires_in": expires_in}))
        }
        Err(TokenRefused::Throttled(wait)) => {
            auth.metrics.reject("token_throttled");
            // Rounded up: a client that waits this long is let through.
            let secs = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0))
                .max(1);
            let mut r = json_error_with(
                429,
                "too_many_requests",
                serde_json::json!({"retry_after": secs}),
            );
            r.headers
                .push(Header::new(&b"Retry-After"[..], secs.to_string()));
            r
        }
    }
}

/// The login page, with `next` carried along and an optional error.
fn login_page(next: Option<&str>, error: Option<&str>, auth: &Auth) -> Response {
    let next = safe_next(next);
    let mut page = LOGIN_PAGE.replace("<!--NEXT-->", &html_escape(&next));
    if let Some(e) = error {
        page = page.replace(
            "<!--ERROR-->",
            &format!("<p class=\"error\" role=\"alert\">{}</p>", html_escape(e)),
        );
    }
    page = page.replace("<!--PROVIDERS-->", &auth.provider_buttons(&next));
    Response::new(
        200,
        vec![
            Header::new(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..]),
            no_store(),
            Header::new(&b"X-Frame-Options"[..], &b"DENY"[..]),
            Header::new(
                &b"Content-Security-Policy"[..],
                &b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"[..],
            ),
        ],
        page,
    )
}

/// `resp` with `Retry-After: secs`.
fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers
        .push(Header::new(&b"Retry-After"[..], secs.to_string()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_never_an_open_redirect() {
        assert_eq!(safe_next(Some("/chat?x=1")), "/chat?x=1");
        for bad in [
            "//evil.test",
            "/\\evil.test",
            "https://evil.test",
            "javascript:alert(1)",
            "",
            "/a b",
            "/\u{7f}",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn query_and_escape() {
        assert_eq!(
            query_param(b"/login?next=%2Fchat%3Fa%3D1&x=2", "next").as_deref(),
            Some("/chat?a=1")
        );
        assert_eq!(query_param(b"/login", "next"), None);
        assert_eq!(html_escape("\"><script>"), "&quot;&gt;&lt;script&gt;");
    }
}
