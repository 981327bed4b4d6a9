//! `[auth.oauth.<name>]`: one OAuth2 / OpenID Connect provider (DESIGN §4).
//!
//! ```toml
//! [auth]
//! public_url = "https://chat.example.com"   # redirect_uri = <public_url>/auth/<name>/callback
//!
//! [auth.oauth.corp]
//! kind = "oidc"                      # "oidc" | "google" | "github"
//! issuer = "https://id.example.com"  # oidc: discovery at <issuer>/.well-known/openid-configuration
//! client_id = "sigma"
//! client_secret_file = "/etc/sigma/corp.secret"   # or client_secret = "…"
//! user_claim = "email"
//! allowed_domains = ["example.com"]
//! ```
//!
//! [`OAuthProviderConfig::validate`] checks a table without any I/O and
//! names the offending key; the secret file is read when `A` starts.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A secret from the configuration (a client secret). `Debug` prints
/// `[redacted]`, so a config dumped for diagnostics never shows it;
/// equality is constant-time. [`Secret::expose`] is the only way to the
/// value.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself (to hand to the provider, nowhere else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Which protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect issuer with a discovery document.
    Oidc,
    /// Google (OIDC, issuer `https://accounts.google.com` by default).
    Google,
    /// GitHub (OAuth2 + the user API; no ID token).
    Github,
}

impl ProviderKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oidc => "oidc",
            Self::Google => "google",
            Self::Github => "github",
        }
    }
}

/// Google's issuer.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// GitHub's authorization endpoint.
pub const GITHUB_AUTH_URL: &str = "https://github.com/login/oauth/authorize";
/// GitHub's token endpoint.
pub const GITHUB_TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
/// GitHub's REST API root.
pub const GITHUB_API_URL: &str = "https://api.github.com";

/// One `[auth.oauth.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthProviderConfig {
    /// `oidc`, `google` or `github`.
    pub kind: ProviderKind,
    /// The OIDC issuer (exact `iss`; discovery at
    /// `<issuer>/.well-known/openid-configuration`). Required for `oidc`,
    /// defaults to Google's for `google`, not allowed for `github`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret (prefer `client_secret_file`); `Debug` hides it.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (one trailing newline ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request (default: `openid email profile` for OIDC,
    /// `read:user user:email` for GitHub).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// What becomes the sigma user name: an ID-token / userinfo claim for
    /// OIDC (default `email`), or `login` | `email` | `id` for GitHub
    /// (default `login`).
    #[serde(default)]
    pub user_claim: Option<String>,
    /// OIDC only: the ID-token (or userinfo) claim, an array of strings,
    /// whose members become the session's groups (policies' `group:`
    /// subjects); members that are not valid group names are ignored.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// If not empty, only users with a verified e-mail address in one of
    /// these domains may log in.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// If not empty, only these sigma user names (after mapping) may log in.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// GitHub only: the authorization endpoint (default GitHub's).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// GitHub only: the token endpoint (default GitHub's).
    #[serde(default)]
    pub token_url: Option<String>,
    /// GitHub only: the REST API root (default `https://api.github.com`).
    #[serde(default)]
    pub api_url: Option<String>,
}

/// A problem in one provider table: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfigError {
    /// The key inside `[auth.oauth.<name>]` (empty for the table name).
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl OAuthConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// True for a provider name usable in `/auth/<name>/…`: 1–32 of `a-z 0-9 _ -`.
pub fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// True for an `https` URL, or `http` to a loopback host (tests, sidecars),
/// without credentials: the rule for every URL sigma fetches keys or
/// tokens from (OAuth providers here, external JWT issuers' JWKS in
/// `auth::jwt::external`).
pub fn url_ok(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    let Some(host) = u.host_str() else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

impl OAuthProviderConfig {
    /// Checks the table (no I/O).
    pub fn validate(&self, name: &str) -> Result<(), OAuthConfigError> {
        if !valid_provider_name(name) {
            return Err(OAuthConfigError::new(
                "",
                format!("invalid provider name {name:?}: use 1 to 32 of a-z 0-9 _ -"),
            ));
        }
        if self.client_id.is_empty() {
            return Err(OAuthConfigError::new("client_id", "must not be empty"));
        }
        match (&self.client_secret, &self.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(OAuthConfigError::new(
                    "client_secret",
                    "client_secret and client_secret_file are exclusive",
                ))
            }
            (Some(s), None) if s.expose().is_empty() => {
                return Err(OAuthConfigError::new("client_secret", "must not be empty"))
            }
            (None, None) if self.kind != ProviderKind::Oidc => {
                return Err(OAuthConfigError::new(
                    "client_secret",
                    format!(
                        "kind = \"{}\" needs client_secret or client_secret_file",
                        self.kind.as_str()
                    ),
                ))
            }
            _ => {}
        }
        if let Some(scopes) = &self.scopes {
            if scopes.iter().any(|s| {
                s.is_empty()
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            }) {
                return Err(OAuthConfigError::new(
                    "scopes",
                    "each scope must be a non-empty token of printable ASCII",
                ));
            }
        }
        if self.user_claim.as_deref().is_some_and(str::is_empty) {
            return Err(OAuthConfigError::new("user_claim", "must not be empty"));
        }
        if self.groups_claim.as_deref().is_some_and(str::is_empty) {
            return Err(OAuthConfigError::new("groups_claim", "must not be empty"));
        }
        if self.groups_claim.is_some() && self.kind == ProviderKind::Github {
            return Err(OAuthConfigError::new(
                "groups_claim",
                "kind = \"github\" has no groups claim (OIDC providers only)",
            ));
        }
        for d in &self.allowed_domains {
            if d.is_empty()
                || d.starts_with('.')
                || d.starts_with('@')
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(OAuthConfigError::new(
                    "allowed_domains",
                    format!("invalid domain {d:?}: expected e.g. \"example.com\""),
                ));
            }
        }
        for u in &self.allowed_users {
            if !sigma_store::valid_user_name(u) {
                return Err(OAuthConfigError::new(
                    "allowed_users",
                    format!("invalid user name {u:?}"),
                ));
            }
        }
        let endpoints = [
            ("auth_url", &self.auth_url),
            ("token_url", &self.token_url),
            ("api_url", &self.api_url),
        ];
        match self.kind {
            ProviderKind::Oidc | ProviderKind::Google => {
                if let Some((k, _)) = endpoints.iter().find(|(_, v)| v.is_some()) {
                    return Err(OAuthConfigError::new(
                        k,
                        "only for kind = \"github\" (OIDC providers are found by discovery)",
                    ));
                }
                match (&self.issuer, self.kind) {
                    (None, ProviderKind::Oidc) => {
                        return Err(OAuthConfigError::new(
                            "issuer",
                            "kind = \"oidc\" needs an issuer",
                        ))
                    }
                    (Some(i), _) if !url_ok(i) => {
                        return Err(OAuthConfigError::new(
                            "issuer",
                            "must be an https URL (or http to a loopback host)",
                        ))
                    }
                    _ => {}
                }
                if let Some(c) = self.user_claim.as_deref() {
                    if matches!(c, "login" | "id") {
                        return Err(OAuthConfigError::new(
                            "user_claim",
                            format!("{c:?} is a GitHub field; OIDC uses a claim such as \"email\", \"sub\" or \"preferred_username\""),
                        ));
                    }
                }
            }
            ProviderKind::Github => {
                if self.issuer.is_some() {
                    return Err(OAuthConfigError::new(
                        "issuer",
                        "not used by kind = \"github\" (see auth_url, token_url, api_url)",
                    ));
                }
                for (k, v) in endpoints {
                    if let Some(u) = v {
                        if !url_ok(u) {
                            return Err(OAuthConfigError::new(
                                k,
                                "must be an https URL (or http to a loopback host)",
                            ));
                        }
                    }
                }
                if let Some(c) = self.user_claim.as_deref() {
                    if !matches!(c, "login" | "email" | "id") {
                        return Err(OAuthConfigError::new(
                            "user_claim",
                            "kind = \"github\" maps \"login\", \"email\" or \"id\"",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The issuer to discover (OIDC kinds).
    pub fn issuer_url(&self) -> Option<&str> {
        match self.kind {
            ProviderKind::Oidc => self.issuer.as_deref(),
            ProviderKind::Google => Some(self.issuer.as_deref().unwrap_or(GOOGLE_ISSUER)),
            ProviderKind::Github => None,
        }
    }

    /// The claim (OIDC) or field (GitHub) that names the sigma user.
    pub fn user_claim(&self) -> &str {
        match (self.user_claim.as_deref(), self.kind) {
            (Some(c), _) => c,
            (None, ProviderKind::Github) => "login",
            (None, _) => "email",
        }
    }

    /// The scopes to request.
    pub fn scopes(&self) -> Vec<String> {
        match (&self.scopes, self.kind) {
            (Some(s), _) => s.clone(),
            (None, ProviderKind::Github) => vec!["read:user".into(), "user:email".into()],
            (None, _) => vec!["openid".into(), "email".into(), "profile".into()],
        }
    }

    /// The button label on the login page.
    pub fn label(&self, name: &str) -> String {
        match self.kind {
            ProviderKind::Github => "GitHub".into(),
            ProviderKind::Google => "Google".into(),
            ProviderKind::Oidc => name.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(kind: ProviderKind) -> OAuthProviderConfig {
        OAuthProviderConfig {
            kind,
            issuer: None,
            client_id: "sigma".into(),
            client_secret: Some("s".into()),
            client_secret_file: None,
            scopes: None,
            user_claim: None,
            groups_claim: None,
            allowed_domains: vec![],
            allowed_users: vec![],
            auth_url: None,
            token_url: None,
            api_url: None,
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = base(ProviderKind::Oidc);
        assert_eq!(c.validate("corp").unwrap_err().key, "issuer");
        c.issuer = Some("http://id.example.com".into());
        assert_eq!(c.validate("corp").unwrap_err().key, "issuer");
        c.issuer = Some("http://127.0.0.1:9000".into());
        assert!(c.validate("corp").is_ok());
        assert_eq!(c.validate("Corp").unwrap_err().key, "");
        assert_eq!(c.validate("a/b").unwrap_err().key, "");
        c.auth_url = Some("https://x".into());
        assert_eq!(c.validate("corp").unwrap_err().key, "auth_url");
        c.auth_url = None;
        c.client_secret_file = Some("/x".into());
        assert_eq!(c.validate("corp").unwrap_err().key, "client_secret");
        c.client_secret_file = None;
        c.client_secret = None;
        assert!(c.validate("corp").is_ok(), "OIDC public client");
        c.allowed_domains = vec!["@example.com".into()];
        assert_eq!(c.validate("corp").unwrap_err().key, "allowed_domains");
        c.allowed_domains = vec![];
        c.allowed_users = vec!["a b".into()];
        assert_eq!(c.validate("corp").unwrap_err().key, "allowed_users");

        let mut g = base(ProviderKind::Github);
        assert!(g.validate("github").is_ok());
        assert_eq!(g.user_claim(), "login");
        g.user_claim = Some("sub".into());
        assert_eq!(g.validate("github").unwrap_err().key, "user_claim");
        g.user_claim = None;
        g.issuer = Some("https://github.com".into());
        assert_eq!(g.validate("github").unwrap_err().key, "issuer");
        g.issuer = None;
        g.token_url = Some("ftp://x".into());
        assert_eq!(g.validate("github").unwrap_err().key, "token_url");
        g.token_url = None;
        g.client_secret = None;
        assert_eq!(g.validate("github").unwrap_err().key, "client_secret");

        let google = base(ProviderKind::Google);
        assert!(google.validate("google").is_ok());
        let mut empty = base(ProviderKind::Google);
        empty.client_secret = Some("".into());
        assert_eq!(empty.validate("google").unwrap_err().key, "client_secret");
        assert!(google.validate("google").is_ok());
        assert_eq!(google.issuer_url(), Some(GOOGLE_ISSUER));
        assert_eq!(google.user_claim(), "email");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let mut c = base(ProviderKind::Github);
        c.client_secret = Some("gh-secret-4f1d9a".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("gh-secret-4f1d9a"), "{shown}");
        assert!(shown.contains("client_secret: Some([redacted])"), "{shown}");
        // Nor the [auth] table holding it, nor the whole configuration.
        let auth = crate::config::AuthConfig {
            oauth: [("gh".to_string(), c.clone())].into_iter().collect(),
            ..Default::default()
        };
        assert!(!format!("{auth:?}").contains("gh-secret-4f1d9a"));
        assert!(!format!("{auth:#?}").contains("gh-secret-4f1d9a"));
        // Equality still compares the value.
        assert_eq!(Secret::from("a"), Secret::from("a"));
        assert_ne!(Secret::from("a"), Secret::from("b"));
    }
}
