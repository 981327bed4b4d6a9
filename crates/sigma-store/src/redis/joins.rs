//! Joins and leaves across nodes ([`crate::Broker::announce_join_leave`]).
//!
//! ```text
//!  hub: bob's first socket here ─▶ Change ─▶ [presence writer] ─EVAL─▶ ZADD {prefix}bu…/{channel}/bob node
//!                                   (PRESENCE_QUEUE, in order)         set empty before? PUBLISH {prefix}bj{route}/{channel}
//!  every node's hub ◀─handle_join_leave─ [pubsub task] ◀─PSUBSCRIBE {prefix}bj*─┘
//! ```
//!
//! Each hub counts its own connections per user; it hands the broker a
//! user's first local join and last local leave on a `join_leave`
//! channel. Redis keeps, per (channel, user), a sorted set of the nodes
//! that have the user there, scored by expiry ([`PRESENCE_TTL`]). One
//! script per change: a join drops the expired entries, adds this node
//! and announces `join` when no node was left before; a leave removes
//! this node and announces `leave` when none is left. The event (`j`|`l`,
//! the node, the socket, the user) goes to every node's hub; the node it
//! came from skips the socket that caused it.
//!
//! **Bounds and repair.** Changes go through the presence queue, in the
//! order they were made, and are checked against what the node holds
//! when they are sent (a leave undone by a later join is not sent, nor
//! is a join undone by a later leave). Every `keep_alive` round re-sends
//! a join for each (channel, user) this node holds, which refreshes its
//! entry and repairs a join dropped at the queue's bound or lost with
//! Redis (announced late, never twice while an entry lives); a leave that
//! did not reach Redis is kept (up to [`MAX_UNSENT`] per hub) and sent
//! again. A leave dropped beyond that, or a node that dies, leaves an
//! entry that expires within the TTL without a `leave` announced.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

use super::{
    presence_expiry, unix_ms, BrokerShared, Inner, PresenceOp, RedisBroker, PRESENCE_QUEUE,
    PRESENCE_TTL,
};

/// Leaves kept to be sent again, per hub, at most.
pub const MAX_UNSENT: usize = PRESENCE_QUEUE;

/// One change (see the module's doc). KEYS: the (channel, user) set of
/// nodes. ARGV: this node, now and the entry's expiry in Unix ms, the
/// set's time to live in ms, `j` or `l`, the events channel, the event.
/// Answers 1 when it announced.
const JOIN_LEAVE_SCRIPT: &str = r"
if ARGV[5] == 'j' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
  local before = redis.call('ZCARD', KEYS[1])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  if before == 0 then
    redis.call('PUBLISH', ARGV[6], ARGV[7])
    return 1
  end
  return 0
end
local had = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if had == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 1
end
return 0
";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one hub's broker knows of its joins (in [`BrokerShared`]).
#[derive(Default)]
pub(super) struct Joins {
    /// The users this node has in each `join_leave` channel.
    held: Mutex<HashMap<String, HashSet<String>>>,
    /// Leaves that did not reach Redis: (channel, user).
    unsent: Mutex<HashSet<(String, String)>>,
}

impl Joins {
    fn holds(&self, channel: &str, user: &str) -> bool {
        lock(&self.held)
            .get(channel)
            .is_some_and(|users| users.contains(user))
    }

    fn keep_unsent(&self, channel: String, user: String) {
        let mut unsent = lock(&self.unsent);
        if unsent.len() < MAX_UNSENT {
            unsent.insert((channel, user));
        }
    }
}

/// One join or leave on its way to Redis.
pub(super) struct Change {
    shared: Weak<BrokerShared>,
    channel: String,
    user: String,
    /// The socket that caused it (0: none, a refresh or a retry).
    member: u64,
    joined: bool,
}

/// The pattern of every hub's events.
pub(super) fn pattern(prefix: &str) -> String {
    format!("{prefix}bj*")
}

impl Inner {
    /// The (channel, user) set of nodes: the route's length first, so that
    /// no two (route, channel, user) share a key.
    fn joins_key(&self, namespace: &str, channel: &str, user: &str) -> String {
        format!(
            "{}bu{}:{namespace}/{channel}/{user}",
            self.prefix,
            namespace.len()
        )
    }

    fn joins_channel(&self, namespace: &str, channel: &str) -> String {
        format!("{}bj{namespace}/{channel}", self.prefix)
    }
}

impl RedisBroker {
    /// The hub's change, queued for the presence writer.
    pub(super) fn join_leave(&self, channel: &str, user: &str, member: u64, joined: bool) {
        {
            let mut held = lock(&self.shared.joins.held);
            if joined {
                held.entry(channel.to_owned())
                    .or_default()
                    .insert(user.to_owned());
            } else if let Some(users) = held.get_mut(channel) {
                users.remove(user);
                if users.is_empty() {
                    held.remove(channel);
                }
            }
        }
        let change = Change {
            shared: std::sync::Arc::downgrade(&self.shared),
            channel: channel.to_owned(),
            user: user.to_owned(),
            member,
            joined,
        };
        send(&self.inner, &self.shared.joins, change);
    }
}

/// Queues `change` for the presence writer. At the queue's bound a join
/// is dropped (the next refresh repairs it) and a leave is kept.
fn send(me: &Inner, joins: &Joins, change: Change) {
    if let Err(e) = me.presence.try_send(PresenceOp::JoinLeave(change)) {
        if let PresenceOp::JoinLeave(c) = e.into_inner() {
            if !c.joined {
                joins.keep_unsent(c.channel, c.user);
            }
        }
    }
}

/// Adds `change` to the writer's `pipe` unless it no longer holds (its
/// hub is gone, or a later change undid it): true if it was added.
pub(super) fn queue(me: &Inner, pipe: &mut redis::Pipeline, change: &Change) -> bool {
    let Some(shared) = change.shared.upgrade() else {
        return false;
    };
    if shared.joins.holds(&change.channel, &change.user) != change.joined {
        return false;
    }
    let (kind, now) = (if change.joined { "j" } else { "l" }, unix_ms());
    let event = format!("{kind} {:x} {} {}", me.node, change.member, change.user);
    pipe.cmd("EVAL")
        .arg(JOIN_LEAVE_SCRIPT)
        .arg(1)
        .arg(me.joins_key(&shared.namespace, &change.channel, &change.user))
        .arg(format!("{:x}", me.node))
        .arg(now)
        .arg(presence_expiry())
        .arg(u64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(u64::MAX))
        .arg(kind)
        .arg(me.joins_channel(&shared.namespace, &change.channel))
        .arg(event)
        .ignore();
    true
}

/// The writer could not send `changes`: their leaves are kept, to be
/// sent again (their joins are refreshed anyway).
pub(super) fn failed(changes: Vec<Change>) {
    for c in changes {
        if let (false, Some(shared)) = (c.joined, c.shared.upgrade()) {
            shared.joins.keep_unsent(c.channel, c.user);
        }
    }
}

/// One `keep_alive` round: a join for each (channel, user) this node
/// holds (its entry refreshed, a lost join repaired), then the unsent
/// leaves, while the presence queue is at most half full.
pub(super) fn refresh(me: &Inner) {
    let room = |me: &Inner| me.presence.capacity() > PRESENCE_QUEUE / 2;
    for shared in me.brokers() {
        let held: Vec<(String, String)> = lock(&shared.joins.held)
            .iter()
            .flat_map(|(c, users)| users.iter().map(move |u| (c.clone(), u.clone())))
            .collect();
        let unsent: Vec<(String, String)> = lock(&shared.joins.unsent).drain().collect();
        let changes = held
            .into_iter()
            .map(|p| (p, true))
            .chain(unsent.into_iter().map(|p| (p, false)));
        for ((channel, user), joined) in changes {
            if !room(me) {
                if !joined {
                    shared.joins.keep_unsent(channel, user);
                }
                continue;
            }
            let change = Change {
                shared: std::sync::Arc::downgrade(&shared),
                channel,
                user,
                member: 0,
                joined,
            };
            send(me, &shared.joins, change);
        }
    }
}

/// `j|l node member user`, as [`queue`] publishes it: (joined, node,
/// member, user).
fn parse_event(payload: &[u8]) -> Option<(bool, u64, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ' ');
    let joined = match parts.next()? {
        "j" => true,
        "l" => false,
        _ => return None,
    };
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let member = parts.next()?.parse().ok()?;
    let user = parts.next().filter(|u| !u.is_empty())?;
    Some((joined, node, member, user))
}

/// An event on `{prefix}bj{rest}` (`rest`: `{route}/{channel}`): handed
/// to the hub of that route if it listens to the channel.
pub(super) fn on_event(me: &Inner, rest: &str, payload: &[u8]) {
    let Some((ns, channel)) = rest.rsplit_once('/') else {
        return;
    };
    let Some((joined, node, member, user)) = parse_event(payload) else {
        tracing::warn!(channel = rest, "redis: a malformed join/leave was dropped");
        return;
    };
    let skip = Some(member).filter(|m| node == me.node && *m != 0);
    if let Some(h) = me.broker_of(ns).and_then(|b| b.listener(channel)) {
        h.handle_join_leave(channel, user, joined, skip);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::redis::tests::{test_cluster, test_cluster_on};
    use crate::redis::{DEFAULT_TTL, PING_EVERY};
    use crate::{Broker, BrokerHandler, Publication};

    type Event = (String, String, bool, Option<u64>);

    /// What a node's hub is told of joins and leaves.
    #[derive(Default)]
    struct Heard(Mutex<Vec<Event>>);

    impl BrokerHandler for Heard {
        fn handle_publication(&self, _: &str, _: &Publication) {}
        fn handle_join_leave(&self, channel: &str, user: &str, joined: bool, skip: Option<u64>) {
            lock(&self.0).push((channel.to_owned(), user.to_owned(), joined, skip));
        }
    }

    impl Heard {
        /// The next `n` events, waited for up to 5 s.
        async fn take(&self, n: usize) -> Vec<Event> {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                {
                    let mut heard = lock(&self.0);
                    if heard.len() >= n {
                        return heard.drain(..n).collect();
                    }
                    assert!(Instant::now() < deadline, "heard only {:?}", *heard);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        fn rest(&self) -> Vec<Event> {
            lock(&self.0).drain(..).collect()
        }
    }

    fn ev(user: &str, joined: bool, skip: Option<u64>) -> Event {
        ("room".to_owned(), user.to_owned(), joined, skip)
    }

    /// Two nodes on one prefix: a user's first join anywhere and its last
    /// leave anywhere are announced to both, once; the node it came from
    /// is told which socket to skip. `carol`'s changes, made after bob's
    /// on the same node, mark the point by which bob's would have been
    /// heard (one node's changes reach Redis in order, and one pub/sub
    /// connection receives them in that order).
    #[tokio::test]
    async fn joins_and_leaves_are_coalesced_across_nodes() {
        let Some(a) = test_cluster().await else {
            return;
        };
        let b = test_cluster_on(&a.inner.prefix, DEFAULT_TTL, PING_EVERY)
            .await
            .expect("the same Redis");
        let (ha, hb) = (Arc::new(Heard::default()), Arc::new(Heard::default()));
        let ba = a.broker("/r", Arc::downgrade(&ha) as Weak<dyn BrokerHandler>);
        let bb = b.broker("/r", Arc::downgrade(&hb) as Weak<dyn BrokerHandler>);
        ba.subscribe("room").unwrap();
        bb.subscribe("room").unwrap();
        // A user name may hold spaces and slashes.
        let bob = "bob / x";
        assert!(ba.announce_join_leave("room", bob, 7, true));
        assert_eq!(ha.take(1).await, [ev(bob, true, Some(7))]);
        assert_eq!(hb.take(1).await, [ev(bob, true, None)]);
        // bob on B too: no second join.
        bb.announce_join_leave("room", bob, 9, true);
        bb.announce_join_leave("room", "carol", 3, true);
        assert_eq!(ha.take(1).await, [ev("carol", true, None)]);
        assert_eq!(hb.take(1).await, [ev("carol", true, Some(3))]);
        // bob leaves A, still on B: no leave.
        ba.announce_join_leave("room", bob, 7, false);
        ba.announce_join_leave("room", "carol", 4, true);
        ba.announce_join_leave("room", "carol", 4, false);
        bb.announce_join_leave("room", "carol", 3, false);
        assert_eq!(ha.take(1).await, [ev("carol", false, None)]);
        assert_eq!(hb.take(1).await, [ev("carol", false, Some(3))]);
        // bob's last socket, on B, leaves: both hear it.
        bb.announce_join_leave("room", bob, 9, false);
        assert_eq!(ha.take(1).await, [ev(bob, false, None)]);
        assert_eq!(hb.take(1).await, [ev(bob, false, Some(9))]);
        // A join dropped at the queue's bound is repaired by the next
        // refresh (announced, skipping nobody); one refresh more says
        // nothing new.
        lock(&bb.shared.joins.held)
            .entry("room".to_owned())
            .or_default()
            .insert("dave".to_owned());
        refresh(&b.inner);
        assert_eq!(ha.take(1).await, [ev("dave", true, None)]);
        refresh(&b.inner);
        bb.announce_join_leave("room", "dave", 5, false);
        assert_eq!(ha.take(1).await, [ev("dave", false, None)]);
        assert_eq!(
            hb.take(2).await,
            [ev("dave", true, None), ev("dave", false, Some(5))]
        );
        // A channel a node does not listen to is not handed to its hub.
        bb.announce_join_leave("elsewhere", "erin", 6, true);
        bb.announce_join_leave("room", "erin", 6, true);
        assert_eq!(ha.take(1).await, [ev("erin", true, None)]);
        assert!(ha.rest().is_empty());
        assert_eq!(hb.take(1).await, [ev("erin", true, Some(6))]);
        assert!(hb.rest().is_empty());
    }

    #[test]
    fn events_parse_strictly() {
        assert_eq!(parse_event(b"j ff 3 a b"), Some((true, 255, 3, "a b")));
        assert_eq!(parse_event(b"l 0 0 u"), Some((false, 0, 0, "u")));
        for bad in [
            &b""[..],
            b"j",
            b"x ff 3 u",
            b"j zz 3 u",
            b"j ff -1 u",
            b"j ff 3 ",
            b"j ff 3",
            b"\xff ff 3 u",
        ] {
            assert_eq!(parse_event(bad), None, "{bad:?}");
        }
    }
}
