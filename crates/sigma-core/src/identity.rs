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
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password => f.write_str("password"),
            Self::OAuth(name) => write!(f, "oauth:{name}"),
            Self::Jwt(issuer) => write!(f, "jwt:{issuer}"),
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
        }))
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
