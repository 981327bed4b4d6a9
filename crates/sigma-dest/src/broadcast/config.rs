//! `[broadcast]`: the channel rules and limits of the `&broadcast`
//! destination (the last stage of T → H → A → router → destination).

use serde::de::{self, Deserializer};
use serde::Deserialize;

use std::time::Duration;

use sigma_core::de::{duration, opt_duration, opt_positive, positive};

/// `[broadcast]`: the settings of every `&broadcast` hub (DESIGN §6).
///
/// ```toml
/// [broadcast]
/// max_subscriptions = 256          # channels one socket may join at once
/// max_message = 1048576            # bytes of a publish's encoded `data`; breach: 413 / error
/// history_size = 100               # publications each channel keeps (0: none) ...
/// history_ttl = "5m"               # ... each for this long
/// join_leave = false               # subscribers hear `join` / `leave`
/// [[broadcast.rule]]               # checked in order, before the built-in
/// pattern = "news:*"               #   `public:*` and `user:{user}:*`
/// subscribe = "anyone"             # "anyone" | "logged_in" | "nobody" | ["alice", ...]
/// publish = ["editor"]
/// presence = "nobody"              # who may ask who is subscribed (default: as subscribe)
/// history_size = 10                # these three default to the table's
/// history_ttl = "1h"
/// join_leave = true
/// ```
///
/// `max_message` bounds the `data` of one publish, as sigma encodes it
/// (compact JSON), over WebSocket and HTTP alike. It is never above
/// `websocket.max_outbound` (a delivery must fit a subscriber's outbound
/// queue): unset, it is [`super::DEFAULT_MAX_MESSAGE`] or
/// `websocket.max_outbound` if that is smaller; set above
/// `websocket.max_outbound`, the config is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// Channels one socket may subscribe to at once.
    pub max_subscriptions: usize,
    /// The largest encoded `data` of one publish, in bytes.
    pub max_message: usize,
    /// Publications each channel keeps, unless its rule says otherwise.
    pub history_size: usize,
    /// How long each is kept, unless its rule says otherwise.
    pub history_ttl: Duration,
    /// Subscribers hear joins and leaves, unless its rule says otherwise.
    pub join_leave: bool,
    /// Permission rules, first match decides; the built-in rules follow.
    pub rule: Vec<BroadcastRule>,
}

impl BroadcastConfig {
    /// The history channels keep unless their rule says otherwise.
    pub fn history(&self) -> sigma_store::Keep {
        sigma_store::Keep {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: super::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: super::DEFAULT_MAX_MESSAGE,
            history_size: super::DEFAULT_HISTORY.size,
            history_ttl: super::DEFAULT_HISTORY.ttl,
            join_leave: false,
            rule: Vec::new(),
        }
    }
}

/// `[broadcast]` as written; [`BroadcastTable::resolve`] turns it into a
/// [`BroadcastConfig`] (`max_message` depends on `[websocket]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BroadcastTable {
    #[serde(deserialize_with = "positive")]
    max_subscriptions: usize,
    #[serde(deserialize_with = "opt_positive")]
    max_message: Option<usize>,
    #[serde(deserialize_with = "history_size")]
    history_size: usize,
    #[serde(deserialize_with = "duration")]
    history_ttl: Duration,
    join_leave: bool,
    rule: Vec<BroadcastRule>,
}

impl Default for BroadcastTable {
    fn default() -> Self {
        Self {
            max_subscriptions: super::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: None,
            history_size: super::DEFAULT_HISTORY.size,
            history_ttl: super::DEFAULT_HISTORY.ttl,
            join_leave: false,
            rule: Vec::new(),
        }
    }
}

/// The most publications a channel may keep.
pub const MAX_HISTORY_SIZE: usize = 10_000;

fn history_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n > MAX_HISTORY_SIZE {
        return Err(de::Error::custom(format!(
            "{n} is above {MAX_HISTORY_SIZE} (0 keeps no history)"
        )));
    }
    Ok(n)
}

fn opt_history_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    history_size(d).map(Some)
}

impl BroadcastTable {
    /// The table with `max_message` resolved against
    /// `websocket.max_outbound` (see [`BroadcastConfig`]); the error is
    /// about `broadcast.max_message`.
    pub fn resolve(self, max_outbound: usize) -> Result<BroadcastConfig, String> {
        let max_message = match self.max_message {
            None => super::DEFAULT_MAX_MESSAGE.min(max_outbound),
            Some(m) if m > max_outbound => {
                return Err(format!(
                    "{m} is above websocket.max_outbound ({max_outbound}): a delivery must fit a subscriber's outbound queue"
                ))
            }
            Some(m) => m,
        };
        Ok(BroadcastConfig {
            max_subscriptions: self.max_subscriptions,
            max_message,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            join_leave: self.join_leave,
            rule: self.rule,
        })
    }
}

/// One `[[broadcast.rule]]`: who may subscribe to and publish on the
/// channels `pattern` matches (`*` any run of characters, `{user}` the
/// caller's user name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRule {
    /// The channel pattern, validated when the config is loaded.
    #[serde(deserialize_with = "channel_pattern")]
    pub pattern: super::Pattern,
    /// Who may subscribe.
    pub subscribe: ChannelAccess,
    /// Who may publish.
    pub publish: ChannelAccess,
    /// Who may ask who is subscribed (default: as `subscribe`).
    #[serde(default)]
    pub presence: Option<ChannelAccess>,
    /// Publications each channel keeps (default: `[broadcast]`'s).
    #[serde(default, deserialize_with = "opt_history_size")]
    pub history_size: Option<usize>,
    /// How long each is kept (default: `[broadcast]`'s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub history_ttl: Option<Duration>,
    /// Subscribers hear joins and leaves (default: `[broadcast]`'s).
    #[serde(default)]
    pub join_leave: Option<bool>,
}

/// Who a `[[broadcast.rule]]` lets in: `"anyone"` (anonymous clients
/// too), `"logged_in"`, `"nobody"`, or a list of user names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AccessRepr")]
pub enum ChannelAccess {
    /// Everyone, anonymous clients included.
    Anyone,
    /// Any authenticated user.
    LoggedIn,
    /// No one.
    Nobody,
    /// Only these users (never empty).
    Users(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AccessRepr {
    Word(String),
    Users(Vec<String>),
}

impl TryFrom<AccessRepr> for ChannelAccess {
    type Error = String;
    fn try_from(r: AccessRepr) -> Result<Self, String> {
        match r {
            AccessRepr::Word(w) => match w.as_str() {
                "anyone" => Ok(Self::Anyone),
                "logged_in" => Ok(Self::LoggedIn),
                "nobody" => Ok(Self::Nobody),
                _ => Err(format!(
                    "expected \"anyone\", \"logged_in\", \"nobody\" or a list of users, found \"{w}\""
                )),
            },
            AccessRepr::Users(u) if u.is_empty() => {
                Err("the list of users must not be empty (use \"nobody\")".to_owned())
            }
            AccessRepr::Users(u) => Ok(Self::Users(u)),
        }
    }
}

fn channel_pattern<'de, D>(d: D) -> Result<super::Pattern, D::Error>
where
    D: Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    super::Pattern::parse(&s).map_err(de::Error::custom)
}
