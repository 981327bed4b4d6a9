//! A tiny WebSocket server for the tests: `/echo` echoes, `/broadcast`
//! speaks the subscribe/publish protocol of DESIGN §9 (no permissions, no
//! queue limits). `/echo` accepts a permessage-deflate offer (answering
//! with both no-context-takeover parameters) and then echoes compressed;
//! `/echo-plain` declines every extension. It runs on its own thread and runtime, and pings each
//! client once right after the handshake, so the clients' pong path runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::pubsub::json_str;
use crate::ws::{self, op, Decoder, Event};

type Channels = Arc<Mutex<HashMap<Vec<u8>, Vec<mpsc::UnboundedSender<Vec<u8>>>>>>;

/// Starts the server; returns its port.
pub fn start() -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let channels = Channels::default();
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(serve(s, channels.clone()));
            }
        });
    });
    rx.recv().unwrap()
}

async fn serve(mut s: TcpStream, channels: Channels) {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let path = head.split(' ').nth(1).unwrap().to_string();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap()
        .trim()
        .to_string();
    let deflate = path == "/echo" && head.contains("permessage-deflate");
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{}\r\n",
        ws::accept_key(&key),
        if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        } else {
            ""
        }
    );
    let mut first = resp.into_bytes();
    ws::encode(&mut first, op::PING, b"hello", None);
    s.write_all(&first).await.unwrap();

    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut dec = Decoder::with_bytes(buf[end..].to_vec());
    dec.set_deflate(deflate);
    let mut seq = 0u64;
    loop {
        let mut out = Vec::new();
        while let Ok(Some(ev)) = dec.next_event() {
            match ev {
                Event::Message { text, data } => {
                    let d = dec.data(&data).to_vec();
                    if path.starts_with("/echo") {
                        let opc = if text { op::TEXT } else { op::BINARY };
                        ws::encode_message(&mut out, opc, &d, None, deflate);
                        continue;
                    }
                    let channel = json_str(&d, "channel").unwrap().to_vec();
                    let name = String::from_utf8_lossy(&channel).to_string();
                    match json_str(&d, "type").unwrap() {
                        b"subscribe" => {
                            channels
                                .lock()
                                .unwrap()
                                .entry(channel)
                                .or_default()
                                .push(tx.clone());
                            let ack = format!("{{\"type\":\"subscribed\",\"channel\":\"{name}\"}}");
                            ws::encode(&mut out, op::TEXT, ack.as_bytes(), None);
                        }
                        b"publish" => {
                            seq += 1;
                            let data = json_str(&d, "data").unwrap();
                            let msg = format!(
                                "{{\"type\": \"message\", \"channel\": \"{name}\", \"seq\": {seq}, \
                                 \"from\": null, \"data\": \"{}\"}}",
                                String::from_utf8_lossy(data)
                            );
                            let mut frame = Vec::new();
                            ws::encode(&mut frame, op::TEXT, msg.as_bytes(), None);
                            for sub in channels.lock().unwrap().get(&channel).into_iter().flatten()
                            {
                                let _ = sub.send(frame.clone());
                            }
                        }
                        _ => {}
                    }
                }
                Event::Ping(p) => ws::encode(&mut out, op::PONG, &p, None),
                Event::Pong => {}
                Event::Close(_) => return,
            }
        }
        if !out.is_empty() && tx.send(out).is_err() {
            return;
        }
        match rd.read_buf(dec.buf_mut(4096)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::echo::Echo;
    use crate::fleet;
    use crate::idle::Idle;
    use crate::pubsub::PubSub;
    use crate::ws::Target;

    const WARMUP: Duration = Duration::from_millis(100);
    const RUN: Duration = Duration::from_millis(400);

    fn echo(port: u16, text: bool, threads: usize) {
        let e = Echo {
            target: Target::parse(&format!("ws://127.0.0.1:{port}/echo")).unwrap(),
            connections: 5,
            size: 64,
            in_flight: 3,
            text,
            json: false,
            connect_concurrency: 2,
        };
        let s = fleet::run(Arc::new(e), threads, WARMUP, RUN).unwrap();
        assert_eq!(
            (s.connected, s.connect_errors, s.errors),
            (5, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.bad_replies, 0);
        assert!(s.received > 10, "{s:?}");
        assert_eq!(s.received_bytes, s.received * 64);
        assert!(s.sent >= s.received);
        assert_eq!(s.latency.len(), s.received);
    }

    #[test]
    fn echo_binary_and_text() {
        let port = super::start();
        echo(port, false, 1);
        echo(port, true, 2);
    }

    #[test]
    fn echo_deflate_compresses_both_ways() {
        let port = super::start();
        let mut target = Target::parse(&format!("ws://127.0.0.1:{port}/echo")).unwrap();
        target.deflate = true;
        let e = Echo {
            target: target.clone(),
            connections: 3,
            size: 256,
            in_flight: 2,
            text: true,
            json: true,
            connect_concurrency: 3,
        };
        let s = fleet::run(Arc::new(e), 1, WARMUP, RUN).unwrap();
        assert_eq!((s.connected, s.errors, s.bad_replies), (3, 0, 0), "{s:?}");
        assert!(s.received > 10, "{s:?}");
        // Payload bytes are counted inflated.
        assert_eq!(s.received_bytes, s.received * 256);

        // A server that declines the offer fails every connection.
        target.path = "/echo-plain".into();
        let e = Echo {
            target,
            connections: 2,
            size: 64,
            in_flight: 1,
            text: false,
            json: false,
            connect_concurrency: 2,
        };
        let s = fleet::run(Arc::new(e), 1, WARMUP, RUN).unwrap();
        assert_eq!((s.connected, s.connect_errors), (0, 2), "{s:?}");
        let err = s.first_error.unwrap();
        assert!(err.contains("did not accept permessage-deflate"), "{err}");
    }

    #[test]
    fn counts_connect_failures() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Echo {
            target: Target::parse(&format!("ws://127.0.0.1:{port}/echo")).unwrap(),
            connections: 3,
            size: 8,
            in_flight: 1,
            text: false,
            json: false,
            connect_concurrency: 8,
        };
        let s = fleet::run(Arc::new(e), 1, WARMUP, RUN).unwrap();
        assert_eq!((s.connected, s.connect_errors), (0, 3));
        assert!(s.first_error.is_some());
    }

    #[test]
    fn idle_holds_connections() {
        let port = super::start();
        let idle = Arc::new(Idle::new(
            Target::parse(&format!("ws://127.0.0.1:{port}/echo")).unwrap(),
            50,
            16,
        ));
        let s = fleet::run(idle.clone(), 2, Duration::ZERO, RUN).unwrap();
        assert_eq!(idle.opened.load(Ordering::Relaxed), 50);
        assert_eq!((s.connected, s.errors), (50, 0), "{s:?}");
    }

    #[test]
    fn pubsub_fans_out() {
        let port = super::start();
        let p = PubSub {
            target: Target::parse(&format!("ws://127.0.0.1:{port}/broadcast")).unwrap(),
            split: None,
            subscribers: 6,
            publishers: 2,
            channels: 2,
            rate: 400.0,
            size: 40,
            channel_prefix: "public:t-".into(),
            connect_concurrency: 4,
            subscribe_timeout: Duration::from_secs(5),
            grace: Duration::from_secs(1),
        };
        let s = fleet::run(Arc::new(p), 2, WARMUP, RUN).unwrap();
        assert_eq!((s.connected, s.errors, s.bad_replies), (8, 0, 0), "{s:?}");
        assert!(s.sent > 50, "{s:?}");
        // Three subscribers per channel.
        assert_eq!(s.expected, 3 * s.sent);
        // Counted by send time, with a grace period for the last ones:
        // every delivery of the window's publishes, no more.
        assert_eq!(s.received, s.expected, "{s:?}");
    }
}
