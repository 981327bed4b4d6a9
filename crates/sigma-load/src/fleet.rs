//! Running a scenario: threads, the connect phase, the shared clock.
//!
//! Each thread runs its own current-thread tokio runtime (no work stealing,
//! no cross-thread wake-ups: a load generator pinned to one core should
//! spend that core on sockets) and owns a slice of the connections. All
//! threads open their connections first; the clock starts only when every
//! thread is done, so the connect phase is never measured. Then each thread
//! drives its connections until the window ends and hands back its
//! [`Stats`], which are merged.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::LocalSet;

use crate::stats::{Stats, Window};
use crate::ws::{self, Decoder, Rng, Target};

/// One scenario's behaviour; see the module doc for the phases.
// The futures run on current-thread runtimes, so they need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Scenario: Send + Sync + 'static {
    /// What the connect phase hands to the drive phase.
    type Conns: 'static;

    /// Opens thread `thread`'s share (of `threads`) of the connections.
    async fn connect(
        self: Arc<Self>,
        thread: usize,
        threads: usize,
        stats: Rc<RefCell<Stats>>,
    ) -> Self::Conns;

    /// Called once, on one thread, when every thread has connected.
    fn all_connected(&self) {}

    /// Drives the connections until `window.end`.
    async fn drive(self: Arc<Self>, conns: Self::Conns, window: Window, stats: Rc<RefCell<Stats>>);
}

/// An open WebSocket client connection.
pub struct Client {
    /// Its number, unique in the run.
    pub id: u64,
    /// The socket.
    pub stream: tokio::net::TcpStream,
    /// Bytes read and not yet decoded.
    pub dec: Decoder,
    /// Masking keys.
    pub rng: Rng,
}

impl Client {
    /// Appends one masked data message to `out`, compressed when the
    /// connection negotiated permessage-deflate (`--deflate`).
    pub fn message(&mut self, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        let mask = self.rng.mask();
        ws::encode_message(out, opcode, payload, Some(mask), self.dec.deflate());
    }
}

/// Longest a connection plus its opening handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a WebSocket connection to `target` (within [`CONNECT_TIMEOUT`]).
pub async fn open(target: &Target, id: u64) -> anyhow::Result<Client> {
    let mut rng = Rng::new(id);
    let (stream, dec) = tokio::time::timeout(CONNECT_TIMEOUT, ws::connect(target, &mut rng))
        .await
        .map_err(|_| anyhow!("no handshake within {CONNECT_TIMEOUT:?}"))??;
    Ok(Client {
        id,
        stream,
        dec,
        rng,
    })
}

/// Writes all of `buf` unless `deadline` comes first (a server that stops
/// reading must not keep the run from ending); `Ok(false)` means it came.
pub async fn write_until(
    stream: &mut tokio::net::TcpStream,
    buf: &[u8],
    deadline: Instant,
) -> anyhow::Result<bool> {
    match tokio::time::timeout_at(deadline.into(), stream.write_all(buf)).await {
        Ok(r) => r.map(|()| true).map_err(Into::into),
        Err(_) => Ok(false),
    }
}

/// Reads what the server sent into `c.dec` (room for at least `reserve`
/// bytes) unless `deadline` comes first; `Ok(false)` means it came, and a
/// server that closes the connection is an error.
pub async fn read_until(c: &mut Client, reserve: usize, deadline: Instant) -> anyhow::Result<bool> {
    let read = c.stream.read_buf(c.dec.buf_mut(reserve));
    match tokio::time::timeout_at(deadline.into(), read).await {
        Err(_) => Ok(false),
        Ok(Ok(0)) => Err(anyhow!("the server closed the connection")),
        Ok(r) => r.map(|_| true).map_err(Into::into),
    }
}

/// The connection numbers of thread `thread` when `n` are spread over
/// `threads` threads round-robin.
pub fn share(n: usize, thread: usize, threads: usize) -> Vec<u64> {
    (thread..n)
        .step_by(threads.max(1))
        .map(|i| i as u64)
        .collect()
}

/// Runs `f` for every id with at most `concurrency` at a time, on the
/// current `LocalSet`. Results come back in completion order; failures are
/// counted in `stats` (as connect errors) and dropped.
pub async fn for_each_concurrent<T, F, Fut>(
    ids: Vec<u64>,
    concurrency: usize,
    stats: &Rc<RefCell<Stats>>,
    f: F,
) -> Vec<T>
where
    T: 'static,
    F: Fn(u64) -> Fut + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let queue = Rc::new(RefCell::new(VecDeque::from(ids)));
    let done = Rc::new(RefCell::new(Vec::new()));
    let f = Rc::new(f);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (queue, done, f, stats) = (queue.clone(), done.clone(), f.clone(), stats.clone());
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let next = queue.borrow_mut().pop_front();
                let Some(id) = next else { break };
                match f(id).await {
                    Ok(t) => done.borrow_mut().push(t),
                    Err(e) => stats.borrow_mut().error(false, &e),
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let out = std::mem::take(&mut *done.borrow_mut());
    out
}

/// Runs `scenario` on `threads` threads with the given warm-up and
/// measurement window; returns the merged counts.
pub fn run<S: Scenario>(
    scenario: Arc<S>,
    threads: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let threads = threads.max(1);
    let barrier = Arc::new(Barrier::new(threads));
    let base = Arc::new(OnceLock::new());
    let mut handles = Vec::new();
    for t in 0..threads {
        let (scenario, barrier, base) = (scenario.clone(), barrier.clone(), base.clone());
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> anyhow::Result<Stats> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let local = LocalSet::new();
                let stats = Rc::new(RefCell::new(Stats::new()));
                let conns = match &rt {
                    Ok(rt) => Some(
                        local.block_on(rt, scenario.clone().connect(t, threads, stats.clone())),
                    ),
                    Err(_) => None,
                };
                // Every thread reaches the barrier, even one that failed.
                if barrier.wait().is_leader() {
                    scenario.all_connected();
                }
                let rt = rt?;
                let b = *base.get_or_init(Instant::now);
                let window = Window::new(b, warmup, duration);
                if let Some(conns) = conns {
                    local.block_on(&rt, scenario.drive(conns, window, stats.clone()));
                }
                drop(local);
                let s = std::mem::take(&mut *stats.borrow_mut());
                Ok(s)
            })?;
        handles.push(h);
    }
    let mut total = Stats::new();
    for h in handles {
        let s = h.join().map_err(|_| anyhow!("a load thread panicked"))??;
        total.merge(s);
    }
    Ok(total)
}
