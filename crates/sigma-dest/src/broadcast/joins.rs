//! Joins and leaves (`join_leave`): this hub counts each user's
//! connections per channel; when a user's first one here subscribes or
//! its last one here leaves, the hub announces it to its own subscribers
//! (one node), or hands it to the broker, which announces it on every
//! node once the user's first connection in the whole cluster joined or
//! its last one left ([`sigma_store::RedisBroker`]), back through
//! [`sigma_store::BrokerHandler::handle_join_leave`].

use std::sync::Arc;

use super::{lock, ChannelState, Hub, Member};

fn kind(joined: bool) -> &'static str {
    if joined {
        "join"
    } else {
        "leave"
    }
}

impl Hub {
    /// `user`'s first connection here (`member`) joined `channel`
    /// (`joined`), or its last one here left. On a channel that wants it,
    /// announced here, skipping `member`, unless the broker announces it;
    /// the subscribers that did not take it are returned (to evict).
    pub(super) fn joined_or_left(
        &self,
        st: &ChannelState,
        channel: &str,
        user: &str,
        member: u64,
        joined: bool,
    ) -> Vec<Arc<Member>> {
        if !st.join_leave
            || self
                .broker
                .announce_join_leave(channel, user, member, joined)
        {
            return Vec::new();
        }
        st.announce(kind(joined), channel, user, member)
    }

    /// The broker announces that `user` joined or left `channel`: this
    /// node's live subscribers hear it, but `skip` (the connection that
    /// joined); those that do not take it are evicted.
    pub(super) fn announced(&self, channel: &str, user: &str, joined: bool, skip: Option<u64>) {
        let Some(ch) = self.lookup(channel) else {
            return;
        };
        let failed = {
            let st = lock(&ch.state);
            if st.closed {
                return;
            }
            // Member ids start at 1: 0 skips nobody.
            st.announce(kind(joined), channel, user, skip.unwrap_or(0))
        };
        self.departed(channel, &ch, &failed, false);
    }

    /// Every user counted on `st` is gone from this node at once (the
    /// broker lost the other nodes): the broker hears each leave.
    pub(super) fn all_left(&self, st: &ChannelState, channel: &str) {
        if st.join_leave {
            for user in st.users.keys() {
                self.broker.announce_join_leave(channel, user, 0, false);
            }
        }
    }
}
