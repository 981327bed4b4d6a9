//! The publish/subscribe scenario, for `&broadcast` fan-out (DESIGN §6, §9).
//!
//! `subscribers` connections each subscribe to one of `channels` channels
//! (round-robin) and wait for the `subscribed` acknowledgement before the
//! clock starts. `publishers` separate connections then publish at a fixed
//! total `rate` (open loop: a slow server shows up as latency and missing
//! deliveries, not as a slower sender). Every publish carries its send
//! stamp in `data`; every subscriber that receives the delivery records its
//! latency. The report gives deliveries/s, the deliveries expected for what
//! was published in the window (publishes × subscribers of the channel),
//! and the close codes received (1008 = a slow consumer was dropped).
//!
//! Deliveries are counted by when their publish was sent, not when they
//! arrive: a delivery of a publish sent inside the window counts (and its
//! latency is recorded) when it arrives before the window's end plus
//! `grace`, one of a warm-up publish never does. Publishers stop at the
//! window's end; subscribers read on for `grace`. So `received ÷ expected`
//! is exactly the share of the window's publishes delivered, whatever the
//! jitter at the window's edges, and only lost or later-than-`grace`
//! deliveries lower it.
//!
//! The wire protocol is the public one of DESIGN §9:
//! client `{"type":"subscribe","channel":C}`, `{"type":"publish","channel":C,"data":D}`;
//! server `{"type":"subscribed",...}`, `{"type":"message",...,"data":D}`,
//! `{"type":"error",...}`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fleet::{self, Client, Scenario};
use crate::stats::{self, Stats, Window};
use crate::ws::{self, op, Event, Target};

/// How often publishers top up to their rate.
const TICK: Duration = Duration::from_millis(1);
/// Most publishes one publisher sends in one tick (bounds bursts after a
/// stall).
const MAX_BURST: u64 = 10_000;

/// Parameters of the publish/subscribe scenario.
#[derive(Clone, Debug)]
pub struct PubSub {
    /// The `&broadcast` WebSocket endpoint.
    pub target: Target,
    /// Another node's endpoint (a cluster): odd-numbered subscribers
    /// connect there; publishers stay on `target`.
    pub split: Option<Target>,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Channels; subscriber `i` and publisher `j` use channel `i % channels`
    /// and `j % channels`.
    pub channels: usize,
    /// Publishes per second, all publishers together.
    pub rate: f64,
    /// Length of `data` (a stamp and padding).
    pub size: usize,
    /// Channel names are this prefix and a number.
    pub channel_prefix: String,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// How long a subscriber waits for `subscribed`.
    pub subscribe_timeout: Duration,
    /// How long subscribers read on after the window, for the deliveries
    /// of its last publishes.
    pub grace: Duration,
}

/// A connection and the channel it uses.
pub struct Member {
    client: Client,
    channel: usize,
}

/// This thread's subscribers and publishers.
pub struct Members {
    subscribers: Vec<Member>,
    publishers: Vec<Member>,
}

impl PubSub {
    fn channel_name(&self, c: usize) -> String {
        format!("{}{c}", self.channel_prefix)
    }

    /// Subscribers of channel `c`.
    fn fan_out(&self, c: usize) -> u64 {
        let ch = self.channels.max(1);
        (self.subscribers / ch + usize::from(c < self.subscribers % ch)) as u64
    }

    /// Opens subscriber `id`, subscribes, waits for the acknowledgement.
    async fn open_subscriber(&self, id: u64) -> anyhow::Result<Member> {
        let channel = (id as usize) % self.channels.max(1);
        let target = match &self.split {
            Some(t) if id % 2 == 1 => t,
            _ => &self.target,
        };
        let mut client = fleet::open(target, id).await?;
        let name = self.channel_name(channel);
        let msg = format!("{{\"type\":\"subscribe\",\"channel\":\"{name}\"}}");
        let mut out = Vec::new();
        client.message(&mut out, op::TEXT, msg.as_bytes());
        let wait = async {
            client.stream.write_all(&out).await?;
            loop {
                if client.stream.read_buf(client.dec.buf_mut(1024)).await? == 0 {
                    bail!("closed before `subscribed`");
                }
                while let Some(ev) = client.dec.next_event()? {
                    match ev {
                        Event::Message { data, .. } => {
                            let d = client.dec.data(&data);
                            match json_str(d, "type") {
                                Some(b"subscribed") => return Ok(()),
                                Some(b"error") => {
                                    bail!("subscribe refused: {}", String::from_utf8_lossy(d))
                                }
                                _ => {}
                            }
                        }
                        Event::Close(code) => bail!("closed ({code:?}) before `subscribed`"),
                        Event::Ping(_) | Event::Pong => {}
                    }
                }
            }
        };
        tokio::time::timeout(self.subscribe_timeout, wait)
            .await
            .map_err(|_| anyhow!("no `subscribed` within {:?}", self.subscribe_timeout))??;
        client.dec.shrink();
        Ok(Member { client, channel })
    }

    async fn subscriber_loop(
        &self,
        m: &mut Member,
        w: Window,
        stats: &Rc<RefCell<Stats>>,
    ) -> anyhow::Result<()> {
        let c = &mut m.client;
        let mut out = Vec::new();
        let end = w.end + self.grace;
        loop {
            if !fleet::read_until(c, 16 * 1024, end).await? {
                return Ok(());
            }
            let now = Instant::now();
            while let Some(ev) = c.dec.next_event()? {
                match ev {
                    Event::Message { data, .. } => {
                        let d = c.dec.data(&data);
                        let mut s = stats.borrow_mut();
                        match json_str(d, "type") {
                            Some(b"message") => {
                                match json_str(d, "data").and_then(stats::text_stamp) {
                                    Some(stamp) => s.delivered(&w, now, stamp, d.len()),
                                    None => s.bad_replies += 1,
                                }
                            }
                            Some(b"error") => {
                                s.bad_replies += 1;
                                if s.first_error.is_none() {
                                    s.first_error = Some(String::from_utf8_lossy(d).into_owned());
                                }
                            }
                            _ => {}
                        }
                    }
                    Event::Ping(p) => ws::encode(&mut out, op::PONG, &p, Some(c.rng.mask())),
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
            if !out.is_empty() {
                if !fleet::write_until(&mut c.stream, &out, end).await? {
                    return Ok(());
                }
                out.clear();
            }
        }
    }

    async fn publisher_loop(
        &self,
        m: &mut Member,
        w: Window,
        stats: &Rc<RefCell<Stats>>,
    ) -> anyhow::Result<()> {
        let per_pub = self.rate / self.publishers.max(1) as f64;
        let name = self.channel_name(m.channel);
        let fan_out = self.fan_out(m.channel);
        let prefix = format!("{{\"type\":\"publish\",\"channel\":\"{name}\",\"data\":\"");
        let mut data = vec![b'x'; self.size.max(stats::TEXT_STAMP_LEN)];
        let mut msg = Vec::with_capacity(prefix.len() + data.len() + 2);
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let started = Instant::now();
        let mut published = 0u64;
        let c = &mut m.client;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = c.stream.read_buf(c.dec.buf_mut(1024)) => {
                    if r? == 0 {
                        bail!("the server closed the publisher's connection");
                    }
                    while let Some(ev) = c.dec.next_event()? {
                        match ev {
                            Event::Ping(p) => ws::encode(&mut out, op::PONG, &p, Some(c.rng.mask())),
                            Event::Close(code) => bail!("the server closed a publisher ({code:?})"),
                            Event::Message { data, .. } => {
                                let d = c.dec.data(&data);
                                if json_str(d, "type") == Some(b"error") {
                                    let mut s = stats.borrow_mut();
                                    s.bad_replies += 1;
                                    if s.first_error.is_none() {
                                        s.first_error = Some(String::from_utf8_lossy(d).into_owned());
                                    }
                                }
                            }
                            Event::Pong => {}
                        }
                    }
                    c.dec.shrink();
                }
            }
            let now = Instant::now();
            if now >= w.end {
                return Ok(());
            }
            let due = (now.duration_since(started).as_secs_f64() * per_pub) as u64;
            let n = due.saturating_sub(published).min(MAX_BURST);
            let stamp = w.stamp(now);
            for _ in 0..n {
                stats::put_text_stamp(&mut data, stamp);
                msg.clear();
                msg.extend_from_slice(prefix.as_bytes());
                msg.extend_from_slice(&data);
                msg.extend_from_slice(b"\"}");
                c.message(&mut out, op::TEXT, &msg);
            }
            published += n;
            if n > 0 && w.counts(now) {
                let mut s = stats.borrow_mut();
                s.sent += n;
                s.expected += n * fan_out;
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

/// The value of `"key"` in a flat JSON object, without its quotes when it
/// is a string (no unescaping: the values this tool reads are its own).
/// Tolerates whitespace around the colon.
pub fn json_str<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = find(json.get(from..)?, pat.as_bytes()) {
        let after = from + i + pat.len();
        let rest = json.get(after..)?;
        let rest = trim_start(rest);
        if let Some(v) = rest.strip_prefix(b":") {
            let v = trim_start(v);
            return Some(match v.strip_prefix(b"\"") {
                Some(s) => s.get(..s.iter().position(|&b| b == b'"')?)?,
                None => {
                    let end = v
                        .iter()
                        .position(|&b| b == b',' || b == b'}' || b.is_ascii_whitespace())
                        .unwrap_or(v.len());
                    v.get(..end)?
                }
            });
        }
        from = after;
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    b.get(n..).unwrap_or_default()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Scenario for PubSub {
    type Conns = Members;

    async fn connect(
        self: Arc<Self>,
        thread: usize,
        threads: usize,
        stats: Rc<RefCell<Stats>>,
    ) -> Members {
        let me = self.clone();
        let subscribers = fleet::for_each_concurrent(
            fleet::share(self.subscribers, thread, threads),
            self.connect_concurrency,
            &stats,
            move |id| {
                let me = me.clone();
                async move { me.open_subscriber(id).await }
            },
        )
        .await;
        let first_pub = self.subscribers as u64;
        let target = Rc::new(self.target.clone());
        let channels = self.channels.max(1);
        let publishers = fleet::for_each_concurrent(
            fleet::share(self.publishers, thread, threads)
                .into_iter()
                .map(|j| first_pub + j)
                .collect(),
            self.connect_concurrency,
            &stats,
            move |id| {
                let target = target.clone();
                async move {
                    let client = fleet::open(&target, id).await?;
                    let channel = ((id - first_pub) as usize) % channels;
                    Ok(Member { client, channel })
                }
            },
        )
        .await;
        stats.borrow_mut().connected += (subscribers.len() + publishers.len()) as u64;
        Members {
            subscribers,
            publishers,
        }
    }

    async fn drive(self: Arc<Self>, m: Members, w: Window, stats: Rc<RefCell<Stats>>) {
        let mut tasks = Vec::new();
        for (publisher, mut member) in m
            .subscribers
            .into_iter()
            .map(|s| (false, s))
            .chain(m.publishers.into_iter().map(|p| (true, p)))
        {
            let (me, stats) = (self.clone(), stats.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let r = if publisher {
                    me.publisher_loop(&mut member, w, &stats).await
                } else {
                    me.subscriber_loop(&mut member, w, &stats).await
                };
                if let Err(e) = r {
                    stats.borrow_mut().error(true, &e);
                }
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
    fn reads_flat_json_fields() {
        let d = br#"{"type": "message", "channel":"data","seq":7,"from":null,"data":"0042-xx"}"#;
        assert_eq!(json_str(d, "type"), Some(&b"message"[..]));
        assert_eq!(json_str(d, "channel"), Some(&b"data"[..]));
        assert_eq!(json_str(d, "seq"), Some(&b"7"[..]));
        assert_eq!(json_str(d, "data"), Some(&b"0042-xx"[..]));
        assert_eq!(json_str(d, "nope"), None);
        assert_eq!(json_str(br#"{"type":"unterminated"#, "type"), None);
    }

    #[test]
    fn spreads_subscribers_over_channels() {
        let p = PubSub {
            target: Target::parse("ws://127.0.0.1:1/").unwrap(),
            split: None,
            subscribers: 10,
            publishers: 1,
            channels: 3,
            rate: 1.0,
            size: 64,
            channel_prefix: "c".into(),
            connect_concurrency: 1,
            subscribe_timeout: Duration::from_secs(1),
            grace: Duration::ZERO,
        };
        assert_eq!((p.fan_out(0), p.fan_out(1), p.fan_out(2)), (4, 3, 3));
    }
}
