//! `SIGHUP`: reloading the configuration without dropping connections
//! (DESIGN §8). Part of the `sigma` shell, around the whole pipeline
//! (T → H → A → router → destination): it never touches a connection's
//! bytes, only what the next request and the next connection read.
//!
//! This module says what a reload is (its errors, its summary, the hook
//! other parts plug into, how listeners pair up); the procedure is
//! `Running::reload` in [`crate::server`], which owns what it swaps.
//!
//! A reload is two phases. **Check** builds everything the new config
//! asks for without changing anything the server runs: the same checks as
//! `sigma check` ([`check_auth`], the route table), the next route table
//! from the current one ([`RouteTable::rebuild`]: a route whose
//! destination is configured alike keeps it), each [`Reloader`]'s prepared
//! change (the TLS certificates), the sockets of the listeners it adds.
//! Any failure refuses the whole reload: the error is logged once, the old
//! config stays, `sigma_config_reloads_total{result="error"}` counts it.
//! **Commit** cannot fail: it swaps the [`Generation`] (routes, `/metrics`
//! access) that every request reads once, gives each listener the limits
//! and stages for the connections it accepts next, opens the added
//! listeners, stops the removed ones (their connections drain as at
//! shutdown: in-flight requests finish, WebSockets close 1001), applies
//! the reloaders' changes, and closes with 1001 the WebSockets of routes
//! that are gone. Open connections otherwise go on: a WebSocket on a kept
//! route keeps its destination (a `&broadcast` subscription keeps
//! receiving).
//!
//! Not reloaded (a warning names them): `data_dir`, `[auth]` (sessions,
//! throttles and sockets live in `A`) and `server.memory_budget`; a
//! listener's `server.backlog` is the one it was opened with (an added
//! listener takes the new one).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::listener::ListenError;
use crate::route::RouteTable;

/// A change a [`Reloader`] prepared: applying it cannot fail.
pub type Commit = Box<dyn FnOnce() + Send>;

/// A [`Reloader`]'s check of the new config, returning its change.
pub type Prepare = Box<dyn Fn(&Config) -> anyhow::Result<Commit> + Send + Sync>;

/// A part of the server that a reload updates besides the route table,
/// the limits and the listeners: the TLS certificates (`sigma-tls`'s
/// `CertStore`), later the users' policies. Registered with
/// [`crate::server::Running::add_reloader`].
///
/// `prepare` reads and checks what the new config asks for (files,
/// keys) without applying it, and returns the [`Commit`] that applies it;
/// an error refuses the whole reload (the old config stays everywhere).
pub struct Reloader {
    /// What it reloads, for the log line (`"tls certificates"`).
    pub name: &'static str,
    /// Checks the new config and prepares its change.
    pub prepare: Prepare,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("name", &self.name)
            .finish()
    }
}

/// Why a reload was refused (the old config stays). Each variant's text
/// is one sentence that names the file, key or address.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or does not validate.
    #[error("{0}")]
    Config(#[source] anyhow::Error),
    /// `[auth]` cannot be set up as written (a key file, an OAuth secret).
    #[error("{0:#}")]
    Auth(anyhow::Error),
    /// A route's destination cannot be set up.
    #[error("{0}")]
    Routes(crate::route::UnavailableDestination),
    /// A reloader refused the new config.
    #[error("{name}: {error:#}")]
    Reloader {
        /// The reloader's name.
        name: &'static str,
        /// Why.
        error: anyhow::Error,
    },
    /// An added listener cannot be opened.
    #[error("{0}")]
    Listen(ListenError),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Draining,
}

/// What a reload changed, for its log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Routes in the new table.
    pub routes: usize,
    /// Of them, those that kept their destination (and open sockets).
    pub kept: usize,
    /// Routes of the old table that are gone (or changed destination).
    pub retired: usize,
    /// WebSockets asked to close (1001) because their route is gone.
    pub sockets_closed: usize,
    /// Listeners opened, with their bound address.
    pub opened: Vec<SocketAddr>,
    /// Listeners stopped (their connections drain).
    pub stopped: Vec<SocketAddr>,
    /// Keys that changed but take effect only at the next start.
    pub not_reloaded: Vec<&'static str>,
}

/// What `sigma check` checks of `[auth]`: that `A` can be set up (key
/// files, OAuth client secrets), over an in-memory store (the data
/// directory may be locked by a running server).
pub fn check_auth(config: &Config) -> anyhow::Result<()> {
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::RedbStore::in_memory()?);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    crate::auth::Auth::new(store, &config.auth, metrics)?;
    Ok(())
}

/// `sigma check`: the route resolution `serve` does and the setup of `A`,
/// so that `check` fails exactly when `serve` (or a reload) would.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::RedbStore::in_memory()?);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let audit: Arc<dyn sigma_core::ReplyAudit> = metrics;
    RouteTable::build(config, &store, &audit, &sigma_dest::factory::InProcess)?;
    check_auth(config)
}

/// The keys a reload does not apply that differ between `old` and `new`.
pub(crate) fn not_reloaded(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.data_dir != new.data_dir {
        out.push("data_dir");
    }
    if old.store != new.store {
        out.push("[store]");
    }
    if old.cluster != new.cluster {
        out.push("[cluster]");
    }
    if old.auth != new.auth {
        out.push("[auth]");
    }
    if old.server.memory_budget != new.server.memory_budget {
        out.push("server.memory_budget");
    }
    out
}

/// How the listeners of a new topology map onto the open ones: by the
/// configured address (several with one address, such as port 0, pair in
/// order).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ListenerPlan {
    /// Open listener index, and its new spec (the stages may change).
    pub kept: Vec<(usize, crate::pipeline::Listener)>,
    /// Indexes of open listeners to stop, ascending.
    pub removed: Vec<usize>,
    /// Listeners to open.
    pub added: Vec<crate::pipeline::Listener>,
}

/// [`ListenerPlan`] from the configured addresses of the open listeners.
pub(crate) fn plan_listeners(
    open: &[SocketAddr],
    next: &[crate::pipeline::Listener],
) -> ListenerPlan {
    let mut taken = vec![false; open.len()];
    let mut plan = ListenerPlan::default();
    for l in next {
        let hit = open
            .iter()
            .zip(taken.iter_mut())
            .enumerate()
            .find(|(_, (a, t))| **a == l.addr && !**t);
        match hit {
            Some((i, (_, t))) => {
                *t = true;
                plan.kept.push((i, l.clone()));
            }
            None => plan.added.push(l.clone()),
        }
    }
    plan.removed = taken
        .iter()
        .enumerate()
        .filter(|(_, t)| !**t)
        .map(|(i, _)| i)
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse;

    fn plan(open: &str, next: &str) -> ListenerPlan {
        let open: Vec<SocketAddr> = parse(open)
            .unwrap()
            .listeners
            .iter()
            .map(|l| l.addr)
            .collect();
        plan_listeners(&open, &parse(next).unwrap().listeners)
    }

    #[test]
    fn listeners_pair_by_address_in_order() {
        let p = plan("T127.0.0.1:0[HA] T127.0.0.1:9000[H]", "T127.0.0.1:9000[HA]");
        assert_eq!(p.kept.len(), 1);
        assert_eq!(p.kept[0].0, 1);
        assert_eq!(p.removed, vec![0]);
        assert!(p.added.is_empty());

        let p = plan("T127.0.0.1:0[HA]", "T127.0.0.1:0[HA] T127.0.0.1:0[H]");
        assert_eq!(p.kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![0]);
        assert!(p.removed.is_empty());
        assert_eq!(p.added.len(), 1);

        let p = plan("T127.0.0.1:0[HA] T127.0.0.1:0[H]", "T127.0.0.1:0[HA]");
        assert_eq!(p.removed, vec![1]);
    }

    #[test]
    fn not_reloaded_names_the_keys() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(not_reloaded(&a, &b).is_empty());
        b.data_dir = "/elsewhere".into();
        b.server.memory_budget += 1;
        assert_eq!(
            not_reloaded(&a, &b),
            vec!["data_dir", "server.memory_budget"]
        );
    }
}
