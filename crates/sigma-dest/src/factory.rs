//! The factory of a destination: how the router's table (in the `sigma`
//! shell) turns a route's `to` into the destination it routes to, in
//! T → H → A → router → destination.
//!
//! Every destination module exposes one [`Factory`] (its `FACTORY`); the
//! shell keeps a registry, a list with one line per factory. A route's
//! `to` picks the first factory that [`matches`](Factory::matches) it,
//! and that factory [`build`](Factory::build)s the route's destination
//! from a [`Build`]: the route and the shared services, as plain values
//! of this crate and `sigma-core` (never A's, never the shell's).

use std::sync::Arc;

use sigma_core::Destination;

use crate::broadcast::config::BroadcastConfig;
use crate::db::config::SharedNamespace;
use crate::db::DbService;
use crate::upstream::config::ProxyOptions;
use crate::UnavailableDestination;

/// What a factory builds one route's destination from.
pub struct Build<'a, 'w> {
    /// The route's path prefix.
    pub path: &'a str,
    /// The route's `to`, as written (`&echo`, `http://…`, `static:DIR`).
    pub to: &'a str,
    /// `&db`: the route's shared namespace, if any.
    pub shared: Option<&'a SharedNamespace>,
    /// Upstream routes: the proxy's timeouts and `echo_identity`.
    pub proxy: Option<ProxyOptions>,
    /// `https://` upstream routes: the route's `ca` file, trusted beside
    /// the webpki roots.
    pub ca: Option<&'a std::path::Path>,
    /// `[broadcast]`: each `&broadcast` route gets its own hub with its rules.
    pub broadcast: &'a BroadcastConfig,
    /// Where each `&broadcast` hub gets its broker: in-process, or Redis
    /// with `[cluster] redis`.
    pub brokers: &'a dyn Brokers,
    /// The one `&db` service every `&db` route shares.
    pub db: &'a Arc<DbService>,
    /// What an upstream takes from `[websocket]` and from A.
    pub upstream: &'a crate::upstream::Settings,
    /// Upstream routes with `assert_identity`: A's signer of
    /// `X-Sigma-Assertion` (made only when a route asks for it).
    pub asserter: Option<&'a Arc<dyn sigma_core::Asserter>>,
    /// Makes the listener's one `&world` service on first use, or
    /// returns it again.
    pub world: &'a mut (dyn FnMut() -> Result<Arc<dyn Destination>, UnavailableDestination> + 'w),
}

/// Makes the broker of each `&broadcast` hub (DESIGN §7): one process
/// ([`InProcess`]) or several nodes through Redis.
pub trait Brokers: Sync {
    /// The broker of the hub of route `namespace` (its path without a
    /// trailing `/`), delivering to `handler`.
    fn broker(
        &self,
        namespace: &str,
        handler: std::sync::Weak<dyn sigma_store::BrokerHandler>,
    ) -> Arc<dyn sigma_store::Broker>;

    /// The way to the other nodes (`&world` carries initiates over it);
    /// `None` on one node.
    fn relay(&self) -> Option<Arc<dyn sigma_store::Relay>> {
        None
    }
}

/// Every hub on its own in-process broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl Brokers for InProcess {
    fn broker(
        &self,
        _: &str,
        handler: std::sync::Weak<dyn sigma_store::BrokerHandler>,
    ) -> Arc<dyn sigma_store::Broker> {
        crate::broadcast::memory_broker(handler)
    }
}

impl Brokers for sigma_store::Cluster {
    fn broker(
        &self,
        namespace: &str,
        handler: std::sync::Weak<dyn sigma_store::BrokerHandler>,
    ) -> Arc<dyn sigma_store::Broker> {
        sigma_store::Cluster::broker(self, namespace, handler)
    }

    fn relay(&self) -> Option<Arc<dyn sigma_store::Relay>> {
        Some(sigma_store::Cluster::relay(self))
    }
}

/// One destination's factory: the `to` it takes, and how to build it.
pub trait Factory: Sync {
    /// The `to` spelling (`&echo`), or its prefix (`http://`, `static:`).
    fn name(&self) -> &'static str;

    /// True if this factory builds the destination `to` names; by default,
    /// `to` is exactly [`name`](Factory::name).
    fn matches(&self, to: &str) -> bool {
        to == self.name()
    }

    /// True if a world can forward to it: it opens a WebSocket endpoint for
    /// an identity alone (DESIGN §5, step 5).
    fn hosts_worlds(&self) -> bool {
        false
    }

    /// The route's body limit, given the one configured (`route`): by
    /// default that one.
    fn max_body(&self, cx: &Build<'_, '_>, route: Option<u64>) -> Option<u64> {
        let _ = cx;
        route
    }

    /// The route's destination.
    fn build(&self, cx: &mut Build<'_, '_>)
        -> Result<Arc<dyn Destination>, UnavailableDestination>;
}
