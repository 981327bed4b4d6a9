//! The idle scenario: open N WebSocket connections, complete every
//! handshake, then hold them open doing nothing but answering pings.
//!
//! When all are open it prints one line, `open N failed M`, on stdout (and
//! flushes it), so a script can measure the server's memory at that moment;
//! it then holds the connections for `--hold` or until it is killed.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::bail;

use crate::fleet::{self, Client, Scenario};
use crate::stats::{Stats, Window};
use crate::ws::{self, op, Event, Target};

/// Parameters and shared counters of the idle scenario.
#[derive(Debug)]
pub struct Idle {
    /// Where to connect.
    pub target: Target,
    /// Connections in total.
    pub connections: usize,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// Opened so far, all threads together.
    pub opened: AtomicU64,
    /// Failed to open, all threads together.
    pub failed: AtomicU64,
}

impl Idle {
    /// An idle scenario with its counters at zero.
    pub fn new(target: Target, connections: usize, connect_concurrency: usize) -> Self {
        Self {
            target,
            connections,
            connect_concurrency,
            opened: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// Reads until the window ends, answering pings; no buffer is kept between
/// reads.
async fn hold(c: &mut Client, w: Window, stats: &Rc<RefCell<Stats>>) -> anyhow::Result<()> {
    loop {
        if !fleet::read_until(c, 256, w.end).await? {
            return Ok(());
        }
        let mut out = Vec::new();
        while let Some(ev) = c.dec.next_event()? {
            match ev {
                Event::Ping(p) => ws::encode(&mut out, op::PONG, &p, Some(c.rng.mask())),
                Event::Close(code) => {
                    *stats
                        .borrow_mut()
                        .closes
                        .entry(code.unwrap_or(0))
                        .or_default() += 1;
                    bail!("the server sent close {code:?}");
                }
                Event::Message { .. } | Event::Pong => {}
            }
        }
        c.dec.shrink();
        if !out.is_empty() && !fleet::write_until(&mut c.stream, &out, w.end).await? {
            return Ok(());
        }
    }
}

impl Scenario for Idle {
    type Conns = Vec<Client>;

    async fn connect(
        self: Arc<Self>,
        thread: usize,
        threads: usize,
        stats: Rc<RefCell<Stats>>,
    ) -> Vec<Client> {
        let ids = fleet::share(self.connections, thread, threads);
        let n = ids.len() as u64;
        let target = Rc::new(self.target.clone());
        let mut conns =
            fleet::for_each_concurrent(ids, self.connect_concurrency, &stats, move |id| {
                let target = target.clone();
                async move { fleet::open(&target, id).await }
            })
            .await;
        for c in &mut conns {
            c.dec.shrink();
        }
        let ok = conns.len() as u64;
        stats.borrow_mut().connected += ok;
        self.opened.fetch_add(ok, Ordering::Relaxed);
        self.failed.fetch_add(n - ok, Ordering::Relaxed);
        conns
    }

    fn all_connected(&self) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "open {} failed {}",
            self.opened.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
        let _ = out.flush();
    }

    async fn drive(self: Arc<Self>, conns: Vec<Client>, w: Window, stats: Rc<RefCell<Stats>>) {
        let mut tasks = Vec::new();
        for mut c in conns {
            let stats = stats.clone();
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = hold(&mut c, w, &stats).await {
                    stats.borrow_mut().error(true, &e);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
