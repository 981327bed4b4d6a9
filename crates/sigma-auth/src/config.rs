//! `[auth]`: the settings of A, the identity stage of T → H → A → router
//! → destination (DESIGN §4), and a route's access level ([`AuthLevel`]).
//! The checks across keys, which name the key path, are part of `sigma`'s
//! config assembly (it reads the file; this crate only owns the table).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use sigma_core::de::{cidr_list, duration, positive};

pub use sigma_core::net::Cidr;

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
    pub jwt: Vec<crate::jwt::JwtIssuerConfig>,
    /// sigma's public origin (`https://chat.example.com`): OAuth providers
    /// send the browser back to `<public_url>/auth/<name>/callback`.
    /// Required when `[auth.oauth.*]` is configured.
    pub public_url: Option<String>,
    /// OAuth2 / OIDC login providers (`[auth.oauth.<name>]`, DESIGN §4).
    pub oauth: std::collections::BTreeMap<String, crate::oauth::config::OAuthProviderConfig>,
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
            password_queue: crate::password::DEFAULT_PASSWORD_QUEUE,
            jwt: Vec::new(),
            public_url: None,
            oauth: std::collections::BTreeMap::new(),
        }
    }
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

impl fmt::Display for AuthLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthLevel::Required => "required",
            AuthLevel::Optional => "optional",
            AuthLevel::None => "none",
        })
    }
}
