//! The replies of one connection in request order ([`Outbox`]): those
//! ready now, those still computed, and the streamed body in progress.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::Future;
use sigma_http::Reply;

use crate::streaming::BodyStream;

/// What a pending reply becomes: a reply, or the head of a streamed
/// response with its body.
pub enum Outgoing {
    /// A reply.
    Reply(Reply),
    /// A streamed response: its head, then its body's pieces.
    Stream(sigma_http::ResponseHead, BodyStream),
}

/// A reply that is still being computed.
pub type LaterReply = Pin<Box<dyn Future<Output = Outgoing> + Send + 'static>>;

/// Replies in request order: those ready now, those still computed, and
/// the body of the streamed response in progress.
#[derive(Default)]
pub struct Outbox {
    /// Replies ready to be handed to `H`.
    pub ready: VecDeque<Reply>,
    /// Replies being computed, in request order. A ready reply queued while
    /// some are pending waits behind them.
    pub pending: FuturesOrdered<LaterReply>,
    /// The body of the streamed response being sent: until it ends, the
    /// replies behind it wait (the connection polls it only while `H`'s
    /// output is below its high-water mark).
    pub body: Option<BodyStream>,
}

impl Outbox {
    /// Queues a reply that is ready now.
    pub fn push(&mut self, reply: Reply) {
        if self.pending.is_empty() && self.body.is_none() {
            self.ready.push_back(reply);
        } else {
            self.pending
                .push_back(Box::pin(futures_util::future::ready(Outgoing::Reply(
                    reply,
                ))));
        }
    }

    /// Takes a computed reply (from `pending`, in order).
    pub fn accept(&mut self, out: Outgoing) {
        match out {
            Outgoing::Reply(r) => self.ready.push_back(r),
            Outgoing::Stream(head, body) => {
                self.ready.push_back(Reply::Head(head));
                self.body = Some(body);
            }
        }
    }

    /// Takes the next piece of the streamed body (`None`: its end).
    pub fn on_body(&mut self, piece: Option<Result<Bytes, ()>>) {
        match piece {
            Some(Ok(b)) => self.ready.push_back(Reply::Chunk(b)),
            Some(Err(())) => {
                // The source failed mid-body: the client must not take the
                // truncated body for a whole one.
                self.body = None;
                self.ready.push_back(Reply::Abort);
            }
            None => {
                self.body = None;
                self.ready.push_back(Reply::EndOfBody);
            }
        }
    }

    /// Forgets the streamed body in progress (`H` refused it).
    pub(super) fn drop_body(&mut self) {
        self.body = None;
        self.ready
            .retain(|r| !matches!(r, Reply::Chunk(_) | Reply::EndOfBody));
    }

    /// Queues a reply that is still being computed.
    pub fn push_later(&mut self, reply: LaterReply) {
        self.pending.push_back(reply);
    }
}
