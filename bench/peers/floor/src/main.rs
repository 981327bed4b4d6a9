//! Bench reference, not a server: the cheapest possible HTTP/1.1
//! keep-alive responder, to show what the load generator and the kernel's
//! loopback TCP path allow on this machine (bench scenario 1's `floor`
//! rows). It does not parse: it counts request heads (each `\r\n\r\n`
//! ends one; wrk sends no bodies) and answers each with one fixed `200`,
//! a response of the size nginx's `return 200 ""` sends. One thread.
//!
//! Two drivers, the same work:
//! - `epoll`: level of nginx's event loop, one `recv` and one `send` per
//!   request and an `epoll_wait` per batch of ready sockets;
//! - `io_uring`: the same receives and sends submitted as io_uring
//!   operations, one `io_uring_enter` per batch of completions, which is
//!   the most an io_uring driver could save in system calls.
//!
//! Usage: `floor epoll|io_uring ADDR`; prints `listening on ADDR`.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

/// As long as nginx's answer to the bench's `GET /echo` (the date is
/// fixed: nothing here reads a clock).
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Mon, 07 Dec 2026 17:00:00 GMT\r\nContent-Type: text/plain\r\n\
Content-Length: 0\r\nConnection: keep-alive\r\n\r\n";

/// Received bytes per connection and read.
const CHUNK: usize = 16 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mode, addr) = match (args.next(), args.next()) {
        (Some(m), Some(a)) if m == "epoll" || m == "io_uring" => (m, a),
        _ => {
            eprintln!("usage: floor epoll|io_uring ADDR");
            std::process::exit(2);
        }
    };
    let run = || -> io::Result<()> {
        // The ring first: where the kernel refuses io_uring, `floor`
        // exits before it listens.
        let ring = match mode.as_str() {
            "io_uring" => Some(
                io_uring::IoUring::builder()
                    .setup_single_issuer()
                    .setup_coop_taskrun()
                    .build(4096)?,
            ),
            _ => None,
        };
        let l = TcpListener::bind(&addr)?;
        println!("listening on {}", l.local_addr()?);
        match ring {
            Some(ring) => uring(&l, ring),
            None => epoll(&l),
        }
    };
    if let Err(e) = run() {
        eprintln!("floor: {e}");
        std::process::exit(1);
    }
}

/// Counts request heads across reads: `state` is how much of `\r\n\r\n`
/// the previous bytes matched.
fn heads(state: &mut u8, bytes: &[u8]) -> usize {
    let mut n = 0;
    for &b in bytes {
        *state = match (*state, b) {
            (0 | 2, b'\r') => *state + 1,
            (1 | 3, b'\n') => *state + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        if *state == 4 {
            n += 1;
            *state = 0;
        }
    }
    n
}

/// `n` responses in `out`.
fn answer(out: &mut Vec<u8>, n: usize) {
    out.clear();
    for _ in 0..n {
        out.extend_from_slice(RESPONSE);
    }
}

fn nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid option pointer and length for TCP_NODELAY.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Per-connection state, by file descriptor.
#[derive(Default)]
struct Conn {
    state: u8,
    out: Vec<u8>,
}

fn epoll(l: &TcpListener) -> io::Result<()> {
    l.set_nonblocking(true)?;
    let lfd = l.as_raw_fd();
    // SAFETY: plain system calls on descriptors this function owns; the
    // buffers passed outlive each call.
    unsafe {
        let ep = check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: lfd as u64,
        };
        check(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, &mut ev))?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
        let mut buf = vec![0u8; CHUNK];
        let mut conns: Vec<Conn> = Vec::new();
        loop {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as libc::c_int, -1);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for e in events.iter().take(n as usize) {
                let fd = e.u64 as RawFd;
                if fd == lfd {
                    loop {
                        let c = libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if c < 0 {
                            break;
                        }
                        nodelay(c);
                        let slot = c as usize;
                        if conns.len() <= slot {
                            conns.resize_with(slot + 1, Conn::default);
                        }
                        conns[slot] = Conn::default();
                        let mut ev = libc::epoll_event {
                            events: libc::EPOLLIN as u32,
                            u64: c as u64,
                        };
                        if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev) < 0 {
                            libc::close(c);
                        }
                    }
                    continue;
                }
                let Some(conn) = conns.get_mut(fd as usize) else {
                    continue;
                };
                let r = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                if r <= 0 {
                    libc::close(fd);
                    continue;
                }
                let k = heads(&mut conn.state, &buf[..r as usize]);
                if k == 0 {
                    continue;
                }
                answer(&mut conn.out, k);
                // The responses fit the socket's send buffer (the client
                // reads each before it sends more); a short send ends
                // the connection rather than queue.
                let w = libc::send(
                    fd,
                    conn.out.as_ptr().cast(),
                    conn.out.len(),
                    libc::MSG_NOSIGNAL,
                );
                if w < 0 || w as usize != conn.out.len() {
                    libc::close(fd);
                }
            }
        }
    }
}

fn uring(l: &TcpListener, mut ring: io_uring::IoUring) -> io::Result<()> {
    use io_uring::{opcode, squeue, types};
    const ACCEPT: u64 = u64::MAX;
    // One operation in flight per connection (a receive, or the send of
    // its answer), so its slot is free again once a receive ends it.
    struct Slot {
        fd: RawFd,
        state: u8,
        buf: Vec<u8>,
        out: Vec<u8>,
    }
    let lfd = l.as_raw_fd();
    let mut slots: Vec<Slot> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::new();
    let mut todo: Vec<squeue::Entry> = vec![opcode::AcceptMulti::new(types::Fd(lfd))
        .build()
        .user_data(ACCEPT)];
    let recv = |i: usize, s: &mut Slot| {
        opcode::Recv::new(types::Fd(s.fd), s.buf.as_mut_ptr(), s.buf.len() as u32)
            .build()
            .user_data((i as u64) << 1)
    };
    loop {
        {
            let mut sq = ring.submission();
            for e in todo.drain(..) {
                // SAFETY: every buffer an entry points into lives in
                // `slots`, whose entries are neither dropped nor moved
                // (their Vecs' heap storage stays put) while the
                // operation is in flight.
                if unsafe { sq.push(&e) }.is_err() {
                    return Err(io::Error::other("submission queue full"));
                }
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // Reused: no allocation per batch.
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            if ud == ACCEPT {
                // A multishot accept that ended (an error) is armed again.
                if !io_uring::cqueue::more(flags) {
                    todo.push(
                        opcode::AcceptMulti::new(types::Fd(lfd))
                            .build()
                            .user_data(ACCEPT),
                    );
                }
                if res >= 0 {
                    nodelay(res);
                    let s = Slot {
                        fd: res,
                        state: 0,
                        buf: vec![0; CHUNK],
                        out: Vec::new(),
                    };
                    let i = match free.pop() {
                        Some(i) => {
                            slots[i] = s;
                            i
                        }
                        None => {
                            slots.push(s);
                            slots.len() - 1
                        }
                    };
                    todo.push(recv(i, &mut slots[i]));
                }
                continue;
            }
            let i = (ud >> 1) as usize;
            let Some(s) = slots.get_mut(i) else { continue };
            if ud & 1 == 0 {
                let k = match usize::try_from(res) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => heads(&mut s.state, &s.buf[..n.min(s.buf.len())]),
                };
                if res <= 0 {
                    // SAFETY: closing the connection's own descriptor.
                    unsafe { libc::close(s.fd) };
                    free.push(i);
                    continue;
                }
                if k == 0 {
                    todo.push(recv(i, s));
                    continue;
                }
                answer(&mut s.out, k);
                todo.push(
                    opcode::Send::new(types::Fd(s.fd), s.out.as_ptr(), s.out.len() as u32)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(((i as u64) << 1) | 1),
                );
            } else if res < 0 || res as usize != s.out.len() {
                // SAFETY: as above.
                unsafe { libc::close(s.fd) };
                free.push(i);
            } else {
                todo.push(recv(i, s));
            }
        }
    }
}
