//! The session socket's JSON envelopes and the initiate (DESIGN §5,
//! "Envelopes, exactly"), sans-IO.
//!
//! Every envelope is a JSON object with `"t"` (its type) and `"lamport"`
//! (the sender's Lamport clock). Client envelopes are parsed strictly:
//! unknown fields, a missing field or a field of the wrong type refuse the
//! whole message. Server envelopes are serialised here and nowhere else.

use serde::Deserialize;
use serde_json::json;

use super::WorldId;

/// The longest command name (`[world.<name>]`).
pub const MAX_COMMAND: usize = 64;

/// The largest Lamport stamp either side uses: 2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER` (sigma.js keeps its clock in a JS number).
/// A client envelope stamped higher is refused; the server never stamps
/// higher (its socket closes first, see [`super::session`]).
pub const MAX_LAMPORT: u64 = (1 << 53) - 1;

/// A client envelope, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEnvelope {
    /// The client's Lamport clock when it sent the message.
    pub lamport: u64,
    /// What it says.
    pub msg: ClientMsg,
}

/// The client envelopes of DESIGN §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// `{"t":"hello"}`: activates the session socket.
    Hello,
    /// `{"t":"fork","world":W,"command":C}`: asks for a fork cookie.
    Fork {
        /// The new world's public key.
        world: WorldId,
        /// The command to start.
        command: String,
    },
    /// `{"t":"world","world":W,"body":S,"sig":G}`: a signed world message.
    World {
        /// The world (its public key) as written: the signature covers it.
        world_text: String,
        /// The world, decoded.
        world: WorldId,
        /// The body, any string.
        body: String,
        /// The Ed25519 signature (64 bytes).
        sig: [u8; 64],
    },
    /// `{"t":"disconnect","world":W}`: ends one world.
    Disconnect {
        /// The world.
        world: WorldId,
    },
}

/// Why a client envelope was refused (sent back as `error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError(pub String);

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvelopeError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    t: String,
    lamport: u64,
    world: Option<String>,
    command: Option<String>,
    body: Option<String>,
    sig: Option<String>,
}

fn bad(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError(msg.into())
}

fn world_of(world: Option<String>) -> Result<(String, WorldId), EnvelopeError> {
    let text = world.ok_or_else(|| bad("missing \"world\""))?;
    let id = WorldId::parse(&text)
        .ok_or_else(|| bad("\"world\" must be 32 bytes of unpadded base64url"))?;
    Ok((text, id))
}

/// Parses one client text message.
pub fn parse_client(text: &str) -> Result<ClientEnvelope, EnvelopeError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| bad(format!("bad envelope: {e}")))?;
    let only = |allowed: &[&str]| -> Result<(), EnvelopeError> {
        let present = [
            ("world", raw.world.is_some()),
            ("command", raw.command.is_some()),
            ("body", raw.body.is_some()),
            ("sig", raw.sig.is_some()),
        ];
        match present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
            Some((k, _)) => Err(bad(format!("unexpected \"{k}\" in {:?}", raw.t))),
            None => Ok(()),
        }
    };
    let msg = match raw.t.as_str() {
        "hello" => {
            only(&[])?;
            ClientMsg::Hello
        }
        "fork" => {
            only(&["world", "command"])?;
            let command = raw
                .command
                .clone()
                .ok_or_else(|| bad("missing \"command\""))?;
            if command.is_empty() || command.len() > MAX_COMMAND {
                return Err(bad("bad \"command\""));
            }
            let (_, world) = world_of(raw.world.clone())?;
            ClientMsg::Fork { world, command }
        }
        "world" => {
            only(&["world", "body", "sig"])?;
            let (world_text, world) = world_of(raw.world.clone())?;
            let body = raw.body.clone().ok_or_else(|| bad("missing \"body\""))?;
            let sig = raw
                .sig
                .as_deref()
                .and_then(super::b64_decode)
                .and_then(|s| <[u8; 64]>::try_from(s).ok())
                .ok_or_else(|| bad("\"sig\" must be 64 bytes of unpadded base64url"))?;
            ClientMsg::World {
                world_text,
                world,
                body,
                sig,
            }
        }
        "disconnect" => {
            only(&["world"])?;
            let (_, world) = world_of(raw.world.clone())?;
            ClientMsg::Disconnect { world }
        }
        other => return Err(bad(format!("unknown envelope type {other:?}"))),
    };
    if raw.lamport > MAX_LAMPORT {
        return Err(bad(format!(
            "\"lamport\" must be at most {MAX_LAMPORT} (2^53 - 1)"
        )));
    }
    Ok(ClientEnvelope {
        lamport: raw.lamport,
        msg,
    })
}

/// The bytes a world signs for one message: `W + "\n" + N + "\n" + body`
/// (DESIGN §5, step 5), with `W` as written in the envelope.
pub fn signed_bytes(world: &str, lamport: u64, body: &str) -> Vec<u8> {
    let n = lamport.to_string();
    let mut out = Vec::with_capacity(world.len() + n.len() + body.len() + 2);
    out.extend_from_slice(world.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(n.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body.as_bytes());
    out
}

/// One command a `welcome` offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandInfo {
    /// The command's name.
    pub name: String,
    /// Where its worker code is served (`/world/<name>.js`).
    pub code: String,
}

/// The server envelopes of DESIGN §5 (the Lamport stamp is added when one
/// is sent, see [`ServerMsg::to_text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// `{"t":"welcome","user":U,"commands":[{"name":C,"code":PATH}]}`.
    Welcome {
        /// The socket's user.
        user: String,
        /// The commands the user may start.
        commands: Vec<CommandInfo>,
    },
    /// `{"t":"fork-cookie","world":W,"cookie":K}`.
    ForkCookie {
        /// The world.
        world: WorldId,
        /// The sealed cookie, base64url.
        cookie: String,
    },
    /// `{"t":"fork-refused","world":W,"reason":R}`.
    ForkRefused {
        /// The world.
        world: WorldId,
        /// Why: `unknown_command` (none such, or not one this user may
        /// start), `duplicate`, `bad_key`, `limit`, `rate`.
        reason: &'static str,
    },
    /// `{"t":"world","world":W,"body":S}`: a reply or push for one world.
    World {
        /// The world.
        world: WorldId,
        /// The body.
        body: String,
    },
    /// `{"t":"disconnect","world":W}`: the server ended one world.
    Disconnect {
        /// The world.
        world: WorldId,
    },
    /// `{"t":"error","message":M}`: a refused client message.
    Error {
        /// What was wrong.
        message: String,
    },
}

impl ServerMsg {
    /// The JSON text of this envelope stamped with `lamport`.
    pub fn to_text(&self, lamport: u64) -> String {
        let v = match self {
            Self::Welcome { user, commands } => json!({
                "t": "welcome",
                "lamport": lamport,
                "user": user,
                "commands": commands
                    .iter()
                    .map(|c| json!({"name": c.name, "code": c.code}))
                    .collect::<Vec<_>>(),
            }),
            Self::ForkCookie { world, cookie } => json!({
                "t": "fork-cookie", "lamport": lamport, "world": world.encode(), "cookie": cookie,
            }),
            Self::ForkRefused { world, reason } => json!({
                "t": "fork-refused", "lamport": lamport, "world": world.encode(), "reason": reason,
            }),
            Self::World { world, body } => json!({
                "t": "world", "lamport": lamport, "world": world.encode(), "body": body,
            }),
            Self::Disconnect { world } => json!({
                "t": "disconnect", "lamport": lamport, "world": world.encode(),
            }),
            Self::Error { message } => json!({
                "t": "error", "lamport": lamport, "message": message,
            }),
        };
        v.to_string()
    }
}

/// The initiate (DESIGN §5, step 4): the JSON text
/// `{"cookie": B64URL, "world": B64URL, "command": NAME}` a world signs.
#[derive(Clone, PartialEq, Eq)]
pub struct Initiate {
    /// The sealed fork cookie.
    pub cookie: Vec<u8>,
    /// The world.
    pub world: WorldId,
    /// The command.
    pub command: String,
}

impl std::fmt::Debug for Initiate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the cookie's bytes: only its length.
        f.debug_struct("Initiate")
            .field("cookie", &format_args!("<{} bytes>", self.cookie.len()))
            .field("world", &self.world)
            .field("command", &self.command)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitiate {
    cookie: String,
    world: String,
    command: String,
}

/// Parses the initiate's bytes (already base64url-decoded from the query).
pub fn parse_initiate(bytes: &[u8]) -> Result<Initiate, EnvelopeError> {
    let raw: RawInitiate =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("bad initiate: {e}")))?;
    let cookie = super::b64_decode(&raw.cookie).ok_or_else(|| bad("bad initiate cookie"))?;
    let world = WorldId::parse(&raw.world).ok_or_else(|| bad("bad initiate world"))?;
    if raw.command.is_empty() || raw.command.len() > MAX_COMMAND {
        return Err(bad("bad initiate command"));
    }
    Ok(Initiate {
        cookie,
        world,
        command: raw.command,
    })
}

/// The query of `GET /world/<command>.js?initiate=…&sig=…`, decoded:
/// `(initiate bytes, signature)`; `None` when a parameter is missing,
/// repeated or not base64url of the right size (400).
pub fn parse_query(query: &[u8]) -> Option<(Vec<u8>, [u8; 64])> {
    let mut initiate = None;
    let mut sig = None;
    for (k, v) in form_urlencoded::parse(query) {
        let slot = match k.as_ref() {
            "initiate" => &mut initiate,
            "sig" => &mut sig,
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(super::b64_decode(&v)?);
    }
    let sig: [u8; 64] = sig?.try_into().ok()?;
    Some((initiate?, sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn client_envelopes_parse_strictly() {
        assert_eq!(
            parse_client(r#"{"t":"hello","lamport":1}"#).unwrap(),
            ClientEnvelope {
                lamport: 1,
                msg: ClientMsg::Hello
            }
        );
        let fork = parse_client(&format!(
            r#"{{"t":"fork","lamport":2,"world":"{W}","command":"echo"}}"#
        ))
        .unwrap();
        assert!(matches!(fork.msg, ClientMsg::Fork { ref command, .. } if command == "echo"));
        assert_eq!(
            parse_client(r#"{"t":"hello","lamport":9007199254740991}"#)
                .unwrap()
                .lamport,
            MAX_LAMPORT
        );
        for bad in [
            r#"{"t":"hello"}"#,
            r#"{"t":"hello","lamport":-1}"#,
            r#"{"t":"hello","lamport":9007199254740992}"#,
            r#"{"t":"hello","lamport":18446744073709551615}"#,
            r#"{"t":"hello","lamport":18446744073709551616}"#,
            r#"{"t":"hello","lamport":1,"extra":1}"#,
            r#"{"t":"hello","lamport":1,"body":"x"}"#,
            r#"{"t":"nope","lamport":1}"#,
            r#"{"t":"fork","lamport":1,"world":"AAAA","command":"echo"}"#,
            r#"{"t":"world","lamport":1,"world":"AAAA","body":"x","sig":"AA"}"#,
            "[]",
            "",
        ] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_bytes_are_exact() {
        assert_eq!(signed_bytes("W", 12, "a\nb"), b"W\n12\na\nb");
    }

    #[test]
    fn server_envelopes_serialise() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerMsg::Error {
                message: "x".into(),
            }
            .to_text(7),
        )
        .unwrap();
        assert_eq!(v, json!({"t":"error","lamport":7,"message":"x"}));
    }

    #[test]
    fn initiate_debug_hides_the_cookie() {
        let i = Initiate {
            cookie: vec![0xAB; 40],
            world: WorldId([1; 32]),
            command: "echo".into(),
        };
        let shown = format!("{i:?}");
        assert!(
            shown.contains("<40 bytes>") && shown.contains("echo"),
            "{shown}"
        );
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn query_parameters() {
        assert!(parse_query(b"initiate=e30&sig=").is_none());
        let sig = super::super::b64_encode(&[1u8; 64]);
        let (i, s) = parse_query(format!("initiate=e30&sig={sig}").as_bytes()).unwrap();
        assert_eq!(i, b"{}");
        assert_eq!(s, [1u8; 64]);
        assert!(parse_query(format!("initiate=e30&initiate=e30&sig={sig}").as_bytes()).is_none());
        assert!(parse_query(format!("sig={sig}").as_bytes()).is_none());
    }
}
