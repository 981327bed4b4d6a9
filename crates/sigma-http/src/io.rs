//! The output buffer shared by the HTTP/1 and WebSocket halves of `H`.
//!
//! The codec owns the bytes it has produced but the shell has not yet
//! written. The shell reads [`OutBuf::as_slice`], writes what the socket
//! takes and reports it with [`OutBuf::consume`]. Because the codec sees
//! both the backlog and the time of the last progress, it can enforce the
//! slow-read deadline and the WebSocket outbound limit itself, without IO.

use std::time::{Duration, Instant};

/// Bytes waiting to be written to the client, with write-progress tracking.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    start: usize,
    /// When output last became pending or the client last took some bytes.
    last_progress: Option<Instant>,
}

/// Capacity kept across idle periods; larger buffers are released.
const KEEP_CAPACITY: usize = 4096;

impl OutBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes not yet written.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Number of bytes not yet written.
    pub fn len(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes; `now` starts the write-progress clock if it was idle.
    pub fn extend(&mut self, bytes: &[u8], now: Instant) {
        if self.is_empty() {
            self.last_progress = Some(now);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Direct access for encoders that write in place; call
    /// [`OutBuf::mark_pending`] before appending.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Starts the write-progress clock if the buffer is empty.
    pub fn mark_pending(&mut self, now: Instant) {
        if self.is_empty() {
            self.last_progress = Some(now);
        }
    }

    /// The client took `n` bytes (clamped to what is pending).
    pub fn consume(&mut self, n: usize, now: Instant) {
        let n = n.min(self.len());
        if n > 0 {
            self.start += n;
            self.last_progress = Some(now);
        }
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.start > self.buf.len() / 2 && self.start > KEEP_CAPACITY {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// When the slow-read deadline fires if no more bytes are taken, or
    /// `None` while nothing is pending.
    pub fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.is_empty() {
            return None;
        }
        self.last_progress.and_then(|t| t.checked_add(timeout))
    }
}
