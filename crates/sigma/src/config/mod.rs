//! `sigma.toml`: the configuration of DESIGN §3, §6 and §8. Config
//! assembly is part of the `sigma` shell, above the pipeline it configures
//! (T → H → A → router → destination): it reads the file and the
//! environment once, before any stage runs, and hands each stage its table.
//!
//! `sigma serve` and `sigma check` call [`load`] first. The resulting
//! [`Config`] tells the binary which listeners to bind and which stages they
//! run ([`Config::topology`], parsed by [`crate::pipeline`]), the `T` limits
//! ([`ServerConfig`]), the `H` limits ([`sigma_http::Limits`], from `[http]`
//! and `[websocket]`) and the route table ([`RouteConfig`]). Precedence:
//! built-in defaults < file < `SIGMA_*` environment; command-line flags are
//! applied by the caller afterwards. The reference file with every key is
//! `crates/sigma/tests/data/config/full.toml`.
//!
//! This module only reads and validates: it opens no socket, creates no
//! directory, reads no process environment by itself (the caller passes it
//! in, see [`process_env`]) and does not check that a static directory or an
//! upstream exists.
//!
//! Rules a user sees:
//! - every table rejects unknown keys, naming the key's path and the line;
//! - durations are humantime strings (`"10s"`, `"500ms"`, `"2m"`), greater
//!   than 0 and at most 365 days;
//! - counts that bound something are greater than 0; `http.max_body`,
//!   `http.max_chunk_extension` and `http.max_trailer_bytes` may be 0
//!   (no body / no chunk extensions / no trailers);
//! - `SIGMA_HTTP_MAX_BODY=1048576` sets `http.max_body`; `SIGMA_PIPELINE`
//!   and `SIGMA_DATA_DIR` set the top-level keys; the value is an integer if
//!   it parses as one, else a boolean for `true`/`false`, else a string.
//!   [`RESERVED_ENV`] variables belong to logging and are ignored here.
//!
//! The modules, each importing only those listed before it:
//! - `de`: field deserializers (durations, positive counts);
//! - `error`: [`ConfigError`] and its kinds; `keypath`: key paths and
//!   where a value came from (file line or variable);
//! - one per table, with its type, defaults and cross-key rules:
//!   `server` (T), `log` (`[log]`), `limits` (`[http]`, `[websocket]`: H), `auth` (A),
//!   `route` (`[[route]]`), `db`, `broadcast`, `world` (`[worlds]`,
//!   `[world.<name>]`), `tls` (`[tls]`: S), `store` (`[store]`);
//! - `load`: [`Config`], the file and environment layering and the checks
//!   across tables.

mod auth;
// The destinations' own tables (config points down to them).
use sigma_core::de;
use sigma_dest::broadcast::config as broadcast;
use sigma_dest::db::config as db;
mod error;
mod keypath;
mod limits;
mod load;
mod log;
mod route;
mod server;
mod store;
mod tls;
mod world;

pub use auth::AuthConfig;
pub use broadcast::{BroadcastConfig, BroadcastRule, ChannelAccess};
pub use db::{DbConfig, DEFAULT_DB_MAX_KEY, DEFAULT_DB_MAX_VALUE};
pub use de::MAX_DURATION;
pub use error::{ConfigError, ConfigErrorKind, Origin, RouteError};
pub use load::{
    default_topology, from_str, load, process_env, Config, DEFAULT_DATA_DIR, DEFAULT_PIPELINE,
    RESERVED_ENV,
};
pub use log::LogConfig;
pub use route::{
    default_routes, AuthLevel, Destination, ProxyOptions, RouteConfig, SharedNamespace,
};
pub use server::{
    default_metrics_allow, Cidr, ServerConfig, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_LINGER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
};
pub use store::{ClusterConfig, StoreConfig};
pub use tls::{
    check_topology as check_tls_topology, AcmeTable, CertPair, Challenge, TlsConfig, TlsHttp,
};
pub use world::{
    default_world_commands, WorldCode, WorldCommand, WorldsConfig, BUILTIN_WORLD_CODE,
};

#[cfg(test)]
mod tests;
