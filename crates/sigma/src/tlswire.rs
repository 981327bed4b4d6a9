//! The `S` layer of the connection driver: `T → [S] → H` on a `T443[SHA]`
//! listener (DESIGN §2a).
//!
//! ```text
//!  socket ──ciphertext──▶ TlsConn ──plaintext──▶ H.handle_input
//!         ◀─ciphertext─── TlsConn ◀─plaintext─── H.output
//! ```
//!
//! [`TlsWire`] carries bytes between the socket side of [`crate::conn`]
//! and `H`, through the sans-IO [`sigma_tls::TlsConn`]. It owns no socket
//! and reads no clock (`now` is an argument); the driver reads and writes
//! the socket and keeps the one timer (the earlier of `H`'s and the
//! handshake deadline). Every buffer is bounded: ciphertext that `S` did
//! not take yet is at most one read (the socket is not read while it
//! waits), plaintext for `H` is moved only while `H` wants it, and
//! `H`'s output is taken only as fast as `S`'s bounded output drains.
//!
//! It knows nothing of HTTP, A or routes.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigma_http::ServerConn;
use sigma_tls::{Plaintext, TlsConn, TlsError};

/// The most plaintext moved into `H` per call of `poll_plaintext`.
const PLAIN_CHUNK: usize = 16 * 1024;

thread_local! {
    static PLAIN: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(PLAIN_CHUNK));
}

/// What [`TlsWire::transfer`] asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing moved; carry on.
    Idle,
    /// Bytes moved: `H` may have new events or output.
    Moved,
    /// The handshake was an ACME `tls-alpn-01` validation: no HTTP, close.
    AcmeDone,
}

/// One connection's `S` state.
#[derive(Debug)]
pub struct TlsWire {
    tls: TlsConn,
    /// Ciphertext read from the socket that `S` has not taken yet.
    pending: Vec<u8>,
    /// `H` was told the input ended.
    h_eof: bool,
    /// `close_notify` was queued.
    closing: bool,
    /// The handshake was seen to finish (for the counters).
    established: bool,
}

impl TlsWire {
    /// A connection accepted at `now` that must finish its handshake
    /// within `handshake_timeout`.
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        now: Instant,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            tls: TlsConn::with_limits(
                config,
                now,
                handshake_timeout,
                sigma_tls::conn::DEFAULT_MAX_BUFFER,
            )?,
            pending: Vec::new(),
            h_eof: false,
            closing: false,
            established: false,
        })
    }

    /// Whether the driver should read the socket.
    pub fn wants_read(&self) -> bool {
        self.pending.is_empty() && self.tls.wants_read()
    }

    /// Ciphertext to write to the socket.
    pub fn output(&self) -> &[u8] {
        self.tls.output()
    }

    /// `n` bytes of [`output`](Self::output) were written.
    pub fn handle_written(&mut self, n: usize) {
        self.tls.handle_written(n);
    }

    /// The handshake deadline, while it runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tls.poll_timeout()
    }

    /// The timer fired.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TlsError> {
        self.tls.handle_timeout(now)
    }

    /// Bytes read from the socket.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), TlsError> {
        let n = self.tls.handle_input(data, now)?;
        if let Some(rest) = data.get(n..) {
            self.pending.extend_from_slice(rest);
        }
        Ok(())
    }

    /// The socket reached EOF.
    pub fn handle_eof(&mut self) -> Result<(), TlsError> {
        self.tls.handle_eof()
    }

    /// Queues `close_notify` once (after `H`'s graceful end).
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.tls.send_close_notify();
        }
    }

    /// Whether `close_notify` was queued.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// The handshake just finished (reported once): whether it resumed a
    /// session.
    pub fn newly_established(&mut self) -> Option<bool> {
        if self.established || self.tls.is_handshaking() {
            return None;
        }
        self.established = true;
        Some(self.tls.is_resumed())
    }

    /// Moves what can move: pending ciphertext into `S`, plaintext from
    /// `S` into `H` (while `H` wants it), `H`'s output into `S`.
    pub fn transfer(&mut self, h: &mut ServerConn, now: Instant) -> Result<Next, TlsError> {
        let mut moved = false;
        if !self.pending.is_empty() {
            let n = self.tls.handle_input(&self.pending, now)?;
            if n > 0 {
                self.pending.drain(..n.min(self.pending.len()));
                moved = true;
            }
        }
        if !self.tls.is_handshaking() && self.tls.is_acme_challenge() {
            self.close();
            return Ok(Next::AcmeDone);
        }
        while !self.h_eof && h.wants_read() {
            let got = PLAIN.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                let r = self.tls.poll_plaintext(&mut b, PLAIN_CHUNK);
                if let Ok(Plaintext::Data(_)) = r {
                    h.handle_input(&b, now);
                }
                b.clear();
                r
            })?;
            match got {
                Plaintext::Data(_) => moved = true,
                Plaintext::Pending => break,
                Plaintext::ClosedByPeer | Plaintext::EofWithoutCloseNotify => {
                    self.h_eof = true;
                    h.handle_eof(now);
                    moved = true;
                }
            }
        }
        // The pending ciphertext may have been held back by plaintext `H`
        // has now taken.
        if !self.pending.is_empty() {
            let n = self.tls.handle_input(&self.pending, now)?;
            if n > 0 {
                self.pending.drain(..n.min(self.pending.len()));
                moved = true;
            }
        }
        if !self.closing {
            while h.output_len() > 0 {
                let n = self.tls.send_plaintext(h.output())?;
                if n == 0 {
                    break;
                }
                h.handle_written(n, now);
                moved = true;
            }
        }
        Ok(if moved { Next::Moved } else { Next::Idle })
    }
}
