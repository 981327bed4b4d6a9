//! Worlds: the signed-client handshake of DESIGN §5 (issue #8).
//!
//! ```text
//!  browser page (sigma.js)                         sigma
//!  ── GET /ws (cookie + Origin, or bearer) ──────▶ &world: session socket
//!  ── hello ────────────────────────────────────▶ (activation deadline, 4408)
//!  ◀─ welcome {user, commands[{name, code}]} ───
//!  ── fork {world: Ed25519 public key, command} ─▶ checks, seals a cookie
//!  ◀─ fork-cookie {world, cookie} ───────────────  (no per-world state yet)
//!  worker: GET /world/<cmd>.js?initiate=…&sig=… ─▶ opens the cookie, verifies,
//!                                                  activates the world, serves code
//!  ── world {world, lamport, body, sig} ─────────▶ verified per message, forwarded
//!                                                  through A as (user, world) to the
//!  ◀─ world {world, lamport, body} ──────────────  command's destination; replies
//!                                                  reach only that world
//!  ── disconnect {world} ◀──────────────────────▶ ends one world; closing ends all
//! ```
//!
//! The parts, sans-IO first:
//! - [`envelope`]: the JSON envelopes and the initiate (parse, serialise,
//!   the bytes a world signs);
//! - [`cookie`]: minute keys and the stateless fork cookie
//!   (`nonce ‖ XChaCha20-Poly1305(minute key, …)`);
//! - [`session`]: one session socket's state machine (activation, Lamport
//!   clock, world states, per-message checks), with the clock passed in;
//! - [`budget`]: each user's world limit, fork bucket and used cookies
//!   (over all of the user's sessions and sockets, in a bounded map), and
//!   the server's active world keys (each active once);
//! - [`forward`]: an initiate carried to the node that sealed its cookie
//!   (a cluster), and that node's answer;
//! - [`service`]: the `&world` destination, the tokio glue.
//!
//! **Which session a cookie is bound to.** A socket authenticated by the
//! session cookie is bound to that session (the identity's
//! [`sigma_core::SessionRef`], A's handle of it); one authenticated by a
//! bearer token is bound to that token, not to the session it may belong
//! to (a token is "another session" than the cookie it was minted with,
//! and an external issuer's token has no sigma session at all). The
//! binding is a SHA-256 of either, computed the same way for `GET /ws` and
//! for `GET /world/<cmd>.js`, so the worker's fetch (which carries the
//! page's cookie) or a non-browser client repeating its `Authorization`
//! header is "the same session". The cookie also names the socket that
//! forked it: the world runs on that socket.

pub mod budget;
pub mod config;
pub mod cookie;
pub mod envelope;
pub mod forward;
pub mod service;
pub mod session;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sigma_core::{Identity, Provider};
use sigma_http::RequestHead;

pub use service::WorldService;

/// A world's id: its Ed25519 public key (32 bytes; unpadded base64url on
/// the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorldId(pub [u8; 32]);

impl WorldId {
    /// Parses the unpadded base64url form; `None` unless it is 32 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = b64_decode(s)?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The unpadded base64url form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl std::fmt::Display for WorldId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// Unpadded base64url, strictly (no padding, no other alphabet).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()
}

/// Unpadded base64url.
pub fn b64_encode(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// What binds a socket and a worker fetch to one authenticated session
/// (see the module docs): a hash of the session handle or of the bearer
/// token.
pub type Binding = [u8; 32];

/// Reads a request's `Authorization: Bearer` token the way `A` does (the
/// shell passes A's parser in, so the world never imports A): `None` when
/// there is none, or the header is not a bearer token.
pub type ReadBearer = for<'a> fn(&'a RequestHead) -> Option<&'a [u8]>;

/// The binding of a request `A` identified as `identity` (see
/// [`Binding`]): the bearer token `bearer` reads for a token's identity
/// (providers [`Provider::Jwt`] and [`Provider::ApiKey`], the kinds `A`
/// makes from a token),
/// else the identity's login session; `None` when there is neither.
pub fn binding_of(bearer: ReadBearer, identity: &Identity, head: &RequestHead) -> Option<Binding> {
    let mut h = Sha256::new();
    match identity.provider {
        Provider::Jwt(_) | Provider::ApiKey => {
            h.update(b"sigma-world-bearer\0");
            h.update(bearer(head)?);
        }
        Provider::Password | Provider::OAuth(_) => {
            h.update(b"sigma-world-session\0");
            h.update(identity.session.as_ref()?.as_bytes());
        }
    }
    Some(h.finalize().into())
}

/// `to = "&world"`: one [`service::WorldService`] for every route to it,
/// made by the shell (it knows the world commands and A's credentials).
pub const FACTORY: &dyn crate::factory::Factory = &WorldFactory;

struct WorldFactory;

impl crate::factory::Factory for WorldFactory {
    fn name(&self) -> &'static str {
        "&world"
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<std::sync::Arc<dyn sigma_core::Destination>, crate::UnavailableDestination> {
        (cx.world)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::SessionRef;
    use sigma_http::Header;

    fn head(auth: Option<&str>) -> RequestHead {
        RequestHead {
            method: sigma_http::Method::Get,
            target: bytes::Bytes::from_static(b"/ws"),
            version: sigma_http::Version::Http11,
            headers: auth
                .map(|a| Header::new(&b"Authorization"[..], a.as_bytes().to_vec()))
                .into_iter()
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    fn bearer(head: &RequestHead) -> Option<&[u8]> {
        head.header("authorization")?.value.strip_prefix(b"Bearer ")
    }

    fn who(provider: Provider, session: Option<[u8; 16]>) -> Identity {
        Identity {
            user: "alice".into(),
            provider,
            world: None,
            session: session.map(SessionRef::from_handle),
            groups: Vec::new(),
        }
    }

    #[test]
    fn cookies_bind_to_their_session_and_tokens_to_themselves() {
        let jwt = || Provider::Jwt("sigma".into());
        let s1 = who(Provider::Password, Some([1; 16]));
        let b1 = binding_of(bearer, &s1, &head(None)).unwrap();
        // The same session, by another request (the worker's fetch).
        assert_eq!(binding_of(bearer, &s1.clone(), &head(None)), Some(b1));
        // Another session of the same user.
        let s2 = who(Provider::OAuth("gh".into()), Some([2; 16]));
        assert_ne!(binding_of(bearer, &s2, &head(None)), Some(b1));
        // A token of session 1 is not session 1, nor another token of it.
        let t1 = binding_of(bearer, &who(jwt(), Some([1; 16])), &head(Some("Bearer a")));
        let t2 = binding_of(bearer, &who(jwt(), Some([1; 16])), &head(Some("Bearer b")));
        assert!(t1.is_some() && t1 != Some(b1) && t1 != t2);
        // An external issuer's token (no session) binds to the token.
        let ext = binding_of(bearer, &who(jwt(), None), &head(Some("Bearer a")));
        assert_eq!(ext, t1);
        // Nothing to bind to.
        assert_eq!(binding_of(bearer, &who(jwt(), None), &head(None)), None);
        assert_eq!(
            binding_of(bearer, &who(Provider::Password, None), &head(None)),
            None
        );
    }
}
