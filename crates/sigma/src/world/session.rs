//! One session socket's state machine (DESIGN §5, steps 2–6), sans-IO.
//!
//! [`Session`] takes the client's text messages, the activation deadline
//! and the worlds' replies, with the clock passed in, and answers with
//! [`Out`] actions: envelopes to send (already Lamport-stamped), bodies to
//! forward to a world's destination, worlds to end, a close. It owns no
//! socket, no timer and no key; the fork cookie is sealed by the caller's
//! `seal` function.
//!
//! The world limit and the fork rate are not the socket's: they belong to
//! the login session (one session cookie or bearer token), which may have
//! many sockets. Each call that forks or starts or ends a world is given
//! that login session's [`Budget`] (a [`SessionBudget`], or the driver's
//! shared handle to one), and the session keeps it exact: a world counts
//! from its activation until it is forgotten.
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

use super::envelope::{self, ClientMsg, CommandInfo, ServerMsg, MAX_LAMPORT};
use super::WorldId;

/// Close code when `hello` does not arrive in time.
pub const CLOSE_ACTIVATION_TIMEOUT: u16 = 4408;

/// Close code when the server's Lamport clock has no stamp left below
/// [`MAX_LAMPORT`] (only a client stamping near 2^53 - 1 gets there).
pub const CLOSE_CLOCK_EXHAUSTED: u16 = 1008;

/// The limits of one login session (`[worlds]`), shared by all of its
/// session sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Active worlds at once, over all the login session's sockets.
    pub max_worlds: usize,
    /// Forks per minute (token bucket, burst the same), over all the
    /// login session's sockets.
    pub forks_per_minute: u32,
}

/// What a [`Session`] asks of its login session's limits. Every socket of
/// one login session is given the same budget, so the limits hold for the
/// login session, not per socket.
pub trait Budget {
    /// Whether one more world may become active now (changes nothing).
    fn has_room(&self) -> bool;
    /// Spends one fork token at `now_ms`; `false` (and nothing spent)
    /// when none is left.
    fn take_fork(&mut self, now_ms: u64) -> bool;
    /// Counts one more active world if there is room: the check and the
    /// reservation in one step (so concurrent initiates cannot overshoot).
    fn add_world(&mut self) -> bool;
    /// Counts one world fewer (it was forgotten).
    fn remove_world(&mut self);
}

/// One login session's world count and fork token bucket: the [`Budget`]
/// its sockets share.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionBudget {
    limits: Limits,
    /// Worlds counted by [`Budget::add_world`] and not yet removed.
    worlds: usize,
    /// Fork tokens, and when they were last refilled (ms).
    tokens: f64,
    refilled_ms: u64,
}

impl SessionBudget {
    /// A full budget at `now_ms`: no worlds, every fork token.
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Self {
            limits,
            worlds: 0,
            tokens: f64::from(limits.forks_per_minute),
            refilled_ms: now_ms,
        }
    }

    /// The worlds counted now.
    pub fn worlds(&self) -> usize {
        self.worlds
    }
}

impl Budget for SessionBudget {
    fn has_room(&self) -> bool {
        self.worlds < self.limits.max_worlds
    }

    fn take_fork(&mut self, now_ms: u64) -> bool {
        let per_ms = f64::from(self.limits.forks_per_minute) / 60_000.0;
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        #[allow(clippy::cast_precision_loss)]
        let refill = elapsed as f64 * per_ms;
        self.tokens = (self.tokens + refill).min(f64::from(self.limits.forks_per_minute));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn add_world(&mut self) -> bool {
        if !self.has_room() {
            return false;
        }
        self.worlds = self.worlds.saturating_add(1);
        true
    }

    fn remove_world(&mut self) {
        self.worlds = self.worlds.saturating_sub(1);
    }
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
    /// The login session has its maximum of worlds (429).
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
    /// This socket's worlds; each is counted in the login session's
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

    fn error(&mut self, message: impl Into<String>) -> Vec<Out> {
        let message = message.into();
        vec![self.send(ServerMsg::Error { message })]
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
        self.error("the session socket takes JSON text messages")
    }

    /// One client text message at `now_ms`. `budget` is the login
    /// session's (a fork asks it for room and a token, a `disconnect`
    /// gives the world back); `seal` makes the fork cookie (base64url)
    /// for a world and command, or `None` when it cannot.
    pub fn on_text(
        &mut self,
        text: &str,
        now_ms: u64,
        budget: &mut dyn Budget,
        seal: &mut dyn FnMut(&WorldId, &str) -> Option<String>,
    ) -> Vec<Out> {
        if self.closed {
            return Vec::new();
        }
        let env = match envelope::parse_client(text) {
            Ok(e) => e,
            Err(e) => return self.error(e.0),
        };
        if !self.activated && env.msg != ClientMsg::Hello {
            return self.error("send hello first");
        }
        match env.msg {
            ClientMsg::Hello => {
                if self.activated {
                    return self.error("already activated");
                }
                self.activated = true;
                self.receive(env.lamport);
                let user = self.user.clone();
                let commands = self.commands.clone();
                vec![self.send(ServerMsg::Welcome { user, commands })]
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
                } else if !budget.has_room() {
                    Some("limit")
                } else if !budget.take_fork(now_ms) {
                    Some("rate")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return vec![self.send(ServerMsg::ForkRefused { world, reason })];
                }
                match seal(&world, &command) {
                    Some(cookie) => vec![self.send(ServerMsg::ForkCookie { world, cookie })],
                    None => self.error("cannot make a cookie now"),
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
                    return self.refuse_event(world, from, WorldState::Active, WorldEvent::Message);
                }
                let Some(w) = self.worlds.get_mut(&world) else {
                    return self.error(format!("unknown world {world}"));
                };
                let signed = envelope::signed_bytes(&world_text, env.lamport, &body);
                // RFC 8032 verification (canonical `s`); the key itself was
                // checked once (a point, not of small order), so the strict
                // variant's per-message decompression of R buys nothing.
                if w.key.verify(&signed, &Signature::from_bytes(&sig)).is_err() {
                    return self.error(format!("bad signature for world {world}"));
                }
                if w.last.is_some_and(|last| env.lamport <= last) {
                    return self.error(format!("replayed lamport for world {world}"));
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
                    );
                }
                self.receive(env.lamport);
                self.end_world(world, budget)
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
    ) -> Vec<Out> {
        let message = match from {
            None => format!("unknown world {world}"),
            Some(_) => format!("world {world} is not active"),
        };
        let illegal = Out::Illegal(IllegalTransition {
            world,
            from,
            to,
            event,
        });
        let mut out = vec![illegal];
        out.extend(self.error(message));
        out
    }

    /// Ends an active world (client `disconnect`, or the server's reasons):
    /// `Active → Disconnecting`, its endpoint dropped, `disconnect` sent,
    /// `→ Disconnected`, forgotten. For a world that is not active (ending
    /// it twice), only [`Out::Illegal`]. The world is given back to
    /// `budget` when it is forgotten.
    pub fn end_world(&mut self, world: WorldId, budget: &mut dyn Budget) -> Vec<Out> {
        if let Err(e) = self.transition(&world, WorldState::Disconnecting) {
            return vec![Out::Illegal(e)];
        }
        let mut out = vec![Out::EndWorld(world)];
        if !self.closed {
            out.push(self.send(ServerMsg::Disconnect { world }));
        }
        match self.transition(&world, WorldState::Disconnected) {
            Ok(()) => {
                if self.worlds.remove(&world).is_some() {
                    budget.remove_world();
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
        if !budget.has_room() {
            return Err(ActivateError::Limit);
        }
        Ok(())
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
        if !budget.add_world() {
            return Err(ActivateError::Limit);
        }
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

#[cfg(test)]
mod tests {
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
    };

    /// A socket of alice and the budget of its login session.
    fn session() -> (Session, SessionBudget) {
        (
            Session::new("alice".into(), commands()),
            SessionBudget::new(LIMITS, 0),
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
        let out = feed(s, b, serde_json::json!({"t":"hello","lamport":5}), 0);
        let v = text(&out);
        assert_eq!(v["t"], "welcome");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["lamport"], 7, "receive 5 -> 6, send -> 7");
        assert_eq!(v["commands"][0]["code"], "/world/echo.js");
    }

    fn signed(k: &SigningKey, lamport: u64, body: &str) -> serde_json::Value {
        let w = wid(k).encode();
        let sig = k.sign(&envelope::signed_bytes(&w, lamport, body));
        serde_json::json!({"t":"world","world":w,"lamport":lamport,"body":body,
            "sig": super::super::b64_encode(&sig.to_bytes())})
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
            serde_json::json!({"t":"fork","lamport":1,"world":wid(&k).encode(),"command":"echo"}),
            0,
        );
        assert_eq!(text(&out)["t"], "error");
    }

    #[test]
    fn fork_checks_command_duplicate_limit_and_rate() {
        let (mut s, mut b) = session();
        hello(&mut s, &mut b);
        let fork = |s: &mut Session, b: &mut SessionBudget, k: &SigningKey, cmd: &str, now| {
            text(&feed(
                s,
                b,
                serde_json::json!({"t":"fork","lamport":1,"world":wid(k).encode(),"command":cmd}),
                now,
            ))
        };
        assert_eq!(
            fork(&mut s, &mut b, &key(1), "nope", 0)["reason"],
            "unknown_command"
        );
        assert_eq!(fork(&mut s, &mut b, &key(1), "echo", 0)["t"], "fork-cookie");
        s.activate_world(wk(&key(1)), &mut b).unwrap();
        assert_eq!(
            fork(&mut s, &mut b, &key(1), "echo", 0)["reason"],
            "duplicate"
        );
        assert_eq!(fork(&mut s, &mut b, &key(2), "echo", 0)["t"], "fork-cookie");
        s.activate_world(wk(&key(2)), &mut b).unwrap();
        assert_eq!(fork(&mut s, &mut b, &key(3), "echo", 0)["reason"], "limit");
        assert_eq!(
            s.activate_world(wk(&key(3)), &mut b),
            Err(ActivateError::Limit)
        );
        let _ = s.end_world(wid(&key(2)), &mut b);
        assert_eq!(fork(&mut s, &mut b, &key(3), "echo", 0)["t"], "fork-cookie");
        // Three tokens per minute, all spent.
        assert_eq!(fork(&mut s, &mut b, &key(4), "echo", 0)["reason"], "rate");
        assert_eq!(
            fork(&mut s, &mut b, &key(4), "echo", 20_001)["t"],
            "fork-cookie"
        );
    }

    #[test]
    fn sockets_of_one_login_session_share_its_limit_and_rate() {
        // Two sockets of one login session, one socket of another login
        // session of the same user; 2 worlds, 3 forks a minute each.
        let (mut s1, mut b) = session();
        let (mut s2, _) = session();
        let (mut s3, mut other) = session();
        hello(&mut s1, &mut b);
        hello(&mut s2, &mut b);
        hello(&mut s3, &mut other);
        let fork = |s: &mut Session, b: &mut SessionBudget, n: u8| {
            let msg = serde_json::json!({"t":"fork","lamport":1,"world":wid(&key(n)).encode(),"command":"echo"});
            let v = text(&feed(s, b, msg, 0));
            v["reason"].as_str().unwrap_or("cookie").to_owned()
        };
        assert_eq!(fork(&mut s1, &mut b, 1), "cookie");
        s1.activate_world(wk(&key(1)), &mut b).unwrap();
        assert_eq!(fork(&mut s2, &mut b, 2), "cookie");
        s2.activate_world(wk(&key(2)), &mut b).unwrap();
        assert_eq!(b.worlds(), 2);
        // One world on each socket, and the login session is full.
        for s in [&mut s1, &mut s2] {
            assert_eq!(fork(s, &mut b, 3), "limit");
            assert_eq!(s.can_activate(&wid(&key(3)), &b), Err(ActivateError::Limit));
            assert_eq!(
                s.activate_world(wk(&key(3)), &mut b),
                Err(ActivateError::Limit)
            );
        }
        // The other login session has its own.
        assert_eq!(fork(&mut s3, &mut other, 3), "cookie");
        s3.activate_world(wk(&key(3)), &mut other).unwrap();
        assert_eq!((b.worlds(), other.worlds()), (2, 1));
        // A world ends on s1: room for one, on either socket.
        let _ = s1.end_world(wid(&key(1)), &mut b);
        assert_eq!(b.worlds(), 1);
        // The third token of the login session (s1 spent one, s2 two)...
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
            text(&feed(&mut s, &mut b, signed(&k, 10, "hi"), 0))["t"],
            "error"
        );
        assert_eq!(
            text(&feed(&mut s, &mut b, signed(&k, 9, "x"), 0))["t"],
            "error"
        );
        // Signed by another world's key.
        let mut forged = signed(&other, 11, "x");
        forged["world"] = wid(&k).encode().into();
        assert_eq!(text(&feed(&mut s, &mut b, forged, 0))["t"], "error");
        // A world this socket does not have.
        assert_eq!(
            text(&feed(&mut s, &mut b, signed(&other, 12, "x"), 0))["t"],
            "error"
        );
        // The body or lamport changed after signing.
        let mut changed = signed(&k, 13, "x");
        changed["body"] = "y".into();
        assert_eq!(text(&feed(&mut s, &mut b, changed, 0))["t"], "error");
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
            serde_json::json!({"t":"disconnect","lamport":50,"world":w.encode()}),
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
        assert_eq!(text(&out)["t"], "error");
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
            serde_json::json!({"t":"disconnect","lamport":70,"world":w.encode()}),
            0,
        );
        assert_eq!(text(&out)["t"], "error");
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
            serde_json::json!({"t":"hello","lamport":1u64 << 53}),
            0,
        );
        assert_eq!(text(&out)["t"], "error");
        assert!(!s.is_activated());
        hello(&mut s, &mut b);
        let k = key(1);
        s.activate_world(wk(&k), &mut b).unwrap();
        let before = s.lamport();
        let out = feed(&mut s, &mut b, signed(&k, u64::MAX, "x"), 0);
        assert_eq!(text(&out)["t"], "error");
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
            serde_json::json!({"t":"hello","lamport":MAX_LAMPORT}),
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
            serde_json::json!({"t":"hello","lamport":1}),
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
            serde_json::json!({"t":"fork","lamport":9,"world":WorldId(id).encode(),"command":"echo"}),
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
}
