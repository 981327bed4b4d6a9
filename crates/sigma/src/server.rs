//! `sigma serve`: assembles the pipelines of a [`Config`] and runs them.
//!
//! For each listener of the topology (`T3000[HA] T9090[H]`) it binds `T`,
//! builds the shared per-listener context (limits of `H`, whether `A` is
//! present, the route table) and spawns one pipeline per connection. It
//! owns the process lifecycle: SIGINT/SIGTERM start a graceful drain (stop
//! accepting, let in-flight requests finish, WebSocket close 1001) bounded
//! by `server.drain_timeout`; a second signal exits at once. SIGHUP
//! reloads the config ([`crate::reload`]): the generation every request
//! reads and each listener's context for its next connections are
//! swapped, listeners are opened and stopped.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::auth::Auth;

use crate::config::Config;
use crate::conn;
/// A listener could not be opened (defined with the listener context).
pub use crate::listener::ListenError;
use crate::listener::{CurrentGeneration, Generation, ListenerCtx};
use crate::metrics::Metrics;
use crate::pipeline::{self, Stage};
use crate::reload::{ListenerPlan, ReloadError, Reloader, Summary};
use crate::route::RouteTable;
use crate::store::Store;
use crate::tcp::{self, ConnLimiter};

/// Exit status after a second signal cut the drain short.
pub const EXIT_FORCED: i32 = 130;

/// A running server: its bound addresses and the handles to stop it.
pub struct Running {
    /// The bound address of each listener, in topology order (at start;
    /// a reload may open and stop listeners).
    pub addrs: Vec<SocketAddr>,
    pub(crate) limiter: Arc<ConnLimiter>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The store (users, sessions, secrets).
    pub store: Arc<dyn Store>,
    pub(crate) audit: Arc<dyn sigma_core::ReplyAudit>,
    auth: Arc<Auth>,
    budget: Arc<sigma_http::MemoryBudget>,
    state: std::sync::Mutex<State>,
    /// `S`, when `[tls]` is set: certificates, the rustls config, ACME.
    tls: Option<Arc<crate::tls::Tls>>,
    /// The port of the first `S` listener at start (0: none), where the
    /// plain listeners' `[tls.http] redirect` points.
    tls_port: std::sync::atomic::AtomicU16,
    /// The connection to Redis, when `[cluster] redis` is set (started
    /// once; a reload does not change it).
    cluster: Option<Arc<sigma_store::Cluster>>,
}

/// What a reload changes (behind one lock: reloads and the drain never
/// interleave).
pub(crate) struct State {
    /// The config in force.
    pub config: Config,
    /// The routes and `/metrics` access every request reads.
    pub current: CurrentGeneration,
    /// The open listeners.
    pub listeners: Vec<OpenListener>,
    /// What a reload updates besides routes, limits and listeners.
    pub reloaders: Vec<Reloader>,
    /// The drain started: no more reloads.
    pub draining: bool,
}

impl State {
    /// How `config`'s listeners map onto the open ones.
    pub fn plan_listeners(&self, config: &Config) -> ListenerPlan {
        let open: Vec<SocketAddr> = self.listeners.iter().map(|l| l.spec.addr).collect();
        crate::reload::plan_listeners(&open, &config.topology.listeners)
    }
}

/// One open listener.
pub(crate) struct OpenListener {
    /// As configured (its address may have port 0).
    pub spec: pipeline::Listener,
    /// The bound address.
    pub addr: SocketAddr,
    /// What the connections it accepts next get (a reload replaces it).
    pub ctx: Arc<arc_swap::ArcSwap<ListenerCtx>>,
    /// `true`: stop accepting and drain this listener's connections.
    drain: tcp::Drain,
}

impl OpenListener {
    /// Stops accepting (the socket closes) and drains the listener's
    /// connections: in-flight requests finish, WebSockets close 1001.
    pub fn stop(&self) {
        self.drain.start();
    }
}

impl Running {
    /// Applies `config` (already loaded and validated by the config
    /// loader) to the running server, or refuses it whole: the check and
    /// commit phases of [`crate::reload`]. Open connections go on.
    pub fn reload(&self, config: Config) -> Result<Summary, ReloadError> {
        let mut state = self.lock_state();
        if state.draining {
            return Err(ReloadError::Draining);
        }
        // ----- check: nothing the server runs changes -----------------
        crate::reload::check_auth(&config).map_err(ReloadError::Auth)?;
        let current = Arc::clone(&state.current);
        let old = current.load_full();
        let routes = RouteTable::rebuild(
            &config,
            &self.store,
            &self.audit,
            brokers(self.cluster.as_ref()),
            Some(&old.routes),
        )
        .map_err(ReloadError::Routes)?;
        let mut commits = Vec::with_capacity(state.reloaders.len());
        for r in &state.reloaders {
            let c = (r.prepare)(&config).map_err(|error| ReloadError::Reloader {
                name: r.name,
                error,
            })?;
            commits.push(c);
        }
        let plan = state.plan_listeners(&config);
        let mut bound = Vec::with_capacity(plan.added.len());
        for spec in &plan.added {
            // Dropped (closed) again if a later one fails.
            bound.push((
                spec.clone(),
                bind(spec, config.server.backlog).map_err(ReloadError::Listen)?,
            ));
        }
        // ----- commit: cannot fail ------------------------------------
        let next = Arc::new(Generation::new(
            routes,
            config.server.metrics_allow.clone(),
            &self.metrics,
        ));
        current.store(Arc::clone(&next));
        self.limiter.set_caps(
            config.server.max_connections,
            config.server.max_connections_per_ip,
        );
        let mut summary = Summary {
            routes: next.routes.routes().len(),
            kept: old.routes.kept_in(&next.routes),
            not_reloaded: crate::reload::not_reloaded(&state.config, &config),
            ..Summary::default()
        };
        for (i, spec) in plan.kept {
            if let Some(open) = state.listeners.get_mut(i) {
                open.spec = spec;
                let ctx = self.listener_ctx(&open.spec, &config, &current);
                open.ctx.store(Arc::new(ctx));
            }
        }
        // Highest index first, so the others keep theirs.
        for i in plan.removed.into_iter().rev() {
            if i < state.listeners.len() {
                let open = state.listeners.remove(i);
                open.stop();
                summary.stopped.push(open.addr);
            }
        }
        for (spec, listener) in bound {
            let open = self.serve_listener(spec, listener, &config, &current);
            summary.opened.push(open.addr);
            state.listeners.push(open);
        }
        for c in commits {
            c();
        }
        (summary.retired, summary.sockets_closed) = old.routes.retire_missing(&next.routes);
        // What stays in force of the old config, so that the next reload
        // compares against what really runs.
        let mut config = config;
        config.data_dir.clone_from(&state.config.data_dir);
        config.store.clone_from(&state.config.store);
        config.auth.clone_from(&state.config.auth);
        config.server.memory_budget = state.config.server.memory_budget;
        state.config = config;
        Ok(summary)
    }
}

/// Where the `&broadcast` hubs publish: Redis when `[cluster] redis` is
/// set, else in-process.
fn brokers(cluster: Option<&Arc<sigma_store::Cluster>>) -> &dyn sigma_dest::factory::Brokers {
    match cluster {
        Some(c) => &**c,
        None => &sigma_dest::factory::InProcess,
    }
}

/// Connects to the Redis of `[cluster] redis`; an unreachable server is a
/// warning (the node starts degraded and keeps retrying), not a failure.
async fn start_cluster(
    url: &str,
    c: &crate::config::ClusterConfig,
) -> anyhow::Result<sigma_store::Cluster> {
    let ca = match &c.redis_ca {
        Some(path) => Some(
            sigma_core::namedfile::read(path)
                .map_err(|e| anyhow::anyhow!("cluster.redis_ca: {e}"))?,
        ),
        None => None,
    };
    let cluster = sigma_store::Cluster::start_tls(url, ca, &c.prefix, sigma_store::DEFAULT_TTL)
        .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))?;
    if cluster.wait_up(sigma_store::REDIS_TIMEOUT).await {
        let node = c.node.as_deref().unwrap_or("-");
        tracing::info!(redis = cluster.target(), prefix = %c.prefix, node, "cluster: connected to Redis");
    } else {
        tracing::warn!(
            redis = cluster.target(),
            node = c.node.as_deref().unwrap_or("-"),
            "cluster: Redis unreachable; broadcast answers 503 until it is back (retrying)"
        );
    }
    Ok(cluster)
}

/// Binds the listening socket of `spec`.
pub(crate) fn bind(
    spec: &pipeline::Listener,
    backlog: i32,
) -> Result<tokio::net::TcpListener, ListenError> {
    tcp::bind(spec.addr, backlog).map_err(|source| ListenError {
        addr: spec.addr,
        source,
    })
}

/// Binds every listener and starts accepting. Fails if a listener cannot
/// be bound or a route's destination is unavailable.
pub async fn start(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let audit: Arc<dyn sigma_core::ReplyAudit> = Arc::clone(&metrics) as _;
    let cluster = match &config.cluster.redis {
        Some(url) => Some(Arc::new(start_cluster(url, &config.cluster).await?)),
        None => None,
    };
    let routes = RouteTable::build(config, &store, &audit, brokers(cluster.as_ref()))?;
    let current: CurrentGeneration = Arc::new(arc_swap::ArcSwap::from_pointee(Generation::new(
        routes,
        config.server.metrics_allow.clone(),
        &metrics,
    )));
    let limiter = ConnLimiter::new(
        config.server.max_connections,
        config.server.max_connections_per_ip,
    );
    let mut auth = Auth::new(
        Arc::clone(&store),
        &config.auth,
        Arc::clone(&metrics) as Arc<dyn sigma_core::Rejects>,
    )?;
    if let Some(c) = &cluster {
        // Login throttles counted on every node.
        auth = auth.with_shared_counters(Arc::clone(c) as Arc<dyn sigma_store::SharedCounters>);
    }
    let auth = Arc::new(auth);
    // Sessions other nodes on a shared store ended close here too (4401).
    let weak = Arc::downgrade(&auth);
    store.listen_revocations(Box::new(move |r| {
        if let Some(a) = weak.upgrade() {
            match r {
                crate::store::Revocation::ApiKey(name) => a.apikeys.forget(name),
                _ => {
                    a.sessions.on_remote(r);
                }
            }
        }
    }));
    tokio::spawn(purge_sessions(Arc::clone(&store)));
    tokio::spawn(sweep_sessions(Arc::clone(&auth)));
    tokio::spawn(refresh_jwks(Arc::clone(&auth)));
    // OIDC discovery and JWKS of `[auth.oauth.*]`, off the request path.
    tokio::spawn(crate::auth::oauth::background(Arc::clone(&auth)));
    // `S` (DESIGN §2a): certificates are read before any listener opens.
    crate::config::check_tls_topology(config.tls.as_ref(), &config.topology)
        .map_err(crate::tls::TlsSetupError::Topology)?;
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(crate::tls::Tls::build(t, &config.data_dir)?)),
        None => None,
    };
    // One budget for every connection of every listener (DESIGN §3).
    let budget = sigma_http::MemoryBudget::new(config.server.memory_budget);
    let mut running = Running {
        tls: tls.clone(),
        tls_port: std::sync::atomic::AtomicU16::new(0),
        cluster,
        addrs: Vec::new(),
        limiter,
        metrics,
        store,
        audit,
        auth,
        budget,
        state: std::sync::Mutex::new(State {
            config: config.clone(),
            current: Arc::clone(&current),
            listeners: Vec::new(),
            reloaders: Vec::new(),
            draining: false,
        }),
    };
    let mut bound = Vec::with_capacity(config.topology.listeners.len());
    for l in &config.topology.listeners {
        bound.push((l.clone(), bind(l, config.server.backlog)?));
    }
    // Plain listeners redirect to the first TLS listener's port.
    if let Some(port) = bound
        .iter()
        .find(|(l, _)| l.has(Stage::S))
        .and_then(|(_, li)| li.local_addr().ok())
        .map(|a| a.port())
    {
        running
            .tls_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }
    let mut open = Vec::with_capacity(bound.len());
    for (spec, listener) in bound {
        open.push(running.serve_listener(spec, listener, config, &current));
    }
    running.addrs = open.iter().map(|l| l.addr).collect();
    running.lock_state().listeners = open;
    if let Some(t) = &tls {
        // ACME in the background; a listener that has a certificate is
        // never held up by it.
        t.spawn();
        running.add_reloader(crate::tls::reloader(Arc::clone(t)));
    }
    Ok(running)
}

impl Running {
    pub(crate) fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Registers a part of the server that a reload updates (the TLS
    /// certificates): see [`Reloader`].
    pub fn add_reloader(&self, reloader: Reloader) {
        self.lock_state().reloaders.push(reloader);
    }

    /// The config in force (the last one a reload applied).
    pub fn config(&self) -> Config {
        self.lock_state().config.clone()
    }

    /// The bound addresses of the listeners open now, in topology order.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.lock_state().listeners.iter().map(|l| l.addr).collect()
    }

    /// What the connections a listener `spec` accepts share.
    pub(crate) fn listener_ctx(
        &self,
        spec: &pipeline::Listener,
        config: &Config,
        current: &CurrentGeneration,
    ) -> ListenerCtx {
        let is_tls = spec.has(Stage::S);
        let tls_http = config
            .tls
            .as_ref()
            .map(|t| t.http.clone())
            .unwrap_or_default();
        let front = if is_tls {
            crate::front::Front {
                hsts: tls_http.hsts.map(bytes::Bytes::from),
                ..Default::default()
            }
        } else {
            let port = self.tls_port.load(std::sync::atomic::Ordering::Relaxed);
            crate::front::Front {
                redirect_port: (tls_http.redirect && port != 0).then_some(port),
                http01: self.tls.as_ref().and_then(|t| t.http01()),
                hsts: None,
            }
        };
        ListenerCtx {
            tls: self
                .tls
                .as_ref()
                .filter(|_| is_tls)
                .map(|t| Arc::clone(&t.server_config)),
            front,
            tls_handshake_timeout: config
                .tls
                .as_ref()
                .map_or(sigma_tls::conn::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
                    t.handshake_timeout
                }),
            limits: Arc::new(config.limits.clone()),
            current: Arc::clone(current),
            metrics: Arc::clone(&self.metrics),
            linger: config.server.linger_timeout,
            auth: spec
                .stages
                .contains(&Stage::A)
                .then(|| Arc::clone(&self.auth)),
            limiter: Arc::clone(&self.limiter),
            budget: Arc::clone(&self.budget),
            // From `A`'s config, which a reload does not change.
            trusted_proxies: Arc::new(self.auth.trusted_proxies().to_vec()),
            access_log: config.log.access,
            health: crate::health::Deps {
                store: Arc::clone(&self.store) as Arc<dyn crate::store::StoreHealth>,
                cluster: self.cluster.clone(),
            },
        }
    }

    /// Starts accepting on a bound `listener`.
    pub(crate) fn serve_listener(
        &self,
        spec: pipeline::Listener,
        listener: tokio::net::TcpListener,
        config: &Config,
        current: &CurrentGeneration,
    ) -> OpenListener {
        let addr = listener.local_addr().unwrap_or(spec.addr);
        let ctx = Arc::new(arc_swap::ArcSwap::from_pointee(
            self.listener_ctx(&spec, config, current),
        ));
        let drain_tx = tcp::Drain::new();
        let drain_rx = drain_tx.watch();
        let drain = drain_tx.watch();
        let accepted = Arc::clone(&ctx);
        tokio::spawn(tcp::accept_loop(
            listener,
            Arc::clone(&self.limiter),
            Arc::clone(&self.metrics),
            drain_rx,
            move |stream, peer, slot| {
                tokio::spawn(conn::serve(
                    stream,
                    peer,
                    accepted.load_full(),
                    drain.clone(),
                    slot,
                ));
            },
        ));
        OpenListener {
            spec,
            addr,
            ctx,
            drain: drain_tx,
        }
    }
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
        {
            let mut state = self.lock_state();
            state.draining = true;
            for l in &state.listeners {
                l.stop();
            }
        }
        self.limiter.wait_idle().await;
    }
}

/// Reads the config again, the way it was read at start (the same file,
/// environment and command-line overrides).
pub type ConfigSource = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// Runs `config` until a signal; returns the process exit status. SIGHUP
/// reloads the config from `source` ([`crate::reload`]).
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    source: ConfigSource,
) -> anyhow::Result<i32> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Installed before the listeners open: from then on SIGHUP reloads
    // (its default action would end the process).
    let mut sighup = signal(SignalKind::hangup())?;
    let running = start(&config, Arc::clone(&store)).await?;
    // The listeners are bound: only now may a store with no users get
    // `admin` (a busy port creates nothing), its password on stdout.
    let first = Arc::clone(&store);
    tokio::task::spawn_blocking(move || {
        crate::users::first_start(&*first, &mut std::io::stdout().lock())
    })
    .await??;
    // `sigma user …` while serving (the embedded store is locked by us).
    let _admin = match config.store.url {
        Some(_) => None,
        None => match crate::admin::serve(&config.data_dir, store, Arc::clone(&running.auth)) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(
                    path = %config.data_dir.join(crate::users::ADMIN_SOCKET).display(),
                    error = %e,
                    "no admin socket: `sigma user` works only while the server is stopped"
                );
                None
            }
        },
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", config.describe())?;
        for (l, addr) in config.topology.listeners.iter().zip(&running.addrs) {
            writeln!(out, "listening on {addr} [{}]", stages(l))?;
        }
        out.flush()?;
    }
    tracing::info!(addrs = ?running.addrs, "sigma is serving");
    notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                notify_reloading();
                reload(&running, &source);
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(open = running.limiter.open(), "draining");
    let deadline = running.config().server.drain_timeout;
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

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) about `state`; nothing
/// when not run by systemd. A failure is logged, never fatal.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` that systemd 253 and newer
/// require with it.
fn notify_reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
}

/// The stage letters of a listener (`HA`).
fn stages(l: &pipeline::Listener) -> String {
    l.stages.iter().map(|s| s.letter()).collect()
}

/// One SIGHUP: reads `source`, applies it or keeps the old config; one
/// log line either way, and `sigma_config_reloads_total{result}`.
fn reload(running: &Running, source: &ConfigSource) {
    let outcome = source()
        .map_err(crate::reload::ReloadError::Config)
        .and_then(|config| running.reload(config));
    match outcome {
        Ok(summary) => {
            running.metrics.config_reloaded(true);
            {
                let mut out = std::io::stdout().lock();
                let state = running.lock_state();
                for l in state
                    .listeners
                    .iter()
                    .filter(|l| summary.opened.contains(&l.addr))
                {
                    let _ = writeln!(out, "listening on {} [{}]", l.addr, stages(&l.spec));
                }
                let _ = out.flush();
            }
            if !summary.not_reloaded.is_empty() {
                tracing::warn!(
                    keys = %summary.not_reloaded.join(", "),
                    "config reload: these changes take effect at the next start"
                );
            }
            tracing::info!(
                routes = summary.routes,
                kept = summary.kept,
                retired = summary.retired,
                sockets_closed = summary.sockets_closed,
                opened = ?summary.opened,
                stopped = ?summary.stopped,
                "config reloaded"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; keeping the running config");
            running.metrics.config_reloaded(false);
        }
    }
}
