//! The WebSocket (RFC 6455) half of `H`: the opening handshake and the
//! codec of one open WebSocket.
//!
//! Place in `T → H → A`: after the HTTP/1 parser has read an upgrade
//! request, [`parse_upgrade`] validates it (the result rides on the request
//! to `A`), the 101 response carries [`accept_key`], and a [`WsConn`] takes
//! over the connection's bytes: client frames in, validated
//! [`crate::Event::Ws`] events right, our frames appended to the
//! connection's [`crate::io::OutBuf`]. Sans-IO like the rest of `H`: no
//! socket, no clock. permessage-deflate (RFC 7692) is the one extension:
//! negotiated in `extension.rs`, inflated and deflated in `deflate.rs`;
//! without it RSV bits are always an error.
//!
//! Files: `handshake.rs` (upgrade validation, accept key), `frame.rs`
//! (opcodes, header decode and encode), `mask.rs`, `utf8.rs` (incremental
//! validation), `close.rs` (close codes), `error.rs` ([`ProtocolError`]),
//! `extension.rs` (permessage-deflate offers), `deflate.rs` (its codec),
//! `conn.rs` ([`WsConn`], the state machine).

pub mod close;
mod conn;
pub mod deflate;
mod error;
pub mod extension;
mod frame;
mod handshake;
mod mask;
mod message;
mod utf8;

pub use conn::{
    frame_len, payload_len, WsConn, ABORT_CLOSE_TIMEOUT, ABORT_EOF, ABORT_IDLE_TIMEOUT,
    MAX_QUEUED_EVENTS,
};
pub use error::ProtocolError;
pub use handshake::{accept_key, parse_upgrade};
