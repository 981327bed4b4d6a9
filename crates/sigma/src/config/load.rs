//! Loading `sigma.toml`: file, then `SIGMA_*` environment, then the
//! cross-key checks that give the resolved [`Config`]. Config assembly,
//! above every stage (T → H → A → router → destination).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sigma_http::Limits;
use toml::{Table, Value};

use crate::pipeline::{self, Topology};

use super::auth::AuthConfig;
use super::broadcast::{BroadcastConfig, BroadcastTable};
use super::db::DbConfig;
use super::error::{ConfigError, ConfigErrorKind, Origin};
use super::keypath::{key, line_at, Seg, Sources};
use super::limits::{HttpTable, WebsocketTable};
use super::log::LogConfig;
use super::route::{default_routes, routes, Destination, ProxyOptions, RouteConfig, RouteTable};
use super::server::ServerConfig;
use super::store::{check_redis_url, check_url, ClusterConfig, StoreConfig};
use super::tls::TlsConfig;
use super::world::{
    check_world_access, default_world_commands, world_commands, world_route, world_users,
    WorldCommand, WorldTable, WorldsConfig,
};

/// The topology when neither the file nor the environment sets `pipeline`.
pub const DEFAULT_PIPELINE: &str = "T127.0.0.1:3000[HA]";
/// Where the embedded store lives unless `data_dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./sigma-data";

/// `SIGMA_*` variables that are not config keys (read by the logging setup).
/// `SIGMA_CONFIG` names the file (read by the command line).
pub const RESERVED_ENV: &[&str] = &["SIGMA_LOG", "SIGMA_LOG_FORMAT", "SIGMA_CONFIG"];

/// The tables an environment variable can address (`SIGMA_<TABLE>_<KEY>`).
const ENV_TABLES: &[&str] = &[
    "server",
    "log",
    "http",
    "websocket",
    "auth",
    "db",
    "broadcast",
    "worlds",
    "store",
    "cluster",
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
    /// The access log (`[log]`).
    pub log: LogConfig,
    /// `S`: certificates, ACME and the plain listeners' redirect
    /// (`[tls]`, DESIGN §2a); `None` without TLS.
    pub tls: Option<TlsConfig>,
    /// Where the durable state lives (`[store]`, DESIGN §7).
    pub store: StoreConfig,
    /// The shared ephemeral state of several nodes (`[cluster]`).
    pub cluster: ClusterConfig,
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
            log: LogConfig::default(),
            tls: None,
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
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
            if let Some(p) = &r.policy {
                out.push_str(&format!(", {p}"));
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ConfigFile {
    pub(super) pipeline: String,
    pub(super) data_dir: PathBuf,
    pub(super) server: ServerConfig,
    pub(super) http: HttpTable,
    pub(super) websocket: WebsocketTable,
    pub(super) auth: AuthConfig,
    pub(super) db: DbConfig,
    pub(super) broadcast: BroadcastTable,
    pub(super) worlds: WorldsConfig,
    pub(super) world: Option<std::collections::BTreeMap<String, WorldTable>>,
    pub(super) route: Option<Vec<RouteTable>>,
    pub(super) log: LogConfig,
    pub(super) tls: Option<TlsConfig>,
    pub(super) store: StoreConfig,
    pub(super) cluster: ClusterConfig,
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
            log: LogConfig::default(),
            tls: None,
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// [`build_once`], skipping the `SIGMA_*` variables that name no key:
/// another program's variable in the environment must not stop sigma
/// (DESIGN §8), so each is a warning naming the variable, and the config
/// is built without it. A variable naming a real key with a bad value is
/// still an error.
pub(super) fn build(
    file: Option<(&str, &str)>,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut env = env.to_vec();
    loop {
        match build_once(file, &env) {
            Err(ConfigError {
                origin: Origin::Env { var },
                path,
                kind: ConfigErrorKind::UnknownKey { .. },
            }) if env.iter().any(|(k, _)| *k == var) => {
                tracing::warn!(
                    target: "sigma::config",
                    "{var}: ignored: `{path}` is not a config key (docs/design.md §8 lists them)"
                );
                env.retain(|(k, _)| *k != var);
            }
            other => return other,
        }
    }
}

fn build_once(file: Option<(&str, &str)>, env: &[(String, String)]) -> Result<Config, ConfigError> {
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
    // Every table denies unknown fields, and serde_path_to_error names
    // the offending key's path (the unknown key included).
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
        sources.error(path, ConfigErrorKind::from_serde(message))
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

/// Cross-key checks and conversion to the public types.
fn resolve(file: ConfigFile, sources: &Sources<'_>) -> Result<Config, ConfigError> {
    let topology = pipeline::parse(&file.pipeline)
        .map_err(|e| sources.error(vec![key("pipeline")], ConfigErrorKind::Pipeline(e)))?;
    let invalid = |table, name, message| {
        sources.error(
            vec![key(table), key(name)],
            ConfigErrorKind::Invalid { message },
        )
    };
    if let Some(url) = &file.store.url {
        check_url(url).map_err(|m| invalid("store", "url", m))?;
    }
    if file.store.ca.is_some() && file.store.url.is_none() {
        let why = "applies to a PostgreSQL `url` only (the embedded store has no connection)";
        return Err(invalid("store", "ca", why.to_owned()));
    }
    if let Some(url) = &file.cluster.redis {
        check_redis_url(url).map_err(|m| invalid("cluster", "redis", m))?;
    }
    if file.cluster.redis_ca.is_some()
        && !file
            .cluster
            .redis
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"))
    {
        let why = "applies to a `rediss://` (TLS) `redis` URL only";
        return Err(invalid("cluster", "redis_ca", why.to_owned()));
    }
    if file.cluster.prefix.is_empty() {
        let why = "must not be empty (every Redis key starts with it)";
        return Err(invalid("cluster", "prefix", why.to_owned()));
    }
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
    let write_timeout = file.http.write_timeout;
    let limits = file
        .http
        .into_limits(file.websocket.into_limits(write_timeout));
    let invalid = |(path, message)| sources.error(path, ConfigErrorKind::Invalid { message });
    super::auth::check(&file.auth).map_err(invalid)?;
    super::tls::check(file.tls.as_ref()).map_err(invalid)?;
    let mut auth = file.auth;
    // DESIGN §2a/§4: with TLS on, sigma's cookies are `Secure` (and so
    // `X-Forwarded-Proto` to upstreams is `https`).
    auth.cookie_secure |= file.tls.is_some();
    let broadcast = file
        .broadcast
        .resolve(limits.ws.max_outbound)
        .map_err(|message| (vec![key("broadcast"), key("max_message")], message))
        .map_err(invalid)?;
    Ok(Config {
        topology,
        data_dir: file.data_dir,
        server: file.server,
        limits,
        routes,
        auth,
        db: file.db,
        broadcast,
        worlds: file.worlds,
        world,
        log: file.log,
        tls: file.tls,
        store: file.store,
        cluster: file.cluster,
    })
}
