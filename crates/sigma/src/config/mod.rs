//! `sigma.toml`: the configuration of DESIGN §3, §6 and §8.
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use sigma_http::{Limits, WsLimits};
use toml::{Table, Value};

use crate::pipeline::{self, SpecError, Topology};

/// The topology when neither the file nor the environment sets `pipeline`.
pub const DEFAULT_PIPELINE: &str = "T127.0.0.1:3000[HA]";
/// Where the embedded store lives unless `data_dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./sigma-data";
/// Open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open connections from one client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// Listen backlog passed to `listen(2)`.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// Graceful shutdown deadline.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After our `SHUT_WR`, how long to wait for the peer's EOF.
pub const DEFAULT_LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest duration any key accepts (365 days): larger values make no
/// sense and could overflow `Instant` arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// `SIGMA_*` variables that are not config keys (read by the logging setup).
pub const RESERVED_ENV: &[&str] = &["SIGMA_LOG", "SIGMA_LOG_FORMAT"];

/// The tables an environment variable can address (`SIGMA_<TABLE>_<KEY>`).
const ENV_TABLES: &[&str] = &[
    "server",
    "http",
    "websocket",
    "auth",
    "db",
    "broadcast",
    "worlds",
];
/// The name used in messages for a config given by [`from_str`].
const STRING_SOURCE: &str = "<config>";

/// The resolved configuration of one sigma process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The listeners and their stages (`pipeline`).
    pub topology: Topology,
    /// The embedded store's directory (`data_dir`).
    pub data_dir: PathBuf,
    /// `T`'s limits (`[server]`).
    pub server: ServerConfig,
    /// `H`'s limits (`[http]` and `[websocket]`); `ws.write_timeout` is
    /// `http.write_timeout`.
    pub limits: Limits,
    /// The route table, longest path first (`[[route]]`).
    pub routes: Vec<RouteConfig>,
    /// `A`: sessions, tokens, login protection (`[auth]`).
    pub auth: AuthConfig,
    /// `&db`: the key-value store's limits (`[db]`).
    pub db: DbConfig,
    /// `&broadcast`: channel permission rules and limits (`[broadcast]`).
    pub broadcast: BroadcastConfig,
    /// The session socket's limits (`[worlds]`, DESIGN §5).
    pub worlds: WorldsConfig,
    /// The world commands (`[world.<name>]`), by name.
    pub world: Vec<WorldCommand>,
}

/// `[worlds]`: limits of the session socket at `/ws` and its worlds
/// (DESIGN §5).
///
/// ```toml
/// [worlds]
/// activation_timeout = "5s"   # hello must arrive this soon; breach: close 4408
/// max_per_user = 16           # active worlds per user (all its sessions and sockets)
/// forks_per_minute = 60       # fork requests per user (burst the same)
/// max_used_per_user = 256     # used fork cookies remembered per user
/// max_users = 4096            # users whose world budgets are tracked at once
/// key_rotation = "60s"        # minute-key period; a cookie lives 1-2 periods
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldsConfig {
    /// How long the server waits for `hello` before closing with 4408.
    #[serde(deserialize_with = "duration")]
    pub activation_timeout: Duration,
    /// Worlds one user may have active at once, over all of its login
    /// sessions, bearer tokens and session sockets (it was
    /// `max_per_session`, per login session, before issue #13).
    #[serde(deserialize_with = "positive")]
    pub max_per_user: usize,
    /// Forks one user may ask for per minute, over all of its sessions
    /// and sockets (token bucket, burst the same).
    #[serde(deserialize_with = "positive")]
    pub forks_per_minute: u32,
    /// Used fork cookies remembered per user (each is single use, and is
    /// remembered until its minute key rotates out); a user at the bound
    /// gets 429 `world_rate` on its initiates, others are not affected.
    #[serde(deserialize_with = "positive")]
    pub max_used_per_user: usize,
    /// Users whose world budgets are tracked at once (a user is tracked
    /// while it has a session socket open, and after that until its fork
    /// bucket is full again); a new user's session socket beyond it is
    /// closed with 1013.
    #[serde(deserialize_with = "positive")]
    pub max_users: usize,
    /// The minute key's period: fork cookies sealed under the current or
    /// the previous key open, older ones do not.
    #[serde(deserialize_with = "duration")]
    pub key_rotation: Duration,
}

impl Default for WorldsConfig {
    fn default() -> Self {
        Self {
            activation_timeout: Duration::from_secs(5),
            max_per_user: 16,
            forks_per_minute: 60,
            max_used_per_user: crate::world::budget::DEFAULT_MAX_USED_PER_USER,
            max_users: crate::world::budget::DEFAULT_MAX_USERS,
            key_rotation: Duration::from_secs(60),
        }
    }
}

/// One `[world.<name>]`: a world command, its worker code and where its
/// messages go (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldCommand {
    /// The command's name: 1–64 characters of `[A-Za-z0-9_-]` (it is
    /// served at `/world/<name>.js`).
    pub name: String,
    /// The worker code.
    pub code: WorldCode,
    /// Where the world's messages go: a destination with a WebSocket
    /// endpoint ([`Destination::hosts_worlds`]).
    pub to: Destination,
    /// If set, only these users may start it (never empty). See
    /// [`Config::world_users`] for who may, once the route it reuses is
    /// taken into account.
    pub users: Option<Vec<String>>,
}

/// Where a world command's worker code comes from (`code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldCode {
    /// `builtin:NAME`: code embedded in the binary (`echo`, `chat`).
    Builtin(String),
    /// A JavaScript file, read once at start (relative to the working
    /// directory, like `data_dir`).
    File(PathBuf),
}

impl fmt::Display for WorldCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorldCode::Builtin(name) => write!(f, "builtin:{name}"),
            WorldCode::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Worker code embedded in the binary, by the name `builtin:NAME` uses.
pub const BUILTIN_WORLD_CODE: &[&str] = &["echo", "chat"];

/// The world commands when the config has no `[world.*]` table: `echo`
/// (to `&echo`) and the web page's demo `chat` (to `&broadcast`).
pub fn default_world_commands() -> Vec<WorldCommand> {
    vec![
        WorldCommand {
            name: "chat".to_owned(),
            code: WorldCode::Builtin("chat".to_owned()),
            to: Destination::Broadcast,
            users: None,
        },
        WorldCommand {
            name: "echo".to_owned(),
            code: WorldCode::Builtin("echo".to_owned()),
            to: Destination::Echo,
            users: None,
        },
    ]
}

/// `[broadcast]`: the settings of every `&broadcast` hub (DESIGN §6).
///
/// ```toml
/// [broadcast]
/// max_subscriptions = 256          # channels one socket may join at once
/// max_message = 1048576            # bytes of a publish's encoded `data`; breach: 413 / error
/// [[broadcast.rule]]               # checked in order, before the built-in
/// pattern = "news:*"               #   `public:*` and `user:{user}:*`
/// subscribe = "anyone"             # "anyone" | "logged_in" | "nobody" | ["alice", ...]
/// publish = ["editor"]
/// ```
///
/// `max_message` bounds the `data` of one publish, as sigma encodes it
/// (compact JSON), over WebSocket and HTTP alike. It is never above
/// `websocket.max_outbound` (a delivery must fit a subscriber's outbound
/// queue): unset, it is [`crate::broadcast::DEFAULT_MAX_MESSAGE`] or
/// `websocket.max_outbound` if that is smaller; set above
/// `websocket.max_outbound`, the config is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// Channels one socket may subscribe to at once.
    pub max_subscriptions: usize,
    /// The largest encoded `data` of one publish, in bytes.
    pub max_message: usize,
    /// Permission rules, first match decides; the built-in rules follow.
    pub rule: Vec<BroadcastRule>,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: crate::broadcast::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: crate::broadcast::DEFAULT_MAX_MESSAGE,
            rule: Vec::new(),
        }
    }
}

/// `[broadcast]` as written; [`resolve`] turns it into a
/// [`BroadcastConfig`] (`max_message` depends on `[websocket]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BroadcastTable {
    #[serde(deserialize_with = "positive")]
    max_subscriptions: usize,
    #[serde(deserialize_with = "opt_positive")]
    max_message: Option<usize>,
    rule: Vec<BroadcastRule>,
}

impl Default for BroadcastTable {
    fn default() -> Self {
        Self {
            max_subscriptions: crate::broadcast::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: None,
            rule: Vec::new(),
        }
    }
}

/// One `[[broadcast.rule]]`: who may subscribe to and publish on the
/// channels `pattern` matches (`*` any run of characters, `{user}` the
/// caller's user name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRule {
    /// The channel pattern, validated when the config is loaded.
    #[serde(deserialize_with = "channel_pattern")]
    pub pattern: crate::broadcast::Pattern,
    /// Who may subscribe.
    pub subscribe: ChannelAccess,
    /// Who may publish.
    pub publish: ChannelAccess,
}

/// Who a `[[broadcast.rule]]` lets in: `"anyone"` (anonymous clients
/// too), `"logged_in"`, `"nobody"`, or a list of user names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AccessRepr")]
pub enum ChannelAccess {
    /// Everyone, anonymous clients included.
    Anyone,
    /// Any authenticated user.
    LoggedIn,
    /// No one.
    Nobody,
    /// Only these users (never empty).
    Users(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AccessRepr {
    Word(String),
    Users(Vec<String>),
}

impl TryFrom<AccessRepr> for ChannelAccess {
    type Error = String;
    fn try_from(r: AccessRepr) -> Result<Self, String> {
        match r {
            AccessRepr::Word(w) => match w.as_str() {
                "anyone" => Ok(Self::Anyone),
                "logged_in" => Ok(Self::LoggedIn),
                "nobody" => Ok(Self::Nobody),
                _ => Err(format!(
                    "expected \"anyone\", \"logged_in\", \"nobody\" or a list of users, found \"{w}\""
                )),
            },
            AccessRepr::Users(u) if u.is_empty() => {
                Err("the list of users must not be empty (use \"nobody\")".to_owned())
            }
            AccessRepr::Users(u) => Ok(Self::Users(u)),
        }
    }
}

fn channel_pattern<'de, D>(d: D) -> Result<crate::broadcast::Pattern, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    crate::broadcast::Pattern::parse(&s).map_err(de::Error::custom)
}

/// Largest `&db` value, in bytes, unless `db.max_value` says otherwise.
pub const DEFAULT_DB_MAX_VALUE: usize = 1024 * 1024;
/// Longest `&db` key, in bytes, unless `db.max_key` says otherwise.
pub const DEFAULT_DB_MAX_KEY: usize = 512;

/// `[db]`: the limits of the `&db` key-value store (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// Largest value, in bytes (a larger `PUT` gets 413).
    #[serde(deserialize_with = "positive")]
    pub max_value: usize,
    /// Longest key, in bytes (after percent-decoding).
    #[serde(deserialize_with = "positive")]
    pub max_key: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            max_value: DEFAULT_DB_MAX_VALUE,
            max_key: DEFAULT_DB_MAX_KEY,
        }
    }
}

/// `[auth]`: the settings of `A` (DESIGN §4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session unused this long expires.
    #[serde(deserialize_with = "duration")]
    pub session_idle_timeout: Duration,
    /// A session expires this long after login, used or not.
    #[serde(deserialize_with = "duration")]
    pub session_lifetime: Duration,
    /// Mark the session cookie `Secure` (set it when a TLS terminator is in front).
    pub cookie_secure: bool,
    /// Lifetime of tokens from `POST /auth/token`.
    #[serde(deserialize_with = "duration")]
    pub token_ttl: Duration,
    /// `POST /auth/token` requests per session per minute (burst of the
    /// same size); past it, 429 with `Retry-After`.
    #[serde(deserialize_with = "positive")]
    pub token_per_session_per_minute: u32,
    /// Origins (`https://app.example.com`) allowed besides sigma's own for
    /// cookie-authenticated unsafe requests and WebSocket upgrades.
    pub allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR list).
    #[serde(deserialize_with = "cidr_list")]
    pub trusted_proxies: Vec<Cidr>,
    /// Login attempts per client address (IPv6: per /64) per minute
    /// (burst of the same size).
    #[serde(deserialize_with = "positive")]
    pub login_per_ip_per_minute: u32,
    /// Failed logins per (user name, client /24 or IPv6 /64) per minute
    /// (burst of the same size); other networks are not affected. Also
    /// read under its old name, `login_per_user_per_minute`.
    #[serde(deserialize_with = "positive", alias = "login_per_user_per_minute")]
    pub login_failures_per_user_per_minute: u32,
    /// Failed logins per minute, all clients together (burst of the same
    /// size).
    #[serde(deserialize_with = "positive")]
    pub login_failures_per_minute: u32,
    /// Password verifications running at once (Argon2id, off the executor).
    #[serde(deserialize_with = "positive")]
    pub password_workers: usize,
    /// Password verifications waiting for a worker; beyond them `POST
    /// /login` gets 503 with `Retry-After` at once (0: none wait).
    pub password_queue: usize,
    /// External token issuers (`[[auth.jwt]]`) whose bearer tokens are
    /// accepted besides sigma's own.
    pub jwt: Vec<crate::auth::jwt::JwtIssuerConfig>,
    /// sigma's public origin (`https://chat.example.com`): OAuth providers
    /// send the browser back to `<public_url>/auth/<name>/callback`.
    /// Required when `[auth.oauth.*]` is configured.
    pub public_url: Option<String>,
    /// OAuth2 / OIDC login providers (`[auth.oauth.<name>]`, DESIGN §4).
    pub oauth: std::collections::BTreeMap<String, crate::auth::oauth::config::OAuthProviderConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_idle_timeout: Duration::from_secs(7 * 24 * 3600),
            session_lifetime: Duration::from_secs(30 * 24 * 3600),
            cookie_secure: false,
            token_ttl: Duration::from_secs(15 * 60),
            token_per_session_per_minute: 10,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            login_per_ip_per_minute: 20,
            login_failures_per_user_per_minute: 10,
            login_failures_per_minute: 600,
            password_workers: 2,
            password_queue: crate::auth::password::DEFAULT_PASSWORD_QUEUE,
            jwt: Vec::new(),
            public_url: None,
            oauth: std::collections::BTreeMap::new(),
        }
    }
}

/// `[server]`: the limits of `T` (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open connections, all clients together (> 0).
    #[serde(deserialize_with = "positive")]
    pub max_connections: usize,
    /// Open connections from one client IP (> 0).
    #[serde(deserialize_with = "positive")]
    pub max_connections_per_ip: usize,
    /// Listen backlog (> 0), ready for `socket2::Socket::listen` (a `c_int`).
    #[serde(deserialize_with = "positive")]
    pub backlog: i32,
    /// Graceful shutdown deadline.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// After our `SHUT_WR`, wait this long for the peer's EOF.
    #[serde(deserialize_with = "duration")]
    pub linger_timeout: Duration,
    /// Client networks allowed to read `GET /metrics` (default: loopback).
    #[serde(deserialize_with = "cidr_list")]
    pub metrics_allow: Vec<Cidr>,
    /// Bytes all connections' buffers may hold together (> 0): read
    /// buffers, WebSocket messages being assembled, outbound queues and
    /// buffered request bodies. The connection that would pass it is
    /// refused (503, close 1009 or 1008).
    #[serde(deserialize_with = "positive")]
    pub memory_budget: usize,
}

/// An IP network, `ADDR/PREFIX` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid network {s:?}: not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid network {s:?}: prefix must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses
    /// match IPv4 networks).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The default `/metrics` allow-list: loopback only.
pub fn default_metrics_allow() -> Vec<Cidr> {
    vec![
        Cidr {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            backlog: DEFAULT_BACKLOG,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            linger_timeout: DEFAULT_LINGER_TIMEOUT,
            metrics_allow: default_metrics_allow(),
            memory_budget: sigma_http::budget::DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// One `[[route]]`: requests whose path starts with `path` go to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The path prefix: starts with `/`, no whitespace, no `.`/`..` or empty
    /// segments, no `%`, `?` or `#`.
    pub path: String,
    /// Where matching requests go.
    pub to: Destination,
    /// Who may use the route (default `optional`).
    pub auth: AuthLevel,
    /// If set, only these users may use the route (never empty).
    pub users: Option<Vec<String>>,
    /// Per-route override of `http.max_body`.
    pub max_body: Option<u64>,
    /// `&db` only: the shared namespace the route serves instead of each
    /// caller's own (`namespace`, `writers`).
    pub shared: Option<SharedNamespace>,
    /// Upstream (`http://…`) routes only: the proxy's timeouts and
    /// `echo_identity` (route keys `connect_timeout`, `read_timeout`,
    /// `echo_identity`); `None` on every other destination.
    pub proxy: Option<ProxyOptions>,
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
            shared: None,
            proxy: None,
        }
    }
}

/// How an upstream route proxies (DESIGN §6; docs/proxy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Connecting to the upstream may take this long; breach: 502
    /// (`connect_timeout`, default 5 s).
    pub connect_timeout: Duration,
    /// The upstream's response head must arrive this long after the
    /// request was sent; breach: 504 (`read_timeout`, default 30 s).
    pub read_timeout: Duration,
    /// The upstream must return the `X-Sigma-Identity` it was sent, or the
    /// reply is not sent (502) (`echo_identity`, default false).
    pub echo_identity: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            echo_identity: false,
        }
    }
}

/// A shared `&db` namespace (route keys `namespace` and `writers`): every
/// user the route admits (`auth`, `users`) may read it; `writers`, if set,
/// limits who may write (`PUT`, `DELETE`), else everyone admitted may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNamespace {
    /// Its name: 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Who may write, if not everyone the route admits (never empty).
    pub writers: Option<Vec<String>>,
}

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
    /// `&crossed`: a deliberately mis-wired destination that answers with
    /// another user's identity, to test the reply rule. Only in builds with
    /// the `test-destinations` feature.
    #[cfg(feature = "test-destinations")]
    Crossed,
    /// `&inspect`: answers with the identity and headers it received (test
    /// builds only, like `&crossed`).
    #[cfg(feature = "test-destinations")]
    Inspect,
}

/// Who may use a route (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthLevel {
    /// Only authenticated users; browsers are redirected to `/login`.
    Required,
    /// Anyone; the identity is attached when there is one.
    #[default]
    Optional,
    /// Anyone; forwarded with identity `null`.
    None,
}

/// A configuration problem: where it is and what it is.
#[derive(Debug)]
pub struct ConfigError {
    /// Where the offending value came from.
    pub origin: Origin,
    /// The key's path (`http.max_headers`, `route[0].to`); empty when the
    /// problem is the whole file (unreadable, not TOML).
    pub path: String,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (`name` as given; `<config>` for [`from_str`]).
    File {
        /// The file name as given by the caller.
        name: String,
        /// 1-based line of the key, where TOML tells it.
        line: Option<usize>,
    },
    /// A `SIGMA_*` environment variable.
    Env {
        /// The variable's name, e.g. `SIGMA_HTTP_MAX_BODY`.
        var: String,
    },
    /// The built-in defaults.
    Defaults,
}

/// What is wrong with a configuration value.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file is not valid TOML.
    Syntax {
        /// The TOML parser's message.
        message: String,
    },
    /// A key no table of sigma.toml has.
    UnknownKey {
        /// The keys that table accepts.
        expected: &'static [&'static str],
    },
    /// A value of the wrong type or out of range (the message says which).
    Invalid {
        /// What is wrong, e.g. `invalid duration "ten": …`.
        message: String,
    },
    /// `data_dir` is empty.
    EmptyDataDir,
    /// `websocket.max_frame` exceeds `websocket.max_message`.
    FrameExceedsMessage {
        /// `websocket.max_frame`.
        max_frame: usize,
        /// `websocket.max_message`.
        max_message: usize,
    },
    /// `websocket.idle_timeout` would close a quiet connection before its ping.
    IdleNotAfterPing {
        /// `websocket.idle_timeout`.
        idle_timeout: Duration,
        /// `websocket.ping_interval`.
        ping_interval: Duration,
    },
    /// `pipeline` is malformed.
    Pipeline(SpecError),
    /// A `[[route]]` is invalid.
    Route(RouteError),
}

/// What is wrong with one `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// `path` does not start with `/`.
    PathNotAbsolute(String),
    /// `path` contains a character outside the allowed set.
    PathChar {
        /// The path.
        path: String,
        /// The first offending character.
        ch: char,
    },
    /// `path` has a `.` or `..` segment.
    PathDotSegment(String),
    /// `path` has an empty segment (`//`).
    PathEmptySegment(String),
    /// Another route has the same path (ignoring a trailing `/`).
    DuplicatePath {
        /// The path.
        path: String,
        /// Index of the first route with that path.
        first: usize,
    },
    /// `to = "&name"` with a name that is not a built-in.
    UnknownBuiltin(String),
    /// `to` is none of the accepted forms.
    UnknownDestination(String),
    /// `to = "https://…"`: upstream TLS is not supported yet.
    HttpsUpstream(String),
    /// `to = "http://…"` with a malformed URL.
    BadUpstream {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `to = "static:"` with no directory.
    EmptyStaticDir,
    /// `users` on a route with `auth = "none"`.
    UsersWithoutAuth,
    /// `users = []`.
    EmptyUsers,
    /// A user name that is empty or contains whitespace or control characters.
    BadUserName(String),
    /// `namespace` on a route whose destination is not `&db`.
    NamespaceNotDb,
    /// `writers` without `namespace`.
    WritersWithoutNamespace,
    /// A `namespace` name that is not 1–64 characters of `[A-Za-z0-9._-]`.
    BadNamespace(String),
    /// A proxy key (`connect_timeout`, `read_timeout`, `echo_identity`) on
    /// a route whose destination is not an `http://` upstream.
    ProxyKeyNotUpstream(&'static str),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            topology: default_topology(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            server: ServerConfig::default(),
            limits: Limits::default(),
            routes: default_routes(),
            auth: AuthConfig::default(),
            db: DbConfig::default(),
            broadcast: BroadcastConfig::default(),
            worlds: WorldsConfig::default(),
            world: default_world_commands(),
        }
    }
}

/// [`DEFAULT_PIPELINE`] as a [`Topology`].
pub fn default_topology() -> Topology {
    Topology {
        listeners: vec![pipeline::Listener {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 3000)),
            stages: vec![pipeline::Stage::H, pipeline::Stage::A],
        }],
    }
}

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

/// The process's `SIGMA_*` variables, ready for [`load`]. Unlike
/// `std::env::vars` this never panics; a non-UTF-8 value is converted
/// lossily (and will then most likely fail validation, visibly).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_str()?.to_owned();
            k.starts_with("SIGMA_")
                .then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Loads the config: `path` (none: defaults only), then the `SIGMA_*`
/// overrides in `env` (the caller passes the environment in, e.g.
/// [`process_env`]; other variables are ignored).
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let Some(path) = path else {
        return build(None, env);
    };
    let name = path.display().to_string();
    let text = crate::namedfile::read_to_string(path).map_err(|e| ConfigError {
        origin: Origin::File {
            name: name.clone(),
            line: None,
        },
        path: String::new(),
        kind: ConfigErrorKind::Io(match e {
            crate::namedfile::NamedFileError::Io { error, .. } => error,
            other => std::io::Error::other(other.to_string()),
        }),
    })?;
    build(Some((&name, &text)), env)
}

/// Like [`load`] with the file's text given directly; messages call it
/// `<config>`.
pub fn from_str(toml: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    build(Some((STRING_SOURCE, toml)), env)
}

impl Config {
    /// The route whose destination world command `w` reuses (so a world's
    /// `&broadcast` is the hub other clients use): the first route, in
    /// match order, with the same `to` that does not serve a shared `&db`
    /// namespace; `None`: the world gets a destination of its own.
    /// Returns the route's index in [`Config::routes`] with it.
    pub fn world_route(&self, w: &WorldCommand) -> Option<(usize, &RouteConfig)> {
        world_route(&self.routes, w)
    }

    /// Who may start world command `w` (DESIGN §5, "command known and
    /// allowed"): its own `users`, intersected with the `users` of the
    /// route it reuses ([`Config::world_route`]); `None`: every
    /// authenticated user. Never empty for a loaded config.
    pub fn world_users(&self, w: &WorldCommand) -> Option<Vec<String>> {
        world_users(&self.routes, w)
    }

    /// The summary `sigma check` and `sigma serve` print: the topology, then
    /// one line per route in match order (no trailing newline).
    ///
    /// ```text
    /// pipeline T127.0.0.1:3000[HA]
    /// route /broadcast -> &broadcast (auth optional)
    /// route /echo -> &echo (auth none)
    /// route /db -> &db (auth required)
    /// ```
    pub fn describe(&self) -> String {
        let mut out = format!("pipeline {}", self.topology);
        for r in &self.routes {
            out.push_str(&format!("\nroute {} -> {} (auth {}", r.path, r.to, r.auth));
            if let Some(users) = &r.users {
                out.push_str(&format!(", users {}", users.join(",")));
            }
            if let Some(max_body) = r.max_body {
                out.push_str(&format!(", max_body {max_body}"));
            }
            if let Some(ns) = &r.shared {
                out.push_str(&format!(", namespace {}", ns.name));
                if let Some(w) = &ns.writers {
                    out.push_str(&format!(", writers {}", w.join(",")));
                }
            }
            if let Some(p) = r.proxy.filter(|p| *p != ProxyOptions::default()) {
                out.push_str(&format!(
                    ", connect_timeout {}, read_timeout {}, echo_identity {}",
                    humantime::format_duration(p.connect_timeout),
                    humantime::format_duration(p.read_timeout),
                    p.echo_identity
                ));
            }
            out.push(')');
        }
        let serves_worlds = self.routes.iter().any(|r| r.to == Destination::World);
        for w in self.world.iter().filter(|_| serves_worlds) {
            out.push_str(&format!("\nworld {} -> {} (code {}", w.name, w.to, w.code));
            if let Some(users) = self.world_users(w) {
                out.push_str(&format!(", users {}", users.join(",")));
            }
            out.push(')');
        }
        for (name, p) in &self.auth.oauth {
            let public = self.auth.public_url.as_deref().unwrap_or_default();
            out.push_str(&format!(
                "\noauth {name} ({}{}) /auth/{name}/login, redirect_uri {}/auth/{name}/callback",
                p.kind.as_str(),
                p.issuer_url()
                    .map(|i| format!(", issuer {i}"))
                    .unwrap_or_default(),
                public.trim_end_matches('/'),
            ));
        }
        out
    }
}

impl Destination {
    /// True if a world can forward to it: it opens a WebSocket endpoint
    /// for an identity alone (`&echo`, `&broadcast`, `&db`). An upstream,
    /// static files, the web page and `&world` itself have none, so every
    /// initiate would fail (DESIGN §5, step 5).
    pub fn hosts_worlds(&self) -> bool {
        match self {
            Destination::Echo | Destination::Broadcast | Destination::Db => true,
            #[cfg(feature = "test-destinations")]
            Destination::Crossed => true,
            #[cfg(feature = "test-destinations")]
            Destination::Inspect => false,
            Destination::World
            | Destination::Upstream(_)
            | Destination::Static(_)
            | Destination::Web => false,
        }
    }

    /// Parses a route's `to`: `&echo`, `&broadcast`, `&db`,
    /// `http://HOST[:PORT][/PATH]` or `static:DIR`.
    pub fn parse(to: &str) -> Result<Destination, RouteError> {
        if let Some(name) = to.strip_prefix('&') {
            return match name {
                "echo" => Ok(Destination::Echo),
                "broadcast" => Ok(Destination::Broadcast),
                "db" => Ok(Destination::Db),
                "world" => Ok(Destination::World),
                "web" => Ok(Destination::Web),
                #[cfg(feature = "test-destinations")]
                "crossed" => Ok(Destination::Crossed),
                #[cfg(feature = "test-destinations")]
                "inspect" => Ok(Destination::Inspect),
                _ => Err(RouteError::UnknownBuiltin(name.to_owned())),
            };
        }
        if let Some(dir) = to.strip_prefix("static:") {
            if dir.is_empty() {
                return Err(RouteError::EmptyStaticDir);
            }
            return Ok(Destination::Static(PathBuf::from(dir)));
        }
        if to
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            return Err(RouteError::HttpsUpstream(to.to_owned()));
        }
        if let Some(rest) = to.strip_prefix("http://") {
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
            #[cfg(feature = "test-destinations")]
            Destination::Crossed => write!(f, "&crossed"),
            #[cfg(feature = "test-destinations")]
            Destination::Inspect => write!(f, "&inspect"),
        }
    }
}

impl fmt::Display for AuthLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthLevel::Required => "required",
            AuthLevel::Optional => "optional",
            AuthLevel::None => "none",
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                name,
                line: Some(line),
            } => write!(f, "{name}:{line}"),
            Origin::File { name, line: None } => write!(f, "{name}"),
            Origin::Env { var } => write!(f, "{var}"),
            Origin::Defaults => write!(f, "built-in defaults"),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `sigma.toml:3: unknown key `http.max_hedaers` (expected one of …)`,
    /// `SIGMA_HTTP_HEAD_TIMEOUT: http.head_timeout: invalid duration "ten": …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let ConfigErrorKind::UnknownKey { expected } = &self.kind {
            write!(f, "unknown key `{}`", self.path)?;
            if !expected.is_empty() {
                let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
                write!(f, " (expected one of {})", list.join(", "))?;
            }
            return Ok(());
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigErrorKind::Io(e) => write!(f, "cannot read the config file: {e}"),
            ConfigErrorKind::Syntax { message } => write!(f, "invalid TOML: {message}"),
            ConfigErrorKind::UnknownKey { .. } => write!(f, "unknown key"),
            ConfigErrorKind::Invalid { message } => write!(f, "{message}"),
            ConfigErrorKind::EmptyDataDir => write!(f, "must not be empty"),
            ConfigErrorKind::FrameExceedsMessage {
                max_frame,
                max_message,
            } => write!(
                f,
                "{max_frame} is larger than websocket.max_message ({max_message})"
            ),
            ConfigErrorKind::IdleNotAfterPing {
                idle_timeout,
                ping_interval,
            } => write!(
                f,
                "{} must be longer than websocket.ping_interval ({}), or quiet connections close before they are pinged",
                humantime::format_duration(*idle_timeout),
                humantime::format_duration(*ping_interval)
            ),
            ConfigErrorKind::Pipeline(e) => write!(f, "{e}"),
            ConfigErrorKind::Route(e) => write!(f, "{e}"),
        }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::PathNotAbsolute(p) => write!(f, "path {p:?} must start with `/`"),
            RouteError::PathChar { path, ch } if ch.is_whitespace() => {
                write!(f, "path {path:?} contains whitespace")
            }
            RouteError::PathChar { path, ch } => write!(
                f,
                "path {path:?} contains `{}`; allowed are letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ /",
                ch.escape_debug()
            ),
            RouteError::PathDotSegment(p) => {
                write!(f, "path {p:?} contains a `.` or `..` segment")
            }
            RouteError::PathEmptySegment(p) => write!(f, "path {p:?} contains `//`"),
            RouteError::DuplicatePath { path, first } => {
                write!(f, "duplicate route path {path:?} (same as route[{first}])")
            }
            RouteError::UnknownBuiltin(name) => write!(
                f,
                "unknown destination `&{name}` (built-ins are &echo, &broadcast, &db, &world and &web)"
            ),
            RouteError::UnknownDestination(to) => write!(
                f,
                "unknown destination {to:?}: expected &echo, &broadcast, &db, &world, &web, http://HOST[:PORT] or static:DIR"
            ),
            RouteError::HttpsUpstream(url) => write!(
                f,
                "upstream {url:?}: https:// upstreams are not supported yet; use http://"
            ),
            RouteError::BadUpstream { url, reason } => {
                write!(f, "invalid upstream URL {url:?}: {reason}")
            }
            RouteError::EmptyStaticDir => {
                write!(f, "`static:` needs a directory, e.g. \"static:./www\"")
            }
            RouteError::UsersWithoutAuth => write!(
                f,
                "a users allow-list needs auth = \"required\" or \"optional\", not \"none\""
            ),
            RouteError::EmptyUsers => write!(
                f,
                "the users allow-list is empty: list at least one user or remove the key"
            ),
            RouteError::BadUserName(u) => write!(
                f,
                "invalid user name {u:?}: empty or contains whitespace or control characters"
            ),
            RouteError::NamespaceNotDb => {
                write!(f, "a shared namespace needs to = \"&db\"")
            }
            RouteError::WritersWithoutNamespace => write!(
                f,
                "writers applies to a shared namespace: set namespace too"
            ),
            RouteError::BadNamespace(n) => write!(
                f,
                "invalid namespace {n:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -"
            ),
            RouteError::ProxyKeyNotUpstream(k) => write!(
                f,
                "{k} applies to an upstream route only (to = \"http://…\")"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            // Not `Io`: its message is in ours already (a chain printed
            // with `{:#}` would repeat it).
            ConfigErrorKind::Pipeline(e) => Some(e),
            ConfigErrorKind::Route(e) => Some(e),
            _ => None,
        }
    }
}

impl std::error::Error for RouteError {}

// ---------------------------------------------------------------------------
// The file as serde sees it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    pipeline: String,
    data_dir: PathBuf,
    server: ServerConfig,
    http: HttpTable,
    websocket: WebsocketTable,
    auth: AuthConfig,
    db: DbConfig,
    broadcast: BroadcastTable,
    worlds: WorldsConfig,
    world: Option<std::collections::BTreeMap<String, WorldTable>>,
    route: Option<Vec<RouteTable>>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            pipeline: DEFAULT_PIPELINE.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            server: ServerConfig::default(),
            http: HttpTable::default(),
            websocket: WebsocketTable::default(),
            auth: AuthConfig::default(),
            db: DbConfig::default(),
            broadcast: BroadcastTable::default(),
            worlds: WorldsConfig::default(),
            world: None,
            route: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HttpTable {
    #[serde(deserialize_with = "positive")]
    max_request_line: usize,
    #[serde(deserialize_with = "positive")]
    max_header_bytes: usize,
    #[serde(deserialize_with = "positive")]
    max_headers: usize,
    #[serde(deserialize_with = "duration")]
    head_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    keepalive_timeout: Duration,
    max_body: u64,
    #[serde(deserialize_with = "positive")]
    body_min_rate: u64,
    #[serde(deserialize_with = "duration")]
    body_rate_grace: Duration,
    #[serde(deserialize_with = "duration")]
    write_timeout: Duration,
    #[serde(deserialize_with = "positive")]
    max_pipelined: usize,
    #[serde(deserialize_with = "positive")]
    max_requests_per_connection: u64,
    max_chunk_extension: usize,
    max_trailer_bytes: usize,
}

impl Default for HttpTable {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            max_request_line: d.max_request_line,
            max_header_bytes: d.max_header_bytes,
            max_headers: d.max_headers,
            head_timeout: d.head_timeout,
            keepalive_timeout: d.keepalive_timeout,
            max_body: d.max_body,
            body_min_rate: d.body_min_rate,
            body_rate_grace: d.body_rate_grace,
            write_timeout: d.write_timeout,
            max_pipelined: d.max_pipelined,
            max_requests_per_connection: d.max_requests_per_connection,
            max_chunk_extension: d.max_chunk_extension,
            max_trailer_bytes: d.max_trailer_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WebsocketTable {
    #[serde(deserialize_with = "positive")]
    max_frame: usize,
    #[serde(deserialize_with = "positive")]
    max_message: usize,
    #[serde(deserialize_with = "duration")]
    ping_interval: Duration,
    #[serde(deserialize_with = "duration")]
    idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    close_timeout: Duration,
    #[serde(deserialize_with = "positive")]
    max_outbound: usize,
}

impl Default for WebsocketTable {
    fn default() -> Self {
        let d = WsLimits::default();
        Self {
            max_frame: d.max_frame,
            max_message: d.max_message,
            ping_interval: d.ping_interval,
            idle_timeout: d.idle_timeout,
            close_timeout: d.close_timeout,
            max_outbound: d.max_outbound,
        }
    }
}

/// `path` and `to` are required, so this table has no container default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    path: String,
    to: String,
    #[serde(default)]
    auth: AuthLevel,
    #[serde(default)]
    users: Option<Vec<String>>,
    #[serde(default)]
    max_body: Option<u64>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    writers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    read_timeout: Option<Duration>,
    #[serde(default)]
    echo_identity: Option<bool>,
}

/// An optional [`positive`] count.
fn opt_positive<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialOrd + fmt::Display,
{
    positive(d).map(Some)
}

/// An optional [`duration`].
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// One `[world.<name>]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldTable {
    code: String,
    to: String,
    #[serde(default)]
    users: Option<Vec<String>>,
}

/// A humantime duration string, > 0 and ≤ [`MAX_DURATION`].
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"10s\" or \"500ms\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            let d = humantime::parse_duration(s)
                .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))?;
            if d.is_zero() {
                return Err(E::custom(format!(
                    "invalid duration {s:?}: must be greater than 0"
                )));
            }
            if d > MAX_DURATION {
                return Err(E::custom(format!(
                    "invalid duration {s:?}: must be at most 365 days"
                )));
            }
            Ok(d)
        }
    }

    d.deserialize_str(DurationVisitor)
}

/// A number that must be greater than zero.
fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialOrd + fmt::Display,
{
    let v = T::deserialize(d)?;
    if v <= T::default() {
        return Err(de::Error::custom(format!(
            "must be greater than 0 (got {v})"
        )));
    }
    Ok(v)
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after.
fn valid_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| Cidr::parse(s).map_err(de::Error::custom))
        .collect()
}

/// The field names serde knows for `T`, read from `deserialize_struct`
/// itself so the unknown-key check can never drift from the structs.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

struct FieldProbe<'a>(&'a mut &'static [&'static str]);

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_: T) -> Self {
        ProbeDone
    }
}

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        *self.0 = fields;
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

type KeyPath = Vec<Seg>;

fn key(k: &str) -> Seg {
    Seg::Key(k.to_owned())
}

/// `http.max_body`, `route[0].to`.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What an error needs to say where it comes from.
struct Sources<'a> {
    /// The file's name, text and span-keeping parse (for line numbers).
    file: Option<(&'a str, &'a str, toml::Spanned<toml::de::DeTable<'a>>)>,
    /// Key paths set from the environment, with the variable that set them.
    env: Vec<(KeyPath, String)>,
}

impl Sources<'_> {
    fn error(&self, path: KeyPath, kind: ConfigErrorKind) -> ConfigError {
        let from_env = self
            .env
            .iter()
            .rev()
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, var)| var.clone());
        let origin = match (from_env, &self.file) {
            (Some(var), _) => Origin::Env { var },
            (None, Some((name, text, doc))) => Origin::File {
                name: (*name).to_owned(),
                line: span_of(doc, &path).and_then(|start| line_at(text, start)),
            },
            (None, None) => Origin::Defaults,
        };
        ConfigError {
            origin,
            path: render(&path),
            kind,
        }
    }
}

/// 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> Option<usize> {
    Some(text.get(..at)?.matches('\n').count() + 1)
}

/// Start of the key (or array element) that `path` names in the document.
fn span_of(doc: &toml::Spanned<toml::de::DeTable<'_>>, path: &[Seg]) -> Option<usize> {
    let mut table = Some(doc.get_ref());
    let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
    let mut start = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let (spanned_key, v) = table?.get_key_value(k.as_str())?;
                start = Some(spanned_key.span().start);
                value = Some(v);
            }
            Seg::Index(i) => {
                let v = value?.get_ref().as_array()?.get(*i)?;
                start = Some(v.span().start);
                value = Some(v);
            }
        }
        table = value.and_then(|v| v.get_ref().as_table());
    }
    start
}

fn build(file: Option<(&str, &str)>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut sources = Sources {
        file: None,
        env: Vec::new(),
    };
    let mut root = Table::new();
    if let Some((name, text)) = file {
        let syntax = |e: toml::de::Error| ConfigError {
            origin: Origin::File {
                name: name.to_owned(),
                line: e.span().and_then(|s| line_at(text, s.start)),
            },
            path: String::new(),
            kind: ConfigErrorKind::Syntax {
                message: e.message().trim_end().to_owned(),
            },
        };
        let doc = toml::de::DeTable::parse(text).map_err(syntax)?;
        root = text.parse::<Table>().map_err(syntax)?;
        sources.file = Some((name, text, doc));
    }
    apply_env(&mut root, env, &mut sources)?;
    if let Some((path, expected)) = unknown_key(&root) {
        return Err(sources.error(path, ConfigErrorKind::UnknownKey { expected }));
    }
    let parsed: ConfigFile = serde_path_to_error::deserialize(Value::Table(root)).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = e.into_inner().message().trim_end().to_owned();
        sources.error(path, ConfigErrorKind::Invalid { message })
    })?;
    resolve(parsed, &sources)
}

/// Writes the `SIGMA_*` variables into the parsed table (env beats file).
fn apply_env(
    root: &mut Table,
    env: &[(String, String)],
    sources: &mut Sources<'_>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("SIGMA_") else {
            continue;
        };
        if RESERVED_ENV.contains(&var.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let value = if let Ok(i) = raw.parse::<i64>() {
            Value::Integer(i)
        } else if raw == "true" || raw == "false" {
            Value::Boolean(raw == "true")
        } else {
            Value::String(raw.clone())
        };
        let in_table = ENV_TABLES.iter().find_map(|t| {
            let k = rest.strip_prefix(t)?.strip_prefix('_')?;
            Some((*t, k))
        });
        let path = match in_table {
            Some((table, k)) => {
                let entry = root
                    .entry(table)
                    .or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(t) = entry else {
                    return Err(ConfigError {
                        origin: Origin::Env { var: var.clone() },
                        path: table.to_owned(),
                        kind: ConfigErrorKind::Invalid {
                            message: format!(
                                "cannot set `{table}.{k}`: `{table}` in the file is not a table"
                            ),
                        },
                    });
                };
                t.insert(k.to_owned(), value);
                vec![key(table), key(k)]
            }
            None => {
                root.insert(rest.clone(), value);
                vec![Seg::Key(rest)]
            }
        };
        sources.env.push((path, var.clone()));
    }
    Ok(())
}

/// The first key (in key order) that no table of sigma.toml accepts.
fn unknown_key(root: &Table) -> Option<(KeyPath, &'static [&'static str])> {
    let top = fields_of::<ConfigFile>();
    let check = |t: &Table, prefix: KeyPath, allowed: &'static [&'static str]| {
        t.keys().find(|k| !allowed.contains(&k.as_str())).map(|k| {
            let mut p = prefix;
            p.push(key(k));
            (p, allowed)
        })
    };
    if let Some(found) = check(root, Vec::new(), top) {
        return Some(found);
    }
    for (name, value) in root {
        let allowed = match name.as_str() {
            "server" => fields_of::<ServerConfig>(),
            "http" => fields_of::<HttpTable>(),
            "websocket" => fields_of::<WebsocketTable>(),
            "db" => fields_of::<DbConfig>(),
            "worlds" => fields_of::<WorldsConfig>(),
            "world" => {
                let Value::Table(t) = value else { continue };
                for (name, w) in t {
                    if let Value::Table(w) = w {
                        let at = vec![key("world"), key(name)];
                        if let Some(found) = check(w, at, fields_of::<WorldTable>()) {
                            return Some(found);
                        }
                    }
                }
                continue;
            }
            "broadcast" => {
                let Value::Table(t) = value else { continue };
                if let Some(found) = check(t, vec![key("broadcast")], fields_of::<BroadcastTable>())
                {
                    return Some(found);
                }
                if let Some(Value::Array(items)) = t.get("rule") {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Table(r) = item {
                            let at = vec![key("broadcast"), key("rule"), Seg::Index(i)];
                            if let Some(found) = check(r, at, fields_of::<BroadcastRule>()) {
                                return Some(found);
                            }
                        }
                    }
                }
                continue;
            }
            "route" => {
                let Value::Array(items) = value else { continue };
                let allowed = fields_of::<RouteTable>();
                for (i, item) in items.iter().enumerate() {
                    if let Value::Table(t) = item {
                        if let Some(found) = check(t, vec![key("route"), Seg::Index(i)], allowed) {
                            return Some(found);
                        }
                    }
                }
                continue;
            }
            _ => continue,
        };
        if let Value::Table(t) = value {
            if let Some(found) = check(t, vec![key(name)], allowed) {
                return Some(found);
            }
        }
    }
    None
}

/// Cross-key checks and conversion to the public types.
fn resolve(file: ConfigFile, sources: &Sources<'_>) -> Result<Config, ConfigError> {
    let topology = pipeline::parse(&file.pipeline)
        .map_err(|e| sources.error(vec![key("pipeline")], ConfigErrorKind::Pipeline(e)))?;
    if file.data_dir.as_os_str().is_empty() {
        return Err(sources.error(vec![key("data_dir")], ConfigErrorKind::EmptyDataDir));
    }
    let ws = &file.websocket;
    if ws.max_frame > ws.max_message {
        return Err(sources.error(
            vec![key("websocket"), key("max_frame")],
            ConfigErrorKind::FrameExceedsMessage {
                max_frame: ws.max_frame,
                max_message: ws.max_message,
            },
        ));
    }
    if ws.idle_timeout <= ws.ping_interval {
        return Err(sources.error(
            vec![key("websocket"), key("idle_timeout")],
            ConfigErrorKind::IdleNotAfterPing {
                idle_timeout: ws.idle_timeout,
                ping_interval: ws.ping_interval,
            },
        ));
    }
    let routes = match file.route {
        None => default_routes(),
        Some(tables) => {
            routes(tables).map_err(|(path, e)| sources.error(path, ConfigErrorKind::Route(e)))?
        }
    };
    let world = match file.world {
        None => default_world_commands(),
        Some(tables) => world_commands(tables)
            .map_err(|(path, message)| sources.error(path, ConfigErrorKind::Invalid { message }))?,
    };
    check_world_access(&routes, &world)
        .map_err(|(path, message)| sources.error(path, ConfigErrorKind::Invalid { message }))?;
    let h = file.http;
    let limits = Limits {
        max_request_line: h.max_request_line,
        max_header_bytes: h.max_header_bytes,
        max_headers: h.max_headers,
        head_timeout: h.head_timeout,
        keepalive_timeout: h.keepalive_timeout,
        max_body: h.max_body,
        body_min_rate: h.body_min_rate,
        body_rate_grace: h.body_rate_grace,
        write_timeout: h.write_timeout,
        max_pipelined: h.max_pipelined,
        max_requests_per_connection: h.max_requests_per_connection,
        max_chunk_extension: h.max_chunk_extension,
        max_trailer_bytes: h.max_trailer_bytes,
        ws: WsLimits {
            max_frame: ws.max_frame,
            max_message: ws.max_message,
            ping_interval: ws.ping_interval,
            idle_timeout: ws.idle_timeout,
            close_timeout: ws.close_timeout,
            max_outbound: ws.max_outbound,
            write_timeout: h.write_timeout,
        },
    };
    for (i, origin) in file.auth.allowed_origins.iter().enumerate() {
        if !valid_origin(origin) {
            return Err(sources.error(
                vec![key("auth"), key("allowed_origins"), Seg::Index(i)],
                ConfigErrorKind::Invalid {
                    message: format!(
                        "invalid origin {origin:?}: expected scheme://host[:port], e.g. \"https://app.example.com\""
                    ),
                },
            ));
        }
    }
    if file.auth.session_idle_timeout > file.auth.session_lifetime {
        return Err(sources.error(
            vec![key("auth"), key("session_idle_timeout")],
            ConfigErrorKind::Invalid {
                message: "must not be longer than auth.session_lifetime".into(),
            },
        ));
    }
    check_oauth(&file.auth, sources)?;
    let b = file.broadcast;
    let max_message = match b.max_message {
        None => crate::broadcast::DEFAULT_MAX_MESSAGE.min(ws.max_outbound),
        Some(m) if m > ws.max_outbound => {
            return Err(sources.error(
                vec![key("broadcast"), key("max_message")],
                ConfigErrorKind::Invalid {
                    message: format!(
                        "{m} is above websocket.max_outbound ({}): a delivery must fit a subscriber's outbound queue",
                        ws.max_outbound
                    ),
                },
            ))
        }
        Some(m) => m,
    };
    let broadcast = BroadcastConfig {
        max_subscriptions: b.max_subscriptions,
        max_message,
        rule: b.rule,
    };
    Ok(Config {
        topology,
        data_dir: file.data_dir,
        server: file.server,
        limits,
        routes,
        auth: file.auth,
        db: file.db,
        broadcast,
        worlds: file.worlds,
        world,
    })
}

/// Validates every `[world.<name>]` (name, `code`, `to`).
fn world_commands(
    tables: std::collections::BTreeMap<String, WorldTable>,
) -> Result<Vec<WorldCommand>, (KeyPath, String)> {
    let mut out = Vec::with_capacity(tables.len());
    for (name, t) in tables {
        let at = |k: &str| vec![key("world"), key(&name), key(k)];
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err((
                vec![key("world"), key(&name)],
                format!("invalid world command name {name:?}: use 1 to 64 characters of A-Z a-z 0-9 _ -"),
            ));
        }
        let code = match t.code.strip_prefix("builtin:") {
            Some(b) if BUILTIN_WORLD_CODE.contains(&b) => WorldCode::Builtin(b.to_owned()),
            Some(b) => {
                return Err((
                    at("code"),
                    format!(
                        "unknown built-in world code {b:?} (built-ins are {})",
                        BUILTIN_WORLD_CODE.join(", ")
                    ),
                ))
            }
            None if t.code.is_empty() => {
                return Err((
                    at("code"),
                    "must name a JavaScript file or builtin:NAME".into(),
                ))
            }
            None => WorldCode::File(PathBuf::from(t.code)),
        };
        let to = Destination::parse(&t.to).map_err(|e| (at("to"), e.to_string()))?;
        if to == Destination::World {
            return Err((at("to"), "a world cannot forward to &world".into()));
        }
        if !to.hosts_worlds() {
            return Err((
                at("to"),
                format!(
                    "{to} has no WebSocket endpoint a world can run on; use &echo, &broadcast or &db"
                ),
            ));
        }
        if let Some(users) = &t.users {
            check_user_list(users).map_err(|e| (at("users"), e.to_string()))?;
        }
        out.push(WorldCommand {
            name,
            code,
            to,
            users: t.users,
        });
    }
    Ok(out)
}

/// A world command that reuses a route's destination must not reach
/// users that route does not admit: the two `users` lists intersect, and
/// an empty intersection (nobody could start it) is an error.
fn check_world_access(
    routes: &[RouteConfig],
    world: &[WorldCommand],
) -> Result<(), (KeyPath, String)> {
    for w in world {
        let Some((_, route)) = world_route(routes, w) else {
            continue;
        };
        if let Some(allowed) = world_users(routes, w) {
            if allowed.is_empty() {
                return Err((
                    vec![key("world"), key(&w.name), key("users")],
                    format!(
                        "none of these users may use route {} (users {}), whose {} this world reuses",
                        route.path,
                        route.users.as_deref().unwrap_or_default().join(","),
                        route.to
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The route whose destination world command `w` reuses: the first one
/// (in match order) with the same `to` that does not serve a shared
/// `&db` namespace.
fn world_route<'a>(
    routes: &'a [RouteConfig],
    w: &WorldCommand,
) -> Option<(usize, &'a RouteConfig)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.to == w.to && r.shared.is_none())
}

/// Who may start `w`: its own `users`, intersected with those of the
/// route it reuses; `None`: every authenticated user.
fn world_users(routes: &[RouteConfig], w: &WorldCommand) -> Option<Vec<String>> {
    let route = world_route(routes, w).and_then(|(_, r)| r.users.as_ref());
    match (&w.users, route) {
        (None, None) => None,
        (Some(own), None) => Some(own.clone()),
        (None, Some(route)) => Some(route.clone()),
        (Some(own), Some(route)) => {
            Some(own.iter().filter(|u| route.contains(u)).cloned().collect())
        }
    }
}

/// `[auth] public_url` and the `[auth.oauth.<name>]` tables (DESIGN §4).
fn check_oauth(auth: &AuthConfig, sources: &Sources<'_>) -> Result<(), ConfigError> {
    let invalid =
        |path: KeyPath, message: String| sources.error(path, ConfigErrorKind::Invalid { message });
    if let Some(url) = &auth.public_url {
        if !valid_origin(url.trim_end_matches('/')) {
            return Err(invalid(
                vec![key("auth"), key("public_url")],
                format!("invalid public URL {url:?}: expected scheme://host[:port], e.g. \"https://chat.example.com\""),
            ));
        }
    } else if !auth.oauth.is_empty() {
        return Err(invalid(
            vec![key("auth"), key("public_url")],
            "is required with [auth.oauth.*]: providers redirect to <public_url>/auth/<name>/callback".into(),
        ));
    }
    for (name, p) in &auth.oauth {
        if let Err(e) = p.validate(name) {
            let mut path = vec![key("auth"), key("oauth"), key(name)];
            if !e.key.is_empty() {
                path.push(key(e.key));
            }
            return Err(invalid(path, e.message));
        }
    }
    Ok(())
}

/// Validates every `[[route]]` and sorts them longest path first.
fn routes(tables: Vec<RouteTable>) -> Result<Vec<RouteConfig>, (KeyPath, RouteError)> {
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
            })
        } else {
            let set = [
                ("connect_timeout", t.connect_timeout.is_some()),
                ("read_timeout", t.read_timeout.is_some()),
                ("echo_identity", t.echo_identity.is_some()),
            ];
            if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                return Err((at(k), RouteError::ProxyKeyNotUpstream(k)));
            }
            None
        };
        out.push(RouteConfig {
            path: t.path,
            to,
            auth: t.auth,
            users: t.users,
            max_body: t.max_body,
            shared,
            proxy,
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
fn check_user_list(users: &[String]) -> Result<(), RouteError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(toml: &str) -> ConfigError {
        match from_str(toml, &[]) {
            Ok(c) => panic!("expected an error for {toml:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    fn full_toml_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config/full.toml")
    }

    #[test]
    fn defaults_match_the_codec_and_design() {
        let c = from_str("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.topology, pipeline::parse(DEFAULT_PIPELINE).unwrap());
        assert_eq!(c.topology, default_topology());
        assert_eq!(c.data_dir, PathBuf::from("./sigma-data"));
        assert_eq!(c.routes, default_routes());
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.server.linger_timeout, Duration::from_secs(5));
        assert_eq!(load(None, &[]).unwrap(), c);
        // Empty tables are the defaults too.
        let c2 = from_str("[server]\n[http]\n[websocket]\n", &[]).unwrap();
        assert_eq!(c2, c);
    }

    #[test]
    fn every_key_round_trips() {
        let toml = r#"
            pipeline = "T[::1]:4000[H] T0.0.0.0:4001[HA]"
            data_dir = "/var/lib/sigma"

            [server]
            max_connections = 11
            max_connections_per_ip = 12
            backlog = 13
            drain_timeout = "14s"
            linger_timeout = "15ms"
            metrics_allow = ["10.0.0.0/8"]
            memory_budget = 16

            [auth]
            session_idle_timeout = "1h"
            session_lifetime = "2h"
            cookie_secure = true
            token_ttl = "5m"
            token_per_session_per_minute = 6
            allowed_origins = ["https://app.example.com"]
            trusted_proxies = ["10.1.0.0/16"]
            login_per_ip_per_minute = 7
            login_failures_per_user_per_minute = 3
            # login_per_user_per_minute = 3 is its old name (an alias: old_login_key_name_still_reads)
            login_failures_per_minute = 8
            password_workers = 4
            password_queue = 9
            jwt = [{ issuer = "https://id.example.com", audience = "sigma", algorithm = "RS256", jwks_url = "https://id.example.com/jwks.json" }]
            public_url = "https://chat.example.com"
            oauth = { corp = { kind = "oidc", issuer = "https://id.example.com", client_id = "sigma", client_secret_file = "/etc/sigma/corp.secret", scopes = ["openid", "email"], user_claim = "email", allowed_domains = ["example.com"], allowed_users = ["alice@example.com"] }, gh = { kind = "github", client_id = "gh-client", client_secret = "gh-secret", auth_url = "https://gh.example.com/login/oauth/authorize", token_url = "https://gh.example.com/login/oauth/access_token", api_url = "https://api.gh.example.com" } }

            [db]
            max_value = 61
            max_key = 62

            [broadcast]
            max_subscriptions = 63
            max_message = 40
            [[broadcast.rule]]
            pattern = "news:*"
            subscribe = "anyone"
            publish = ["alice", "bob"]
            [[broadcast.rule]]
            pattern = "ops:{user}"
            subscribe = "logged_in"
            publish = "nobody"

            [http]
            max_request_line = 21
            max_header_bytes = 22
            max_headers = 23
            head_timeout = "24s"
            keepalive_timeout = "25s"
            max_body = 26
            body_min_rate = 27
            body_rate_grace = "28s"
            write_timeout = "29s"
            max_pipelined = 30
            max_requests_per_connection = 31
            max_chunk_extension = 32
            max_trailer_bytes = 33

            [websocket]
            max_frame = 41
            max_message = 42
            ping_interval = "43s"
            idle_timeout = "44s"
            close_timeout = "45s"
            max_outbound = 46

            [[route]]
            path = "/api"
            to = "http://127.0.0.1:8080"
            auth = "required"
            users = ["alice", "bob"]
            max_body = 51
            connect_timeout = "52s"
            read_timeout = "53s"
            echo_identity = true

            [[route]]
            path = "/team"
            to = "&db"
            namespace = "team"
            writers = ["alice"]

            [worlds]
            activation_timeout = "71s"
            max_per_user = 72
            forks_per_minute = 73
            key_rotation = "74s"
            max_used_per_user = 75
            max_users = 76

            [world.notes]
            code = "/srv/notes.js"
            to = "&db"
            users = ["alice"]
        "#;
        let c = from_str(toml, &[]).unwrap();
        assert_eq!(
            c.worlds,
            WorldsConfig {
                activation_timeout: Duration::from_secs(71),
                max_per_user: 72,
                forks_per_minute: 73,
                key_rotation: Duration::from_secs(74),
                max_used_per_user: 75,
                max_users: 76,
            }
        );
        assert_eq!(
            c.world,
            vec![WorldCommand {
                name: "notes".into(),
                code: WorldCode::File("/srv/notes.js".into()),
                to: Destination::Db,
                users: Some(vec!["alice".into()]),
            }]
        );
        assert_eq!(c.topology.to_string(), "T[::1]:4000[H] T0.0.0.0:4001[HA]");
        assert_eq!(
            c.broadcast,
            BroadcastConfig {
                max_subscriptions: 63,
                max_message: 40,
                rule: vec![
                    BroadcastRule {
                        pattern: crate::broadcast::Pattern::parse("news:*").unwrap(),
                        subscribe: ChannelAccess::Anyone,
                        publish: ChannelAccess::Users(vec!["alice".into(), "bob".into()]),
                    },
                    BroadcastRule {
                        pattern: crate::broadcast::Pattern::parse("ops:{user}").unwrap(),
                        subscribe: ChannelAccess::LoggedIn,
                        publish: ChannelAccess::Nobody,
                    },
                ],
            }
        );
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sigma"));
        assert_eq!(
            c.server,
            ServerConfig {
                max_connections: 11,
                max_connections_per_ip: 12,
                backlog: 13,
                drain_timeout: Duration::from_secs(14),
                linger_timeout: Duration::from_millis(15),
                metrics_allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                memory_budget: 16,
            }
        );
        let s = Duration::from_secs;
        assert_eq!(
            c.limits,
            Limits {
                max_request_line: 21,
                max_header_bytes: 22,
                max_headers: 23,
                head_timeout: s(24),
                keepalive_timeout: s(25),
                max_body: 26,
                body_min_rate: 27,
                body_rate_grace: s(28),
                write_timeout: s(29),
                max_pipelined: 30,
                max_requests_per_connection: 31,
                max_chunk_extension: 32,
                max_trailer_bytes: 33,
                ws: WsLimits {
                    max_frame: 41,
                    max_message: 42,
                    ping_interval: s(43),
                    idle_timeout: s(44),
                    close_timeout: s(45),
                    max_outbound: 46,
                    write_timeout: s(29),
                },
            }
        );
        assert_eq!(
            c.routes,
            vec![
                RouteConfig {
                    path: "/team".into(),
                    to: Destination::Db,
                    auth: AuthLevel::Optional,
                    users: None,
                    max_body: None,
                    shared: Some(SharedNamespace {
                        name: "team".into(),
                        writers: Some(vec!["alice".into()]),
                    }),
                    proxy: None,
                },
                RouteConfig {
                    path: "/api".into(),
                    to: Destination::Upstream("http://127.0.0.1:8080".into()),
                    auth: AuthLevel::Required,
                    users: Some(vec!["alice".into(), "bob".into()]),
                    max_body: Some(51),
                    shared: None,
                    proxy: Some(ProxyOptions {
                        connect_timeout: Duration::from_secs(52),
                        read_timeout: Duration::from_secs(53),
                        echo_identity: true,
                    }),
                },
            ]
        );
        assert_eq!(
            c.auth,
            AuthConfig {
                session_idle_timeout: Duration::from_secs(3600),
                session_lifetime: Duration::from_secs(7200),
                cookie_secure: true,
                token_ttl: Duration::from_secs(300),
                token_per_session_per_minute: 6,
                allowed_origins: vec!["https://app.example.com".into()],
                trusted_proxies: vec![Cidr::parse("10.1.0.0/16").unwrap()],
                login_per_ip_per_minute: 7,
                login_failures_per_user_per_minute: 3,
                login_failures_per_minute: 8,
                password_workers: 4,
                password_queue: 9,
                jwt: vec![crate::auth::jwt::JwtIssuerConfig {
                    issuer: "https://id.example.com".into(),
                    audience: "sigma".into(),
                    algorithm: crate::auth::jwt::JwtAlgorithm::Rs256,
                    key_file: None,
                    jwks_url: Some("https://id.example.com/jwks.json".into()),
                    user_claim: None,
                }],
                public_url: Some("https://chat.example.com".into()),
                oauth: [
                    (
                        "corp".to_string(),
                        crate::auth::oauth::config::OAuthProviderConfig {
                            kind: crate::auth::oauth::config::ProviderKind::Oidc,
                            issuer: Some("https://id.example.com".into()),
                            client_id: "sigma".into(),
                            client_secret: None,
                            client_secret_file: Some("/etc/sigma/corp.secret".into()),
                            scopes: Some(vec!["openid".into(), "email".into()]),
                            user_claim: Some("email".into()),
                            allowed_domains: vec!["example.com".into()],
                            allowed_users: vec!["alice@example.com".into()],
                            auth_url: None,
                            token_url: None,
                            api_url: None,
                        },
                    ),
                    (
                        "gh".to_string(),
                        crate::auth::oauth::config::OAuthProviderConfig {
                            kind: crate::auth::oauth::config::ProviderKind::Github,
                            issuer: None,
                            client_id: "gh-client".into(),
                            client_secret: Some("gh-secret".into()),
                            client_secret_file: None,
                            scopes: None,
                            user_claim: None,
                            allowed_domains: vec![],
                            allowed_users: vec![],
                            auth_url: Some("https://gh.example.com/login/oauth/authorize".into()),
                            token_url: Some(
                                "https://gh.example.com/login/oauth/access_token".into()
                            ),
                            api_url: Some("https://api.gh.example.com".into()),
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }
        );
        assert_eq!(
            c.db,
            DbConfig {
                max_value: 61,
                max_key: 62,
            }
        );
        // The test above names every field of every table.
        for name in fields_of::<ServerConfig>()
            .iter()
            .chain(fields_of::<AuthConfig>())
            .chain(fields_of::<crate::auth::oauth::config::OAuthProviderConfig>())
            .chain(fields_of::<DbConfig>())
            .chain(fields_of::<HttpTable>())
            .chain(fields_of::<WebsocketTable>())
            .chain(fields_of::<RouteTable>())
            .chain(fields_of::<WorldsConfig>())
            .chain(fields_of::<WorldTable>())
            .chain(fields_of::<ConfigFile>())
        {
            assert!(
                toml.contains(&format!("{name} = "))
                    || toml.contains(&format!("[{name}]"))
                    || toml.contains(&format!("[{name}.")),
                "{name} not covered"
            );
        }
    }

    #[test]
    fn field_probe_reads_the_struct_fields() {
        assert_eq!(
            fields_of::<ConfigFile>(),
            &[
                "pipeline",
                "data_dir",
                "server",
                "http",
                "websocket",
                "auth",
                "db",
                "broadcast",
                "worlds",
                "world",
                "route"
            ]
        );
        assert_eq!(fields_of::<HttpTable>().len(), 13);
        assert_eq!(fields_of::<WebsocketTable>().len(), 6);
        assert_eq!(fields_of::<ServerConfig>().len(), 7);
        assert_eq!(fields_of::<RouteTable>().len(), 10);
    }

    #[test]
    fn oauth_tables_are_validated() {
        let e = from_str(
            "[auth.oauth.corp]\nkind = \"oidc\"\nissuer = \"https://id.example.com\"\nclient_id = \"c\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.public_url"), "{e}");
        let base = "[auth]\npublic_url = \"https://chat.example.com\"\n[auth.oauth.corp]\nclient_id = \"c\"\n";
        let e = from_str(&format!("{base}kind = \"oidc\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("auth.oauth.corp.issuer"), "{e}");
        let e = from_str(&format!("{base}kind = \"saml\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("auth.oauth.corp.kind"), "{e}");
        let e = from_str(&format!("{base}kind = \"github\"\nbogus = 1\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = from_str(
            &format!("{base}kind = \"github\"\nclient_secret = \"s\"\napi_url = \"http://api.example.com\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.oauth.corp.api_url"), "{e}");
        let e = from_str("[auth]\npublic_url = \"chat.example.com\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("auth.public_url"), "{e}");
        let c = from_str(
            &format!("{base}kind = \"google\"\nclient_secret = \"s\"\n"),
            &[],
        )
        .unwrap();
        assert!(c.describe().contains(
            "oauth corp (google, issuer https://accounts.google.com) /auth/corp/login, redirect_uri https://chat.example.com/auth/corp/callback"
        ), "{}", c.describe());
    }

    #[test]
    fn broadcast_rules_are_validated() {
        let e = from_str(
            "[[broadcast.rule]]\npattern = \"a b\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("broadcast.rule[0].pattern"), "{e}");
        let e = from_str("[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"everyone\"\npublish = \"nobody\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("broadcast.rule[0].subscribe"), "{e}");
        let e = from_str(
            "[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = []\npublish = \"nobody\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("must not be empty"), "{e}");
        let e = from_str(
            "[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"anyone\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("publish"), "{e}");
        let e = from_str("[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\nbogus = 1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("broadcast.rule[0].bogus"), "{e}");
        let e = from_str("[broadcast]\nmax_subscriptions = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("broadcast.max_subscriptions"), "{e}");
        let c = from_str(
            "",
            &[("SIGMA_BROADCAST_MAX_SUBSCRIPTIONS".into(), "9".into())],
        )
        .unwrap();
        assert_eq!(c.broadcast.max_subscriptions, 9);
    }

    #[test]
    fn broadcast_max_message_never_above_max_outbound() {
        assert_eq!(
            from_str("", &[]).unwrap().broadcast.max_message,
            crate::broadcast::DEFAULT_MAX_MESSAGE
        );
        // Unset: the default, or max_outbound if that is smaller.
        let c = from_str("[websocket]\nmax_outbound = 4096\n", &[]).unwrap();
        assert_eq!(c.broadcast.max_message, 4096);
        // Set: at max_outbound is fine, one past is refused, naming the key.
        let c = from_str(
            "[websocket]\nmax_outbound = 4096\n[broadcast]\nmax_message = 4096\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.broadcast.max_message, 4096);
        let e = from_str(
            "[websocket]\nmax_outbound = 4096\n[broadcast]\nmax_message = 4097\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.path, "broadcast.max_message");
        assert!(
            e.to_string()
                .contains("above websocket.max_outbound (4096)"),
            "{e}"
        );
        let e = from_str("[broadcast]\nmax_message = 0\n", &[]).unwrap_err();
        assert_eq!(e.path, "broadcast.max_message");
        let c = from_str("", &[("SIGMA_BROADCAST_MAX_MESSAGE".into(), "77".into())]).unwrap();
        assert_eq!(c.broadcast.max_message, 77);
    }

    #[test]
    fn auth_table_is_validated() {
        let e = from_str("[auth]\nallowed_origins = [\"example.com\"]\n", &[]).unwrap_err();
        assert!(e.to_string().contains("auth.allowed_origins[0]"), "{e}");
        let e = from_str("[auth]\nsession_idle_timeout = \"40d\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("auth.session_idle_timeout"), "{e}");
        let c = from_str("", &[("SIGMA_AUTH_COOKIE_SECURE".into(), "true".into())]).unwrap();
        assert!(c.auth.cookie_secure);
    }

    #[test]
    fn cidr() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        let c = from_str("[server]\nmetrics_allow = [\"10.0.0.0/8\"]\n", &[]).unwrap();
        assert_eq!(
            c.server.metrics_allow,
            vec![Cidr::parse("10.0.0.0/8").unwrap()]
        );
        let e = from_str("[server]\nmetrics_allow = [\"10.0.0.0/99\"]\n", &[]).unwrap_err();
        assert!(e.to_string().contains("server.metrics_allow"), "{e}");
    }

    #[test]
    fn proxy_keys_only_on_upstream_routes() {
        let e = err("[[route]]\npath = \"/e\"\nto = \"&echo\"\nread_timeout = \"1s\"\n");
        assert_eq!(e.path, "route[0].read_timeout");
        assert!(e.to_string().contains("upstream route only"), "{e}");
        let e = err("[[route]]\npath = \"/a\"\nto = \"http://h\"\nconnect_timeout = \"0s\"\n");
        assert_eq!(e.path, "route[0].connect_timeout");
        let c = from_str("[[route]]\npath = \"/a\"\nto = \"http://h\"\n", &[]).unwrap();
        assert_eq!(c.routes[0].proxy, Some(ProxyOptions::default()));
        let c = from_str(
            "[[route]]\npath = \"/a\"\nto = \"http://h\"\nread_timeout = \"300ms\"\necho_identity = true\n",
            &[],
        )
        .unwrap();
        assert!(c.describe().contains(
            "route /a -> http://h (auth optional, connect_timeout 5s, read_timeout 300ms, echo_identity true)"
        ));
    }

    #[test]
    fn old_login_key_name_still_reads() {
        let c = from_str("[auth]\nlogin_per_user_per_minute = 4\n", &[]).unwrap();
        assert_eq!(c.auth.login_failures_per_user_per_minute, 4);
        assert_eq!(c.auth.login_failures_per_minute, 600);
        assert_eq!(c.auth.password_queue, 64);
        let e = err("[auth]\nlogin_failures_per_minute = 0\n");
        assert_eq!(e.path, "auth.login_failures_per_minute");
    }

    #[test]
    fn full_sample_file_loads_and_names_every_key() {
        let path = full_toml_path();
        let c = load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.topology, default_topology());
        assert!(c.routes.iter().any(|r| r.to == Destination::Echo));
        // The reference file spells out every key (uncommented).
        let text = std::fs::read_to_string(&path).unwrap();
        let tables: &[(&str, &[&str])] = &[
            ("", fields_of::<ConfigFile>()),
            ("server", fields_of::<ServerConfig>()),
            ("http", fields_of::<HttpTable>()),
            ("websocket", fields_of::<WebsocketTable>()),
            ("db", fields_of::<DbConfig>()),
            ("broadcast", fields_of::<BroadcastTable>()),
            ("broadcast.rule", fields_of::<BroadcastRule>()),
            ("route", fields_of::<RouteTable>()),
            ("worlds", fields_of::<WorldsConfig>()),
            ("world", fields_of::<WorldTable>()),
        ];
        for (table, keys) in tables {
            for k in *keys {
                let found = text.lines().any(|l| {
                    l.starts_with(&format!("{k} = "))
                        || l.starts_with(&format!("[{k}]"))
                        || l.starts_with(&format!("[[{k}]]"))
                        || l.starts_with(&format!("[{k}."))
                        || l.starts_with(&format!("[[{table}.{k}]]"))
                });
                assert!(found, "full.toml lacks {table}.{k}");
            }
        }
    }

    #[test]
    fn unknown_keys_name_their_path_and_line() {
        let e = err("pipeline = \"T3000[H]\"\nbogus = 1\n");
        assert_eq!(e.path, "bogus");
        assert!(matches!(e.kind, ConfigErrorKind::UnknownKey { .. }));
        assert_eq!(
            e.origin,
            Origin::File {
                name: "<config>".into(),
                line: Some(2)
            }
        );
        assert!(e.to_string().starts_with(
            "<config>:2: unknown key `bogus` (expected one of `pipeline`, `data_dir`"
        ));

        let e = err("[http]\nmax_headers = 5\n\nmax_hedaers = 10\n");
        assert_eq!(e.path, "http.max_hedaers");
        let msg = e.to_string();
        assert!(
            msg.starts_with("<config>:4: unknown key `http.max_hedaers`"),
            "{msg}"
        );
        assert!(msg.contains("`max_headers`"), "{msg}");

        let e = err("[websocket]\nmax_fram = 1\n");
        assert_eq!(e.path, "websocket.max_fram");

        let e = err("[server]\nbacklg = 1\n");
        assert_eq!(e.path, "server.backlg");

        let e = err(
            "[[route]]\npath = \"/a\"\nto = \"&echo\"\n\n[[route]]\npath = \"/b\"\nto = \"&echo\"\nauht = \"none\"\n",
        );
        assert_eq!(e.path, "route[1].auht");
        assert!(
            e.to_string()
                .starts_with("<config>:8: unknown key `route[1].auht`"),
            "{e}"
        );

        // Dotted keys and inline tables are the same keys.
        let e = err("http.max_hedaers = 1\n");
        assert_eq!(e.path, "http.max_hedaers");
        let e = err("websocket = { max_frame = 1, x = 2 }\n");
        assert_eq!(e.path, "websocket.x");
    }

    #[test]
    fn type_and_value_errors_name_the_key() {
        let e = err("[http]\n\nhead_timeout = \"ten\"\n");
        assert_eq!(e.path, "http.head_timeout");
        let msg = e.to_string();
        assert!(
            msg.starts_with("<config>:3: http.head_timeout: invalid duration \"ten\": "),
            "{msg}"
        );

        let e = err("[http]\nhead_timeout = 10\n");
        assert!(e.to_string().contains("expected a duration string"), "{e}");
        let e = err("[http]\nhead_timeout = \"0s\"\n");
        assert!(e.to_string().contains("must be greater than 0"), "{e}");
        let e = err("[server]\ndrain_timeout = \"400days\"\n");
        assert!(e.to_string().contains("at most 365 days"), "{e}");

        let e = err("[http]\nmax_headers = \"many\"\n");
        assert_eq!(e.path, "http.max_headers");
        assert!(e.to_string().contains("invalid type"), "{e}");

        let e = err("[http]\nmax_body = -1\n");
        assert_eq!(e.path, "http.max_body");

        let e = err("pipeline = 3000\n");
        assert_eq!(e.path, "pipeline");

        let e = err("http = 5\n");
        assert_eq!(e.path, "http");

        let e = err("[[route]]\npath = \"/a\"\n");
        assert_eq!(e.path, "route[0]");
        assert!(e.to_string().contains("missing field `to`"), "{e}");

        let e = err("[[route]]\npath = \"/a\"\nto = \"&echo\"\nauth = \"maybe\"\n");
        assert_eq!(e.path, "route[0].auth");
        assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
    }

    #[test]
    fn zero_where_zero_makes_no_sense() {
        for (table, k) in [
            ("server", "max_connections"),
            ("server", "max_connections_per_ip"),
            ("server", "backlog"),
            ("server", "memory_budget"),
            ("http", "max_request_line"),
            ("http", "max_header_bytes"),
            ("http", "max_headers"),
            ("http", "body_min_rate"),
            ("http", "max_pipelined"),
            ("http", "max_requests_per_connection"),
            ("websocket", "max_frame"),
            ("websocket", "max_message"),
            ("websocket", "max_outbound"),
        ] {
            let e = err(&format!("[{table}]\n{k} = 0\n"));
            assert_eq!(e.path, format!("{table}.{k}"));
            assert!(e.to_string().contains("must be greater than 0"), "{e}");
        }
        let e = err("[http]\nmax_headers = -3\n");
        assert!(e.to_string().contains("invalid value: integer `-3`"), "{e}");
        let e = err("[server]\nbacklog = -3\n");
        assert!(
            e.to_string().contains("must be greater than 0 (got -3)"),
            "{e}"
        );
        let e = err("[server]\nbacklog = 2147483648\n");
        assert!(
            e.to_string()
                .starts_with("<config>:2: server.backlog: invalid value"),
            "{e}"
        );
        for (table, k) in [
            ("server", "drain_timeout"),
            ("server", "linger_timeout"),
            ("http", "head_timeout"),
            ("http", "keepalive_timeout"),
            ("http", "body_rate_grace"),
            ("http", "write_timeout"),
            ("websocket", "ping_interval"),
            ("websocket", "idle_timeout"),
            ("websocket", "close_timeout"),
        ] {
            let e = err(&format!("[{table}]\n{k} = \"0ms\"\n"));
            assert_eq!(e.path, format!("{table}.{k}"));
        }
        // Zero is meaningful here: no body, no chunk extensions, no trailers.
        let c = from_str(
            "[http]\nmax_body = 0\nmax_chunk_extension = 0\nmax_trailer_bytes = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.limits.max_body, 0);

        let e = err("[websocket]\nmax_frame = 100\nmax_message = 99\n");
        assert_eq!(e.path, "websocket.max_frame");
        assert_eq!(
            e.to_string(),
            "<config>:2: websocket.max_frame: 100 is larger than websocket.max_message (99)"
        );
        let e = err("[websocket]\nping_interval = \"30s\"\nidle_timeout = \"30s\"\n");
        assert_eq!(e.path, "websocket.idle_timeout");

        let e = err("data_dir = \"\"\n");
        assert_eq!(e.path, "data_dir");
    }

    #[test]
    fn pipeline_errors_keep_the_caret() {
        let e = err("pipeline = \"T30x0[HA]\"\n");
        assert_eq!(e.path, "pipeline");
        assert!(matches!(e.kind, ConfigErrorKind::Pipeline(ref s) if s.position == 3));
        assert!(e.to_string().ends_with("  T30x0[HA]\n     ^"), "{e}");
    }

    #[test]
    fn syntax_and_io_errors_name_the_file() {
        let e = err("[http]\nmax_headers = = 3\n");
        assert!(matches!(e.kind, ConfigErrorKind::Syntax { .. }));
        assert_eq!(
            e.origin,
            Origin::File {
                name: "<config>".into(),
                line: Some(2)
            }
        );
        assert!(
            e.to_string().starts_with("<config>:2: invalid TOML: "),
            "{e}"
        );

        let missing = Path::new("/nonexistent/sigma.toml");
        let e = load(Some(missing), &[]).unwrap_err();
        assert!(matches!(e.kind, ConfigErrorKind::Io(_)));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/sigma.toml: cannot read the config file: "),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let toml = "pipeline = \"T3000[H]\"\n[http]\nmax_headers = 50\n";
        let vars = env(&[
            ("SIGMA_HTTP_MAX_HEADERS", "70"),
            ("SIGMA_HTTP_HEAD_TIMEOUT", "3s"),
            ("SIGMA_WEBSOCKET_MAX_FRAME", "1000"),
            ("SIGMA_SERVER_BACKLOG", "64"),
            ("SIGMA_PIPELINE", "T[::1]:0[HA]"),
            ("SIGMA_DATA_DIR", "/tmp/sigma"),
            ("SIGMA_LOG", "debug"),
            ("SIGMA_LOG_FORMAT", "json"),
            ("PATH", "/usr/bin"),
            ("HTTP_MAX_HEADERS", "1"),
        ]);
        let c = from_str(toml, &vars).unwrap();
        assert_eq!(c.limits.max_headers, 70);
        assert_eq!(c.limits.head_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.ws.max_frame, 1000);
        assert_eq!(c.server.backlog, 64);
        assert_eq!(c.topology.to_string(), "T[::1]:0[HA]");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/sigma"));
        // The file still wins over the defaults where env is silent.
        let c = from_str(toml, &env(&[("SIGMA_HTTP_MAX_BODY", "5")])).unwrap();
        assert_eq!(c.limits.max_headers, 50);
        assert_eq!(c.limits.max_body, 5);
        // Without a file.
        let c = load(None, &env(&[("SIGMA_PIPELINE", "T9999[H]")])).unwrap();
        assert_eq!(c.topology.to_string(), "T127.0.0.1:9999[H]");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let e = from_str("", &env(&[("SIGMA_HTTP_MAX_HEDAERS", "10")])).unwrap_err();
        assert_eq!(
            e.origin,
            Origin::Env {
                var: "SIGMA_HTTP_MAX_HEDAERS".into()
            }
        );
        assert_eq!(e.path, "http.max_hedaers");
        assert!(e.to_string().starts_with(
            "SIGMA_HTTP_MAX_HEDAERS: unknown key `http.max_hedaers` (expected one of"
        ));

        let e = load(None, &env(&[("SIGMA_FOO", "1")])).unwrap_err();
        assert!(
            e.to_string().starts_with("SIGMA_FOO: unknown key `foo`"),
            "{e}"
        );

        let e = from_str("", &env(&[("SIGMA_HTTP_HEAD_TIMEOUT", "ten")])).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "SIGMA_HTTP_HEAD_TIMEOUT: http.head_timeout: invalid duration \"ten\""
            ),
            "{e}"
        );
        let e = from_str("", &env(&[("SIGMA_HTTP_HEAD_TIMEOUT", "10")])).unwrap_err();
        assert!(e.to_string().contains("expected a duration string"), "{e}");

        let e = from_str("", &env(&[("SIGMA_PIPELINE", "T3000")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SIGMA_PIPELINE: pipeline: invalid pipeline"),
            "{e}"
        );

        let e = from_str("", &env(&[("SIGMA_WEBSOCKET_MAX_FRAME", "0")])).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("SIGMA_WEBSOCKET_MAX_FRAME: websocket.max_frame"));

        let e = from_str("http = 1\n", &env(&[("SIGMA_HTTP_MAX_BODY", "1")])).unwrap_err();
        assert!(e.to_string().contains("is not a table"), "{e}");

        let e = from_str("", &env(&[("SIGMA_ROUTE", "x")])).unwrap_err();
        assert_eq!(e.path, "route");
    }

    fn route_err(path: &str, to: &str, extra: &str) -> ConfigError {
        err(&format!("[[route]]\npath = {path:?}\nto = {to:?}\n{extra}"))
    }

    #[test]
    fn invalid_routes() {
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            ("echo", "&echo", "", "route[0].path", "must start with `/`"),
            ("", "&echo", "", "route[0].path", "must start with `/`"),
            ("/a b", "&echo", "", "route[0].path", "contains whitespace"),
            ("/a\tb", "&echo", "", "route[0].path", "contains whitespace"),
            ("/a/../b", "&echo", "", "route[0].path", "`..` segment"),
            ("/..", "&echo", "", "route[0].path", "`..` segment"),
            ("/a/./b", "&echo", "", "route[0].path", "`.` or"),
            ("/a//b", "&echo", "", "route[0].path", "contains `//`"),
            ("//", "&echo", "", "route[0].path", "contains `//`"),
            ("/a%2e", "&echo", "", "route[0].path", "contains `%`"),
            ("/a?b", "&echo", "", "route[0].path", "contains `?`"),
            ("/é", "&echo", "", "route[0].path", "contains `é`"),
            (
                "/x",
                "&chat",
                "",
                "route[0].to",
                "unknown destination `&chat`",
            ),
            (
                "/x",
                "echo",
                "",
                "route[0].to",
                "unknown destination \"echo\"",
            ),
            ("/x", "ftp://h", "", "route[0].to", "unknown destination"),
            (
                "/x",
                "https://h",
                "",
                "route[0].to",
                "https:// upstreams are not supported",
            ),
            ("/x", "http://", "", "route[0].to", "the host is missing"),
            ("/x", "http://:80", "", "route[0].to", "the host is missing"),
            ("/x", "http://h:0", "", "route[0].to", "the port must be"),
            (
                "/x",
                "http://h:99999",
                "",
                "route[0].to",
                "the port must be",
            ),
            ("/x", "http://h:+80", "", "route[0].to", "the port must be"),
            ("/x", "http://u:p@h", "", "route[0].to", "credentials"),
            ("/x", "http://h/a?b", "", "route[0].to", "query"),
            ("/x", "http://h /a", "", "route[0].to", "whitespace"),
            ("/x", "http://[::1", "", "route[0].to", "closing `]`"),
            (
                "/x",
                "http://[zz]:80",
                "",
                "route[0].to",
                "IPv6 address is invalid",
            ),
            ("/x", "http://h_h", "", "route[0].to", "the host may only"),
            ("/x", "static:", "", "route[0].to", "needs a directory"),
            (
                "/x",
                "&echo",
                "auth = \"none\"\nusers = [\"a\"]\n",
                "route[0].users",
                "needs auth",
            ),
            ("/x", "&echo", "users = []\n", "route[0].users", "is empty"),
            (
                "/x",
                "&echo",
                "users = [\"\"]\n",
                "route[0].users",
                "invalid user name",
            ),
            (
                "/x",
                "&echo",
                "users = [\"a b\"]\n",
                "route[0].users",
                "invalid user name",
            ),
            (
                "/x",
                "&echo",
                "namespace = \"team\"\n",
                "route[0].namespace",
                "needs to = \"&db\"",
            ),
            (
                "/x",
                "&db",
                "namespace = \"a/b\"\n",
                "route[0].namespace",
                "invalid namespace",
            ),
            (
                "/x",
                "&db",
                "namespace = \"\"\n",
                "route[0].namespace",
                "invalid namespace",
            ),
            (
                "/x",
                "&db",
                "writers = [\"a\"]\n",
                "route[0].writers",
                "set namespace too",
            ),
            (
                "/x",
                "&db",
                "namespace = \"t\"\nwriters = []\n",
                "route[0].writers",
                "is empty",
            ),
        ];
        for (path, to, extra, key_path, needle) in cases {
            let e = route_err(path, to, extra);
            assert_eq!(e.path, *key_path, "{path:?} {to:?}: {e}");
            assert!(e.to_string().contains(needle), "{path:?} {to:?}: {e}");
            assert!(matches!(e.kind, ConfigErrorKind::Route(_)));
        }
    }

    #[test]
    fn duplicate_routes() {
        let e = err(
            "[[route]]\npath = \"/a\"\nto = \"&echo\"\n[[route]]\npath = \"/b\"\nto = \"&db\"\n[[route]]\npath = \"/a/\"\nto = \"&db\"\n",
        );
        assert_eq!(e.path, "route[2].path");
        assert!(
            e.to_string().starts_with(
                "<config>:8: route[2].path: duplicate route path \"/a/\" (same as route[0])"
            ),
            "{e}"
        );
    }

    #[test]
    fn routes_sorted_longest_first_and_described() {
        let toml = r#"
            pipeline = "T3000[HA] T9090[H]"
            [[route]]
            path = "/"
            to = "static:./www"
            [[route]]
            path = "/api"
            to = "http://127.0.0.1:8080/base"
            auth = "required"
            users = ["alice", "bob"]
            max_body = 1024
            [[route]]
            path = "/api/v2/"
            to = "http://[::1]:81"
            [[route]]
            path = "/chat"
            to = "&broadcast"
            [[route]]
            path = "/db"
            to = "&db"
            auth = "required"
        "#;
        let c = from_str(toml, &[]).unwrap();
        let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/api/v2/", "/chat", "/api", "/db", "/"]);
        assert_eq!(
            c.describe(),
            "pipeline T127.0.0.1:3000[HA] T127.0.0.1:9090[H]\n\
             route /api/v2/ -> http://[::1]:81 (auth optional)\n\
             route /chat -> &broadcast (auth optional)\n\
             route /api -> http://127.0.0.1:8080/base (auth required, users alice,bob, max_body 1024)\n\
             route /db -> &db (auth required)\n\
             route / -> static:./www (auth optional)"
        );
        assert_eq!(
            Config::default().describe(),
            "pipeline T127.0.0.1:3000[HA]\n\
             route /broadcast -> &broadcast (auth optional)\n\
             route /world -> &world (auth required)\n\
             route /echo -> &echo (auth none)\n\
             route /db -> &db (auth required)\n\
             route /ws -> &world (auth required)\n\
             route / -> &web (auth optional)\n\
             world chat -> &broadcast (code builtin:chat)\n\
             world echo -> &echo (code builtin:echo)"
        );
    }

    #[test]
    fn world_commands_are_checked() {
        let e = err("[world.x]\ncode = \"builtin:nope\"\nto = \"&echo\"\n");
        assert_eq!(e.path, "world.x.code");
        let e = err("[world.x]\ncode = \"builtin:echo\"\nto = \"&world\"\n");
        assert_eq!(e.path, "world.x.to");
        // Destinations with no WebSocket endpoint for a world.
        for to in ["http://127.0.0.1:8080", "static:./www", "&web"] {
            let e = err(&format!(
                "[world.x]\ncode = \"builtin:echo\"\nto = \"{to}\"\n"
            ));
            assert_eq!(e.path, "world.x.to", "{to}");
            assert!(e.to_string().contains("WebSocket"), "{e}");
        }
        let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nbogus = 1\n");
        assert_eq!(e.path, "world.x.bogus");
        let e = err("[world.\"a b\"]\ncode = \"a.js\"\nto = \"&echo\"\n");
        assert_eq!(e.path, "world.a b");
        let e = err("[worlds]\nmax_per_user = 0\n");
        assert_eq!(e.path, "worlds.max_per_user");
        for key in ["max_used_per_user", "max_users"] {
            let e = err(&format!("[worlds]\n{key} = 0\n"));
            assert_eq!(e.path, format!("worlds.{key}"));
        }
        // The key's name from when the limit was per login session.
        let e = err("[worlds]\nmax_per_session = 5\n");
        assert_eq!(e.path, "worlds.max_per_session");
        let c = from_str("[world.e]\ncode = \"builtin:echo\"\nto = \"&echo\"\n", &[]).unwrap();
        assert_eq!(c.world.len(), 1);
        // `users` is checked like a route's.
        let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nusers = []\n");
        assert_eq!(e.path, "world.x.users");
        let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nusers = [\"a b\"]\n");
        assert_eq!(e.path, "world.x.users");
    }

    #[test]
    fn world_commands_inherit_the_users_of_the_route_they_reuse() {
        let routes = r#"
            [[route]]
            path = "/team"
            to = "&broadcast"
            auth = "required"
            users = ["alice", "bob"]
            [[route]]
            path = "/ws"
            to = "&world"
            auth = "required"
        "#;
        let c = from_str(
            &format!(
                "{routes}\n[world.open]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\n\
                 [world.mine]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\nusers = [\"bob\", \"carol\"]\n\
                 [world.echo]\ncode = \"builtin:echo\"\nto = \"&echo\"\nusers = [\"carol\"]\n"
            ),
            &[],
        )
        .unwrap();
        let users = |name: &str| {
            let w = c.world.iter().find(|w| w.name == name).unwrap();
            c.world_users(w)
        };
        assert_eq!(users("open"), Some(vec!["alice".into(), "bob".into()]));
        assert_eq!(users("mine"), Some(vec!["bob".into()]));
        assert_eq!(users("echo"), Some(vec!["carol".into()]));
        assert!(c
            .describe()
            .contains("world mine -> &broadcast (code builtin:chat, users bob)"));
        // Nobody could start it: an error naming the key.
        let e = err(&format!(
            "{routes}\n[world.x]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\nusers = [\"carol\"]\n"
        ));
        assert_eq!(e.path, "world.x.users");
        assert!(e.to_string().contains("/team"), "{e}");
    }

    #[test]
    fn explicit_empty_route_list_means_no_routes() {
        let c = from_str("route = []\n", &[]).unwrap();
        assert!(c.routes.is_empty());
    }

    #[test]
    fn destinations_parse_and_print() {
        for (to, d) in [
            ("&echo", Destination::Echo),
            ("&broadcast", Destination::Broadcast),
            ("&db", Destination::Db),
            ("http://h", Destination::Upstream("http://h".into())),
            (
                "http://h.example:8080/x/y",
                Destination::Upstream("http://h.example:8080/x/y".into()),
            ),
            ("http://[::1]", Destination::Upstream("http://[::1]".into())),
            ("static:/srv/www", Destination::Static("/srv/www".into())),
            ("&web", Destination::Web),
        ] {
            assert_eq!(Destination::parse(to), Ok(d.clone()), "{to}");
            assert_eq!(d.to_string(), to);
            assert_eq!(to.parse::<Destination>(), Ok(d));
        }
        assert_eq!(
            Destination::parse("&nope"),
            Err(RouteError::UnknownBuiltin("nope".into()))
        );
    }

    #[test]
    fn process_env_only_keeps_sigma_variables() {
        assert!(process_env().iter().all(|(k, _)| k.starts_with("SIGMA_")));
    }
}
