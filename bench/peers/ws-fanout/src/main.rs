//! Bench peer for scenario 6 (`&broadcast` fan-out): the obvious
//! tokio-tungstenite pub/sub hub, speaking the subset of sigma's
//! `&broadcast` wire protocol (DESIGN §9) that `sigma-load pubsub` uses:
//! `subscribe` → `subscribed`, `publish` → a `message` with a per-channel
//! `seq` to every subscriber. No authentication, no permissions (sigma
//! does both), so it is an upper bound of what a plain hub costs.
//!
//! Like sigma it serialises each delivery once and shares the buffer
//! (tungstenite's `Utf8Bytes`), gives every subscriber a bounded queue
//! (1024, as sigma's) and drops a subscriber whose queue is full. One
//! tokio worker thread by default, as `sigma serve --workers 1` gets;
//! scenario 11 (multi-core scaling) gives it two.
//!
//! Usage: `ws-fanout ADDR [THREADS]` (THREADS: tokio worker threads,
//! default 1); prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Tx = mpsc::Sender<Message>;

#[derive(Default)]
struct Channel {
    seq: u64,
    subs: Vec<(u64, Tx)>,
}

#[derive(Default)]
struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Hub {
    fn publish(&self, channel: &str, data: &serde_json::Value) -> u64 {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ch) = map.get_mut(channel) else {
            return 0;
        };
        ch.seq += 1;
        let text = serde_json::json!({
            "type": "message", "channel": channel, "seq": ch.seq, "from": null, "data": data,
        })
        .to_string();
        let msg = Message::Text(Utf8Bytes::from(text));
        ch.subs.retain(|(_, tx)| tx.try_send(msg.clone()).is_ok());
        ch.seq
    }

    fn subscribe(&self, channel: &str, id: u64, tx: Tx) {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(channel.to_owned())
            .or_default()
            .subs
            .push((id, tx));
    }

    fn leave(&self, id: u64) {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for ch in map.values_mut() {
            ch.subs.retain(|(i, _)| *i != id);
        }
        map.retain(|_, ch| !ch.subs.is_empty());
    }
}

async fn serve(hub: Arc<Hub>, stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut write, mut read) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write.feed(m).await.is_err() {
                return;
            }
            // Batch what is already queued, then flush once.
            while let Ok(m) = rx.try_recv() {
                if write.feed(m).await.is_err() {
                    return;
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = read.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let channel = v["channel"].as_str().unwrap_or_default();
        match v["type"].as_str() {
            Some("subscribe") => {
                hub.subscribe(channel, id, tx.clone());
                let ack = serde_json::json!({"type": "subscribed", "channel": channel});
                if tx.send(Message::text(ack.to_string())).await.is_err() {
                    break;
                }
            }
            Some("publish") => {
                hub.publish(channel, &v["data"]);
            }
            _ => {}
        }
    }
    hub.leave(id);
    drop(tx);
    let _ = writer.await;
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3003".to_string());
    let threads = match args.next() {
        None => 1,
        Some(t) => t.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("THREADS must be a positive number, not {t:?}"),
            )
        })?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let hub = Arc::new(Hub::default());
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        let mut next = 0u64;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    next += 1;
                    tokio::spawn(serve(Arc::clone(&hub), stream, next));
                }
                // EMFILE and friends: keep serving the connections we have.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
}
