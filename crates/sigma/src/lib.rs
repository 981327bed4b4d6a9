//! sigma: a hardened HTTP/1.1 + WebSocket front server.
//!
//! The seed's pipeline `T3000[HA]`, stage by stage:
//!
//! ```text
//!  client ──▶ tcp (T) ──▶ sigma_http (H) ──▶ auth (A) ──▶ route ──▶ echo, …
//!             conn: the thin tokio shell that drives one connection
//! ```
//!
//! - [`tcp`]: `T`, listeners, caps, accept loop.
//! - [`tls`]: `S` assembled from `[tls]` (certificates, ACME, reload);
//!   [`tlswire`]: `S` in the connection driver; [`front`]: the redirect,
//!   `http-01` and HSTS of the listeners.
//! - [`conn`]: the per-connection driver around the sans-IO `H` core
//!   (`sigma_http::ServerConn`), with T's half-close semantics.
//! - [`auth`]: `A`, identities and the reply rule.
//! - [`route`]: the route table and the `Destination` interface;
//!   [`echo`] is the first destination.
//! - [`pipeline`]: the topology notation; [`config`]: `sigma.toml`;
//!   [`server`]: assembly and lifecycle; [`reload`]: SIGHUP;
//!   [`parse`]: `sigma parse`; [`users`]: `sigma user`, and [`admin`]: its
//!   socket while a server runs.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// `A`, the identity stage, now its own crate (`crates/sigma-auth`); this
/// path is kept for the rest of the tree.
pub use sigma_auth as auth;
/// Bounded reads of the files the config names, now in `sigma-core`.
pub use sigma_core::namedfile;
/// The destinations, now their own crate (`crates/sigma-dest`); these
/// paths are kept for the rest of the tree.
pub use sigma_dest::{broadcast, db, echo, staticfiles, upstream, web, world};
pub mod access;
pub mod admin;
pub mod config;
pub mod conn;

pub mod dispatch;
pub mod explain;
pub mod front;
pub mod health;
#[cfg(feature = "test-destinations")]
mod hello;
pub mod listener;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod registry;
pub mod reload;
pub mod route;
pub mod server;
/// The storage layer, now its own crate (`crates/sigma-store`); this
/// path is kept for the rest of the tree.
pub use sigma_store as store;
pub mod storage;
pub mod streaming;
pub mod tcp;
#[cfg(feature = "test-destinations")]
pub mod testdest;
pub mod tls;
pub mod tlswire;
pub mod users;
