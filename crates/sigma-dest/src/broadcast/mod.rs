//! `&broadcast`: the built-in pub/sub hub (DESIGN §6; wire format §9).
//!
//! ```text
//!  socket ──subscribe/publish──▶ [ Broadcast ] ──▶ Hub ──▶ channel "public:chat"
//!  POST <route>/<channel> ──────▶ [           ]            seq, subscribers
//!                                                            │ one encoded message,
//!  socket ◀── WsSender (bounded push queue) ◀────────────────┘ shared by all
//! ```
//!
//! Clients speak JSON text frames over WebSocket: `subscribe`, `unsubscribe`
//! and `publish` (with `data`, any JSON value); sigma answers `subscribed`,
//! delivers `message`s carrying the channel's `seq` and the publisher's
//! identity `from` (as `A` attached it, never as the client claims it), and
//! reports problems with `error` (the socket stays open). Over HTTP,
//! `POST <route>/<channel>` with a JSON body publishes and answers
//! `202 {"seq": N}`.
//!
//! **Channels** are named by 1–128 characters of `[A-Za-z0-9:_.@-]` (`@`
//! besides the documented set, because user names may contain it and
//! `user:{user}:*` must work for every user). A channel exists while it has
//! subscribers: its sequence number starts at 1 when it is (re)created, and
//! a publish to a channel nobody subscribes to reaches no one and answers
//! `seq` 0 (no number is used, no state is kept: a client cannot grow the
//! hub by publishing to made-up channels). That is the in-process broker;
//! with `[cluster] redis` the broker is Redis ([`sigma_store::RedisBroker`]):
//! one `seq` per channel across all nodes, given to every publish, since
//! another node may have subscribers.
//!
//! **Permissions** ([`Rules`]): the first rule whose pattern matches the
//! channel decides; configured rules come before the built-in ones, and a
//! channel no rule matches is refused. Built in: `public:*`, anyone logged
//! in may subscribe and publish; `user:{user}:*`, only that user, both
//! directions. Anonymous clients (identity `null`) may do neither by
//! default, since DESIGN §6 says "anyone logged in"; a configured rule can
//! open a channel to them ([`Access::Anyone`]). A refusal is the error
//! `forbidden` over WebSocket, `403` over HTTP (also for anonymous callers:
//! the answer is about the channel, not about the route, which `A` already
//! admitted).
//!
//! **Fan-out and locking.** The channel map is behind a `RwLock` taken only
//! to look a channel up (read) or to create/remove one (write), never while
//! delivering. Each channel has its own `Mutex` holding its `seq` and
//! subscribers. A publish encodes the message once into a shared
//! [`Utf8Bytes`] (every subscriber's push holds a reference-counted clone of
//! the same buffer), then, under the channel's lock, takes the next `seq`
//! and pushes to every subscriber. That lock is held during the pushes on
//! purpose: [`WsSender::push`] is a non-blocking `try_send` (no await, no
//! socket write: the connection tasks write), and pushing under the lock is
//! what makes every subscriber see a channel's messages in `seq` order even
//! when several publishers race. A subscriber whose queue is full
//! ([`PushError::SlowConsumer`]: its socket is being closed with 1008) or
//! gone is removed from every channel it joined once the lock is released;
//! the others are unaffected. A channel left without subscribers is removed.
//!
//! **Size.** A publish's `data`, encoded as sigma delivers it (compact
//! JSON), is at most [`Settings::max_message`] bytes (`[broadcast]
//! max_message`, default 1 MiB, never above `websocket.max_outbound`);
//! beyond it the publish is refused before anything is encoded or
//! delivered: error `message_too_large` over WebSocket (the socket stays
//! open), `413 {"error":"message_too_large","max_message":N}` over HTTP.
//! The route's body limit is [`publish_body_limit`], so `T`/`H` never
//! buffer a body much larger than a publish can be (a body past it gets
//! the route's plain 413 and the connection closes, its rest unread).
//!
//! **The reply rule.** Every delivery is tagged with the *subscriber's*
//! identity (the one its socket was opened with), every answer to a client
//! message with that message's identity, every HTTP answer with the
//! request's: `A` checks each of them.
//!
//! Configuration: the rules and the per-socket subscription limit are
//! [`Settings`], from the `[broadcast]` table of `sigma.toml`
//! ([`crate::broadcast::config::BroadcastConfig`]); every `&broadcast` route gets its
//! own hub with them.

pub mod config;
mod joins;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use futures_util::FutureExt;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sigma_core::response::{json_error, json_error_with, json_response};
use sigma_core::{Principal, Tagged};
use sigma_http::{Header, Method, Response, Utf8Bytes, WsMessage};

use sigma_store::{Broker, BrokerHandler, Keep, MemoryBroker, Publication};

use sigma_core::{
    Answer, Capabilities, Destination, Handled, HttpRequest, PushError, Request, Streamed,
    WsEndpoint, WsReceiver, WsSender,
};

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Channels one socket may subscribe to at once, by default.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// The largest encoded `data` of one publish, by default (1 MiB; DESIGN
/// §6: never above `websocket.max_outbound`, see
/// [`crate::broadcast::config::BroadcastConfig`]).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// What an HTTP publish body may hold beyond [`Settings::max_message`]:
/// the body is the `data` as the client wrote it, which may carry
/// whitespace or spellings (`1e3`, `"\u0041"`) longer or shorter than
/// sigma's encoding. A body within this much is parsed and measured (a
/// JSON 413 `message_too_large` if its data is too large); a longer one
/// is refused by the route's body limit before it is buffered
/// ([`publish_body_limit`]).
pub const PUBLISH_BODY_SLACK: usize = 16 << 10;

/// The body limit of a `&broadcast` route whose hub takes `max_message`:
/// a publish never needs more.
pub fn publish_body_limit(max_message: usize) -> u64 {
    u64::try_from(max_message.saturating_add(PUBLISH_BODY_SLACK)).unwrap_or(u64::MAX)
}

/// True for a valid channel name: 1–[`MAX_CHANNEL_LEN`] characters of
/// `[A-Za-z0-9:_.@-]`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && name.bytes().all(channel_byte)
}

fn channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'@')
}

// ---------------------------------------------------------------------------
// Permissions.

/// Who may do something on the channels a [`Rule`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everyone, anonymous clients included.
    Anyone,
    /// Any authenticated user.
    LoggedIn,
    /// Only these users.
    Users(Vec<String>),
    /// No one.
    Nobody,
}

impl Access {
    fn allows(&self, identity: &Principal) -> bool {
        match (self, identity) {
            (Self::Anyone, _) => true,
            (Self::LoggedIn, id) => id.is_some(),
            (Self::Users(users), Some(id)) => users.iter().any(|u| u == &id.user),
            (Self::Users(_), None) | (Self::Nobody, _) => false,
        }
    }
}

/// What a client wants to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Receive its messages.
    Subscribe,
    /// Send a message to it.
    Publish,
    /// See who is subscribed.
    Presence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(String),
    /// Any run of characters, possibly empty.
    Star,
    /// Exactly the caller's user name (never matches anonymous callers).
    User,
}

/// A channel pattern: channel characters, `*` (any run of characters,
/// possibly empty) and `{user}` (exactly the caller's user name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Pattern {
    /// Parses a pattern such as `public:*` or `user:{user}:*`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() || pattern.len() > MAX_CHANNEL_LEN {
            return Err(err("it must be 1 to 128 characters long"));
        }
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{user}") {
                flush(&mut lit, &mut tokens);
                tokens.push(Token::User);
                rest = after;
                continue;
            }
            match c {
                '*' => {
                    flush(&mut lit, &mut tokens);
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                c if c.is_ascii() && channel_byte(c as u8) => lit.push(c),
                _ => {
                    return Err(err(
                        "allowed are channel characters [A-Za-z0-9:_.@-], `*` and `{user}`",
                    ))
                }
            }
            rest = rest.get(c.len_utf8()..).unwrap_or_default();
        }
        flush(&mut lit, &mut tokens);
        Ok(Self {
            text: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `channel` matches for a caller named `user`.
    pub fn matches(&self, channel: &str, user: Option<&str>) -> bool {
        // `{user}` stands for one whole name: a name that could itself span
        // a `:` (or is not made of channel characters) never matches.
        let user = user.filter(|u| !u.contains(':') && valid_channel(u));
        match_tokens(&self.tokens, channel, user)
    }
}

fn flush(lit: &mut String, tokens: &mut Vec<Token>) {
    if !lit.is_empty() {
        tokens.push(Token::Lit(std::mem::take(lit)));
    }
}

fn match_tokens(tokens: &[Token], s: &str, user: Option<&str>) -> bool {
    match tokens.split_first() {
        None => s.is_empty(),
        Some((Token::Lit(l), rest)) => s
            .strip_prefix(l.as_str())
            .is_some_and(|r| match_tokens(rest, r, user)),
        Some((Token::User, rest)) => user
            .and_then(|u| s.strip_prefix(u))
            .is_some_and(|r| match_tokens(rest, r, user)),
        Some((Token::Star, rest)) => {
            rest.is_empty()
                || (0..=s.len())
                    .filter_map(|i| s.get(i..))
                    .any(|r| match_tokens(rest, r, user))
        }
    }
}

/// One channel rule: on the channels matching `pattern`, who may
/// subscribe, publish and see presence, what history is kept and whether
/// subscribers hear joins and leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The channels it covers.
    pub pattern: Pattern,
    /// Who may subscribe (and read the history).
    pub subscribe: Access,
    /// Who may publish.
    pub publish: Access,
    /// Who may ask who is subscribed.
    pub presence: Access,
    /// What history each channel keeps.
    pub history: Keep,
    /// Subscribers get `join` and `leave` messages.
    pub join_leave: bool,
}

/// The history a channel keeps unless its rule says otherwise: its last
/// 100 publications, each for 5 minutes (DESIGN §6).
pub const DEFAULT_HISTORY: Keep = Keep {
    size: 100,
    ttl: std::time::Duration::from_secs(300),
};

/// The permission rules of a hub: configured rules first, then the
/// built-in ones ([`Rules::builtin`]); the first match decides; no match
/// refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// `public:*` (anyone logged in) and `user:{user}:*` (only that user).
    pub fn builtin() -> Vec<Rule> {
        let rule = |p: &str| Rule {
            pattern: Pattern {
                text: p.to_owned(),
                tokens: match p {
                    "public:*" => vec![Token::Lit("public:".into()), Token::Star],
                    _ => vec![
                        Token::Lit("user:".into()),
                        Token::User,
                        Token::Lit(":".into()),
                        Token::Star,
                    ],
                },
            },
            subscribe: Access::LoggedIn,
            publish: Access::LoggedIn,
            presence: Access::LoggedIn,
            history: DEFAULT_HISTORY,
            join_leave: false,
        };
        vec![rule("public:*"), rule("user:{user}:*")]
    }

    /// `configured` rules, then the built-in ones.
    pub fn new(configured: Vec<Rule>) -> Self {
        let mut rules = configured;
        rules.extend(Self::builtin());
        Self { rules }
    }

    /// The rule that decides for `identity` on `channel`.
    pub fn find(&self, identity: &Principal, channel: &str) -> Option<&Rule> {
        let user = identity.as_deref().map(|id| id.user.as_str());
        self.rules.iter().find(|r| r.pattern.matches(channel, user))
    }

    /// Whether `identity` may do `op` on `channel`.
    pub fn allows(&self, identity: &Principal, channel: &str, op: Op) -> bool {
        self.find(identity, channel)
            .is_some_and(|r| r.access(op).allows(identity))
    }

    /// Replaces the built-in rules' history and joins/leaves (the
    /// `[broadcast]` defaults).
    fn with_builtin_defaults(mut self, history: Keep, join_leave: bool) -> Self {
        let n = Self::builtin().len();
        let first = self.rules.len().saturating_sub(n);
        for r in self.rules.iter_mut().skip(first) {
            r.history = history;
            r.join_leave = join_leave;
        }
        self
    }
}

impl Rule {
    /// Who may do `op`.
    pub fn access(&self, op: Op) -> &Access {
        match op {
            Op::Subscribe => &self.subscribe,
            Op::Publish => &self.publish,
            Op::Presence => &self.presence,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// How a hub is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Permission rules.
    pub rules: Rules,
    /// Channels one socket may subscribe to at once.
    pub max_subscriptions: usize,
    /// The largest encoded `data` of one publish, in bytes.
    pub max_message: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rules: Rules::default(),
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

// ---------------------------------------------------------------------------
// The hub.

/// Why the hub refused a request; `code` is the wire format's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The channel name is invalid (`bad_channel`).
    BadChannel,
    /// The rules do not allow it (`forbidden`).
    Forbidden,
    /// The socket has [`Settings::max_subscriptions`] channels already
    /// (`too_many_subscriptions`).
    TooManySubscriptions,
    /// The socket is being closed for not keeping up (`slow_consumer`).
    SlowConsumer,
    /// The publish's encoded `data` is larger than
    /// [`Settings::max_message`] (`message_too_large`).
    MessageTooLarge,
    /// The broker cannot reach the other nodes (`unavailable`; HTTP 503
    /// with `Retry-After`).
    Unavailable,
    /// The socket is subscribed to the channel already
    /// (`already_subscribed`).
    AlreadySubscribed,
}

impl Refusal {
    /// The `code` of the error message.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadChannel => "bad_channel",
            Self::Forbidden => "forbidden",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::SlowConsumer => "slow_consumer",
            Self::MessageTooLarge => "message_too_large",
            Self::Unavailable => "unavailable",
            Self::AlreadySubscribed => "already_subscribed",
        }
    }

    /// The status of an HTTP publish refused for this reason.
    pub fn status(self) -> u16 {
        match self {
            Self::Forbidden => 403,
            Self::MessageTooLarge => 413,
            Self::Unavailable => 503,
            Self::BadChannel
            | Self::TooManySubscriptions
            | Self::SlowConsumer
            | Self::AlreadySubscribed => 400,
        }
    }

    /// A human-readable `message`.
    pub fn message(self, op: Op) -> &'static str {
        match (self, op) {
            (Self::BadChannel, _) => {
                "channel names are 1 to 128 characters of A-Z a-z 0-9 : _ . @ -"
            }
            (Self::Forbidden, Op::Subscribe) => "not allowed to subscribe to this channel",
            (Self::Forbidden, Op::Publish) => "not allowed to publish in this channel",
            (Self::Forbidden, Op::Presence) => "not allowed to see this channel's presence",
            (Self::AlreadySubscribed, _) => "this socket is subscribed to this channel already",
            (Self::TooManySubscriptions, _) => "too many subscriptions on this socket",
            (Self::SlowConsumer, _) => "this socket is being closed: it does not keep up",
            (Self::MessageTooLarge, _) => "data is larger than broadcast.max_message",
            (Self::Unavailable, _) => "the broker is unavailable; retry later",
        }
    }
}

/// One subscribed socket (or SSE stream), shared by the channels it
/// joined.
struct Member {
    id: u64,
    /// The socket's identity: every delivery to it carries this one.
    identity: Principal,
    push: WsSender,
    /// The channels it joined (kept by its socket; read to evict it).
    channels: Mutex<Vec<Arc<str>>>,
    /// Set once it failed to take a delivery: it is leaving.
    evicted: AtomicBool,
}

impl Member {
    fn user(&self) -> Option<&str> {
        self.identity.as_deref().map(|id| id.user.as_str())
    }

    /// Queues `msg`; false when the member did not take it.
    fn send(&self, msg: Utf8Bytes) -> bool {
        self.push
            .push_as(&self.identity, WsMessage::Text(msg))
            .is_ok()
    }
}

/// A member between its `subscribe` and its `subscribed`: the
/// deliveries made meanwhile wait here, to follow what it recovers.
struct Pending {
    member: Arc<Member>,
    buffered: Vec<(u64, Utf8Bytes)>,
    /// Bytes in `buffered`.
    bytes: usize,
}

/// A member may have this much waiting in [`Pending`] (as its push
/// queue); beyond it, it is a slow consumer.
const PENDING_MESSAGES: usize = sigma_core::WS_PUSH_QUEUE;
const PENDING_BYTES: usize = sigma_core::WS_PUSH_BYTES;

/// What one recovery or `history` answer sends at most: half of a
/// socket's push queue, so it fits beside what is queued already. A
/// recovery that needs more says `recovered: false`; a `history` answer
/// holds the newest publications that fit.
pub const RECOVERY_MESSAGES: usize = sigma_core::WS_PUSH_QUEUE / 2;
/// See [`RECOVERY_MESSAGES`].
pub const RECOVERY_BYTES: usize = sigma_core::WS_PUSH_BYTES / 2;

#[derive(Default)]
struct ChannelState {
    /// By member id, i.e. in the order the sockets joined, which is about
    /// the order they were accepted: a fan-out walks them (and wakes their
    /// connections, which write in that order) through memory the
    /// allocators handed out in sequence, in user space and in the
    /// kernel's socket structures. A hash order jumped between pages: with
    /// 10 000 subscribers and one message per write, a delivery cost 7.4 to
    /// 7.9 µs of CPU in hash order and 5.8 to 6.3 µs in join order (the
    /// kernel's `fdget` and socket lookup, cache and TLB misses, fell by
    /// about a third).
    subscribers: BTreeMap<u64, Arc<Member>>,
    pending: HashMap<u64, Pending>,
    /// Connections per user, live and pending (anonymous ones are not
    /// listed): presence.
    users: HashMap<String, u32>,
    /// Subscribers hear joins and leaves (the rule of its first
    /// subscriber).
    join_leave: bool,
    /// Removed from the hub (it had no subscribers left): look it up again.
    closed: bool,
}

impl ChannelState {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.pending.is_empty()
    }

    /// Counts `user`'s connection; true when it is the first.
    fn add_user(&mut self, user: Option<&str>) -> bool {
        let Some(u) = user else { return false };
        let n = self.users.entry(u.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n == 1
    }

    /// Uncounts `user`'s connection; true when it was the last.
    fn remove_user(&mut self, user: Option<&str>) -> bool {
        let Some(u) = user else { return false };
        match self.users.get_mut(u) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(u);
                true
            }
            None => false,
        }
    }

    /// Takes `id` out of the channel, live or pending: the member if it
    /// was there.
    fn take(&mut self, id: u64) -> Option<Arc<Member>> {
        let m = match self.subscribers.remove(&id) {
            Some(m) => m,
            None => self.pending.remove(&id)?.member,
        };
        Some(m)
    }

    /// Tells the live subscribers, when the channel wants it, that `user`
    /// joined or left; the ones that do not take it are returned.
    fn announce(&self, kind: &str, channel: &str, user: &str, skip: u64) -> Vec<Arc<Member>> {
        if !self.join_leave {
            return Vec::new();
        }
        let text =
            Utf8Bytes::from(json!({ "type": kind, "channel": channel, "user": user }).to_string());
        self.subscribers
            .values()
            .filter(|m| m.id != skip && !m.send(text.clone()))
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Channel {
    state: Mutex<ChannelState>,
}

/// The channels of one `&broadcast` destination, shared by all its
/// sockets and requests.
pub struct Hub {
    channels: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    next_id: AtomicU64,
    settings: Settings,
    /// Gives the sequence numbers and carries the publications to every
    /// node's hub, this one included ([`BrokerHandler`]).
    broker: Arc<dyn Broker>,
    /// Publishes accepted (HTTP and WebSocket), and the deliveries they
    /// made: `/metrics`.
    publishes: AtomicU64,
    deliveries: AtomicU64,
    /// Subscriptions that asked to recover, and those that did.
    recoveries: AtomicU64,
    recovered: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("channels", &self.channel_count())
            .finish_non_exhaustive()
    }
}

/// Locks `m`; a poisoned lock is still used (nothing under these locks can
/// leave the data inconsistent halfway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes a hub's broker, given the hub as the broker's handler.
pub type MakeBroker<'a> = &'a dyn Fn(Weak<dyn BrokerHandler>) -> Arc<dyn Broker>;

/// The in-process broker (one node).
pub fn memory_broker(handler: Weak<dyn BrokerHandler>) -> Arc<dyn Broker> {
    Arc::new(MemoryBroker::new(handler))
}

/// An epoch as the wire carries it: lower-case hex (a JSON number would
/// lose bits in JavaScript).
pub fn epoch_text(epoch: u64) -> String {
    format!("{epoch:x}")
}

/// Where a client says it stopped: `"since": {"seq": N, "epoch": E}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The last `seq` it received.
    pub seq: u64,
    /// The epoch it received it in.
    pub epoch: String,
}

/// `{"type":"message","channel":C,"seq":N` + the broker's payload (the
/// publisher's `,"from":…,"data":…}`).
fn message_text(channel: &str, p: &Publication) -> Utf8Bytes {
    let mut text = String::with_capacity(channel.len() + 64 + p.data.len());
    text.push_str("{\"type\":\"message\",\"channel\":");
    text.push_str(&Value::from(channel).to_string());
    text.push_str(",\"seq\":");
    text.push_str(&p.position.offset.to_string());
    text.push_str(&String::from_utf8_lossy(&p.data));
    Utf8Bytes::from(text)
}

/// Adds `"id"` to an answer object when the client gave one.
fn with_id(mut v: Value, id: Option<&Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    v
}

impl Hub {
    /// An empty hub on the in-process broker.
    pub fn new(settings: Settings) -> Arc<Self> {
        Self::with_broker(settings, &memory_broker)
    }

    /// An empty hub on the broker `make` returns.
    pub fn with_broker(settings: Settings, make: MakeBroker<'_>) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Hub>| {
            let handler: Weak<dyn BrokerHandler> = me.clone() as _;
            Self {
                channels: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                settings,
                broker: make(handler),
                publishes: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
                recoveries: AtomicU64::new(0),
                recovered: AtomicU64::new(0),
            }
        })
    }

    /// Channels that currently have subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn all_channels(&self) -> Vec<Arc<Channel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Subscriptions over all channels (a socket in two channels counts
    /// twice). Takes each channel's lock in turn: for `/metrics` only.
    pub fn subscription_count(&self) -> usize {
        self.all_channels()
            .iter()
            .map(|c| {
                let st = lock(&c.state);
                st.subscribers.len().saturating_add(st.pending.len())
            })
            .sum()
    }

    /// The hub's samples for `/metrics`.
    pub fn samples(&self) -> Vec<sigma_core::Sample> {
        use sigma_core::Sample;
        vec![
            Sample::gauge(
                "sigma_broadcast_channels",
                "Broadcast channels with subscribers.",
                self.channel_count() as u64,
            ),
            Sample::gauge(
                "sigma_broadcast_subscriptions",
                "Channel subscriptions (a socket in two channels counts twice).",
                self.subscription_count() as u64,
            ),
            Sample::counter(
                "sigma_broadcast_publishes_total",
                "Publishes accepted.",
                self.publishes.load(Ordering::Relaxed),
            ),
            Sample::counter(
                "sigma_broadcast_deliveries_total",
                "Messages handed to subscribers' queues.",
                self.deliveries.load(Ordering::Relaxed),
            ),
            Sample::counter(
                "sigma_broadcast_recoveries_total",
                "Subscriptions that asked to recover with `since`.",
                self.recoveries.load(Ordering::Relaxed),
            ),
            Sample::counter(
                "sigma_broadcast_recovered_total",
                "Subscriptions that recovered every missed message.",
                self.recovered.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Subscribers of `channel` (pending ones included).
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.lookup(channel)
            .map(|c| {
                let st = lock(&c.state);
                st.subscribers.len().saturating_add(st.pending.len())
            })
            .unwrap_or(0)
    }

    fn join(&self, identity: Principal, push: WsSender) -> Arc<Member> {
        Arc::new(Member {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            identity,
            push,
            channels: Mutex::new(Vec::new()),
            evicted: AtomicBool::new(false),
        })
    }

    fn lookup(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The channel `name`, created (and subscribed at the broker) if
    /// needed. Lock order: the map, then the broker's own locks.
    fn open(&self, name: &Arc<str>, join_leave: bool) -> Result<Arc<Channel>, Refusal> {
        if let Some(c) = self.lookup(name) {
            return Ok(c);
        }
        let mut map = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(name) {
            return Ok(Arc::clone(c));
        }
        if let Err(e) = self.broker.subscribe(name) {
            tracing::warn!(channel = %name, "broadcast: cannot subscribe: {e}");
            return Err(Refusal::Unavailable);
        }
        let ch = Arc::new(Channel::default());
        lock(&ch.state).join_leave = join_leave;
        map.insert(Arc::clone(name), Arc::clone(&ch));
        Ok(ch)
    }

    /// Subscribes `member` to `channel`: it joins at once (deliveries
    /// wait for it), and its `subscribed` (then what it recovers, then
    /// what came meanwhile) is pushed once the broker told the channel's
    /// position, now on one node, a round trip later on Redis.
    fn subscribe(
        self: &Arc<Self>,
        member: &Arc<Member>,
        channel: &str,
        since: Option<Since>,
        id: Option<Value>,
    ) -> Result<(), Refusal> {
        if !valid_channel(channel) {
            return Err(Refusal::BadChannel);
        }
        let Some(rule) = self.settings.rules.find(&member.identity, channel) else {
            return Err(Refusal::Forbidden);
        };
        if !rule.subscribe.allows(&member.identity) {
            return Err(Refusal::Forbidden);
        }
        let (keep, join_leave) = (rule.history, rule.join_leave);
        if member.evicted.load(Ordering::Acquire) {
            return Err(Refusal::SlowConsumer);
        }
        let name: Arc<str> = {
            let mut mine = lock(&member.channels);
            if mine.iter().any(|c| &**c == channel) {
                return Err(Refusal::AlreadySubscribed);
            }
            if mine.len() >= self.settings.max_subscriptions {
                return Err(Refusal::TooManySubscriptions);
            }
            let name: Arc<str> = Arc::from(channel);
            mine.push(Arc::clone(&name));
            name
        };
        let failed = loop {
            let ch = match self.open(&name, join_leave) {
                Ok(ch) => ch,
                Err(r) => {
                    lock(&member.channels).retain(|c| !Arc::ptr_eq(c, &name));
                    return Err(r);
                }
            };
            let mut st = lock(&ch.state);
            if st.closed {
                // Removed between the lookup and the lock: find the new one.
                continue;
            }
            st.pending.insert(
                member.id,
                Pending {
                    member: Arc::clone(member),
                    buffered: Vec::new(),
                    bytes: 0,
                },
            );
            let first = st.add_user(member.user());
            // The join first: a presence answer that lists it comes after.
            let failed = match (first, member.user()) {
                (true, Some(u)) => self.joined_or_left(&st, channel, u, member.id, true),
                _ => Vec::new(),
            };
            if let Some(u) = member.user() {
                self.broker.presence_join(&name, member.id, u);
            }
            break failed;
        };
        for m in &failed {
            self.evict(m);
        }
        // Asked for only when it can be used: the missed publications
        // when the client says where it stopped, else the position.
        let recovering = since.as_ref().filter(|_| keep.size > 0);
        let (after, limit) = match recovering {
            Some(s) => (Some(s.seq), keep.size.min(RECOVERY_MESSAGES)),
            None => (None, 0),
        };
        if since.is_some() {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
        let mut history = self.broker.history(&name, after, limit);
        match (&mut history).now_or_never() {
            Some(h) => self.subscribed(member, &name, since, id, h),
            None => {
                let (hub, member) = (Arc::clone(self), Arc::clone(member));
                tokio::spawn(async move {
                    let h = history.await;
                    hub.subscribed(&member, &name, since, id, h);
                });
            }
        }
        Ok(())
    }

    /// The broker told `channel`'s position (and what `member` missed):
    /// `subscribed`, the recovered publications, the ones that came
    /// meanwhile, and `member` is live. Pushed under the channel's lock,
    /// so that no delivery overtakes them.
    fn subscribed(
        &self,
        member: &Arc<Member>,
        channel: &Arc<str>,
        since: Option<Since>,
        id: Option<Value>,
        history: Result<sigma_store::History, sigma_store::BrokerError>,
    ) {
        let Some(ch) = self.lookup(channel) else {
            return;
        };
        let mut st = lock(&ch.state);
        let Some(pending) = st.pending.remove(&member.id) else {
            // It left (or was evicted) meanwhile.
            return;
        };
        let history = match history {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(channel = %channel, "broadcast: no position: {e}");
                let failed = self.depart(&mut st, channel, member);
                let empty = st.is_empty();
                drop(st);
                lock(&member.channels).retain(|c| !Arc::ptr_eq(c, channel));
                let r = Refusal::Unavailable;
                let text = ws_error_text(
                    r.code(),
                    Some(channel),
                    r.message(Op::Subscribe),
                    id.as_ref(),
                );
                member.send(text);
                return self.departed(channel, &ch, &failed, empty);
            }
        };
        let top = history.position;
        let epoch = epoch_text(top.epoch);
        // Recovered: same epoch, and every publication after `since` is
        // here (none expired, none beyond what one answer sends).
        let recovered = since.as_ref().map(|s| {
            let missed = top.offset.saturating_sub(s.seq);
            let bytes: usize = history.publications.iter().map(|p| p.data.len()).sum();
            s.epoch == epoch
                && s.seq <= top.offset
                && u64::try_from(history.publications.len()).is_ok_and(|n| n == missed)
                && history
                    .publications
                    .first()
                    .is_none_or(|p| p.position.offset == s.seq.saturating_add(1))
                && bytes <= RECOVERY_BYTES
        });
        if recovered == Some(true) {
            self.recovered.fetch_add(1, Ordering::Relaxed);
        }
        let mut answer = json!({
            "type": "subscribed",
            "channel": &**channel,
            "seq": top.offset,
            "epoch": epoch,
        });
        if let (Some(r), Some(obj)) = (recovered, answer.as_object_mut()) {
            obj.insert("recovered".into(), Value::from(r));
        }
        let answer = with_id(answer, id.as_ref());
        let mut ok = member.send(Utf8Bytes::from(answer.to_string()));
        if recovered == Some(true) {
            for p in &history.publications {
                ok = ok && member.send(message_text(channel, p));
            }
        }
        for (seq, text) in pending.buffered {
            if seq > top.offset {
                ok = ok && member.send(text);
            }
        }
        if ok {
            st.subscribers.insert(member.id, Arc::clone(member));
        } else {
            // It cannot take its own start: it goes, as a slow consumer.
            let failed = self.depart(&mut st, channel, member);
            let empty = st.is_empty();
            drop(st);
            self.evict(member);
            self.departed(channel, &ch, &failed, empty);
        }
    }

    /// `member` is out of `channel` (its caller took it from the maps):
    /// its user's count goes down, presence forgets it and, when it was
    /// the user's last socket there, the others hear `leave`. The
    /// subscribers that did not take that are returned, for
    /// [`departed`](Self::departed).
    fn depart(&self, st: &mut ChannelState, channel: &str, member: &Member) -> Vec<Arc<Member>> {
        let failed = match (st.remove_user(member.user()), member.user()) {
            (true, Some(u)) => self.joined_or_left(st, channel, u, member.id, false),
            _ => Vec::new(),
        };
        self.broker.presence_leave(channel, member.id);
        failed
    }

    /// After a departure, with the channel's lock released: evicts the
    /// subscribers that did not take a message, and reaps the channel if
    /// it was left `empty`.
    fn departed(&self, channel: &str, ch: &Arc<Channel>, failed: &[Arc<Member>], empty: bool) {
        for m in failed {
            self.evict(m);
        }
        if empty {
            self.reap(channel, ch);
        }
    }

    /// Unsubscribes `member` from `channel`; false if it was not
    /// subscribed.
    fn unsubscribe(&self, member: &Member, channel: &str) -> bool {
        let found = {
            let mut mine = lock(&member.channels);
            let before = mine.len();
            mine.retain(|c| &**c != channel);
            mine.len() != before
        };
        if found {
            self.remove(channel, member.id);
        }
        found
    }

    /// Removes subscriber `id` from `channel` (announcing a leave when it
    /// was its user's last connection), and the channel if that was its
    /// last subscriber.
    fn remove(&self, channel: &str, id: u64) {
        let Some(ch) = self.lookup(channel) else {
            return;
        };
        let (empty, failed) = {
            let mut st = lock(&ch.state);
            let failed = match st.take(id) {
                Some(m) => self.depart(&mut st, channel, &m),
                None => Vec::new(),
            };
            (st.is_empty(), failed)
        };
        self.departed(channel, &ch, &failed, empty);
    }

    /// Removes `ch` from the map if it still has no subscribers. Lock
    /// order: the map, then the channel (nothing takes them the other way).
    fn reap(&self, name: &str, ch: &Arc<Channel>) {
        let mut map = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut st = lock(&ch.state);
        if st.is_empty() && !st.closed {
            st.closed = true;
            if map.get(name).is_some_and(|c| Arc::ptr_eq(c, ch)) {
                map.remove(name);
                self.broker.unsubscribe(name);
            }
        }
    }

    /// A socket is gone: leaves every channel it joined.
    fn leave(&self, member: &Member) {
        let channels = std::mem::take(&mut *lock(&member.channels));
        for c in channels {
            self.remove(&c, member.id);
        }
    }

    /// `member` did not take a delivery (slow or gone): it leaves every
    /// channel now, so no publisher tries it again. Its socket still holds
    /// the list and leaves again (harmlessly) when it closes.
    fn evict(&self, member: &Member) {
        if member.evicted.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(subscriber = member.id, "broadcast: subscriber evicted");
        let channels = lock(&member.channels).clone();
        for c in channels {
            self.remove(&c, member.id);
        }
    }

    /// Publishes `data` on `channel` as `from`: checked and handed to the
    /// broker now (so that a socket's publishes keep their order); the
    /// future gives the message's `seq`, or 0 when the channel has no
    /// subscribers and keeps no history (nothing is delivered). `data`
    /// encoded must fit [`Settings::max_message`], subscribers or not.
    pub fn publish(
        &self,
        from: &Principal,
        channel: &str,
        data: &Value,
    ) -> Result<Publishing, Refusal> {
        if !valid_channel(channel) {
            return Err(Refusal::BadChannel);
        }
        let Some(rule) = self
            .settings
            .rules
            .find(from, channel)
            .filter(|r| r.publish.allows(from))
        else {
            return Err(Refusal::Forbidden);
        };
        // Measured without building it: the limit holds before any copy.
        if encoded_len(data) > self.settings.max_message {
            return Err(Refusal::MessageTooLarge);
        }
        self.publishes.fetch_add(1, Ordering::Relaxed);
        // The broker carries the message's tail; each node's hub puts the
        // channel and the `seq` in front when it delivers.
        let from_json = match from {
            Some(id) => Value::from(id.user.as_str()),
            None => Value::Null,
        };
        let tail = format!(",\"from\":{from_json},\"data\":{data}}}");
        let fut = self
            .broker
            .publish(channel, bytes::Bytes::from(tail), rule.history);
        Ok(Box::pin(async move {
            match fut.await {
                Ok(p) => Ok(p.map_or(0, |p| p.offset)),
                Err(e) => {
                    tracing::warn!("broadcast: publish failed: {e}");
                    Err(Refusal::Unavailable)
                }
            }
        }))
    }

    /// [`publish`](Self::publish) on a broker that answers at once (the
    /// in-process one): the `seq`.
    #[cfg(test)]
    pub fn publish_now(
        &self,
        from: &Principal,
        channel: &str,
        data: &Value,
    ) -> Result<u64, Refusal> {
        self.publish(from, channel, data)?
            .now_or_never()
            .unwrap_or(Err(Refusal::Unavailable))
    }

    /// The `history` answer for `channel`: the newest `limit` kept
    /// publications that fit [`RECOVERY_BYTES`], oldest first, as the
    /// wire's `history` message. `None` once refused.
    fn history(
        &self,
        identity: &Principal,
        channel: &str,
        limit: Option<usize>,
    ) -> Result<BrokerFutureText, Refusal> {
        if !valid_channel(channel) {
            return Err(Refusal::BadChannel);
        }
        let Some(rule) = self
            .settings
            .rules
            .find(identity, channel)
            .filter(|r| r.subscribe.allows(identity))
        else {
            return Err(Refusal::Forbidden);
        };
        let size = rule.history.size.min(RECOVERY_MESSAGES);
        let want = limit.unwrap_or(size).min(size);
        let fut = self.broker.history(channel, None, size);
        let channel = channel.to_owned();
        Ok(Box::pin(async move {
            let h = match fut.await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("broadcast: history failed: {e}");
                    return Err(Refusal::Unavailable);
                }
            };
            let mut bytes = 0usize;
            let mut kept: Vec<Value> = Vec::new();
            for p in h.publications.iter().rev().take(want) {
                bytes = bytes.saturating_add(p.data.len());
                if bytes > RECOVERY_BYTES {
                    break;
                }
                match serde_json::from_str::<Value>(message_text(&channel, p).as_str()) {
                    Ok(v) => kept.push(v),
                    Err(_) => continue,
                }
            }
            kept.reverse();
            Ok(json!({
                "type": "history",
                "channel": channel,
                "epoch": epoch_text(h.position.epoch),
                "seq": h.position.offset,
                "messages": kept,
            }))
        }))
    }

    /// Who is subscribed to `channel` on this node, each user once with
    /// a connection count (anonymous subscribers are not listed).
    fn presence(&self, identity: &Principal, channel: &str) -> Result<BrokerFutureText, Refusal> {
        if !valid_channel(channel) {
            return Err(Refusal::BadChannel);
        }
        if !self.settings.rules.allows(identity, channel, Op::Presence) {
            return Err(Refusal::Forbidden);
        }
        let answer = |channel: &str, users: Vec<(String, u32)>| {
            let users: Vec<Value> = users
                .into_iter()
                .map(|(user, n)| json!({ "user": user, "connections": n }))
                .collect();
            json!({ "type": "presence", "channel": channel, "users": users })
        };
        // Across nodes, the broker knows; on one, this hub does.
        if let Some(fut) = self.broker.presence(channel) {
            let channel = channel.to_owned();
            return Ok(Box::pin(async move {
                match fut.await {
                    Ok(users) => Ok(answer(&channel, users)),
                    Err(e) => {
                        tracing::warn!("broadcast: presence failed: {e}");
                        Err(Refusal::Unavailable)
                    }
                }
            }));
        }
        let mut users: Vec<(String, u32)> = self
            .lookup(channel)
            .map(|c| {
                lock(&c.state)
                    .users
                    .iter()
                    .map(|(u, n)| (u.clone(), *n))
                    .collect()
            })
            .unwrap_or_default();
        users.sort();
        let v = answer(channel, users);
        Ok(Box::pin(std::future::ready(Ok(v))))
    }

    /// Delivers one publication to this node's subscribers of `channel`.
    fn deliver(&self, channel: &str, publication: &Publication) {
        let Some(ch) = self.lookup(channel) else {
            return;
        };
        let mut failed: Vec<Arc<Member>> = Vec::new();
        let empty = {
            let st = &mut *lock(&ch.state);
            if st.closed || st.is_empty() {
                return;
            }
            // Encoded once; each push below clones a reference to it, and
            // tags it with the subscriber's identity (`push_as`: without a
            // reference to it when the socket's queue was made for it).
            let text = message_text(channel, publication);
            for m in st.subscribers.values() {
                match m.push.push_as(&m.identity, WsMessage::Text(text.clone())) {
                    Ok(()) => {}
                    Err(PushError::SlowConsumer | PushError::Closed) => {
                        failed.push(Arc::clone(m));
                    }
                }
            }
            let delivered = st.subscribers.len().saturating_sub(failed.len());
            self.deliveries
                .fetch_add(delivered as u64, Ordering::Relaxed);
            // The ones still waiting for their `subscribed` get it later.
            for p in st.pending.values_mut() {
                p.bytes = p.bytes.saturating_add(text.len());
                if p.buffered.len() >= PENDING_MESSAGES || p.bytes > PENDING_BYTES {
                    failed.push(Arc::clone(&p.member));
                } else {
                    p.buffered.push((publication.position.offset, text.clone()));
                }
            }
            // They leave now (a `leave` others fail to take makes them
            // leave too).
            let mut i = 0;
            while let Some(m) = failed.get(i).cloned() {
                if st.take(m.id).is_some() {
                    let more = self.depart(st, channel, &m);
                    failed.extend(more);
                }
                i += 1;
            }
            st.is_empty()
        };
        self.departed(channel, &ch, &failed, empty);
    }

    /// The broker lost the other nodes: every subscriber may have missed
    /// messages, so each socket is closed (1011) and every channel goes.
    fn lost(&self) {
        let channels: Vec<(Arc<str>, Arc<Channel>)> = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (name, ch) in channels {
            let members: Vec<Arc<Member>> = {
                let mut st = lock(&ch.state);
                st.closed = true;
                self.all_left(&st, &name);
                st.users.clear();
                for id in st.subscribers.keys().chain(st.pending.keys()) {
                    self.broker.presence_leave(&name, *id);
                }
                let pending: Vec<Arc<Member>> = st.pending.drain().map(|(_, p)| p.member).collect();
                std::mem::take(&mut st.subscribers)
                    .into_values()
                    .chain(pending)
                    .collect()
            };
            self.broker.unsubscribe(&name);
            for m in members {
                if !m.evicted.swap(true, Ordering::AcqRel) {
                    let _ = m.push.close(1011, "broker unavailable");
                }
            }
        }
    }

    /// False while the broker cannot reach the other nodes.
    pub fn available(&self) -> bool {
        self.broker.available()
    }
}

/// The answer of [`Hub::publish`]: the `seq`, once the broker has it.
pub type Publishing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, Refusal>> + Send + 'static>>;

/// An answer the broker computes (`history`): the message, or why not.
type BrokerFutureText =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, Refusal>> + Send + 'static>>;

impl BrokerHandler for Hub {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.deliver(channel, publication);
    }

    fn handle_lost(&self) {
        self.lost();
    }

    fn handle_join_leave(&self, channel: &str, user: &str, joined: bool, skip: Option<u64>) {
        self.announced(channel, user, joined, skip);
    }
}

/// The length of `data` as compact JSON, counted, not built.
fn encoded_len(data: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    match serde_json::to_writer(&mut n, data) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

// ---------------------------------------------------------------------------
// The destination.

/// The `&broadcast` destination of one route: its hub and its path prefix.
#[derive(Debug)]
pub struct Broadcast {
    hub: Arc<Hub>,
    /// The route's path without a trailing `/` (`""` for `/`).
    prefix: String,
}

impl Broadcast {
    /// `&broadcast` at route `path`, with the default settings.
    pub fn new(path: &str) -> Self {
        Self::with_settings(path, Settings::default())
    }

    /// `&broadcast` at route `path`, on the in-process broker.
    pub fn with_settings(path: &str, settings: Settings) -> Self {
        Self::with_broker(path, settings, &memory_broker)
    }

    /// `&broadcast` at route `path`, on the broker `make` returns.
    pub fn with_broker(path: &str, settings: Settings, make: MakeBroker<'_>) -> Self {
        Self {
            hub: Hub::with_broker(settings, make),
            prefix: path.strip_suffix('/').unwrap_or(path).to_owned(),
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The channel named by a request path: what follows `<prefix>/`.
    fn channel_of<'p>(&self, path: &'p [u8]) -> &'p [u8] {
        path.strip_prefix(self.prefix.as_bytes())
            .map(|rest| rest.strip_prefix(b"/").unwrap_or(rest))
            .unwrap_or_default()
    }
}

/// `&broadcast` at route `path` with the settings of `[broadcast]`: one hub
/// for the route, built once by the route table.
pub fn destination(
    path: &str,
    config: &crate::broadcast::config::BroadcastConfig,
    brokers: &dyn crate::factory::Brokers,
) -> Arc<dyn Destination> {
    let ns = path.strip_suffix('/').unwrap_or(path);
    Arc::new(Broadcast::with_broker(
        path,
        Settings::from_config(config),
        &|handler| brokers.broker(ns, handler),
    ))
}

impl Settings {
    /// The settings `[broadcast]` describes: its rules before the built-in
    /// ones.
    pub fn from_config(config: &crate::broadcast::config::BroadcastConfig) -> Self {
        use crate::broadcast::config::ChannelAccess as C;
        let access = |a: &C| match a {
            C::Anyone => Access::Anyone,
            C::LoggedIn => Access::LoggedIn,
            C::Nobody => Access::Nobody,
            C::Users(u) => Access::Users(u.clone()),
        };
        let defaults = config.history();
        let rules = config
            .rule
            .iter()
            .map(|r| Rule {
                pattern: r.pattern.clone(),
                subscribe: access(&r.subscribe),
                publish: access(&r.publish),
                presence: access(r.presence.as_ref().unwrap_or(&r.subscribe)),
                history: Keep {
                    size: r.history_size.unwrap_or(defaults.size),
                    ttl: r.history_ttl.unwrap_or(defaults.ttl),
                },
                join_leave: r.join_leave.unwrap_or(config.join_leave),
            })
            .collect();
        Self {
            rules: Rules::new(rules).with_builtin_defaults(defaults, config.join_leave),
            max_subscriptions: config.max_subscriptions,
            max_message: config.max_message,
        }
    }
}

impl Broadcast {
    /// `413 {"error":"message_too_large","max_message":N}`.
    fn too_large(&self) -> Response {
        too_large(self.hub.settings.max_message)
    }

    fn published(&self, r: Result<u64, Refusal>) -> Response {
        published(r, self.hub.settings.max_message)
    }
}

fn too_large(max_message: usize) -> Response {
    json_error_with(
        413,
        Refusal::MessageTooLarge.code(),
        json!({ "max_message": max_message }),
    )
}

/// The answer to an HTTP publish: `202 {"seq": N}` or the refusal.
fn published(r: Result<u64, Refusal>, max_message: usize) -> Response {
    match r {
        Ok(seq) => json_response(202, json!({ "seq": seq })),
        Err(Refusal::MessageTooLarge) => too_large(max_message),
        Err(Refusal::Unavailable) => {
            let mut resp = json_error(503, Refusal::Unavailable.code());
            resp.headers
                .push(Header::new(&b"Retry-After"[..], &b"1"[..]));
            resp
        }
        Err(r) => json_error(r.status(), r.code()),
    }
}

impl Destination for Broadcast {
    fn name(&self) -> &str {
        "&broadcast"
    }

    fn capabilities(&self) -> Capabilities {
        // Streamed requests: an event stream is a response that never
        // ends; a publish's body is read here, within the route's limit.
        Capabilities {
            streams_http: true,
            ..Capabilities::HTTP_AND_WEBSOCKET
        }
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => Answer::Http(self.http(req)),
            Request::Stream { head, body, .. } => Answer::Stream(self.streamed(head, body)),
            Request::Upgrade(u) => Answer::Socket(self.websocket(&u.identity, u.push)),
        }
    }

    fn metrics(&self) -> Vec<sigma_core::Sample> {
        self.hub.samples()
    }
}

impl Broadcast {
    /// `POST` to a channel publishes to it.
    fn http(&self, req: Tagged<HttpRequest>) -> Handled {
        let identity = req.identity;
        let head = &req.msg.head;
        let resp = if head.method == Method::Get {
            // Whole GET requests come from tests; the route streams them.
            json_error(406, "not_acceptable")
        } else if head.method != Method::Post {
            not_allowed()
        } else {
            match std::str::from_utf8(self.channel_of(head.path())) {
                Ok(channel) if valid_channel(channel) => {
                    if !self
                        .hub
                        .settings
                        .rules
                        .allows(&identity, channel, Op::Publish)
                    {
                        json_error(403, "forbidden")
                    } else if u64::try_from(req.msg.body.len()).map_or(true, |n| {
                        n > publish_body_limit(self.hub.settings.max_message)
                    }) {
                        // Not even parsed: no spelling makes it fit.
                        self.too_large()
                    } else {
                        match serde_json::from_slice::<Value>(&req.msg.body) {
                            Err(_) => json_error(400, "bad_json"),
                            Ok(data) => match self.hub.publish(&identity, channel, &data) {
                                Ok(publishing) => {
                                    // The in-process broker answers at once.
                                    let mut publishing = publishing;
                                    match (&mut publishing).now_or_never() {
                                        Some(done) => self.published(done),
                                        None => {
                                            let max = self.hub.settings.max_message;
                                            return Handled::Later(Box::pin(async move {
                                                Tagged::new(
                                                    identity,
                                                    published(publishing.await, max),
                                                )
                                            }));
                                        }
                                    }
                                }
                                Err(r) => self.published(Err(r)),
                            },
                        }
                    }
                }
                _ => json_error(400, "bad_channel"),
            }
        };
        Handled::Ready(Tagged::new(identity, resp))
    }

    /// A member of the hub: subscribes, publishes, receives.
    fn websocket(&self, identity: &Principal, push: WsSender) -> Box<dyn WsEndpoint> {
        Box::new(Socket {
            member: self.hub.join(identity.clone(), push),
            hub: Arc::clone(&self.hub),
        })
    }
}

/// A client message; unknown fields (a claimed `from`, say) are ignored.
#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    /// `Some(Value::Null)` for `"data": null`, `None` when missing.
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    /// Echoed on the answer.
    id: Option<Value>,
    /// `subscribe`: where the client stopped.
    since: Option<Since>,
    /// `history`: how many, at most.
    limit: Option<usize>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The longest `id` string a client may send (it comes back on the
/// answer).
pub const MAX_ID_LEN: usize = 64;

/// True for an `id` that may be echoed: a number, or a string of at most
/// [`MAX_ID_LEN`] bytes.
pub fn valid_id(id: &Value) -> bool {
    match id {
        Value::Number(_) => true,
        Value::String(s) => s.len() <= MAX_ID_LEN,
        _ => false,
    }
}

/// One WebSocket client of the hub.
struct Socket {
    hub: Arc<Hub>,
    member: Arc<Member>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.hub.leave(&self.member);
    }
}

/// `{"type":"error","code":…,"channel"?:…,"message":…,"id"?:…}`.
fn ws_error_text(
    code: &str,
    channel: Option<&str>,
    message: &str,
    id: Option<&Value>,
) -> Utf8Bytes {
    let mut v = json!({ "type": "error", "code": code });
    if let (Some(c), Some(obj)) = (channel, v.as_object_mut()) {
        obj.insert("channel".into(), Value::from(c));
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("message".into(), Value::from(message));
    }
    Utf8Bytes::from(with_id(v, id).to_string())
}

fn ws_error(code: &str, channel: Option<&str>, message: &str, id: Option<&Value>) -> WsMessage {
    WsMessage::Text(ws_error_text(code, channel, message, id))
}

fn text(v: Value) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(v.to_string()))
}

impl Socket {
    /// The answer to one client message, if any (answers that need the
    /// broker are pushed when it has them).
    fn handle(&self, identity: &Principal, msg: &WsMessage) -> Option<WsMessage> {
        let WsMessage::Text(t) = msg else {
            return Some(ws_error(
                "bad_message",
                None,
                "messages are JSON text frames",
                None,
            ));
        };
        let Ok(m) = serde_json::from_str::<ClientMessage>(t.as_str()) else {
            return Some(ws_error(
                "bad_message",
                None,
                "expected a JSON object with \"type\" and \"channel\"",
                None,
            ));
        };
        if m.id.as_ref().is_some_and(|id| !valid_id(id)) {
            return Some(ws_error(
                "bad_message",
                None,
                "\"id\" must be a number or a string of at most 64 bytes",
                None,
            ));
        }
        let id = m.id.as_ref();
        let op = match m.kind.as_str() {
            "subscribe" | "unsubscribe" | "history" => Op::Subscribe,
            "publish" => Op::Publish,
            "presence" => Op::Presence,
            _ => {
                return Some(ws_error(
                    "bad_message",
                    None,
                    "type must be subscribe, unsubscribe, publish, history or presence",
                    id,
                ))
            }
        };
        let Some(channel) = m.channel.as_deref() else {
            return Some(ws_error("bad_message", None, "\"channel\" is missing", id));
        };
        if !valid_channel(channel) {
            // The invalid name is not echoed back (it may be huge).
            return Some(ws_error(
                Refusal::BadChannel.code(),
                None,
                Refusal::BadChannel.message(op),
                id,
            ));
        }
        let refused = |r: Refusal| Some(ws_error(r.code(), Some(channel), r.message(op), id));
        match m.kind.as_str() {
            "subscribe" => {
                match self
                    .hub
                    .subscribe(&self.member, channel, m.since, m.id.clone())
                {
                    // `subscribed` comes through the push queue, before
                    // any delivery.
                    Ok(()) => None,
                    Err(r) => refused(r),
                }
            }
            "unsubscribe" => {
                let was = self.hub.unsubscribe(&self.member, channel);
                // Answered only when asked (an `id`), as there is nothing
                // to report otherwise.
                id.map(|_| {
                    text(with_id(
                        json!({ "type": "unsubscribed", "channel": channel, "subscribed": was }),
                        id,
                    ))
                })
            }
            "presence" => match self.hub.presence(identity, channel) {
                Ok(mut fut) => match (&mut fut).now_or_never() {
                    Some(Ok(v)) => Some(text(with_id(v, id))),
                    Some(Err(r)) => refused(r),
                    None => {
                        self.later(identity, channel, m.id.clone(), op, fut);
                        None
                    }
                },
                Err(r) => refused(r),
            },
            "history" => match self.hub.history(identity, channel, m.limit) {
                Ok(mut fut) => match (&mut fut).now_or_never() {
                    Some(Ok(v)) => Some(text(with_id(v, id))),
                    Some(Err(r)) => refused(r),
                    None => {
                        self.later(identity, channel, m.id.clone(), op, fut);
                        None
                    }
                },
                Err(r) => refused(r),
            },
            _ => {
                let Some(data) = m.data.as_ref() else {
                    return Some(ws_error(
                        "bad_message",
                        Some(channel),
                        "\"data\" is missing",
                        id,
                    ));
                };
                match self.hub.publish(identity, channel, data) {
                    Ok(mut publishing) => match (&mut publishing).now_or_never() {
                        Some(Ok(seq)) => id.map(|_| text(published_msg(channel, seq, id))),
                        Some(Err(r)) => refused(r),
                        None => {
                            // A broker across the network: the answer (or
                            // the failure) is pushed when it is known.
                            let wants_ack = id.is_some();
                            let channel_owned = channel.to_owned();
                            let answer = Box::pin(async move {
                                let seq = publishing.await?;
                                // `later` adds the id; no id, no answer.
                                Ok(match wants_ack {
                                    true => published_msg(&channel_owned, seq, None),
                                    false => Value::Null,
                                })
                            });
                            self.later(identity, channel, m.id.clone(), op, answer);
                            None
                        }
                    },
                    Err(r) => refused(r),
                }
            }
        }
    }

    /// Pushes the answer `fut` computes when it is ready (`null`: no
    /// answer), or its refusal.
    fn later(
        &self,
        identity: &Principal,
        channel: &str,
        id: Option<Value>,
        op: Op,
        fut: BrokerFutureText,
    ) {
        let member = Arc::clone(&self.member);
        let identity = identity.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let msg = match fut.await {
                Ok(Value::Null) => return,
                Ok(v) => text(with_id(v, id.as_ref())),
                Err(r) => ws_error(r.code(), Some(&channel), r.message(op), id.as_ref()),
            };
            let _ = member.push.push(Tagged::new(identity, msg));
        });
    }
}

/// `{"type":"published","channel":C,"seq":N,"id":…}`.
fn published_msg(channel: &str, seq: u64, id: Option<&Value>) -> Value {
    with_id(
        json!({ "type": "published", "channel": channel, "seq": seq }),
        id,
    )
}

impl WsEndpoint for Socket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        let reply = self.handle(&msg.identity, &msg.msg)?;
        // The answer carries the identity of the message it answers.
        Some(Tagged::new(msg.identity, reply))
    }
}

// ---------------------------------------------------------------------------
// Server-sent events.

/// How often an idle event stream gets a comment, so that proxies and
/// clients see it alive.
pub const SSE_PING: std::time::Duration = std::time::Duration::from_secs(15);

/// `Last-Event-ID: EPOCH:SEQ` as sigma sends it, or `None`.
fn parse_event_id(v: &[u8]) -> Option<Since> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (epoch, seq) = s.split_once(':')?;
    let hex =
        !epoch.is_empty() && epoch.len() <= 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(())?;
    Some(Since {
        seq: seq.parse().ok()?,
        epoch: epoch.to_ascii_lowercase(),
    })
}

/// True when `Accept` asks for an event stream.
fn wants_events(head: &sigma_http::RequestHead) -> bool {
    head.header("accept").is_some_and(|h| {
        h.value.split(|b| *b == b',').any(|part| {
            let media = part.split(|b| *b == b';').next().unwrap_or_default();
            media
                .trim_ascii()
                .eq_ignore_ascii_case(b"text/event-stream")
        })
    })
}

/// `405` with the methods a `&broadcast` route takes.
fn not_allowed() -> Response {
    let mut r = json_error(405, "method_not_allowed");
    r.headers
        .push(Header::new(&b"Allow"[..], &b"GET, POST"[..]));
    r
}

/// What an event-stream subscriber reads: its push queue, as SSE events.
/// Dropped (the client went away), it leaves the hub.
struct Sse {
    rx: WsReceiver,
    identity: Principal,
    hub: Arc<Hub>,
    member: Arc<Member>,
    epoch: String,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.hub.leave(&self.member);
    }
}

/// The fields of a pushed message an event needs.
#[derive(Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    epoch: Option<String>,
}

impl Sse {
    /// One pushed message as an event; `None` for one that is not for
    /// this stream. The second value ends the stream after it.
    fn event(&mut self, text: &str) -> Option<(bytes::Bytes, bool)> {
        let head: EventHead = serde_json::from_str(text).ok()?;
        if let Some(e) = head.epoch {
            self.epoch = e;
        }
        let mut out = String::with_capacity(text.len() + 64);
        if let ("subscribed" | "message", Some(seq)) = (head.kind.as_str(), head.seq) {
            out.push_str("id: ");
            out.push_str(&self.epoch);
            out.push(':');
            out.push_str(&seq.to_string());
            out.push('\n');
        }
        out.push_str("event: ");
        out.push_str(&head.kind);
        out.push('\n');
        // Compact JSON has no raw line breaks; split on any anyway.
        for line in text.split(['\n', '\r']) {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Some((bytes::Bytes::from(out), head.kind == "error"))
    }
}

/// The event stream: deliveries as they are pushed, a comment every
/// [`SSE_PING`] of silence; it ends (the client reconnects with
/// `Last-Event-ID`) when the subscriber is evicted as a slow consumer,
/// the broker is lost or its subscription failed.
fn sse_body(sse: Sse) -> sigma_core::BodyStream {
    use sigma_core::Pushed;
    let start = tokio::time::Instant::now() + SSE_PING;
    let ping = tokio::time::interval_at(start, SSE_PING);
    let state = Some((sse, ping));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut sse, mut ping) = state?;
        loop {
            tokio::select! {
                pushed = sse.rx.recv() => match pushed {
                    Pushed::Message(m) => {
                        // The reply rule: only what is tagged for it.
                        if sigma_core::check_reply(&sse.identity, &m).is_err() {
                            continue;
                        }
                        let WsMessage::Text(t) = &m.msg else { continue };
                        if let Some((ev, last)) = sse.event(t.as_str()) {
                            let next = (!last).then_some((sse, ping));
                            return Some((Ok(ev), next));
                        }
                    }
                    Pushed::Overflow | Pushed::Closed | Pushed::Close { .. } | Pushed::Revoked => {
                        return None;
                    }
                },
                _ = ping.tick() => {
                    return Some((Ok(bytes::Bytes::from_static(b": ping\n\n")), Some((sse, ping))));
                }
            }
        }
    }))
}

impl Broadcast {
    /// A request whose body streams in: an event stream (`GET` with
    /// `Accept: text/event-stream`), or a publish (`POST`, its body read
    /// here within the route's limit).
    fn streamed(
        &self,
        head: Tagged<sigma_http::RequestHead>,
        mut body: sigma_core::BodyRx,
    ) -> sigma_core::LaterStreamed {
        let ready = |t: Tagged<Response>| -> sigma_core::LaterStreamed {
            Box::pin(std::future::ready(Tagged::new(
                t.identity,
                Streamed::Whole(t.msg),
            )))
        };
        match head.msg.method {
            Method::Get => Box::pin(std::future::ready(self.events(head))),
            Method::Post => {
                let max_message = self.hub.settings.max_message;
                let hub = Arc::clone(&self.hub);
                let prefix = self.prefix.clone();
                Box::pin(async move {
                    let mut buf = bytes::BytesMut::new();
                    let failed = loop {
                        match std::future::poll_fn(|cx| body.poll_recv(cx)).await {
                            Some(Ok(piece)) => buf.extend_from_slice(&piece),
                            Some(Err(sigma_core::BodyError::TooLarge)) => {
                                break Some(too_large(max_message))
                            }
                            Some(Err(sigma_core::BodyError::Aborted)) => {
                                break Some(json_error(400, "bad_request"))
                            }
                            None => break None,
                        }
                    };
                    let identity = head.identity;
                    if let Some(r) = failed {
                        return Tagged::new(identity, Streamed::Whole(r));
                    }
                    let b = Broadcast { hub, prefix };
                    let req = Tagged::new(
                        identity,
                        HttpRequest {
                            head: head.msg,
                            body: buf.freeze(),
                        },
                    );
                    let t = match b.http(req) {
                        Handled::Ready(t) => t,
                        Handled::Later(fut) => fut.await,
                    };
                    Tagged::new(t.identity, Streamed::Whole(t.msg))
                })
            }
            _ => ready(Tagged::new(head.identity, not_allowed())),
        }
    }

    /// `GET <route>/<channel>` with `Accept: text/event-stream`: the
    /// channel as server-sent events, resuming after `Last-Event-ID`.
    fn events(&self, head: Tagged<sigma_http::RequestHead>) -> Tagged<Streamed> {
        let identity = head.identity;
        let whole = |r: Response| Streamed::Whole(r);
        let Ok(channel) = std::str::from_utf8(self.channel_of(head.msg.path())) else {
            return Tagged::new(identity, whole(json_error(400, Refusal::BadChannel.code())));
        };
        if !wants_events(&head.msg) {
            return Tagged::new(identity, whole(json_error(406, "not_acceptable")));
        }
        let since = head
            .msg
            .header("last-event-id")
            .and_then(|h| parse_event_id(&h.value));
        let (push, rx) = sigma_core::ws_push_queue();
        let member = self.hub.join(identity.clone(), push);
        if let Err(r) = self.hub.subscribe(&member, channel, since, None) {
            self.hub.leave(&member);
            let r = published(Err(r), self.hub.settings.max_message);
            return Tagged::new(identity, whole(r));
        }
        let sse = Sse {
            rx,
            identity: identity.clone(),
            hub: Arc::clone(&self.hub),
            member,
            epoch: String::new(),
        };
        let head = sigma_http::ResponseHead {
            status: 200,
            headers: vec![
                Header::new(&b"Content-Type"[..], &b"text/event-stream"[..]),
                Header::new(&b"Cache-Control"[..], &b"no-store"[..]),
                Header::new(&b"X-Accel-Buffering"[..], &b"no"[..]),
            ],
            content_length: None,
        };
        Tagged::new(
            identity,
            Streamed::Stream {
                head,
                body: sse_body(sse),
            },
        )
    }
}

/// `to = "&broadcast"`: a hub per route, with the rules of `[broadcast]`.
pub const FACTORY: &dyn crate::factory::Factory = &BroadcastFactory;

struct BroadcastFactory;

impl crate::factory::Factory for BroadcastFactory {
    fn name(&self) -> &'static str {
        "&broadcast"
    }

    fn hosts_worlds(&self) -> bool {
        true
    }

    /// A publish is never larger than this: buffer no more.
    fn max_body(&self, cx: &crate::factory::Build<'_, '_>, route: Option<u64>) -> Option<u64> {
        let cap = publish_body_limit(cx.broadcast.max_message);
        Some(route.map_or(cap, |m| m.min(cap)))
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<Arc<dyn Destination>, crate::UnavailableDestination> {
        Ok(destination(cx.path, cx.broadcast, cx.brokers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use sigma_core::{ws_push_queue, Pushed, WsReceiver, WS_PUSH_QUEUE};
    use sigma_core::{Identity, Provider};

    fn user(name: &str) -> Principal {
        Some(Arc::new(Identity {
            user: name.into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }))
    }

    struct Client {
        ep: Box<dyn WsEndpoint>,
        rx: WsReceiver,
        identity: Principal,
    }

    impl Client {
        fn new(b: &Broadcast, identity: Principal) -> Self {
            let (tx, rx) = ws_push_queue();
            let ep = b.websocket(&identity, tx);
            Self { ep, rx, identity }
        }

        fn send(&mut self, v: Value) -> Option<Value> {
            let msg = WsMessage::Text(Utf8Bytes::from(v.to_string()));
            self.send_raw(msg)
        }

        fn send_raw(&mut self, msg: WsMessage) -> Option<Value> {
            let reply = self
                .ep
                .on_message(Tagged::new(self.identity.clone(), msg))?;
            assert!(sigma_core::check_reply(&self.identity, &reply).is_ok());
            match reply.msg {
                WsMessage::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
                WsMessage::Binary(_) => panic!("binary reply"),
            }
        }

        /// Subscribes: the refusal, or the pushed `subscribed`.
        fn sub(&mut self, channel: &str) -> Value {
            self.sub_with(json!({"type": "subscribe", "channel": channel}))
        }

        fn sub_with(&mut self, m: Value) -> Value {
            match self.send(m) {
                Some(refused) => refused,
                None => self.next().expect("subscribed is pushed"),
            }
        }

        fn publish(&mut self, channel: &str, data: Value) -> Option<Value> {
            self.send(json!({"type": "publish", "channel": channel, "data": data}))
        }

        /// The next pushed delivery (the reply rule checked), if any.
        fn next(&mut self) -> Option<Value> {
            match self.rx.recv().now_or_never()? {
                Pushed::Message(m) => {
                    assert!(
                        sigma_core::check_reply(&self.identity, &m).is_ok(),
                        "delivery tagged with another identity"
                    );
                    match m.msg {
                        WsMessage::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
                        WsMessage::Binary(_) => panic!("binary delivery"),
                    }
                }
                other => panic!("{other:?}"),
            }
        }

        fn next_text(&mut self) -> Utf8Bytes {
            match self.rx.recv().now_or_never() {
                Some(Pushed::Message(m)) => match m.msg {
                    WsMessage::Text(t) => t,
                    WsMessage::Binary(_) => panic!("binary delivery"),
                },
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn max_message_bounds_the_encoded_data() {
        let hub = Hub::new(Settings {
            max_message: 10,
            ..Settings::default()
        });
        let alice = user("alice");
        // Encoded compactly: 8 letters and 2 quotes.
        assert_eq!(
            hub.publish_now(&alice, "public:x", &json!("12345678")),
            Ok(0)
        );
        assert_eq!(
            hub.publish_now(&alice, "public:x", &json!("123456789")),
            Err(Refusal::MessageTooLarge)
        );
        // `[1, 2]` as written is longer than `[1,2]`, which is measured.
        assert_eq!(encoded_len(&json!([1, 2])), 5);
        assert_eq!(Refusal::MessageTooLarge.status(), 413);
        assert_eq!(Refusal::MessageTooLarge.code(), "message_too_large");
        assert_eq!(publish_body_limit(10), 10 + PUBLISH_BODY_SLACK as u64);
    }

    #[test]
    fn channel_names() {
        for ok in [
            "a",
            "public:chat",
            "user:alice@example.com:inbox",
            "A-Z_0.9",
        ] {
            assert!(valid_channel(ok), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", "a b", "a/b", "é", "a\n", "a*", long.as_str()] {
            assert!(!valid_channel(bad), "{bad:?}");
        }
        assert!(valid_channel(&"x".repeat(128)));
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("user:{user}:*").unwrap();
        assert!(p.matches("user:alice:x", Some("alice")));
        assert!(p.matches("user:alice:", Some("alice")));
        assert!(!p.matches("user:alice", Some("alice")));
        assert!(!p.matches("user:alice:x", Some("bob")));
        assert!(!p.matches("user:alice:x", None));
        assert!(!p.matches("user:al:ice:x", Some("al:ice")));
        let p = Pattern::parse("room:*:log").unwrap();
        assert!(p.matches("room:1:log", None));
        assert!(p.matches("room::log", None));
        assert!(!p.matches("room:1:logs", None));
        assert!(Pattern::parse("a/b").is_err());
        assert!(Pattern::parse("{usr}").is_err());
        assert!(Pattern::parse("").is_err());
        assert_eq!(
            Rules::builtin()[0].pattern,
            Pattern::parse("public:*").unwrap()
        );
        assert_eq!(
            Rules::builtin()[1].pattern,
            Pattern::parse("user:{user}:*").unwrap()
        );
    }

    #[test]
    fn default_permissions() {
        let r = Rules::default();
        let alice = user("alice");
        for op in [Op::Subscribe, Op::Publish] {
            assert!(r.allows(&alice, "public:chat", op));
            assert!(!r.allows(&None, "public:chat", op));
            assert!(r.allows(&alice, "user:alice:inbox", op));
            assert!(!r.allows(&user("bob"), "user:alice:inbox", op));
            assert!(!r.allows(&None, "user:alice:inbox", op));
            assert!(!r.allows(&alice, "private", op));
        }
    }

    #[test]
    fn configured_rules_come_first() {
        let r = Rules::new(vec![
            Rule {
                pattern: Pattern::parse("public:news").unwrap(),
                subscribe: Access::Anyone,
                publish: Access::Users(vec!["editor".into()]),
                presence: Access::Anyone,
                history: DEFAULT_HISTORY,
                join_leave: false,
            },
            Rule {
                pattern: Pattern::parse("*").unwrap(),
                subscribe: Access::Nobody,
                publish: Access::Nobody,
                presence: Access::Nobody,
                history: Keep::NONE,
                join_leave: false,
            },
        ]);
        assert!(r.allows(&None, "public:news", Op::Subscribe));
        assert!(!r.allows(&user("alice"), "public:news", Op::Publish));
        assert!(r.allows(&user("editor"), "public:news", Op::Publish));
        assert!(!r.allows(&user("alice"), "public:chat", Op::Subscribe));
    }

    #[test]
    fn chat_with_true_from_and_per_subscriber_identity() {
        let b = Broadcast::new("/broadcast");
        let mut alice = Client::new(&b, user("alice"));
        let mut bob = Client::new(&b, user("bob"));
        let ack = alice.sub("public:chat");
        assert_eq!(ack["type"], "subscribed");
        assert_eq!(ack["channel"], "public:chat");
        assert_eq!(ack["seq"], 0);
        assert!(ack["epoch"].is_string(), "{ack}");
        assert!(ack.get("recovered").is_none(), "no since, no recovered");
        bob.sub("public:chat");
        assert_eq!(b.hub().subscriber_count("public:chat"), 2);
        // A claimed `from` is ignored.
        let r = bob.send(json!({"type": "publish", "channel": "public:chat",
                                "data": {"text": "hi"}, "from": "alice"}));
        assert_eq!(r, None);
        let want = json!({"type": "message", "channel": "public:chat", "seq": 1,
                          "from": "bob", "data": {"text": "hi"}});
        assert_eq!(alice.next(), Some(want.clone()));
        assert_eq!(bob.next(), Some(want));
        alice.publish("public:chat", json!(null));
        assert_eq!(bob.next().unwrap()["seq"], 2);
        assert_eq!(bob.next(), None);
        assert_eq!(alice.next().unwrap()["from"], "alice");
    }

    #[test]
    fn one_encoding_shared_by_all_subscribers() {
        let b = Broadcast::new("/b");
        let mut clients: Vec<Client> = (0..3)
            .map(|i| Client::new(&b, user(&format!("u{i}"))))
            .collect();
        for c in &mut clients {
            c.sub("public:x");
        }
        b.hub()
            .publish_now(&user("u0"), "public:x", &json!("x".repeat(1000)))
            .unwrap();
        let texts: Vec<Utf8Bytes> = clients.iter_mut().map(|c| c.next_text()).collect();
        let first = texts[0].as_bytes().as_ptr();
        assert!(texts.iter().all(|t| t.as_bytes().as_ptr() == first));
    }

    #[test]
    fn refusals_keep_the_socket() {
        let b = Broadcast::new("/broadcast");
        let mut alice = Client::new(&b, user("alice"));
        let r = alice.sub("user:bob:inbox");
        assert_eq!(r["type"], "error");
        assert_eq!(r["code"], "forbidden");
        assert_eq!(r["channel"], "user:bob:inbox");
        let r = alice.publish("user:bob:inbox", json!(1)).unwrap();
        assert_eq!(r["code"], "forbidden");
        assert_eq!(alice.sub("user:alice:inbox")["type"], "subscribed");
        for bad in [
            WsMessage::Text("not json".into()),
            WsMessage::Text("[]".into()),
            WsMessage::Text(r#"{"type":"dance","channel":"public:a"}"#.into()),
            WsMessage::Text(r#"{"type":"subscribe"}"#.into()),
            WsMessage::Text(r#"{"type":"publish","channel":"public:a"}"#.into()),
            WsMessage::Text(r#"{"type":"subscribe","channel":7}"#.into()),
            WsMessage::Binary(bytes::Bytes::from_static(b"{}")),
        ] {
            let r = alice.send_raw(bad).unwrap();
            assert_eq!(r["code"], "bad_message", "{r}");
        }
        let r = alice.sub("bad channel");
        assert_eq!(r["code"], "bad_channel");
        assert!(r.get("channel").is_none());
        // Still subscribed and working.
        alice.publish("user:alice:inbox", json!({"n": 1}));
        assert_eq!(alice.next().unwrap()["data"], json!({"n": 1}));
    }

    #[test]
    fn anonymous_may_not_use_public_channels() {
        let b = Broadcast::new("/broadcast");
        let mut anon = Client::new(&b, None);
        assert_eq!(anon.sub("public:chat")["code"], "forbidden");
        assert_eq!(
            anon.publish("public:chat", json!(1)).unwrap()["code"],
            "forbidden"
        );
    }

    #[test]
    fn subscription_limit_and_unsubscribe() {
        let b = Broadcast::with_settings(
            "/broadcast",
            Settings {
                max_subscriptions: 2,
                ..Settings::default()
            },
        );
        let mut c = Client::new(&b, user("alice"));
        c.sub("public:1");
        c.sub("public:2");
        assert_eq!(c.sub("public:2")["code"], "already_subscribed");
        let r = c.sub("public:3");
        assert_eq!(r["code"], "too_many_subscriptions");
        assert_eq!(
            c.send(json!({"type": "unsubscribe", "channel": "public:1"})),
            None
        );
        assert_eq!(b.hub().channel_count(), 1);
        assert_eq!(c.sub("public:3")["type"], "subscribed");
        assert_eq!(
            b.hub().publish_now(&user("bob"), "public:1", &json!(1)),
            Ok(0),
            "no subscribers: nothing delivered"
        );
        assert_eq!(c.next(), None);
        drop(c);
        assert_eq!(b.hub().channel_count(), 0);
    }

    /// `[broadcast]` with these history defaults.
    fn with_history(size: usize, join_leave: bool) -> Broadcast {
        let config = crate::broadcast::config::BroadcastConfig {
            history_size: size,
            join_leave,
            ..Default::default()
        };
        Broadcast::with_settings("/broadcast", Settings::from_config(&config))
    }

    #[test]
    fn seq_survives_a_brief_absence_only_with_history() {
        let alice = user("alice");
        for (b, after) in [
            (Broadcast::new("/broadcast"), 3),
            (with_history(0, false), 1),
        ] {
            let mut c = Client::new(&b, alice.clone());
            let epoch = c.sub("public:a")["epoch"].clone();
            assert_eq!(b.hub().publish_now(&alice, "public:a", &json!(1)), Ok(1));
            assert_eq!(b.hub().publish_now(&alice, "public:a", &json!(2)), Ok(2));
            c.next();
            c.next();
            c.send(json!({"type": "unsubscribe", "channel": "public:a"}));
            let again = c.sub("public:a");
            // Kept history: the same stream; none: a new one.
            assert_eq!(again["epoch"] == epoch, after == 3, "{again}");
            assert_eq!(
                b.hub().publish_now(&alice, "public:a", &json!(3)),
                Ok(after)
            );
        }
    }

    #[test]
    fn since_recovers_exactly_the_missed_messages_then_live() {
        let b = Broadcast::new("/broadcast");
        let alice = user("alice");
        let mut c = Client::new(&b, user("bob"));
        let ack = c.sub("public:r");
        let epoch = ack["epoch"].clone();
        b.hub()
            .publish_now(&alice, "public:r", &json!("a"))
            .unwrap();
        assert_eq!(c.next().unwrap()["seq"], 1);
        // The connection is lost; two messages are published meanwhile.
        drop(c);
        b.hub()
            .publish_now(&alice, "public:r", &json!("b"))
            .unwrap();
        b.hub()
            .publish_now(&alice, "public:r", &json!("c"))
            .unwrap();
        let mut c = Client::new(&b, user("bob"));
        let ack = c.sub_with(json!({"type": "subscribe", "channel": "public:r", "id": 7,
            "since": {"seq": 1, "epoch": epoch}}));
        assert_eq!(
            ack,
            json!({"type": "subscribed", "channel": "public:r", "seq": 3,
                "epoch": epoch, "recovered": true, "id": 7})
        );
        let got: Vec<Value> = std::iter::from_fn(|| c.next()).collect();
        let data: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
        assert_eq!(data, [&json!("b"), &json!("c")]);
        assert_eq!(got[0]["seq"], 2);
        assert_eq!(got[1]["from"], "alice");
        // Then live.
        b.hub()
            .publish_now(&alice, "public:r", &json!("d"))
            .unwrap();
        assert_eq!(c.next().unwrap()["seq"], 4);
        // A wrong epoch, or a position past the top: not recovered.
        for since in [
            json!({"seq": 1, "epoch": "0"}),
            json!({"seq": 9, "epoch": epoch}),
        ] {
            let mut d = Client::new(&b, user("carol"));
            let ack =
                d.sub_with(json!({"type": "subscribe", "channel": "public:r", "since": since}));
            assert_eq!(ack["recovered"], false, "{ack}");
            assert_eq!(d.next(), None, "nothing replayed");
        }
        // Up to date: recovered, nothing to replay.
        let mut e = Client::new(&b, user("dave"));
        let ack = e.sub_with(json!({"type": "subscribe", "channel": "public:r",
            "since": {"seq": 4, "epoch": epoch}}));
        assert_eq!(ack["recovered"], true);
        assert_eq!(e.next(), None);
    }

    #[test]
    fn a_gap_in_the_history_is_not_recovered() {
        let config = crate::broadcast::config::BroadcastConfig {
            history_size: 2,
            ..Default::default()
        };
        let b = Broadcast::with_settings("/broadcast", Settings::from_config(&config));
        let alice = user("alice");
        let mut c = Client::new(&b, alice.clone());
        let epoch = c.sub("public:g")["epoch"].clone();
        for d in 0..5 {
            b.hub().publish_now(&alice, "public:g", &json!(d)).unwrap();
        }
        let mut d = Client::new(&b, user("bob"));
        // Missed 2..=5, only 4 and 5 are kept.
        let ack = d.sub_with(json!({"type": "subscribe", "channel": "public:g",
            "since": {"seq": 1, "epoch": epoch}}));
        assert_eq!(
            (ack["recovered"].clone(), ack["seq"].clone()),
            (json!(false), json!(5))
        );
        assert_eq!(d.next(), None);
        // `history` gives what is kept, newest `limit`, oldest first.
        let h = d
            .send(json!({"type": "history", "channel": "public:g", "id": "h"}))
            .unwrap();
        assert_eq!(h["type"], "history");
        assert_eq!(h["id"], "h");
        assert_eq!(h["epoch"], epoch);
        let seqs: Vec<&Value> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["seq"])
            .collect();
        assert_eq!(seqs, [&json!(4), &json!(5)]);
        let h = d
            .send(json!({"type": "history", "channel": "public:g", "limit": 1}))
            .unwrap();
        assert_eq!(h["messages"][0]["data"], 4);
        assert_eq!(h["messages"].as_array().unwrap().len(), 1);
        // History needs the right to subscribe.
        let mut anon = Client::new(&b, None);
        let r = anon
            .send(json!({"type": "history", "channel": "public:g"}))
            .unwrap();
        assert_eq!(r["code"], "forbidden");
    }

    #[test]
    fn presence_counts_connections_and_join_leave_is_coalesced() {
        let b = with_history(100, true);
        let mut watcher = Client::new(&b, user("watcher"));
        watcher.sub("public:p");
        let mut a1 = Client::new(&b, user("alice"));
        a1.sub("public:p");
        assert_eq!(
            watcher.next(),
            Some(json!({"type": "join", "channel": "public:p", "user": "alice"}))
        );
        // Her second socket is no new join.
        let mut a2 = Client::new(&b, user("alice"));
        a2.sub("public:p");
        assert_eq!(watcher.next(), None);
        let p = watcher
            .send(json!({"type": "presence", "channel": "public:p", "id": 1}))
            .unwrap();
        assert_eq!(
            p,
            json!({"type": "presence", "channel": "public:p", "id": 1, "users": [
                {"user": "alice", "connections": 2},
                {"user": "watcher", "connections": 1},
            ]})
        );
        drop(a1);
        assert_eq!(watcher.next(), None, "one socket of hers is left");
        a2.send(json!({"type": "unsubscribe", "channel": "public:p"}));
        assert_eq!(
            watcher.next(),
            Some(json!({"type": "leave", "channel": "public:p", "user": "alice"}))
        );
        // Without join_leave, nobody hears it.
        let quiet = Broadcast::new("/broadcast");
        let mut w = Client::new(&quiet, user("watcher"));
        w.sub("public:p");
        Client::new(&quiet, user("alice")).sub("public:p");
        assert_eq!(w.next(), None);
        // Presence needs its right.
        let r = Client::new(&quiet, None)
            .send(json!({"type": "presence", "channel": "public:p"}))
            .unwrap();
        assert_eq!(r["code"], "forbidden");
    }

    type Change = (String, String, u64, bool);

    /// A broker that announces joins and leaves itself, as Redis does
    /// across nodes: it records the hub's changes.
    struct Announcing {
        inner: Arc<dyn Broker>,
        log: Arc<Mutex<Vec<Change>>>,
    }

    impl Broker for Announcing {
        fn subscribe(&self, channel: &str) -> Result<(), sigma_store::BrokerError> {
            self.inner.subscribe(channel)
        }
        fn unsubscribe(&self, channel: &str) {
            self.inner.unsubscribe(channel);
        }
        fn publish(
            &self,
            channel: &str,
            data: bytes::Bytes,
            keep: Keep,
        ) -> sigma_store::BrokerFuture<Option<sigma_store::StreamPosition>> {
            self.inner.publish(channel, data, keep)
        }
        fn history(
            &self,
            channel: &str,
            after: Option<u64>,
            limit: usize,
        ) -> sigma_store::BrokerFuture<sigma_store::History> {
            self.inner.history(channel, after, limit)
        }
        fn announce_join_leave(
            &self,
            channel: &str,
            user: &str,
            member: u64,
            joined: bool,
        ) -> bool {
            lock(&self.log).push((channel.to_owned(), user.to_owned(), member, joined));
            true
        }
    }

    /// On a broker that announces, the hub hands it each user's first
    /// join and last leave (and announces nothing itself), and tells its
    /// subscribers what the broker announces, but the socket to skip.
    #[test]
    fn a_broker_that_announces_hears_first_joins_and_last_leaves() {
        let log: Arc<Mutex<Vec<Change>>> = Arc::default();
        let make = |h: Weak<dyn BrokerHandler>| -> Arc<dyn Broker> {
            Arc::new(Announcing {
                inner: memory_broker(h),
                log: Arc::clone(&log),
            })
        };
        let config = crate::broadcast::config::BroadcastConfig {
            join_leave: true,
            ..Default::default()
        };
        let b = Broadcast::with_broker("/broadcast", Settings::from_config(&config), &make);
        let taken = || std::mem::take(&mut *lock(&log));
        let mut watcher = Client::new(&b, user("watcher"));
        watcher.sub("public:p");
        let mut a1 = Client::new(&b, user("alice"));
        a1.sub("public:p");
        let mut a2 = Client::new(&b, user("alice"));
        a2.sub("public:p");
        assert_eq!(watcher.next(), None, "the broker announces, not the hub");
        let changes = taken();
        let ids: Vec<u64> = changes.iter().map(|c| c.2).collect();
        let want = |u: &str, id: u64, j: bool| ("public:p".to_owned(), u.to_owned(), id, j);
        assert_eq!(
            changes,
            [want("watcher", ids[0], true), want("alice", ids[1], true)]
        );
        // The broker's announcement: a1 caused it and is skipped.
        b.hub()
            .handle_join_leave("public:p", "alice", true, Some(ids[1]));
        let join = json!({"type": "join", "channel": "public:p", "user": "alice"});
        assert_eq!(watcher.next(), Some(join.clone()));
        assert_eq!(a2.next(), Some(join));
        assert_eq!(a1.next(), None);
        // Not a channel of this node: nothing.
        b.hub().handle_join_leave("public:q", "alice", true, None);
        assert_eq!(watcher.next(), None);
        drop(a1);
        assert!(taken().is_empty(), "her other socket is here");
        drop(a2);
        assert_eq!(taken(), [want("alice", ids[1] + 1, false)], "a2 left last");
        b.hub().handle_join_leave("public:p", "alice", false, None);
        assert_eq!(
            watcher.next(),
            Some(json!({"type": "leave", "channel": "public:p", "user": "alice"}))
        );
        // Without join_leave the broker hears nothing.
        let quiet = Broadcast::with_broker("/broadcast", Settings::default(), &make);
        Client::new(&quiet, user("alice")).sub("public:p");
        assert!(taken().is_empty());
    }

    #[test]
    fn ids_are_echoed_on_answers_and_errors() {
        let b = Broadcast::new("/broadcast");
        let mut c = Client::new(&b, user("alice"));
        let r = c
            .send(json!({"type": "publish", "channel": "public:i", "data": 1, "id": "p1"}))
            .unwrap();
        assert_eq!(
            r,
            json!({"type": "published", "channel": "public:i", "seq": 0, "id": "p1"})
        );
        assert_eq!(
            c.send(json!({"type": "publish", "channel": "public:i", "data": 1})),
            None,
            "no id, no acknowledgement"
        );
        let r = c
            .send(json!({"type": "subscribe", "channel": "private", "id": 3}))
            .unwrap();
        assert_eq!(
            (r["code"].clone(), r["id"].clone()),
            (json!("forbidden"), json!(3))
        );
        let r = c
            .send(json!({"type": "nope", "channel": "public:i", "id": 4}))
            .unwrap();
        assert_eq!(
            (r["code"].clone(), r["id"].clone()),
            (json!("bad_message"), json!(4))
        );
        let r = c
            .send(json!({"type": "unsubscribe", "channel": "public:i", "id": 5}))
            .unwrap();
        assert_eq!(r["type"], "unsubscribed");
        assert_eq!(r["id"], 5);
        // An id that cannot be echoed is refused, without an id.
        for bad in [
            json!({"a": 1}),
            json!("x".repeat(MAX_ID_LEN + 1)),
            json!([1]),
        ] {
            let r = c
                .send(json!({"type": "publish", "channel": "public:i", "data": 1, "id": bad}))
                .unwrap();
            assert_eq!(r["code"], "bad_message");
            assert!(r.get("id").is_none());
        }
    }

    #[test]
    fn slow_consumer_is_evicted_from_every_channel() {
        let b = Broadcast::new("/broadcast");
        let alice = user("alice");
        let mut slow = Client::new(&b, user("slow"));
        let mut fast = Client::new(&b, user("fast"));
        slow.sub("public:a");
        slow.sub("public:b");
        fast.sub("public:a");
        for i in 0..=WS_PUSH_QUEUE {
            b.hub().publish_now(&alice, "public:a", &json!(i)).unwrap();
            assert_eq!(fast.next().unwrap()["data"], i);
        }
        assert_eq!(b.hub().subscriber_count("public:a"), 1);
        assert_eq!(b.hub().subscriber_count("public:b"), 0);
        assert_eq!(b.hub().channel_count(), 1);
        assert_eq!(slow.sub("public:c")["code"], "slow_consumer");
        // Its socket is told to close (1008).
        assert!(matches!(
            slow.rx.recv().now_or_never(),
            Some(Pushed::Overflow)
        ));
        drop(slow);
        assert_eq!(b.hub().subscriber_count("public:a"), 1);
    }

    #[test]
    fn an_evicted_slow_consumer_is_announced_as_a_leave() {
        let b = with_history(100, true);
        let alice = user("alice");
        let mut watcher = Client::new(&b, user("watcher"));
        watcher.sub("public:j");
        let mut slow = Client::new(&b, user("slow"));
        slow.sub("public:j");
        assert_eq!(watcher.next().unwrap()["type"], "join");
        for i in 0..=WS_PUSH_QUEUE {
            b.hub().publish_now(&alice, "public:j", &json!(i)).unwrap();
            assert_eq!(watcher.next().unwrap()["data"], i);
        }
        assert_eq!(
            watcher.next(),
            Some(json!({"type": "leave", "channel": "public:j", "user": "slow"}))
        );
        let p = watcher
            .send(json!({"type": "presence", "channel": "public:j"}))
            .unwrap();
        assert_eq!(p["users"], json!([{"user": "watcher", "connections": 1}]));
    }

    #[test]
    fn ordered_under_concurrent_publishers() {
        let b = Arc::new(Broadcast::new("/broadcast"));
        let mut c = Client::new(&b, user("reader"));
        c.sub("public:race");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        b.hub()
                            .publish_now(&user(&format!("w{t}")), "public:race", &json!(i))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let seqs: Vec<u64> = std::iter::from_fn(|| c.next())
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=800).collect::<Vec<u64>>());
    }

    fn post(
        b: &Broadcast,
        identity: Principal,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let head = sigma_http::RequestHead {
            method,
            target: bytes::Bytes::copy_from_slice(path.as_bytes()),
            version: sigma_http::Version::Http11,
            headers: Vec::new(),
            keep_alive: true,
            websocket: None,
        };
        let req = Tagged::new(
            identity.clone(),
            HttpRequest {
                head,
                body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            },
        );
        match b.http(req) {
            Handled::Ready(r) => {
                assert!(sigma_core::check_reply(&identity, &r).is_ok());
                (r.msg.status, serde_json::from_slice(&r.msg.body).unwrap())
            }
            Handled::Later(_) => panic!("later"),
        }
    }

    fn head(method: Method, path: &str, headers: &[(&str, &str)]) -> sigma_http::RequestHead {
        sigma_http::RequestHead {
            method,
            target: bytes::Bytes::copy_from_slice(path.as_bytes()),
            version: sigma_http::Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    /// A streamed request to `b`: its status and, for an event stream,
    /// the stream.
    async fn stream_request(
        b: &Broadcast,
        identity: &Principal,
        head: sigma_http::RequestHead,
        body: &[u8],
    ) -> (u16, Option<sigma_core::BodyStream>, bytes::Bytes) {
        let (tx, rx) = sigma_core::body_channel();
        if !body.is_empty() {
            assert!(tx.send(bytes::Bytes::copy_from_slice(body)).await);
        }
        tx.finish();
        let req = Request::Stream {
            head: Tagged::new(identity.clone(), head),
            body: rx,
            client: sigma_core::ClientInfo {
                ip: std::net::IpAddr::from([127, 0, 0, 1]),
                bearer: false,
            },
        };
        let Answer::Stream(fut) = b.handle(req) else {
            panic!("a streamed answer")
        };
        let t = fut.await;
        assert!(sigma_core::check_reply(identity, &t).is_ok());
        match t.msg {
            Streamed::Whole(r) => (r.status, None, r.body),
            Streamed::Stream { head, body } => (head.status, Some(body), bytes::Bytes::new()),
            Streamed::IdentityMismatch => panic!("mismatch"),
        }
    }

    /// The next event of `s`, as text.
    async fn next_event(s: &mut sigma_core::BodyStream) -> String {
        use futures_util::StreamExt;
        let piece = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("an event")
            .expect("not the end")
            .expect("no error");
        String::from_utf8(piece.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn server_sent_events_resume_after_last_event_id() {
        let b = Broadcast::new("/broadcast");
        let alice = user("alice");
        let sse = [("Accept", "text/event-stream")];
        let (status, body, _) = stream_request(
            &b,
            &alice,
            head(Method::Get, "/broadcast/public:s", &sse),
            b"",
        )
        .await;
        assert_eq!(status, 200);
        let mut body = body.unwrap();
        let first = next_event(&mut body).await;
        assert!(first.starts_with("id: "), "{first}");
        assert!(first.contains("\nevent: subscribed\n") || first.contains("event: subscribed"));
        let epoch = first
            .strip_prefix("id: ")
            .and_then(|r| r.split(':').next())
            .unwrap()
            .to_owned();
        // A publish over HTTP, streamed in as the route takes it.
        let (status, _, answer) = stream_request(
            &b,
            &alice,
            head(Method::Post, "/broadcast/public:s", &[]),
            b"{\"n\":1}",
        )
        .await;
        assert_eq!(status, 202, "{answer:?}");
        let ev = next_event(&mut body).await;
        assert_eq!(
            ev,
            format!("id: {epoch}:1\nevent: message\ndata: {{\"type\":\"message\",\"channel\":\"public:s\",\"seq\":1,\"from\":\"alice\",\"data\":{{\"n\":1}}}}\n\n")
        );
        // The client goes; two more are published; it comes back.
        drop(body);
        b.hub().publish_now(&alice, "public:s", &json!(2)).unwrap();
        b.hub().publish_now(&alice, "public:s", &json!(3)).unwrap();
        let last = format!("{epoch}:1");
        let resume = [
            ("Accept", "text/event-stream"),
            ("Last-Event-ID", last.as_str()),
        ];
        let (_, body, _) = stream_request(
            &b,
            &alice,
            head(Method::Get, "/broadcast/public:s", &resume),
            b"",
        )
        .await;
        let mut body = body.unwrap();
        let ack = next_event(&mut body).await;
        assert!(ack.contains("\"recovered\":true"), "{ack}");
        assert!(ack.starts_with(&format!("id: {epoch}:3\n")), "{ack}");
        assert!(next_event(&mut body)
            .await
            .starts_with(&format!("id: {epoch}:2\n")));
        assert!(next_event(&mut body)
            .await
            .starts_with(&format!("id: {epoch}:3\n")));
        // The same permissions as WebSocket; GET without the Accept: 406.
        let (status, _, _) = stream_request(
            &b,
            &None,
            head(Method::Get, "/broadcast/public:s", &sse),
            b"",
        )
        .await;
        assert_eq!(status, 403);
        let (status, _, _) = stream_request(
            &b,
            &alice,
            head(Method::Get, "/broadcast/public:s", &[]),
            b"",
        )
        .await;
        assert_eq!(status, 406);
        let (status, _, _) = stream_request(
            &b,
            &alice,
            head(Method::Delete, "/broadcast/public:s", &[]),
            b"",
        )
        .await;
        assert_eq!(status, 405);
        drop(body);
        assert_eq!(
            b.hub().subscriber_count("public:s"),
            0,
            "streams left the hub"
        );
    }

    #[test]
    fn event_ids_parse_strictly() {
        assert_eq!(
            parse_event_id(b"ab12:7"),
            Some(Since {
                seq: 7,
                epoch: "ab12".into()
            })
        );
        for bad in [
            &b""[..],
            b"7",
            b":7",
            b"zz:7",
            b"ab:-1",
            b"ab:x",
            b"00000000000000000:1",
            b"\xff:1",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_publish() {
        let b = Broadcast::new("/broadcast/");
        let mut c = Client::new(&b, user("bob"));
        c.sub("public:chat");
        let alice = user("alice");
        let (s, v) = post(
            &b,
            alice.clone(),
            Method::Post,
            "/broadcast/public:chat?x=1",
            r#"{"a":1}"#,
        );
        assert_eq!((s, v), (202, json!({"seq": 1})));
        assert_eq!(
            c.next(),
            Some(
                json!({"type": "message", "channel": "public:chat", "seq": 1,
                        "from": "alice", "data": {"a": 1}})
            )
        );
        assert_eq!(
            post(&b, None, Method::Post, "/broadcast/public:chat", "1").0,
            403
        );
        assert_eq!(
            post(
                &b,
                alice.clone(),
                Method::Post,
                "/broadcast/user:bob:x",
                "1"
            )
            .0,
            403
        );
        assert_eq!(
            post(
                &b,
                alice.clone(),
                Method::Post,
                "/broadcast/public:chat",
                "nope"
            )
            .0,
            400
        );
        assert_eq!(
            post(
                &b,
                alice.clone(),
                Method::Post,
                "/broadcast/public:chat",
                ""
            )
            .0,
            400
        );
        assert_eq!(
            post(&b, alice.clone(), Method::Post, "/broadcast/a%20b", "1").0,
            400
        );
        assert_eq!(
            post(&b, alice.clone(), Method::Post, "/broadcast", "1").0,
            400
        );
        assert_eq!(
            post(&b, alice.clone(), Method::Post, "/broadcast/", "1").0,
            400
        );
        assert_eq!(
            post(&b, alice.clone(), Method::Get, "/broadcast/public:chat", "").0,
            406
        );
        assert_eq!(
            post(
                &b,
                alice.clone(),
                Method::Put,
                "/broadcast/public:chat",
                "1"
            )
            .0,
            405
        );
        let (s, v) = post(&b, alice, Method::Post, "/broadcast/public:nobody", "1");
        assert_eq!((s, v), (202, json!({"seq": 0})));
        // The root route works too.
        let root = Broadcast::new("/");
        assert_eq!(
            post(&root, user("a"), Method::Post, "/public:x", "1").0,
            202
        );
    }
}
