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

pub mod path;

use std::sync::Arc;

use crate::config::{AuthLevel, RouteConfig};

// The destination interface and the push queue live in `sigma-core`;
// re-exported here so `crate::route::…` paths keep working.
pub use sigma_core::destination::{
    Answer, Capabilities, Destination, Handled, HttpRequest, Request, Upgrade, UpgradeRequest,
    WsEndpoint,
};
pub use sigma_core::push::{
    ws_push_queue, PushError, Pushed, WsCloser, WsReceiver, WsSender, WS_CLOSE_REVOKED,
    WS_PUSH_BYTES, WS_PUSH_QUEUE,
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
                crate::broadcast::destination(&format!("/world/{}", w.name), &config.broadcast)
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
    ) -> Result<Self, UnavailableDestination> {
        let routes: &[RouteConfig] = &config.routes;
        let mut out = Vec::with_capacity(routes.len());
        let db = crate::db::DbService::new(Arc::clone(store), &config.db);
        let upstream = crate::upstream::Settings::of(&config.limits.ws, dest_context(config));
        // One `&world` service for every route to it (DESIGN §5).
        let mut world: Option<Arc<crate::world::WorldService>> = None;
        let mut world_slot = || -> Result<Arc<dyn Destination>, UnavailableDestination> {
            if let Some(w) = &world {
                return Ok(Arc::clone(w) as Arc<dyn Destination>);
            }
            let w = Arc::new(crate::world::WorldService::new(
                &world_commands(config),
                &config.worlds,
                world_bearer,
                Arc::clone(audit),
            )?);
            world = Some(Arc::clone(&w));
            Ok(w)
        };
        for r in routes {
            let to = r.to.to_string();
            // Config accepts only a `to` the registry takes.
            let factory = crate::registry::find(&to)
                .ok_or_else(|| UnavailableDestination(format!("{to} (not in the registry)")))?;
            let mut cx = sigma_dest::factory::Build {
                path: &r.path,
                to: &to,
                shared: r.shared.as_ref(),
                proxy: r.proxy,
                broadcast: &config.broadcast,
                db: &db,
                upstream: &upstream,
                world: &mut world_slot,
            };
            let dest = factory.build(&mut cx)?;
            let max_body = factory.max_body(&cx, r.max_body);
            out.push(Route {
                path: r.path.clone(),
                auth: r.auth,
                users: r.users.clone(),
                max_body,
                dest,
            });
        }
        if let Some(w) = &world {
            // `out` is still in `routes` order here.
            w.bind(world_targets(config, &out, &db)?);
        }
        // `config.routes` is already in match order (longest path first,
        // sorted once by the config): `out` keeps it.
        Ok(Self { routes: out })
    }

    /// The route for `path` (the target's path, without the query).
    pub fn lookup(&self, path: &[u8]) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| prefix_matches(r.path.as_bytes(), path))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `prefix` matches `path` at a segment boundary.
fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
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
