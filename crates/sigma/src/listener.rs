//! What every connection of one listener shares: the context `T` builds
//! once per listener (server), the driver (conn) carries to each
//! connection, and dispatch reads on the way `H` → `A` → router →
//! destination (limits, route table, metrics, `A`, the memory budget).
//!
//! The part a reload (SIGHUP, [`crate::reload`]) replaces for *requests*
//! already under way on open connections is the [`Generation`]: dispatch
//! reads the current one once per request. The rest ([`ListenerCtx`]) a
//! connection takes once, when it is accepted; a reload gives the listener
//! a new one for the connections it accepts next.
//!
//! It sits below both conn and dispatch so that neither imports the other
//! for it; it holds data only, no behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::Auth;
use crate::config::Cidr;
use crate::metrics::{Metrics, RouteStats};
use crate::route::RouteTable;
use crate::tcp::ConnLimiter;

/// What a request reads from the configuration in force: swapped whole by
/// a reload, read once per request (an immutable snapshot, so one request
/// never sees half of two configs).
#[derive(Debug, Default)]
pub struct Generation {
    /// The route table.
    pub routes: RouteTable,
    /// Who may read `/metrics`.
    pub metrics_allow: Vec<Cidr>,
    /// Each route's counters, by the route's index in `routes`.
    pub route_stats: Vec<Arc<RouteStats>>,
}

impl Generation {
    /// The generation of `routes`, counting into `metrics`.
    pub fn new(routes: RouteTable, metrics_allow: Vec<Cidr>, metrics: &Metrics) -> Self {
        let route_stats = routes
            .routes()
            .iter()
            .map(|r| metrics.route_stats(&r.path))
            .collect();
        Self {
            routes,
            metrics_allow,
            route_stats,
        }
    }
}

/// The route that took a request, in the generation it was routed by: a
/// request (and its access log line) keeps it while a reload swaps the
/// generation under later requests.
#[derive(Debug, Clone)]
pub struct RouteRef {
    gen: Arc<Generation>,
    index: usize,
}

impl RouteRef {
    /// The route of `gen` that takes `path`, if any.
    pub fn lookup(gen: &Arc<Generation>, path: &[u8]) -> Option<Self> {
        let index = gen.routes.lookup_index(path)?;
        Some(Self {
            gen: Arc::clone(gen),
            index,
        })
    }

    /// The route (always there: the index came from this generation).
    pub fn route(&self) -> Option<&crate::route::Route> {
        self.gen.routes.routes().get(self.index)
    }

    /// The route's counters.
    pub fn stats(&self) -> Option<&RouteStats> {
        self.gen.route_stats.get(self.index).map(|s| &**s)
    }
}

/// The generation in force, shared by every listener (one process, one
/// config).
pub type CurrentGeneration = Arc<ArcSwap<Generation>>;

/// What every connection of one listener shares.
pub struct ListenerCtx {
    /// Limits of `H`.
    pub limits: Arc<sigma_http::Limits>,
    /// The routes and `/metrics` access in force (read once per request).
    pub current: CurrentGeneration,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How long to wait for the peer's EOF after our half-close.
    pub linger: Duration,
    /// `A`, when it is in this listener's pipeline (`[HA]`); `[H]` has none.
    pub auth: Option<Arc<Auth>>,
    /// The connection caps (for the open-connections gauge).
    pub limiter: Arc<ConnLimiter>,
    /// `server.memory_budget`, shared by all connections of the process.
    pub budget: Arc<sigma_http::MemoryBudget>,
    /// `[auth] trusted_proxies`: whose forwarding headers are believed
    /// (on `[H]` listeners too: `metrics_allow` and the access log read
    /// the client address they resolve).
    pub trusted_proxies: Arc<Vec<Cidr>>,
    /// `[log] access`: write the access log.
    pub access_log: bool,
    /// `S` on this listener (`T443[SHA]`): the rustls config, built once
    /// per process; `None` on a plain listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `tls.handshake_timeout`.
    pub tls_handshake_timeout: Duration,
    /// What the listener does for TLS before `A` (redirect, `http-01`,
    /// HSTS).
    pub front: crate::front::Front,
    /// The dependencies' states, for `/healthz` and `/metrics`.
    pub health: crate::health::Deps,
}

/// A listener could not be opened (the address is in use, not ours, ...):
/// a runtime failure (exit status 1, DESIGN §8), not a config error.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address of the listener.
    pub addr: SocketAddr,
    /// Why the operating system refused it.
    pub source: std::io::Error,
}
