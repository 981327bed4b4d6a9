//! `&hello`: the worked example of docs/architecture.md, a destination
//! that answers every request `200 hello` (the `test-destinations`
//! feature; never in a deployment), last in T → H → A → router →
//! destination. It is this module plus one line in [`crate::registry`].

use std::sync::Arc;

use sigma_core::{Answer, Capabilities, Destination, Handled, Request, Tagged};
use sigma_dest::factory::{Build, Factory};
use sigma_dest::UnavailableDestination;
use sigma_http::Response;

/// Answers `hello\n` to every whole HTTP request.
#[derive(Debug)]
struct Hello;

impl Destination for Hello {
    fn name(&self) -> &str {
        "&hello"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            // The reply carries the request's identity: it passes the reply rule.
            Request::Http(req) => Answer::Http(Handled::Ready(Tagged::new(
                req.identity,
                Response::new(200, Vec::new(), "hello\n"),
            ))),
            other => other.not_taken(),
        }
    }
}

/// `to = "&hello"`.
pub const FACTORY: &dyn Factory = &HelloFactory;

struct HelloFactory;

impl Factory for HelloFactory {
    fn name(&self) -> &'static str {
        "&hello"
    }

    fn build(&self, _: &mut Build<'_, '_>) -> Result<Arc<dyn Destination>, UnavailableDestination> {
        Ok(Arc::new(Hello))
    }
}
