//! [`ConfigError`]: what is wrong with a `sigma.toml` value and where it
//! is. Config assembly, above every stage (T → H → A → router →
//! destination).

use std::fmt;
use std::time::Duration;

use crate::pipeline::SpecError;

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
    /// The config file (`name` as given; `<config>` for [`from_str`](super::from_str)).
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
    /// A key no table of sigma.toml has (every table denies unknown
    /// fields; serde reports them).
    UnknownKey {
        /// The keys that table accepts, as serde words them:
        /// ``one of `a`, `b`, `c` `` (empty: the table has no keys).
        expected: String,
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
    /// `ca` on a route that is not an `https://` upstream.
    CaNotHttps,
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
    /// `allow`, `deny` or `methods` that do not parse.
    Policy(crate::auth::policy::PolicyError),
    /// Both `users` and `allow` on one route.
    UsersAndAllow,
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
                write!(f, " (expected {expected})")?;
            }
            return Ok(());
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl ConfigErrorKind {
    /// A deserialisation error's message as a kind: serde's own wording
    /// of a denied unknown field (``unknown field `x`, expected one of
    /// `a`, `b` `` or ``…, there are no fields``) is
    /// [`ConfigErrorKind::UnknownKey`], anything else
    /// [`ConfigErrorKind::Invalid`].
    pub(super) fn from_serde(message: String) -> Self {
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, "))
            .map(|(_, rest)| rest.strip_prefix("expected ").unwrap_or_default());
        match unknown {
            Some(expected) => ConfigErrorKind::UnknownKey {
                expected: expected.to_owned(),
            },
            None => ConfigErrorKind::Invalid { message },
        }
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
                "unknown destination {to:?}: expected &echo, &broadcast, &db, &world, &web, http(s)://HOST[:PORT] or static:DIR"
            ),
            RouteError::CaNotHttps => write!(
                f,
                "applies to an https:// upstream route only (to = \"https://…\")"
            ),
            RouteError::BadUpstream { url, reason } => {
                write!(f, "invalid upstream URL {url:?}: {reason}")
            }
            RouteError::EmptyStaticDir => {
                write!(f, "`static:` needs a directory, e.g. \"static:./www\"")
            }
            RouteError::Policy(e) => write!(f, "{e}"),
            RouteError::UsersAndAllow => write!(
                f,
                "users and allow on one route: write allow = [\"user:NAME\", …] alone"
            ),
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
