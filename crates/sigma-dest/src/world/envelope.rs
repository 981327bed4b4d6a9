//! The session socket's JSON envelopes and the initiate (DESIGN §5,
//! "Envelopes, exactly"), sans-IO.
//!
//! Every envelope is a JSON object with `"type"` and `"lamport"` (the
//! sender's Lamport clock), in the protocol style of every socket of sigma
//! (DESIGN §6): a client envelope may carry an `"id"` (a number, or a
//! string of at most [`MAX_ID_LEN`] bytes) that the server's answer to it
//! (`welcome`, `fork-cookie`, `fork-refused`, `disconnect`, `error`)
//! echoes; errors are `{"type":"error","code":CODE,"message":TEXT,"id"?}`.
//! The `id` is not signed and means nothing to sigma: it only lets a client
//! match answers. Client envelopes are parsed strictly: unknown fields, a
//! missing field or a field of the wrong type refuse the whole message.
//! Server envelopes are serialised here and nowhere else.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::WorldId;

/// The longest command name (`[world.<name>]`).
pub const MAX_COMMAND: usize = 64;

/// The largest Lamport stamp either side uses: 2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER` (sigma.js keeps its clock in a JS number).
/// A client envelope stamped higher is refused; the server never stamps
/// higher (its socket closes first, see [`super::session`]).
pub const MAX_LAMPORT: u64 = (1 << 53) - 1;

/// Longest `id` string echoed back, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A client envelope, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEnvelope {
    /// The client's Lamport clock when it sent the message.
    pub lamport: u64,
    /// The client's `id`, echoed on the answer (a number or a short
    /// string).
    pub id: Option<Value>,
    /// What it says.
    pub msg: ClientMsg,
}

/// The client envelopes of DESIGN §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// `{"type":"hello"}`: activates the session socket.
    Hello,
    /// `{"type":"fork","world":W,"command":C}`: asks for a fork cookie.
    Fork {
        /// The new world's public key.
        world: WorldId,
        /// The command to start.
        command: String,
    },
    /// `{"type":"world","world":W,"body":S,"sig":G}`: a signed world message.
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
    /// `{"type":"disconnect","world":W}`: ends one world.
    Disconnect {
        /// The world.
        world: WorldId,
    },
}

/// Why a client envelope was refused (sent back as `error` with the code
/// `bad_message`): what was wrong, and the envelope's `id` when it had a
/// valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    /// What was wrong.
    pub message: String,
    /// The `id` to echo.
    pub id: Option<Value>,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EnvelopeError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(rename = "type")]
    ty: String,
    lamport: u64,
    /// `Some(Value::Null)` for an explicit `null` (refused).
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    world: Option<String>,
    command: Option<String>,
    body: Option<String>,
    sig: Option<String>,
}

/// Just what is needed to answer an envelope that does not parse.
#[derive(Deserialize)]
struct Lenient {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(rename = "type")]
    ty: Option<Value>,
    t: Option<Value>,
}

/// A field that is present, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn bad(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError {
        message: msg.into(),
        id: None,
    }
}

/// The `id` of an envelope: absent, a number, or a string of at most
/// [`MAX_ID_LEN`] bytes.
fn valid_id(id: Option<Value>) -> Result<Option<Value>, EnvelopeError> {
    match id {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v)),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(Value::String(s))),
        Some(Value::String(_)) => Err(bad(format!("\"id\" is longer than {MAX_ID_LEN} bytes"))),
        Some(_) => Err(bad("\"id\" must be a string or a number")),
    }
}

/// The refusal of an envelope that does not parse as one: says so (an
/// old-style `"t"` is named), with the `id` if a valid one can be found.
fn unparsed(text: &str, e: &serde_json::Error) -> EnvelopeError {
    let lenient = serde_json::from_str::<Lenient>(text).ok();
    let message = match &lenient {
        Some(l) if l.ty.is_none() && l.t.is_some() => {
            "\"type\" is missing (the field is \"type\", not \"t\")".to_owned()
        }
        _ => format!("bad envelope: {e}"),
    };
    EnvelopeError {
        message,
        id: lenient.and_then(|l| valid_id(l.id).ok()).flatten(),
    }
}

fn world_of(world: Option<String>) -> Result<(String, WorldId), EnvelopeError> {
    let text = world.ok_or_else(|| bad("missing \"world\""))?;
    let id = WorldId::parse(&text)
        .ok_or_else(|| bad("\"world\" must be 32 bytes of unpadded base64url"))?;
    Ok((text, id))
}

/// Parses one client text message.
pub fn parse_client(text: &str) -> Result<ClientEnvelope, EnvelopeError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| unparsed(text, &e))?;
    let id = valid_id(raw.id.clone())?;
    with_id(parse_raw(raw, id.clone()), id)
}

/// Adds the envelope's `id` to a refusal.
fn with_id(
    r: Result<ClientEnvelope, EnvelopeError>,
    id: Option<Value>,
) -> Result<ClientEnvelope, EnvelopeError> {
    r.map_err(|mut e| {
        e.id = id;
        e
    })
}

fn parse_raw(raw: Raw, id: Option<Value>) -> Result<ClientEnvelope, EnvelopeError> {
    let only = |allowed: &[&str]| -> Result<(), EnvelopeError> {
        let present = [
            ("world", raw.world.is_some()),
            ("command", raw.command.is_some()),
            ("body", raw.body.is_some()),
            ("sig", raw.sig.is_some()),
        ];
        match present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
            Some((k, _)) => Err(bad(format!("unexpected \"{k}\" in {:?}", raw.ty))),
            None => Ok(()),
        }
    };
    let msg = match raw.ty.as_str() {
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
        id,
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
/// is sent, see [`ServerMsg::to_text`]). `id`: the `id` of the client
/// envelope this answers, if it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// `{"type":"welcome","user":U,"commands":[{"name":C,"code":PATH}],"id"?}`.
    Welcome {
        /// The socket's user.
        user: String,
        /// The commands the user may start.
        commands: Vec<CommandInfo>,
        /// The `hello`'s id.
        id: Option<Value>,
    },
    /// `{"type":"fork-cookie","world":W,"cookie":K,"id"?}`.
    ForkCookie {
        /// The world.
        world: WorldId,
        /// The sealed cookie, base64url.
        cookie: String,
        /// The `fork`'s id.
        id: Option<Value>,
    },
    /// `{"type":"fork-refused","world":W,"reason":R,"id"?}`.
    ForkRefused {
        /// The world.
        world: WorldId,
        /// Why: `unknown_command` (none such, or not one this user may
        /// start), `duplicate`, `bad_key`, `limit`, `rate`, `active`.
        reason: &'static str,
        /// The `fork`'s id.
        id: Option<Value>,
    },
    /// `{"type":"world","world":W,"body":S}`: a reply or push for one world.
    World {
        /// The world.
        world: WorldId,
        /// The body.
        body: String,
    },
    /// `{"type":"disconnect","world":W,"id"?}`: the world ended (the
    /// server's decision, or the answer to the client's `disconnect`).
    Disconnect {
        /// The world.
        world: WorldId,
        /// The client `disconnect`'s id.
        id: Option<Value>,
    },
    /// `{"type":"error","code":CODE,"message":M,"id"?}`: a refused client
    /// message.
    Error {
        /// What kind of refusal (codes in `docs/worlds.md`).
        code: &'static str,
        /// What was wrong, for people.
        message: String,
        /// The refused envelope's id.
        id: Option<Value>,
    },
}

impl ServerMsg {
    /// The JSON text of this envelope stamped with `lamport`.
    pub fn to_text(&self, lamport: u64) -> String {
        let (mut v, id) = match self {
            Self::Welcome { user, commands, id } => (
                json!({
                    "type": "welcome",
                    "lamport": lamport,
                    "user": user,
                    "commands": commands
                        .iter()
                        .map(|c| json!({"name": c.name, "code": c.code}))
                        .collect::<Vec<_>>(),
                }),
                id,
            ),
            Self::ForkCookie { world, cookie, id } => (
                json!({
                    "type": "fork-cookie", "lamport": lamport, "world": world.encode(), "cookie": cookie,
                }),
                id,
            ),
            Self::ForkRefused { world, reason, id } => (
                json!({
                    "type": "fork-refused", "lamport": lamport, "world": world.encode(), "reason": reason,
                }),
                id,
            ),
            Self::World { world, body } => (
                json!({
                    "type": "world", "lamport": lamport, "world": world.encode(), "body": body,
                }),
                &None,
            ),
            Self::Disconnect { world, id } => (
                json!({
                    "type": "disconnect", "lamport": lamport, "world": world.encode(),
                }),
                id,
            ),
            Self::Error { code, message, id } => (
                json!({
                    "type": "error", "lamport": lamport, "code": code, "message": message,
                }),
                id,
            ),
        };
        if let (Some(id), Some(fields)) = (id, v.as_object_mut()) {
            fields.insert("id".into(), id.clone());
        }
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
            parse_client(r#"{"type":"hello","lamport":1}"#).unwrap(),
            ClientEnvelope {
                lamport: 1,
                id: None,
                msg: ClientMsg::Hello
            }
        );
        let fork = parse_client(&format!(
            r#"{{"type":"fork","lamport":2,"world":"{W}","command":"echo"}}"#
        ))
        .unwrap();
        assert!(matches!(fork.msg, ClientMsg::Fork { ref command, .. } if command == "echo"));
        assert_eq!(
            parse_client(r#"{"type":"hello","lamport":9007199254740991}"#)
                .unwrap()
                .lamport,
            MAX_LAMPORT
        );
        for bad in [
            r#"{"type":"hello"}"#,
            r#"{"type":"hello","lamport":-1}"#,
            r#"{"type":"hello","lamport":9007199254740992}"#,
            r#"{"type":"hello","lamport":18446744073709551615}"#,
            r#"{"type":"hello","lamport":18446744073709551616}"#,
            r#"{"type":"hello","lamport":1,"extra":1}"#,
            r#"{"type":"hello","lamport":1,"body":"x"}"#,
            r#"{"type":"nope","lamport":1}"#,
            r#"{"type":"fork","lamport":1,"world":"AAAA","command":"echo"}"#,
            r#"{"type":"world","lamport":1,"world":"AAAA","body":"x","sig":"AA"}"#,
            r#"{"t":"hello","lamport":1}"#,
            r#"{"op":"hello","lamport":1}"#,
            r#"{"type":"hello","lamport":1,"id":null}"#,
            r#"{"type":"hello","lamport":1,"id":[1]}"#,
            "[]",
            "",
        ] {
            assert!(parse_client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_echoed_and_bounded() {
        let env = parse_client(r#"{"type":"hello","lamport":1,"id":"h"}"#).unwrap();
        assert_eq!(env.id, Some(json!("h")));
        let env = parse_client(r#"{"type":"hello","lamport":1,"id":7}"#).unwrap();
        assert_eq!(env.id, Some(json!(7)));
        let longest = "x".repeat(MAX_ID_LEN);
        let env = parse_client(&format!(
            r#"{{"type":"hello","lamport":1,"id":"{longest}"}}"#
        ));
        assert_eq!(env.unwrap().id, Some(json!(longest)));
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = parse_client(&format!(r#"{{"type":"hello","lamport":1,"id":"{long}"}}"#));
        assert_eq!(e.unwrap_err().id, None);
        // A refused envelope keeps its id, even one that does not parse.
        let e = parse_client(r#"{"type":"nope","lamport":1,"id":3}"#).unwrap_err();
        assert_eq!(e.id, Some(json!(3)));
        let e = parse_client(r#"{"type":"hello","id":4}"#).unwrap_err();
        assert_eq!(e.id, Some(json!(4)));
        // The old discriminator is named.
        let e = parse_client(r#"{"t":"hello","lamport":1,"id":5}"#).unwrap_err();
        assert!(
            e.message.contains("\"type\"") && e.message.contains("\"t\""),
            "{e}"
        );
        assert_eq!(e.id, Some(json!(5)));
    }

    #[test]
    fn signed_bytes_are_exact() {
        assert_eq!(signed_bytes("W", 12, "a\nb"), b"W\n12\na\nb");
    }

    #[test]
    fn server_envelopes_serialise() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerMsg::Error {
                code: "bad_message",
                message: "x".into(),
                id: Some(json!("a")),
            }
            .to_text(7),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"error","lamport":7,"code":"bad_message","message":"x","id":"a"})
        );
        let v: serde_json::Value = serde_json::from_str(
            &ServerMsg::Disconnect {
                world: WorldId([0; 32]),
                id: None,
            }
            .to_text(8),
        )
        .unwrap();
        assert_eq!(v, json!({"type":"disconnect","lamport":8,"world":W}));
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
