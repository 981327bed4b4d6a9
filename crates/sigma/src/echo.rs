//! `&echo`: returns each HTTP request body and each WebSocket message to
//! its sender (DESIGN §6). It is how conformance suites (Autobahn) and
//! health checks exercise `H` end to end. The reply carries the request's
//! identity unchanged, so it always passes the reply rule.

use sigma_http::{Header, Response, WsMessage};

use crate::auth::{Principal, Tagged};
use crate::route::{Destination, Handled, HttpRequest, WsEndpoint, WsSender};

/// The echo destination.
#[derive(Debug, Default)]
pub struct Echo;

impl Destination for Echo {
    fn name(&self) -> &str {
        "&echo"
    }

    fn http(&self, req: Tagged<HttpRequest>) -> Handled {
        let content_type = req
            .msg
            .head
            .header("content-type")
            .map(|h| h.value.clone())
            .unwrap_or_else(|| bytes::Bytes::from_static(b"application/octet-stream"));
        let resp = Response::new(
            200,
            vec![Header::new(&b"Content-Type"[..], content_type)],
            req.msg.body,
        );
        Handled::Ready(Tagged::new(req.identity, resp))
    }

    fn websocket(&self, _identity: &Principal, _push: WsSender) -> Option<Box<dyn WsEndpoint>> {
        Some(Box::new(EchoSocket))
    }
}

struct EchoSocket;

impl WsEndpoint for EchoSocket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        Some(msg)
    }
}
