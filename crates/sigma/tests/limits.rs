//! Every limit of DESIGN §3 (HTTP part) against the real server: the breach
//! gets its status (or a silent close) and the connection closes; the same
//! request just at the limit succeeds.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Asserts `r` is `status` with `Connection: close`, then that the
/// connection closes.
fn assert_rejected(c: &mut Client, r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.closes(), "{status} must carry Connection: close: {r:?}");
    c.expect_closed();
}

// ----- request line ----------------------------------------------------------

/// `GET /echo?aaa… HTTP/1.1` whose request line (without CRLF) is `len` bytes.
fn request_line_of(len: usize) -> String {
    let fixed = "GET /echo?q= HTTP/1.1".len();
    format!("GET /echo?q={} HTTP/1.1", "a".repeat(len - fixed))
}

#[test]
fn request_line_at_limit_is_accepted_one_more_is_414() {
    let s = Cfg::new().http("max_request_line", 256usize).start();
    let line = request_line_of(256);
    assert_eq!(line.len(), 256);
    let mut c = s.connect();
    c.send(format!("{line}\r\nHost: x\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "a 256-byte request line is within the limit");
    assert!(!r.closes());

    let line = request_line_of(257);
    let mut c = s.connect();
    c.send(format!("{line}\r\nHost: x\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_rejected(&mut c, &r, 414);
}

#[test]
fn endless_request_line_is_414_without_waiting_for_its_end() {
    let s = Cfg::new()
        .http("max_request_line", 256usize)
        .http("head_timeout", "60s")
        .start();
    let mut c = s.connect();
    // No CRLF ever comes: the server must answer as soon as the limit is passed.
    c.send(format!("GET /{}", "b".repeat(2000)).as_bytes());
    let r = c.read_response();
    assert_rejected(&mut c, &r, 414);
}

// ----- header block ---------------------------------------------------------

/// A request whose field lines (each with its CRLF, without the final empty
/// line) total `bytes`.
fn head_with_field_bytes(bytes: usize) -> String {
    let host = "Host: x\r\n";
    let fixed = host.len() + "X-Pad: \r\n".len();
    format!(
        "GET /echo HTTP/1.1\r\n{host}X-Pad: {}\r\n\r\n",
        "p".repeat(bytes - fixed)
    )
}

#[test]
fn header_block_at_limit_is_accepted_one_more_is_431() {
    let s = Cfg::new().http("max_header_bytes", 512usize).start();
    let mut c = s.connect();
    c.send(head_with_field_bytes(512).as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "512 bytes of fields are within the limit");

    let mut c = s.connect();
    c.send(head_with_field_bytes(513).as_bytes());
    let r = c.read_response();
    assert_rejected(&mut c, &r, 431);
}

#[test]
fn huge_header_block_is_431_before_it_ends() {
    let s = Cfg::new()
        .http("max_header_bytes", 512usize)
        .http("head_timeout", "60s")
        .start();
    let mut c = s.connect();
    let mut req = String::from("GET /echo HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        req.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(40)));
    }
    // The head never ends.
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_rejected(&mut c, &r, 431);
}

fn head_with_fields(n: usize) -> String {
    let mut h = String::from("GET /echo HTTP/1.1\r\nHost: x\r\n");
    for i in 1..n {
        h.push_str(&format!("X-{i}: {i}\r\n"));
    }
    h.push_str("\r\n");
    h
}

#[test]
fn header_count_at_limit_is_accepted_one_more_is_431() {
    let s = Cfg::new().http("max_headers", 10usize).start();
    let mut c = s.connect();
    c.send(head_with_fields(10).as_bytes());
    assert_eq!(
        c.read_response().status,
        200,
        "10 fields are within the limit"
    );

    let mut c = s.connect();
    c.send(head_with_fields(11).as_bytes());
    let r = c.read_response();
    assert_rejected(&mut c, &r, 431);
}

// ----- head timeout / slowloris ----------------------------------------------

#[test]
fn incomplete_head_gets_408_at_the_deadline() {
    let s = Cfg::new().http("head_timeout", "1s").start();
    let mut c = s.connect();
    let t0 = Instant::now();
    c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n");
    let r = c.read_response();
    let took = t0.elapsed();
    assert_rejected(&mut c, &r, 408);
    assert!(
        took >= Duration::from_millis(800),
        "408 too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "408 too late: {took:?}");
}

#[test]
fn slowloris_one_header_byte_every_200ms_is_cut_off() {
    let s = Cfg::new().http("head_timeout", "1s").start();
    let mut c = s.connect();
    let t0 = Instant::now();
    c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n");
    // 100 more bytes at 5 bytes/s would take 20 s.
    let rest = format!("X-Slow: {}\r\n\r\n", "s".repeat(88)).into_bytes();
    assert_eq!(rest.len(), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let w = trickle(
        &c.stream,
        rest,
        1,
        Duration::from_millis(200),
        Arc::clone(&stop),
    );
    let r = c.read_response();
    let took = t0.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(r.closes());
    c.expect_closed();
    stop.store(true, Ordering::SeqCst);
    let (sent, _) = w.join().unwrap();
    assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    assert!(sent < 40, "the slow client got to send {sent} bytes");
}

#[test]
fn slow_but_timely_head_is_accepted() {
    let s = Cfg::new().http("head_timeout", "2s").start();
    let mut c = s.connect();
    let head = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    // ~10 writes, 50 ms apart: done in ~0.5 s, well within 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let w = trickle(&c.stream, head, 3, Duration::from_millis(50), stop);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(w.join().unwrap().1.is_none());
}

#[test]
fn connection_without_a_byte_is_closed_silently_at_head_timeout() {
    let s = Cfg::new().http("head_timeout", "1s").start();
    let mut c = s.connect();
    let t0 = Instant::now();
    c.expect_closed();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "closed too late: {took:?}");
}

// ----- keep-alive idle -----------------------------------------------------

#[test]
fn idle_keep_alive_is_closed_without_response() {
    let s = Cfg::new()
        .http("keepalive_timeout", "1s")
        .http("head_timeout", "10s")
        .start();
    let mut c = s.connect();
    c.send(&get("/echo", ""));
    assert_eq!(c.read_response().status, 200);
    let t0 = Instant::now();
    c.expect_closed(); // no 408, nothing: just the close
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "closed too late: {took:?}");
}

#[test]
fn keep_alive_request_before_idle_deadline_is_answered() {
    let s = Cfg::new().http("keepalive_timeout", "2s").start();
    let mut c = s.connect();
    for i in 0..3 {
        c.send(&post("/echo", "", format!("r{i}").as_bytes()));
        assert_eq!(c.read_response().body_str(), format!("r{i}"));
        thread::sleep(Duration::from_millis(300)); // client think time, within the limit
    }
    c.send(&get("/echo", ""));
    assert_eq!(c.read_response().status, 200);
}

// ----- body size -----------------------------------------------------------

#[test]
fn body_at_max_by_content_length_accepted_one_more_is_413() {
    let s = Cfg::new().http("max_body", 1000u64).start();
    let mut c = s.connect();
    let body = vec![b'b'; 1000];
    c.send(&post("/echo", "", &body));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1000);

    let mut c = s.connect();
    // Only the head: the server must refuse from Content-Length alone.
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    let r = c.read_response();
    assert_rejected(&mut c, &r, 413);
}

fn chunked_req(chunks: &[usize]) -> Vec<u8> {
    let mut v = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for &n in chunks {
        v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        v.extend_from_slice(&vec![b'c'; n]);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

#[test]
fn chunked_body_at_max_accepted_growth_past_it_is_413() {
    let s = Cfg::new().http("max_body", 1000u64).start();
    let mut c = s.connect();
    c.send(&chunked_req(&[600, 400]));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1000);

    let mut c = s.connect();
    c.send(&chunked_req(&[600, 300, 101]));
    let r = c.read_response();
    assert_rejected(&mut c, &r, 413);
}

#[test]
fn per_route_max_body_is_413_and_close() {
    let s = Cfg::new()
        .http("max_body", 100000u64)
        .tail(
            "[[route]]\npath = \"/echo\"\nto = \"&echo\"\nauth = \"none\"\n\n\
             [[route]]\npath = \"/small\"\nto = \"&echo\"\nauth = \"none\"\nmax_body = 100\n",
        )
        .start();
    let mut c = s.connect();
    c.send(&post("/small", "", &[b's'; 100]));
    let r = c.read_response();
    assert_eq!(r.status, 200, "100 bytes are within the route's limit");
    assert_eq!(r.body.len(), 100);

    let mut c = s.connect();
    c.send(&post("/small", "", &[b's'; 101]));
    let r = c.read_response();
    assert_rejected(&mut c, &r, 413);
}

// ----- body minimum rate ---------------------------------------------------

#[test]
fn body_below_min_rate_after_grace_is_408() {
    let s = Cfg::new()
        .http("body_rate_grace", "1s")
        .http("body_min_rate", 1000u64)
        .start();
    let mut c = s.connect();
    let t0 = Instant::now();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    // 5 bytes/s against a minimum of 1000 bytes/s.
    let stop = Arc::new(AtomicBool::new(false));
    let w = trickle(
        &c.stream,
        vec![b'z'; 1000],
        1,
        Duration::from_millis(200),
        Arc::clone(&stop),
    );
    let r = c.read_response();
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    assert_rejected(&mut c, &r, 408);
    let _ = w.join();
    assert!(
        took >= Duration::from_millis(900),
        "408 inside the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "408 too late: {took:?}");
}

#[test]
fn body_above_min_rate_is_accepted() {
    let s = Cfg::new()
        .http("body_rate_grace", "1s")
        .http("body_min_rate", 1000u64)
        .start();
    let mut c = s.connect();
    let body: Vec<u8> = (0..4000u32).map(|i| b'0' + (i % 10) as u8).collect();
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // 500 bytes every 100 ms = 5000 bytes/s for ~0.8 s, within the grace.
    let stop = Arc::new(AtomicBool::new(false));
    let w = trickle(
        &c.stream,
        body.clone(),
        500,
        Duration::from_millis(100),
        stop,
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.body == body);
    assert!(w.join().unwrap().1.is_none());
}

#[test]
fn body_slow_but_above_min_rate_past_the_grace_is_accepted() {
    let s = Cfg::new()
        .http("body_rate_grace", "1s")
        .http("body_min_rate", 1000u64)
        .start();
    let mut c = s.connect();
    // 2000 bytes/s for ~2 s: past the grace, above the minimum rate.
    let body = vec![b'r'; 4000];
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let w = trickle(
        &c.stream,
        body.clone(),
        200,
        Duration::from_millis(100),
        stop,
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.len(), body.len());
    assert!(w.join().unwrap().1.is_none());
}

// ----- slow read -----------------------------------------------------------

const MIB: usize = 1024 * 1024;

fn slow_read_server() -> Server {
    Cfg::new()
        .http("write_timeout", "1s")
        .http("max_body", (2 * MIB) as u64)
        .http("keepalive_timeout", "30s")
        .start()
}

#[test]
fn client_that_never_reads_is_cut_off() {
    let s = slow_read_server();
    let mut c = s.connect();
    let body = vec![b'R'; MIB];
    let req = post("/echo", "", &body);
    let n_requests = 16;
    let owed = n_requests * MIB;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut w = c.stream.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> (usize, Option<std::io::Error>, Instant) {
            use std::io::Write;
            for i in 0..n_requests {
                if let Err(e) = w.write_all(&req) {
                    return (i, Some(e), Instant::now());
                }
            }
            // Keep the connection busy with tiny requests, never reading, until
            // the server gives up on us (the write fails).
            let t_end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < t_end && !stop.load(Ordering::SeqCst) {
                if let Err(e) = w.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n") {
                    return (n_requests, Some(e), Instant::now());
                }
                thread::sleep(Duration::from_millis(100));
            }
            (n_requests, None, Instant::now())
        })
    };
    let t0 = Instant::now();
    let (written, err, t_err) = writer.join().unwrap();
    let took = t_err - t0;
    assert!(
        err.is_some(),
        "the server never cut off a client that does not read (wrote {written} big requests in {took:?})"
    );
    assert!(
        took < Duration::from_secs(12),
        "cut off only after {took:?}"
    );
    // What the client can still read is less than what it was owed.
    let got = c.read_to_end();
    assert!(
        got.len() < owed,
        "received all {} bytes although it never read",
        got.len()
    );
}

#[test]
fn client_that_reads_gets_all_big_responses() {
    let s = slow_read_server();
    let mut c = s.connect();
    let body = vec![b'Q'; MIB];
    let req = post("/echo", "", &body);
    let n_requests = 16;
    let writer = {
        let mut w = c.stream.try_clone().unwrap();
        thread::spawn(move || {
            use std::io::Write;
            for _ in 0..n_requests {
                w.write_all(&req).expect("write");
            }
        })
    };
    for i in 0..n_requests {
        let r = c.read_response();
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body.len(), MIB, "response {i}");
    }
    writer.join().unwrap();
}

// ----- pipelining bound ------------------------------------------------------

#[test]
fn many_pipelined_requests_over_max_pipelined_all_answered_in_order() {
    let s = Cfg::new().http("max_pipelined", 2usize).start();
    let mut c = s.connect();
    let mut all = Vec::new();
    for i in 0..40 {
        if i % 3 == 0 {
            all.extend_from_slice(&chunked_req(&[i + 1]));
        } else {
            all.extend_from_slice(&post("/echo", "", format!("p{i:02}").as_bytes()));
        }
    }
    c.send(&all);
    for i in 0..40 {
        let r = c.read_response();
        assert_eq!(r.status, 200, "response {i}");
        if i % 3 == 0 {
            assert_eq!(r.body, vec![b'c'; i + 1], "response {i}");
        } else {
            assert_eq!(
                r.body_str(),
                format!("p{i:02}"),
                "response {i} out of order"
            );
        }
    }
    c.send(&post("/echo", "", b"end"));
    assert_eq!(c.read_response().body, b"end");
}

#[test]
fn pipelined_big_requests_with_small_max_pipelined() {
    // Large enough that the server must stop reading while the client
    // still writes.
    let s = Cfg::new()
        .http("max_pipelined", 1usize)
        .http("max_body", (2 * MIB) as u64)
        .start();
    let mut c = s.connect();
    let n = 8;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend_from_slice(&post("/echo", "", &vec![b'a' + i as u8; 256 * 1024]));
    }
    let writer = {
        let mut w = c.stream.try_clone().unwrap();
        thread::spawn(move || {
            use std::io::Write;
            w.write_all(&all).expect("write");
        })
    };
    for i in 0..n {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 256 * 1024);
        assert!(
            r.body.iter().all(|&b| b == b'a' + i as u8),
            "response {i} out of order"
        );
    }
    writer.join().unwrap();
}

// ----- requests per connection -----------------------------------------------

#[test]
fn last_allowed_request_gets_connection_close() {
    let s = Cfg::new().http("max_requests_per_connection", 3u64).start();
    let mut c = s.connect();
    for i in 1..=3 {
        c.send(&post("/echo", "", format!("n{i}").as_bytes()));
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("n{i}"));
        if i < 3 {
            assert!(!r.closes(), "response {i} of 3 must keep the connection");
        } else {
            assert!(
                r.closes(),
                "response 3 of 3 must say Connection: close: {r:?}"
            );
        }
    }
    c.expect_closed();
}

#[test]
fn pipelined_past_max_requests_only_allowed_ones_answered() {
    let s = Cfg::new().http("max_requests_per_connection", 3u64).start();
    let mut c = s.connect();
    let mut all = Vec::new();
    for i in 1..=5 {
        all.extend_from_slice(&post("/echo", "", format!("m{i}").as_bytes()));
    }
    c.send(&all);
    for i in 1..=3 {
        let r = c.read_response();
        assert_eq!(r.body_str(), format!("m{i}"));
        assert_eq!(r.closes(), i == 3, "response {i}");
    }
    c.expect_closed();
}
