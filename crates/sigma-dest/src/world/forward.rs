//! An initiate carried to the node that forked its world (a cluster,
//! docs/cluster.md): what one node sends over the [`sigma_store::Relay`]
//! and what the other answers.
//!
//! A world runs on the session socket that forked it, and the cookie
//! names that socket's node ([`super::cookie::node_of`]). When a worker's
//! `GET /world/<cmd>.js` lands on another node behind the load balancer,
//! that node checks what it can (the method, the user, the command, the
//! initiate's form and signature), then hands the request to the cookie's
//! node, which opens the cookie with its own minute keys and does the
//! rest exactly as for a local initiate: the binding, the socket, the
//! single use, the world limits. The answer is the status and error code
//! the local initiate would give; the asking node serves the code.
//!
//! The relay (Redis) is trusted like the store: the user name and the
//! binding come from the asking node's `A`.

use serde::{Deserialize, Serialize};

use super::{b64_decode, b64_encode, Binding};

/// The relay topic of initiates.
pub const TOPIC: &str = "world-initiate";

/// An initiate, as one node hands it to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The user `A` identified on the asking node.
    pub user: String,
    /// The request's binding (its session or bearer token, hashed), if any.
    pub binding: Option<Binding>,
    /// The command of the path.
    pub command: String,
    /// The initiate's bytes, as signed.
    pub initiate: Vec<u8>,
    /// The world key's signature over them.
    pub sig: [u8; 64],
}

#[derive(Serialize, Deserialize)]
struct Wire {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binding: Option<String>,
    command: String,
    initiate: String,
    sig: String,
}

impl Forwarded {
    /// The bytes sent.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            user: self.user.clone(),
            binding: self.binding.map(|b| b64_encode(&b)),
            command: self.command.clone(),
            initiate: b64_encode(&self.initiate),
            sig: b64_encode(&self.sig),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The bytes received; `None` unless they are a forwarded initiate.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let w: Wire = serde_json::from_slice(bytes).ok()?;
        let binding = match w.binding {
            Some(b) => Some(b64_decode(&b)?.try_into().ok()?),
            None => None,
        };
        Some(Self {
            user: w.user,
            binding,
            command: w.command,
            initiate: b64_decode(&w.initiate)?,
            sig: b64_decode(&w.sig)?.try_into().ok()?,
        })
    }
}

/// What the cookie's node answers: started, or the status and error code
/// of the refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// 200 when the world started.
    pub status: u16,
    /// The error code of a refusal (docs/worlds.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// The bytes sent.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The bytes received: `None` unless an outcome with a 200 or a
    /// 4xx/5xx status and, for a refusal, a code.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let o: Self = serde_json::from_slice(bytes).ok()?;
        let valid = match o.status {
            200 => o.error.is_none(),
            400..=599 => o
                .error
                .as_deref()
                .is_some_and(|e| !e.is_empty() && e.len() <= 64),
            _ => false,
        };
        valid.then_some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_forwarded_initiate_round_trips() {
        let f = Forwarded {
            user: "alice".into(),
            binding: Some([3; 32]),
            command: "echo".into(),
            initiate: br#"{"cookie":"x","world":"y","command":"echo"}"#.to_vec(),
            sig: [9; 64],
        };
        assert_eq!(Forwarded::decode(&f.encode()), Some(f.clone()));
        let unbound = Forwarded { binding: None, ..f };
        assert_eq!(Forwarded::decode(&unbound.encode()), Some(unbound));
        assert_eq!(Forwarded::decode(b"{}"), None);
        assert_eq!(
            Forwarded::decode(br#"{"user":"a","command":"c","initiate":"","sig":"AAAA"}"#),
            None,
            "a signature of the wrong length"
        );
    }

    #[test]
    fn outcomes_round_trip_and_odd_ones_are_refused() {
        let ok = Outcome {
            status: 200,
            error: None,
        };
        let no = Outcome {
            status: 409,
            error: Some("replayed".into()),
        };
        assert_eq!(Outcome::decode(&ok.encode()), Some(ok));
        assert_eq!(Outcome::decode(&no.encode()), Some(no));
        for odd in [
            &br#"{"status":302}"#[..],
            br#"{"status":409}"#,
            br#"{"status":200,"error":"x"}"#,
            br#"{"status":403,"error":""}"#,
            b"",
        ] {
            assert_eq!(
                Outcome::decode(odd),
                None,
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(junk in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Forwarded::decode(&junk);
            let _ = Outcome::decode(&junk);
        }
    }
}
