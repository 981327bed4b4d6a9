//! `[broadcast]`: the channel rules and limits of the `&broadcast`
//! destination (the last stage of T → H → A → router → destination).

use serde::de::{self, Deserializer};
use serde::Deserialize;

use sigma_core::de::{opt_positive, positive};

/// `[broadcast]`: the settings of every `&broadcast` hub (DESIGN §6).
///
/// ```toml
/// [broadcast]
/// max_subscriptions = 256          # channels one socket may join at once
/// max_message = 1048576            # bytes of a publish's encoded `data`; breach: 413 / error
/// [[broadcast.rule]]               # checked in order, before the built-in
/// pattern = "news:*"               #   `public:*` and `user:{user}:*`
/// subscribe = "anyone"             # "anyone" | "logged_in" | "nobody" | ["alice", ...]
/// publish = ["editor"]
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
    /// Permission rules, first match decides; the built-in rules follow.
    pub rule: Vec<BroadcastRule>,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        Self {
            max_subscriptions: super::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: super::DEFAULT_MAX_MESSAGE,
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
    rule: Vec<BroadcastRule>,
}

impl Default for BroadcastTable {
    fn default() -> Self {
        Self {
            max_subscriptions: super::DEFAULT_MAX_SUBSCRIPTIONS,
            max_message: None,
            rule: Vec::new(),
        }
    }
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
