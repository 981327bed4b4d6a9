//! Malformed and ambiguous requests against the real server, table-driven.
//!
//! Every rejected case must get its status with `Connection: close`, and
//! then the server must close the connection by itself (the client keeps
//! its write side open, and the head/keep-alive timeouts are far longer
//! than the read guard, so a close can only come from the rejection).
//! Every accepted case must get its status and keep the connection usable.

mod common;

use std::thread;

use common::*;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status, `Connection: close`, then EOF.
    Reject(u16),
    /// This status and the connection stays open.
    Accept(u16),
}
use Expect::*;

struct Case {
    name: &'static str,
    req: Vec<u8>,
    expect: Expect,
    /// A header the response must carry (name, value).
    must_have: Option<(&'static str, &'static str)>,
}

fn case(name: &'static str, req: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        name,
        req: req.as_ref().to_vec(),
        expect,
        must_have: None,
    }
}

/// A POST to /echo with `headers` (each ending in CRLF) and `body`.
fn post_with(headers: &str, body: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}")
}

/// A chunked POST whose body is `body`.
fn chunked(body: &str) -> String {
    post_with("Transfer-Encoding: chunked\r\n", body)
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // ----- body framing: Content-Length / Transfer-Encoding -----
        case(
            "cl_and_te",
            post_with(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        case(
            "te_and_cl",
            post_with(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        case(
            "cl_duplicate_same",
            post_with("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_duplicate_different",
            post_with("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Reject(400),
        ),
        case(
            "cl_list_same",
            post_with("Content-Length: 5, 5\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_plus",
            post_with("Content-Length: +5\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_negative",
            post_with("Content-Length: -1\r\n", ""),
            Reject(400),
        ),
        case(
            "cl_inner_space",
            post_with("Content-Length: 5 5\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_hex",
            post_with("Content-Length: 0x5\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_empty",
            post_with("Content-Length: \r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_trailing_garbage",
            post_with("Content-Length: 5abc\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_overflows_u64",
            post_with("Content-Length: 99999999999999999999999\r\n", "hello"),
            Reject(400),
        ),
        case(
            "cl_huge_over_max_body",
            post_with("Content-Length: 9999999999999999999\r\n", "hello"),
            Reject(413),
        ),
        case(
            "te_chunked_identity",
            post_with("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "te_identity_chunked",
            post_with("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "te_chunked_chunked",
            post_with("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "te_gzip",
            post_with("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"),
            Reject(501),
        ),
        case(
            "te_two_headers",
            post_with(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        case(
            "te_empty",
            post_with("Transfer-Encoding: \r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "te_on_http10",
            "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Reject(400),
        ),
        // ----- chunk syntax -----
        case(
            "chunk_size_plus",
            chunked("+5\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_minus",
            chunked("-5\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_underscore",
            chunked("1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_0x",
            chunked("0x5\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_17_hex_digits_over_u64",
            chunked("10000000000000005\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_leading_zeros_ok",
            chunked("000000000000000005\r\nhello\r\n0000\r\n\r\n"),
            Accept(200),
        ),
        case(
            "chunk_size_many_leading_zeros",
            chunked(&format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(2000))),
            Reject(400),
        ),
        case(
            "chunk_size_inner_space",
            chunked("5 5\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_missing",
            chunked("\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_size_huge_over_max_body",
            chunked("ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Reject(413),
        ),
        case(
            "chunk_missing_crlf_after_data",
            chunked("5\r\nhelloX\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_data_shorter_than_size",
            chunked("5\r\nhel\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_line_bare_lf",
            chunked("5\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_data_bare_lf_terminator",
            chunked("5\r\nhello\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunk_extension_too_long",
            chunked(&format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(64))),
            Reject(400),
        ),
        case(
            "trailers_too_large",
            chunked(&format!(
                "5\r\nhello\r\n0\r\nX-Big: {}\r\n\r\n",
                "t".repeat(200)
            )),
            Reject(431),
        ),
        case(
            "trailer_obs_fold",
            chunked("5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"),
            Reject(400),
        ),
        // ----- header syntax -----
        case(
            "space_before_colon",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "tab_before_colon",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "obs_fold",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            Reject(400),
        ),
        case(
            "obs_fold_tab",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
            Reject(400),
        ),
        case(
            "bare_cr_in_value",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            Reject(400),
        ),
        case(
            "bare_lf_line_ends",
            "GET /echo HTTP/1.1\nHost: x\n\n",
            Reject(400),
        ),
        case(
            "bare_lf_after_header",
            "GET /echo HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "nul_in_header_value",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
            Reject(400),
        ),
        case(
            "nul_in_header_name",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX\0A: 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "empty_header_name",
            "GET /echo HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "header_name_not_token",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "header_without_colon",
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-A 1\r\n\r\n",
            Reject(400),
        ),
        // ----- request line -----
        case(
            "nul_in_target",
            "GET /ec\0ho HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "method_invalid_token",
            "G@T /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "method_propfind",
            "PROPFIND /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(501),
        ),
        case(
            "method_connect",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            Reject(501),
        ),
        case(
            "method_lowercase",
            "get /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(501),
        ),
        case(
            "version_1_2",
            "GET /echo HTTP/1.2\r\nHost: x\r\n\r\n",
            Reject(505),
        ),
        case(
            "version_2_0",
            "GET /echo HTTP/2.0\r\nHost: x\r\n\r\n",
            Reject(505),
        ),
        case(
            "version_1_1x",
            "GET /echo HTTP/1.1x\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "version_no_minor",
            "GET /echo HTTP/1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "version_lowercase",
            "GET /echo http/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "version_missing",
            "GET /echo\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "double_space",
            "GET  /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "trailing_space",
            "GET /echo HTTP/1.1 \r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "tab_separator",
            "GET\t/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "leading_space",
            " GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "too_many_leading_empty_lines",
            "\r\n\r\n\r\n\r\n\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "leading_empty_line_ok",
            "\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Accept(200),
        ),
        // ----- targets -----
        case(
            "asterisk_with_get",
            "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "options_asterisk",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            Accept(404),
        ),
        case(
            "authority_form_get",
            "GET example.com:80 HTTP/1.1\r\nHost: example.com:80\r\n\r\n",
            Reject(400),
        ),
        case(
            "relative_target",
            "GET echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "absolute_form_host_mismatch",
            "GET http://other.example/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "absolute_form_host_match",
            "GET http://x/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Accept(200),
        ),
        case(
            "absolute_form_userinfo",
            "GET http://u@x/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "absolute_form_other_scheme",
            "GET ftp://x/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        // ----- Host -----
        case(
            "missing_host",
            "GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n",
            Reject(400),
        ),
        case(
            "duplicate_host",
            "GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            Reject(400),
        ),
        case(
            "duplicate_host_same",
            "GET /echo HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "host_with_space",
            "GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n",
            Reject(400),
        ),
        case(
            "host_with_path",
            "GET /echo HTTP/1.1\r\nHost: x/y\r\n\r\n",
            Reject(400),
        ),
        // ----- other protocols and expectations -----
        case(
            "http2_preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Reject(505),
        ),
        case(
            "expect_something",
            post_with("Content-Length: 5\r\nExpect: something\r\n", "hello"),
            Reject(417),
        ),
    ];
    v.push(Case {
        must_have: Some(("Sec-WebSocket-Version", "13")),
        ..case(
            "websocket_version_8",
            "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            Reject(426),
        )
    });
    v
}

fn server() -> Server {
    Cfg::new()
        // Long timeouts: a close within the read guard is the rejection's.
        .http("head_timeout", "60s")
        .http("keepalive_timeout", "60s")
        .http("max_body", 1000u64)
        .http("max_chunk_extension", 16usize)
        .http("max_trailer_bytes", 64usize)
        .start()
}

fn run_case(s: &Server, c: &Case) -> Result<(), String> {
    let mut cl = s.connect();
    cl.try_send(&c.req)
        .map_err(|e| format!("write failed: {e}"))?;
    let r = cl.try_read_response()?;
    if let Some((n, v)) = c.must_have {
        if r.header(n) != Some(v) {
            return Err(format!("missing header {n}: {v}; got {:?}", r.headers));
        }
    }
    match c.expect {
        Reject(status) => {
            if r.status != status {
                return Err(format!(
                    "status {} (want {status}); body {:?}",
                    r.status,
                    r.body_str()
                ));
            }
            if !r.closes() {
                return Err(format!(
                    "{status} without Connection: close: {:?}",
                    r.headers
                ));
            }
            cl.try_expect_closed().map(|_| ())
        }
        Accept(status) => {
            if r.status != status {
                return Err(format!(
                    "status {} (want {status}); body {:?}",
                    r.status,
                    r.body_str()
                ));
            }
            if r.closes() {
                return Err("accepted request closed the connection".into());
            }
            cl.try_send(&post("/echo", "", b"follow-up"))
                .map_err(|e| format!("follow-up write failed: {e}"))?;
            let r2 = cl
                .try_read_response()
                .map_err(|e| format!("follow-up: {e}"))?;
            if r2.status != 200 || r2.body != b"follow-up" {
                return Err(format!("follow-up got {} {:?}", r2.status, r2.body_str()));
            }
            Ok(())
        }
    }
}

#[test]
fn malformed_and_ambiguous_requests() {
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    let s = server();
    let results: Vec<(&str, Result<(), String>)> = thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                let s = &s;
                (c.name, scope.spawn(move || run_case(s, c)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| (n, h.join().unwrap_or_else(|_| Err("panicked".into()))))
            .collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("  {n}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

/// The same cases sent with the client's write side shut down right after
/// the request: the answer must not depend on the peer's half-close.
#[test]
fn malformed_requests_with_half_close() {
    let s = server();
    let mut failures = Vec::new();
    for c in cases() {
        let Reject(status) = c.expect else { continue };
        let out = s.raw(&c.req);
        match parse_response(&out, false) {
            Ok(Some((r, n))) => {
                if r.status != status || !r.closes() || n != out.len() {
                    failures.push(format!(
                        "  {}: got {} (close {}), {} extra bytes",
                        c.name,
                        r.status,
                        r.closes(),
                        out.len() - n
                    ));
                }
            }
            other => failures.push(format!("  {}: {other:?}: {:?}", c.name, lossy(&out))),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// A request smuggled behind an ambiguous one is never answered.
#[test]
fn no_response_to_a_request_smuggled_behind_bad_framing() {
    let s = server();
    let smuggled = "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n";
    let attempts = [
        post_with(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        post_with(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        post_with("Content-Length: 0\r\nContent-Length: 38\r\n", smuggled),
        post_with(
            "Transfer-Encoding: xchunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
        post_with(
            "Transfer-Encoding : chunked\r\n",
            &format!("0\r\n\r\n{smuggled}"),
        ),
    ];
    for (i, req) in attempts.iter().enumerate() {
        let mut c = s.connect();
        c.send(req.as_bytes());
        let r = c.read_response();
        assert!(
            (400..=599).contains(&r.status),
            "attempt {i}: status {}",
            r.status
        );
        assert!(r.closes(), "attempt {i}");
        c.expect_closed();
    }
}
