//! `&world`: the session socket and the world code server (DESIGN §5), the
//! tokio glue around [`super::session`] and [`super::cookie`].
//!
//! ```text
//!  /ws  ──▶ SessionSocket ──(Session: hello, fork, world, disconnect)
//!                │   Forward{world, body} ──Tagged{(user, world)}──▶ command's destination
//!                │   ◀── reply / push ── reply rule (user, world) ── per-world forwarder
//!                └── push queue of the socket (every envelope, Lamport order)
//!  /world/<cmd>.js?initiate&sig ──▶ checks ──▶ activates the world on the socket named
//!                                   in the cookie, serves the worker code
//! ```
//!
//! One [`WorldService`] serves every `&world` route. It keeps the minute
//! keys, the live session sockets (by id, weakly), each command's code and
//! destination, the [`UserBudget`] of each user tracked ([`Users`]: world
//! count, fork tokens and the nonces of the cookies the user used, shared
//! by all of the user's login sessions, bearer tokens and sockets, and
//! kept past its last socket until its bucket is full again, so a
//! reconnect refills nothing), and the [`ActiveWorlds`] of the whole
//! server (a world key is active once). Each active world holds its own
//! endpoint of the command's destination, opened with the identity
//! `(user, world)`; whatever that endpoint answers or pushes must carry
//! that identity (the reply rule), and is wrapped as a `world` envelope for
//! that world only.
//!
//! Lock order: a socket, then its user's budget, then the active worlds
//! (never the other way round); the map of users is taken without a socket
//! or a budget held, at the upgrade and when a socket is dropped, and
//! takes members' budgets under it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::Signature;
use sigma_core::clock::unix_now_ms;
use sigma_core::{
    enforce, ws_push_queue, Answer, Capabilities, Destination, Dropped, Handled, Identity,
    Principal, Pushed, ReplyAudit, Request, Tagged, Upgrade, WsEndpoint, WsSender,
};
use sigma_http::{Header, Method, RequestHead, Response, WsMessage};

use super::budget::{lock, ActiveWorlds, HeldBudget, SocketBudget, UserBudget, Users};
use super::cookie::{CookieContents, MinuteKeys, UseError, NONCE};
use super::envelope::{self, CommandInfo};
use super::session::{ActivateError, Limits, Out, Session, WorldKey};
use super::{Binding, WorldId};

use super::config::{WorldCode, WorldsConfig};
use super::ReadBearer;
use crate::UnavailableDestination;
use sigma_core::loglimit::LogLimiter;

/// The worker code built into the binary (`builtin:NAME`).
fn builtin_code(name: &str) -> Option<&'static str> {
    match name {
        "echo" => Some(include_str!("../../assets/worlds/echo.js")),
        "chat" => Some(include_str!("../../assets/worlds/chat.js")),
        _ => None,
    }
}

struct Command {
    info: CommandInfo,
    code: Bytes,
    /// Who may start it ([`WorldCommandSpec::users`]); `None`: everyone
    /// authenticated.
    users: Option<Vec<String>>,
}

impl Command {
    /// True if `user` may start this command (DESIGN §5: "the world
    /// commands the user may start").
    fn allows(&self, user: &Identity) -> bool {
        self.users
            .as_ref()
            .is_none_or(|list| list.contains(&user.user))
    }
}

/// One world command as the service needs it: the shell resolves
/// `[world.<name>]` against the routes it reuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldCommandSpec {
    /// The command's name (served at `/world/<name>.js`).
    pub name: String,
    /// The worker code.
    pub code: WorldCode,
    /// Who may start it: its own `users`, intersected with those of the
    /// route it reuses; `None`: every authenticated user.
    pub users: Option<Vec<String>>,
}

/// The `&world` destination (one per server, shared by its routes).
pub struct WorldService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorldService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldService").finish_non_exhaustive()
    }
}

struct Shared {
    commands: Vec<Command>,
    /// Each command's destination, by index (set by [`WorldService::bind`]).
    targets: OnceLock<Vec<Arc<dyn Destination>>>,
    /// Reads a request's bearer token as A does.
    bearer: ReadBearer,
    activation_timeout: Duration,
    /// The minute-key period, in whole seconds (at least 1): how long a
    /// user's full set of used cookies may take to free room
    /// (`Retry-After`).
    period_secs: u64,
    keys: Mutex<MinuteKeys>,
    sockets: Mutex<HashMap<u64, Weak<Mutex<Socket>>>>,
    /// The users tracked, and their budgets.
    users: Mutex<Users>,
    /// Every active world key, and its socket.
    active: Arc<Mutex<ActiveWorlds>>,
    next_socket: AtomicU64,
    /// Where the reply rule reports a world's dropped replies (counted
    /// like every other stage's).
    audit: Arc<dyn ReplyAudit>,
    /// In a cluster, the way to the other nodes: an initiate whose cookie
    /// another node sealed goes there ([`super::forward`]).
    relay: Option<Arc<dyn sigma_store::Relay>>,
}

/// Close code of a session socket refused because `worlds.max_users`
/// users are tracked already (RFC 6455: try again later).
pub const CLOSE_TOO_MANY_USERS: u16 = 1013;

/// The endpoint of a session socket that was refused at the upgrade: it
/// closes at once and takes nothing.
struct Refused;

impl WsEndpoint for Refused {
    fn on_message(&mut self, _msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        None
    }
}

impl WorldService {
    /// The service for the world commands `world` and the limits of
    /// `[worlds]`; reads code files. `bearer` reads a request's bearer
    /// token as A does (a socket and its worker fetches are bound to it, or
    /// to the identity's session). Replies the reply rule drops are reported to `audit`.
    /// In a cluster, `relay` reaches the other nodes: cookies name this
    /// node, initiates of other nodes' cookies are carried there, and this
    /// node answers theirs.
    pub fn new(
        world: &[WorldCommandSpec],
        worlds: &WorldsConfig,
        bearer: ReadBearer,
        audit: Arc<dyn ReplyAudit>,
        relay: Option<Arc<dyn sigma_store::Relay>>,
    ) -> Result<Self, UnavailableDestination> {
        let mut commands = Vec::with_capacity(world.len());
        for w in world {
            let code = match &w.code {
                WorldCode::Builtin(name) => Bytes::from_static(
                    builtin_code(name)
                        .ok_or_else(|| {
                            UnavailableDestination(format!(
                                "&world: world.{}.code: no such built-in code",
                                w.name
                            ))
                        })?
                        .as_bytes(),
                ),
                WorldCode::File(path) => {
                    Bytes::from(sigma_core::namedfile::read(path).map_err(|e| {
                        UnavailableDestination(format!("&world: world.{}.code: {e}", w.name))
                    })?)
                }
            };
            commands.push(Command {
                info: CommandInfo {
                    name: w.name.clone(),
                    code: format!("/world/{}.js", w.name),
                },
                code,
                users: w.users.clone(),
            });
        }
        let period = worlds.key_rotation;
        let keys = match &relay {
            Some(r) => MinuteKeys::new(period).tagged(r.node()),
            None => MinuteKeys::new(period),
        };
        let shared = Arc::new(Shared {
            commands,
            targets: OnceLock::new(),
            bearer,
            activation_timeout: worlds.activation_timeout,
            period_secs: period
                .as_secs()
                .saturating_add(u64::from(period.subsec_nanos() > 0))
                .max(1),
            keys: Mutex::new(keys),
            sockets: Mutex::new(HashMap::new()),
            users: Mutex::new(Users::new(
                Limits {
                    max_worlds: worlds.max_per_user,
                    forks_per_minute: worlds.forks_per_minute,
                    max_used: worlds.max_used_per_user,
                },
                worlds.max_users,
            )),
            active: Arc::new(Mutex::new(ActiveWorlds::new())),
            next_socket: AtomicU64::new(1),
            audit,
            relay,
        });
        if let Some(r) = &shared.relay {
            let weak = Arc::downgrade(&shared);
            r.serve(super::forward::TOPIC, weak);
        }
        Ok(Self { shared })
    }

    /// Connects each command to its destination, by index (the order of
    /// the commands given to [`WorldService::new`]). The shell picks them
    /// (the route a command reuses, else a destination of its own), so a
    /// world never builds or imports another destination. A second bind
    /// (never done) keeps the first.
    pub fn bind(&self, targets: Vec<Arc<dyn Destination>>) {
        let _ = self.shared.targets.set(targets);
    }
}

impl Destination for WorldService {
    fn name(&self) -> &str {
        "&world"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            websocket: true,
            // DESIGN §5 step 1: no credentials, 401, no upgrade.
            requires_identity: true,
            ..Capabilities::HTTP
        }
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => Answer::Http(self.shared.initiate(
                &req.identity,
                &req.msg.head,
                unix_now_ms(),
            )),
            // The session socket needs the upgrade's credentials: none
            // for a socket sigma opens itself.
            Request::Upgrade(Upgrade {
                identity,
                push,
                from: Some(from),
            }) => match self.session_socket(&from.head, &identity, push) {
                Some(ep) => Answer::Socket(ep),
                None => Answer::NoSocket,
            },
            other => other.not_taken(),
        }
    }
}

impl WorldService {
    /// A session socket for an upgrade of `identity`'s (DESIGN §5), bound
    /// to its bearer token (in `head`) or its login session.
    fn session_socket(
        &self,
        head: &RequestHead,
        identity: &Principal,
        push: WsSender,
    ) -> Option<Box<dyn WsEndpoint>> {
        let user = Arc::clone(identity.as_ref()?);
        let binding = super::binding_of(self.shared.bearer, &user, head)?;
        let id = self.shared.next_socket.fetch_add(1, Ordering::Relaxed);
        let commands = self
            .shared
            .commands
            .iter()
            .filter(|c| c.allows(&user))
            .map(|c| c.info.clone())
            .collect();
        let joined = lock(&self.shared.users).join(&user.user, unix_now_ms());
        let Ok(budget) = joined else {
            if USERS_LOG.may_log() {
                tracing::warn!(user = %user.user, "session socket refused: worlds.max_users users tracked");
            }
            let _ = push.close(CLOSE_TOO_MANY_USERS, "too many users");
            return Some(Box::new(Refused));
        };
        let socket = Arc::new(Mutex::new(Socket {
            id,
            session: Session::new(user.user.clone(), commands),
            binding,
            budget,
            active: Arc::clone(&self.shared.active),
            identity: identity.clone(),
            user,
            push,
            worlds: HashMap::new(),
            audit: Arc::clone(&self.shared.audit),
        }));
        lock(&self.shared.sockets).insert(id, Arc::downgrade(&socket));
        let timer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let weak = Arc::downgrade(&socket);
            let timeout = self.shared.activation_timeout;
            rt.spawn(async move {
                tokio::time::sleep(timeout).await;
                if let Some(s) = weak.upgrade() {
                    let mut s = lock(&s);
                    let outs = s.session.activation_deadline();
                    s.apply(outs);
                }
            })
        });
        Some(Box::new(SessionSocket {
            held: Vec::new(),
            held_bytes: 0,
            shared: Arc::clone(&self.shared),
            socket,
            timer,
        }))
    }
}

/// The log budget of illegal world transitions (a client causes them at
/// will), shared by every socket.
static ILLEGAL_LOG: LogLimiter = LogLimiter::new();

/// The log budget of session sockets refused at `worlds.max_users`
/// (logged ones are rate-limited: many users can cause them).
static USERS_LOG: LogLimiter = LogLimiter::new();

/// An HTTP error for the initiate: status and a JSON
/// `{"error": CODE, "message": TEXT}` (codes in `docs/worlds.md`).
fn refuse(status: u16, code: &str) -> Response {
    let message = match code {
        "missing_parameter" => "the initiate or sig parameter is missing",
        "unknown_command" => "no world command of this name",
        "bad_initiate" => "the initiate does not decode or is not for this command",
        "bad_signature" => "the initiate's signature does not verify",
        "bad_cookie" => "the session cookie is missing, expired or not this user's",
        "world_destination_unavailable" => "the world's destination cannot take a WebSocket",
        "session_socket_gone" => "the session socket is closed",
        "replayed" => "this initiate was used already",
        "world_rate" => "too many worlds started; retry later",
        "already_active" => "this world is active already",
        "world_limit" => "too many worlds are open on this session socket",
        "session_socket_not_active" => "the session socket is not activated",
        "world_node_unavailable" => "the node holding the session socket cannot be reached; retry",
        other => sigma_core::response::error_message(other),
    };
    sigma_core::response::json_error_message(status, code, message)
}

/// An initiate refused: its status and error code ([`refuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal(u16, &'static str);

/// What the initiate checks before it needs the cookie's node.
struct Checked<'a> {
    /// The user `A` identified (the cookie's socket must be theirs).
    user: &'a str,
    index: usize,
    command: &'a Command,
    init: envelope::Initiate,
    key: WorldKey,
    binding: Option<Binding>,
}

impl Shared {
    /// `GET /world/<command>.js?initiate=…&sig=…` (DESIGN §5, step 4).
    /// In a cluster, an initiate whose cookie another node sealed goes to
    /// that node (its session socket runs the world, [`super::forward`]).
    fn initiate(
        self: &Arc<Self>,
        identity: &Principal,
        head: &RequestHead,
        now_ms: u64,
    ) -> Handled {
        let tag = |r: Response| Tagged::new(identity.clone(), r);
        let (checked, initiate, sig) = match self.check(identity, head) {
            Ok(c) => c,
            Err(r) => return Handled::Ready(tag(self.refusal(r.0, r.1))),
        };
        let elsewhere = self.relay.as_ref().and_then(|relay| {
            super::cookie::node_of(&checked.init.cookie)
                .filter(|n| *n != relay.node())
                .map(|n| (Arc::clone(relay), n))
        });
        if let Some((relay, node)) = elsewhere {
            let ask = super::forward::Forwarded {
                user: checked.user.to_owned(),
                binding: checked.binding,
                command: checked.command.info.name.clone(),
                initiate,
                sig,
            };
            let index = checked.index;
            let me = Arc::clone(self);
            let identity = identity.clone();
            return Handled::Later(Box::pin(async move {
                let answer = relay
                    .ask(node, super::forward::TOPIC, ask.encode().into())
                    .await;
                let resp = me.forwarded(node, index, answer);
                Tagged::new(identity, resp)
            }));
        }
        let index = checked.index;
        Handled::Ready(tag(match self.start(checked, now_ms) {
            Ok(()) => self.code(index),
            Err(r) => self.refusal(r.0, r.1),
        }))
    }

    /// The checks that need no cookie key: the method, the user, the
    /// command, the initiate's form and its signature; with the bytes
    /// signed and the signature.
    fn check<'a>(
        &'a self,
        identity: &'a Principal,
        head: &RequestHead,
    ) -> Result<(Checked<'a>, Vec<u8>, [u8; 64]), Refusal> {
        // Not HEAD either: an initiate has an effect (the world starts).
        if head.method != Method::Get {
            return Err(Refusal(405, "method_not_allowed"));
        }
        // A world runs for a user (a route with `auth = "optional"` lets
        // anonymous requests this far).
        let Some(user) = identity.as_deref() else {
            return Err(Refusal(401, "unauthenticated"));
        };
        let path = head.path();
        let name = path
            .rsplit(|b| *b == b'/')
            .next()
            .and_then(|seg| seg.strip_suffix(b".js"))
            .and_then(|n| std::str::from_utf8(n).ok());
        let query = head
            .target
            .iter()
            .position(|b| *b == b'?')
            .and_then(|i| head.target.get(i.saturating_add(1)..))
            .unwrap_or_default();
        let Some((initiate, sig)) = envelope::parse_query(query) else {
            return Err(Refusal(400, "missing_parameter"));
        };
        // A command the user may not start is as unknown to them as in
        // their `welcome` (it does not tell them it exists).
        let Some((index, command)) = name.and_then(|n| {
            self.commands
                .iter()
                .enumerate()
                .find(|(_, c)| c.info.name == n && c.allows(user))
        }) else {
            return Err(Refusal(404, "unknown_command"));
        };
        let (init, key) = verified(command, &initiate, &sig)?;
        let binding = super::binding_of(self.bearer, user, head);
        let checked = Checked {
            user: &user.user,
            index,
            command,
            init,
            key,
            binding,
        };
        Ok((checked, initiate, sig))
    }

    /// The rest of an initiate, on the node whose keys sealed its cookie:
    /// the cookie, its binding and socket, then the world starts there.
    fn start(&self, c: Checked<'_>, now_ms: u64) -> Result<(), Refusal> {
        let opened = {
            let mut keys = lock(&self.keys);
            keys.open_with_epoch(&c.init.cookie, now_ms)
                .map(|(k, epoch)| (k, epoch, keys.oldest_epoch().unwrap_or(epoch)))
        };
        let Ok((cookie, epoch, oldest)) = opened else {
            return Err(Refusal(403, "bad_cookie"));
        };
        if c.binding
            .is_none_or(|b| !bool::from(subtle_eq(&b, &cookie.session)))
            || cookie.world != c.init.world
            || cookie.command != c.init.command
        {
            return Err(Refusal(403, "bad_cookie"));
        }
        let Some(nonce) = c
            .init
            .cookie
            .get(..NONCE)
            .and_then(|n| <[u8; NONCE]>::try_from(n).ok())
        else {
            return Err(Refusal(403, "bad_cookie"));
        };
        let Some(dest) = self.targets.get().and_then(|t| t.get(c.index)) else {
            return Err(Refusal(502, "world_destination_unavailable"));
        };
        let socket = lock(&self.sockets)
            .get(&cookie.socket)
            .and_then(Weak::upgrade);
        let Some(socket) = socket else {
            return Err(Refusal(403, "session_socket_gone"));
        };
        let once = Once {
            nonce,
            epoch,
            oldest,
        };
        // cookie.world == init.world, checked above.
        Socket::start_world(&socket, c.user, c.key, dest.as_ref(), once).map_err(|e| match e {
            StartError::Used(UseError::Replayed) => Refusal(409, "replayed"),
            StartError::Used(UseError::Full) => Refusal(429, "world_rate"),
            StartError::Activate(ActivateError::Duplicate | ActivateError::ActiveElsewhere) => {
                Refusal(409, "already_active")
            }
            StartError::Activate(ActivateError::Limit) => Refusal(429, "world_limit"),
            StartError::Activate(ActivateError::NotActive) => {
                Refusal(403, "session_socket_not_active")
            }
            StartError::NoWebSocket => Refusal(502, "world_destination_unavailable"),
            StartError::OtherUser => Refusal(403, "bad_cookie"),
        })?;
        tracing::debug!(world = %cookie.world, command = %c.command.info.name, "world active");
        Ok(())
    }

    /// The answer to an initiate another node forwarded (runs on the
    /// relay's task).
    fn answer_forwarded(&self, request: &[u8]) -> super::forward::Outcome {
        let refused = |r: Refusal| super::forward::Outcome {
            status: r.0,
            error: Some(r.1.to_owned()),
        };
        let Some(f) = super::forward::Forwarded::decode(request) else {
            return refused(Refusal(400, "bad_initiate"));
        };
        // The asking node found the command allowed for the user; this
        // node only needs it to exist here too.
        let Some((index, command)) = self
            .commands
            .iter()
            .enumerate()
            .find(|(_, c)| c.info.name == f.command)
        else {
            return refused(Refusal(404, "unknown_command"));
        };
        let (init, key) = match verified(command, &f.initiate, &f.sig) {
            Ok(v) => v,
            Err(r) => return refused(r),
        };
        let checked = Checked {
            user: &f.user,
            index,
            command,
            init,
            key,
            binding: f.binding,
        };
        match self.start(checked, unix_now_ms()) {
            Ok(()) => super::forward::Outcome {
                status: 200,
                error: None,
            },
            Err(r) => refused(r),
        }
    }

    /// The response to an initiate forwarded to `node`, from its answer.
    fn forwarded(
        &self,
        node: u64,
        index: usize,
        answer: Result<Bytes, sigma_store::AskError>,
    ) -> Response {
        let outcome = match answer {
            Ok(bytes) => super::forward::Outcome::decode(&bytes),
            Err(e) => {
                if NODE_LOG.may_log() {
                    tracing::warn!(
                        node = format_args!("{node:016x}"),
                        "world initiate: the node of its cookie did not answer: {e}"
                    );
                }
                let mut r = refuse(503, "world_node_unavailable");
                r.headers.push(Header::new(&b"Retry-After"[..], &b"1"[..]));
                return r;
            }
        };
        match outcome {
            Some(o) if o.status == 200 => self.code(index),
            Some(o) => self.refusal(o.status, o.error.as_deref().unwrap_or("bad_gateway")),
            None => refuse(502, "bad_gateway"),
        }
    }

    /// The worker code of command `index`.
    fn code(&self, index: usize) -> Response {
        let code = self
            .commands
            .get(index)
            .map(|c| c.code.clone())
            .unwrap_or_default();
        Response::new(
            200,
            vec![
                Header::new(&b"Content-Type"[..], &b"text/javascript; charset=utf-8"[..]),
                Header::new(&b"Cache-Control"[..], &b"no-store"[..]),
                Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
            ],
            code,
        )
    }

    /// The response of a refusal (here, or by the cookie's node); a user
    /// whose used cookies are at their bound gets `Retry-After`: the key
    /// period frees room.
    fn refusal(&self, status: u16, code: &str) -> Response {
        let mut r = refuse(status, code);
        if code == "world_rate" {
            r.headers.push(Header::new(
                &b"Retry-After"[..],
                self.period_secs.to_string().into_bytes(),
            ));
        }
        r
    }
}

impl sigma_store::Answerer for Shared {
    fn answer(&self, request: &[u8]) -> Bytes {
        self.answer_forwarded(request).encode().into()
    }
}

/// The log budget of initiates whose cookie's node did not answer.
static NODE_LOG: LogLimiter = LogLimiter::new();

/// The initiate `bytes` parsed for `command`, and its world key if `sig`
/// is that key's signature over them.
fn verified(
    command: &Command,
    bytes: &[u8],
    sig: &[u8; 64],
) -> Result<(envelope::Initiate, WorldKey), Refusal> {
    let Ok(init) = envelope::parse_initiate(bytes) else {
        return Err(Refusal(403, "bad_initiate"));
    };
    if init.command != command.info.name {
        return Err(Refusal(403, "bad_initiate"));
    }
    let key = WorldKey::new(init.world).filter(|k| {
        k.key()
            .verify_strict(bytes, &Signature::from_bytes(sig))
            .is_ok()
    });
    match key {
        Some(key) => Ok((init, key)),
        None => Err(Refusal(403, "bad_signature")),
    }
}

fn subtle_eq(a: &Binding, b: &Binding) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    a.ct_eq(b)
}

enum StartError {
    /// The cookie was used already, or the user has no room to remember
    /// more uses.
    Used(UseError),
    Activate(ActivateError),
    NoWebSocket,
    /// The socket named in the cookie is another user's (the binding
    /// matched, so only a bug gets here).
    OtherUser,
}

/// A cookie's single use: its nonce, filed under the epoch of the key
/// that opened it, and the oldest epoch whose key is still held.
struct Once {
    nonce: [u8; NONCE],
    epoch: u64,
    oldest: u64,
}

/// One session socket's state, shared by its endpoint, its timer, its
/// worlds' forwarders and initiates.
struct Socket {
    id: u64,
    session: Session,
    binding: Binding,
    /// The budget of the socket's user, shared with the user's other
    /// sockets. Lock order: the socket, then the budget.
    budget: Arc<Mutex<UserBudget>>,
    /// The server's active worlds (lock order: after the budget).
    active: Arc<Mutex<ActiveWorlds>>,
    /// The socket's identity (every envelope is tagged with it).
    identity: Principal,
    user: Arc<Identity>,
    push: WsSender,
    worlds: HashMap<WorldId, Link>,
    audit: Arc<dyn ReplyAudit>,
}

/// An active world's connection to its destination.
struct Link {
    endpoint: Box<dyn WsEndpoint>,
    identity: Principal,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
    }
}

impl Socket {
    /// Activates `world` for `user` and opens its destination endpoint
    /// with the identity `(user, world)`; the cookie stays used only if
    /// that worked.
    ///
    /// Everything runs with the socket and its user's budget locked, so
    /// initiates racing on the user's other sockets cannot overshoot the
    /// limit, and one key racing on two sockets starts once (the key is
    /// claimed in [`ActiveWorlds`] in the same step as the count). In
    /// order: the cookie's use is marked in the user's set (so a racing
    /// initiate with the same cookie gets 409, and a user at its bound is
    /// refused alone), then the world is activated (socket state, key not
    /// active anywhere, the user's limit), then the endpoint is opened. A
    /// refusal undoes what came before it, so the initiate can be retried.
    fn start_world(
        this: &Arc<Mutex<Socket>>,
        user: &str,
        key: WorldKey,
        dest: &dyn Destination,
        once: Once,
    ) -> Result<(), StartError> {
        let world = key.id();
        let mut guard = lock(this);
        let s = &mut *guard;
        if s.user.user != user {
            return Err(StartError::OtherUser);
        }
        let mut user_budget = lock(&s.budget);
        user_budget
            .mark_used(once.epoch, once.oldest, once.nonce)
            .map_err(StartError::Used)?;
        let mut budget = HeldBudget {
            user: &mut user_budget,
            active: &s.active,
            socket: s.id,
        };
        if let Err(e) = s.session.activate_world(key, &mut budget) {
            budget.user.unmark_used(once.epoch, &once.nonce);
            return Err(StartError::Activate(e));
        }
        let identity: Principal = Some(Arc::new(Identity {
            world: Some(world.encode()),
            ..(*s.user).clone()
        }));
        let (push, mut pushed) = ws_push_queue();
        let upgrade = Upgrade {
            identity: identity.clone(),
            push,
            from: None,
        };
        let Some(endpoint) = dest.handle(Request::Upgrade(upgrade)).into_socket() else {
            s.session.forget_world(&world, &mut budget);
            budget.user.unmark_used(once.epoch, &once.nonce);
            return Err(StartError::NoWebSocket);
        };
        drop(user_budget);
        let weak = Arc::downgrade(this);
        let expected = identity.clone();
        let forwarder = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(async move {
                loop {
                    let p = pushed.recv().await;
                    let Some(s) = weak.upgrade() else { return };
                    let mut s = lock(&s);
                    match p {
                        Pushed::Message(m) => s.deliver(world, &expected, m),
                        // The destination let go of its sender: it will not
                        // push again (its replies still come back inline).
                        Pushed::Closed => return,
                        // It closed the world's "socket", or the world did
                        // not keep up: the world ends.
                        Pushed::Close { .. } | Pushed::Overflow | Pushed::Revoked => {
                            if s.worlds.contains_key(&world) {
                                let s = &mut *s;
                                let mut budget = SocketBudget {
                                    user: &s.budget,
                                    active: &s.active,
                                    socket: s.id,
                                };
                                let outs = s.session.end_world(world, &mut budget);
                                s.apply(outs);
                            }
                            return;
                        }
                    }
                }
            })
        });
        s.worlds.insert(
            world,
            Link {
                endpoint,
                identity,
                forwarder,
            },
        );
        Ok(())
    }

    /// A reply or push from `world`'s destination: the reply rule, then a
    /// `world` envelope for that world.
    fn deliver(&mut self, world: WorldId, expected: &Principal, m: Tagged<WsMessage>) {
        let whom = format_args!("socket {} world {world}", self.id);
        let Some(m) = enforce(expected, m, &*self.audit, Dropped::WorldReply, &whom) else {
            return;
        };
        let body = match m.msg {
            WsMessage::Text(t) => t.as_str().to_owned(),
            WsMessage::Binary(_) => {
                tracing::debug!(world = %world, "binary reply dropped (world bodies are text)");
                return;
            }
        };
        if let Some(out) = self.session.world_reply(world, body) {
            self.apply(vec![out]);
        }
    }

    /// Carries out the session's actions.
    fn apply(&mut self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Send(text) => {
                    let _ = self.push.push(Tagged::new(
                        self.identity.clone(),
                        WsMessage::Text(text.into()),
                    ));
                }
                Out::Forward { world, body } => {
                    let Some(link) = self.worlds.get_mut(&world) else {
                        continue;
                    };
                    let msg = Tagged::new(link.identity.clone(), WsMessage::Text(body.into()));
                    let expected = link.identity.clone();
                    if let Some(reply) = link.endpoint.on_message(msg) {
                        self.deliver(world, &expected, reply);
                    }
                }
                Out::EndWorld(world) => {
                    self.worlds.remove(&world);
                }
                Out::Close { code, reason } => {
                    let _ = self.push.close(code, reason);
                }
                Out::Illegal(e) => {
                    if ILLEGAL_LOG.may_log() {
                        tracing::warn!(socket = self.id, world = %e.world, error = %e, "illegal world transition");
                    }
                }
            }
        }
    }
}

/// The `/ws` endpoint of one session socket.
struct SessionSocket {
    shared: Arc<Shared>,
    socket: Arc<Mutex<Socket>>,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// Text messages of the current read, handled together at
    /// [`WsEndpoint::flush`] (their signatures verified as one batch).
    held: Vec<WsMessage>,
    held_bytes: usize,
}

/// At most this many messages, or bytes, wait for one batch.
const BATCH_MESSAGES: usize = 64;
const BATCH_BYTES: usize = 256 * 1024;

impl SessionSocket {
    /// Handles the held text messages, in order, as one batch.
    fn handle_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let texts: Vec<&str> = held
            .iter()
            .filter_map(|m| match m {
                WsMessage::Text(t) => Some(t.as_str()),
                WsMessage::Binary(_) => None,
            })
            .collect();
        let now = unix_now_ms();
        let mut guard = lock(&self.socket);
        let s = &mut *guard;
        let (binding, id) = (s.binding, s.id);
        let keys = &self.shared.keys;
        let mut seal = |world: &WorldId, command: &str| {
            let c = CookieContents {
                session: binding,
                socket: id,
                world: *world,
                command: command.to_owned(),
                issued_ms: now,
            };
            lock(keys).seal(&c, now).map(|b| super::b64_encode(&b))
        };
        // Each message's actions are carried out before the next is
        // handled: a world's reply is stamped after the message it answers
        // and before the next one's answer.
        for one in s.session.prepare(&texts) {
            let mut budget = SocketBudget {
                user: &s.budget,
                active: &s.active,
                socket: s.id,
            };
            let outs = s.session.on_prepared(one, now, &mut budget, &mut seal);
            s.apply(outs);
        }
    }
}

impl WsEndpoint for SessionSocket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        match msg.msg {
            text @ WsMessage::Text(_) => {
                self.held_bytes = self.held_bytes.saturating_add(text.len());
                self.held.push(text);
                if self.held.len() >= BATCH_MESSAGES || self.held_bytes >= BATCH_BYTES {
                    self.handle_held();
                }
            }
            WsMessage::Binary(_) => {
                self.handle_held();
                let outs = lock(&self.socket).session.on_binary();
                lock(&self.socket).apply(outs);
            }
        }
        // Every envelope goes through the push queue, in Lamport order.
        None
    }

    fn flush(&mut self) {
        self.handle_held();
    }
}

impl Drop for SessionSocket {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        let (id, user) = {
            let mut guard = lock(&self.socket);
            let s = &mut *guard;
            // Ends every world (given back to the user's budget, its key
            // freed): each one's Out::EndWorld drops its link.
            let mut budget = SocketBudget {
                user: &s.budget,
                active: &s.active,
                socket: s.id,
            };
            let outs = s.session.close(&mut budget);
            s.apply(outs);
            (s.id, Arc::clone(&s.user))
        };
        lock(&self.shared.sockets).remove(&id);
        lock(&self.shared.users).leave(&user.user, unix_now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;
    use serde_json::Value;
    use sigma_core::body::ClientInfo;
    use sigma_core::Provider;
    use sigma_core::{UpgradeRequest, WsReceiver};
    use sigma_http::Version;
    use std::sync::atomic::AtomicUsize;

    /// `&echo` that counts the endpoints it opened.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Destination for Counting {
        fn name(&self) -> &str {
            "&counting"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::HTTP_AND_WEBSOCKET
        }
        fn handle(&self, req: Request) -> Answer {
            match req {
                Request::Http(req) => Answer::Http(Handled::Ready(Tagged::new(
                    req.identity,
                    refuse(404, "none"),
                ))),
                Request::Upgrade(u) => {
                    self.0.fetch_add(1, Ordering::Relaxed);
                    crate::echo::Echo.handle(Request::Upgrade(u))
                }
                other => other.not_taken(),
            }
        }
    }

    /// The reply rule's audit of these tests: drops nothing silently.
    struct NoAudit;

    impl ReplyAudit for NoAudit {
        fn mismatch(&self, _: Dropped, _: &dyn std::fmt::Display) {}
    }

    /// A's reading of a bearer token, as far as these tests need it.
    fn bearer(head: &RequestHead) -> Option<&[u8]> {
        head.header("authorization")?.value.strip_prefix(b"Bearer ")
    }

    fn spec(name: &str, code: &str, users: Option<&[&str]>) -> WorldCommandSpec {
        WorldCommandSpec {
            name: name.into(),
            code: WorldCode::Builtin(code.into()),
            users: users.map(|u| u.iter().map(|&u| u.to_owned()).collect()),
        }
    }

    /// The default world commands (`chat`, `echo`) under the `[worlds]`
    /// table in `toml`.
    fn service(toml: &str) -> (WorldService, Arc<Counting>) {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            worlds: WorldsConfig,
        }
        let worlds = toml::from_str::<File>(toml).unwrap().worlds;
        let commands = [spec("chat", "chat", None), spec("echo", "echo", None)];
        service_of(&commands, &worlds)
    }

    fn service_of(
        commands: &[WorldCommandSpec],
        worlds: &WorldsConfig,
    ) -> (WorldService, Arc<Counting>) {
        service_on(commands, worlds, None)
    }

    fn service_on(
        commands: &[WorldCommandSpec],
        worlds: &WorldsConfig,
        relay: Option<Arc<dyn sigma_store::Relay>>,
    ) -> (WorldService, Arc<Counting>) {
        let svc = WorldService::new(commands, worlds, bearer, Arc::new(NoAudit), relay).unwrap();
        let counting = Arc::new(Counting::default());
        let targets = commands
            .iter()
            .map(|_| Arc::clone(&counting) as Arc<dyn Destination>)
            .collect();
        assert!(svc.shared.targets.set(targets).is_ok());
        (svc, counting)
    }

    fn head(target: String, token: &str) -> RequestHead {
        RequestHead {
            method: Method::Get,
            target: Bytes::from(target),
            version: Version::Http11,
            headers: vec![Header::new(
                &b"Authorization"[..],
                format!("Bearer {token}").into_bytes(),
            )],
            keep_alive: true,
            websocket: None,
        }
    }

    /// A session socket of `user`, authenticated by a bearer `token`.
    struct Client {
        ep: Box<dyn WsEndpoint>,
        rx: WsReceiver,
        identity: Principal,
        token: String,
        lamport: u64,
    }

    impl Client {
        fn open(svc: &WorldService, user: &str, token: &str) -> Self {
            let identity: Principal = Some(Arc::new(Identity {
                user: user.into(),
                // A token's identity, as A makes it.
                provider: Provider::Jwt("sigma".into()),
                world: None,
                session: None,
                groups: Vec::new(),
            }));
            let (push, rx) = ws_push_queue();
            let upgrade = Upgrade {
                identity: identity.clone(),
                push,
                from: Some(UpgradeRequest {
                    head: head("/ws".into(), token),
                    client: ClientInfo {
                        ip: std::net::Ipv4Addr::LOCALHOST.into(),
                        bearer: false,
                    },
                }),
            };
            let ep = svc.handle(Request::Upgrade(upgrade)).into_socket().unwrap();
            Self {
                ep,
                rx,
                identity,
                token: token.into(),
                lamport: 0,
            }
        }

        /// Sends `msg` (stamped), returns what the server pushed for it.
        fn send(&mut self, mut msg: Value) -> Vec<Value> {
            self.lamport += 1;
            msg["lamport"] = self.lamport.into();
            let text = WsMessage::Text(msg.to_string().into());
            assert!(self
                .ep
                .on_message(Tagged::new(self.identity.clone(), text))
                .is_none());
            self.ep.flush();
            let mut out = Vec::new();
            while let Some(Pushed::Message(m)) = self.rx.try_recv() {
                let WsMessage::Text(t) = m.msg else {
                    panic!("binary")
                };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                self.lamport = self.lamport.max(v["lamport"].as_u64().unwrap());
                out.push(v);
            }
            out
        }

        /// A world message of `key`'s world with `body`, signed: what the
        /// server pushed for it.
        fn world(&mut self, key: &SigningKey, body: &str) -> Vec<Value> {
            let world = WorldId(key.verifying_key().to_bytes()).encode();
            let lamport = self.lamport + 1;
            let sig = key
                .sign(&envelope::signed_bytes(&world, lamport, body))
                .to_bytes();
            self.send(json!({"type": "world", "world": world, "body": body,
                "sig": super::super::b64_encode(&sig)}))
        }

        fn hello(&mut self) -> Value {
            self.send(json!({"type": "hello"})).remove(0)
        }

        fn fork(&mut self, key: &SigningKey, command: &str) -> Value {
            let world = WorldId(key.verifying_key().to_bytes()).encode();
            self.send(json!({"type": "fork", "world": world, "command": command}))
                .remove(0)
        }

        /// `GET /world/<command>.js` with a signed initiate.
        fn initiate(
            &self,
            svc: &WorldService,
            key: &SigningKey,
            command: &str,
            cookie: &str,
        ) -> (u16, Value) {
            initiate(svc, &self.identity, &self.token, key, command, cookie)
        }
    }

    /// `GET /world/<command>.js` with a signed initiate, as `identity`
    /// with the bearer `token`.
    fn initiate(
        svc: &WorldService,
        identity: &Principal,
        token: &str,
        key: &SigningKey,
        command: &str,
        cookie: &str,
    ) -> (u16, Value) {
        let world = WorldId(key.verifying_key().to_bytes()).encode();
        let initiate = json!({"cookie": cookie, "world": world, "command": command})
            .to_string()
            .into_bytes();
        let sig = key.sign(&initiate).to_bytes();
        let target = format!(
            "/world/{command}.js?initiate={}&sig={}",
            super::super::b64_encode(&initiate),
            super::super::b64_encode(&sig)
        );
        let handled = svc
            .shared
            .initiate(identity, &head(target, token), unix_now_ms());
        let resp = match handled {
            Handled::Ready(r) => r.msg,
            // The test relay answers at once.
            Handled::Later(f) => futures_util::FutureExt::now_or_never(f).unwrap().msg,
        };
        let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, body)
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// `echo` for everyone, `secret` for alice, `team` reusing a
    /// `/team` `&broadcast` route only alice may use (so alice only).
    fn worlds_service() -> (WorldService, Arc<Counting>) {
        let commands = [
            spec("echo", "echo", None),
            spec("secret", "echo", Some(&["alice"])),
            spec("team", "chat", Some(&["alice"])),
        ];
        service_of(&commands, &WorldsConfig::default())
    }

    #[test]
    fn commands_are_offered_and_accepted_only_for_their_users() {
        let (svc, _) = worlds_service();
        let names = |welcome: &Value| -> Vec<String> {
            welcome["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let mut alice = Client::open(&svc, "alice", "tok-alice");
        assert_eq!(names(&alice.hello()), ["echo", "secret", "team"]);
        let mut bob = Client::open(&svc, "bob", "tok-bob");
        // `team` inherits the users of the /team route it reuses.
        assert_eq!(names(&bob.hello()), ["echo"]);
        for command in ["secret", "team"] {
            let r = bob.fork(&key(1), command);
            assert_eq!(
                (&r["type"], &r["reason"]),
                (&json!("fork-refused"), &json!("unknown_command"))
            );
            // Even with a cookie alice got, bob's initiate is refused before it is opened.
            let r = alice.fork(&key(2), command);
            assert_eq!(r["type"], "fork-cookie");
            let (status, body) =
                bob.initiate(&svc, &key(2), command, r["cookie"].as_str().unwrap());
            assert_eq!((status, &body["error"]), (404, &json!("unknown_command")));
        }
        let r = bob.fork(&key(3), "echo");
        assert_eq!(r["type"], "fork-cookie");
        let (status, _) = bob.initiate(&svc, &key(3), "echo", r["cookie"].as_str().unwrap());
        assert_eq!(status, 200);
        let r = alice.fork(&key(4), "secret");
        let (status, _) = alice.initiate(&svc, &key(4), "secret", r["cookie"].as_str().unwrap());
        assert_eq!(status, 200);
    }

    #[test]
    fn a_refused_initiate_opens_nothing_and_keeps_its_cookie() {
        let (svc, opened) = service("[worlds]\nmax_per_user = 1\n");
        let mut c = Client::open(&svc, "alice", "tok");
        c.hello();
        let (k1, k2) = (key(1), key(2));
        let c1 = c.fork(&k1, "echo")["cookie"].as_str().unwrap().to_owned();
        let c2 = c.fork(&k2, "echo")["cookie"].as_str().unwrap().to_owned();
        assert_eq!(c.initiate(&svc, &k1, "echo", &c1).0, 200);
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        // The limit: refused before the destination is opened, and the
        // cookie is not spent, so the same initiate can be retried.
        for _ in 0..2 {
            let (status, body) = c.initiate(&svc, &k2, "echo", &c2);
            assert_eq!((status, &body["error"]), (429, &json!("world_limit")));
        }
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        let w1 = WorldId(k1.verifying_key().to_bytes()).encode();
        assert_eq!(
            c.send(json!({"type": "disconnect", "world": w1}))[0]["type"],
            "disconnect"
        );
        assert_eq!(c.initiate(&svc, &k2, "echo", &c2).0, 200);
        assert_eq!(opened.0.load(Ordering::Relaxed), 2);
        // Used once it started: a replay is 409, and opens nothing.
        let (status, body) = c.initiate(&svc, &k2, "echo", &c2);
        assert_eq!((status, &body["error"]), (409, &json!("replayed")));
        let (status, body) = c.initiate(&svc, &k1, "echo", &c1);
        assert_eq!((status, &body["error"]), (409, &json!("replayed")));
        assert_eq!(opened.0.load(Ordering::Relaxed), 2);
    }

    fn cookie(reply: &Value) -> String {
        assert_eq!(reply["type"], "fork-cookie", "{reply}");
        reply["cookie"].as_str().unwrap().to_owned()
    }

    fn users(svc: &WorldService) -> usize {
        lock(&svc.shared.users).len()
    }

    /// The budget of `user` (tracked: it has a socket open).
    fn budget_of(svc: &WorldService, user: &str) -> Arc<Mutex<UserBudget>> {
        let mut users = lock(&svc.shared.users);
        let b = users.join(user, unix_now_ms()).unwrap();
        users.leave(user, unix_now_ms());
        b
    }

    fn refused(reply: &Value) -> &str {
        assert_eq!(reply["type"], "fork-refused", "{reply}");
        reply["reason"].as_str().unwrap()
    }

    #[test]
    fn sockets_and_tokens_of_one_user_share_its_limit_and_rate() {
        let (svc, opened) = service("[worlds]\nmax_per_user = 2\nforks_per_minute = 3\n");
        // Two sockets of one bearer token, one of another token of alice,
        // and one of bob.
        let mut a1 = Client::open(&svc, "alice", "tok-1");
        let mut a2 = Client::open(&svc, "alice", "tok-1");
        let mut a3 = Client::open(&svc, "alice", "tok-2");
        let mut bob = Client::open(&svc, "bob", "tok-b");
        for c in [&mut a1, &mut a2, &mut a3, &mut bob] {
            c.hello();
        }
        assert_eq!(users(&svc), 2);
        let k = key;
        // The rate: three forks for alice, whichever token or socket.
        let c1 = cookie(&a1.fork(&k(1), "echo"));
        let c2 = cookie(&a2.fork(&k(2), "echo"));
        let c3 = cookie(&a3.fork(&k(3), "echo"));
        assert_eq!(refused(&a3.fork(&k(4), "echo")), "rate");
        assert_eq!(refused(&a1.fork(&k(4), "echo")), "rate");
        // Bob is not affected.
        let c4 = cookie(&bob.fork(&k(4), "echo"));
        // The limit: two worlds for alice; the third initiate, on the
        // other token, is refused and opens nothing.
        assert_eq!(a1.initiate(&svc, &k(1), "echo", &c1).0, 200);
        assert_eq!(a2.initiate(&svc, &k(2), "echo", &c2).0, 200);
        let (status, body) = a3.initiate(&svc, &k(3), "echo", &c3);
        assert_eq!((status, &body["error"]), (429, &json!("world_limit")));
        assert_eq!(bob.initiate(&svc, &k(4), "echo", &c4).0, 200);
        assert_eq!(opened.0.load(Ordering::Relaxed), 3);
        // A world of a2 ends: a3 may start its world.
        let w2 = WorldId(k(2).verifying_key().to_bytes()).encode();
        assert_eq!(
            a2.send(json!({"type": "disconnect", "world": w2}))[0]["type"],
            "disconnect"
        );
        assert_eq!(a3.initiate(&svc, &k(3), "echo", &c3).0, 200);
        assert_eq!(lock(&budget_of(&svc, "alice")).worlds(), 2);
        // Closing sockets gives their worlds back.
        drop(a1);
        drop(a3);
        assert_eq!(lock(&budget_of(&svc, "alice")).worlds(), 0);
    }

    #[test]
    fn reconnecting_does_not_refill_the_fork_budget() {
        let (svc, _) = service("[worlds]\nforks_per_minute = 2\n");
        let mut a = Client::open(&svc, "alice", "tok-1");
        a.hello();
        cookie(&a.fork(&key(1), "echo"));
        cookie(&a.fork(&key(2), "echo"));
        assert_eq!(refused(&a.fork(&key(3), "echo")), "rate");
        drop(a);
        // Alice has no socket, but her bucket is not full again: kept.
        assert_eq!(users(&svc), 1);
        for token in ["tok-1", "tok-2"] {
            let mut again = Client::open(&svc, "alice", token);
            again.hello();
            assert_eq!(refused(&again.fork(&key(3), "echo")), "rate");
        }
        // Once the bucket is full again (a minute later) the entry can go.
        lock(&svc.shared.users).sweep(unix_now_ms() + 60_000);
        assert_eq!(users(&svc), 0);
    }

    #[test]
    fn a_world_key_is_active_once_on_the_server() {
        let (svc, opened) = service("");
        let mut a1 = Client::open(&svc, "alice", "tok-1");
        let mut a2 = Client::open(&svc, "alice", "tok-2");
        let mut bob = Client::open(&svc, "bob", "tok-b");
        for c in [&mut a1, &mut a2, &mut bob] {
            c.hello();
        }
        let k = key(1);
        // Cookies for one key on three sockets, before any is active.
        let c1 = cookie(&a1.fork(&k, "echo"));
        let c2 = cookie(&a2.fork(&k, "echo"));
        let cb = cookie(&bob.fork(&k, "echo"));
        assert_eq!(a1.initiate(&svc, &k, "echo", &c1).0, 200);
        // Active on a1: refused for another socket of alice and for bob,
        // at fork and at initiate, and nothing is opened.
        for c in [&mut a2, &mut bob] {
            assert_eq!(refused(&c.fork(&k, "echo")), "active");
        }
        for (c, ck) in [(&a2, &c2), (&bob, &cb)] {
            let (status, body) = c.initiate(&svc, &k, "echo", ck);
            assert_eq!((status, &body["error"]), (409, &json!("already_active")));
        }
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        assert_eq!(lock(&budget_of(&svc, "bob")).worlds(), 0);
        // The world ends on a1 (a disconnect): bob's cookie, not spent by
        // the refusal, starts it on his socket.
        let w = WorldId(k.verifying_key().to_bytes()).encode();
        a1.send(json!({"type": "disconnect", "world": w}));
        assert_eq!(bob.initiate(&svc, &k, "echo", &cb).0, 200);
        assert_eq!(refused(&a1.fork(&k, "echo")), "active");
        // Bob's socket closes: the key is free again.
        drop(bob);
        assert!(lock(&svc.shared.active).is_empty());
        assert_eq!(a2.initiate(&svc, &k, "echo", &c2).0, 200);
    }

    #[test]
    fn racing_initiates_of_one_key_on_two_users_start_it_once() {
        let (svc, opened) = service("");
        let mut socks = [
            Client::open(&svc, "alice", "tok-a"),
            Client::open(&svc, "bob", "tok-b"),
        ];
        for c in &mut socks {
            c.hello();
        }
        let k = key(7);
        let forks: Vec<_> = socks
            .iter_mut()
            .map(|c| {
                (
                    c.identity.clone(),
                    c.token.clone(),
                    cookie(&c.fork(&k, "echo")),
                )
            })
            .collect();
        let barrier = std::sync::Barrier::new(forks.len());
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = forks
                .iter()
                .map(|(identity, token, cookie)| {
                    let (svc, barrier, k) = (&svc, &barrier, &k);
                    scope.spawn(move || {
                        barrier.wait();
                        initiate(svc, identity, token, k, "echo", cookie).0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [200, 409], "{statuses:?}");
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        assert_eq!(lock(&svc.shared.active).len(), 1);
    }

    #[test]
    fn racing_initiates_on_sockets_of_one_user_stay_within_the_limit() {
        let (svc, opened) = service("[worlds]\nmax_per_user = 3\nforks_per_minute = 60\n");
        // Eight cookies, four forked on each of two sockets of alice (two
        // bearer tokens), whose limit is three worlds; all initiated at once.
        let mut socks = [
            Client::open(&svc, "alice", "tok-1"),
            Client::open(&svc, "alice", "tok-2"),
        ];
        for c in &mut socks {
            c.hello();
        }
        let mut forks = Vec::new();
        for n in 1..=8u8 {
            let c = &mut socks[usize::from(n % 2)];
            forks.push((
                c.identity.clone(),
                c.token.clone(),
                key(n),
                cookie(&c.fork(&key(n), "echo")),
            ));
        }
        let barrier = std::sync::Barrier::new(forks.len());
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = forks
                .iter()
                .map(|(identity, token, k, cookie)| {
                    let (svc, barrier) = (&svc, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        initiate(svc, identity, token, k, "echo", cookie).0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let count = |status| statuses.iter().filter(|s| **s == status).count();
        assert_eq!((count(200), count(429)), (3, 5), "{statuses:?}");
        assert_eq!(opened.0.load(Ordering::Relaxed), 3);
        assert_eq!(lock(&budget_of(&svc, "alice")).worlds(), 3);
    }

    #[test]
    fn a_user_at_its_used_cookie_bound_is_refused_alone() {
        let (svc, opened) = service("[worlds]\nmax_used_per_user = 1\n");
        let mut a = Client::open(&svc, "alice", "tok");
        let mut bob = Client::open(&svc, "bob", "tok-b");
        a.hello();
        bob.hello();
        let (k1, k2) = (key(1), key(2));
        let c1 = cookie(&a.fork(&k1, "echo"));
        let c2 = cookie(&a.fork(&k2, "echo"));
        assert_eq!(a.initiate(&svc, &k1, "echo", &c1).0, 200);
        let (status, body) = a.initiate(&svc, &k2, "echo", &c2);
        assert_eq!((status, &body["error"]), (429, &json!("world_rate")));
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        // The used cookie is still remembered.
        let (status, body) = a.initiate(&svc, &k1, "echo", &c1);
        assert_eq!((status, &body["error"]), (409, &json!("replayed")));
        assert_eq!(lock(&budget_of(&svc, "alice")).used(), 1);
        // Bob has a set of his own.
        let (k3, k4) = (key(3), key(4));
        let c3 = cookie(&bob.fork(&k3, "echo"));
        assert_eq!(bob.initiate(&svc, &k3, "echo", &c3).0, 200);
        let c4 = cookie(&bob.fork(&k4, "echo"));
        assert_eq!(bob.initiate(&svc, &k4, "echo", &c4).0, 429);
        assert_eq!(opened.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn beyond_max_users_a_new_users_socket_is_closed_1013() {
        let (svc, _) = service("[worlds]\nmax_users = 1\n");
        let mut a = Client::open(&svc, "alice", "tok");
        a.hello();
        let mut bob = Client::open(&svc, "bob", "tok-b");
        assert!(matches!(
            bob.rx.try_recv(),
            Some(Pushed::Close { code: 1013, .. })
        ));
        assert_eq!(users(&svc), 1);
        // Alice, tracked already, may open more.
        let mut a2 = Client::open(&svc, "alice", "tok-2");
        assert_eq!(a2.hello()["type"], "welcome");
        // Once alice is gone (and her bucket full, as she forked nothing),
        // bob gets in.
        drop(a);
        drop(a2);
        let mut bob = Client::open(&svc, "bob", "tok-b");
        assert_eq!(bob.hello()["type"], "welcome");
    }

    /// Answers every world message as someone else (`null`).
    struct Crossed;

    impl WsEndpoint for Crossed {
        fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
            Some(Tagged::new(None, msg.msg))
        }
    }

    impl Destination for Crossed {
        fn name(&self) -> &str {
            "&crossed"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::HTTP_AND_WEBSOCKET
        }
        fn handle(&self, req: Request) -> Answer {
            match req {
                Request::Upgrade(_) => Answer::Socket(Box::new(Crossed)),
                other => other.not_taken(),
            }
        }
    }

    /// A world's reply with another identity is dropped and counted in
    /// `identity_mismatch`, as every other stage's (one policy).
    #[test]
    fn a_worlds_crossed_reply_is_dropped_and_counted() {
        /// Counts the mismatches the world service reports.
        #[derive(Default)]
        struct Mismatches(std::sync::atomic::AtomicU64);
        impl ReplyAudit for Mismatches {
            fn mismatch(&self, _: Dropped, _: &dyn std::fmt::Display) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let commands = [spec("chat", "chat", None), spec("echo", "echo", None)];
        let audit = Arc::new(Mismatches::default());
        let svc = WorldService::new(
            &commands,
            &WorldsConfig::default(),
            bearer,
            Arc::clone(&audit) as Arc<dyn ReplyAudit>,
            None,
        )
        .unwrap();
        let targets = commands
            .iter()
            .map(|_| Arc::new(Crossed) as Arc<dyn Destination>)
            .collect();
        assert!(svc.shared.targets.set(targets).is_ok());
        let mut c = Client::open(&svc, "alice", "tok");
        c.hello();
        let k = key(1);
        let cookie = c.fork(&k, "echo")["cookie"].as_str().unwrap().to_owned();
        assert_eq!(c.initiate(&svc, &k, "echo", &cookie).0, 200);
        let pushed = c.world(&k, "hi");
        assert!(
            pushed.iter().all(|v| v["type"] != "world"),
            "a crossed reply reached the client: {pushed:?}"
        );
        assert_eq!(audit.0.load(Ordering::Relaxed), 1);
    }

    /// The nodes of a test cluster: each ask is answered at once, in
    /// process, by the node it names.
    #[derive(Default)]
    struct Net(Mutex<HashMap<u64, Weak<dyn sigma_store::Answerer>>>);

    struct TestRelay {
        node: u64,
        net: Arc<Net>,
    }

    impl sigma_store::Relay for TestRelay {
        fn node(&self) -> u64 {
            self.node
        }
        fn ask(&self, node: u64, topic: &str, request: Bytes) -> sigma_store::AskFuture {
            assert_eq!(topic, super::super::forward::TOPIC);
            let handler = lock(&self.net.0).get(&node).and_then(Weak::upgrade);
            let answer = match handler {
                Some(h) => Ok(h.answer(&request)),
                None => Err(sigma_store::AskError::NoNode),
            };
            Box::pin(async move { answer })
        }
        fn serve(&self, _: &str, handler: Weak<dyn sigma_store::Answerer>) {
            lock(&self.net.0).insert(self.node, handler);
        }
    }

    fn node_of(net: &Arc<Net>, node: u64, worlds: &WorldsConfig) -> (WorldService, Arc<Counting>) {
        let relay = TestRelay {
            node,
            net: Arc::clone(net),
        };
        let commands = [spec("chat", "chat", None), spec("echo", "echo", None)];
        service_on(&commands, worlds, Some(Arc::new(relay)))
    }

    #[test]
    fn an_initiate_on_another_node_starts_the_world_on_the_forking_socket() {
        let net = Arc::new(Net::default());
        let (a, opened_a) = node_of(&net, 1, &WorldsConfig::default());
        let (b, opened_b) = node_of(&net, 2, &WorldsConfig::default());
        let mut c = Client::open(&a, "alice", "tok");
        c.hello();
        let k = key(1);
        let ck = cookie(&c.fork(&k, "echo"));
        assert_eq!(
            super::super::cookie::node_of(&super::super::b64_decode(&ck).unwrap()),
            Some(1)
        );
        // The worker's fetch lands on node 2: the world starts on node 1's
        // socket, node 2 serves the code.
        let (status, _) = c.initiate(&b, &k, "echo", &ck);
        assert_eq!(status, 200);
        assert_eq!(opened_a.0.load(Ordering::Relaxed), 1);
        assert_eq!(opened_b.0.load(Ordering::Relaxed), 0);
        // It runs there: a signed world message is echoed on the socket.
        let pushed = c.world(&k, "hi");
        assert!(
            pushed
                .iter()
                .any(|v| v["type"] == "world" && v["body"] == "hi"),
            "{pushed:?}"
        );
        // Single use across nodes: a replay on either node is 409.
        for node in [&b, &a] {
            let (status, body) = c.initiate(node, &k, "echo", &ck);
            assert_eq!((status, &body["error"]), (409, &json!("replayed")));
        }
        assert_eq!(opened_a.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_forwarded_initiate_is_refused_as_a_local_one_would_be() {
        let net = Arc::new(Net::default());
        let limits = WorldsConfig {
            max_per_user: 1,
            ..WorldsConfig::default()
        };
        let (a, opened) = node_of(&net, 1, &limits);
        let (b, _) = node_of(&net, 2, &limits);
        let mut alice = Client::open(&a, "alice", "tok-a");
        let mut bob = Client::open(&b, "bob", "tok-b");
        alice.hello();
        bob.hello();
        let (k1, k2) = (key(1), key(2));
        let c1 = cookie(&alice.fork(&k1, "echo"));
        let c2 = cookie(&alice.fork(&k2, "echo"));
        let c3 = cookie(&alice.fork(&key(3), "echo"));
        // Another session (bob's token) with alice's cookie: the cookie's
        // node finds the binding wrong.
        let (status, body) = bob.initiate(&b, &k1, "echo", &c1);
        assert_eq!((status, &body["error"]), (403, &json!("bad_cookie")));
        // Another world's initiate with this cookie (signed by its own
        // key): the cookie's node finds the world wrong.
        let (status, body) = initiate(&b, &alice.identity, "tok-a", &k2, "echo", &c1);
        assert_eq!((status, &body["error"]), (403, &json!("bad_cookie")));
        assert_eq!(alice.initiate(&b, &k1, "echo", &c1).0, 200);
        // The user's limit, counted on the socket's node.
        let (status, body) = alice.initiate(&b, &k2, "echo", &c2);
        assert_eq!((status, &body["error"]), (429, &json!("world_limit")));
        assert_eq!(opened.0.load(Ordering::Relaxed), 1);
        // A cookie of a node that is gone: 503, retry later.
        lock(&net.0).remove(&1);
        let (status, body) = alice.initiate(&b, &key(3), "echo", &c3);
        assert_eq!(
            (status, &body["error"]),
            (503, &json!("world_node_unavailable"))
        );
        // A cookie whose node tag was changed to this node opens nowhere.
        let mut moved = super::super::b64_decode(&c2).unwrap();
        moved[..8].copy_from_slice(&2u64.to_be_bytes());
        let (status, body) = alice.initiate(&b, &k2, "echo", &super::super::b64_encode(&moved));
        assert_eq!((status, &body["error"]), (403, &json!("bad_cookie")));
    }
}
