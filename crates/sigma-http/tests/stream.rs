//! Streamed responses of `H` (`Reply::Head`, `Reply::Chunk`,
//! `Reply::EndOfBody`), sans-IO: the framing (`Content-Length` when the
//! length is known, chunked when not, close-delimited for HTTP/1.0, none for
//! HEAD/204/304), the order with pipelined requests, and that any split of
//! the body into pieces gives the same bytes to the client. A proxied
//! upstream (DESIGN §6) is the user of this interface.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sigma_http::conn::OUTPUT_HIGH_WATER;
use sigma_http::{
    Event, Header, Limits, Reply, Response, ResponseHead, SendError, ServerConn, Shutdown,
};

const DATE: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

fn conn() -> (ServerConn, Instant) {
    let now = Instant::now();
    (ServerConn::new(Arc::new(Limits::default()), now), now)
}

fn drain_events(c: &mut ServerConn) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn take(c: &mut ServerConn, now: Instant) -> String {
    let out = String::from_utf8(c.output().to_vec()).unwrap();
    c.handle_written(out.len(), now);
    out
}

fn head(len: Option<u64>) -> Reply {
    Reply::Head(ResponseHead {
        status: 200,
        headers: vec![
            Header::new("X-Up", "1"),
            Header::new("Content-Length", "999"),
        ],
        content_length: len,
    })
}

/// Decodes a chunked body, strictly.
fn unchunk(mut s: &str) -> (String, &str) {
    let mut body = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size, 16).expect("hex size");
        if n == 0 {
            let rest = rest.strip_prefix("\r\n").expect("end of chunked body");
            return (body, rest);
        }
        body.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").expect("chunk CRLF");
    }
}

#[test]
fn chunked_body_then_the_next_pipelined_response_at_every_split() {
    let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = "hello, streamed world";
    for cut in 0..=input.len() {
        for split in 0..=body.len() {
            let (mut c, now) = conn();
            c.handle_input(&input[..cut], now);
            c.handle_input(&input[cut..], now);
            let requests = drain_events(&mut c)
                .iter()
                .filter(|e| matches!(e, Event::Request(_)))
                .count();
            assert_eq!(requests, 2, "cut {cut}");
            c.send(head(None), now).unwrap();
            // The second response must wait for the end of the first body.
            let early = Response::new(200, vec![], "second");
            assert_eq!(
                c.send(Reply::Response(early.clone()), now),
                Err(SendError::StreamState)
            );
            for piece in [&body[..split], &body[split..]] {
                c.send(Reply::Chunk(Bytes::copy_from_slice(piece.as_bytes())), now)
                    .unwrap();
            }
            c.send(Reply::EndOfBody, now).unwrap();
            assert_eq!(c.send(Reply::EndOfBody, now), Err(SendError::StreamState));
            c.send(Reply::Response(early), now).unwrap();
            let out = take(&mut c, now);
            let first = format!(
                "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nX-Up: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let rest = out.strip_prefix(&first).unwrap_or_else(|| panic!("{out}"));
            let (got, rest) = unchunk(rest);
            assert_eq!(got, body);
            assert_eq!(
                rest,
                format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nContent-Length: 6\r\n\r\nsecond")
            );
            assert!(c.shutdown().is_none());
        }
    }
}

#[test]
fn known_length_is_content_length_and_must_be_met() {
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(Some(5)), now).unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"abc")), now)
        .unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"de")), now)
        .unwrap();
    c.send(Reply::EndOfBody, now).unwrap();
    assert_eq!(
        take(&mut c, now),
        format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nX-Up: 1\r\nContent-Length: 5\r\n\r\nabcde")
    );
    assert!(c.wants_read());

    // Too many bytes: the connection is aborted.
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(Some(2)), now).unwrap();
    assert_eq!(
        c.send(Reply::Chunk(Bytes::from_static(b"abc")), now),
        Err(SendError::BodyLength)
    );
    assert_eq!(c.shutdown(), Some(Shutdown::Abort));

    // Too few: aborted too (a truncated body is never passed off as whole).
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(Some(4)), now).unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"ab")), now)
        .unwrap();
    assert_eq!(c.send(Reply::EndOfBody, now), Err(SendError::BodyLength));
    assert_eq!(c.shutdown(), Some(Shutdown::Abort));
}

#[test]
fn head_204_and_304_carry_no_body() {
    for (req, status, len, want) in [
        ("HEAD", 200, Some(7), "Content-Length: 7\r\n\r\n"),
        ("HEAD", 200, None, "X-Up: 1\r\n\r\n"),
        ("GET", 204, Some(7), "X-Up: 1\r\n\r\n"),
        ("GET", 304, None, "X-Up: 1\r\n\r\n"),
    ] {
        let (mut c, now) = conn();
        c.handle_input(
            format!("{req} / HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            now,
        );
        drain_events(&mut c);
        c.send(
            Reply::Head(ResponseHead {
                status,
                headers: vec![Header::new("X-Up", "1")],
                content_length: len,
            }),
            now,
        )
        .unwrap();
        c.send(Reply::Chunk(Bytes::from_static(b"dropped")), now)
            .unwrap();
        c.send(Reply::EndOfBody, now).unwrap();
        let out = take(&mut c, now);
        assert!(out.ends_with(want), "{req} {status}: {out:?}");
        assert!(
            !out.contains("dropped") && !out.contains("chunked"),
            "{out}"
        );
        assert!(c.shutdown().is_none() && c.wants_read());
    }
}

#[test]
fn http10_unknown_length_is_close_delimited() {
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(None), now).unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"raw bytes")), now)
        .unwrap();
    assert!(c.shutdown().is_none(), "not before the end of the body");
    c.send(Reply::EndOfBody, now).unwrap();
    assert_eq!(
        take(&mut c, now),
        format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nConnection: close\r\nX-Up: 1\r\n\r\nraw bytes")
    );
    assert_eq!(c.shutdown(), Some(Shutdown::Graceful));
}

#[test]
fn a_slow_client_pauses_the_source() {
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(None), now).unwrap();
    let piece = Bytes::from(vec![b'x'; 16 * 1024]);
    let mut sent = 0;
    while c.wants_body() {
        c.send(Reply::Chunk(piece.clone()), now).unwrap();
        sent += 1;
        assert!(sent < 100, "wants_body never turned false");
    }
    assert!(c.output().len() >= OUTPUT_HIGH_WATER);
    // The client reads: the source may go on.
    let n = c.output().len();
    c.handle_written(n, now);
    assert!(c.wants_body());
    // A keep-alive idle deadline does not cut a long stream.
    assert!(c.poll_timeout().is_none(), "{:?}", c.poll_timeout());
    c.send(Reply::EndOfBody, now).unwrap();
    assert!(c.poll_timeout().is_some());
}

#[test]
fn pieces_without_a_streamed_head_are_refused() {
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    assert_eq!(
        c.send(Reply::Chunk(Bytes::from_static(b"x")), now),
        Err(SendError::StreamState)
    );
    assert_eq!(c.send(Reply::EndOfBody, now), Err(SendError::StreamState));
    c.send(Reply::Response(Response::new(200, vec![], "ok")), now)
        .unwrap();
}

#[test]
fn a_parse_error_behind_a_stream_waits_for_its_end() {
    let (mut c, now) = conn();
    c.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
    drain_events(&mut c);
    c.send(head(None), now).unwrap();
    c.handle_input(b"BOGUS\r\n\r\n", now);
    c.send(Reply::Chunk(Bytes::from_static(b"abc")), now)
        .unwrap();
    c.send(Reply::EndOfBody, now).unwrap();
    let out = take(&mut c, now);
    let (_, rest) = out.split_once("\r\n\r\n").unwrap();
    let (body, rest) = unchunk(rest);
    assert_eq!(body, "abc");
    assert!(rest.starts_with("HTTP/1.1 400 "), "{rest}");
    assert_eq!(c.shutdown(), Some(Shutdown::Graceful));
}

#[test]
fn a_response_may_stream_before_the_request_body_ends() {
    let (mut c, now) = conn();
    c.handle_input(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcd",
        now,
    );
    drain_events(&mut c);
    c.send(head(None), now).unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"early")), now)
        .unwrap();
    // The rest of the body is still read and handed on.
    assert!(c.wants_read());
    c.handle_input(b"efghij", now);
    let evs = drain_events(&mut c);
    assert!(
        matches!(evs.first(), Some(Event::Body(b)) if &b[..] == b"efghij"),
        "{evs:?}"
    );
    assert!(
        matches!(evs.get(1), Some(Event::EndOfMessage { .. })),
        "{evs:?}"
    );
    assert!(c.shutdown().is_none(), "the stream is still going");
    c.send(Reply::EndOfBody, now).unwrap();
    let out = take(&mut c, now);
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert_eq!(c.shutdown(), Some(Shutdown::Graceful));

    // The body may also end after the streamed response.
    let (mut c, now) = conn();
    c.handle_input(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab",
        now,
    );
    drain_events(&mut c);
    c.send(head(Some(2)), now).unwrap();
    c.send(Reply::Chunk(Bytes::from_static(b"ok")), now)
        .unwrap();
    c.send(Reply::EndOfBody, now).unwrap();
    assert!(c.shutdown().is_none() && c.wants_read());
    c.handle_input(b"cd", now);
    assert_eq!(c.shutdown(), Some(Shutdown::Graceful));
}
