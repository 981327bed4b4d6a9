//! `GET /metrics` and `/healthz` against the real server: every rejection
//! reason of DESIGN §2/§3 is provoked once and its counter is seen to rise;
//! the other counters (requests by class, WebSocket traffic) move too;
//! `/metrics` is refused outside `server.metrics_allow`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A TOML value written as is.
struct Raw(&'static str);

impl TomlValue for Raw {
    fn toml(&self) -> String {
        self.0.to_owned()
    }
}

/// Reads the `sigma_rejections_total{reason="…"}` counter.
fn rejections(s: &Server, reason: &str) -> u64 {
    counter(
        &scrape(s),
        &format!("sigma_rejections_total{{reason=\"{reason}\"}}"),
    )
}

fn scrape(s: &Server) -> String {
    let mut c = s.connect();
    c.send(&get("/metrics", "Connection: close\r\n"));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    r.body_str()
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// Waits (bounded) until `reason` has been counted more than `before`
/// times. The server counts some reasons when a connection ends, which the
/// client cannot observe directly; this polls the server's own report.
fn expect_counted(s: &Server, reason: &str, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = rejections(s, reason);
        if now > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{reason} still {now} (was {before})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw WebSocket client connection to `/echo`.
fn ws_connect(s: &Server) -> TcpStream {
    let mut t = TcpStream::connect(s.addr()).expect("connect");
    t.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    t.write_all(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(t.read(&mut b).expect("read"), 1, "closed in handshake");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", lossy(&head));
    t
}

/// A masked client frame.
fn ws_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = [1u8, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Reads until EOF or an error; the bytes read.
fn drain(t: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match t.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

fn server() -> Server {
    Cfg::new()
        .http("max_request_line", 256u64)
        .http("max_header_bytes", 512u64)
        .http("max_headers", 8u64)
        .http("head_timeout", "300ms")
        .http("keepalive_timeout", "300ms")
        .http("max_body", 1000u64)
        .http("body_min_rate", 100_000u64)
        .http("body_rate_grace", "200ms")
        .http("write_timeout", "500ms")
        .http("max_pipelined", 2u64)
        .http("max_requests_per_connection", 3u64)
        .tail(
            "[websocket]\nmax_frame = 1000\nmax_message = 2000\nping_interval = \"100ms\"\n\
             idle_timeout = \"400ms\"\nclose_timeout = \"300ms\"\nmax_outbound = 4096\n",
        )
        .start()
}

#[test]
fn every_rejection_reason_is_counted() {
    let s = server();

    // 414, 431 (size), 431 (count), 413: one request each.
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "request_line_too_long",
            get(&format!("/echo?{}", "a".repeat(300)), ""),
        ),
        (
            "headers_too_large",
            get("/echo", &format!("X-A: {}\r\n", "b".repeat(600))),
        ),
        ("too_many_headers", get("/echo", &"X-A: 1\r\n".repeat(10))),
        ("body_too_large", post("/echo", "", &[b'c'; 1001])),
    ];
    for (reason, req) in cases {
        let before = rejections(&s, reason);
        let mut c = s.connect();
        c.send(&req);
        let r = c.read_response();
        assert!(r.status >= 400, "{reason}: {r:?}");
        c.expect_closed();
        expect_counted(&s, reason, before);
    }

    // Head timeout: half a head, then nothing.
    let before = rejections(&s, "head_timeout");
    let mut c = s.connect();
    c.send(b"GET /echo HTTP/1.1\r\nHo");
    assert_eq!(c.read_response().status, 408);
    expect_counted(&s, "head_timeout", before);

    // Keep-alive idle: one request, then silence until sigma closes.
    let before = rejections(&s, "keepalive_timeout");
    let mut c = s.connect();
    c.send(&get("/echo", ""));
    assert_eq!(c.read_response().status, 200);
    c.expect_closed();
    expect_counted(&s, "keepalive_timeout", before);

    // Body minimum rate: 10 of 500 bytes, then nothing.
    let before = rejections(&s, "body_too_slow");
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n0123456789");
    assert_eq!(c.read_response().status, 408);
    expect_counted(&s, "body_too_slow", before);

    // Pipelining limit and requests per connection: 3 requests in one
    // write with max_pipelined = 2 and max_requests_per_connection = 3.
    let (before_p, before_r) = (
        rejections(&s, "max_pipelined"),
        rejections(&s, "max_requests_per_connection"),
    );
    let mut c = s.connect();
    let mut three = Vec::new();
    for _ in 0..3 {
        three.extend_from_slice(&get("/echo", ""));
    }
    c.send(&three);
    for _ in 0..3 {
        assert_eq!(c.read_response().status, 200);
    }
    c.expect_closed();
    expect_counted(&s, "max_pipelined", before_p);
    expect_counted(&s, "max_requests_per_connection", before_r);

    // WebSocket slow consumer: a tiny receive window and many echoes.
    let mut t = ws_connect(&s);
    let _ = socket2::SockRef::from(&t).set_recv_buffer_size(1024);
    t.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let before = rejections(&s, "ws_slow_consumer");
    let msg = ws_frame(0x2, true, &[b'e'; 900]);
    for _ in 0..3000 {
        if t.write_all(&msg).is_err() {
            break;
        }
    }
    expect_counted(&s, "ws_slow_consumer", before);
    drop(t);

    // WebSocket frame and message limits.
    for (reason, frames) in [
        ("ws_frame_too_big", vec![ws_frame(0x2, true, &[0; 1001])]),
        (
            "ws_message_too_big",
            vec![
                ws_frame(0x2, false, &[0; 1000]),
                ws_frame(0x0, false, &[0; 1000]),
                ws_frame(0x0, true, &[0; 10]),
            ],
        ),
    ] {
        let before = rejections(&s, reason);
        let mut t = ws_connect(&s);
        for f in frames {
            let _ = t.write_all(&f);
        }
        let got = drain(&mut t);
        // A close frame (0x88, short length) with code 1009 (0x03F1).
        assert!(
            got.windows(4)
                .any(|w| w[0] == 0x88 && w[1] < 126 && w[2..] == [0x03, 0xF1]),
            "{reason}: no close 1009 in {got:?}"
        );
        expect_counted(&s, reason, before);
    }

    // Idle: never answer pings; then never answer the close either.
    let (before_i, before_c) = (
        rejections(&s, "ws_idle_timeout"),
        rejections(&s, "ws_close_timeout"),
    );
    let mut t = ws_connect(&s);
    let _ = drain(&mut t);
    expect_counted(&s, "ws_idle_timeout", before_i);
    expect_counted(&s, "ws_close_timeout", before_c);
}

#[test]
fn slow_read_is_counted_as_write_timeout() {
    let s = Cfg::new().http("write_timeout", "500ms").start();
    let before = rejections(&s, "write_timeout");
    // A client with a tiny receive window asks for 8 MB of echoes and
    // never reads them.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    sock.connect(&s.addr().into()).expect("connect");
    let mut t: TcpStream = sock.into();
    t.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let req = post("/echo", "", &vec![b'f'; 1 << 20]);
    for _ in 0..8 {
        if t.write_all(&req).is_err() {
            break;
        }
    }
    expect_counted(&s, "write_timeout", before);
}

#[test]
fn connection_caps_are_counted() {
    for (key, reason) in [
        ("max_connections_per_ip", "max_connections_per_ip"),
        ("max_connections", "max_connections"),
    ] {
        // A fresh server: nothing refused yet, and no other connection
        // that could still hold a slot.
        let s = Cfg::new().server(key, 2u64).start();
        let mut a = s.connect();
        let _b = s.connect();
        let mut c = s.connect();
        // The refusal is counted before the socket is closed, so once `c`
        // sees the close, the counter has moved; read it over `a`.
        c.expect_closed();
        a.send(&get("/metrics", ""));
        let r = a.read_response();
        let now = counter(
            &r.body_str(),
            &format!("sigma_rejections_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(now, 1, "{reason}");
    }
}

#[test]
fn traffic_counters_move() {
    let s = server();
    let base = scrape(&s);
    let mut c = s.connect();
    c.send(&post("/echo", "", b"hello"));
    assert_eq!(c.read_response().status, 200);
    c.send(&get("/nope", "Connection: close\r\n"));
    assert_eq!(c.read_response().status, 404);
    let mut t = ws_connect(&s);
    t.write_all(&ws_frame(0x1, true, b"hi")).expect("write");
    let mut echo = [0u8; 4];
    t.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, &[0x81, 2, b'h', b'i']);
    drop(t);
    let now = scrape(&s);
    let delta = |series: &str| counter(&now, series) - counter(&base, series);
    assert!(delta("sigma_responses_total{class=\"2xx\"}") >= 2, "{now}");
    assert!(delta("sigma_responses_total{class=\"4xx\"}") >= 1, "{now}");
    assert_eq!(delta("sigma_ws_messages_total{direction=\"in\"}"), 1);
    assert_eq!(delta("sigma_ws_messages_total{direction=\"out\"}"), 1);
    assert_eq!(delta("sigma_ws_bytes_total{direction=\"in\"}"), 2);
    assert!(delta("sigma_request_duration_seconds_count") >= 2);
    assert!(counter(&now, "sigma_connections_open") >= 1);
}

#[test]
fn metrics_are_refused_outside_the_allow_list_and_healthz_answers() {
    let s = Cfg::new()
        .server("metrics_allow", Raw("[\"10.0.0.0/8\"]"))
        .start();
    let mut c = s.connect();
    c.send(&get("/metrics", ""));
    assert_eq!(c.read_response().status, 403);
    c.send(&get("/healthz", "Connection: close\r\n"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "ok\n");
}

/// The metrics an operator's dashboards start from: per route and status
/// class (with latency), logins by result, the build, the process.
#[test]
fn per_route_login_build_and_process_metrics() {
    let data = temp_dir("metrics-routes");
    let l = Server::launch("", &data, "T127.0.0.1:0[HA]");
    let s = &l.server;
    let pw = l
        .stdout
        .iter()
        .find_map(|line| line.strip_prefix("created user admin with password "))
        .expect("admin password")
        .trim()
        .to_owned();
    for _ in 0..3 {
        assert_eq!(request(s.addr(), "GET", "/echo/x", &[], b"").status, 200);
    }
    assert_eq!(request(s.addr(), "GET", "/db/k", &[], b"").status, 401);
    let login = |pw: &str| {
        let body = format!("{{\"user\":\"admin\",\"password\":\"{pw}\"}}");
        request(
            s.addr(),
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .status
    };
    assert_eq!(login("wrong"), 401);
    assert_eq!(login(&pw), 200);
    let text = scrape(s);
    let c = |series: &str| counter(&text, series);
    assert_eq!(
        c("sigma_route_responses_total{route=\"/echo\",class=\"2xx\"}"),
        3
    );
    assert_eq!(
        c("sigma_route_responses_total{route=\"/echo\",class=\"4xx\"}"),
        0
    );
    assert_eq!(
        c("sigma_route_responses_total{route=\"/db\",class=\"4xx\"}"),
        1
    );
    assert_eq!(
        c("sigma_route_request_duration_seconds_count{route=\"/echo\"}"),
        3
    );
    assert_eq!(
        c("sigma_route_request_duration_seconds_bucket{route=\"/echo\",le=\"+Inf\"}"),
        3
    );
    assert_eq!(c("sigma_logins_total{result=\"ok\"}"), 1);
    assert_eq!(c("sigma_logins_total{result=\"failed\"}"), 1);
    assert_eq!(c("sigma_logins_total{result=\"throttled\"}"), 0);
    assert_eq!(
        c(&format!(
            "sigma_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1
    );
    assert!(c("process_resident_memory_bytes") > 1 << 20, "{text}");
    assert!(c("process_open_fds") >= 3, "{text}");
    assert!(
        text.contains("\n# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
}

/// The destinations' own families: `&broadcast` channels, subscriptions,
/// publishes and deliveries; `&db` requests by kind; upstream requests by
/// result and their time to the response head; each labelled by route.
#[test]
fn destination_metrics_for_broadcast_db_and_upstreams() {
    let up = Upstream::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let config = format!(
        "[[broadcast.rule]]\npattern = \"open:*\"\nsubscribe = \"anyone\"\npublish = \"anyone\"\n\
         [[route]]\npath = \"/live\"\nto = \"&broadcast\"\nauth = \"none\"\n\
         [[route]]\npath = \"/db\"\nto = \"&db\"\nauth = \"none\"\nnamespace = \"pub\"\n\
         [[route]]\npath = \"/api\"\nto = \"http://127.0.0.1:{}\"\nauth = \"none\"\n\
         [[route]]\npath = \"/gone\"\nto = \"http://127.0.0.1:{dead_port}\"\nauth = \"none\"\n",
        up.port
    );
    let data = temp_dir("metrics-dest");
    let l = Server::launch(&config, &data, "T127.0.0.1:0[HA]");
    let s = &l.server;
    // One subscriber on open:a, then two publishes to it, one to nowhere.
    let mut ws = common::ws::Ws::open(s.addr(), "/live", "");
    ws.send(&serde_json::json!({"type": "subscribe", "channel": "open:a"}));
    // The server confirms the subscription before any publish counts.
    assert_eq!(ws.recv()["type"], "subscribed");
    for channel in ["open:a", "open:a", "open:nobody"] {
        let r = request(
            s.addr(),
            "POST",
            &format!("/live/{channel}"),
            &[("Content-Type", "application/json")],
            b"{\"n\":1}",
        );
        assert_eq!(r.status, 202, "{r:?}");
    }
    // Counted whatever &db answers (anonymous: refused writes, no key).
    request(s.addr(), "PUT", "/db/k", &[], b"v");
    request(s.addr(), "GET", "/db/k", &[], b"");
    assert_eq!(request(s.addr(), "GET", "/api/x", &[], b"").status, 200);
    up.next_head();
    assert_eq!(request(s.addr(), "GET", "/gone/x", &[], b"").status, 502);
    let text = scrape(s);
    let c = |series: &str| counter(&text, series);
    assert_eq!(c("sigma_broadcast_channels{route=\"/live\"}"), 1);
    assert_eq!(c("sigma_broadcast_subscriptions{route=\"/live\"}"), 1);
    assert_eq!(c("sigma_broadcast_publishes_total{route=\"/live\"}"), 3);
    assert_eq!(c("sigma_broadcast_deliveries_total{route=\"/live\"}"), 2);
    assert_eq!(c("sigma_db_requests_total{route=\"/db\",op=\"put\"}"), 1);
    assert_eq!(c("sigma_db_requests_total{route=\"/db\",op=\"read\"}"), 1);
    assert_eq!(
        c("sigma_upstream_requests_total{route=\"/api\",result=\"ok\"}"),
        1
    );
    assert_eq!(
        c("sigma_upstream_requests_total{route=\"/gone\",result=\"connect_error\"}"),
        1
    );
    assert_eq!(
        c("sigma_upstream_requests_total{route=\"/gone\",result=\"ok\"}"),
        0
    );
    assert_eq!(
        text.matches("# TYPE sigma_upstream_requests_total counter")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("sigma_upstream_response_seconds_total{route=\"/api\"} "),
        "{text}"
    );
}
