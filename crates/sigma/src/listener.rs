//! What every connection of one listener shares: the context `T` builds
//! once per listener (server), the driver (conn) carries to each
//! connection, and dispatch reads on the way `H` → `A` → router →
//! destination (limits, route table, metrics, `A`, the memory budget).
//!
//! It sits below both conn and dispatch so that neither imports the other
//! for it; it holds data only, no behaviour.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::config::Cidr;
use crate::metrics::Metrics;
use crate::route::RouteTable;
use crate::tcp::ConnLimiter;

/// What every connection of one listener shares.
pub struct ListenerCtx {
    /// Limits of `H`.
    pub limits: Arc<sigma_http::Limits>,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How long to wait for the peer's EOF after our half-close.
    pub linger: Duration,
    /// `A`, when it is in this listener's pipeline (`[HA]`); `[H]` has none.
    pub auth: Option<Arc<Auth>>,
    /// The connection caps (for the open-connections gauge).
    pub limiter: Arc<ConnLimiter>,
    /// Who may read `/metrics`.
    pub metrics_allow: Arc<Vec<Cidr>>,
    /// `server.memory_budget`, shared by all connections of the process.
    pub budget: Arc<sigma_http::MemoryBudget>,
}
