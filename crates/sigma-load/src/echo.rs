//! The echo scenario: N connections, each keeping `in_flight` messages of
//! `size` bytes outstanding against an echo endpoint (closed loop).
//!
//! Each message carries its send stamp; when a message comes back, its
//! latency is recorded and a new one is sent. Replies read in one `read`
//! are answered with one `write`, the way a real client under load batches.
//! The echoed bytes are checked against what was sent (length and stamp
//! format); a mismatch counts as a bad reply.
//!
//! Payloads are `x` bytes after the stamp (binary, or text with `text`),
//! or, with `json`, a chat-like JSON object ([`json_payload`]) that
//! compresses the way real traffic does, for permessage-deflate runs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;

use crate::fleet::{self, Client, Scenario};
use crate::stats::{self, Stats, Window};
use crate::ws::{self, op, Event, Target};

/// Read buffer headroom per read.
const READ_RESERVE: usize = 16 * 1024;

/// The start of a `json` payload; the stamp's digits follow `{"stamp":"`.
const JSON_HEAD: &str = concat!(
    r#"{"stamp":"00000000000000000000","type":"message","channel":"public:lobby","#,
    r#""from":"user-0042","data":""#
);
/// Where the stamp starts in a `json` payload.
const JSON_STAMP_AT: usize = 10;
/// The text of a `json` payload's `data`, cut (or repeated) to fit.
const JSON_TEXT: &str = "Morning all. The nightly build is green again after \
    yesterday's flaky test; deploy to staging went out at 09:40 and the \
    dashboards look normal. Can someone review the pull request for the \
    session cache before lunch? I will be in the planning meeting until \
    eleven, ping me there if anything breaks. ";

/// A JSON object of exactly `size` bytes (at least [`Echo::min_size`] for
/// `json`): a zero stamp, then `type`, `channel`, `from` and a `data`
/// string of English text, like a chat message.
pub fn json_payload(size: usize) -> Vec<u8> {
    let mut p = JSON_HEAD.as_bytes().to_vec();
    let text = JSON_TEXT.as_bytes();
    let body = size.saturating_sub(p.len() + 2);
    p.extend(text.iter().cycle().take(body));
    p.extend_from_slice(b"\"}");
    p
}

/// Parameters of the echo scenario.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Where the echo endpoint is.
    pub target: Target,
    /// Connections in total.
    pub connections: usize,
    /// Payload size in bytes (at least the stamp's size).
    pub size: usize,
    /// Messages outstanding per connection.
    pub in_flight: usize,
    /// Text messages (decimal stamp) instead of binary.
    pub text: bool,
    /// Text messages shaped like JSON ([`json_payload`]); implies `text`.
    pub json: bool,
    /// Connections opened at once during the connect phase.
    pub connect_concurrency: usize,
}

impl Echo {
    /// The smallest payload that holds a send stamp.
    pub fn min_size(text: bool, json: bool) -> usize {
        if json {
            JSON_HEAD.len() + 2
        } else if text {
            stats::TEXT_STAMP_LEN
        } else {
            8
        }
    }

    /// A message's bytes before its stamp is written.
    pub fn payload(&self) -> Vec<u8> {
        if self.json {
            json_payload(self.size)
        } else {
            vec![b'x'; self.size]
        }
    }

    /// Appends one stamped message to `out` (compressed on a
    /// permessage-deflate connection).
    fn push(&self, c: &mut Client, out: &mut Vec<u8>, payload: &mut [u8], stamp: u64) {
        let opcode = if self.json {
            if let Some(p) = payload.get_mut(JSON_STAMP_AT..) {
                stats::put_text_stamp(p, stamp);
            }
            op::TEXT
        } else if self.text {
            stats::put_text_stamp(payload, stamp);
            op::TEXT
        } else {
            stats::put_binary_stamp(payload, stamp);
            op::BINARY
        };
        c.message(out, opcode, payload);
    }

    fn stamp_of(&self, data: &[u8]) -> Option<u64> {
        if data.len() != self.size {
            return None;
        }
        if self.json {
            stats::text_stamp(data.get(JSON_STAMP_AT..)?)
        } else if self.text {
            stats::text_stamp(data)
        } else {
            stats::binary_stamp(data)
        }
    }

    async fn conn_loop(
        &self,
        c: &mut Client,
        w: Window,
        stats: &Rc<RefCell<Stats>>,
    ) -> anyhow::Result<()> {
        let mut payload = self.payload();
        let mut out = Vec::with_capacity((self.size + 14) * self.in_flight.max(1));
        let now = Instant::now();
        for _ in 0..self.in_flight {
            self.push(c, &mut out, &mut payload, w.stamp(now));
        }
        if !fleet::write_until(&mut c.stream, &out, w.end).await? {
            return Ok(());
        }
        out.clear();
        if w.counts(now) {
            stats.borrow_mut().sent += self.in_flight as u64;
        }
        loop {
            if !fleet::read_until(c, READ_RESERVE, w.end).await? {
                return Ok(());
            }
            let now = Instant::now();
            let stamp_now = w.stamp(now);
            let mut replies = 0u64;
            while let Some(ev) = c.dec.next_event()? {
                match ev {
                    Event::Message { data, .. } => {
                        let d = c.dec.data(&data);
                        let mut s = stats.borrow_mut();
                        match self.stamp_of(d) {
                            Some(stamp) => s.received(&w, now, stamp, d.len()),
                            None => s.bad_replies += 1,
                        }
                        replies += 1;
                    }
                    Event::Ping(p) => {
                        let mask = c.rng.mask();
                        ws::encode(&mut out, op::PONG, &p, Some(mask));
                    }
                    Event::Pong => {}
                    Event::Close(code) => {
                        *stats
                            .borrow_mut()
                            .closes
                            .entry(code.unwrap_or(0))
                            .or_default() += 1;
                        bail!("the server sent close {code:?}");
                    }
                }
            }
            if now >= w.end {
                return Ok(());
            }
            for _ in 0..replies {
                self.push(c, &mut out, &mut payload, stamp_now);
            }
            if w.counts(now) {
                stats.borrow_mut().sent += replies;
            }
            if !out.is_empty() {
                if !fleet::write_until(&mut c.stream, &out, w.end).await? {
                    return Ok(());
                }
                out.clear();
            }
        }
    }
}

impl Scenario for Echo {
    type Conns = Vec<Client>;

    async fn connect(
        self: Arc<Self>,
        thread: usize,
        threads: usize,
        stats: Rc<RefCell<Stats>>,
    ) -> Vec<Client> {
        let ids = fleet::share(self.connections, thread, threads);
        let target = Rc::new(self.target.clone());
        let conns = fleet::for_each_concurrent(ids, self.connect_concurrency, &stats, move |id| {
            let target = target.clone();
            async move { fleet::open(&target, id).await }
        })
        .await;
        stats.borrow_mut().connected += conns.len() as u64;
        conns
    }

    async fn drive(self: Arc<Self>, conns: Vec<Client>, w: Window, stats: Rc<RefCell<Stats>>) {
        let mut tasks = Vec::new();
        for mut c in conns {
            let (me, stats) = (self.clone(), stats.clone());
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = me.conn_loop(&mut c, w, &stats).await {
                    stats.borrow_mut().error(true, &e);
                }
                // Leave politely: a close frame, then the socket drops.
                let mut out = Vec::new();
                ws::encode(
                    &mut out,
                    op::CLOSE,
                    &1000u16.to_be_bytes(),
                    Some(c.rng.mask()),
                );
                let _ = c.stream.try_write(&out);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_are_json_of_the_size_asked() {
        for size in [Echo::min_size(true, true), 256, 1000] {
            let mut p = json_payload(size);
            assert_eq!(p.len(), size);
            stats::put_text_stamp(&mut p[JSON_STAMP_AT..], 1234);
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["stamp"], "00000000000000001234");
            assert_eq!(v["type"], "message");
        }
    }
}
