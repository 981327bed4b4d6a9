//! Verification keys for bearer JWTs, each pinned to exactly one algorithm.
//!
//! A [`VerifyKey`] is built once, at configuration time (a PEM file, a
//! shared-secret file, sigma's own Ed25519 key) or when a JWKS document is
//! installed, and is then only used to check signatures. Its algorithm is
//! fixed at construction: [`VerifyKey::verify`] never looks at the token's
//! `alg`, so an HS256 token can never be checked against an RSA, EC or
//! Ed25519 public key (algorithm confusion), whatever the header says.
//!
//! Every key is checked for shape and size here, before it is used: the
//! RustCrypto backend of `jsonwebtoken` would panic on an Ed25519 key shorter
//! than 32 bytes and silently fail on a malformed RSA or EC key, so neither
//! may reach it. This module reads no file and opens no socket.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

/// Shortest accepted HS256 secret (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Smallest accepted RSA modulus (bits).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus (bits); the `rsa` crate refuses larger ones.
pub const MAX_RSA_BITS: usize = 4096;

/// The algorithms a key can be pinned to (`algorithm` in `[[auth.jwt]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
}

impl JwtAlgorithm {
    /// The JOSE name (`alg` header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }

    /// The algorithm named by a JOSE `alg` value (exact, case-sensitive, as
    /// RFC 7515 requires), if it is one sigma supports.
    pub fn from_jose(alg: &str) -> Option<Self> {
        match alg {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            "HS256" => Some(Self::Hs256),
            _ => None,
        }
    }

    /// The JWK `kty` a key for this algorithm has.
    pub fn jwk_kty(self) -> &'static str {
        match self {
            Self::Rs256 => "RSA",
            Self::Es256 => "EC",
            Self::EdDsa => "OKP",
            Self::Hs256 => "oct",
        }
    }

    fn backend(self) -> Algorithm {
        match self {
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
            Self::Hs256 => Algorithm::HS256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key could not be loaded. `Display` never shows key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM text is not a public key of the pinned algorithm's type.
    BadPem {
        /// The pinned algorithm.
        alg: JwtAlgorithm,
    },
    /// An HS256 secret is shorter than [`MIN_HMAC_SECRET_BYTES`].
    WeakSecret {
        /// Its length in bytes.
        len: usize,
    },
    /// An HS256 secret file holds a PEM key: using a public key as an HMAC
    /// secret is exactly the algorithm-confusion attack.
    SecretIsPem,
    /// An RSA modulus outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    RsaSize {
        /// The modulus size in bits.
        bits: usize,
    },
    /// A JWK that does not describe a key for the pinned algorithm.
    BadJwk {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPem { alg } => write!(f, "not a PEM public key usable for {alg}"),
            Self::WeakSecret { len } => write!(
                f,
                "HS256 secret is {len} bytes, at least {MIN_HMAC_SECRET_BYTES} are required"
            ),
            Self::SecretIsPem => f.write_str(
                "HS256 secret file holds a PEM key; a public key must never be an HMAC secret",
            ),
            Self::RsaSize { bits } => write!(
                f,
                "RSA modulus of {bits} bits, {MIN_RSA_BITS}..={MAX_RSA_BITS} are accepted"
            ),
            Self::BadJwk { reason } => write!(f, "unusable JWK: {reason}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A key that checks signatures of exactly one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    alg: JwtAlgorithm,
    kid: Option<String>,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl VerifyKey {
    /// A public key from PEM text (`BEGIN PUBLIC KEY`; for RS256 also
    /// `BEGIN RSA PUBLIC KEY`). HS256 takes no PEM: use
    /// [`VerifyKey::hmac_secret`].
    pub fn from_pem(alg: JwtAlgorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let bad = KeyError::BadPem { alg };
        let key = match alg {
            JwtAlgorithm::Rs256 => {
                let key = DecodingKey::from_rsa_pem(pem).map_err(|_| bad.clone())?;
                let der = key.try_get_as_bytes().map_err(|_| bad.clone())?;
                let (n, _e) = (DEFAULT_PROVIDER
                    .key_utils
                    .rsa_pub_components_from_public_key)(der)
                .map_err(|_| bad)?;
                check_rsa_modulus(&n)?;
                key
            }
            JwtAlgorithm::Es256 => {
                let key = DecodingKey::from_ec_pem(pem).map_err(|_| bad.clone())?;
                let point = key.try_get_as_bytes().map_err(|_| bad.clone())?;
                // An uncompressed P-256 point; a P-384 key is 97 bytes.
                if point.len() != 65 || point.first() != Some(&0x04) {
                    return Err(bad);
                }
                key
            }
            JwtAlgorithm::EdDsa => {
                let key = DecodingKey::from_ed_pem(pem).map_err(|_| bad.clone())?;
                let raw = key.try_get_as_bytes().map_err(|_| bad.clone())?;
                let raw: [u8; 32] = raw.try_into().map_err(|_| bad.clone())?;
                ed25519_point(&raw).ok_or(bad)?;
                key
            }
            JwtAlgorithm::Hs256 => return Err(bad),
        };
        Ok(Self {
            alg,
            kid: None,
            key,
        })
    }

    /// An HS256 shared secret (raw bytes; a secret file's single trailing
    /// newline is the caller's to strip).
    pub fn hmac_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::WeakSecret { len: secret.len() });
        }
        if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Err(KeyError::SecretIsPem);
        }
        Ok(Self {
            alg: JwtAlgorithm::Hs256,
            kid: None,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A raw Ed25519 public key (sigma's own key).
    pub fn ed25519(public: &[u8; 32], kid: Option<String>) -> Result<Self, KeyError> {
        ed25519_point(public).ok_or(KeyError::BadJwk {
            reason: "not an Ed25519 point",
        })?;
        Ok(Self {
            alg: JwtAlgorithm::EdDsa,
            kid,
            key: DecodingKey::from_ed_der(public),
        })
    }

    /// sigma's own public key, derived from its seed (always a valid point:
    /// `ed25519-dalek` derived it).
    pub(crate) fn ed25519_derived(public: &[u8; 32], kid: String) -> Self {
        Self {
            alg: JwtAlgorithm::EdDsa,
            kid: Some(kid),
            key: DecodingKey::from_ed_der(public),
        }
    }

    /// A key from one JWK of a JWKS document, pinned to `alg`. Rejected
    /// unless its `kty` (and `crv`) fit `alg`, `use` is absent or `sig`, and
    /// `alg` is absent or equal. Secret (`oct`) keys are never taken from a
    /// JWKS document.
    pub fn from_jwk(alg: JwtAlgorithm, jwk: &Jwk) -> Result<Self, KeyError> {
        let bad = |reason| KeyError::BadJwk { reason };
        if jwk.kty != alg.jwk_kty() {
            return Err(bad("kty does not fit the pinned algorithm"));
        }
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err(bad("use is not sig"));
        }
        if jwk.alg.as_deref().is_some_and(|a| a != alg.as_str()) {
            return Err(bad("alg differs from the pinned algorithm"));
        }
        let field = |v: &Option<String>, name| -> Result<Vec<u8>, KeyError> {
            let v = v.as_deref().ok_or(bad(name))?;
            URL_SAFE_NO_PAD.decode(v).map_err(|_| bad(name))
        };
        let key = match alg {
            JwtAlgorithm::Rs256 => {
                let n = field(&jwk.n, "missing or bad n")?;
                let e = field(&jwk.e, "missing or bad e")?;
                check_rsa_modulus(&n)?;
                if e.is_empty() || e.len() > 8 {
                    return Err(bad("bad RSA exponent"));
                }
                DecodingKey::from_rsa_raw_components(&n, &e)
            }
            JwtAlgorithm::Es256 => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err(bad("crv is not P-256"));
                }
                let x = field(&jwk.x, "missing or bad x")?;
                let y = field(&jwk.y, "missing or bad y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("P-256 coordinates are not 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                DecodingKey::from_ec_der(&point)
            }
            JwtAlgorithm::EdDsa => {
                if jwk.crv.as_deref() != Some("Ed25519") {
                    return Err(bad("crv is not Ed25519"));
                }
                let x = field(&jwk.x, "missing or bad x")?;
                let x: [u8; 32] = x
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("Ed25519 key is not 32 bytes"))?;
                ed25519_point(&x).ok_or(bad("not an Ed25519 point"))?;
                DecodingKey::from_ed_der(&x)
            }
            JwtAlgorithm::Hs256 => return Err(bad("secret keys are not taken from JWKS")),
        };
        Ok(Self {
            alg,
            kid: jwk.kid.clone(),
            key,
        })
    }

    /// The pinned algorithm.
    pub fn alg(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The key id, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Checks `signature` over `signing_input` with the pinned algorithm.
    /// HMAC tags are compared in constant time by the `hmac` crate.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match (DEFAULT_PROVIDER.verifier_factory)(&self.alg.backend(), &self.key) {
            Ok(v) => v.verify(signing_input, &signature.to_vec()).is_ok(),
            Err(_) => false,
        }
    }
}

/// One key of a JWKS document (RFC 7517), only the members sigma reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA`, `EC`, `OKP`.
    pub kty: String,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Intended use (`sig`).
    #[serde(default, rename = "use")]
    pub key_use: Option<String>,
    /// Intended algorithm.
    #[serde(default)]
    pub alg: Option<String>,
    /// Curve (`P-256`, `Ed25519`).
    #[serde(default)]
    pub crv: Option<String>,
    /// RSA modulus.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(default)]
    pub e: Option<String>,
    /// EC x coordinate, or the Ed25519 public key.
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default)]
    pub y: Option<String>,
}

fn check_rsa_modulus(n: &[u8]) -> Result<(), KeyError> {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => n.get(i..).unwrap_or_default(),
        None => &[],
    };
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaSize { bits })
    }
}

fn ed25519_point(raw: &[u8; 32]) -> Option<()> {
    ed25519_dalek::VerifyingKey::from_bytes(raw)
        .ok()
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
            JwtAlgorithm::EdDsa,
            JwtAlgorithm::Hs256,
        ] {
            assert_eq!(JwtAlgorithm::from_jose(alg.as_str()), Some(alg));
            let json = serde_json::to_string(&alg).unwrap();
            assert_eq!(json, format!("\"{}\"", alg.as_str()));
            assert_eq!(serde_json::from_str::<JwtAlgorithm>(&json).unwrap(), alg);
        }
        for other in [
            "none", "None", "rs256", "HS512", "PS256", "ES384", "", "EDDSA",
        ] {
            assert_eq!(JwtAlgorithm::from_jose(other), None, "{other}");
        }
    }

    #[test]
    fn hmac_secret_limits() {
        assert_eq!(
            VerifyKey::hmac_secret(&[7; 31]).unwrap_err(),
            KeyError::WeakSecret { len: 31 }
        );
        assert!(VerifyKey::hmac_secret(&[7; 32]).is_ok());
        let pem = b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            VerifyKey::hmac_secret(pem).unwrap_err(),
            KeyError::SecretIsPem
        );
    }

    #[test]
    fn debug_redacts_the_key() {
        let key = VerifyKey::hmac_secret(b"correct horse battery staple 0123456789").unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        assert!(!dbg.contains("horse"), "{dbg}");
    }

    #[test]
    fn rsa_modulus_bits() {
        let mut n = vec![0u8; 256];
        assert_eq!(check_rsa_modulus(&n), Err(KeyError::RsaSize { bits: 0 }));
        n[0] = 0x80;
        assert_eq!(check_rsa_modulus(&n), Ok(()));
        n[0] = 0x01;
        assert_eq!(check_rsa_modulus(&n), Err(KeyError::RsaSize { bits: 2041 }));
        let mut big = vec![0u8; 513];
        big[1] = 0x80;
        assert_eq!(check_rsa_modulus(&big), Ok(()));
        big[0] = 1;
        assert_eq!(
            check_rsa_modulus(&big),
            Err(KeyError::RsaSize { bits: 4097 })
        );
    }

    #[test]
    fn jwk_must_fit_the_pinned_algorithm() {
        let x = URL_SAFE_NO_PAD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                .verifying_key()
                .to_bytes(),
        );
        let ok = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(x.clone()),
            kid: Some("k1".into()),
            ..Jwk::default()
        };
        let key = VerifyKey::from_jwk(JwtAlgorithm::EdDsa, &ok).unwrap();
        assert_eq!(key.kid(), Some("k1"));
        assert_eq!(key.alg(), JwtAlgorithm::EdDsa);
        // The same key offered for another algorithm.
        for alg in [
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
            JwtAlgorithm::Hs256,
        ] {
            assert!(VerifyKey::from_jwk(alg, &ok).is_err(), "{alg}");
        }
        let short = Jwk {
            x: Some(URL_SAFE_NO_PAD.encode([1u8; 31])),
            ..ok.clone()
        };
        assert!(VerifyKey::from_jwk(JwtAlgorithm::EdDsa, &short).is_err());
        let enc = Jwk {
            key_use: Some("enc".into()),
            ..ok.clone()
        };
        assert!(VerifyKey::from_jwk(JwtAlgorithm::EdDsa, &enc).is_err());
        let other_alg = Jwk {
            alg: Some("HS256".into()),
            ..ok.clone()
        };
        assert!(VerifyKey::from_jwk(JwtAlgorithm::EdDsa, &other_alg).is_err());
        let oct = Jwk {
            kty: "oct".into(),
            ..Jwk::default()
        };
        assert!(VerifyKey::from_jwk(JwtAlgorithm::Hs256, &oct).is_err());
    }
}
