//! External JWT issuers from configuration (`[[auth.jwt]]`).
//!
//! ```toml
//! [[auth.jwt]]
//! issuer = "https://id.example.com/"     # the exact `iss`
//! audience = "sigma"                     # must be in the token's `aud`
//! algorithm = "RS256"                    # RS256 | ES256 | EdDSA | HS256, pinned
//! jwks_url = "https://id.example.com/.well-known/jwks.json"
//! # key_file = "/etc/sigma/id.pem"       # instead: a PEM public key, or
//! #                                      # for HS256 the shared-secret file
//! user_claim = "email"                   # default "sub"
//! ```
//!
//! [`JwtIssuerConfig`] is what serde reads; [`ExternalIssuer::load`] checks
//! it and reads its key file (the only I/O here); the result goes into a
//! [`super::Verifier`]. Exactly one of `key_file` and `jwks_url`; HS256 only
//! with a `key_file` (a shared secret never travels in a JWKS); a JWKS URL
//! is `https`, or `http` to a loopback host (tests, a local sidecar).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::jwks::JwksCache;
use super::keys::{JwtAlgorithm, KeyError, VerifyKey};
use super::{IssuerKeys, DEFAULT_USER_CLAIM};

/// One `[[auth.jwt]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The exact `iss` of this issuer's tokens.
    pub issuer: String,
    /// The audience sigma expects in `aud`.
    pub audience: String,
    /// The one algorithm this issuer's tokens may use.
    pub algorithm: JwtAlgorithm,
    /// A PEM public key (RS256, ES256, EdDSA) or the shared-secret file
    /// (HS256; one trailing newline is ignored).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The issuer's JWKS document (not for HS256).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The claim that names the sigma user (default `sub`).
    #[serde(default)]
    pub user_claim: Option<String>,
}

/// A `[[auth.jwt]]` table that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfigError {
    /// The `issuer` of the table.
    pub issuer: String,
    /// What is wrong.
    pub kind: JwtConfigErrorKind,
}

/// What is wrong with a `[[auth.jwt]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtConfigErrorKind {
    /// `issuer` or `audience` or `user_claim` is empty.
    Empty(&'static str),
    /// Neither `key_file` nor `jwks_url`.
    NoKeySource,
    /// Both `key_file` and `jwks_url`.
    TwoKeySources,
    /// HS256 with a `jwks_url`.
    HmacFromJwks,
    /// `jwks_url` is not an `https` URL (or `http` to loopback).
    BadJwksUrl,
    /// The key file cannot be read (missing, not a regular file, larger
    /// than [`sigma_core::namedfile::MAX_NAMED_FILE`]).
    Io {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the file.
        error: String,
    },
    /// The key file does not hold a usable key.
    Key(KeyError),
    /// Two issuers (or sigma's own) with the same `issuer`.
    DuplicateIssuer,
    /// The HTTP client for JWKS URLs cannot be built.
    HttpClient(String),
}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "auth.jwt issuer {:?}: ", self.issuer)?;
        match &self.kind {
            JwtConfigErrorKind::Empty(what) => write!(f, "{what} must not be empty"),
            JwtConfigErrorKind::NoKeySource => f.write_str("needs key_file or jwks_url"),
            JwtConfigErrorKind::TwoKeySources => f.write_str("key_file and jwks_url are exclusive"),
            JwtConfigErrorKind::HmacFromJwks => {
                f.write_str("HS256 takes a key_file, never a jwks_url")
            }
            JwtConfigErrorKind::BadJwksUrl => {
                f.write_str("jwks_url must be https (or http to a loopback host)")
            }
            // `error` names the file ([`sigma_core::namedfile::NamedFileError`]).
            JwtConfigErrorKind::Io { error, .. } => write!(f, "key_file: {error}"),
            JwtConfigErrorKind::Key(e) => write!(f, "{e}"),
            JwtConfigErrorKind::DuplicateIssuer => f.write_str("issuer configured twice"),
            JwtConfigErrorKind::HttpClient(e) => write!(f, "cannot build the JWKS client: {e}"),
        }
    }
}

impl std::error::Error for JwtConfigError {}

impl JwtIssuerConfig {
    /// Checks the table without reading anything.
    pub fn validate(&self) -> Result<(), JwtConfigError> {
        let err = |kind| {
            Err(JwtConfigError {
                issuer: self.issuer.clone(),
                kind,
            })
        };
        if self.issuer.is_empty() {
            return err(JwtConfigErrorKind::Empty("issuer"));
        }
        if self.audience.is_empty() {
            return err(JwtConfigErrorKind::Empty("audience"));
        }
        if self.user_claim.as_deref().is_some_and(str::is_empty) {
            return err(JwtConfigErrorKind::Empty("user_claim"));
        }
        match (&self.key_file, &self.jwks_url) {
            (None, None) => err(JwtConfigErrorKind::NoKeySource),
            (Some(_), Some(_)) => err(JwtConfigErrorKind::TwoKeySources),
            (None, Some(_)) if self.algorithm == JwtAlgorithm::Hs256 => {
                err(JwtConfigErrorKind::HmacFromJwks)
            }
            (None, Some(url)) if !crate::oauth::config::url_ok(url) => {
                err(JwtConfigErrorKind::BadJwksUrl)
            }
            _ => Ok(()),
        }
    }
}

/// An external issuer, checked and with its key loaded.
#[derive(Debug)]
pub struct ExternalIssuer {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) alg: JwtAlgorithm,
    pub(super) user_claim: String,
    pub(super) keys: IssuerKeys,
}

impl ExternalIssuer {
    /// Checks `cfg` and reads its key file, if any.
    pub fn load(cfg: &JwtIssuerConfig) -> Result<Self, JwtConfigError> {
        cfg.validate()?;
        match &cfg.key_file {
            Some(path) => {
                let bytes = sigma_core::namedfile::read(path).map_err(|e| JwtConfigError {
                    issuer: cfg.issuer.clone(),
                    kind: JwtConfigErrorKind::Io {
                        path: path.clone(),
                        error: e.to_string(),
                    },
                })?;
                Self::with_key_bytes(cfg, &bytes)
            }
            None => Self::with_key_bytes(cfg, &[]),
        }
    }

    /// Like [`ExternalIssuer::load`], with the key file's content given
    /// (ignored for a `jwks_url` issuer). Reads nothing.
    pub fn with_key_bytes(cfg: &JwtIssuerConfig, key_file: &[u8]) -> Result<Self, JwtConfigError> {
        cfg.validate()?;
        let keys = match &cfg.jwks_url {
            Some(url) => IssuerKeys::Jwks(JwksCache::new(url.clone(), cfg.algorithm)),
            None => {
                let key = if cfg.algorithm == JwtAlgorithm::Hs256 {
                    let secret = key_file
                        .strip_suffix(b"\n")
                        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
                        .unwrap_or(key_file);
                    VerifyKey::hmac_secret(secret)
                } else {
                    VerifyKey::from_pem(cfg.algorithm, key_file)
                };
                let key = key.map_err(|e| JwtConfigError {
                    issuer: cfg.issuer.clone(),
                    kind: JwtConfigErrorKind::Key(e),
                })?;
                IssuerKeys::Static(Arc::new(key))
            }
        };
        Ok(Self {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            alg: cfg.algorithm,
            user_claim: cfg
                .user_claim
                .clone()
                .unwrap_or_else(|| DEFAULT_USER_CLAIM.to_owned()),
            keys,
        })
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> JwtIssuerConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn table_parses_and_rejects_unknown_keys() {
        let c = cfg(r#"
            issuer = "https://id.example.com/"
            audience = "sigma"
            algorithm = "ES256"
            jwks_url = "https://id.example.com/jwks"
            user_claim = "email"
        "#);
        assert_eq!(c.algorithm, JwtAlgorithm::Es256);
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<JwtIssuerConfig>(
            r#"issuer = "a"
               audience = "b"
               algorithm = "RS256"
               key_file = "k"
               secret = "x""#
        )
        .is_err());
        assert!(toml::from_str::<JwtIssuerConfig>(
            r#"issuer = "a"
               audience = "b"
               algorithm = "none"
               key_file = "k""#
        )
        .is_err());
    }

    #[test]
    fn validation_rules() {
        let base = JwtIssuerConfig {
            issuer: "i".into(),
            audience: "a".into(),
            algorithm: JwtAlgorithm::Rs256,
            key_file: None,
            jwks_url: Some("https://id.example.com/jwks".into()),
            user_claim: None,
        };
        let kind = |c: JwtIssuerConfig| c.validate().err().map(|e| e.kind);
        assert_eq!(kind(base.clone()), None);
        assert_eq!(
            kind(JwtIssuerConfig {
                jwks_url: None,
                ..base.clone()
            }),
            Some(JwtConfigErrorKind::NoKeySource)
        );
        assert_eq!(
            kind(JwtIssuerConfig {
                key_file: Some("k".into()),
                ..base.clone()
            }),
            Some(JwtConfigErrorKind::TwoKeySources)
        );
        assert_eq!(
            kind(JwtIssuerConfig {
                algorithm: JwtAlgorithm::Hs256,
                ..base.clone()
            }),
            Some(JwtConfigErrorKind::HmacFromJwks)
        );
        assert_eq!(
            kind(JwtIssuerConfig {
                issuer: String::new(),
                ..base.clone()
            }),
            Some(JwtConfigErrorKind::Empty("issuer"))
        );
        for (url, ok) in [
            ("https://id.example.com/jwks", true),
            ("http://127.0.0.1:8080/jwks", true),
            ("http://localhost/jwks", true),
            ("http://[::1]/jwks", true),
            ("http://id.example.com/jwks", false),
            ("https://user:pw@id.example.com/jwks", false),
            ("file:///etc/jwks.json", false),
            ("not a url", false),
        ] {
            let r = kind(JwtIssuerConfig {
                jwks_url: Some(url.into()),
                ..base.clone()
            });
            assert_eq!(r.is_none(), ok, "{url}");
        }
    }

    #[test]
    fn hmac_secret_file_trailing_newline() {
        let c = JwtIssuerConfig {
            issuer: "i".into(),
            audience: "a".into(),
            algorithm: JwtAlgorithm::Hs256,
            key_file: Some("secret".into()),
            jwks_url: None,
            user_claim: None,
        };
        // 32 bytes plus a newline: accepted; 31 plus a newline: too short.
        assert!(ExternalIssuer::with_key_bytes(&c, &[b'k'; 32]).is_ok());
        let mut s = vec![b'k'; 32];
        s.extend_from_slice(b"\r\n");
        assert!(ExternalIssuer::with_key_bytes(&c, &s).is_ok());
        let mut s = vec![b'k'; 31];
        s.push(b'\n');
        assert_eq!(
            ExternalIssuer::with_key_bytes(&c, &s).unwrap_err().kind,
            JwtConfigErrorKind::Key(KeyError::WeakSecret { len: 31 })
        );
    }
}
