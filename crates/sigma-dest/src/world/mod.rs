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
//! - [`service`]: the `&world` destination, the tokio glue.
//!
//! **Which session a cookie is bound to.** A socket authenticated by the
//! session cookie is bound to that session (its id); one authenticated by a
//! bearer token is bound to that token. The binding is a SHA-256 of either,
//! computed the same way for `GET /ws` and for `GET /world/<cmd>.js`, so the
//! worker's fetch (which carries the page's cookie) or a non-browser client
//! repeating its `Authorization` header is "the same session". The cookie
//! also names the socket that forked it: the world runs on that socket.

pub mod budget;
pub mod config;
pub mod cookie;
pub mod envelope;
pub mod service;
pub mod session;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
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
/// (see the module docs): a hash of the session id or of the bearer token.
pub type Binding = [u8; 32];

/// The credential `A` authenticated a request with, as it picks them:
/// the `Authorization` header's bearer token first, else the session
/// cookie's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer TOKEN`: the token.
    Bearer(&'a [u8]),
    /// The login session cookie: the session id's bytes.
    Session(Vec<u8>),
}

/// Reads a request's [`Credential`] the way `A` does (the shell passes
/// A's parser in, so the world never imports A): `None` for an anonymous
/// request, or one whose `Authorization` is not a bearer token.
pub type ReadCredential = for<'a> fn(&'a RequestHead) -> Option<Credential<'a>>;

/// The binding of a request (see [`Binding`]), from the credential
/// `credential` reads; `None` for an anonymous request.
pub fn binding_of(credential: ReadCredential, head: &RequestHead) -> Option<Binding> {
    let mut h = Sha256::new();
    match credential(head)? {
        Credential::Bearer(token) => {
            h.update(b"sigma-world-bearer\0");
            h.update(token);
        }
        Credential::Session(id) => {
            h.update(b"sigma-world-session\0");
            h.update(id);
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
