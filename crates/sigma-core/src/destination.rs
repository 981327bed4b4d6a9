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

/// What a destination takes, declared once: dispatch reads it to decide
/// what to hand over, instead of inferring it from which methods a
/// destination overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Takes requests as they arrive, body streamed ([`Request::Stream`])
    /// rather than whole ([`Request::Http`]): the upstream proxy, static
    /// files (issue #6).
    pub streams_http: bool,
    /// Offers WebSocket ([`Request::Upgrade`]); otherwise an upgrade to it
    /// gets 404.
    pub websocket: bool,
    /// Serves authenticated clients only, even on a route with `auth =
    /// "optional"` or `"none"`: an anonymous upgrade gets 401 and no
    /// upgrade (`&world`, DESIGN §5 step 1).
    pub requires_identity: bool,
}

impl Capabilities {
    /// Whole HTTP requests only.
    pub const HTTP: Self = Self {
        streams_http: false,
        websocket: false,
        requires_identity: false,
    };
    /// Whole HTTP requests and WebSocket.
    pub const HTTP_AND_WEBSOCKET: Self = Self {
        websocket: true,
        ..Self::HTTP
    };
}

/// A WebSocket upgrade handed to a destination.
#[derive(Debug)]
pub struct Upgrade {
    /// Who the socket is for, fixed for its life.
    pub identity: Principal,
    /// The socket's bounded outbound queue, for messages that do not
    /// answer one of the client's (deliveries).
    pub push: WsSender,
    /// The client's upgrade request, when a client sent one; `None` for a
    /// socket sigma opens itself (a world's link to its destination).
    pub from: Option<UpgradeRequest>,
}

/// The client's side of an [`Upgrade`]: for destinations that bind the
/// socket to how it was authenticated (`&world`, DESIGN §5) or pass the
/// upgrade on (the proxy).
#[derive(Debug)]
pub struct UpgradeRequest {
    /// The upgrade request's head (identity headers stripped).
    pub head: RequestHead,
    /// What `A` knows about the client.
    pub client: ClientInfo,
}

/// One thing handed to a destination: a request, or an upgrade.
#[derive(Debug)]
pub enum Request {
    /// A complete request (destinations that do not stream).
    Http(Tagged<HttpRequest>),
    /// A request whose body is still arriving through `body` (bounded;
    /// closed at the end), to destinations that stream.
    Stream {
        /// The head, tagged with the request's identity.
        head: Tagged<RequestHead>,
        /// The body, as it arrives.
        body: BodyRx,
        /// What `A` knows about the client.
        client: ClientInfo,
    },
    /// A WebSocket upgrade (destinations that offer WebSocket).
    Upgrade(Upgrade),
}

impl Request {
    /// The answer for a request of a kind this destination does not take
    /// (its [`Capabilities`] say so, and dispatch never sends one): `500`
    /// for a whole request, `501` for a streamed one, no socket for an
    /// upgrade.
    pub fn not_taken(self) -> Answer {
        match self {
            Self::Http(req) => {
                let resp = Response::new(500, Vec::new(), Bytes::from_static(b"internal error\n"));
                Answer::Http(Handled::Ready(Tagged::new(req.identity, resp)))
            }
            Self::Stream { head, .. } => {
                let resp = Response::new(501, Vec::new(), Bytes::from_static(b"not implemented\n"));
                Answer::Stream(Box::pin(std::future::ready(Tagged::new(
                    head.identity,
                    Streamed::Whole(resp),
                ))))
            }
            Self::Upgrade(_) => Answer::NoSocket,
        }
    }
}

/// A destination's answer to a [`Request`].
pub enum Answer {
    /// To a whole request: a whole response, now or later.
    Http(Handled),
    /// To a streamed request: a response, possibly streamed.
    Stream(LaterStreamed),
    /// To an upgrade: the socket's endpoint.
    Socket(Box<dyn WsEndpoint>),
    /// To an upgrade: no WebSocket here (404).
    NoSocket,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(h) => f.debug_tuple("Http").field(h).finish(),
            Self::Stream(_) => f.write_str("Stream"),
            Self::Socket(_) => f.write_str("Socket"),
            Self::NoSocket => f.write_str("NoSocket"),
        }
    }
}

impl Answer {
    /// The answer to a whole request, or `None` for another kind.
    pub fn into_http(self) -> Option<Handled> {
        match self {
            Self::Http(h) => Some(h),
            _ => None,
        }
    }

    /// The answer to an upgrade: the endpoint, or `None` (no WebSocket).
    pub fn into_socket(self) -> Option<Box<dyn WsEndpoint>> {
        match self {
            Self::Socket(ep) => Some(ep),
            _ => None,
        }
    }
}

/// Where requests end (the seed's "internal τ server connection"): one
/// entry point, a [`Request`] in and an [`Answer`] out, and the
/// [`Capabilities`] that say which requests it takes.
pub trait Destination: Send + Sync {
    /// The destination's name as written in the config (`&echo`).
    fn name(&self) -> &str;
    /// What this destination takes (constant for its life).
    fn capabilities(&self) -> Capabilities;
    /// Answers one request or upgrade, tagged with its identity. A kind
    /// its capabilities do not declare gets [`Request::not_taken`].
    fn handle(&self, req: Request) -> Answer;
    /// What it reports on `/metrics` ([`crate::Sample`]s; the shell adds
    /// the `route` label). Read when `/metrics` is scraped. Default: none.
    fn metrics(&self) -> Vec<crate::Sample> {
        Vec::new()
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
    /// Every message of one read has been handed to
    /// [`WsEndpoint::on_message`] (and before [`WsEndpoint::on_close`]):
    /// an endpoint that held some back to handle them together (the
    /// session socket verifies their signatures as one batch) handles them
    /// now, answering through its push queue. Default: nothing.
    fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::ws_push_queue;

    /// Takes whole requests only, and says so.
    struct Plain;

    impl Destination for Plain {
        fn name(&self) -> &str {
            "&plain"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::HTTP
        }
        fn handle(&self, req: Request) -> Answer {
            match req {
                Request::Http(req) => Answer::Http(Handled::Ready(Tagged::new(
                    req.identity,
                    Response::new(204, Vec::new(), Bytes::new()),
                ))),
                other => other.not_taken(),
            }
        }
    }

    fn head() -> RequestHead {
        RequestHead {
            method: sigma_http::Method::Get,
            target: Bytes::from_static(b"/"),
            version: sigma_http::Version::Http11,
            headers: Vec::new(),
            keep_alive: true,
            websocket: None,
        }
    }

    #[test]
    fn one_entry_point_and_what_it_does_not_take() {
        let d: &dyn Destination = &Plain;
        assert_eq!(d.capabilities(), Capabilities::default());
        assert!(!d.capabilities().websocket);
        let req = HttpRequest {
            head: head(),
            body: Bytes::new(),
        };
        match d.handle(Request::Http(Tagged::new(None, req))).into_http() {
            Some(Handled::Ready(r)) => assert_eq!(r.msg.status, 204),
            other => panic!("{other:?}"),
        }
        let (push, _rx) = ws_push_queue();
        let up = Upgrade {
            identity: None,
            push,
            from: None,
        };
        assert!(matches!(d.handle(Request::Upgrade(up)), Answer::NoSocket));
        // A whole request to a destination that streams gets the 500 the
        // old default gave.
        let req = HttpRequest {
            head: head(),
            body: Bytes::new(),
        };
        match Request::Http(Tagged::new(None, req)).not_taken() {
            Answer::Http(Handled::Ready(r)) => assert_eq!(r.msg.status, 500),
            other => panic!("{other:?}"),
        }
    }
}
