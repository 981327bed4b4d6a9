//! `[worlds]`: the session socket's limits, and where a world command's
//! worker code comes from (DESIGN §5): the config of the world
//! destination, the last stage of T → H → A → router → destination. The
//! `sigma` shell reads the file; `[world.<name>]`, which names routes, is
//! checked there.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sigma_core::de::{duration, positive};

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
            max_used_per_user: super::budget::DEFAULT_MAX_USED_PER_USER,
            max_users: super::budget::DEFAULT_MAX_USERS,
            key_rotation: Duration::from_secs(60),
        }
    }
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
