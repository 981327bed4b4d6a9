//! `H`: the HTTP/1.1 + WebSocket codec of sigma (seed `000`, "HTTP/WS Ψ₄ codec").
//!
//! ```text
//!  client ──bytes──▶ T ──bytes──▶ [ H ] ──events──▶ A ──▶ router ──▶ destination
//!         ◀─bytes──   ◀─bytes──  [   ] ◀─replies──
//! ```
//!
//! `H` transcodes one connection's byte stream into well-formed, bounded
//! [`Event`]s and turns [`Reply`]s back into bytes. Anything sufficiently
//! unexpected closes the connection, with an error response where one can
//! still be sent (DESIGN §3). `H` does no routing and no authentication.
//!
//! The crate is *sans-IO*: it owns no socket and never reads a clock. Bytes
//! and `now` go in through [`ServerConn::handle_input`] and friends; events
//! come out of [`ServerConn::poll_event`]; bytes to write are in
//! [`ServerConn::output`]; the next deadline is [`ServerConn::poll_timeout`].
//! The tokio shell in the `sigma` crate is a thin loop around these calls.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod budget;
pub mod conn;
pub mod error;
pub mod event;
pub mod h1;
pub mod io;
pub mod limits;
pub mod timer;
mod token;
pub mod ws;

pub use budget::{Account, MemoryBudget};
pub use conn::{ServerConn, Shutdown};
pub use error::{ParseError, SendError};
pub use event::{
    AbortReason, DeflateParams, Event, Header, Method, Reply, RequestHead, Response, ResponseHead,
    Utf8Bytes, Version, WsEvent, WsHandshake, WsMessage,
};
pub use limits::{Limits, WsLimits};
