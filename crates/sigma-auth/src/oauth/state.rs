//! The login-state cookie (DESIGN §4, issue #7): what the callback must
//! find again, bound to the browser that started the login.
//!
//! ```text
//!  /auth/<name>/login ──Set-Cookie: sigma_oauth=SEALED (Path=/auth/<name>/)──▶ browser
//!  /auth/<name>/callback?state=S ◀──Cookie: sigma_oauth=SEALED── browser
//!        open(SEALED) → {state == S, nonce, PKCE verifier, next, expiry}
//! ```
//!
//! The cookie is `base64url(nonce24 ‖ XChaCha20-Poly1305(key, json))` with
//! the provider name as associated data: the browser can neither read the
//! PKCE verifier nor change a byte (any change fails to open), and a cookie
//! of one provider does not open at another's callback. Sans-IO: the key,
//! the randomness and the clock are arguments.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use serde::{Deserialize, Serialize};

/// The state cookie's name (its path is `/auth/<name>/`).
pub const STATE_COOKIE: &str = "sigma_oauth";
/// How long a login may take at the provider, seconds.
pub const STATE_TTL_SECS: u64 = 600;
/// Longest sealed cookie value accepted, in characters.
pub const MAX_SEALED_LEN: usize = 4000;

/// What the login step remembers for the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` sent to the provider.
    #[serde(rename = "s")]
    pub state: String,
    /// The OIDC `nonce` (empty for GitHub).
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// Where to go after login (already a safe same-origin path).
    #[serde(rename = "x")]
    pub next: String,
    /// Expiry, unix seconds.
    #[serde(rename = "e")]
    pub expires: u64,
}

/// Why a state cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Not base64url, too short or too long.
    Malformed,
    /// Does not open under the key (tampered, other provider, other server).
    Forged,
    /// Past its expiry.
    Expired,
    /// Encryption failed while sealing, or the result would be longer
    /// than [`MAX_SEALED_LEN`].
    Seal,
}

/// Seals `state` for provider `name` with `key`, using `nonce` (24 fresh
/// random bytes).
pub fn seal(
    key: &[u8; 32],
    name: &str,
    state: &LoginState,
    nonce: [u8; 24],
) -> Result<String, StateError> {
    let plain = serde_json::to_vec(state).map_err(|_| StateError::Seal)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: &plain,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| StateError::Seal)?;
    let mut out = Vec::with_capacity(nonce.len().saturating_add(sealed.len()));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    let value = URL_SAFE_NO_PAD.encode(out);
    // Never hand out a cookie that `open` would refuse (or a browser drop).
    if value.len() > MAX_SEALED_LEN {
        return Err(StateError::Seal);
    }
    Ok(value)
}

/// Opens a sealed cookie of provider `name` at `now` (unix seconds).
pub fn open(key: &[u8; 32], name: &str, value: &str, now: u64) -> Result<LoginState, StateError> {
    if value.len() > MAX_SEALED_LEN {
        return Err(StateError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| StateError::Malformed)?;
    let (nonce, sealed) = raw.split_at_checked(24).ok_or(StateError::Malformed)?;
    let nonce: [u8; 24] = nonce.try_into().map_err(|_| StateError::Malformed)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let plain = cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: sealed,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| StateError::Forged)?;
    let state: LoginState = serde_json::from_slice(&plain).map_err(|_| StateError::Forged)?;
    if now >= state.expires {
        return Err(StateError::Expired);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LoginState {
        LoginState {
            state: "st".into(),
            nonce: "no".into(),
            verifier: "ve".into(),
            next: "/chat".into(),
            expires: 1000,
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let key = [7u8; 32];
        let v = seal(&key, "corp", &sample(), [1; 24]).unwrap();
        assert_eq!(open(&key, "corp", &v, 999).unwrap(), sample());
        assert_eq!(open(&key, "corp", &v, 1000), Err(StateError::Expired));
        assert_eq!(open(&key, "other", &v, 0), Err(StateError::Forged));
        assert_eq!(open(&[8; 32], "corp", &v, 0), Err(StateError::Forged));
        assert_eq!(open(&key, "corp", "", 0), Err(StateError::Malformed));
        assert_eq!(open(&key, "corp", "!!", 0), Err(StateError::Malformed));
        assert!(!v.contains("ve\""), "the verifier is not readable");
        let mut big = sample();
        big.next = "/".repeat(MAX_SEALED_LEN);
        assert_eq!(seal(&key, "corp", &big, [1; 24]), Err(StateError::Seal));
    }

    proptest! {
        /// Any change to a sealed cookie is refused.
        #[test]
        fn any_modified_cookie_is_rejected(pos in any::<prop::sample::Index>(), bit in 0u8..8, extra in any::<Option<u8>>()) {
            let key = [9u8; 32];
            let v = seal(&key, "corp", &sample(), [3; 24]).unwrap();
            let mut raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
            match extra {
                Some(b) => raw.push(b),
                None => {
                    let i = pos.index(raw.len());
                    raw[i] ^= 1 << bit;
                }
            }
            let modified = URL_SAFE_NO_PAD.encode(&raw);
            prop_assert!(open(&key, "corp", &modified, 0).is_err());
        }

        /// Arbitrary text never opens and never panics.
        #[test]
        fn arbitrary_text_is_rejected(s in ".{0,200}") {
            prop_assert!(open(&[9u8; 32], "corp", &s, 0).is_err());
        }
    }
}
