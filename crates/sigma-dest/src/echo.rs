//! `&echo`: returns each HTTP request body and each WebSocket message to
//! its sender (DESIGN §6). It is how conformance suites (Autobahn) and
//! health checks exercise `H` end to end. The reply carries the request's
//! identity unchanged, so it always passes the reply rule.

use sigma_core::{
    Answer, Capabilities, Destination, Handled, HttpRequest, Request, Tagged, WsEndpoint,
};
use sigma_http::{Header, Response, WsMessage};

/// The echo destination.
#[derive(Debug, Default)]
pub struct Echo;

impl Destination for Echo {
    fn name(&self) -> &str {
        "&echo"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP_AND_WEBSOCKET
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => Answer::Http(Handled::Ready(echo(req))),
            Request::Upgrade(_) => Answer::Socket(Box::new(EchoSocket)),
            other => other.not_taken(),
        }
    }
}

/// The request's body back, with its `Content-Type`.
fn echo(req: Tagged<HttpRequest>) -> Tagged<Response> {
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
    Tagged::new(req.identity, resp)
}

struct EchoSocket;

impl WsEndpoint for EchoSocket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        Some(msg)
    }
}

/// `to = "&echo"`.
pub const FACTORY: &dyn crate::factory::Factory = &EchoFactory;

struct EchoFactory;

impl crate::factory::Factory for EchoFactory {
    fn name(&self) -> &'static str {
        "&echo"
    }

    fn hosts_worlds(&self) -> bool {
        true
    }

    fn build(
        &self,
        _: &mut crate::factory::Build<'_, '_>,
    ) -> Result<std::sync::Arc<dyn Destination>, crate::UnavailableDestination> {
        Ok(std::sync::Arc::new(Echo))
    }
}
