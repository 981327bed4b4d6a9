//! A minimal WebSocket echo server around `sigma_http::ws`, for running the
//! Autobahn testsuite (kosoku) against the codec alone:
//!
//! ```text
//! cargo run --release -p sigma-http --example ws_echo -- 127.0.0.1:9001
//! kosoku -m fuzzingclient -x '12.*' -x '13.*' -o target/autobahn 127.0.0.1:9001
//! ```
//!
//! Place in `T → H → A`: a throwaway `T` (one tokio task per connection)
//! and a trivial right side (echo). It reads one request head, validates it
//! with [`ws::parse_upgrade`], answers 101, then drives a [`WsConn`]: read →
//! `handle_input` → drain `poll_event` (echo messages) → `handle_timeout`
//! when due → write the `OutBuf` → act on `shutdown()`. It is not the real
//! server (`sigma`'s `conn.rs` is): no limits on connections, no
//! concurrent write while reading, no HTTP beyond the upgrade.

use std::time::{Duration, Instant};

use sigma_http::io::OutBuf;
use sigma_http::ws::{self, WsConn};
use sigma_http::{Event, Header, Method, ParseError, Shutdown, Version, WsEvent, WsLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Autobahn 9.x sends single 16 MiB frames and expects them echoed.
const AUTOBAHN_MAX: usize = 16 * 1024 * 1024;
const MAX_HEAD: usize = 16 * 1024;
const LINGER: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("ws_echo listening on {}", listener.local_addr()?);
    loop {
        let (sock, peer) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = serve(sock).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Reads one request head; returns it and any bytes after it.
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The 101 response, or the error response to send instead.
fn upgrade(head: &[u8]) -> Result<String, &'static str> {
    const BAD: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(BAD);
    }
    let method = req.method.and_then(|m| Method::from_token(m.as_bytes()));
    let version = match req.version {
        Some(1) => Version::Http11,
        _ => Version::Http10,
    };
    let headers: Vec<Header> = req
        .headers
        .iter()
        .map(|h| Header::new(h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect();
    match ws::parse_upgrade(method.ok_or(BAD)?, version, &headers) {
        Ok(Some(hs)) => Ok(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            ws::accept_key(&hs.key)
        )),
        Err(ParseError::UnsupportedWebSocketVersion) => Err(
            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        Ok(None) | Err(_) => Err(BAD),
    }
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(&mut sock).await? else {
        return Ok(());
    };
    match upgrade(&head) {
        Ok(resp) => sock.write_all(resp.as_bytes()).await?,
        Err(resp) => return sock.write_all(resp.as_bytes()).await,
    }
    let limits = WsLimits {
        max_frame: AUTOBAHN_MAX,
        max_message: AUTOBAHN_MAX,
        max_outbound: 2 * AUTOBAHN_MAX,
        ..WsLimits::default()
    };
    let mut conn = WsConn::new(limits, Instant::now());
    let mut out = OutBuf::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoing = true;
    if !rest.is_empty() {
        conn.handle_input(&rest, Instant::now(), &mut out);
    }
    loop {
        let now = Instant::now();
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Ws(WsEvent::Message(msg)) if echoing => {
                    let _ = conn.send_message(msg, now, &mut out);
                }
                Event::End | Event::Abort(_) => echoing = false,
                _ => {}
            }
        }
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now, &mut out);
            continue;
        }
        while !out.is_empty() {
            let front = out.as_slice();
            sock.write_all(front).await?;
            let n = front.len();
            out.consume(n, Instant::now());
        }
        match conn.shutdown() {
            Some(Shutdown::Graceful) => {
                sock.shutdown().await?;
                let drain = async { while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(LINGER, drain).await;
                return Ok(());
            }
            Some(Shutdown::Abort) => return Ok(()),
            None => {}
        }
        let deadline = conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        if conn.wants_read() {
            tokio::select! {
                r = sock.read(&mut buf) => {
                    let now = Instant::now();
                    match r? {
                        0 => conn.handle_eof(now, &mut out),
                        n => conn.handle_input(&buf[..n], now, &mut out),
                    }
                }
                () = sleep => conn.handle_timeout(Instant::now(), &mut out),
            }
        } else {
            sleep.await;
            conn.handle_timeout(Instant::now(), &mut out);
        }
    }
}
