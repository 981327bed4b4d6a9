//! `[[route]]`: the route table, from the router to the destination in
//! T → H → A → router → destination (DESIGN §6): paths, `to`, who may
//! use a route.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::de::opt_duration;
use super::error::RouteError;
use super::keypath::{key, KeyPath, Seg};

/// One `[[route]]`: requests whose path starts with `path` go to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The path prefix: starts with `/`, no whitespace, no `.`/`..` or empty
    /// segments, no `%`, `?` or `#`.
    pub path: String,
    /// Where matching requests go.
    pub to: Destination,
    /// Who may use the route (`required` unless the `[[route]]` says).
    pub auth: AuthLevel,
    /// If set, only these users may use the route (never empty).
    pub users: Option<Vec<String>>,
    /// Per-route override of `http.max_body`.
    pub max_body: Option<u64>,
    /// `allow`, `deny`, `methods` (DESIGN §4), checked by `A` after
    /// `auth` and `users`.
    pub policy: Option<std::sync::Arc<crate::auth::policy::Policy>>,
    /// `&db` only: the shared namespace the route serves instead of each
    /// caller's own (`namespace`, `writers`).
    pub shared: Option<SharedNamespace>,
    /// Upstream (`http://…`) routes only: the proxy's timeouts and
    /// `echo_identity` (route keys `connect_timeout`, `read_timeout`,
    /// `echo_identity`); `None` on every other destination.
    pub proxy: Option<ProxyOptions>,
    /// `https://` upstream routes only: a PEM root to trust for the
    /// upstream beside the webpki roots (route key `ca`).
    pub ca: Option<PathBuf>,
}

impl RouteConfig {
    /// A route with no allow-list, body limit, shared namespace or proxy
    /// options.
    pub fn new(path: &str, to: Destination, auth: AuthLevel) -> Self {
        Self {
            path: path.to_owned(),
            to,
            auth,
            users: None,
            max_body: None,
            policy: None,
            shared: None,
            proxy: None,
            ca: None,
        }
    }
}

// The per-route options of `&db` and upstream routes belong to those
// destinations; re-exported for `crate::config`.
pub use sigma_dest::db::config::SharedNamespace;
pub use sigma_dest::upstream::config::ProxyOptions;

/// A route's destination, written in `to` (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// `&echo`: returns each request body / WebSocket message to its sender.
    Echo,
    /// `&broadcast`: the built-in pub/sub hub.
    Broadcast,
    /// `&db`: the built-in key-value store.
    Db,
    /// `&world`: the session socket (`/ws`) and world code (`/world/…`)
    /// of DESIGN §5.
    World,
    /// `http://HOST[:PORT][/PATH]`: a reverse-proxied upstream, as written.
    Upstream(String),
    /// `static:DIR`: files under a directory; a relative `DIR` is relative
    /// to the working directory, like `data_dir`.
    Static(PathBuf),
    /// `&web`: the bundled web page (login, chat, notes; docs/web.md).
    Web,
    /// Any other destination of the registry ([`crate::registry`]),
    /// by its `to` spelling (`&crossed`, `&inspect` in test builds).
    Registered(&'static str),
}

/// Who may use a route (DESIGN §4): A's vocabulary, in `sigma-auth`.
pub use sigma_auth::config::AuthLevel;

/// The route table used when the config has no `[[route]]` at all
/// (`route = []` means no routes).
pub fn default_routes() -> Vec<RouteConfig> {
    use AuthLevel::{None as Open, Optional, Required};
    vec![
        RouteConfig::new("/broadcast", Destination::Broadcast, Optional),
        RouteConfig::new("/world", Destination::World, Required),
        RouteConfig::new("/echo", Destination::Echo, Open),
        RouteConfig::new("/db", Destination::Db, Required),
        RouteConfig::new("/ws", Destination::World, Required),
        // The bundled page (docs/web.md); also answers 404 for any path
        // no other route takes.
        RouteConfig::new("/", Destination::Web, Optional),
    ]
}

impl Destination {
    /// True if a world can forward to it: it opens a WebSocket endpoint
    /// for an identity alone (`&echo`, `&broadcast`, `&db`). An upstream,
    /// static files, the web page and `&world` itself have none, so every
    /// initiate would fail (DESIGN §5, step 5).
    pub fn hosts_worlds(&self) -> bool {
        match self {
            Destination::Echo | Destination::Broadcast | Destination::Db => true,
            Destination::Registered(to) => {
                crate::registry::find(to).is_some_and(|f| f.hosts_worlds())
            }
            Destination::World
            | Destination::Upstream(_)
            | Destination::Static(_)
            | Destination::Web => false,
        }
    }

    /// Parses a route's `to`: `&echo`, `&broadcast`, `&db`,
    /// `http(s)://HOST[:PORT][/PATH]` or `static:DIR`.
    pub fn parse(to: &str) -> Result<Destination, RouteError> {
        if let Some(name) = to.strip_prefix('&') {
            return match name {
                "echo" => Ok(Destination::Echo),
                "broadcast" => Ok(Destination::Broadcast),
                "db" => Ok(Destination::Db),
                "world" => Ok(Destination::World),
                "web" => Ok(Destination::Web),
                _ => match crate::registry::find(to) {
                    Some(f) => Ok(Destination::Registered(f.name())),
                    None => Err(RouteError::UnknownBuiltin(name.to_owned())),
                },
            };
        }
        if let Some(dir) = to.strip_prefix("static:") {
            if dir.is_empty() {
                return Err(RouteError::EmptyStaticDir);
            }
            return Ok(Destination::Static(PathBuf::from(dir)));
        }
        if let Some(rest) = to
            .strip_prefix("http://")
            .or_else(|| to.strip_prefix("https://"))
        {
            check_upstream(rest).map_err(|reason| RouteError::BadUpstream {
                url: to.to_owned(),
                reason,
            })?;
            return Ok(Destination::Upstream(to.to_owned()));
        }
        Err(RouteError::UnknownDestination(to.to_owned()))
    }
}

impl FromStr for Destination {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Destination::parse(s)
    }
}

/// Checks what follows `http://`: an authority (IP, `[IPv6]` or host name,
/// optional port 1-65535), then an optional path without query or fragment.
fn check_upstream(rest: &str) -> Result<(), &'static str> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters");
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported");
    }
    if path.contains(['?', '#']) {
        return Err("a query or fragment is not allowed");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return Err("the IPv6 address has no closing `]`");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the IPv6 address is invalid");
        }
        match after {
            "" => (ip, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => return Err("expected `:PORT` after the IPv6 address"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing");
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err("the host may only contain letters, digits, `.` and `-`");
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    Ok(())
}

impl fmt::Display for Destination {
    /// The `to` spelling: `&echo`, `http://…`, `static:DIR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Echo => write!(f, "&echo"),
            Destination::Broadcast => write!(f, "&broadcast"),
            Destination::Db => write!(f, "&db"),
            Destination::World => write!(f, "&world"),
            Destination::Upstream(url) => write!(f, "{url}"),
            Destination::Static(dir) => write!(f, "static:{}", dir.display()),
            Destination::Web => write!(f, "&web"),
            Destination::Registered(to) => f.write_str(to),
        }
    }
}

/// The `auth` of a `[[route]]` that does not say (DESIGN §4, default-deny).
fn required() -> AuthLevel {
    AuthLevel::Required
}

/// `path` and `to` are required, so this table has no container default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteTable {
    pub(super) path: String,
    pub(super) to: String,
    /// Default-deny: a configured route without `auth` is `required`
    /// (the built-in [`default_routes`] set their own).
    #[serde(default = "required")]
    pub(super) auth: AuthLevel,
    #[serde(default)]
    pub(super) users: Option<Vec<String>>,
    #[serde(default)]
    pub(super) max_body: Option<u64>,
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(super) deny: Option<Vec<String>>,
    #[serde(default)]
    pub(super) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) writers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub(super) read_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) echo_identity: Option<bool>,
    #[serde(default)]
    pub(super) assert_identity: Option<bool>,
    #[serde(default)]
    pub(super) ca: Option<PathBuf>,
}

/// Validates every `[[route]]` and sorts them longest path first.
pub(super) fn routes(tables: Vec<RouteTable>) -> Result<Vec<RouteConfig>, (KeyPath, RouteError)> {
    let mut out: Vec<RouteConfig> = Vec::with_capacity(tables.len());
    for (i, t) in tables.into_iter().enumerate() {
        let at = |k: &str| vec![key("route"), Seg::Index(i), key(k)];
        check_route_path(&t.path).map_err(|e| (at("path"), e))?;
        let norm = normalized(&t.path);
        if let Some(first) = out.iter().position(|r| normalized(&r.path) == norm) {
            return Err((
                at("path"),
                RouteError::DuplicatePath {
                    path: t.path,
                    first,
                },
            ));
        }
        let to = Destination::parse(&t.to).map_err(|e| (at("to"), e))?;
        if let Some(users) = &t.users {
            if t.auth == AuthLevel::None {
                return Err((at("users"), RouteError::UsersWithoutAuth));
            }
            check_user_list(users).map_err(|e| (at("users"), e))?;
        }
        if t.users.is_some() && t.allow.is_some() {
            return Err((at("allow"), RouteError::UsersAndAllow));
        }
        let policy = crate::auth::policy::Policy::parse(
            t.allow.as_deref(),
            t.deny.as_deref(),
            t.methods.as_deref(),
        )
        .map_err(|e| {
            let k = match &e {
                crate::auth::policy::PolicyError::BadMethod(_)
                | crate::auth::policy::PolicyError::EmptyMethods => "methods",
                _ if t.allow.as_deref().is_some_and(|a| {
                    a.is_empty()
                        || a.iter()
                            .any(|s| s.parse::<crate::auth::policy::Subject>().is_err())
                }) =>
                {
                    "allow"
                }
                _ => "deny",
            };
            (at(k), RouteError::Policy(e))
        })?
        .map(std::sync::Arc::new);
        let shared = match (t.namespace, t.writers) {
            (None, None) => None,
            (None, Some(_)) => return Err((at("writers"), RouteError::WritersWithoutNamespace)),
            (Some(name), writers) => {
                if to != Destination::Db {
                    return Err((at("namespace"), RouteError::NamespaceNotDb));
                }
                if !valid_namespace(&name) {
                    return Err((at("namespace"), RouteError::BadNamespace(name)));
                }
                if let Some(w) = &writers {
                    check_user_list(w).map_err(|e| (at("writers"), e))?;
                }
                Some(SharedNamespace { name, writers })
            }
        };
        let proxy = if matches!(to, Destination::Upstream(_)) {
            let d = ProxyOptions::default();
            Some(ProxyOptions {
                connect_timeout: t.connect_timeout.unwrap_or(d.connect_timeout),
                read_timeout: t.read_timeout.unwrap_or(d.read_timeout),
                echo_identity: t.echo_identity.unwrap_or(d.echo_identity),
                assert_identity: t.assert_identity.unwrap_or(d.assert_identity),
            })
        } else {
            let set = [
                ("connect_timeout", t.connect_timeout.is_some()),
                ("read_timeout", t.read_timeout.is_some()),
                ("echo_identity", t.echo_identity.is_some()),
                ("assert_identity", t.assert_identity.is_some()),
            ];
            if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                return Err((at(k), RouteError::ProxyKeyNotUpstream(k)));
            }
            None
        };
        let https = matches!(&to, Destination::Upstream(u) if u.starts_with("https://"));
        if t.ca.is_some() && !https {
            return Err((at("ca"), RouteError::CaNotHttps));
        }
        out.push(RouteConfig {
            path: t.path,
            to,
            auth: t.auth,
            users: t.users,
            max_body: t.max_body,
            policy,
            shared,
            proxy,
            ca: t.ca,
        });
    }
    // Stable, so `first` above indexed the file's order; now match order.
    out.sort_by(|a, b| {
        b.path
            .len()
            .cmp(&a.path.len())
            .then_with(|| a.path.cmp(&b.path))
    });
    Ok(out)
}

/// A `users` or `writers` list: not empty, no empty or blank names.
pub(super) fn check_user_list(users: &[String]) -> Result<(), RouteError> {
    if users.is_empty() {
        return Err(RouteError::EmptyUsers);
    }
    match users
        .iter()
        .find(|u| u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        Some(bad) => Err(RouteError::BadUserName(bad.clone())),
        None => Ok(()),
    }
}

/// A shared `&db` namespace name: 1–64 characters of `[A-Za-z0-9._-]`.
fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The path without a trailing `/` (except for `/` itself), for duplicates.
fn normalized(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    }
}

fn check_route_path(path: &str) -> Result<(), RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RouteError::PathNotAbsolute(path.to_owned()));
    };
    if let Some(ch) = path
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c)))
    {
        return Err(RouteError::PathChar {
            path: path.to_owned(),
            ch,
        });
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => return Err(RouteError::PathDotSegment(path.to_owned())),
            // A trailing `/` (or `/` alone) leaves one empty last segment.
            "" if i != last => return Err(RouteError::PathEmptySegment(path.to_owned())),
            _ => {}
        }
    }
    Ok(())
}
