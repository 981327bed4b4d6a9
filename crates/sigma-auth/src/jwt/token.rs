//! The compact JWS form of a bearer token, parsed strictly and without
//! trusting any of it.
//!
//! `header.payload.signature`, each part unpadded base64url (RFC 7515 §7.1).
//! The length is bounded ([`MAX_TOKEN_BYTES`]) before a single byte is
//! decoded; the alphabet is checked before the split; base64 is canonical
//! (no padding, no stray trailing bits), so one token has one encoding and
//! a changed character always changes the bytes; the header's `alg: none`
//! is refused before the payload is even decoded; the payload is one JSON
//! object whose names are unique (a duplicated claim could be read one way
//! here and another way by a destination). Nothing here checks a signature
//! or a claim's value: that is the verifier's job, with the key the
//! configuration pins. Header members that point at keys (`jwk`, `jku`,
//! `x5u`, `x5c`) are never read, so a token cannot bring its own key.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{JwtAlgorithm, JwtError};

/// Longest accepted token, in bytes; longer ones are refused before any
/// decoding (a bearer token from sigma is about 300 bytes, an RS256 ID
/// token from a large provider under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest accepted `kid` header value, in bytes.
pub const MAX_KID_BYTES: usize = 256;

/// The header members sigma reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// `None` for an `alg` that sigma does not support (never `none`, which
    /// is refused while parsing).
    pub alg: Option<JwtAlgorithm>,
    pub kid: Option<String>,
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    pub header: Header,
    pub claims: ClaimSet,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Splits and decodes `token`.
pub(crate) fn parse(token: &[u8]) -> Result<Unverified<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong { len: token.len() });
    }
    if !token.iter().all(|&b| b == b'.' || is_base64url(b)) {
        return Err(JwtError::Malformed("bytes outside base64url"));
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header = parse_header(&decode(h, "header is not base64url")?)?;
    let claims = parse_claims(&decode(p, "payload is not base64url")?)?;
    let signature = decode(s, "signature is not base64url")?;
    // `h.len() + 1 + p.len()` <= token.len(): the first two parts and a dot.
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(JwtError::Malformed("not three dot-separated parts"))?;
    Ok(Unverified {
        header,
        claims,
        signing_input,
        signature,
    })
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1;
/// the scheme is case-insensitive), or `None` for any other value.
pub fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = authorization.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let sep = rest.iter().take_while(|&&b| b == b' ').count();
    if sep == 0 {
        return None;
    }
    let token = rest.get(sep..)?.trim_ascii_end();
    if token.is_empty() || token.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    Some(token)
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn decode(part: &[u8], what: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(what))
}

fn parse_header(json: &[u8]) -> Result<Header, JwtError> {
    #[derive(Deserialize)]
    struct Raw {
        alg: String,
        #[serde(default)]
        kid: Option<String>,
        #[serde(default)]
        crit: Option<IgnoredAny>,
    }
    let raw: Raw = serde_json::from_slice(json)
        .map_err(|_| JwtError::Malformed("header is not a JOSE header"))?;
    // RFC 8725 §3.1: never accept unsecured tokens, in any spelling.
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    // RFC 7515 §4.1.11: an extension we do not understand must be refused.
    if raw.crit.is_some() {
        return Err(JwtError::Malformed("crit header"));
    }
    if raw.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_BYTES) {
        return Err(JwtError::Malformed("kid too long"));
    }
    Ok(Header {
        alg: JwtAlgorithm::from_jose(&raw.alg),
        kid: raw.kid,
    })
}

fn parse_claims(json: &[u8]) -> Result<ClaimSet, JwtError> {
    serde_json::from_slice(json).map_err(|_| JwtError::Malformed("payload is not a JSON object"))
}

/// The payload: a JSON object with unique member names.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClaimSet(BTreeMap<String, Value>);

impl ClaimSet {
    /// A string claim; `InvalidClaim` if present with another type.
    pub fn string(&self, name: &str) -> Result<Option<&str>, JwtError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JwtError::InvalidClaim(name.to_owned())),
        }
    }

    /// A NumericDate claim (RFC 7519 §2), accepted as a non-negative
    /// integer only; `InvalidClaim` for fractions, negatives and other types.
    pub fn numeric_date(&self, name: &str) -> Result<Option<u64>, JwtError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| JwtError::InvalidClaim(name.to_owned())),
            Some(_) => Err(JwtError::InvalidClaim(name.to_owned())),
        }
    }

    /// The `groups` claim: the members that are strings and valid sigma
    /// group names (an identity provider's other groups cannot be named
    /// by a policy anyway), sorted, at most `MAX_GROUPS`. Absent or not
    /// an array: none.
    pub fn groups(&self) -> Vec<String> {
        match self.0.get("groups") {
            Some(Value::Array(items)) => {
                sigma_store::valid_groups(items.iter().filter_map(Value::as_str))
            }
            _ => Vec::new(),
        }
    }

    /// The `aud` claim as a list: a string is a list of one (RFC 7519
    /// §4.1.3). `InvalidClaim` for other types or non-string members.
    pub fn audiences(&self) -> Result<Option<Vec<&str>>, JwtError> {
        let invalid = || JwtError::InvalidClaim("aud".to_owned());
        match self.0.get("aud") {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.as_str()])),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(invalid))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid()),
        }
    }
}

impl<'de> Deserialize<'de> for ClaimSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Unique;
        impl<'de> Visitor<'de> for Unique {
            type Value = ClaimSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with unique member names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClaimSet, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.contains_key(&name) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    let value: Value = map.next_value()?;
                    out.insert(name, value);
                }
                Ok(ClaimSet(out))
            }
        }
        d.deserialize_map(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(payload),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    const H: &str = r#"{"alg":"EdDSA","kid":"k"}"#;
    const P: &str = r#"{"iss":"i","sub":"alice","exp":10}"#;

    #[test]
    fn parses_the_three_parts() {
        let t = token(H, P, &[1, 2, 3]);
        let u = parse(t.as_bytes()).unwrap();
        assert_eq!(u.header.alg, Some(JwtAlgorithm::EdDsa));
        assert_eq!(u.header.kid.as_deref(), Some("k"));
        assert_eq!(u.claims.string("sub").unwrap(), Some("alice"));
        assert_eq!(u.claims.numeric_date("exp").unwrap(), Some(10));
        assert_eq!(u.signature, vec![1, 2, 3]);
        let dot = t.rfind('.').unwrap();
        assert_eq!(u.signing_input, &t.as_bytes()[..dot]);
    }

    #[test]
    fn length_limit_at_and_past() {
        let at = "A".repeat(MAX_TOKEN_BYTES);
        let past = "A".repeat(MAX_TOKEN_BYTES + 1);
        // At the limit the token is looked at (and is not a JWS).
        assert_eq!(
            parse(at.as_bytes()).unwrap_err(),
            JwtError::Malformed("not three dot-separated parts")
        );
        assert_eq!(
            parse(past.as_bytes()).unwrap_err(),
            JwtError::TooLong {
                len: MAX_TOKEN_BYTES + 1
            }
        );
        // Even a well-formed token is refused past the limit.
        let big = token(H, &format!(r#"{{"p":"{at}"}}"#), &[1]);
        assert!(matches!(
            parse(big.as_bytes()),
            Err(JwtError::TooLong { .. })
        ));
    }

    #[test]
    fn alg_none_in_any_spelling() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64(P));
            assert_eq!(parse(t.as_bytes()).unwrap_err(), JwtError::AlgNone, "{alg}");
        }
    }

    #[test]
    fn malformed_shapes() {
        let good = token(H, P, &[1]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("a.b".into(), "two parts"),
            (format!("{good}.x"), "four parts"),
            (format!("{good}.x.y"), "five parts (JWE)"),
            (good.replace('.', "=."), "padding"),
            (format!(" {good}"), "leading space"),
            (format!("{}.{}.AQ", b64(H), b64("[1,2]")), "payload array"),
            (format!("{}.{}.AQ", b64(H), b64("null")), "payload null"),
            (
                format!("{}.{}.AQ", b64(H), b64(r#"{"a":1,"a":2}"#)),
                "duplicate claim",
            ),
            (
                format!("{}.{}.AQ", b64(H), b64(r#"{"a":1} x"#)),
                "trailing garbage",
            ),
            (format!("{}.{}.AQ", b64(r#"{"kid":"k"}"#), b64(P)), "no alg"),
            (
                format!("{}.{}.AQ", b64(r#"{"alg":1}"#), b64(P)),
                "alg not a string",
            ),
            (
                format!("{}.{}.AQ", b64(r#"{"alg":"EdDSA","alg":"HS256"}"#), b64(P)),
                "duplicate alg",
            ),
            (
                format!("{}.{}.AQ", b64(r#"{"alg":"EdDSA","crit":["exp"]}"#), b64(P)),
                "crit",
            ),
            (
                format!(
                    "{}.{}.AQ",
                    b64(&format!(
                        r#"{{"alg":"EdDSA","kid":"{}"}}"#,
                        "k".repeat(MAX_KID_BYTES + 1)
                    )),
                    b64(P)
                ),
                "kid too long",
            ),
            // "AR" decodes to one byte only with non-zero trailing bits.
            (format!("{}.{}.AR", b64(H), b64(P)), "non-canonical base64"),
            ("e30.e30.!".into(), "bang"),
        ];
        for (t, what) in cases {
            assert!(
                matches!(parse(t.as_bytes()), Err(JwtError::Malformed(_))),
                "{what}: {:?}",
                parse(t.as_bytes()).err()
            );
        }
        // At the kid limit it parses.
        let t = format!(
            "{}.{}.AQ",
            b64(&format!(
                r#"{{"alg":"EdDSA","kid":"{}"}}"#,
                "k".repeat(MAX_KID_BYTES)
            )),
            b64(P)
        );
        assert!(parse(t.as_bytes()).is_ok());
    }

    #[test]
    fn unknown_alg_is_not_an_error_here() {
        let t = token(r#"{"alg":"PS256"}"#, P, &[1]);
        assert_eq!(parse(t.as_bytes()).unwrap().header.alg, None);
    }

    #[test]
    fn claim_types() {
        let t = token(
            H,
            r#"{"exp":1.5,"nbf":-1,"iat":"3","aud":["a",1],"s":2,"big":18446744073709551615}"#,
            &[1],
        );
        let c = parse(t.as_bytes()).unwrap().claims;
        for n in ["exp", "nbf", "iat"] {
            assert_eq!(c.numeric_date(n), Err(JwtError::InvalidClaim(n.into())));
        }
        assert_eq!(c.numeric_date("big"), Ok(Some(u64::MAX)));
        assert_eq!(c.audiences(), Err(JwtError::InvalidClaim("aud".into())));
        assert_eq!(c.string("s"), Err(JwtError::InvalidClaim("s".into())));
        assert_eq!(c.string("missing"), Ok(None));
    }

    #[test]
    fn bearer_header_values() {
        assert_eq!(
            bearer_token(b"Bearer abc.def.ghi"),
            Some(&b"abc.def.ghi"[..])
        );
        assert_eq!(bearer_token(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER x"), Some(&b"x"[..]));
        for v in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearerabc",
            b"Basic abc",
            b"Bearer a b",
            b"Bearer\tabc",
            b"Bear",
        ] {
            assert_eq!(bearer_token(v), None, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
