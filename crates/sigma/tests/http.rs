//! HTTP/1.1 behaviour of the real `sigma` binary over real sockets:
//! keep-alive, pipelining, chunked bodies, HEAD and 100-continue framing,
//! HTTP/1.0, half-close, and the two requests from the seed's history
//! (also through `sigma parse`).

mod common;

use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn keep_alive_two_requests_then_still_open() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(&post("/echo", "", b"first"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"first");
    assert!(!r.closes(), "keep-alive response must not close: {r:?}");
    assert!(r.header("date").is_some(), "Date header missing");
    c.send(&post("/echo", "", b"second"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"second");
    assert!(!r.closes());
    // Still open: a third request on the same connection is answered.
    c.send(&get("/echo", ""));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("0"));
}

#[test]
fn connection_close_closes_after_response() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(&post("/echo", "Connection: close\r\n", b"bye"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"bye");
    assert!(r.closes(), "response must say Connection: close: {r:?}");
    c.expect_closed();
}

#[test]
fn http10_without_keep_alive_closes() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abc");
    assert!(
        r.closes(),
        "closing response must say Connection: close: {r:?}"
    );
    c.expect_closed();
}

#[test]
fn http10_request_without_host() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"GET /echo HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.version.starts_with("HTTP/1."), "{r:?}");
    assert_eq!(r.header("content-length"), Some("0"));
    c.expect_closed();
}

#[test]
fn http10_keep_alive_stays_open() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nk1");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"k1");
    assert_eq!(
        r.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("keep-alive".into()),
        "{r:?}"
    );
    // Still open: a second request (this time without keep-alive) works,
    // and that one closes.
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nk2");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"k2");
    assert!(r.closes());
    c.expect_closed();
}

#[test]
fn pipelined_ten_requests_in_one_write_answered_in_order() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    let mut all = Vec::new();
    for i in 0..10 {
        let body = format!("body-{i}-{}", "x".repeat(i * 7));
        all.extend_from_slice(&post("/echo", "", body.as_bytes()));
    }
    c.send(&all);
    for i in 0..10 {
        let r = c.read_response();
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(
            r.body_str(),
            format!("body-{i}-{}", "x".repeat(i * 7)),
            "response {i} out of order"
        );
        assert!(!r.closes());
    }
    // Nothing extra, and the connection is still usable.
    c.send(&post("/echo", "", b"after"));
    assert_eq!(c.read_response().body, b"after");
}

#[test]
fn pipelined_mixed_lengths_chunked_and_get() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    let mut all = Vec::new();
    all.extend_from_slice(&get("/echo", ""));
    all.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    all.extend_from_slice(&post("/echo", "", b"plain"));
    all.extend_from_slice(&get("/nowhere", ""));
    all.extend_from_slice(&post("/echo", "Connection: close\r\n", b"last"));
    c.send(&all);
    let bodies: Vec<(u16, Vec<u8>)> = (0..5)
        .map(|_| {
            let r = c.read_response();
            (r.status, r.body)
        })
        .collect();
    assert_eq!(bodies[0], (200, b"".to_vec()));
    assert_eq!(bodies[1], (200, b"abc".to_vec()));
    assert_eq!(bodies[2], (200, b"plain".to_vec()));
    assert_eq!(bodies[3].0, 404);
    assert_eq!(bodies[4], (200, b"last".to_vec()));
    c.expect_closed();
}

#[test]
fn chunked_body_with_extensions_and_trailers_is_decoded() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/x-test\r\n\r\n\
          5;name=value\r\nhello\r\n\
          1;flag\r\n \r\n\
          A;q=\"quoted;str\"\r\n0123456789\r\n\
          0\r\nX-Trailer: one\r\nX-Other: two\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "hello 0123456789");
    assert_eq!(r.header("content-type"), Some("text/x-test"));
    assert!(r.header("transfer-encoding").is_none());
    // The connection is still in sync after the trailers.
    c.send(&post("/echo", "", b"next"));
    assert_eq!(c.read_response().body, b"next");
}

#[test]
fn chunked_body_split_across_writes() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in [
        &b"4\r"[..],
        b"\nwi",
        b"ki\r\n5\r\npedia\r",
        b"\n0\r\n",
        b"T: 1\r\n",
        b"\r\n",
    ] {
        c.send(piece);
        thread::sleep(Duration::from_millis(10)); // pacing, not synchronisation
    }
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"wikipedia");
}

#[test]
fn chunked_upper_case_hex_and_leading_zeros() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    let data = "z".repeat(0x1F);
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n001F\r\n{data}\r\n0000\r\n\r\n"
    );
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), data);
}

#[test]
fn head_has_content_length_but_no_body() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    // HEAD with a body: echo answers with a 5-byte body, which HEAD must
    // not send; the pipelined POST's response must parse right after it.
    let mut all = b"HEAD /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    all.extend_from_slice(&post("/echo", "", b"after-head"));
    all.extend_from_slice(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    all.extend_from_slice(&post("/echo", "", b"after-second-head"));
    c.send(&all);
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("5"),
        "HEAD keeps the Content-Length: {r:?}"
    );
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"after-head", "a HEAD response carried a body");
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("0"));
    let r = c.read_response();
    assert_eq!(r.body, b"after-second-head");
    c.shutdown_write();
    let rest = c.read_to_end();
    assert!(
        rest.is_empty(),
        "extra bytes after the responses: {:?}",
        lossy(&rest)
    );
}

#[test]
fn expect_100_continue_gets_interim_response_first() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    // The body is sent only once the interim response has arrived.
    c.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    // Keep-alive continues normally.
    c.send(&post("/echo", "", b"again"));
    assert_eq!(c.read_response().body, b"again");
}

#[test]
fn expect_100_continue_chunked() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n");
    c.expect_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"2\r\nok\r\n0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
}

#[test]
fn unknown_path_is_404_and_keeps_connection() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(&get("/no/such/route", ""));
    let r = c.read_response();
    assert_eq!(r.status, 404);
    assert!(!r.closes());
    c.send(&get("/echo", ""));
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn half_close_still_gets_full_response() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.send(&post("/echo", "", &body));
    c.shutdown_write();
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    c.expect_closed();
}

#[test]
fn half_close_after_pipelined_requests_gets_all_responses() {
    let s = Cfg::new().start();
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend_from_slice(&post("/echo", "", format!("hc{i}").as_bytes()));
    }
    let out = s.raw(&all);
    let (resps, rest) = parse_all(&out);
    assert_eq!(rest, 0, "trailing garbage: {:?}", lossy(&out));
    let bodies: Vec<String> = resps.iter().map(|r| r.body_str()).collect();
    assert_eq!(bodies, ["hc0", "hc1", "hc2", "hc3", "hc4"]);
    assert!(resps.iter().all(|r| r.status == 200));
}

#[test]
fn response_headers_are_well_formed() {
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(&post("/echo", "Content-Type: application/json\r\n", b"{}"));
    let r = c.read_response();
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "OK");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.headers_named("content-length"), ["2"]);
    let date = r.header("date").expect("Date");
    assert!(
        date.ends_with(" GMT") && date.len() == 29,
        "bad Date {date:?}"
    );
}

// ----- the two requests from the seed's history -------------------------------

/// A realistic Chrome navigation request to /echo.
fn chrome_request() -> Vec<u8> {
    concat!(
        "GET /echo?utm_source=test&q=%E2%9C%93 HTTP/1.1\r\n",
        "Host: localhost:3000\r\n",
        "Connection: keep-alive\r\n",
        "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n",
        "sec-ch-ua-mobile: ?0\r\n",
        "sec-ch-ua-platform: \"Linux\"\r\n",
        "Upgrade-Insecure-Requests: 1\r\n",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n",
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n",
        "Sec-Fetch-Site: none\r\n",
        "Sec-Fetch-Mode: navigate\r\n",
        "Sec-Fetch-User: ?1\r\n",
        "Sec-Fetch-Dest: document\r\n",
        "Accept-Encoding: gzip, deflate, br, zstd\r\n",
        "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n",
        "Cookie: _ga=GA1.1.1234567890.1700000000; theme=dark; sigma_session=aGVsbG8gd29ybGQ\r\n",
        "\r\n"
    )
    .as_bytes()
    .to_vec()
}
const CHROME_HEADERS: usize = 15;
const CHROME_TARGET: &str = "/echo?utm_source=test&q=%E2%9C%93";

/// A ~700-character target with long runs of `%aa` escapes.
fn long_url_target() -> String {
    let mut t = String::from("/echo/");
    t.push_str(&"%aa".repeat(100));
    t.push_str("?k=");
    t.push_str(&"%aa".repeat(80));
    t.push_str("&z=");
    t.push_str(&"%AA%aa".repeat(20));
    t
}

fn long_url_request() -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        long_url_target()
    )
    .into_bytes()
}

#[test]
fn chrome_request_split_mid_token_is_answered() {
    let s = Cfg::new().start();
    let req = chrome_request();
    let text = std::str::from_utf8(&req).unwrap();
    // Split points: inside the method, inside a header name ("sec-ch-u|a"),
    // between a CR and its LF, inside a value, and right before the final LF.
    let mut cuts = vec![2];
    cuts.push(text.find("sec-ch-ua:").unwrap() + 8);
    cuts.push(text.find("\r\nUpgrade-Insecure").unwrap() + 1);
    cuts.push(text.find("Mozilla/5.0").unwrap() + 4);
    cuts.push(text.find("Cookie:").unwrap() + 3);
    cuts.push(req.len() - 1);
    let mut c = s.connect();
    let mut at = 0;
    for cut in cuts {
        c.send(&req[at..cut]);
        at = cut;
        thread::sleep(Duration::from_millis(30)); // pacing, not synchronisation
    }
    c.send(&req[at..]);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(!r.closes());
    // And a second, unsplit, copy on the same connection.
    c.send(&req);
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn long_percent_encoded_url_is_answered() {
    let target = long_url_target();
    assert!(
        (650..=800).contains(&target.len()),
        "target is {} chars",
        target.len()
    );
    let s = Cfg::new().start();
    let mut c = s.connect();
    c.send(&long_url_request());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
}

fn parse_json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn sigma_parse(input: &[u8], chunk: Option<usize>) -> String {
    let mut cmd = sigma_cmd();
    cmd.arg("parse");
    if let Some(n) = chunk {
        cmd.arg("--chunk").arg(n.to_string());
    }
    let (st, out, err) = run_bounded(cmd, Some(input));
    assert!(st.success(), "sigma parse failed: {st}: {err}");
    out
}

fn check_parse(input: &[u8], target: &str, header_count: usize) {
    let whole = sigma_parse(input, None);
    let lines = parse_json_lines(&whole);
    assert!(lines.len() >= 2, "too few events: {whole}");
    let req = &lines[0];
    assert_eq!(req["event"], "request", "{whole}");
    assert_eq!(req["method"], "GET");
    assert_eq!(req["target"], target);
    assert_eq!(req["version"], "HTTP/1.1");
    let headers = req["headers"].as_array().expect("headers array");
    assert_eq!(headers.len(), header_count, "{whole}");
    assert_eq!(lines[1]["event"], "end_of_message", "{whole}");
    assert!(
        !lines.iter().any(|l| l["event"] == "abort"),
        "unexpected abort: {whole}"
    );
    let bytewise = sigma_parse(input, Some(1));
    assert_eq!(whole, bytewise, "--chunk 1 output differs");
}

#[test]
fn sigma_parse_chrome_request() {
    let req = chrome_request();
    check_parse(&req, CHROME_TARGET, CHROME_HEADERS);
    // Header order and original case are kept.
    let lines = parse_json_lines(&sigma_parse(&req, None));
    let headers = lines[0]["headers"].as_array().unwrap();
    assert_eq!(headers[0][0], "Host");
    assert_eq!(headers[0][1], "localhost:3000");
    assert_eq!(headers[2][0], "sec-ch-ua");
    assert_eq!(headers[CHROME_HEADERS - 1][0], "Cookie");
}

#[test]
fn sigma_parse_long_url_request() {
    check_parse(&long_url_request(), &long_url_target(), 3);
}
