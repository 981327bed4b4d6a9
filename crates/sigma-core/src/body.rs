//! Streamed HTTP exchanges between the connection and a destination
//! (DESIGN §6: "streaming bodies both ways"; issue #6).
//!
//! ```text
//!  H ──Event::Body──▶ dispatch ──BodyTx (bounded)──▶ destination (proxy)
//!  H ◀─Reply::Chunk── conn ◀── BodyStream (polled only while H's output
//!                                is below OUTPUT_HIGH_WATER) ◀──┘
//! ```
//!
//! Only destinations whose [`crate::Capabilities::streams_http`] is
//! true use these types; the others get whole requests and give whole
//! responses. Both directions are bounded: the request body through a
//! channel of [`REQUEST_BODY_QUEUE`] pieces (the connection stops reading
//! the client while it is full), the response body by polling the source
//! only while the client keeps up.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sigma_http::{Response, ResponseHead};

use crate::identity::Tagged;

/// Pieces of a request body queued toward a destination before the
/// connection stops reading from the client.
pub const REQUEST_BODY_QUEUE: usize = 8;

/// Why a streamed request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The body exceeded the route's `max_body` (the client gets 413).
    TooLarge,
    /// The client went away or broke the framing.
    Aborted,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "request body too large",
            Self::Aborted => "request body aborted by the client",
        })
    }
}

impl std::error::Error for BodyError {}

/// The receiving half of a streamed request body: pieces, then the end
/// (`None`) or why it ended early.
#[derive(Debug)]
pub struct BodyRx {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    error: Arc<AtomicU8>,
}

/// The sending half, held by the connection's dispatch. Dropped without
/// [`BodyTx::finish`] (the connection went away), the body ends with
/// [`BodyError::Aborted`]: a truncated body never passes for a whole one.
#[derive(Debug)]
pub struct BodyTx {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    error: Arc<AtomicU8>,
    finished: bool,
}

/// A bounded body channel of [`REQUEST_BODY_QUEUE`] pieces.
pub fn body_channel() -> (BodyTx, BodyRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(REQUEST_BODY_QUEUE);
    let error = Arc::new(AtomicU8::new(0));
    (
        BodyTx {
            tx,
            error: Arc::clone(&error),
            finished: false,
        },
        BodyRx { rx, error },
    )
}

impl BodyTx {
    /// The channel's sender (to wait for room with `reserve_owned`).
    pub fn sender(&self) -> tokio::sync::mpsc::Sender<Bytes> {
        self.tx.clone()
    }

    /// Queues a piece without waiting.
    pub fn try_send(&self, b: Bytes) -> TrySend {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(b) {
            Ok(()) => TrySend::Sent,
            Err(TrySendError::Full(b)) => TrySend::Full(b),
            Err(TrySendError::Closed(_)) => TrySend::Closed,
        }
    }

    /// Queues a piece, waiting for room; false when the receiver is gone.
    pub async fn send(&self, b: Bytes) -> bool {
        self.tx.send(b).await.is_ok()
    }

    /// Ends the body with an error (after the pieces already queued).
    pub fn fail(mut self, e: BodyError) {
        let code = match e {
            BodyError::TooLarge => 1,
            BodyError::Aborted => 2,
        };
        self.error.store(code, Ordering::Release);
        self.finished = true;
    }

    /// Ends the body normally (after the pieces already queued).
    pub fn finish(mut self) {
        self.finished = true;
    }
}

/// What became of a piece given to [`BodyTx::try_send`].
#[derive(Debug)]
pub enum TrySend {
    /// Queued.
    Sent,
    /// No room: the piece is given back.
    Full(Bytes),
    /// The destination stopped reading the body.
    Closed,
}

impl Drop for BodyTx {
    fn drop(&mut self) {
        if !self.finished {
            self.error.store(2, Ordering::Release);
        }
    }
}

impl BodyRx {
    /// The next piece; `None` at the end; `Some(Err)` when it ended early.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(b))),
            Poll::Ready(None) => Poll::Ready(match self.error.load(Ordering::Acquire) {
                0 => None,
                1 => Some(Err(BodyError::TooLarge)),
                _ => Some(Err(BodyError::Aborted)),
            }),
        }
    }
}

/// A streamed response body: `Err` ends it badly (the client's connection
/// is aborted, since a truncated body must not pass for a whole one).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, ()>> + Send + 'static>>;

/// A streaming destination's answer.
pub enum Streamed {
    /// A whole response (an error, or a small answer).
    Whole(Response),
    /// `echo_identity`: the reply did not carry the `X-Sigma-Identity` it
    /// was sent; the client gets 502 and none of the reply, counted as an
    /// identity mismatch (the reply rule for out-of-process destinations).
    IdentityMismatch,
    /// A response whose body follows.
    Stream {
        /// Status, headers and, when known, the length.
        head: ResponseHead,
        /// The body.
        body: BodyStream,
    },
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(r) => f.debug_tuple("Whole").field(&r.status).finish(),
            Self::IdentityMismatch => f.write_str("IdentityMismatch"),
            Self::Stream { head, .. } => f.debug_tuple("Stream").field(&head.status).finish(),
        }
    }
}

/// A streaming destination's answer, being computed.
pub type LaterStreamed = Pin<Box<dyn Future<Output = Tagged<Streamed>> + Send + 'static>>;

/// Why a WebSocket upgrade is refused ([`Admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// With this HTTP status (`400`, `502`, `504`).
    Status(u16),
    /// `echo_identity`: the upstream's `101` did not carry the identity it
    /// was sent. The client gets `502`, counted as an identity mismatch.
    IdentityMismatch,
}

/// Whether a WebSocket upgrade is accepted (`Ok`) or refused, once known
/// ([`crate::WsEndpoint::accept_when`]).
pub type Admission = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'static>>;

/// What a streaming destination knows about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address as `A` determined it (`auth.trusted_proxies`).
    pub ip: IpAddr,
    /// `A` authenticated the request with its `Authorization` header (a
    /// sigma credential): the header must not be passed on.
    pub bearer: bool,
}
