//! `[auth]`: the settings of A, the identity stage of T → H → A → router
//! → destination (DESIGN §4), and its cross-key checks.

use std::time::Duration;

use serde::Deserialize;

use super::de::{duration, positive};
use super::keypath::{key, KeyPath, Seg};
use super::server::{cidr_list, Cidr};

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

impl AuthConfig {
    /// The checks across `[auth]`'s keys: the origins, the session
    /// timeouts, `public_url` and the `[auth.oauth.<name>]` tables
    /// (DESIGN §4). The error names the key (from `auth` down).
    pub(super) fn check(&self) -> Result<(), (KeyPath, String)> {
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if !valid_origin(origin) {
                return Err((
                    vec![key("auth"), key("allowed_origins"), Seg::Index(i)],
                    format!(
                        "invalid origin {origin:?}: expected scheme://host[:port], e.g. \"https://app.example.com\""
                    ),
                ));
            }
        }
        if self.session_idle_timeout > self.session_lifetime {
            return Err((
                vec![key("auth"), key("session_idle_timeout")],
                "must not be longer than auth.session_lifetime".into(),
            ));
        }
        if let Some(url) = &self.public_url {
            if !valid_origin(url.trim_end_matches('/')) {
                return Err((
                    vec![key("auth"), key("public_url")],
                    format!("invalid public URL {url:?}: expected scheme://host[:port], e.g. \"https://chat.example.com\""),
                ));
            }
        } else if !self.oauth.is_empty() {
            return Err((
                vec![key("auth"), key("public_url")],
                "is required with [auth.oauth.*]: providers redirect to <public_url>/auth/<name>/callback".into(),
            ));
        }
        for (name, p) in &self.oauth {
            if let Err(e) = p.validate(name) {
                let mut path = vec![key("auth"), key("oauth"), key(name)];
                if !e.key.is_empty() {
                    path.push(key(e.key));
                }
                return Err((path, e.message));
            }
        }
        Ok(())
    }
}
