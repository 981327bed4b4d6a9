//! The output buffer shared by the HTTP/1 and WebSocket halves of `H`.
//!
//! The codec owns the bytes it has produced but the shell has not yet
//! written. The shell takes [`OutBuf::io_slices`] (or the first contiguous
//! run, [`OutBuf::as_slice`]), writes what the socket takes and reports it
//! with [`OutBuf::consume`]. Because the codec sees both the backlog and
//! the time of the last progress, it can enforce the slow-read deadline and
//! the WebSocket outbound limit itself, without IO.
//!
//! The buffer is a queue of segments: small writes (heads, frame headers,
//! small bodies) are copied and coalesced into one owned tail, so a small
//! response is still one contiguous write; a large payload that is already
//! reference counted ([`OutBuf::push_shared`], a WebSocket message fanned
//! out to many sockets) is queued as is, so N slow subscribers of one
//! message hold N references, not N copies. Server frames are unmasked, so
//! the payload goes on the wire unchanged.
//!
//! What the buffer charges to the memory budget ([`OutBuf::footprint`]) is
//! what it keeps allocated, not what is left to write: a segment stays
//! whole in memory until its last byte is written, and the tail holds its
//! capacity.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::budget::Account;

/// Bytes waiting to be written to the client, with write-progress tracking.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Frozen segments, in order, all before `tail`, each with the bytes
    /// it keeps allocated (a frozen tail keeps its capacity).
    segs: VecDeque<(Bytes, usize)>,
    /// Sum of the lengths of `segs`.
    segs_len: usize,
    /// Sum of the allocations of `segs`.
    segs_alloc: usize,
    /// Bytes of the first pending segment (the front of `segs`, or `tail`
    /// when `segs` is empty) already written.
    head: usize,
    /// Small writes coalesce here; it is the last segment.
    tail: Vec<u8>,
    /// When output last became pending or the client last took some bytes.
    last_progress: Option<Instant>,
    /// This connection's share of the process memory budget
    /// ([`crate::budget`]); it lives here because every half of `H` that
    /// buffers bytes is handed this buffer.
    account: Account,
}

/// Capacity kept across idle periods; larger buffers are released.
const KEEP_CAPACITY: usize = 4096;

/// Shared payloads up to this size are copied into the tail instead of
/// referenced: one contiguous write beats a vectored one for small frames.
pub const COALESCE_MAX: usize = 4096;

/// Most segments handed to one vectored write.
pub const MAX_IO_SLICES: usize = 64;

impl OutBuf {
    /// An empty buffer with no memory budget (unlimited).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer whose connection draws on `account`.
    pub fn with_account(account: Account) -> Self {
        Self {
            account,
            ..Self::default()
        }
    }

    /// The connection's share of the memory budget.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Mutable access to the connection's share of the memory budget.
    pub fn account_mut(&mut self) -> &mut Account {
        &mut self.account
    }

    /// The first contiguous run of bytes not yet written (all of them
    /// unless a shared payload is queued).
    pub fn as_slice(&self) -> &[u8] {
        match self.segs.front() {
            Some((front, _)) => front.get(self.head..).unwrap_or_default(),
            None => self.tail.get(self.head..).unwrap_or_default(),
        }
    }

    /// Fills `dst` with the pending segments in order; returns how many.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut skip = self.head;
        let segs = self.segs.iter().map(|(b, _)| &b[..]);
        for seg in segs.chain(std::iter::once(&self.tail[..])) {
            let Some(slot) = dst.get_mut(n) else { break };
            let piece = seg.get(skip..).unwrap_or_default();
            skip = 0;
            if piece.is_empty() {
                continue;
            }
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }

    /// Number of bytes not yet written.
    pub fn len(&self) -> usize {
        self.segs_len
            .saturating_add(self.tail.len())
            .saturating_sub(self.head)
    }

    /// The bytes this buffer keeps allocated (what it charges to the
    /// memory budget): every queued segment whole, even partly written,
    /// and the tail's capacity.
    pub fn footprint(&self) -> usize {
        self.segs_alloc.saturating_add(self.tail.capacity())
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes (copied); `now` starts the write-progress clock if it was idle.
    pub fn extend(&mut self, bytes: &[u8], now: Instant) {
        self.extend_parts(&[bytes], now);
    }

    /// Appends several runs of bytes (copied) with at most one growth of
    /// the tail, to the capacity [`OutBuf::footprint_with`] predicts for
    /// their total: a frame header and its payload are one write, not two
    /// (two could double the tail twice).
    pub fn extend_parts(&mut self, parts: &[&[u8]], now: Instant) {
        let n = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        let target = self.tail_capacity_for(n);
        self.append(parts, target, now);
    }

    /// Appends a small answer that must go out even past the budget (a
    /// close frame, an error response). When the account can be charged
    /// for the tail's growth it grows as [`OutBuf::extend_parts`] does;
    /// otherwise by exactly these bytes, which are then all that trails
    /// the reservation (not a doubled tail holding a large backlog). True
    /// when it was charged.
    pub fn extend_charged(&mut self, parts: &[&[u8]], now: Instant) -> bool {
        let n = parts.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
        if self.charge(self.growth_for(n)) {
            self.append(parts, self.tail_capacity_for(n), now);
            return true;
        }
        let target = self.tail.len().saturating_add(n);
        self.append(parts, target, now);
        false
    }

    /// Grows the account by `more` bytes, before they are allocated;
    /// false (and nothing reserved) when the budget cannot hold them.
    pub fn charge(&mut self, more: usize) -> bool {
        let held = self.account.held();
        more == 0 || self.account.try_set(held.saturating_add(more))
    }

    fn append(&mut self, parts: &[&[u8]], target: usize, now: Instant) {
        self.mark_pending(now);
        self.tail
            .reserve_exact(target.saturating_sub(self.tail.len()));
        for part in parts {
            self.tail.extend_from_slice(part);
        }
    }

    /// How much [`OutBuf::footprint`] grows when `n` bytes are copied in
    /// with [`OutBuf::extend_parts`] (0 when the tail has room).
    pub fn growth_for(&self, n: usize) -> usize {
        self.tail_capacity_for(n)
            .saturating_sub(self.tail.capacity())
    }

    /// The tail's capacity once `n` more bytes are copied into it:
    /// doubling (at least 64 bytes), as [`OutBuf::extend`] grows it.
    fn tail_capacity_for(&self, n: usize) -> usize {
        let (len, cap) = (self.tail.len(), self.tail.capacity());
        let need = len.saturating_add(n);
        if need <= cap {
            return cap;
        }
        need.max(cap.saturating_mul(2)).max(64)
    }

    /// What [`OutBuf::footprint`] will be once a frame of `header` bytes
    /// and a shared payload of `payload` bytes is queued, so that it can
    /// be charged before anything is allocated.
    pub fn footprint_with(&self, header: usize, payload: usize) -> usize {
        if payload <= COALESCE_MAX {
            let tail = self.tail_capacity_for(header.saturating_add(payload));
            return self.segs_alloc.saturating_add(tail);
        }
        // The header joins the tail, which is then frozen as a segment.
        self.segs_alloc
            .saturating_add(self.tail_capacity_for(header))
            .saturating_add(payload)
    }

    /// Appends a frame: its `header` (copied) and a reference-counted
    /// payload, queued without copying unless it is small (see
    /// [`COALESCE_MAX`]); the footprint is then exactly
    /// [`OutBuf::footprint_with`] of their sizes, as charged before.
    pub fn push_frame(&mut self, header: &[u8], payload: Bytes, now: Instant) {
        if payload.len() <= COALESCE_MAX {
            self.extend_parts(&[header, &payload], now);
            return;
        }
        self.extend(header, now);
        self.push_shared(payload, now);
    }

    /// Appends a reference-counted payload without copying it (small ones
    /// are copied into the tail, see [`COALESCE_MAX`]).
    pub fn push_shared(&mut self, bytes: Bytes, now: Instant) {
        if bytes.len() <= COALESCE_MAX {
            self.extend(&bytes, now);
            return;
        }
        self.mark_pending(now);
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            let alloc = tail.capacity();
            self.push_seg(Bytes::from(tail), alloc);
        }
        let alloc = bytes.len();
        self.push_seg(bytes, alloc);
    }

    fn push_seg(&mut self, bytes: Bytes, alloc: usize) {
        self.segs_len = self.segs_len.saturating_add(bytes.len());
        self.segs_alloc = self.segs_alloc.saturating_add(alloc);
        self.segs.push_back((bytes, alloc));
    }

    /// Direct access for encoders that write in place (the owned tail);
    /// call [`OutBuf::mark_pending`] before appending.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// Starts the write-progress clock if the buffer is empty.
    pub fn mark_pending(&mut self, now: Instant) {
        if self.is_empty() {
            self.last_progress = Some(now);
        }
    }

    /// Drops everything pending (an abort: the bytes will never be written).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.segs_len = 0;
        self.segs_alloc = 0;
        self.head = 0;
        self.tail = Vec::new();
    }

    /// The client took `n` bytes (clamped to what is pending).
    pub fn consume(&mut self, n: usize, now: Instant) {
        let mut n = n.min(self.len());
        if n > 0 {
            self.last_progress = Some(now);
        }
        while n > 0 {
            let Some((front, alloc)) = self.segs.front() else {
                self.head = self.head.saturating_add(n);
                break;
            };
            let avail = front.len().saturating_sub(self.head);
            if n < avail {
                self.head = self.head.saturating_add(n);
                break;
            }
            n -= avail;
            self.segs_len = self.segs_len.saturating_sub(front.len());
            self.segs_alloc = self.segs_alloc.saturating_sub(*alloc);
            self.segs.pop_front();
            self.head = 0;
        }
        if !self.segs.is_empty() {
            return;
        }
        if self.head >= self.tail.len() {
            self.tail.clear();
            self.head = 0;
            if self.tail.capacity() > KEEP_CAPACITY {
                self.tail = Vec::new();
            }
        } else if self.head > self.tail.len() / 2 && self.head > KEEP_CAPACITY {
            self.tail.drain(..self.head);
            self.head = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(out: &mut OutBuf, step: usize, now: Instant) -> Vec<u8> {
        let mut got = Vec::new();
        while !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 4];
            let k = out.io_slices(&mut iov);
            assert!(k > 0);
            let mut flat: Vec<u8> = iov[..k].iter().flat_map(|s| s.iter().copied()).collect();
            flat.truncate(step);
            got.extend_from_slice(&flat);
            out.consume(flat.len(), now);
        }
        got
    }

    #[test]
    fn segments_come_out_in_order_in_any_partial_write() {
        let now = Instant::now();
        let big = Bytes::from(vec![7u8; COALESCE_MAX + 10]);
        for step in [1, 3, 100, COALESCE_MAX, 100_000] {
            let mut out = OutBuf::new();
            let mut want = Vec::new();
            for i in 0..5u8 {
                out.extend(&[i, i], now);
                want.extend_from_slice(&[i, i]);
                out.push_shared(big.clone(), now);
                want.extend_from_slice(&big);
                out.push_shared(Bytes::from_static(b"small"), now);
                want.extend_from_slice(b"small");
            }
            assert_eq!(out.len(), want.len());
            assert_eq!(drain_all(&mut out, step, now), want, "step {step}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_partly_written_segment_is_charged_whole_until_written() {
        let now = Instant::now();
        let big = Bytes::from(vec![1u8; 100_000]);
        let mut out = OutBuf::new();
        out.push_shared(big, now);
        out.consume(99_000, now);
        assert_eq!(out.len(), 1_000);
        assert_eq!(out.footprint(), 100_000, "the payload is still allocated");
        out.consume(1_000, now);
        assert_eq!(out.footprint(), 0);
        // The tail is charged by its capacity, also once frozen.
        out.extend(&[0u8; 10], now);
        assert!(out.footprint() >= 10);
        let tail_cap = out.footprint();
        out.push_shared(Bytes::from(vec![2u8; COALESCE_MAX + 1]), now);
        assert_eq!(out.footprint(), tail_cap + COALESCE_MAX + 1);
    }

    #[test]
    fn a_frame_grows_the_buffer_to_exactly_what_was_charged() {
        // A header and its payload are one growth: two could double the
        // tail twice, past what `footprint_with` charged (issue #13).
        let now = Instant::now();
        for fill in [0usize, 1, 60, 64, 100, 2528, 4096] {
            for payload in [
                0usize,
                1,
                63,
                125,
                2525,
                2529,
                COALESCE_MAX,
                COALESCE_MAX + 1,
            ] {
                let mut out = OutBuf::new();
                out.mark_pending(now);
                out.tail = vec![0u8; fill];
                assert_eq!(out.footprint(), fill, "a full tail");
                let want = out.footprint_with(4, payload);
                out.push_frame(&[0u8; 4], Bytes::from(vec![1u8; payload]), now);
                assert_eq!(out.footprint(), want, "fill {fill} payload {payload}");
                assert_eq!(out.len(), fill + 4 + payload);
            }
        }
    }

    #[test]
    fn an_uncharged_answer_grows_the_tail_by_itself_only() {
        let now = Instant::now();
        let budget = crate::MemoryBudget::new(5000);
        let mut out = OutBuf::with_account(Account::new(std::sync::Arc::clone(&budget)));
        assert!(out.charge(4000));
        out.mark_pending(now);
        out.tail = vec![0u8; 4000];
        // Doubling would take 4000 more: the budget cannot, so exactly 30.
        assert!(!out.extend_charged(&[&[1u8; 30]], now));
        assert_eq!(out.footprint(), 4030);
        assert_eq!(out.account().held(), 4000);
        out.consume(4030, now);
        assert!(out.extend_charged(&[&[1u8; 30]], now), "no growth now");
        assert_eq!(out.footprint(), 4030, "the kept capacity holds it");
    }

    #[test]
    fn a_large_shared_payload_is_referenced_not_copied() {
        let now = Instant::now();
        let big = Bytes::from(vec![1u8; 100_000]);
        let mut out = OutBuf::new();
        out.extend(b"hdr", now);
        out.push_shared(big.clone(), now);
        let mut iov = [IoSlice::new(&[]); 4];
        assert_eq!(out.io_slices(&mut iov), 2);
        assert_eq!(iov[1].as_ptr(), big.as_ptr());
        // Small payloads coalesce: one contiguous run.
        let mut small = OutBuf::new();
        small.extend(b"HTTP/1.1 200 OK\r\n\r\n", now);
        small.push_shared(Bytes::from_static(b"body"), now);
        assert_eq!(small.as_slice(), b"HTTP/1.1 200 OK\r\n\r\nbody");
    }
}
