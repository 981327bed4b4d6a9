//! WebSocket (RFC 6455) half of `H`. STUB: replaced by the real codec.
use crate::{error::ParseError, event::Header, Method, Version, WsHandshake};
use crate::{io::OutBuf, Event, SendError, WsLimits, WsMessage};
use std::time::Instant;

/// Validates a WebSocket upgrade request.
pub fn parse_upgrade(
    _method: Method,
    _version: Version,
    _headers: &[Header],
) -> Result<Option<WsHandshake>, ParseError> {
    Ok(None)
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(_key: &[u8]) -> String {
    String::new()
}

/// One open WebSocket.
#[derive(Debug)]
pub struct WsConn;

impl WsConn {
    /// New connection right after the 101 was queued.
    pub fn new(_limits: WsLimits, _now: Instant) -> Self {
        Self
    }
    /// Bytes from the client.
    pub fn handle_input(&mut self, _data: &[u8], _now: Instant, _out: &mut OutBuf) {}
    /// Client EOF.
    pub fn handle_eof(&mut self, _now: Instant, _out: &mut OutBuf) {}
    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }
    /// Queue a message.
    pub fn send_message(
        &mut self,
        _msg: WsMessage,
        _now: Instant,
        _out: &mut OutBuf,
    ) -> Result<(), SendError> {
        Ok(())
    }
    /// Start/answer close.
    pub fn send_close(
        &mut self,
        _code: u16,
        _reason: &str,
        _now: Instant,
        _out: &mut OutBuf,
    ) -> Result<(), SendError> {
        Ok(())
    }
    /// Next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Deadlines.
    pub fn handle_timeout(&mut self, _now: Instant, _out: &mut OutBuf) {}
    /// Whether more input is wanted.
    pub fn wants_read(&self) -> bool {
        true
    }
    /// What to do with the socket.
    pub fn shutdown(&self) -> Option<crate::Shutdown> {
        None
    }
}
