//! Who a message is from or for, and the reply rule (seed `000`).
//!
//! ```text
//!  H ──events──▶ [ A ] ──Tagged{identity, msg}──▶ router ──▶ destination
//!    ◀─replies──  [   ] ◀─Tagged{identity, reply}──
//! ```
//!
//! `A` tags everything it forwards with the connection's identity (or
//! `null`) and sends a reply only if it carries exactly that identity
//! ([`crate::reply`]). This module holds the values; how an
//! identity is found (cookies, tokens, sessions) is `A`'s business, not
//! this module's. It also names the client-supplied identity headers
//! (`X-Sigma-*`, any spelling) that `A` strips so no destination can be
//! fooled by them.
//!
//! An identity also names the login session that authenticated it
//! ([`SessionRef`]: an opaque handle, never the session cookie) and the
//! user's groups (empty until policies exist).

use std::fmt;
use std::sync::Arc;

use sigma_http::{Header, RequestHead};

/// Where an identity came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// Password login.
    Password,
    /// An OAuth2 / OIDC provider, by its configured name.
    OAuth(String),
    /// A bearer JWT, by issuer.
    Jwt(String),
    /// An API key (`sgk_…`), named by the identity's user.
    ApiKey,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password => f.write_str("password"),
            Self::OAuth(name) => write!(f, "oauth:{name}"),
            Self::Jwt(issuer) => write!(f, "jwt:{issuer}"),
            Self::ApiKey => f.write_str("apikey"),
        }
    }
}

/// An authenticated principal (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The sigma user name.
    pub user: String,
    /// How the user authenticated.
    pub provider: Provider,
    /// The world (DESIGN §5) a message comes from or goes to, by its
    /// id; `None` for the user's own connection. Part of the reply rule:
    /// a world's replies reach only that world.
    pub world: Option<String>,
    /// The login session that authenticated the request or socket: the
    /// session cookie's, or the one a token of sigma's belongs to; `None`
    /// for an external issuer's token (bound to no sigma session).
    pub session: Option<SessionRef>,
    /// The user's groups; empty until policies exist.
    pub groups: Vec<String>,
}

/// A login session's public handle: `A`'s keyed hash of the session id
/// (the `sid` of sigma's tokens), never the id itself, so a destination
/// that leaks it leaks no cookie. Compared in constant time; its `Debug`
/// shows nothing of it.
#[derive(Clone, Copy)]
pub struct SessionRef([u8; 16]);

impl SessionRef {
    /// The handle `A` derived for a session (its keyed hash, not its id).
    pub fn from_handle(handle: [u8; 16]) -> Self {
        Self(handle)
    }

    /// The handle's bytes (to key or bind something to the session).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionRef {}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionRef(…)")
    }
}

/// The identity attached to a message: `None` is `null` (anonymous).
pub type Principal = Option<Arc<Identity>>;

/// A message with the identity `A` attached to it.
#[derive(Debug, Clone)]
pub struct Tagged<T> {
    /// Who the message is from (right-bound) or for (left-bound).
    pub identity: Principal,
    /// The message.
    pub msg: T,
}

impl<T> Tagged<T> {
    /// Tags `msg` with `identity`.
    pub fn new(identity: Principal, msg: T) -> Self {
        Self { identity, msg }
    }
}

/// A reply carried an identity other than the connection's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMismatch;

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reply identity differs from the connection's")
    }
}

impl std::error::Error for IdentityMismatch {}

/// Prepares a request for forwarding: strips client-supplied identity
/// headers and tags it with `identity`.
pub fn tag_request(identity: Principal, mut head: RequestHead) -> Tagged<RequestHead> {
    strip_identity_headers(&mut head.headers);
    Tagged::new(identity, head)
}

/// True for `X-Sigma-*` in any case, with `-` or `_` (`X_Sigma_User`).
pub fn is_identity_header(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-sigma-";
    name.len() >= PREFIX.len()
        && name.iter().zip(PREFIX).all(|(&a, &p)| {
            let a = a.to_ascii_lowercase();
            a == p || (p == b'-' && a == b'_')
        })
}

/// Removes every client-supplied identity header.
pub fn strip_identity_headers(headers: &mut Vec<Header>) {
    headers.retain(|h| !is_identity_header(&h.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_spellings() {
        for n in [
            "X-Sigma-User",
            "x-sigma-identity",
            "X_Sigma_User",
            "x_SIGMA-user",
            "X-SIGMA-",
        ] {
            assert!(is_identity_header(n.as_bytes()), "{n}");
        }
        for n in ["X-Sigmas", "X-Sigm", "Sigma-User", "X-Forwarded-For"] {
            assert!(!is_identity_header(n.as_bytes()), "{n}");
        }
    }

    fn alice() -> Principal {
        Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: Some(SessionRef::from_handle([7; 16])),
            groups: Vec::new(),
        }))
    }

    #[test]
    fn session_ref_is_redacted_and_compares_by_value() {
        let a = SessionRef::from_handle([0xa5; 16]);
        assert_eq!(format!("{a:?}"), "SessionRef(…)");
        let shown = format!("{:?}", alice());
        assert!(
            shown.contains("SessionRef(…)") && !shown.contains("7, 7"),
            "{shown}"
        );
        assert_eq!(a, SessionRef::from_handle([0xa5; 16]));
        let mut other = [0xa5; 16];
        other[15] = 0;
        assert_ne!(a, SessionRef::from_handle(other));
    }

    #[test]
    fn tag_request_strips_identity_headers() {
        let head = RequestHead {
            method: sigma_http::Method::Get,
            target: bytes::Bytes::from_static(b"/"),
            version: sigma_http::Version::Http11,
            headers: vec![
                Header::new(&b"X_Sigma_User"[..], &b"root"[..]),
                Header::new(&b"Host"[..], &b"a"[..]),
            ],
            keep_alive: true,
            websocket: None,
        };
        let t = tag_request(alice(), head);
        assert_eq!(t.msg.headers.len(), 1);
        assert!(t.identity.is_some());
    }
}
