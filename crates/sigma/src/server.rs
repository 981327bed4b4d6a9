//! `sigma serve`: assembles the pipelines of a [`Config`] and runs them.
//!
//! For each listener of the topology (`T3000[HA] T9090[H]`) it binds `T`,
//! builds the shared per-listener context (limits of `H`, whether `A` is
//! present, the route table) and spawns one pipeline per connection. It
//! owns the process lifecycle: SIGINT/SIGTERM start a graceful drain (stop
//! accepting, let in-flight requests finish, WebSocket close 1001) bounded
//! by `server.drain_timeout`; a second signal exits at once.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::auth::Auth;

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
use crate::config::Config;
use crate::conn;
use crate::listener::ListenerCtx;
use crate::metrics::Metrics;
use crate::pipeline::Stage;
use crate::route::RouteTable;
use crate::store::Store;
use crate::tcp::{self, ConnLimiter};

/// Exit status after a second signal cut the drain short.
pub const EXIT_FORCED: i32 = 130;

/// A running server: its bound addresses and the handles to stop it.
pub struct Running {
    /// The bound address of each listener, in topology order.
    pub addrs: Vec<SocketAddr>,
    drain: watch::Sender<bool>,
    limiter: Arc<ConnLimiter>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The store (users, sessions, secrets).
    pub store: Arc<dyn Store>,
}

/// Binds every listener and starts accepting. Fails if a listener cannot
/// be bound or a route's destination is unavailable.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let audit: Arc<dyn sigma_core::ReplyAudit> = Arc::clone(&metrics) as _;
    let routes = Arc::new(RouteTable::build(config, &store, &audit)?);
    let limits = Arc::new(config.limits.clone());
    let limiter = ConnLimiter::new(
        config.server.max_connections,
        config.server.max_connections_per_ip,
    );
    let metrics_allow = Arc::new(config.server.metrics_allow.clone());
    let auth = Arc::new(Auth::new(
        Arc::clone(&store),
        &config.auth,
        Arc::clone(&metrics) as Arc<dyn sigma_core::Rejects>,
    )?);
    tokio::spawn(purge_sessions(Arc::clone(&store)));
    tokio::spawn(sweep_sessions(Arc::clone(&auth)));
    tokio::spawn(refresh_jwks(Arc::clone(&auth)));
    // OIDC discovery and JWKS of `[auth.oauth.*]`, off the request path.
    tokio::spawn(crate::auth::oauth::background(Arc::clone(&auth)));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut addrs = Vec::new();
    // One budget for every connection of every listener (DESIGN §3).
    let budget = sigma_http::MemoryBudget::new(config.server.memory_budget);
    for l in &config.topology.listeners {
        let listener = tcp::bind(l.addr, config.server.backlog).map_err(|source| ListenError {
            addr: l.addr,
            source,
        })?;
        let addr = listener.local_addr()?;
        addrs.push(addr);
        let ctx = Arc::new(ListenerCtx {
            limits: Arc::clone(&limits),
            routes: Arc::clone(&routes),
            metrics: Arc::clone(&metrics),
            linger: config.server.linger_timeout,
            auth: l.stages.contains(&Stage::A).then(|| Arc::clone(&auth)),
            limiter: Arc::clone(&limiter),
            metrics_allow: Arc::clone(&metrics_allow),
            budget: Arc::clone(&budget),
        });
        let drain = drain_rx.clone();
        tokio::spawn(tcp::accept_loop(
            listener,
            Arc::clone(&limiter),
            Arc::clone(&metrics),
            drain_rx.clone(),
            move |stream, peer, slot| {
                tokio::spawn(conn::serve(
                    stream,
                    peer,
                    Arc::clone(&ctx),
                    drain.clone(),
                    slot,
                ));
            },
        ));
    }
    Ok(Running {
        addrs,
        drain: drain_tx,
        limiter,
        metrics,
        store,
    })
}

/// Keeps external issuers' JWKS fresh: at start, then every minute (each
/// issuer refetches only when its cache is due).
async fn refresh_jwks(auth: Arc<Auth>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = auth.clock().unix_secs();
        if !auth.verifier.needs_refresh(now) {
            continue;
        }
        for outcome in auth.verifier.refresh_due(now).await {
            if let Err(e) = outcome.result {
                tracing::warn!(issuer = %outcome.issuer, error = %e, "JWKS refresh failed");
            }
        }
    }
}

/// How often expired sessions are deleted from the store (they are refused
/// on use anyway; this keeps the store from growing).
const SESSION_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Closes the sockets of sessions that expired (idle or absolute) with
/// 4401, every [`crate::auth::session::SWEEP_INTERVAL`]: a socket's
/// session may expire without any request noticing.
async fn sweep_sessions(auth: Arc<Auth>) {
    let mut tick = tokio::time::interval(crate::auth::session::SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if auth.sessions.open_sockets() == 0 {
            continue;
        }
        let a = Arc::clone(&auth);
        // A session that is not cached is read from the store.
        let ended =
            tokio::task::spawn_blocking(move || a.sessions.sweep(a.clock().unix_ms())).await;
        if let Ok(n) = ended {
            if n > 0 {
                tracing::info!(sessions = n, "closed the sockets of expired sessions");
            }
        }
    }
}

async fn purge_sessions(store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(SESSION_PURGE_INTERVAL);
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        let purged = tokio::task::spawn_blocking(move || {
            store.sessions_purge_expired(crate::auth::unix_now_ms())
        })
        .await;
        match purged {
            Ok(Ok(n)) if n > 0 => tracing::info!(sessions = n, "purged expired sessions"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not purge expired sessions"),
            _ => {}
        }
    }
}

impl Running {
    /// Starts the graceful drain and waits until every connection ended.
    pub async fn drain(&self) {
        let _ = self.drain.send(true);
        self.limiter.wait_idle().await;
    }
}

/// Runs `config` until a signal; returns the process exit status.
pub async fn run(config: Config, store: Arc<dyn Store>) -> anyhow::Result<i32> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let running = start(&config, store).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", config.describe())?;
        for (l, addr) in config.topology.listeners.iter().zip(&running.addrs) {
            let stages: String = l.stages.iter().map(|s| s.letter()).collect();
            writeln!(out, "listening on {addr} [{stages}]")?;
        }
        out.flush()?;
    }
    tracing::info!(addrs = ?running.addrs, "sigma is serving");
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    tracing::info!(open = running.limiter.open(), "draining");
    let deadline = config.server.drain_timeout;
    tokio::select! {
        _ = running.drain() => {
            tracing::info!("drained; exiting");
            Ok(0)
        }
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!(open = running.limiter.open(), "drain deadline passed; exiting");
            Ok(0)
        }
        _ = sigint.recv() => Ok(EXIT_FORCED),
        _ = sigterm.recv() => Ok(EXIT_FORCED),
    }
}
