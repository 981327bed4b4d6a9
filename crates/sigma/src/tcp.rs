//! `T`: the TCP server (seed `000`, "TCP server structure"; DESIGN §2).
//!
//! ```text
//!  client ──▶ [ T ] ──bytes──▶ H …      (one pipeline per connection)
//! ```
//!
//! Binds IPv4 and IPv6 listeners with `SO_REUSEADDR` and a real backlog,
//! survives accept errors (EMFILE, ENFILE, ECONNABORTED: logged, backed off,
//! never fatal), sets `TCP_NODELAY`, and enforces the global and per-IP
//! connection caps: over a cap, the connection is closed at once, counted
//! and logged (rate-limited). The half-close semantics (ω, Ω, SHUT_RD) are
//! carried out by the connection driver in [`crate::conn`]. T knows
//! nothing of HTTP.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Notify;

mod drain;
pub use drain::{Drain, DrainWatch};

use crate::metrics::{inc, Metrics};

/// Binds a listening socket.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` accepts IPv4-mapped connections too.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.max(1))?;
    TcpListener::from_std(socket.into())
}

/// The connection caps, shared by all listeners.
#[derive(Debug)]
pub struct ConnLimiter {
    /// `server.max_connections` (a reload may change it).
    max: AtomicUsize,
    /// `server.max_connections_per_ip` (likewise).
    max_per_ip: AtomicUsize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Notified whenever a connection ends (drain waits on it).
    closed: Notify,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` reached.
    Global,
    /// `server.max_connections_per_ip` reached.
    PerIp,
}

impl Refusal {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Global => "max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }
}

impl ConnLimiter {
    /// Caps of `max` connections, `max_per_ip` from one address.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            max_per_ip: AtomicUsize::new(max_per_ip),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            closed: Notify::new(),
        })
    }

    /// Takes a slot for a connection from `ip`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refusal> {
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Global);
        }
        let mut map = match self.per_ip.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip.load(Ordering::Relaxed) {
            drop(map);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(ConnSlot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// New caps (a reload): connections already open above them stay;
    /// new ones are refused until the count is below.
    pub fn set_caps(&self, max: usize, max_per_ip: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = match self.limiter.per_ip.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
        self.limiter.closed.notify_waiters();
    }
}

/// Accepts connections until `stop` turns true; each accepted connection
/// is handed to `serve` with its slot.
pub async fn accept_loop<F>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    metrics: Arc<Metrics>,
    stop: DrainWatch,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, ConnSlot),
{
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut stopped => return,
        };
        match accepted {
            Ok((stream, peer)) => match limiter.acquire(peer.ip()) {
                Ok(slot) => {
                    inc(&metrics.accepted);
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "TCP_NODELAY failed");
                    }
                    serve(stream, peer, slot);
                }
                Err(refusal) => {
                    inc(&metrics.refused);
                    metrics.reject(refusal.reason());
                    if metrics.may_log() {
                        tracing::warn!(%peer, reason = refusal.reason(), "connection refused");
                    }
                    drop(stream);
                }
            },
            Err(e) => {
                if metrics.may_log() {
                    tracing::warn!(error = %e, "accept failed");
                }
                // Out of descriptors: back off instead of spinning.
                // ENFILE (23) and EMFILE (24) on Linux.
                if let Some(23 | 24) = e.raw_os_error() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
