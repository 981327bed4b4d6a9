//! sigma-dest: the destinations, the last stage of the pipeline.
//!
//! ```text
//!  T ──▶ H ──▶ A ──Tagged{identity, request}──▶ router ──▶ [ destination ]
//!                                                          echo, broadcast, db,
//!                                                          upstream, static, web, world
//! ```
//!
//! Every destination is one module that owns its config table (its
//! `config` submodule, or the types next to it) and implements
//! [`sigma_core::Destination`]. This crate depends on `sigma-core` (the
//! destination interface, identities, push queues, body streams) and
//! `sigma-store` (`&db`'s storage) only: never on A (`sigma-auth`), never
//! on the `sigma` shell. What a destination must know about A (the names
//! of sigma's own cookies, its token issuer, whether its cookies are
//! `Secure`) comes in as plain values, a [`DestContext`] the shell fills.
//!
//! - [`echo`]: `&echo`; [`broadcast`]: `&broadcast` (channels, rules,
//!   fan-out); [`db`]: `&db` over [`sigma_store`]; [`upstream`]: the
//!   reverse proxy; [`staticfiles`]: `static:DIR`; [`web`]: the bundled
//!   page (`assets/web/`, compiled in); [`world`]: worlds and the session
//!   socket (`assets/worlds/` holds the built-in worker code).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod broadcast;
pub mod db;
pub mod echo;
pub mod factory;
pub mod staticfiles;
pub mod upstream;
pub mod web;
pub mod world;

/// What the destinations take from A, as plain values: filled once by
/// the shell (`crates/sigma`) from A's constants and `[auth]`, so no
/// destination imports A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestContext {
    /// The names of sigma's own cookies (the login session, the OAuth
    /// state): an upstream never sees them.
    pub own_cookies: &'static [&'static str],
    /// The `iss` claim of the tokens sigma issues: an upstream never sees
    /// such a token either.
    pub own_issuer: &'static str,
    /// The longest token A accepts, in bytes (longer words are not parsed).
    pub max_token_bytes: usize,
    /// Sigma's cookies are `Secure` (TLS in front): the upstream is told
    /// `X-Forwarded-Proto: https`.
    pub cookies_secure: bool,
}

/// A route's destination cannot be set up: the destination, then why
/// (`&world: world.x.code: /dev/zero is not a regular file (…)`).
#[derive(Debug)]
pub struct UnavailableDestination(pub String);

impl std::fmt::Display for UnavailableDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "destination {}", self.0)
    }
}

impl std::error::Error for UnavailableDestination {}
