//! sigma-core: the vocabulary the pipeline stages speak, below all of them.
//!
//! ```text
//!  T ──▶ H (sigma-http) ──▶ A ──Tagged{identity, msg}──▶ router ──▶ destination
//!                              ◀─Tagged{identity, reply}──
//!        sigma-core: Identity, Tagged, the reply rule, Destination,
//!                    push queues, body streams
//! ```
//!
//! This crate owns no socket, no configuration and no storage: it is the
//! set of small owned values that `A`, the router and the destinations
//! exchange, and the one interface every destination implements. It
//! depends on `sigma-http` only; every other sigma crate may import it.
//!
//! - [`identity`]: who a message is from or for ([`Identity`],
//!   [`Principal`], [`Tagged`]).
//! - [`reply`]: the reply rule ([`check_reply`]) and its one policy for
//!   what it drops ([`enforce`], [`ReplyAudit`]).
//! - [`destination`]: where requests end ([`Destination`], [`WsEndpoint`]).
//! - [`push`]: the bounded queue a destination pushes WebSocket messages
//!   into ([`ws_push_queue`]).
//! - [`body`]: streamed request and response bodies ([`body_channel`]).
//! - [`response`]: the plain-text and JSON answers ([`response::plain`]).
//! - [`etag`]: the one entity-tag parser (`If-Match`, `If-None-Match`).
//! - [`clock`]: where the shell reads the time ([`SystemClock`], and a
//!   [`FakeClock`] tests move by hand).
//! - [`reject`]: where stages count what they refuse ([`Rejects`]).
//! - [`de`]: the field deserializers every config table shares
//!   (durations, positive counts, [`net::Cidr`] lists); [`namedfile`]:
//!   the bounded read of a file the configuration names; [`loglimit`]:
//!   the log budget; [`percent`]: percent-decoding of a path segment.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod assertion;
pub mod body;
pub mod clock;
pub mod de;
pub mod destination;
pub mod etag;
pub mod identity;
pub mod loglimit;
pub mod namedfile;
pub mod net;
pub mod percent;
pub mod push;
pub mod reject;
pub mod reply;
pub mod response;
pub mod sample;

pub use assertion::{AssertedRequest, Asserter};
pub use body::{
    body_channel, Admission, BodyError, BodyRx, BodyStream, BodyTx, ClientInfo, LaterStreamed,
    Refusal, Streamed, TrySend, REQUEST_BODY_QUEUE,
};
pub use clock::{Clock, FakeClock, SystemClock};
pub use destination::{
    Answer, Capabilities, Destination, Handled, HttpRequest, Request, Upgrade, UpgradeRequest,
    WsEndpoint,
};
pub use identity::{
    is_identity_header, strip_identity_headers, tag_request, Identity, IdentityMismatch, Principal,
    Provider, SessionRef, Tagged,
};
pub use push::{
    ws_push_queue, ws_push_queue_for, Delivered, PushError, Pushed, WsCloser, WsReceiver, WsSender,
    WS_CLOSE_REVOKED, WS_PUSH_BYTES, WS_PUSH_QUEUE,
};
pub use reject::{RejectCounts, Rejects};
pub use reply::{check_reply, enforce, same_principal, Dropped, ReplyAudit};
pub use sample::Sample;
