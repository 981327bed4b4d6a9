//! `A`'s admission of a request to a route, the step between the router's
//! lookup and the destination in T → H → A → router → destination: who
//! may use the route (`auth = required | optional | none`, the `users`
//! allow-list) and, for cookie-authenticated unsafe methods and WebSocket
//! upgrades, that the request is not cross-site ([`crate::origin`]).
//!
//! [`admit`] decides; [`Denied::response`] is the answer a refusal gets
//! (401, or a redirect to `/login` for a browser navigation; 403). The
//! dispatcher calls [`crate::Auth::admit`] once per request, after the
//! route is found and before the destination sees anything.

use sigma_http::{Header, Method, RequestHead, Response};

use crate::call::redirect;
use crate::config::AuthLevel;
use crate::{origin, Principal, Via};
use sigma_core::response::{json_error, json_error_with};

/// A route's access rule: its level and its allow-list of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAccess<'a> {
    /// Who may use the route (`auth`).
    pub level: AuthLevel,
    /// If set, only these users (`users`).
    pub users: Option<&'a [String]>,
}

/// Why `A` refuses a request for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The route needs an identity and the connection has none (401).
    Unauthenticated,
    /// The identity is not on the route's allow-list (403).
    Forbidden,
    /// A cookie-authenticated unsafe request or upgrade from another
    /// site (403).
    CrossSite,
    /// The route needs an identity and the request's session could not be
    /// checked: the store is unreachable (503, `Retry-After: 5`).
    Unavailable,
}

impl Denied {
    /// The HTTP status for this refusal.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden | Self::CrossSite => 403,
            Self::Unavailable => 503,
        }
    }

    /// The answer to `head` refused for this reason: a browser navigation
    /// that needs a login is sent to `/login?next=<target>`, any other
    /// client gets 401 with `WWW-Authenticate`; 403 with a JSON reason.
    pub fn response(self, head: &RequestHead) -> Response {
        match self {
            Self::Unauthenticated if wants_html(head) => {
                let next = String::from_utf8_lossy(&head.target).into_owned();
                let to = format!(
                    "/login?next={}",
                    form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
                redirect(&to)
            }
            Self::Unauthenticated => unauthenticated(),
            Self::Forbidden => json_error(403, "forbidden"),
            Self::CrossSite => json_error(403, "cross_site"),
            Self::Unavailable => bearer_refusal("store_unavailable"),
        }
    }
}

/// Route access (DESIGN §4): `required` needs an identity, `users` limits
/// which; `optional` and `none` let anyone through.
pub fn authorize(
    identity: &Principal,
    level: AuthLevel,
    users: Option<&[String]>,
) -> Result<(), Denied> {
    let needs_identity = level == AuthLevel::Required || users.is_some();
    match identity {
        None if needs_identity => Err(Denied::Unauthenticated),
        Some(id) => match users {
            Some(list) if !list.iter().any(|u| u == &id.user) => Err(Denied::Forbidden),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

/// Whether `head`, from `identity` authenticated `via`, may use a route
/// with `access`: [`authorize`] first, then the cross-site check for a
/// cookie-authenticated unsafe method or WebSocket upgrade (origins in
/// `allowed_origins` pass besides sigma's own).
pub fn admit(
    access: RouteAccess<'_>,
    identity: &Principal,
    via: &Via,
    head: &RequestHead,
    public_url: Option<&str>,
    allowed_origins: &[String],
) -> Result<(), Denied> {
    admit_scheme(
        access,
        identity,
        via,
        head,
        public_url,
        allowed_origins,
        false,
    )
}

/// [`admit`], with sigma's own origin `https://` only when `https_only`
/// (TLS on, [`origin::check_scheme`]).
pub fn admit_scheme(
    access: RouteAccess<'_>,
    identity: &Principal,
    via: &Via,
    head: &RequestHead,
    public_url: Option<&str>,
    allowed_origins: &[String],
    https_only: bool,
) -> Result<(), Denied> {
    match authorize(identity, access.level, access.users) {
        Err(Denied::Unauthenticated) if *via == Via::Unverified => return Err(Denied::Unavailable),
        other => other?,
    }
    let cookie = matches!(via, Via::Cookie(_));
    let checked = head.websocket.is_some() || origin::is_unsafe(head.method);
    if cookie
        && checked
        && origin::check_with(head, public_url, allowed_origins, https_only).is_err()
    {
        return Err(Denied::CrossSite);
    }
    Ok(())
}

impl crate::Auth {
    /// [`admit`] with this `A`'s allowed origins; a cross-site refusal is
    /// counted (`cross_site`).
    pub fn admit(
        &self,
        access: RouteAccess<'_>,
        identity: &Principal,
        via: &Via,
        head: &RequestHead,
    ) -> Result<(), Denied> {
        let verdict = admit_scheme(
            access,
            identity,
            via,
            head,
            self.public_url(),
            self.allowed_origins(),
            self.https_only(),
        );
        if verdict == Err(Denied::CrossSite) {
            self.metrics.reject("cross_site");
        }
        verdict
    }

    /// The route's policy for `head` from `identity` at `client`
    /// ([`crate::policy::Policy::decide`]); a refusal is counted
    /// (`policy_refused`), logged as a security event, and answered with
    /// [`policy_refusal`].
    pub fn admit_policy(
        &self,
        policy: &crate::policy::Policy,
        identity: &Principal,
        client: std::net::IpAddr,
        head: &RequestHead,
        route: &str,
    ) -> Result<(), Response> {
        let facts = crate::policy::Facts {
            identity: identity.as_deref(),
            client,
            method: head.method,
        };
        let crate::policy::Decision::Refused { status, rule } = policy.decide(&facts) else {
            return Ok(());
        };
        self.metrics.reject("policy_refused");
        if self.metrics.may_log() {
            tracing::warn!(
                target: crate::SECURITY,
                event = "policy_refused",
                client = %client,
                user = identity.as_ref().map(|i| i.user.as_str()),
                path = %String::from_utf8_lossy(head.path()),
                route,
                status,
                rule = %rule,
                "refused by the route's policy"
            );
        }
        Err(policy_refusal(status, head, policy.allow_header()))
    }

    /// Whether a refusal may be logged now (rate-limited).
    pub fn may_log(&self) -> bool {
        self.metrics.may_log()
    }
}

/// The answer to a request a route's policy refused
/// ([`crate::policy::Decision::Refused`]): 401 as for a missing identity
/// (a browser is sent to the login page), 403 as a page for a browser
/// navigation and `{"error":"forbidden"}` for any other client, 405 with
/// `Allow`.
pub fn policy_refusal(status: u16, head: &RequestHead, allow: Option<String>) -> Response {
    match status {
        401 => Denied::Unauthenticated.response(head),
        405 => {
            let mut r = json_error(405, "method_not_allowed");
            if let Some(allow) = allow {
                r.headers
                    .push(Header::new(&b"Allow"[..], allow.into_bytes()));
            }
            r
        }
        _ if wants_html(head) => Response::new(
            403,
            vec![
                Header::new(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..]),
                sigma_core::response::no_store(),
            ],
            FORBIDDEN_PAGE.as_bytes(),
        ),
        _ => Denied::Forbidden.response(head),
    }
}

/// The page a browser gets for a 403 by policy.
const FORBIDDEN_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Forbidden</title></head><body><h1>Forbidden</h1>\
<p>Your account may not open this page. Ask the site's operator for access, \
or <a href=\"/login\">sign in as someone else</a>.</p></body></html>\n";

/// 401 for a request that needs credentials and has none.
pub fn unauthenticated() -> Response {
    let mut r = json_error(401, "unauthenticated");
    r.headers.push(Header::new(
        &b"WWW-Authenticate"[..],
        &b"Bearer realm=\"sigma\""[..],
    ));
    r
}

/// The answer to a refused `Authorization: Bearer`: 429 when the client's
/// network sent too many wrong API keys, 503 when the store could not be
/// asked, else [`invalid_token`].
pub fn bearer_refusal(reason: &str) -> Response {
    match reason {
        "api_key_throttled" => {
            let mut r = json_error(429, "too_many_requests");
            r.headers.push(Header::new(&b"Retry-After"[..], &b"60"[..]));
            r
        }
        "store_unavailable" => {
            let mut r = json_error(503, "store_unavailable");
            r.headers.push(Header::new(&b"Retry-After"[..], &b"5"[..]));
            r
        }
        _ => invalid_token(reason),
    }
}

/// 401 for a bearer token that does not verify (RFC 6750 §3).
pub fn invalid_token(reason: &str) -> Response {
    let mut r = json_error_with(401, "invalid_token", serde_json::json!({"reason": reason}));
    r.headers.push(Header::new(
        &b"WWW-Authenticate"[..],
        &b"Bearer realm=\"sigma\", error=\"invalid_token\""[..],
    ));
    r
}

/// A browser navigation (it gets the login page rather than a bare 401).
fn wants_html(head: &RequestHead) -> bool {
    matches!(head.method, Method::Get | Method::Head)
        && head.header("accept").is_some_and(|h| {
            h.value
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Provider};
    use sigma_store::SessionId;
    use std::sync::Arc;

    fn head(method: Method, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method,
            target: bytes::Bytes::from_static(b"/app?x=1"),
            version: sigma_http::Version::Http11,
            headers: headers
                .iter()
                .map(|(k, v)| Header::new(k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    #[test]
    fn route_access() {
        let alice = Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }));
        let users = vec!["bob".to_string()];
        assert_eq!(
            authorize(&None, AuthLevel::Required, None),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(authorize(&None, AuthLevel::Optional, None), Ok(()));
        assert_eq!(authorize(&None, AuthLevel::None, None), Ok(()));
        assert_eq!(authorize(&alice, AuthLevel::Required, None), Ok(()));
        assert_eq!(
            authorize(&alice, AuthLevel::Required, Some(&users)),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            authorize(&None, AuthLevel::Optional, Some(&users)),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn cookie_authenticated_unsafe_requests_must_be_same_site() {
        let alice = Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }));
        let open = RouteAccess {
            level: AuthLevel::Optional,
            users: None,
        };
        let cookie = Via::Cookie(SessionId::generate().unwrap());
        let foreign = [("host", "sigma.test"), ("origin", "https://evil.test")];
        let post = head(Method::Post, &foreign);
        assert_eq!(
            admit(open, &alice, &cookie, &post, None, &[]),
            Err(Denied::CrossSite)
        );
        // An allowed origin passes; a bearer token is never checked.
        assert_eq!(
            admit(
                open,
                &alice,
                &cookie,
                &post,
                None,
                &["https://evil.test".into()]
            ),
            Ok(())
        );
        assert_eq!(admit(open, &alice, &Via::Bearer, &post, None, &[]), Ok(()));
        // Safe methods are not checked; the same site passes.
        let get = head(Method::Get, &foreign);
        assert_eq!(admit(open, &alice, &cookie, &get, None, &[]), Ok(()));
        let same = head(
            Method::Post,
            &[("host", "sigma.test"), ("origin", "http://sigma.test")],
        );
        assert_eq!(admit(open, &alice, &cookie, &same, None, &[]), Ok(()));
    }

    #[test]
    fn refusals_answer_browsers_with_the_login_page() {
        let browser = head(Method::Get, &[("accept", "text/html,*/*")]);
        let r = Denied::Unauthenticated.response(&browser);
        assert_eq!(r.status, 303);
        let loc = r.headers.iter().find(|h| h.is("location")).unwrap();
        assert_eq!(&loc.value[..], b"/login?next=%2Fapp%3Fx%3D1");
        let api = head(Method::Get, &[("accept", "application/json")]);
        let r = Denied::Unauthenticated.response(&api);
        assert_eq!(r.status, 401);
        assert!(r.headers.iter().any(|h| h.is("www-authenticate")));
        assert_eq!(Denied::Forbidden.response(&api).status, 403);
        assert_eq!(Denied::CrossSite.response(&api).status, 403);
        // An unverifiable session is a 503, for a browser too.
        let r = Denied::Unavailable.response(&browser);
        assert_eq!(r.status, 503);
        assert!(r.headers.iter().any(|h| h.is("retry-after")));
    }

    #[test]
    fn an_unverifiable_session_is_503_only_where_an_identity_is_needed() {
        let get = head(Method::Get, &[("host", "sigma.test")]);
        let access = |level| RouteAccess { level, users: None };
        let v = Via::Unverified;
        assert_eq!(
            admit(access(AuthLevel::Required), &None, &v, &get, None, &[]),
            Err(Denied::Unavailable)
        );
        assert_eq!(
            admit(access(AuthLevel::Optional), &None, &v, &get, None, &[]),
            Ok(())
        );
        assert_eq!(
            admit(access(AuthLevel::None), &None, &v, &get, None, &[]),
            Ok(())
        );
        // Anonymous stays 401.
        assert_eq!(
            admit(
                access(AuthLevel::Required),
                &None,
                &Via::Anonymous,
                &get,
                None,
                &[]
            ),
            Err(Denied::Unauthenticated)
        );
    }
}
