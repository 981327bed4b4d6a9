//! The connection driver: one socket, one `H` core, one timer.
//!
//! ```text
//!  socket ◀──▶ [ conn: read → H.handle_input ──▶ dispatch (A, route) ]
//!                        write ◀── H.output ◀── H.send ◀── outbox
//! ```
//!
//! This is the thin tokio shell around the sans-IO codec (quinn's
//! `ConnectionDriver` is the model): it reads when `H` wants input, writes
//! what `H` produced, sleeps until `H`'s next deadline, and carries the
//! events through `A` to the route table and the replies back. It owns the
//! socket-level half-close semantics of T (DESIGN §2):
//! - ω ([`Shutdown::Graceful`]): flush, `shutdown(SHUT_WR)`, then read and
//!   discard until the peer's EOF or the linger deadline;
//! - Ω ([`Shutdown::Abort`]): `shutdown(SHUT_RDWR)` and close at once;
//! - `H` will never read again but still owes output: `shutdown(SHUT_RD)`.
//!
//! Streamed exchanges (a proxied upstream, issue #6): the body of a
//! streamed response is pulled from its source only while `H`'s output is
//! below `OUTPUT_HIGH_WATER`, and while a streamed request body waits for
//! room in its bounded channel the socket is not read.
//!
//! On a TLS listener (`T443[SHA]`, DESIGN §2a) the bytes pass through `S`
//! ([`crate::tlswire`]) between the socket and `H`; the handshake runs
//! here, in the connection's own task, so a slow handshake never holds up
//! the accept loop. Its deadline shares the one timer with `H`'s.
//!
//! It does not parse bytes, pick routes or decide identities.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Shutdown as SockShutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;

use crate::metrics::inc;
use sigma_http::Shutdown;
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::dispatch::Dispatch;
use crate::tcp::ConnSlot;
use crate::tlswire::{Next, TlsWire};

// Defined in `listener`, below both this driver and dispatch (which reads
// it); re-exported under its old path.
pub use crate::listener::ListenerCtx;

/// Size of the per-thread read buffer; connections hold no read buffer
/// while idle.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    static DATE: RefCell<(Option<Instant>, [u8; 29])> = const { RefCell::new((None, [b' '; 29])) };
}

/// The IMF-fixdate at the monotonic time `now` (a wake-up's one clock
/// read). The wall clock is read and the date formatted once per second
/// per thread: the cached date stays valid until the wall clock's next
/// whole second, which `now` tells without reading it again.
fn http_date(now: Instant) -> [u8; 29] {
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0.is_none_or(|until| now >= until) {
            let wall = SystemTime::now();
            let into_second = wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|t| t.subsec_nanos())
                .unwrap_or(0);
            let s = httpdate::fmt_http_date(wall);
            if let Ok(b) = <[u8; 29]>::try_from(s.as_bytes()) {
                let left = Duration::from_secs(1)
                    .saturating_sub(Duration::from_nanos(u64::from(into_second)));
                *d = (now.checked_add(left), b);
            }
        }
        d.1
    })
}

/// Serves one accepted connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    drain: crate::tcp::DrainWatch,
    _slot: ConnSlot,
) {
    // One clock read per wake-up (the branches of the `select!` below):
    // everything the wake does (H's input and output, the requests it
    // starts) happens at that time.
    let mut now = Instant::now();
    let mut p = Dispatch::new(&ctx, peer, now);
    let mut tls = match ctx
        .tls
        .as_ref()
        .map(|c| TlsWire::new(Arc::clone(c), now, ctx.tls_handshake_timeout))
    {
        None => None,
        // Boxed: a plain connection (most of them, and every idle
        // WebSocket behind a TLS-terminating proxy) does not carry S's
        // state (1.3 KiB) in its task.
        Some(Ok(w)) => Some(Box::new(w)),
        Some(Err(e)) => {
            tracing::error!(%peer, error = %e, "cannot start TLS");
            ctx.metrics.reject(e.reason());
            return;
        }
    };
    // A TLS error ends the connection once `S`'s last output (an alert,
    // or the plain 400 for plain HTTP) is written.
    let mut tls_failed = false;
    let mut draining = false;
    // Created once, polled on every wake-up (cheaply: `tcp::Drain`).
    let drain_started = drain.wait();
    tokio::pin!(drain_started);
    let mut read_shut = false;
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    let outcome = loop {
        p.pump();
        if let Some(t) = tls.as_mut().filter(|_| !tls_failed) {
            loop {
                let moved = t.transfer(&mut p.h, now);
                // Counted before H's events reach dispatch.
                if let Some(resumed) = t.newly_established() {
                    inc(&ctx.metrics.tls_handshakes);
                    if resumed {
                        inc(&ctx.metrics.tls_resumed);
                    }
                }
                match moved {
                    Ok(Next::Moved) => p.pump(),
                    Ok(Next::Idle) => break,
                    Ok(Next::AcmeDone) => {
                        inc(&ctx.metrics.tls_acme_validations);
                        tls_failed = true;
                        break;
                    }
                    Err(e) => {
                        tls_error(&ctx, peer, &e);
                        tls_failed = true;
                        break;
                    }
                }
            }
        }
        if let Some(t) = tls.as_mut() {
            // `S` ends after `H`: close_notify goes out after H's last byte.
            let h_done = match p.h.shutdown() {
                Some(Shutdown::Abort) => break Shutdown::Abort,
                Some(Shutdown::Graceful) => p.h.output_len() == 0,
                None => false,
            };
            if h_done && !tls_failed && !t.closing() {
                t.close();
            }
            if (h_done || tls_failed) && t.output().is_empty() {
                break Shutdown::Graceful;
            }
            if !t.output().is_empty() {
                match stream.try_write(t.output()) {
                    Ok(n) => {
                        t.handle_written(n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break Shutdown::Abort,
                }
            }
        } else {
            match p.h.shutdown() {
                Some(Shutdown::Abort) => break Shutdown::Abort,
                Some(Shutdown::Graceful) if p.h.output_len() == 0 => break Shutdown::Graceful,
                _ => {}
            }
        }
        // Write eagerly; wait for writability only when the socket is full.
        if tls.is_none() && p.h.output_len() > 0 {
            match write_output(&stream, &p.h) {
                Ok(n) => {
                    p.h.handle_written(n, now);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break Shutdown::Abort,
            }
        }
        // The pipeline stopped reading for good but still owes output.
        if !read_shut && p.h.shutdown().is_none() && !p.h.wants_read() && p.h.read_closed() {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Read);
            read_shut = true;
        }
        // While the destination does not take the streamed request body
        // the client is not the slow one: H's body-rate clock stands.
        let upload_blocked = p.upload_blocked();
        if p.h.body_paused() != upload_blocked {
            p.h.set_body_paused(upload_blocked, now);
        }
        let deadline = match (
            p.h.poll_timeout(),
            tls.as_deref().and_then(TlsWire::poll_timeout),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The timer moves only when the deadline comes earlier than the
        // one it is set to. A later one (the idle deadline moving on with
        // every request and message) lets it fire early; `H` and `S` fire
        // nothing before its time, and that wake sets it again: one timer
        // reset per deadline reached, not one per request.
        match (deadline, armed) {
            (Some(d), Some(a)) if d >= a => {}
            (Some(d), _) => {
                sleep.as_mut().reset(d.into());
                armed = Some(d);
            }
            (None, _) => {}
        }
        let upload_tx = if upload_blocked {
            p.upload_sender()
        } else {
            None
        };
        // A streamed request body whose destination is not keeping up
        // stops the reading (the bounded channel is the backpressure).
        let wants_read = match &tls {
            None => p.h.wants_read(),
            Some(t) => !tls_failed && t.wants_read(),
        } && !read_shut
            && !upload_blocked;
        // A streamed response body is pulled only while the client keeps up.
        let wants_body = p.outbox.body.is_some() && p.h.wants_body();
        let wants_write = match &tls {
            None => p.h.output_len() > 0,
            Some(t) => !t.output().is_empty(),
        };
        // Readiness is polled, not awaited through `readable()`: that
        // future links itself into the socket's waiter list on every
        // round of this `select!` and unlinks itself when another branch
        // wins (two locks on a line that is cold in a fan-out); the
        // per-direction waker slot of `poll_read_ready` stays registered.
        tokio::select! {
            r = poll_fn(|cx| stream.poll_read_ready(cx)), if wants_read => {
                if r.is_err() {
                    break Shutdown::Abort;
                }
                now = p.wake();
                p.h.set_date(&http_date(now));
                let res = SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    let got = read_drained(&stream, &mut s)?;
                    let input = match got {
                        Some(n) => s.get(..n).unwrap_or_default(),
                        None => return Ok(Ok(())),
                    };
                    Ok::<_, io::Error>(match tls.as_mut() {
                        None if input.is_empty() => { p.h.handle_eof(now); Ok(()) }
                        None => { p.h.handle_input(input, now); Ok(()) }
                        Some(t) if input.is_empty() => t.handle_eof(),
                        Some(t) => t.handle_input(input, now),
                    })
                });
                match res {
                    Err(_) => break Shutdown::Abort,
                    Ok(Err(e)) => {
                        tls_error(&ctx, peer, &e);
                        tls_failed = true;
                    }
                    Ok(Ok(())) => {}
                }
            }
            r = poll_fn(|cx| stream.poll_write_ready(cx)), if wants_write => {
                if r.is_err() {
                    break Shutdown::Abort;
                }
                now = p.wake();
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                now = p.wake();
                if let Some(t) = tls.as_mut().filter(|_| !tls_failed) {
                    if let Err(e) = t.handle_timeout(now) {
                        tls_error(&ctx, peer, &e);
                        tls_failed = true;
                    }
                }
                p.h.set_date(&http_date(now));
                p.h.handle_timeout(now);
            }
            pushed = recv_pushed(&mut p.pushed, p.gate.identity()), if p.pushed.is_some() => {
                now = p.wake();
                p.on_delivered(pushed);
                // A backlog (a busy fan-out) leaves in one write, not one
                // write per message.
                for _ in 1..PUSH_BATCH {
                    let expected = p.gate.identity();
                    match p.pushed.as_mut().and_then(|rx| rx.try_recv_for(expected)) {
                        Some(more) => p.on_delivered(more),
                        None => break,
                    }
                }
            }
            Some(out) = p.outbox.pending.next(),
                if !p.outbox.pending.is_empty() && p.outbox.body.is_none() =>
            {
                now = p.wake();
                p.outbox.accept(out);
            }
            piece = next_piece(&mut p.outbox.body), if wants_body => {
                now = p.wake();
                p.outbox.on_body(piece);
            }
            permit = upload_room(upload_tx), if upload_blocked => {
                now = p.wake();
                p.on_upload_room(permit);
            }
            () = &mut drain_started, if !draining => {
                draining = true;
                now = p.wake();
                p.h.start_drain(now);
            }
            else => {
                // Nothing can make progress: a state the codec should never
                // reach. End the connection rather than hang it.
                tracing::error!(peer = %p.peer, "connection stalled; aborting");
                break Shutdown::Abort;
            }
        }
    };

    let reached = p.h.limits_reached();
    for (hit, reason) in [
        (reached.max_pipelined, "max_pipelined"),
        (
            reached.max_requests_per_connection,
            "max_requests_per_connection",
        ),
        (reached.ws_close_timeout, "ws_close_timeout"),
    ] {
        if hit {
            ctx.metrics.reject(reason);
        }
    }
    match outcome {
        Shutdown::Abort => {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Both);
        }
        Shutdown::Graceful => {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Write);
            if !read_shut {
                linger(&stream, ctx.linger).await;
            }
        }
    }
}

/// Counts and logs a TLS error that ends the connection.
fn tls_error(ctx: &ListenerCtx, peer: SocketAddr, e: &sigma_tls::TlsError) {
    ctx.metrics.reject(e.reason());
    if ctx.metrics.may_log() {
        tracing::debug!(%peer, error = %e, "TLS connection ended");
    }
}

/// Writes what the socket takes of `H`'s output: one plain write when it
/// is contiguous (small responses), else one vectored write of its
/// segments (shared WebSocket payloads are written from where they are).
fn write_output(stream: &TcpStream, h: &sigma_http::ServerConn) -> io::Result<usize> {
    let front = h.output();
    if front.len() == h.output_len() {
        return stream.try_write(front);
    }
    let mut iov = [io::IoSlice::new(&[]); sigma_http::io::MAX_IO_SLICES];
    let k = h.output_slices(&mut iov);
    stream.try_write_vectored(iov.get(..k).unwrap_or_default())
}

/// One read into `buf`: `Some(n)` bytes (0 = EOF), `None` when there was
/// nothing to read after all.
///
/// A read that returns fewer bytes than `buf` holds has drained the
/// socket, so its readiness is cleared right away (as `AsyncRead::poll_read`
/// does) instead of by one more `recv` that would only say `EAGAIN`: that
/// saves a system call per request on keep-alive connections. tokio's
/// readiness tick keeps data that arrives meanwhile from being missed.
fn read_drained(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use std::io::Read;
    let mut got = None;
    let res = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*SockRef::from(stream)).read(buf)?;
        got = Some(n);
        if n > 0 && n < buf.len() {
            // Drained: report WouldBlock so tokio clears the readiness.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (res, got) {
        (_, Some(n)) => Ok(Some(n)),
        (Err(e), None)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        (Err(e), None) => Err(e),
        (Ok(()), None) => Ok(None),
    }
}

/// Most pushed messages taken from the queue per wake-up.
const PUSH_BATCH: usize = 64;

/// The next thing the destination pushed to this socket, checked against
/// the socket's identity `expected` where it can be without a tag.
async fn recv_pushed(
    rx: &mut Option<crate::route::WsReceiver>,
    expected: &crate::auth::Principal,
) -> crate::route::Delivered {
    match rx {
        Some(rx) => rx.recv_for(expected).await,
        None => std::future::pending().await,
    }
}

/// The next piece of the streamed response body.
async fn next_piece(
    body: &mut Option<crate::streaming::BodyStream>,
) -> Option<Result<bytes::Bytes, ()>> {
    match body {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

/// Room in a streamed request body's channel (`None`: it is gone).
async fn upload_room(
    tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
) -> Option<tokio::sync::mpsc::OwnedPermit<bytes::Bytes>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => None,
    }
}

/// After our half-close: read and discard until the peer's EOF or the
/// deadline, so that the peer sees our last response rather than a reset.
async fn linger(stream: &TcpStream, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ready = tokio::time::timeout_at(deadline, stream.readable()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return;
        }
        let done = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            }
        });
        if done {
            return;
        }
    }
}
