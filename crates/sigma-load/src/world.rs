//! The world scenario: signed world messages per second through sigma's
//! session socket (DESIGN §5) — the cost of per-message Ed25519
//! verification on top of the echo path.
//!
//! Each connection opens `/ws` (authenticated by the `-H` headers: a
//! session cookie and `Origin`, or `Authorization: Bearer …`), says
//! `hello`, forks one world of `--command` (default `echo`, routed to
//! `&echo`) with its own Ed25519 key, fetches the worker code with the
//! signed initiate (`GET /world/<command>.js?initiate=…&sig=…`, same
//! headers), and then keeps `in_flight` signed world messages outstanding
//! (closed loop). Every body is a decimal send stamp; the echoed world
//! envelope carries it back. Signing happens in the load generator, so the
//! client pays for signatures as a browser would.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fleet::{self, Client, Scenario};
use crate::stats::{self, Stats, Window};
use crate::ws::{self, op, Event, Target};

/// Read buffer headroom per read.
const READ_RESERVE: usize = 16 * 1024;

/// Parameters of the world scenario.
#[derive(Clone, Debug)]
pub struct World {
    /// The session socket, e.g. `ws://127.0.0.1:3000/ws`.
    pub target: Target,
    /// Connections (one world each).
    pub connections: usize,
    /// World messages outstanding per connection.
    pub in_flight: usize,
    /// The world command to fork.
    pub command: String,
    /// Connections opened at once during the connect phase.
    pub connect_concurrency: usize,
}

/// One connection with its active world.
pub struct WorldConn {
    client: Client,
    key: SigningKey,
    world: String,
    lamport: u64,
}

/// `v[k]`, or `null` (never panics).
fn f<'a>(v: &'a serde_json::Value, k: &str) -> &'a serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    v.get(k).unwrap_or(&NULL)
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl World {
    /// Sends `text` as one masked text frame.
    async fn send_text(c: &mut Client, text: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        c.message(&mut out, op::TEXT, text.as_bytes());
        c.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next text message, as JSON (pings answered on the way).
    async fn recv_json(c: &mut Client) -> anyhow::Result<serde_json::Value> {
        loop {
            while let Some(ev) = c.dec.next_event()? {
                match ev {
                    Event::Message { data, .. } => {
                        return serde_json::from_slice(c.dec.data(&data))
                            .context("server message is not JSON");
                    }
                    Event::Ping(p) => {
                        let mut out = Vec::new();
                        ws::encode(&mut out, op::PONG, &p, Some(c.rng.mask()));
                        c.stream.write_all(&out).await?;
                    }
                    Event::Pong => {}
                    Event::Close(code) => bail!("the server sent close {code:?}"),
                }
            }
            if c.stream.read_buf(c.dec.buf_mut(READ_RESERVE)).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }

    /// `GET` the worker code with the signed initiate; `Ok` on 200.
    async fn initiate(&self, path: &str) -> anyhow::Result<()> {
        let mut s = tokio::net::TcpStream::connect(&self.target.addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
            self.target.addr, self.target.headers
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        if !resp.starts_with(b"HTTP/1.1 200 ") {
            let line = resp.split(|b| *b == b'\r').next().unwrap_or_default();
            bail!("initiate refused: {}", String::from_utf8_lossy(line));
        }
        Ok(())
    }

    /// Opens the session socket and starts one world on it.
    async fn open(&self, id: u64) -> anyhow::Result<WorldConn> {
        let mut client = fleet::open(&self.target, id).await?;
        let mut lamport = 1u64;
        Self::send_text(&mut client, r#"{"type":"hello","lamport":1}"#).await?;
        let welcome = Self::recv_json(&mut client).await?;
        if f(&welcome, "type") != "welcome" {
            bail!("expected welcome, got {welcome}");
        }
        let code = f(&welcome, "commands")
            .as_array()
            .and_then(|cs| cs.iter().find(|c| f(c, "name") == self.command.as_str()))
            .and_then(|c| f(c, "code").as_str())
            .ok_or_else(|| anyhow!("the server offers no command {:?}", self.command))?
            .to_owned();
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = (client.rng.next_u64() >> (i % 8)) as u8;
        }
        let key = SigningKey::from_bytes(&seed);
        let world = b64(key.verifying_key().as_bytes());
        lamport = lamport.max(f(&welcome, "lamport").as_u64().unwrap_or(0)) + 2;
        let fork = serde_json::json!({"type":"fork","lamport":lamport,"world":world,"command":self.command});
        Self::send_text(&mut client, &fork.to_string()).await?;
        let reply = Self::recv_json(&mut client).await?;
        let cookie = match f(&reply, "type").as_str() {
            Some("fork-cookie") => f(&reply, "cookie").as_str().unwrap_or_default().to_owned(),
            _ => bail!("fork refused: {reply}"),
        };
        lamport = lamport.max(f(&reply, "lamport").as_u64().unwrap_or(0)) + 1;
        let initiate =
            serde_json::json!({"cookie": cookie, "world": world, "command": self.command})
                .to_string();
        let sig = key.sign(initiate.as_bytes());
        self.initiate(&format!(
            "{code}?initiate={}&sig={}",
            b64(initiate.as_bytes()),
            b64(&sig.to_bytes())
        ))
        .await?;
        Ok(WorldConn {
            client,
            key,
            world,
            lamport,
        })
    }

    /// Appends one signed world message carrying `stamp` to `out`.
    fn push(conn: &mut WorldConn, out: &mut Vec<u8>, stamp: u64) {
        conn.lamport += 1;
        let body = stamp.to_string();
        let signed = format!("{}\n{}\n{}", conn.world, conn.lamport, body);
        let sig = conn.key.sign(signed.as_bytes());
        let env = format!(
            r#"{{"type":"world","world":"{}","lamport":{},"body":"{}","sig":"{}"}}"#,
            conn.world,
            conn.lamport,
            body,
            b64(&sig.to_bytes())
        );
        conn.client.message(out, op::TEXT, env.as_bytes());
    }

    async fn conn_loop(
        &self,
        conn: &mut WorldConn,
        w: Window,
        stats: &Rc<RefCell<Stats>>,
    ) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(256 * self.in_flight.max(1));
        let now = Instant::now();
        for _ in 0..self.in_flight {
            Self::push(conn, &mut out, w.stamp(now));
        }
        if !fleet::write_until(&mut conn.client.stream, &out, w.end).await? {
            return Ok(());
        }
        out.clear();
        if w.counts(now) {
            stats.borrow_mut().sent += self.in_flight as u64;
        }
        loop {
            let c = &mut conn.client;
            if !fleet::read_until(c, READ_RESERVE, w.end).await? {
                return Ok(());
            }
            let now = Instant::now();
            let mut replies = 0u64;
            while let Some(ev) = conn.client.dec.next_event()? {
                match ev {
                    Event::Message { data, .. } => {
                        let d = conn.client.dec.data(&data);
                        let v: serde_json::Value = serde_json::from_slice(d).unwrap_or_default();
                        conn.lamport = conn.lamport.max(f(&v, "lamport").as_u64().unwrap_or(0)) + 1;
                        let mut s = stats.borrow_mut();
                        let stamp = f(&v, "body")
                            .as_str()
                            .filter(|_| f(&v, "type") == "world")
                            .and_then(|b| stats::text_stamp(b.as_bytes()));
                        match stamp {
                            Some(stamp) => {
                                s.received(&w, now, stamp, d.len());
                                replies += 1;
                            }
                            None => s.bad_replies += 1,
                        }
                    }
                    Event::Ping(p) => {
                        let mask = conn.client.rng.mask();
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
            let stamp_now = w.stamp(now);
            for _ in 0..replies {
                Self::push(conn, &mut out, stamp_now);
            }
            if w.counts(now) {
                stats.borrow_mut().sent += replies;
            }
            if !out.is_empty() {
                if !fleet::write_until(&mut conn.client.stream, &out, w.end).await? {
                    return Ok(());
                }
                out.clear();
            }
        }
    }
}

impl Scenario for World {
    type Conns = Vec<WorldConn>;

    async fn connect(
        self: Arc<Self>,
        thread: usize,
        threads: usize,
        stats: Rc<RefCell<Stats>>,
    ) -> Vec<WorldConn> {
        let ids = fleet::share(self.connections, thread, threads);
        let me = self.clone();
        let conns = fleet::for_each_concurrent(ids, self.connect_concurrency, &stats, move |id| {
            let me = me.clone();
            async move { me.open(id).await }
        })
        .await;
        stats.borrow_mut().connected += conns.len() as u64;
        conns
    }

    async fn drive(self: Arc<Self>, conns: Vec<WorldConn>, w: Window, stats: Rc<RefCell<Stats>>) {
        let mut tasks = Vec::new();
        for mut c in conns {
            let (me, stats) = (self.clone(), stats.clone());
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = me.conn_loop(&mut c, w, &stats).await {
                    stats.borrow_mut().error(true, &e);
                }
                let mut out = Vec::new();
                ws::encode(
                    &mut out,
                    op::CLOSE,
                    &1000u16.to_be_bytes(),
                    Some(c.client.rng.mask()),
                );
                let _ = c.client.stream.try_write(&out);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
