//! sigma's own bearer tokens: EdDSA (Ed25519) JWTs for `POST /auth/token`.
//!
//! The key is derived from a 32-byte seed that the caller keeps in the data
//! directory (the store generates it once), so tokens survive a restart.
//! Issuing is pure: the time is an argument, and nothing here reads the
//! clock, the disk or the network. The public half is published as a JWK
//! ([`Issuer::public_jwk`], [`Issuer::jwks`]) whose `kid` is the RFC 7638
//! thumbprint, so the same seed always yields the same `kid` and a new seed
//! a different one.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::keys::{JwtAlgorithm, VerifyKey};

/// The registered claims of a token (RFC 7519 §4.1) that sigma issues or
/// has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (for sigma's tokens: the user name).
    pub sub: Option<String>,
    /// Audiences (one or more).
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: Option<u64>,
    /// The login session a token of sigma's belongs to (a
    /// [`crate::revoke::SessionHandle`], never the session id): the
    /// token dies with the session.
    pub sid: Option<String>,
}

impl Claims {
    /// The JSON payload: `aud` is a string when there is one audience.
    pub fn to_json(&self) -> String {
        // Members in sorted order whether or not serde_json preserves
        // insertion order: the same claims always give the same bytes.
        let mut m = Map::new();
        let aud = match self.aud.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
        m.insert("aud".into(), aud);
        m.insert("exp".into(), Value::from(self.exp));
        if let Some(iat) = self.iat {
            m.insert("iat".into(), Value::from(iat));
        }
        m.insert("iss".into(), Value::String(self.iss.clone()));
        if let Some(nbf) = self.nbf {
            m.insert("nbf".into(), Value::from(nbf));
        }
        if let Some(sid) = &self.sid {
            m.insert("sid".into(), Value::String(sid.clone()));
        }
        if let Some(sub) = &self.sub {
            m.insert("sub".into(), Value::String(sub.clone()));
        }
        Value::Object(m).to_string()
    }
}

/// The public half of sigma's key, as a JWK (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicJwk {
    /// `OKP`.
    pub kty: &'static str,
    /// `Ed25519`.
    pub crv: &'static str,
    /// The public key, base64url.
    pub x: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA`.
    pub alg: &'static str,
    /// `sig`.
    #[serde(rename = "use")]
    pub key_use: &'static str,
}

/// Issues sigma's own EdDSA tokens.
pub struct Issuer {
    signing: SigningKey,
    kid: String,
    x: String,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("key", &"[redacted]")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl Issuer {
    /// An issuer whose Ed25519 key is derived from `key_seed`. Tokens carry
    /// `iss = issuer`, `aud = audience` and live `ttl` (at least 1 s).
    pub fn new(key_seed: &[u8; 32], issuer: String, audience: String, ttl: Duration) -> Self {
        let signing = SigningKey::from_bytes(key_seed);
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        // RFC 7638 §3.2: the required members, sorted, no whitespace.
        let thumb_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumb_input.as_bytes()));
        Self {
            signing,
            kid,
            x,
            issuer,
            audience,
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    /// A token for `user` issued at `now_unix` without a `sid`, and its
    /// lifetime in seconds. sigma refuses such tokens (they are not bound
    /// to a session); kept for the interoperability vectors.
    pub fn issue(&self, user: &str, now_unix: u64) -> (String, u64) {
        let claims = self.claims(user, now_unix);
        (self.sign(&claims.to_json()), self.ttl_secs)
    }

    /// A token for `user` of session `sid` (its public handle) issued at
    /// `now_unix`, and its lifetime in seconds (`expires_in` of `POST
    /// /auth/token`).
    pub fn issue_for_session(&self, user: &str, sid: &str, now_unix: u64) -> (String, u64) {
        let mut claims = self.claims(user, now_unix);
        claims.sid = Some(sid.to_owned());
        (self.sign(&claims.to_json()), self.ttl_secs)
    }

    /// The claims [`Issuer::issue`] puts in a token.
    pub fn claims(&self, user: &str, now_unix: u64) -> Claims {
        Claims {
            iss: self.issuer.clone(),
            sub: Some(user.to_owned()),
            aud: vec![self.audience.clone()],
            exp: now_unix.saturating_add(self.ttl_secs),
            nbf: None,
            iat: Some(now_unix),
            sid: None,
        }
    }

    /// Signs a JSON payload with the standard header.
    fn sign(&self, payload_json: &str) -> String {
        let mut h = Map::new();
        h.insert("alg".into(), Value::from(JwtAlgorithm::EdDsa.as_str()));
        h.insert("kid".into(), Value::String(self.kid.clone()));
        h.insert("typ".into(), Value::from("JWT"));
        self.sign_parts(
            Value::Object(h).to_string().as_bytes(),
            payload_json.as_bytes(),
        )
    }

    /// Signs a JSON object as a token of this issuer's key (its `kid`,
    /// `alg` EdDSA): for payloads other than [`Claims`] (assertions).
    pub fn sign_json(&self, payload: &Value) -> String {
        self.sign(&payload.to_string())
    }

    /// Signs arbitrary header and payload bytes (for tests and fuzzing: the
    /// result need not be a valid JWT).
    pub(crate) fn sign_parts(&self, header: &[u8], payload: &[u8]) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let sig = self.signing.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut token);
        token
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> PublicJwk {
        PublicJwk {
            kty: "OKP",
            crv: "Ed25519",
            x: self.x.clone(),
            kid: self.kid.clone(),
            alg: "EdDSA",
            key_use: "sig",
        }
    }

    /// `{"keys": [public_jwk]}`, a JWKS document others can fetch.
    pub fn jwks(&self) -> Value {
        let jwk = serde_json::to_value(self.public_jwk()).unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("keys".into(), Value::Array(vec![jwk]));
        Value::Object(m)
    }

    /// The key that verifies this issuer's tokens (with its `kid`).
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::ed25519_derived(&self.signing.verifying_key().to_bytes(), self.kid.clone())
    }

    /// The `kid` of this issuer's key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `iss` of this issuer's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of this issuer's tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The lifetime of this issuer's tokens, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }
}
