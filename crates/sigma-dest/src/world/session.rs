//! One session socket's state machine (DESIGN §5, steps 2–6), sans-IO.
//!
//! [`Session`] takes the client's text messages, the activation deadline
//! and the worlds' replies, with the clock passed in, and answers with
//! [`Out`] actions: envelopes to send (already Lamport-stamped), bodies to
//! forward to a world's destination, worlds to end, a close. It owns no
//! socket, no timer and no key; the fork cookie is sealed by the caller's
//! `seal` function.
//!
//! The world limit, the fork rate and the rule that a world key is active
//! once on the whole server are not the socket's: the limits belong to the
//! user (over all of its login sessions, bearer tokens and sockets), the
//! key rule to the server. Each call that forks or starts or ends a world
//! is given a [`Budget`] over both (a [`super::budget::UserBudget`] alone
//! in tests, or the driver's [`super::budget::SocketBudget`]), and the
//! session keeps it exact: a world counts from its activation until it is
//! forgotten.
//!
//! World states: `Active → Disconnecting → Disconnected`. A world exists
//! only from its initiate ([`Session::activate_world`]) on, and is
//! forgotten once it is disconnected. An illegal transition — ending a
//! world twice, a `world` message or `disconnect` for a world that is not
//! active here (ending, ended, or never started on this socket) — is
//! refused (the client gets `error`), changes nothing, and is reported as
//! [`Out::Illegal`] for the driver to log (rate-limited: a client can
//! cause it at will).

use std::collections::HashMap;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde_json::Value;

use super::envelope::{
    self, ClientEnvelope, ClientMsg, CommandInfo, EnvelopeError, ServerMsg, MAX_LAMPORT,
};
use super::WorldId;

/// Close code when `hello` does not arrive in time.
pub const CLOSE_ACTIVATION_TIMEOUT: u16 = 4408;

/// Close code when the server's Lamport clock has no stamp left below
/// [`MAX_LAMPORT`] (only a client stamping near 2^53 - 1 gets there).
pub const CLOSE_CLOCK_EXHAUSTED: u16 = 1008;

/// The limits of one user (`[worlds]`), shared by all of the user's
/// login sessions, bearer tokens and session sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Active worlds at once, over all the user's sockets.
    pub max_worlds: usize,
    /// Forks per minute (token bucket, burst the same), over all the
    /// user's sockets.
    pub forks_per_minute: u32,
    /// Used fork cookies remembered for the user at most (see
    /// [`super::budget::UserBudget::mark_used`]).
    pub max_used: usize,
}

/// What a [`Session`] asks of its user's limits and of the server's set of
/// active worlds. Every socket of one user is given a budget over the same
/// [`super::budget::UserBudget`], so the limits hold for the user, not per
/// socket.
pub trait Budget {
    /// Whether `world` may become active now (changes nothing): not
    /// active anywhere on the server ([`ActivateError::Duplicate`] on this
    /// socket, [`ActivateError::ActiveElsewhere`] on another), and room
    /// for one more world ([`ActivateError::Limit`]).
    fn check_world(&self, world: &WorldId) -> Result<(), ActivateError>;
    /// Spends one fork token at `now_ms`; `false` (and nothing spent)
    /// when none is left.
    fn take_fork(&mut self, now_ms: u64) -> bool;
    /// Counts `world` active if [`Budget::check_world`] allows it: the
    /// check and the reservation in one step (so concurrent initiates
    /// cannot overshoot the limit nor start one key twice).
    fn add_world(&mut self, world: &WorldId) -> Result<(), ActivateError>;
    /// `world` is forgotten: counted no more, its key free again.
    fn remove_world(&mut self, world: &WorldId);
}

/// A world's state on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldState {
    /// Initiated: its messages are accepted and forwarded.
    Active,
    /// Ending: its destination endpoint is being dropped.
    Disconnecting,
    /// Ended (the entry is then forgotten).
    Disconnected,
}

/// What asked a world to change state (or, for a message, to be active).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldEvent {
    /// A client `world` message: needs `Active` (and keeps it).
    Message,
    /// A client `disconnect`: `Active → Disconnecting`.
    Disconnect,
    /// The server moving the world along ([`Session::transition`]).
    Move,
}

/// A refused state change: `from → to` is not an edge of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IllegalTransition {
    /// The world.
    pub world: WorldId,
    /// The world's state; `None`: no such world on this socket (ended
    /// and forgotten, or never started here).
    pub from: Option<WorldState>,
    /// The state asked for.
    pub to: WorldState,
    /// What asked for it.
    pub event: WorldEvent,
}

impl std::fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.from {
            Some(from) => write!(f, "illegal world transition {from:?} -> {:?}", self.to)?,
            None => write!(
                f,
                "illegal world transition (no such world) -> {:?}",
                self.to
            )?,
        }
        write!(f, " on {:?}", self.event)
    }
}

/// What the session asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Send this text on the session socket.
    Send(String),
    /// Forward `body` to the world's destination.
    Forward {
        /// The world.
        world: WorldId,
        /// The body (a text message to the destination).
        body: String,
    },
    /// Drop the world's destination endpoint.
    EndWorld(WorldId),
    /// Close the session socket.
    Close {
        /// The close code.
        code: u16,
        /// The reason.
        reason: &'static str,
    },
    /// An illegal transition was refused (nothing changed): log it.
    Illegal(IllegalTransition),
}

/// Why an initiate cannot activate a world on this socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateError {
    /// The world is already active (or ending) here: a replay (409).
    Duplicate,
    /// The world's key is active on another socket (of this user or
    /// another): a world is active once on the server (409).
    ActiveElsewhere,
    /// The user has its maximum of worlds (429).
    Limit,
    /// The socket is not activated or is closing.
    NotActive,
}

struct World {
    state: WorldState,
    key: VerifyingKey,
    /// The last lamport accepted from the client for this world.
    last: Option<u64>,
}

/// One session socket.
pub struct Session {
    user: String,
    /// The commands this user may start (offered in `welcome`, the only
    /// ones `fork` accepts).
    commands: Vec<CommandInfo>,
    activated: bool,
    closed: bool,
    lamport: u64,
    /// This socket's worlds; each is counted in the user's
    /// [`Budget`] while it is here.
    worlds: HashMap<WorldId, World>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("activated", &self.activated)
            .field("lamport", &self.lamport)
            .field("worlds", &self.worlds.len())
            .finish()
    }
}

impl Session {
    /// A socket of `user`, who may start `commands`, waiting for `hello`.
    pub fn new(user: String, commands: Vec<CommandInfo>) -> Self {
        Self {
            user,
            commands,
            activated: false,
            closed: false,
            lamport: 0,
            worlds: HashMap::new(),
        }
    }

    /// The server's Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// True once `hello` arrived.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The state of `world`, if it exists.
    pub fn state(&self, world: &WorldId) -> Option<WorldState> {
        self.worlds.get(world).map(|w| w.state)
    }

    /// Active worlds.
    pub fn active_worlds(&self) -> impl Iterator<Item = &WorldId> {
        self.worlds
            .iter()
            .filter(|(_, w)| w.state == WorldState::Active)
            .map(|(id, _)| id)
    }

    /// Stamps `msg` with the next Lamport time (send: +1). Stamps never
    /// exceed [`MAX_LAMPORT`]: when the next one would, the socket closes
    /// instead ([`CLOSE_CLOCK_EXHAUSTED`]) and says nothing more.
    fn send(&mut self, msg: ServerMsg) -> Out {
        let next = self.lamport.saturating_add(1);
        if next > MAX_LAMPORT {
            self.closed = true;
            return Out::Close {
                code: CLOSE_CLOCK_EXHAUSTED,
                reason: "lamport clock exhausted",
            };
        }
        self.lamport = next;
        Out::Send(msg.to_text(next))
    }

    /// `error` with `code` (one of `docs/worlds.md`), answering the
    /// envelope whose id is `id`.
    fn error(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        id: Option<Value>,
    ) -> Vec<Out> {
        let message = message.into();
        vec![self.send(ServerMsg::Error { code, message, id })]
    }

    /// Receive: `max(local, r) + 1`. `r` is at most [`MAX_LAMPORT`] (the
    /// envelope parser refuses more), so this is at most one above it,
    /// and the next [`Session::send`] closes.
    fn receive(&mut self, r: u64) {
        self.lamport = self.lamport.max(r).saturating_add(1);
    }

    /// The activation deadline passed: close with 4408 unless `hello`
    /// arrived.
    pub fn activation_deadline(&mut self) -> Vec<Out> {
        if self.activated || self.closed {
            return Vec::new();
        }
        self.closed = true;
        vec![Out::Close {
            code: CLOSE_ACTIVATION_TIMEOUT,
            reason: "no hello in time",
        }]
    }

    /// A binary message: the session socket speaks JSON text only.
    pub fn on_binary(&mut self) -> Vec<Out> {
        self.error(
            "bad_message",
            "the session socket takes JSON text messages",
            None,
        )
    }

    /// One client text message at `now_ms`. `budget` is the user's and
    /// the server's (a fork asks it for room and a token, a `disconnect`
    /// gives the world back); `seal` makes the fork cookie (base64url)
    /// for a world and command, or `None` when it cannot.
    pub fn on_text(
        &mut self,
        text: &str,
        now_ms: u64,
        budget: &mut dyn Budget,
        seal: &mut dyn FnMut(&WorldId, &str) -> Option<String>,
    ) -> Vec<Out> {
        let mut batch = self.prepare(&[text]);
        match batch.pop() {
            Some(one) => self.on_prepared(one, now_ms, budget, seal),
            None => Vec::new(),
        }
    }

    /// Client text messages that arrived together (one read), parsed, with
    /// the signatures of their world messages for active worlds verified
    /// as one batch ([`verify_together`]). Each is then handled in order
    /// with [`Session::on_prepared`], exactly as [`Session::on_text`] would
    /// (the driver carries out each one's actions before the next, so
    /// every envelope leaves in Lamport order).
    pub fn prepare(&self, texts: &[&str]) -> Vec<Prepared> {
        let envs: Vec<_> = texts.iter().map(|t| envelope::parse_client(t)).collect();
        let verdicts = verify_together(&self.worlds, &envs);
        envs.into_iter()
            .zip(verdicts)
            .map(|(env, verified)| Prepared { env, verified })
            .collect()
    }

    /// One message of a [`Session::prepare`]d batch.
    pub fn on_prepared(
        &mut self,
        prepared: Prepared,
        now_ms: u64,
        budget: &mut dyn Budget,
        seal: &mut dyn FnMut(&WorldId, &str) -> Option<String>,
    ) -> Vec<Out> {
        if self.closed {
            return Vec::new();
        }
        let Prepared { env, verified } = prepared;
        let env = match env {
            Ok(e) => e,
            Err(e) => return self.error("bad_message", e.message, e.id),
        };
        let id = env.id;
        if !self.activated && env.msg != ClientMsg::Hello {
            return self.error("not_activated", "send hello first", id);
        }
        match env.msg {
            ClientMsg::Hello => {
                if self.activated {
                    return self.error("already_activated", "already activated", id);
                }
                self.activated = true;
                self.receive(env.lamport);
                let user = self.user.clone();
                let commands = self.commands.clone();
                vec![self.send(ServerMsg::Welcome { user, commands, id })]
            }
            ClientMsg::Fork { world, command } => {
                self.receive(env.lamport);
                // A command this user may not start is not in their
                // `welcome` either: refused as unknown.
                let reason = if !self.commands.iter().any(|c| c.name == command) {
                    Some("unknown_command")
                } else if self.worlds.contains_key(&world) {
                    Some("duplicate")
                } else if WorldKey::new(world).is_none() {
                    Some("bad_key")
                } else if let Err(e) = budget.check_world(&world) {
                    Some(match e {
                        ActivateError::Limit => "limit",
                        ActivateError::ActiveElsewhere => "active",
                        ActivateError::Duplicate | ActivateError::NotActive => "duplicate",
                    })
                } else if !budget.take_fork(now_ms) {
                    Some("rate")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return vec![self.send(ServerMsg::ForkRefused { world, reason, id })];
                }
                match seal(&world, &command) {
                    Some(cookie) => vec![self.send(ServerMsg::ForkCookie { world, cookie, id })],
                    None => self.error("unavailable", "cannot make a cookie now", id),
                }
            }
            ClientMsg::World {
                world_text,
                world,
                body,
                sig,
            } => {
                let from = self.state(&world);
                if from != Some(WorldState::Active) {
                    return self.refuse_event(
                        world,
                        from,
                        WorldState::Active,
                        WorldEvent::Message,
                        id,
                    );
                }
                let Some(w) = self.worlds.get_mut(&world) else {
                    return self.error("unknown_world", format!("unknown world {world}"), id);
                };
                let good = verified.unwrap_or_else(|| {
                    let signed = envelope::signed_bytes(&world_text, env.lamport, &body);
                    // RFC 8032 verification (canonical `s`); the key itself
                    // was checked once (a point, not of small order), so
                    // the strict variant's per-message decompression of R
                    // buys nothing.
                    w.key.verify(&signed, &Signature::from_bytes(&sig)).is_ok()
                });
                if !good {
                    return self.error(
                        "bad_signature",
                        format!("bad signature for world {world}"),
                        id,
                    );
                }
                if w.last.is_some_and(|last| env.lamport <= last) {
                    return self.error(
                        "replayed",
                        format!("replayed lamport for world {world}"),
                        id,
                    );
                }
                w.last = Some(env.lamport);
                self.receive(env.lamport);
                vec![Out::Forward { world, body }]
            }
            ClientMsg::Disconnect { world } => {
                let from = self.state(&world);
                if from != Some(WorldState::Active) {
                    return self.refuse_event(
                        world,
                        from,
                        WorldState::Disconnecting,
                        WorldEvent::Disconnect,
                        id,
                    );
                }
                self.receive(env.lamport);
                self.end_world_answering(world, budget, id)
            }
        }
    }

    /// A client message asked `world` (in state `from`) for `to`, which is
    /// not an edge: [`Out::Illegal`] to log, then `error` to the client,
    /// and no change. The clock does not take the message's stamp either.
    fn refuse_event(
        &mut self,
        world: WorldId,
        from: Option<WorldState>,
        to: WorldState,
        event: WorldEvent,
        id: Option<Value>,
    ) -> Vec<Out> {
        let (code, message) = match from {
            None => ("unknown_world", format!("unknown world {world}")),
            Some(_) => ("world_not_active", format!("world {world} is not active")),
        };
        let illegal = Out::Illegal(IllegalTransition {
            world,
            from,
            to,
            event,
        });
        let mut out = vec![illegal];
        out.extend(self.error(code, message, id));
        out
    }

    /// Ends an active world (client `disconnect`, or the server's reasons):
    /// `Active → Disconnecting`, its endpoint dropped, `disconnect` sent,
    /// `→ Disconnected`, forgotten. For a world that is not active (ending
    /// it twice), only [`Out::Illegal`]. The world is given back to
    /// `budget` when it is forgotten.
    pub fn end_world(&mut self, world: WorldId, budget: &mut dyn Budget) -> Vec<Out> {
        self.end_world_answering(world, budget, None)
    }

    /// [`Session::end_world`], the `disconnect` sent carrying `id` (the
    /// client `disconnect` it answers).
    fn end_world_answering(
        &mut self,
        world: WorldId,
        budget: &mut dyn Budget,
        id: Option<Value>,
    ) -> Vec<Out> {
        if let Err(e) = self.transition(&world, WorldState::Disconnecting) {
            return vec![Out::Illegal(e)];
        }
        let mut out = vec![Out::EndWorld(world)];
        if !self.closed {
            out.push(self.send(ServerMsg::Disconnect { world, id }));
        }
        match self.transition(&world, WorldState::Disconnected) {
            Ok(()) => {
                if self.worlds.remove(&world).is_some() {
                    budget.remove_world(&world);
                }
            }
            Err(e) => out.push(Out::Illegal(e)),
        }
        out
    }

    /// The socket is closing: every world ends (no envelopes are sent)
    /// and is given back to `budget`.
    pub fn close(&mut self, budget: &mut dyn Budget) -> Vec<Out> {
        self.closed = true;
        let worlds: Vec<WorldId> = self.worlds.keys().copied().collect();
        worlds
            .into_iter()
            .flat_map(|w| self.end_world(w, budget))
            .collect()
    }

    /// Whether [`Session::activate_world`] would accept `world` now with
    /// `budget` (changes nothing): lets the driver refuse before it opens
    /// anything. To be sure the answer still holds at the activation, the
    /// driver keeps the budget to itself in between (holds its lock).
    pub fn can_activate(&self, world: &WorldId, budget: &dyn Budget) -> Result<(), ActivateError> {
        self.can_take(world)?;
        budget.check_world(world)
    }

    /// The initiate for `world` checked out: the world becomes active,
    /// counted in `budget` (checked and counted in one step, so the limit
    /// holds however many initiates race). Its key was checked when the
    /// [`WorldKey`] was made, so a weak key cannot get here.
    pub fn activate_world(
        &mut self,
        world: WorldKey,
        budget: &mut dyn Budget,
    ) -> Result<(), ActivateError> {
        let WorldKey { id: world, key } = world;
        self.can_take(&world)?;
        budget.add_world(&world)?;
        self.worlds.insert(
            world,
            World {
                state: WorldState::Active,
                key,
                last: None,
            },
        );
        Ok(())
    }

    /// Undoes [`Session::activate_world`] for a world that never ran (its
    /// destination opened no endpoint): forgotten and given back to
    /// `budget`, with no envelope (the client was told nothing yet).
    pub fn forget_world(&mut self, world: &WorldId, budget: &mut dyn Budget) {
        if self.worlds.remove(world).is_some() {
            budget.remove_world(world);
        }
    }

    /// The socket's own checks for a new world: activated, not closing,
    /// and `world` not here yet.
    fn can_take(&self, world: &WorldId) -> Result<(), ActivateError> {
        if !self.activated || self.closed {
            return Err(ActivateError::NotActive);
        }
        if self.worlds.contains_key(world) {
            return Err(ActivateError::Duplicate);
        }
        Ok(())
    }

    /// A reply or push for `world` from its destination: the envelope to
    /// send, if the world is active.
    pub fn world_reply(&mut self, world: WorldId, body: String) -> Option<Out> {
        if self.closed || self.state(&world) != Some(WorldState::Active) {
            return None;
        }
        Some(self.send(ServerMsg::World { world, body }))
    }

    /// Moves `world` to `to` if that is an edge of the state machine
    /// (`Active → Disconnecting → Disconnected`); otherwise refuses and
    /// changes nothing (the caller reports it, [`Out::Illegal`]).
    pub fn transition(&mut self, world: &WorldId, to: WorldState) -> Result<(), IllegalTransition> {
        let from = self.state(world);
        let legal = matches!(
            (from, to),
            (Some(WorldState::Active), WorldState::Disconnecting)
                | (Some(WorldState::Disconnecting), WorldState::Disconnected)
        );
        if !legal {
            return Err(IllegalTransition {
                world: *world,
                from,
                to,
                event: WorldEvent::Move,
            });
        }
        if let Some(w) = self.worlds.get_mut(world) {
            w.state = to;
        }
        Ok(())
    }
}

/// A world's id with its public key, checked once: a valid Ed25519 point
/// that is not of small order (a weak key would let signatures verify for
/// any message). The only way to activate a world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorldKey {
    id: WorldId,
    key: VerifyingKey,
}

impl WorldKey {
    /// The key of `world`, unless it is not a point or is weak.
    pub fn new(world: WorldId) -> Option<Self> {
        let key = VerifyingKey::from_bytes(&world.0)
            .ok()
            .filter(|k| !k.is_weak())?;
        Some(Self { id: world, key })
    }

    /// The world's id.
    pub fn id(&self) -> WorldId {
        self.id
    }

    /// The verifying key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// A parsed client message and, when it was checked in a batch, its
/// signature's verdict.
#[derive(Debug)]
pub struct Prepared {
    env: Result<ClientEnvelope, EnvelopeError>,
    verified: Option<bool>,
}

/// The signature verdicts of the world messages in `envs` that are
/// addressed to an active world, checked together: one Ed25519 batch
/// verification (`ed25519_dalek::verify_batch`, about twice as fast per
/// signature as one by one) when there are two or more; if the batch
/// fails, each is checked alone, so one bad signature refuses only its own
/// message. `None` where nothing was checked (that message is verified,
/// or refused, on its own when its turn comes).
///
/// Exact: the verdict depends only on the message, its signature and the
/// world's key (the world id), never on what comes before it. The one
/// difference from the single check is the cofactored batch equation,
/// which also accepts a signature whose `R` carries a small-order
/// component; only the holder of the world's signing key can make one,
/// and it concerns that world's own messages.
fn verify_together(
    worlds: &HashMap<WorldId, World>,
    envs: &[Result<ClientEnvelope, EnvelopeError>],
) -> Vec<Option<bool>> {
    let mut verdicts = vec![None; envs.len()];
    let mut slots = Vec::new();
    let mut signed = Vec::new();
    let mut sigs = Vec::new();
    let mut keys = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        let Ok(ClientEnvelope {
            lamport,
            msg:
                ClientMsg::World {
                    world_text,
                    world,
                    body,
                    sig,
                },
            ..
        }) = env
        else {
            continue;
        };
        let Some(w) = worlds.get(world).filter(|w| w.state == WorldState::Active) else {
            continue;
        };
        slots.push(i);
        signed.push(envelope::signed_bytes(world_text, *lamport, body));
        sigs.push(Signature::from_bytes(sig));
        keys.push(w.key);
    }
    if slots.len() < 2 {
        return verdicts;
    }
    let messages: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
    let all = ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok();
    for (((i, m), sig), key) in slots.into_iter().zip(messages).zip(&sigs).zip(&keys) {
        if let Some(v) = verdicts.get_mut(i) {
            *v = Some(all || key.verify(m, sig).is_ok());
        }
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::super::budget::UserBudget;
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn commands() -> Vec<CommandInfo> {
        vec![CommandInfo {
            name: "echo".into(),
            code: "/world/echo.js".into(),
        }]
    }

    const LIMITS: Limits = Limits {
        max_worlds: 2,
        forks_per_minute: 3,
        max_used: 16,
    };

    /// A socket of alice and her budget.
    fn session() -> (Session, UserBudget) {
        (
            Session::new("alice".into(), commands()),
            UserBudget::new(LIMITS, 0),
        )
    }

    /// The first envelope sent (past any [`Out::Illegal`] report).
    fn text(out: &[Out]) -> serde_json::Value {
        match out.iter().find(|o| !matches!(o, Out::Illegal(_))) {
            Some(Out::Send(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn wid(k: &SigningKey) -> WorldId {
        WorldId(k.verifying_key().to_bytes())
    }

    fn wk(k: &SigningKey) -> WorldKey {
        WorldKey::new(wid(k)).unwrap()
    }

    fn feed(s: &mut Session, b: &mut dyn Budget, msg: serde_json::Value, now: u64) -> Vec<Out> {
        s.on_text(&msg.to_string(), now, b, &mut |_, _| Some("cookie".into()))
    }

    fn hello(s: &mut Session, b: &mut dyn Budget) {
        let out = feed(s, b, serde_json::json!({"type":"hello","lamport":5}), 0);
        let v = text(&out);
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["lamport"], 7, "receive 5 -> 6, send -> 7");
        assert_eq!(v["commands"][0]["code"], "/world/echo.js");
    }

    fn signed(k: &SigningKey, lamport: u64, body: &str) -> serde_json::Value {
        let w = wid(k).encode();
        let sig = k.sign(&envelope::signed_bytes(&w, lamport, body));
        serde_json::json!({"type":"world","world":w,"lamport":lamport,"body":body,
            "sig": super::super::b64_encode(&sig.to_bytes())})
    }

    #[test]
    fn answers_echo_the_id_and_errors_have_codes() {
        use serde_json::json;
        let (mut s, mut b) = session();
        let err = |out: &[Out]| {
            let v = text(out);
            assert_eq!(v["type"], "error", "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            (v["code"].as_str().unwrap().to_owned(), v.get("id").cloned())
        };
        let e = |code: &str, id: Option<Value>| (code.to_owned(), id);
        let out = feed(&mut s, &mut b, json!({"type":"fork","lamport":1,"id":1}), 0);
        assert_eq!(err(&out), e("bad_message", Some(json!(1))));
        let k = key(1);
        let fork =
            json!({"type":"fork","lamport":1,"world":wid(&k).encode(),"command":"echo","id":"f"});
        let out = feed(&mut s, &mut b, fork.clone(), 0);
        assert_eq!(err(&out), e("not_activated", Some(json!("f"))));
        let out = feed(&mut s, &mut b, json!({"t":"hello","lamport":1,"id":2}), 0);
        assert_eq!(err(&out), e("bad_message", Some(json!(2))));
        let out = feed(
            &mut s,
            &mut b,
            json!({"type":"hello","lamport":1,"id":3}),
            0,
        );
        let v = text(&out);
        assert_eq!((&v["type"], &v["id"]), (&json!("welcome"), &json!(3)));
        let out = feed(&mut s, &mut b, json!({"type":"hello","lamport":1}), 0);
        assert_eq!(err(&out), e("already_activated", None));
        let v = text(&feed(&mut s, &mut b, fork.clone(), 0));
        assert_eq!((&v["type"], &v["id"]), (&json!("fork-cookie"), &json!("f")));
        let mut unknown = fork;
        unknown["command"] = json!("nope");
        let v = text(&feed(&mut s, &mut b, unknown, 0));
        assert_eq!(
            (&v["type"], &v["reason"], &v["id"]),
            (
                &json!("fork-refused"),
                &json!("unknown_command"),
                &json!("f")
            )
        );
        let mut msg = signed(&k, 10, "x");
        msg["id"] = json!(4);
        assert_eq!(
            err(&feed(&mut s, &mut b, msg, 0)),
            e("unknown_world", Some(json!(4)))
        );
        s.activate_world(wk(&k), &mut b).unwrap();
        let mut msg = signed(&k, 10, "x");
        msg["body"] = json!("y");
        msg["id"] = json!(5);
        assert_eq!(
            err(&feed(&mut s, &mut b, msg, 0)),
            e("bad_signature", Some(json!(5)))
        );
        // The id is not signed: a world message with one is forwarded.
        let mut msg = signed(&k, 10, "x");
        msg["id"] = json!(6);
        let out = feed(&mut s, &mut b, msg.clone(), 0);
        assert!(matches!(&out[..], [Out::Forward { .. }]), "{out:?}");
        assert_eq!(
            err(&feed(&mut s, &mut b, msg, 0)),
            e("replayed", Some(json!(6)))
        );
        let other = wid(&key(2)).encode();
        let out = feed(
            &mut s,
            &mut b,
            json!({"type":"disconnect","lamport":20,"world":other,"id":7}),
            0,
        );
        assert_eq!(err(&out), e("unknown_world", Some(json!(7))));
        let w = wid(&k).encode();
        let out = feed(
            &mut s,
            &mut b,
            json!({"type":"disconnect","lamport":21,"world":w,"id":8}),
            0,
        );
        let sent: Vec<Value> = out
            .iter()
            .filter_map(|o| match o {
                Out::Send(t) => serde_json::from_str(t).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "{out:?}");
        assert_eq!(
            (&sent[0]["type"], &sent[0]["id"]),
            (&json!("disconnect"), &json!(8))
        );
        assert_eq!(err(&s.on_binary()), e("bad_message", None));
    }

    #[test]
    fn activation_deadline_closes_4408_unless_hello() {
        let (mut s, _) = session();
        assert_eq!(
            s.activation_deadline(),
            vec![Out::Close {
                code: 4408,
                reason: "no hello in time"
            }]
        );
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        assert!(s.activation_deadline().is_empty());
    }

    #[test]
    fn messages_before_hello_are_refused() {
        let (mut s, mut b) = session();
        let k = key(1);
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"fork","lamport":1,"world":wid(&k).encode(),"command":"echo"}),
            0,
        );
        assert_eq!(text(&out)["type"], "error");
    }

    #[test]
    fn fork_checks_command_duplicate_limit_and_rate() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        let fork = |s: &mut Session, b: &mut UserBudget, k: &SigningKey, cmd: &str, now| {
            text(&feed(
                s,
                b,
                serde_json::json!({"type":"fork","lamport":1,"world":wid(k).encode(),"command":cmd}),
                now,
            ))
        };
        assert_eq!(
            fork(&mut s, &mut b, &key(1), "nope", 0)["reason"],
            "unknown_command"
        );
        assert_eq!(
            fork(&mut s, &mut b, &key(1), "echo", 0)["type"],
            "fork-cookie"
        );
        s.activate_world(wk(&key(1)), &mut b).unwrap();
        assert_eq!(
            fork(&mut s, &mut b, &key(1), "echo", 0)["reason"],
            "duplicate"
        );
        assert_eq!(
            fork(&mut s, &mut b, &key(2), "echo", 0)["type"],
            "fork-cookie"
        );
        s.activate_world(wk(&key(2)), &mut b).unwrap();
        assert_eq!(fork(&mut s, &mut b, &key(3), "echo", 0)["reason"], "limit");
        assert_eq!(
            s.activate_world(wk(&key(3)), &mut b),
            Err(ActivateError::Limit)
        );
        let _ = s.end_world(wid(&key(2)), &mut b);
        assert_eq!(
            fork(&mut s, &mut b, &key(3), "echo", 0)["type"],
            "fork-cookie"
        );
        // Three tokens per minute, all spent.
        assert_eq!(fork(&mut s, &mut b, &key(4), "echo", 0)["reason"], "rate");
        assert_eq!(
            fork(&mut s, &mut b, &key(4), "echo", 20_001)["type"],
            "fork-cookie"
        );
    }

    #[test]
    fn sockets_of_one_user_share_its_limit_and_rate() {
        // Two sockets of alice (any login sessions), one of another user;
        // 2 worlds, 3 forks a minute each.
        let (mut s1, mut b) = session();
        let (mut s2, _) = session();
        let (mut s3, mut other) = session();
        hello(&mut s1, &mut b);
        hello(&mut s2, &mut b);
        hello(&mut s3, &mut other);
        let fork = |s: &mut Session, b: &mut UserBudget, n: u8| {
            let msg = serde_json::json!({"type":"fork","lamport":1,"world":wid(&key(n)).encode(),"command":"echo"});
            let v = text(&feed(s, b, msg, 0));
            v["reason"].as_str().unwrap_or("cookie").to_owned()
        };
        assert_eq!(fork(&mut s1, &mut b, 1), "cookie");
        s1.activate_world(wk(&key(1)), &mut b).unwrap();
        assert_eq!(fork(&mut s2, &mut b, 2), "cookie");
        s2.activate_world(wk(&key(2)), &mut b).unwrap();
        assert_eq!(b.worlds(), 2);
        // One world on each socket, and the user is full.
        for s in [&mut s1, &mut s2] {
            assert_eq!(fork(s, &mut b, 3), "limit");
            assert_eq!(s.can_activate(&wid(&key(3)), &b), Err(ActivateError::Limit));
            assert_eq!(
                s.activate_world(wk(&key(3)), &mut b),
                Err(ActivateError::Limit)
            );
        }
        // The other user has its own.
        assert_eq!(fork(&mut s3, &mut other, 3), "cookie");
        s3.activate_world(wk(&key(3)), &mut other).unwrap();
        assert_eq!((b.worlds(), other.worlds()), (2, 1));
        // A world ends on s1: room for one, on either socket.
        let _ = s1.end_world(wid(&key(1)), &mut b);
        assert_eq!(b.worlds(), 1);
        // The user's third token (s1 spent one, s2 two)...
        assert_eq!(fork(&mut s2, &mut b, 4), "cookie");
        // ...so s1, which forked once, is out of tokens too.
        assert_eq!(fork(&mut s1, &mut b, 5), "rate");
        assert_eq!(fork(&mut s3, &mut other, 5), "cookie");
        // Closing a socket gives its worlds back, and only its own.
        let _ = s2.close(&mut b);
        let _ = s3.close(&mut other);
        assert_eq!((b.worlds(), other.worlds()), (0, 0));
        s1.activate_world(wk(&key(4)), &mut b).unwrap();
        s1.activate_world(wk(&key(5)), &mut b).unwrap();
        assert_eq!(b.worlds(), 2);
    }

    #[test]
    fn a_world_key_active_elsewhere_is_refused_and_freed_when_it_ends() {
        use super::super::budget::{ActiveWorlds, SocketBudget};
        use std::sync::Mutex;
        let active = Mutex::new(ActiveWorlds::new());
        let (alice, bob) = (
            Mutex::new(UserBudget::new(LIMITS, 0)),
            Mutex::new(UserBudget::new(LIMITS, 0)),
        );
        let mut b1 = SocketBudget {
            user: &alice,
            active: &active,
            socket: 1,
        };
        let mut b2 = SocketBudget {
            user: &bob,
            active: &active,
            socket: 2,
        };
        let (mut s1, _) = session();
        let (mut s2, _) = session();
        hello(&mut s1, &mut b1);
        hello(&mut s2, &mut b2);
        let k = key(1);
        let fork = |s: &mut Session, b: &mut SocketBudget<'_>| {
            let msg = serde_json::json!({"type":"fork","lamport":1,"world":wid(&k).encode(),"command":"echo"});
            text(&feed(s, b, msg, 0))
        };
        assert_eq!(fork(&mut s1, &mut b1)["type"], "fork-cookie");
        s1.activate_world(wk(&k), &mut b1).unwrap();
        // The key is active on socket 1: refused for socket 2 (another
        // user), at fork and at activation, and nothing is counted.
        assert_eq!(fork(&mut s2, &mut b2)["reason"], "active");
        assert_eq!(
            s2.activate_world(wk(&k), &mut b2),
            Err(ActivateError::ActiveElsewhere)
        );
        assert_eq!(s2.state(&wid(&k)), None);
        assert_eq!(super::super::budget::lock(&bob).worlds(), 0);
        // Socket 1 closes: the key is free, and starts on socket 2.
        let _ = s1.close(&mut b1);
        assert!(super::super::budget::lock(&active).is_empty());
        s2.activate_world(wk(&k), &mut b2).unwrap();
        // Forgetting a world that never ran gives everything back.
        s2.forget_world(&wid(&k), &mut b2);
        assert!(super::super::budget::lock(&active).is_empty());
        assert_eq!(super::super::budget::lock(&bob).worlds(), 0);
    }

    #[test]
    fn world_messages_are_verified_and_replays_refused() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        let k = key(1);
        let other = key(2);
        s.activate_world(wk(&k), &mut b).unwrap();
        let out = feed(&mut s, &mut b, signed(&k, 10, "hi"), 0);
        assert_eq!(
            out,
            vec![Out::Forward {
                world: wid(&k),
                body: "hi".into()
            }]
        );
        assert_eq!(s.lamport(), 11);
        // Replay, and an older lamport.
        assert_eq!(
            text(&feed(&mut s, &mut b, signed(&k, 10, "hi"), 0))["type"],
            "error"
        );
        assert_eq!(
            text(&feed(&mut s, &mut b, signed(&k, 9, "x"), 0))["type"],
            "error"
        );
        // Signed by another world's key.
        let mut forged = signed(&other, 11, "x");
        forged["world"] = wid(&k).encode().into();
        assert_eq!(text(&feed(&mut s, &mut b, forged, 0))["type"], "error");
        // A world this socket does not have.
        assert_eq!(
            text(&feed(&mut s, &mut b, signed(&other, 12, "x"), 0))["type"],
            "error"
        );
        // The body or lamport changed after signing.
        let mut changed = signed(&k, 13, "x");
        changed["body"] = "y".into();
        assert_eq!(text(&feed(&mut s, &mut b, changed, 0))["type"], "error");
        assert!(matches!(
            feed(&mut s, &mut b, signed(&k, 13, "x"), 0).first(),
            Some(Out::Forward { .. })
        ));
    }

    #[test]
    fn disconnect_and_illegal_transitions() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        let k = key(1);
        let w = wid(&k);
        s.activate_world(wk(&k), &mut b).unwrap();
        assert!(s.world_reply(w, "r".into()).is_some());
        // Active -> Disconnected skips a state: refused, unchanged.
        assert_eq!(
            s.transition(&w, WorldState::Disconnected),
            Err(IllegalTransition {
                world: w,
                from: Some(WorldState::Active),
                to: WorldState::Disconnected,
                event: WorldEvent::Move,
            })
        );
        assert_eq!(s.state(&w), Some(WorldState::Active));
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"disconnect","lamport":50,"world":w.encode()}),
            0,
        );
        assert_eq!(out.first(), Some(&Out::EndWorld(w)));
        assert!(matches!(out.get(1), Some(Out::Send(t)) if t.contains("\"disconnect\"")));
        assert_eq!(s.state(&w), None);
        assert!(s.world_reply(w, "r".into()).is_none());
        // A message to the ended world: refused, reported, nothing changes
        // (not even the clock takes its stamp).
        let before = s.lamport();
        let out = feed(&mut s, &mut b, signed(&k, 60, "x"), 0);
        assert_eq!(text(&out)["type"], "error");
        let illegal = |to, event| {
            Out::Illegal(IllegalTransition {
                world: w,
                from: None,
                to,
                event,
            })
        };
        assert_eq!(
            out.first(),
            Some(&illegal(WorldState::Active, WorldEvent::Message))
        );
        assert_eq!(out.len(), 2);
        assert_eq!(s.lamport(), before + 1, "only the error's stamp");
        assert_eq!(s.state(&w), None);
        // So is a second disconnect, and ending it again on the server.
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"disconnect","lamport":70,"world":w.encode()}),
            0,
        );
        assert_eq!(text(&out)["type"], "error");
        assert_eq!(
            out.first(),
            Some(&illegal(WorldState::Disconnecting, WorldEvent::Disconnect))
        );
        assert_eq!(
            s.end_world(w, &mut b),
            vec![illegal(WorldState::Disconnecting, WorldEvent::Move)]
        );
        assert_eq!(s.state(&w), None);
    }

    #[test]
    fn lamports_beyond_2_53_are_refused_and_never_sent() {
        let (mut s, mut b) = session();
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"hello","lamport":1u64 << 53}),
            0,
        );
        assert_eq!(text(&out)["type"], "error");
        assert!(!s.is_activated());
        hello(&mut s, &mut b);
        let k = key(1);
        s.activate_world(wk(&k), &mut b).unwrap();
        let before = s.lamport();
        let out = feed(&mut s, &mut b, signed(&k, u64::MAX, "x"), 0);
        assert_eq!(text(&out)["type"], "error");
        assert_eq!(s.lamport(), before + 1, "only the error's stamp");
        // The largest stamp is accepted, but leaves the server none to
        // send with: the socket closes rather than stamp above it.
        let out = feed(&mut s, &mut b, signed(&k, MAX_LAMPORT, "x"), 0);
        assert!(matches!(out.first(), Some(Out::Forward { .. })));
        assert_eq!(
            s.world_reply(wid(&k), "r".into()),
            Some(Out::Close {
                code: 1008,
                reason: "lamport clock exhausted"
            })
        );
        assert_eq!(s.world_reply(wid(&k), "r".into()), None, "closed");
        assert!(s.lamport() <= MAX_LAMPORT + 1);
        let (mut s, mut b) = session();
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"hello","lamport":MAX_LAMPORT}),
            0,
        );
        assert_eq!(
            out,
            vec![Out::Close {
                code: 1008,
                reason: "lamport clock exhausted"
            }]
        );
        assert!(feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"hello","lamport":1}),
            0
        )
        .is_empty());
    }

    #[test]
    fn weak_world_keys_are_refused() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        // The identity point: of small order, so weak.
        let mut id = [0u8; 32];
        id[0] = 1;
        let out = feed(
            &mut s,
            &mut b,
            serde_json::json!({"type":"fork","lamport":9,"world":WorldId(id).encode(),"command":"echo"}),
            0,
        );
        assert_eq!(text(&out)["reason"], "bad_key");
        // No WorldKey can be made of it, so it can never be activated.
        assert_eq!(WorldKey::new(WorldId(id)), None);
    }

    #[test]
    fn close_ends_every_world() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        s.activate_world(wk(&key(1)), &mut b).unwrap();
        s.activate_world(wk(&key(2)), &mut b).unwrap();
        let out = s.close(&mut b);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| matches!(o, Out::EndWorld(_))));
        assert_eq!(s.active_worlds().count(), 0);
        assert_eq!(b.worlds(), 0, "given back");
        assert_eq!(
            s.activate_world(wk(&key(3)), &mut b),
            Err(ActivateError::NotActive)
        );
    }

    /// One client message of a generated batch.
    #[derive(Debug, Clone)]
    enum Msg {
        /// A world message for world `n` (3 is never active), signed.
        Good(u8),
        /// The same with its signature spoiled.
        BadSig(u8),
        /// World `n`'s message again at the previous stamp.
        Replay(u8),
        Disconnect(u8),
        Garbage,
    }

    fn render(msgs: &[Msg]) -> Vec<String> {
        use serde_json::json;
        let mut lamport = 100;
        let mut out = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let body = format!("m{i}");
            let v = match m {
                Msg::Good(n) | Msg::BadSig(n) => {
                    lamport += 1;
                    let mut v = signed(&key(*n), lamport, &body);
                    if matches!(m, Msg::BadSig(_)) {
                        v["body"] = json!("spoiled");
                    }
                    v
                }
                Msg::Replay(n) => signed(&key(*n), lamport, &body),
                Msg::Disconnect(n) => {
                    lamport += 1;
                    json!({"type":"disconnect","lamport":lamport,"world":wid(&key(*n)).encode()})
                }
                Msg::Garbage => json!({"type":"world","lamport":1}),
            };
            out.push(v.to_string());
        }
        out
    }

    /// `texts` as one batch, as the session socket handles a read.
    fn batch(s: &mut Session, b: &mut dyn Budget, texts: &[&str]) -> Vec<Out> {
        let mut out = Vec::new();
        for p in s.prepare(texts) {
            out.extend(s.on_prepared(p, 0, b, &mut |_, _| None));
        }
        out
    }

    /// An activated socket with worlds 1 and 2 active.
    fn with_worlds() -> (Session, UserBudget) {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        s.activate_world(wk(&key(1)), &mut b).unwrap();
        s.activate_world(wk(&key(2)), &mut b).unwrap();
        (s, b)
    }

    #[test]
    fn a_batch_refuses_only_its_bad_messages_in_order() {
        let msgs = [
            Msg::Good(1),
            Msg::Good(2),
            Msg::BadSig(1),
            Msg::Good(1),
            Msg::Replay(1),
            Msg::Good(3),
            Msg::Good(2),
        ];
        let texts = render(&msgs);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (mut s, mut b) = with_worlds();
        let out = batch(&mut s, &mut b, &texts);
        let kinds: Vec<String> = out
            .iter()
            .filter(|o| !matches!(o, Out::Illegal(_)))
            .map(|o| match o {
                Out::Forward { body, .. } => format!("forward {body}"),
                Out::Send(t) => {
                    let v: Value = serde_json::from_str(t).unwrap();
                    format!("error {}", v["code"].as_str().unwrap())
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "forward m0",
                "forward m1",
                "error bad_signature",
                "forward m3",
                "error replayed",
                "error unknown_world",
                "forward m6"
            ]
        );
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Handling messages as one batch is handling them one by one:
        /// the same envelopes, forwards and errors, in the same order.
        #[test]
        fn a_batch_is_the_messages_one_by_one(msgs in proptest::collection::vec(
            proptest::prop_oneof![
                (1u8..=3).prop_map(Msg::Good),
                (1u8..=3).prop_map(Msg::Good),
                (1u8..=2).prop_map(Msg::BadSig),
                (1u8..=2).prop_map(Msg::Replay),
                (1u8..=2).prop_map(Msg::Disconnect),
                proptest::strategy::Just(Msg::Garbage),
            ],
            0..20,
        )) {
            let texts = render(&msgs);
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (mut one, mut b1) = with_worlds();
            let mut each = Vec::new();
            for t in &texts {
                each.extend(one.on_text(t, 0, &mut b1, &mut |_, _| None));
            }
            let (mut s, mut b2) = with_worlds();
            let together = batch(&mut s, &mut b2, &texts);
            proptest::prop_assert_eq!(each, together);
        }
    }
}
