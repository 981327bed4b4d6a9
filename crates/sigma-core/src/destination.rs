//! The destination interface: where requests end (DESIGN §6).
//!
//! ```text
//!  A ──Tagged{identity, request}──▶ router ──▶ [ Destination ] ──Tagged{identity, reply}──▶ A
//! ```
//!
//! A destination takes tagged messages and returns tagged replies; it never
//! sees the socket, and `A` checks every reply it returns. This module
//! declares the interface only: the route table that picks a destination
//! and the destinations themselves live above this crate.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use sigma_http::{RequestHead, Response, WsMessage};

use crate::body::{Admission, BodyRx, ClientInfo, LaterStreamed, Streamed};
use crate::identity::{Principal, Tagged};
use crate::push::WsSender;

/// A complete request as a destination sees it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The head (identity headers already stripped by `A`).
    pub head: RequestHead,
    /// The complete body.
    pub body: Bytes,
}

/// A destination's answer: now, or later (a future that resolves to it).
pub enum Handled {
    /// The response is ready.
    Ready(Tagged<Response>),
    /// The response is being computed.
    Later(Pin<Box<dyn Future<Output = Tagged<Response>> + Send + 'static>>),
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(&r.msg.status).finish(),
            Self::Later(_) => f.write_str("Later"),
        }
    }
}

/// Where requests end (the seed's "internal τ server connection").
pub trait Destination: Send + Sync {
    /// The destination's name as written in the config (`&echo`).
    fn name(&self) -> &str;
    /// Answers one HTTP request, with the identity it was tagged with.
    /// Destinations that stream ([`Destination::streams_http`]) are never
    /// given whole requests and keep the default, a `500`.
    fn http(&self, req: Tagged<HttpRequest>) -> Handled {
        let resp = Response::new(500, Vec::new(), Bytes::from_static(b"internal error\n"));
        Handled::Ready(Tagged::new(req.identity, resp))
    }
    /// Opens a WebSocket endpoint for a client authenticated as `identity`
    /// (fixed for the socket's life), or `None` when WebSocket is not
    /// offered here. `push` is the socket's bounded outbound queue, for
    /// messages that do not answer one of the client's (deliveries).
    fn websocket(&self, identity: &Principal, push: WsSender) -> Option<Box<dyn WsEndpoint>>;
    /// Like [`Destination::websocket`], with the upgrade request's head
    /// (identity headers stripped) and what `A` knows about the client (its
    /// address, whether it authenticated with its `Authorization` header):
    /// for destinations that bind the socket to how it was authenticated
    /// (`&world`, DESIGN §5) or pass the upgrade on (the proxy). The
    /// default ignores both.
    fn websocket_upgrade(
        &self,
        head: &RequestHead,
        identity: &Principal,
        push: WsSender,
        client: ClientInfo,
    ) -> Option<Box<dyn WsEndpoint>> {
        let _ = (head, client);
        self.websocket(identity, push)
    }
    /// True when this destination serves authenticated clients only, even
    /// on a route with `auth = "optional"` or `"none"`: an anonymous
    /// WebSocket upgrade gets 401 and no upgrade (`&world`, DESIGN §5
    /// step 1). Default: false.
    fn requires_identity(&self) -> bool {
        false
    }
    /// True when this destination takes requests as they arrive, body
    /// streamed ([`Destination::http_stream`]) rather than whole (the
    /// upstream proxy; issue #6). Default: whole requests only.
    fn streams_http(&self) -> bool {
        false
    }
    /// Answers a request whose body is still arriving through `body`
    /// (bounded; closed at the end), possibly with a streamed response.
    /// Called only when [`Destination::streams_http`] is true.
    fn http_stream(
        &self,
        head: Tagged<RequestHead>,
        body: BodyRx,
        client: ClientInfo,
    ) -> LaterStreamed {
        let _ = (body, client);
        let resp = Response::new(501, Vec::new(), Bytes::from_static(b"not implemented\n"));
        Box::pin(std::future::ready(Tagged::new(
            head.identity,
            Streamed::Whole(resp),
        )))
    }
}

/// One WebSocket connection's view of its destination.
pub trait WsEndpoint: Send {
    /// Handles one client message; may answer it at once.
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>>;
    /// Called once before the upgrade is accepted: a future that decides
    /// to accept (`Ok`) or refuse with an HTTP status (the proxy waits for
    /// its upstream: 502). Default `None`: accept at once.
    fn accept_when(&mut self) -> Option<Admission> {
        None
    }
    /// The client started or answered the close handshake, with this code
    /// (if it sent one) and reason. Default: nothing (the endpoint is
    /// dropped when the socket ends).
    fn on_close(&mut self, code: Option<u16>, reason: &str) {
        let _ = (code, reason);
    }
}
