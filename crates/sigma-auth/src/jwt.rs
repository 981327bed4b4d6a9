//! `A`: bearer JWTs (DESIGN §4, "Bearer JWT"; `POST /auth/token`, §9).
//!
//! ```text
//!  client ─Authorization: Bearer <jwt>─▶ H ─▶ [ A: Verifier::verify ] ─▶ identity jwt:<issuer>
//!  POST /auth/token (logged in) ─▶ [ A: Issuer::issue ] ─▶ {"token", "expires_in"}
//! ```
//!
//! Two kinds of token reach [`Verifier::verify`]: sigma's own, issued by
//! [`Issuer`] (EdDSA, key derived from a seed kept in the data directory),
//! and those of external issuers from `[[auth.jwt]]` ([`JwtIssuerConfig`]:
//! a static key file or a JWKS URL). Every issuer is pinned to one
//! algorithm and every key is built for exactly that algorithm, so:
//!
//! - `alg: none` is refused, in any spelling, before the payload is decoded;
//! - the header's `alg` must equal the pinned one of the issuer named by
//!   `iss`, and the signature is checked with the pinned algorithm, never
//!   the header's: an HS256 token signed with an RSA public key as the
//!   secret never meets an HMAC verifier (algorithm confusion);
//! - the token is at most [`MAX_TOKEN_BYTES`] and strictly encoded (see
//!   `token.rs`), and its claims are unique; a token cannot bring its own
//!   key (`jwk`, `jku`, `x5u`, `x5c` are never read);
//! - after the signature: `exp` is required, `nbf` and `iat` must not be in
//!   the future, `iss` is exact, the configured audience must be in `aud`
//!   (string or array), all with a small leeway ([`DEFAULT_LEEWAY`]); the
//!   user comes from the issuer's user claim (default `sub`).
//!
//! Every refusal is one [`JwtError`] variant with a stable
//! [`JwtError::reason`] for metrics; `Display` never contains the token.
//! Verification is synchronous and pure: the time is an argument (Unix
//! seconds), keys come from memory. Only a JWKS refresh does I/O, through
//! [`JwksFetch`], when the caller asks ([`Verifier::refresh_due`],
//! [`Verifier::verify_or_refresh`]). This module does not read the
//! `Authorization` header (see [`bearer_token`]), store the seed, or count
//! metrics; the HTTP handlers do.
//!
//! Crate choice: `jsonwebtoken` (Keats/jsonwebtoken, v11) with only its
//! pure-Rust RustCrypto backend. It is the most used JWT crate, maintained,
//! supports all four pinned algorithms, and parses PEM public keys; we call
//! its per-algorithm verifiers directly (`crypto::rust_crypto`) instead of
//! `jsonwebtoken::decode`, because `decode` reads the system clock, cannot
//! tell `alg: none` from other bad headers, and accepts duplicated claims.
//! The JOSE framing, the claim checks and the key-shape checks are ours and
//! small. `jwt-simple` was the alternative; it reads the clock too and
//! brings its own time and key types. The `rsa` crate's advisory
//! (RUSTSEC-2023-0071, timing of private-key operations) does not apply:
//! sigma only verifies with RSA public keys and signs with Ed25519.

mod external;
mod issuer;
mod jwks;
mod keys;
mod token;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use external::{ExternalIssuer, JwtConfigError, JwtConfigErrorKind, JwtIssuerConfig};
pub use issuer::{Claims, Issuer, PublicJwk};
pub use jwks::{
    parse_jwks, FetchFuture, HttpJwksFetch, JwksCache, JwksError, JwksFetch,
    DEFAULT_JWKS_MIN_REFETCH, DEFAULT_JWKS_REFRESH, JWKS_FETCH_TIMEOUT, MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
};
pub use keys::{
    Jwk, JwtAlgorithm, KeyError, VerifyKey, MAX_RSA_BITS, MIN_HMAC_SECRET_BYTES, MIN_RSA_BITS,
};
pub use token::{bearer_token, MAX_KID_BYTES, MAX_TOKEN_BYTES};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The claim that names the user unless an issuer configures another.
pub const DEFAULT_USER_CLAIM: &str = "sub";
/// Longest accepted user name from a token, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Why a bearer token was refused. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_BYTES`]; nothing was decoded.
    TooLong {
        /// The token's length in bytes.
        len: usize,
    },
    /// Not a compact JWS with a JSON header and a JSON object payload.
    Malformed(&'static str),
    /// `alg: none` (unsecured JWT).
    AlgNone,
    /// The header's `alg` is not the issuer's pinned algorithm.
    AlgMismatch {
        /// The pinned algorithm.
        expected: JwtAlgorithm,
        /// The header's, if sigma supports it at all.
        got: Option<JwtAlgorithm>,
    },
    /// No configured issuer has this `iss`.
    UnknownIssuer,
    /// The issuer has no key for this `kid` (for a JWKS issuer: yet;
    /// [`Verifier::verify_or_refresh`] refetches).
    UnknownKey {
        /// The configured issuer.
        issuer: String,
        /// The header's `kid`.
        kid: Option<String>,
    },
    /// The signature does not verify with the issuer's key.
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid,
    /// The `kid` is one of a configured issuer's keys, but `iss` names an
    /// issuer that is not configured.
    WrongIssuer,
    /// The configured audience is not in `aud`.
    WrongAudience,
    /// A required claim is absent (`iss`, `exp`, `aud`, the user claim).
    MissingClaim(String),
    /// A claim has the wrong type, or the user name is empty, too long or
    /// contains control characters.
    InvalidClaim(String),
}

impl JwtError {
    /// A stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "too_long",
            Self::Malformed(_) => "malformed",
            Self::AlgNone => "alg_none",
            Self::AlgMismatch { .. } => "alg_mismatch",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
        }
    }

    /// The HTTP status for this refusal (always 401, RFC 6750 §3.1
    /// `invalid_token`).
    pub fn status(&self) -> u16 {
        401
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len } => {
                write!(
                    f,
                    "token of {len} bytes, at most {MAX_TOKEN_BYTES} accepted"
                )
            }
            Self::Malformed(what) => write!(f, "malformed token: {what}"),
            Self::AlgNone => f.write_str("unsecured token (alg none)"),
            Self::AlgMismatch { expected, got } => match got {
                Some(got) => write!(f, "token alg {got}, issuer is pinned to {expected}"),
                None => write!(f, "unsupported token alg, issuer is pinned to {expected}"),
            },
            Self::UnknownIssuer => f.write_str("token from an unknown issuer"),
            Self::UnknownKey { issuer, kid } => match kid {
                Some(kid) => write!(f, "issuer {issuer:?} has no key {kid:?}"),
                None => write!(
                    f,
                    "issuer {issuer:?}: token names no key and none is implied"
                ),
            },
            Self::BadSignature => f.write_str("bad token signature"),
            Self::Expired => f.write_str("token expired"),
            Self::NotYetValid => f.write_str("token not yet valid"),
            Self::WrongIssuer => f.write_str("token iss does not match its key's issuer"),
            Self::WrongAudience => f.write_str("token not meant for this audience"),
            Self::MissingClaim(c) => write!(f, "token lacks the {c:?} claim"),
            Self::InvalidClaim(c) => write!(f, "token claim {c:?} is invalid"),
        }
    }
}

impl std::error::Error for JwtError {}

/// A token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sigma user name (from the issuer's user claim).
    pub user: String,
    /// The configured issuer (`iss`), for `Provider::Jwt`.
    pub issuer: String,
    /// The registered claims.
    pub claims: Claims,
    /// The `groups` claim ([`token`]'s rules: valid group names only).
    pub groups: Vec<String>,
}

/// Where an issuer's keys come from.
pub(crate) enum IssuerKeys {
    /// One key (sigma's own, or a key file).
    Static(Arc<VerifyKey>),
    /// A JWKS URL, cached.
    Jwks(JwksCache),
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(k) => f.debug_tuple("Static").field(k).finish(),
            Self::Jwks(c) => f.debug_tuple("Jwks").field(c).finish(),
        }
    }
}

impl IssuerKeys {
    fn key(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match self {
            // A static key without a kid serves any token of its issuer;
            // with one (sigma's own), a token naming another kid was signed
            // by another key.
            Self::Static(k) => match (k.kid(), kid) {
                (Some(have), Some(want)) if have != want => None,
                _ => Some(Arc::clone(k)),
            },
            Self::Jwks(cache) => cache.key(kid),
        }
    }

    fn has_kid(&self, kid: &str) -> bool {
        match self {
            Self::Static(k) => k.kid() == Some(kid),
            Self::Jwks(cache) => cache.has_kid(kid),
        }
    }
}

#[derive(Debug)]
struct TrustedIssuer {
    issuer: String,
    audience: String,
    alg: JwtAlgorithm,
    user_claim: String,
    keys: IssuerKeys,
}

/// The outcome of refreshing one issuer's JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOutcome {
    /// The issuer.
    pub issuer: String,
    /// The number of keys installed, or why none were.
    pub result: Result<usize, JwksError>,
}

/// Verifies bearer tokens against sigma's own key and the configured
/// external issuers. Share it (`Arc<Verifier>`); all methods take `&self`.
pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    leeway_secs: u64,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    fetch: Option<Arc<dyn JwksFetch>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers)
            .field("leeway_secs", &self.leeway_secs)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_min_refetch", &self.jwks_min_refetch)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Verifier`].
pub struct VerifierBuilder {
    issuers: Vec<TrustedIssuer>,
    leeway: Duration,
    jwks_refresh: Duration,
    jwks_min_refetch: Duration,
    fetch: Option<Arc<dyn JwksFetch>>,
}

impl Verifier {
    /// A builder with the default leeway and JWKS intervals and no issuer.
    pub fn builder() -> VerifierBuilder {
        VerifierBuilder {
            issuers: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_min_refetch: DEFAULT_JWKS_MIN_REFETCH,
            fetch: None,
        }
    }

    /// Verifies `token` (the bytes after `Bearer `) at `now_unix`.
    pub fn verify(&self, token: impl AsRef<[u8]>, now_unix: u64) -> Result<Verified, JwtError> {
        let t = token::parse(token.as_ref())?;
        // Choose the issuer (and so the key and algorithm) by `iss`; until
        // the signature is checked, nothing else in the token is believed.
        let iss = t
            .claims
            .string("iss")?
            .ok_or_else(|| JwtError::MissingClaim("iss".to_owned()))?;
        let Some(trusted) = self.issuers.iter().find(|i| i.issuer == iss) else {
            let kid_known = t
                .header
                .kid
                .as_deref()
                .is_some_and(|kid| self.issuers.iter().any(|i| i.keys.has_kid(kid)));
            return Err(if kid_known {
                JwtError::WrongIssuer
            } else {
                JwtError::UnknownIssuer
            });
        };
        if t.header.alg != Some(trusted.alg) {
            return Err(JwtError::AlgMismatch {
                expected: trusted.alg,
                got: t.header.alg,
            });
        }
        let key =
            trusted
                .keys
                .key(t.header.kid.as_deref())
                .ok_or_else(|| JwtError::UnknownKey {
                    issuer: trusted.issuer.clone(),
                    kid: t.header.kid.clone(),
                })?;
        // The key is pinned to `trusted.alg` (checked above to equal the
        // header's): the header never chooses the verifier.
        if key.alg() != trusted.alg || !key.verify(t.signing_input, &t.signature) {
            return Err(JwtError::BadSignature);
        }
        self.check_claims(trusted, &t.claims, now_unix)
    }

    fn check_claims(
        &self,
        trusted: &TrustedIssuer,
        claims: &token::ClaimSet,
        now: u64,
    ) -> Result<Verified, JwtError> {
        let missing = |c: &str| JwtError::MissingClaim(c.to_owned());
        let leeway = self.leeway_secs;
        let exp = claims.numeric_date("exp")?.ok_or_else(|| missing("exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        let nbf = claims.numeric_date("nbf")?;
        let iat = claims.numeric_date("iat")?;
        let horizon = now.saturating_add(leeway);
        if nbf.is_some_and(|t| t > horizon) || iat.is_some_and(|t| t > horizon) {
            return Err(JwtError::NotYetValid);
        }
        let aud = claims.audiences()?.ok_or_else(|| missing("aud"))?;
        if !aud.iter().any(|a| *a == trusted.audience) {
            return Err(JwtError::WrongAudience);
        }
        let sub = claims.string("sub")?.map(str::to_owned);
        let sid = claims.string("sid")?.map(str::to_owned);
        let user = claims
            .string(&trusted.user_claim)?
            .ok_or_else(|| missing(&trusted.user_claim))?;
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(JwtError::InvalidClaim(trusted.user_claim.clone()));
        }
        Ok(Verified {
            user: user.to_owned(),
            groups: claims.groups(),
            issuer: trusted.issuer.clone(),
            claims: Claims {
                iss: trusted.issuer.clone(),
                sub,
                aud: aud.into_iter().map(str::to_owned).collect(),
                exp,
                nbf,
                iat,
                sid,
            },
        })
    }

    /// [`Verifier::verify`]; on [`JwtError::UnknownKey`] from a JWKS issuer,
    /// refetches its JWKS (at most once per `min_refetch`) and tries again.
    pub async fn verify_or_refresh(
        &self,
        token: impl AsRef<[u8]>,
        now_unix: u64,
    ) -> Result<Verified, JwtError> {
        let token = token.as_ref();
        match self.verify(token, now_unix) {
            Err(JwtError::UnknownKey { issuer, kid }) => {
                match self.refresh_issuer(&issuer, now_unix).await {
                    Ok(_) => self.verify(token, now_unix),
                    Err(_) => Err(JwtError::UnknownKey { issuer, kid }),
                }
            }
            other => other,
        }
    }

    /// Refetches the JWKS of `issuer` now, unless it was fetched less than
    /// `min_refetch` ago.
    pub async fn refresh_issuer(&self, issuer: &str, now_unix: u64) -> Result<usize, JwksError> {
        let Some(IssuerKeys::Jwks(cache)) = self
            .issuers
            .iter()
            .find(|i| i.issuer == issuer)
            .map(|i| &i.keys)
        else {
            return Err(JwksError::NotJwksIssuer);
        };
        let Some(fetch) = &self.fetch else {
            return Err(JwksError::Fetch("no JWKS fetcher".to_owned()));
        };
        if !cache.try_begin(now_unix, self.jwks_min_refetch) {
            return Err(JwksError::RateLimited);
        }
        cache.refresh(fetch.as_ref(), now_unix).await
    }

    /// Whether some JWKS is due for its periodic refresh (or was never
    /// fetched).
    pub fn needs_refresh(&self, now_unix: u64) -> bool {
        self.issuers.iter().any(|i| match &i.keys {
            IssuerKeys::Jwks(c) => c.is_due(now_unix, self.jwks_refresh, self.jwks_min_refetch),
            IssuerKeys::Static(_) => false,
        })
    }

    /// Refreshes every JWKS that is due (call at start-up and then every
    /// minute or so); one outcome per fetch attempted.
    pub async fn refresh_due(&self, now_unix: u64) -> Vec<RefreshOutcome> {
        let mut out = Vec::new();
        let Some(fetch) = &self.fetch else {
            return out;
        };
        for i in &self.issuers {
            let IssuerKeys::Jwks(cache) = &i.keys else {
                continue;
            };
            if !cache.is_due(now_unix, self.jwks_refresh, self.jwks_min_refetch)
                || !cache.try_begin(now_unix, self.jwks_min_refetch)
            {
                continue;
            }
            out.push(RefreshOutcome {
                issuer: i.issuer.clone(),
                result: cache.refresh(fetch.as_ref(), now_unix).await,
            });
        }
        out
    }

    /// The configured issuers (`iss` values), sigma's own included.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.issuer.as_str())
    }
}

impl VerifierBuilder {
    /// Trusts sigma's own tokens (user claim `sub`).
    pub fn own(mut self, issuer: &Issuer) -> Self {
        self.issuers.push(TrustedIssuer {
            issuer: issuer.issuer().to_owned(),
            audience: issuer.audience().to_owned(),
            alg: JwtAlgorithm::EdDsa,
            user_claim: DEFAULT_USER_CLAIM.to_owned(),
            keys: IssuerKeys::Static(Arc::new(issuer.verify_key())),
        });
        self
    }

    /// Trusts an external issuer.
    pub fn external(mut self, ext: ExternalIssuer) -> Self {
        self.issuers.push(TrustedIssuer {
            issuer: ext.issuer,
            audience: ext.audience,
            alg: ext.alg,
            user_claim: ext.user_claim,
            keys: ext.keys,
        });
        self
    }

    /// Clock skew tolerated on `exp`, `nbf`, `iat` (default
    /// [`DEFAULT_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Periodic JWKS refresh interval (default [`DEFAULT_JWKS_REFRESH`]).
    pub fn jwks_refresh(mut self, every: Duration) -> Self {
        self.jwks_refresh = every;
        self
    }

    /// Shortest time between two fetches of one JWKS (default
    /// [`DEFAULT_JWKS_MIN_REFETCH`]).
    pub fn jwks_min_refetch(mut self, min: Duration) -> Self {
        self.jwks_min_refetch = min;
        self
    }

    /// The JWKS fetcher (default: [`HttpJwksFetch`], created by
    /// [`VerifierBuilder::build`] when a JWKS issuer is configured).
    pub fn fetcher(mut self, fetch: Arc<dyn JwksFetch>) -> Self {
        self.fetch = Some(fetch);
        self
    }

    /// The verifier; fails if two issuers share an `iss`.
    pub fn build(self) -> Result<Verifier, JwtConfigError> {
        for (n, i) in self.issuers.iter().enumerate() {
            if self.issuers.iter().take(n).any(|j| j.issuer == i.issuer) {
                return Err(JwtConfigError {
                    issuer: i.issuer.clone(),
                    kind: JwtConfigErrorKind::DuplicateIssuer,
                });
            }
        }
        let needs_fetch = self
            .issuers
            .iter()
            .any(|i| matches!(i.keys, IssuerKeys::Jwks(_)));
        let fetch = match self.fetch {
            Some(f) => Some(f),
            None if needs_fetch => {
                let http: Arc<dyn JwksFetch> =
                    Arc::new(HttpJwksFetch::new().map_err(|e| JwtConfigError {
                        issuer: String::new(),
                        kind: JwtConfigErrorKind::HttpClient(e.to_string()),
                    })?);
                Some(http)
            }
            None => None,
        };
        Ok(Verifier {
            issuers: self.issuers,
            leeway_secs: self.leeway.as_secs(),
            jwks_refresh: self.jwks_refresh,
            jwks_min_refetch: self.jwks_min_refetch,
            fetch,
        })
    }
}

/// Internals for the `auth_token` fuzz target.
#[doc(hidden)]
pub mod fuzzing {
    use super::Issuer;

    /// Signs arbitrary header and payload bytes with `issuer`'s key, so a
    /// fuzzer can reach the claim checks behind a valid signature.
    pub fn sign_parts(issuer: &Issuer, header: &[u8], payload: &[u8]) -> String {
        issuer.sign_parts(header, payload)
    }
}

#[cfg(test)]
mod tests;
