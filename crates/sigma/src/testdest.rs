//! Test-only destinations (the `test-destinations` feature; never in a
//! deployment).
//!
//! `&crossed` is deliberately mis-wired: it answers every HTTP request and WebSocket message as if they were for
//! another user (`mallory`), carrying "mallory's secret". With a correct
//! `A`, none of it ever reaches the client: the reply rule turns the HTTP
//! answer into a 502 and drops the WebSocket message, and
//! `identity_mismatch` rises (the tests of the reply rule, DESIGN §4).
//!
//! `&inspect` answers with what it received, as JSON: the identity `A`
//! attached and every header, so tests can show that client-forged
//! identity headers never reach a destination.

use std::sync::Arc;

use sigma_core::{
    Answer, Capabilities, Destination, Handled, HttpRequest, Identity, Principal, Provider,
    Request, Tagged, WsEndpoint,
};
use sigma_dest::factory::{Build, Factory};
use sigma_dest::UnavailableDestination;
use sigma_http::{Header, Response, WsMessage};

use serde_json::json;

/// The secret the crossed wiring would leak.
pub const SECRET: &str = "mallory's secret";

/// The mis-wired destination.
#[derive(Debug)]
pub struct Crossed {
    mallory: Principal,
}

impl Default for Crossed {
    fn default() -> Self {
        Self {
            mallory: Some(Arc::new(Identity {
                user: "mallory".into(),
                provider: Provider::Password,
                world: None,
                session: None,
                groups: Vec::new(),
            })),
        }
    }
}

impl Destination for Crossed {
    fn name(&self) -> &str {
        "&crossed"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP_AND_WEBSOCKET
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(_) => {
                let resp = Response::new(200, vec![Header::new(&b"X-Secret"[..], SECRET)], SECRET);
                Answer::Http(Handled::Ready(Tagged::new(self.mallory.clone(), resp)))
            }
            Request::Upgrade(_) => Answer::Socket(Box::new(CrossedSocket {
                mallory: self.mallory.clone(),
            })),
            other => other.not_taken(),
        }
    }
}

struct CrossedSocket {
    mallory: Principal,
}

impl WsEndpoint for CrossedSocket {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        let text = match msg.msg {
            WsMessage::Text(t) => format!("{t} {SECRET}"),
            WsMessage::Binary(_) => SECRET.to_owned(),
        };
        Some(Tagged::new(
            self.mallory.clone(),
            WsMessage::Text(text.into()),
        ))
    }
}

/// Answers with the request as a destination sees it.
#[derive(Debug, Default)]
pub struct Inspect;

impl Destination for Inspect {
    fn name(&self) -> &str {
        "&inspect"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => Answer::Http(inspect(req)),
            other => other.not_taken(),
        }
    }
}

/// The request's identity and headers, as JSON.
fn inspect(req: Tagged<HttpRequest>) -> Handled {
    let headers: Vec<_> = req
        .msg
        .head
        .headers
        .iter()
        .map(|h| {
            json!([
                String::from_utf8_lossy(&h.name),
                String::from_utf8_lossy(&h.value)
            ])
        })
        .collect();
    let body = json!({
        "identity": req.identity.as_ref().map(|i| json!({"user": i.user, "provider": i.provider.to_string()})),
        "headers": headers,
    });
    let resp = Response::new(
        200,
        vec![Header::new(&b"Content-Type"[..], &b"application/json"[..])],
        body.to_string(),
    );
    Handled::Ready(Tagged::new(req.identity, resp))
}

/// `to = "&crossed"`.
pub const CROSSED: &dyn Factory = &CrossedFactory;

struct CrossedFactory;

impl Factory for CrossedFactory {
    fn name(&self) -> &'static str {
        "&crossed"
    }

    fn hosts_worlds(&self) -> bool {
        true
    }

    fn build(&self, _: &mut Build<'_, '_>) -> Result<Arc<dyn Destination>, UnavailableDestination> {
        Ok(Arc::new(Crossed::default()))
    }
}

/// `to = "&inspect"`.
pub const INSPECT: &dyn Factory = &InspectFactory;

struct InspectFactory;

impl Factory for InspectFactory {
    fn name(&self) -> &'static str {
        "&inspect"
    }

    fn build(&self, _: &mut Build<'_, '_>) -> Result<Arc<dyn Destination>, UnavailableDestination> {
        Ok(Arc::new(Inspect))
    }
}
