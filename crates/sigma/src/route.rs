//! The route table: from a request path to a destination (DESIGN §6).
//!
//! ```text
//!  A ──Tagged{identity, request}──▶ [ route ] ──▶ destination (&echo, …)
//! ```
//!
//! Routes are path prefixes matched at a segment boundary, longest first:
//! `/echo` matches `/echo`, `/echo/x` and `/echo?q`, never `/echoes`.
//! A destination takes tagged messages and returns tagged replies; it never
//! sees the socket, and `A` checks every reply it returns.
//!
//! A reload builds the next table from the previous one
//! ([`RouteTable::rebuild`]): a route whose destination is configured as
//! before keeps its destination (a `&broadcast` hub with its subscribers,
//! an upstream's connection pool) and its [`sockets::RouteSockets`]; the
//! previous table's other routes are [`RouteTable::retire_missing`]d.

pub mod path;
pub mod sockets;

use std::sync::Arc;

use crate::config::{AuthLevel, RouteConfig};

// The destination interface and the push queue live in `sigma-core`;
// re-exported here so `crate::route::…` paths keep working.
pub use sigma_core::destination::{
    Answer, Capabilities, Destination, Handled, HttpRequest, Request, Upgrade, UpgradeRequest,
    WsEndpoint,
};
pub use sigma_core::push::{
    ws_push_queue, ws_push_queue_for, Delivered, PushError, Pushed, WsCloser, WsReceiver, WsSender,
    WS_CLOSE_REVOKED, WS_PUSH_BYTES, WS_PUSH_QUEUE,
};

/// One resolved route.
pub struct Route {
    /// The path prefix.
    pub path: String,
    /// Who may use it (enforced by `A` once it authenticates).
    pub auth: AuthLevel,
    /// Allow-list of users, if any.
    pub users: Option<Vec<String>>,
    /// Per-route body limit, if lower than the connection's.
    pub max_body: Option<u64>,
    /// The destination.
    pub dest: Arc<dyn Destination>,
    /// The WebSockets open on this route (closed with 1001 when a reload
    /// removes it).
    pub sockets: Arc<sockets::RouteSockets>,
    /// The route as configured (a reload compares it).
    config: RouteConfig,
}

impl Route {
    /// The route's `allow` / `deny` / `methods`, if it has any.
    pub fn policy(&self) -> Option<&crate::auth::policy::Policy> {
        self.config.policy.as_deref()
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path)
            .field("dest", &self.dest.name())
            .finish()
    }
}

/// The route table of a listener, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// The one `&db` service of the table's `&db` routes (and worlds').
    db: Option<Arc<crate::db::DbService>>,
    /// The one `&world` service, if a route goes to `&world`.
    world: Option<Arc<crate::world::WorldService>>,
    /// What the destinations were built from (a reload compares it).
    inputs: Inputs,
}

/// What a table's destinations were built from, beyond each route's own
/// keys: the tables the factories read. A reload keeps a destination only
/// if what it reads is unchanged.
#[derive(Debug, Default, Clone, PartialEq)]
struct Inputs {
    broadcast: crate::config::BroadcastConfig,
    db: crate::config::DbConfig,
    upstream: Option<crate::upstream::Settings>,
    /// `[world.<name>]` as written, and as the service takes it (with the
    /// `users` of the routes they reuse).
    world: Vec<crate::config::WorldCommand>,
    world_specs: Vec<sigma_dest::world::service::WorldCommandSpec>,
    /// The route each world command reuses ([`crate::config::Config::world_route`]).
    world_targets: Vec<Option<RouteConfig>>,
    worlds: crate::config::WorldsConfig,
}

impl Inputs {
    fn of(config: &crate::config::Config) -> Self {
        Self {
            broadcast: config.broadcast.clone(),
            db: config.db.clone(),
            upstream: Some(crate::upstream::Settings::of(
                &config.limits.ws,
                dest_context(config),
            )),
            world: config.world.clone(),
            world_specs: world_commands(config),
            world_targets: config
                .world
                .iter()
                .map(|w| config.world_route(w).map(|(_, r)| dest_part(r)))
                .collect(),
            worlds: config.worlds.clone(),
        }
    }

    /// The tables every factory may read are unchanged.
    fn same_shared(&self, prev: &Self) -> bool {
        self.broadcast == prev.broadcast && self.db == prev.db && self.upstream == prev.upstream
    }

    /// The `&world` service built from `self` would be the one built from
    /// `prev`: the same commands and limits, and every command's target a
    /// route configured alike (so it keeps its destination) or the same
    /// fallback.
    fn same_world(&self, prev: &Self) -> bool {
        self == prev
    }

    /// The route `new` gets the destination that `old` (a route of the
    /// table built from `prev`) has: the same path, `to` and options, and
    /// the same tables behind it; `world`: the `&world` service is kept.
    fn same_dest(&self, new: &RouteConfig, prev: &Self, old: &RouteConfig, world: bool) -> bool {
        use crate::config::Destination as To;
        if dest_part(new) != dest_part(old) {
            return false;
        }
        match &new.to {
            To::Echo | To::Static(_) | To::Web => true,
            To::Broadcast => self.broadcast == prev.broadcast,
            To::Db => self.db == prev.db,
            To::Upstream(_) => self.upstream == prev.upstream,
            To::World => world,
            // A factory of the registry may read any of them.
            To::Registered(_) => world && self.same_shared(prev),
        }
    }
}

/// A route's keys that its destination is built from (not `auth`, `users`,
/// the policy or `max_body`, which admission reads per request).
fn dest_part(r: &RouteConfig) -> RouteConfig {
    RouteConfig {
        auth: AuthLevel::None,
        users: None,
        max_body: None,
        policy: None,
        ..r.clone()
    }
}

/// A route's destination cannot be set up (in `sigma-dest`, whose
/// factories return it).
pub use sigma_dest::UnavailableDestination;

/// What the destinations take from A, as plain values: the names of
/// sigma's own cookies, its token issuer and longest token, and whether
/// its cookies are `Secure` under `config`'s `[auth]`.
pub fn dest_context(config: &crate::config::Config) -> sigma_dest::DestContext {
    /// The session and the OAuth state cookies.
    const OWN_COOKIES: &[&str] = &[
        crate::auth::session::COOKIE_NAME,
        crate::auth::oauth::state::STATE_COOKIE,
    ];
    sigma_dest::DestContext {
        own_cookies: OWN_COOKIES,
        own_issuer: crate::auth::OWN_ISSUER,
        max_token_bytes: crate::auth::jwt::MAX_TOKEN_BYTES,
        cookies_secure: crate::auth::cookies_secure(&config.auth),
    }
}

/// A request's bearer token, as A reads it: what a world binds a session
/// socket and its fork cookies to when A identified it by a token (else
/// the identity's login session).
fn world_bearer(head: &sigma_http::RequestHead) -> Option<&[u8]> {
    crate::auth::jwt::bearer_token(&head.header("authorization")?.value)
}

/// The world commands of `config`, each with who may start it.
fn world_commands(
    config: &crate::config::Config,
) -> Vec<sigma_dest::world::service::WorldCommandSpec> {
    config
        .world
        .iter()
        .map(|w| sigma_dest::world::service::WorldCommandSpec {
            name: w.name.clone(),
            code: w.code.clone(),
            users: config.world_users(w),
        })
        .collect()
}

/// Connects each world command to its destination: that of the route
/// [`crate::config::Config::world_route`] picks (so a world's
/// `&broadcast` is the hub of the `/broadcast` route; that route's
/// `users` were folded into the command's in
/// [`crate::config::Config::world_users`]), else a new `&echo`,
/// `&broadcast` or `&db`. `routes` are the built routes in
/// `config.routes` order.
fn world_targets(
    config: &crate::config::Config,
    routes: &[Route],
    db: &Arc<crate::db::DbService>,
    brokers: &dyn sigma_dest::factory::Brokers,
) -> Result<Vec<Arc<dyn Destination>>, UnavailableDestination> {
    use crate::config::Destination as To;
    let mut targets = Vec::with_capacity(config.world.len());
    for w in &config.world {
        let existing = config
            .world_route(w)
            .and_then(|(i, _)| routes.get(i))
            .map(|r| Arc::clone(&r.dest));
        let dest: Arc<dyn Destination> = match (existing, &w.to) {
            (Some(d), _) => d,
            (None, To::Echo) => Arc::new(crate::echo::Echo),
            (None, To::Broadcast) => {
                let path = format!("/world/{}", w.name);
                crate::broadcast::destination(&path, &config.broadcast, brokers)
            }
            (None, To::Db) => crate::db::Db::destination(db, "/", crate::db::Scope::of(None)),
            // Config validation refuses these (`Destination::hosts_worlds`).
            (None, other) => {
                return Err(UnavailableDestination(format!(
                    "{other} (world.{}.to: no WebSocket endpoint for a world)",
                    w.name
                )))
            }
        };
        targets.push(dest);
    }
    Ok(targets)
}

impl RouteTable {
    /// Builds the table from validated config (`config.routes`); `&db`
    /// routes share one [`crate::db::DbService`] over `store`, limited by
    /// `[db]`; each `&broadcast` route gets its own hub with the rules of
    /// `[broadcast]`. Destinations that apply the reply rule themselves
    /// (`&world`) report what it drops to `audit`.
    pub fn build(
        config: &crate::config::Config,
        store: &Arc<dyn crate::store::Store>,
        audit: &Arc<dyn sigma_core::ReplyAudit>,
        brokers: &dyn sigma_dest::factory::Brokers,
    ) -> Result<Self, UnavailableDestination> {
        Self::rebuild(config, store, audit, brokers, None)
    }

    /// [`RouteTable::build`] for a reload: a route whose destination is
    /// configured as one of `prev`'s (same path, `to`, `shared` and proxy
    /// options, and the tables its factory reads: `[broadcast]` for
    /// `&broadcast`, `[db]` for `&db`, `[websocket]` and A's cookie
    /// settings for upstreams, the world commands for `&world`) keeps that
    /// destination and its open sockets; `auth`, `users` and `max_body`
    /// are always the new ones. Nothing of `prev` changes: a table that
    /// fails to build leaves it as it was.
    pub fn rebuild(
        config: &crate::config::Config,
        store: &Arc<dyn crate::store::Store>,
        audit: &Arc<dyn sigma_core::ReplyAudit>,
        brokers: &dyn sigma_dest::factory::Brokers,
        prev: Option<&RouteTable>,
    ) -> Result<Self, UnavailableDestination> {
        let routes: &[RouteConfig] = &config.routes;
        let inputs = Inputs::of(config);
        let mut out = Vec::with_capacity(routes.len());
        let db = match prev.and_then(|p| p.db.as_ref().filter(|_| p.inputs.db == inputs.db)) {
            Some(db) => Arc::clone(db),
            None => crate::db::DbService::new(Arc::clone(store), &config.db),
        };
        let upstream = crate::upstream::Settings::of(&config.limits.ws, dest_context(config));
        // A's signer, only if a route asserts identities (it reads the key).
        let asserter: Option<Arc<dyn sigma_core::Asserter>> = if routes
            .iter()
            .any(|r| r.proxy.is_some_and(|p| p.assert_identity))
        {
            let iss = config
                .auth
                .public_url
                .as_deref()
                .unwrap_or(crate::auth::OWN_ISSUER);
            let a = crate::auth::assertion::Assertions::from_store(store, iss).map_err(|e| {
                UnavailableDestination(format!("assert_identity: the signing key: {e}"))
            })?;
            Some(Arc::new(a))
        } else {
            None
        };
        // One `&world` service for every route to it (DESIGN §5); kept
        // across a reload that changes nothing it reads.
        let kept_world = prev
            .filter(|p| inputs.same_world(&p.inputs))
            .and_then(|p| p.world.clone());
        let world_is_kept = kept_world.is_some();
        let mut world: Option<Arc<crate::world::WorldService>> = kept_world;
        let mut world_slot = || -> Result<Arc<dyn Destination>, UnavailableDestination> {
            if let Some(w) = &world {
                return Ok(Arc::clone(w) as Arc<dyn Destination>);
            }
            let w = Arc::new(crate::world::WorldService::new(
                &world_commands(config),
                &config.worlds,
                world_bearer,
                Arc::clone(audit),
                brokers.relay(),
            )?);
            world = Some(Arc::clone(&w));
            Ok(w)
        };
        for r in routes {
            let kept = prev.and_then(|p| {
                p.routes
                    .iter()
                    .find(|old| inputs.same_dest(r, &p.inputs, &old.config, world_is_kept))
            });
            let to = r.to.to_string();
            // Config accepts only a `to` the registry takes.
            let factory = crate::registry::find(&to)
                .ok_or_else(|| UnavailableDestination(format!("{to} (not in the registry)")))?;
            let mut cx = sigma_dest::factory::Build {
                path: &r.path,
                to: &to,
                shared: r.shared.as_ref(),
                proxy: r.proxy,
                ca: r.ca.as_deref(),
                broadcast: &config.broadcast,
                brokers,
                db: &db,
                upstream: &upstream,
                asserter: asserter.as_ref(),
                world: &mut world_slot,
            };
            let (dest, sockets) = match kept {
                Some(old) => (Arc::clone(&old.dest), Arc::clone(&old.sockets)),
                None => (factory.build(&mut cx)?, Arc::default()),
            };
            let max_body = factory.max_body(&cx, r.max_body);
            out.push(Route {
                path: r.path.clone(),
                auth: r.auth,
                users: r.users.clone(),
                max_body,
                dest,
                sockets,
                config: r.clone(),
            });
        }
        if !routes
            .iter()
            .any(|r| r.to == crate::config::Destination::World)
        {
            // A kept service no route goes to any more.
            world = None;
        }
        if let Some(w) = world.as_ref().filter(|_| !world_is_kept) {
            // `out` is still in `routes` order here.
            w.bind(world_targets(config, &out, &db, brokers)?);
        }
        // `config.routes` is already in match order (longest path first,
        // sorted once by the config): `out` keeps it.
        Ok(Self {
            routes: out,
            db: Some(db),
            world,
            inputs,
        })
    }

    /// After a reload swapped `next` in for this table: closes (1001) the
    /// WebSockets of every route of this table whose destination `next`
    /// did not keep. Returns how many routes were retired and how many
    /// sockets were asked to close.
    pub fn retire_missing(&self, next: &RouteTable) -> (usize, usize) {
        let mut retired = (0, 0);
        for r in &self.routes {
            let kept = next
                .routes
                .iter()
                .any(|n| Arc::ptr_eq(&n.sockets, &r.sockets));
            if !kept {
                retired.0 += 1;
                retired.1 += r.sockets.retire();
            }
        }
        retired
    }

    /// The routes of `next` that kept a destination of this table.
    pub fn kept_in(&self, next: &RouteTable) -> usize {
        next.routes
            .iter()
            .filter(|n| {
                self.routes
                    .iter()
                    .any(|r| Arc::ptr_eq(&n.sockets, &r.sockets))
            })
            .count()
    }

    /// The route for `path` (the target's path, without the query).
    pub fn lookup(&self, path: &[u8]) -> Option<&Route> {
        self.routes.get(self.lookup_index(path)?)
    }

    /// The index in [`RouteTable::routes`] of the route for `path`.
    pub fn lookup_index(&self, path: &[u8]) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| prefix_matches(r.path.as_bytes(), path))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `prefix` matches `path` at a segment boundary.
pub(crate) fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return path.first() == Some(&b'/');
    }
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table keeps `config.routes`' order, so the config must give
    /// match order: the defaults (not sorted by the loader) too.
    #[test]
    fn default_routes_are_in_match_order() {
        let routes = crate::config::default_routes();
        assert!(routes
            .windows(2)
            .all(|w| w[0].path.len() >= w[1].path.len()));
    }

    #[test]
    fn forwarded_proto_follows_the_public_url_and_secure_cookies() {
        let proto = |toml: &str| {
            let c = crate::config::from_str(toml, &[]).unwrap();
            crate::upstream::Settings::of(&c.limits.ws, dest_context(&c)).forwarded_proto
        };
        assert_eq!(proto(""), "http");
        assert_eq!(proto("[auth]\npublic_url = \"http://a.example\"\n"), "http");
        assert_eq!(
            proto("[auth]\npublic_url = \"https://a.example\"\n"),
            "https"
        );
        assert_eq!(proto("[auth]\ncookie_secure = true\n"), "https");
    }

    /// Which destinations a reload keeps: those configured alike, with
    /// the tables they read unchanged; `auth` does not count.
    #[test]
    fn rebuild_keeps_the_destinations_configured_alike() {
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::RedbStore::in_memory().unwrap());
        let audit: Arc<dyn sigma_core::ReplyAudit> = Arc::new(crate::metrics::Metrics::default());
        let routes = r#"
[[route]]
path = "/bc"
to = "&broadcast"
auth = "none"
[[route]]
path = "/db"
to = "&db"
[[route]]
path = "/e"
to = "&echo"
[[route]]
path = "/ws"
to = "&world"
"#;
        let table = |toml: &str, prev: Option<&RouteTable>| {
            let c = crate::config::from_str(toml, &[]).unwrap();
            RouteTable::rebuild(&c, &store, &audit, &sigma_dest::factory::InProcess, prev).unwrap()
        };
        let kept = |a: &RouteTable, b: &RouteTable, path: &str| {
            let find = |t: &RouteTable| {
                t.routes()
                    .iter()
                    .find(|r| r.path == path)
                    .map(|r| (Arc::clone(&r.dest), Arc::clone(&r.sockets)))
            };
            match (find(a), find(b)) {
                (Some((d1, s1)), Some((d2, s2))) => {
                    assert_eq!(Arc::ptr_eq(&d1, &d2), Arc::ptr_eq(&s1, &s2));
                    Arc::ptr_eq(&d1, &d2)
                }
                _ => false,
            }
        };
        let t0 = table(routes, None);
        // `auth` changes, nothing else: everything stays.
        let t1 = table(
            &routes.replace("auth = \"none\"", "auth = \"optional\""),
            Some(&t0),
        );
        for p in ["/bc", "/db", "/e", "/ws"] {
            assert!(kept(&t0, &t1, p), "{p}");
        }
        assert_eq!(t0.kept_in(&t1), 4);
        assert_eq!(t0.retire_missing(&t1), (0, 0));
        // `[broadcast]` changes: the hub and the world (whose chat
        // forwards to it) are new, `&db` and `&echo` stay.
        let t2 = table(
            &format!("{routes}\n[broadcast]\nmax_subscriptions = 7\n"),
            Some(&t1),
        );
        assert!(!kept(&t1, &t2, "/bc"));
        assert!(!kept(&t1, &t2, "/ws"));
        assert!(kept(&t1, &t2, "/db"));
        assert!(kept(&t1, &t2, "/e"));
        assert_eq!(t1.retire_missing(&t2), (2, 0));
        // A route's `to` changes: that one, and the world whose `echo`
        // command forwarded to it (it now gets its own `&echo`).
        let t3 = table(
            &format!(
                "{}\n[broadcast]\nmax_subscriptions = 7\n",
                routes.replace("to = \"&echo\"", "to = \"&web\"")
            ),
            Some(&t2),
        );
        assert!(!kept(&t2, &t3, "/e"));
        assert!(!kept(&t2, &t3, "/ws"));
        assert!(kept(&t2, &t3, "/bc"));
        assert!(kept(&t2, &t3, "/db"));
    }

    #[test]
    fn segment_boundary() {
        assert!(prefix_matches(b"/echo", b"/echo"));
        assert!(prefix_matches(b"/echo", b"/echo/x"));
        assert!(!prefix_matches(b"/echo", b"/echoes"));
        assert!(prefix_matches(b"/echo/", b"/echo"));
        assert!(prefix_matches(b"/", b"/anything"));
        assert!(!prefix_matches(b"/a", b"/"));
    }
}
