//! `T` against the real binary: connection caps, graceful drain on
//! SIGTERM/SIGINT, the forced exit on a second signal.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Asserts that `c` was closed by the server without any response, even
/// though it sent a request.
fn assert_refused(c: &mut Client, what: &str) {
    // The write may already fail if the server reset the connection.
    let _ = c.try_send(&get("/echo", ""));
    let t0 = std::time::Instant::now();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if let Err(e) = c.try_expect_closed() {
        panic!("{what}: expected an immediate close without response: {e}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "{what}: closed only after {:?}",
        t0.elapsed()
    );
}

fn served(c: &mut Client, body: &str) {
    c.send(&post("/echo", "", body.as_bytes()));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), body);
}

#[test]
fn per_ip_cap_closes_the_third_connection() {
    let s = Cfg::new()
        .server("max_connections_per_ip", 2usize)
        .http("head_timeout", "30s")
        .start();
    let mut c1 = s.connect();
    let mut c2 = s.connect();
    // A response on each proves the server holds both slots.
    served(&mut c1, "one");
    served(&mut c2, "two");
    let mut c3 = s.connect();
    assert_refused(&mut c3, "third connection from 127.0.0.1");
    // The first two still work.
    served(&mut c1, "one again");
    served(&mut c2, "two again");
}

#[test]
fn global_cap_closes_the_connection_over_it() {
    let s = Cfg::new()
        .server("max_connections", 2usize)
        .server("max_connections_per_ip", 100usize)
        .http("head_timeout", "30s")
        .start();
    let mut c1 = s.connect();
    let mut c2 = s.connect();
    served(&mut c1, "a");
    served(&mut c2, "b");
    let mut c3 = s.connect();
    assert_refused(&mut c3, "connection over the global cap");
    let mut c4 = s.connect();
    assert_refused(&mut c4, "second connection over the global cap");
    served(&mut c1, "a2");
    served(&mut c2, "b2");
}

/// Config for the drain tests: long timeouts so that every close observed
/// is the drain's.
fn drain_cfg(drain_timeout: &str) -> Cfg {
    Cfg::new()
        .server("drain_timeout", drain_timeout)
        .http("head_timeout", "30s")
        .http("keepalive_timeout", "30s")
        .http("body_rate_grace", "30s")
}

/// Opens a keep-alive connection that has completed one request.
fn idle_conn(s: &Server) -> Client {
    let mut c = s.connect();
    served(&mut c, "idle");
    c
}

/// Opens a connection with a request whose body is half sent; returns once
/// the server has parsed the head (it answered `100 Continue`).
fn slow_conn(s: &Server) -> Client {
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n");
    c.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"01234");
    c
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mut s = drain_cfg("10s").start();
    let mut idle = idle_conn(&s);
    let mut slow = slow_conn(&s);

    s.signal("TERM");

    // The idle keep-alive connection is closed (no response).
    idle.expect_closed_within(Duration::from_secs(5));
    drop(idle); // our EOF ends the server's linger

    // New connections are not served: refused, or closed without response.
    match TcpStream::connect(s.addr()) {
        Err(_) => {}
        Ok(stream) => {
            let mut c = Client::from_stream(stream);
            assert_refused(&mut c, "connection after SIGTERM");
        }
    }

    // The in-flight request completes, with Connection: close.
    slow.send(b"56789");
    let r = slow.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"0123456789");
    assert!(
        r.closes(),
        "the last response of a draining server must close: {r:?}"
    );
    slow.expect_closed();
    drop(slow);

    // With every connection done, the process exits 0, well before the
    // 10 s drain deadline.
    let (st, took) = s.wait_exit(Duration::from_secs(8));
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[test]
fn sigint_on_idle_server_exits_0() {
    let mut s = drain_cfg("10s").start();
    let mut c = idle_conn(&s);
    s.signal("INT");
    c.expect_closed_within(Duration::from_secs(5));
    drop(c); // our EOF ends the server's linger
    let (st, took) = s.wait_exit(Duration::from_secs(8));
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
}

#[test]
fn drain_deadline_bounds_the_wait_for_stuck_requests() {
    let mut s = drain_cfg("1s").start();
    let mut idle = idle_conn(&s);
    let _slow = slow_conn(&s); // never finishes its body
    s.signal("TERM");
    idle.expect_closed_within(Duration::from_secs(5));
    let (st, took) = s.wait_exit(Duration::from_secs(8));
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?} with drain_timeout 1s"
    );
}

#[test]
fn second_signal_exits_at_once_with_130() {
    let mut s = drain_cfg("30s").start();
    let mut idle = idle_conn(&s);
    let mut slow = slow_conn(&s); // keeps the drain waiting
    s.signal("TERM");
    // The close of the idle connection shows the first signal was handled.
    idle.expect_closed_within(Duration::from_secs(5));
    s.signal("TERM");
    let (st, took) = s.wait_exit(Duration::from_secs(8));
    assert_eq!(st.code(), Some(130), "exit status {st}");
    assert!(took < Duration::from_secs(3), "forced exit took {took:?}");
    // The unfinished request's connection is gone with the process.
    let _ = slow.try_send(b"56789");
    let rest = slow.read_to_end();
    assert!(
        parse_response(&rest, false).ok().flatten().is_none(),
        "no response expected after a forced exit: {:?}",
        lossy(&rest)
    );
}
