//! SIGHUP reload (DESIGN §8, issue #15), against the real binary over real
//! sockets: routes added and removed (for the next request, on a
//! keep-alive connection too), an invalid config kept out (the old routes
//! still answer, the error names the key), a `&broadcast` subscription
//! that keeps receiving across three reloads on one socket (every publish
//! before, between and after them arrives, in order), a WebSocket on a
//! removed route closed with 1001 while one on a kept route goes on, and
//! listeners added and removed.
//!
//! Synchronisation: a reload is over when `/metrics` counts it
//! (`sigma_config_reloads_total`, incremented last); an added listener's
//! address is read from the server's stdout. No sleeps.
//!
//! `cargo nextest run -p sigma --test reload`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// How long a test waits for a condition it polls.
const DEADLINE: Duration = Duration::from_secs(20);

/// The fixed part of every config: anonymous publish and subscribe on
/// `open:*`, small timeouts.
const BASE: &str = r#"
[server]
linger_timeout = "2s"
drain_timeout = "10s"

[[broadcast.rule]]
pattern = "open:*"
subscribe = "anyone"
publish = "anyone"
"#;

/// A config: `pipeline`, [`BASE`], then `tail` (routes, tables).
fn config(pipeline: &str, tail: &str) -> String {
    format!("pipeline = \"{pipeline}\"\n{BASE}\n{tail}")
}

fn route(path: &str, to: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\nto = \"{to}\"\nauth = \"none\"\n")
}

/// `sigma serve --config FILE` whose file a test rewrites before each
/// SIGHUP; the pipeline comes from the file (no `--pipeline` flag, which
/// would win over it on every reload).
struct Sigma {
    child: Child,
    pid: u32,
    dir: PathBuf,
    file: PathBuf,
    /// The first listener's address.
    addr: SocketAddr,
    /// What the server prints on stdout, line by line, from the start.
    lines: mpsc::Receiver<String>,
    /// Reloads counted so far (ok, error).
    reloads: (u64, u64),
}

impl Sigma {
    fn start(toml: &str) -> Sigma {
        let dir = temp_dir("reload");
        let file = dir.join("sigma.toml");
        fs::write(&file, toml).expect("write config");
        let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut cmd = sigma_cmd();
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--workers")
            .arg("2")
            .env("SIGMA_LOG", "info")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn sigma serve");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut s = Sigma {
            child,
            pid,
            dir,
            file,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            reloads: (0, 0),
        };
        s.addr = s.next_listening().0;
        s
    }

    /// The next `listening on ADDR [STAGES]` line on stdout.
    fn next_listening(&self) -> (SocketAddr, String) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let mut parts = rest.split_whitespace();
                        let addr = parts.next().unwrap_or("").parse().expect("address");
                        return (addr, parts.next().unwrap_or("").to_owned());
                    }
                }
                Err(_) => panic!("no `listening on` line; stderr: {}", self.stderr()),
            }
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Writes `toml` as the config file, sends SIGHUP and waits until the
    /// reload is counted; `ok`: it must be applied, else refused.
    fn reload(&mut self, toml: &str, ok: bool) {
        fs::write(&self.file, toml).expect("rewrite config");
        let st = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(self.pid.to_string())
            .status()
            .expect("kill -HUP");
        assert!(st.success());
        let want = if ok {
            (self.reloads.0 + 1, self.reloads.1)
        } else {
            (self.reloads.0, self.reloads.1 + 1)
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = reload_counts(self.addr);
            if now == want {
                self.reloads = now;
                return;
            }
            assert!(
                now.0 <= want.0 && now.1 <= want.1,
                "reload counted as the wrong result: {now:?}, wanted {want:?}; stderr: {}",
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "reload not counted: {now:?}, wanted {want:?}; stderr: {}",
                self.stderr()
            );
        }
    }

    fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"")
    }

    fn publish(&self, channel: &str, data: &Value) -> u64 {
        let r = request(
            self.addr,
            "POST",
            &format!("/bc/{channel}"),
            &[("Content-Type", "application/json")],
            data.to_string().as_bytes(),
        );
        assert_eq!(r.status, 202, "publish: {r:?}");
        let v: Value = serde_json::from_str(&r.body_str()).expect("JSON");
        v["seq"].as_u64().expect("seq")
    }
}

impl Drop for Sigma {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `sigma_config_reloads_total` (ok, error) from `/metrics` on `addr`.
fn reload_counts(addr: SocketAddr) -> (u64, u64) {
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.body_str();
    let count = |result: &str| {
        let key = format!("sigma_config_reloads_total{{result=\"{result}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /metrics"))
    };
    (count("ok"), count("error"))
}

// ----- WebSocket client (tungstenite, a client sigma does not share) ---------

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_open(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let (ws, resp) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("WebSocket upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).expect("ws send");
}

/// The next text message as JSON (pings are answered by tungstenite).
fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("ws read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; its code.
fn ws_close_code(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                return frame.map(|f| u16::from(f.code)).expect("a close code");
            }
            Ok(Message::Text(t)) => panic!("a message instead of the close: {t}"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn subscribe(ws: &mut Ws, channel: &str) {
    ws_send(ws, &json!({"type": "subscribe", "channel": channel}));
    let r = ws_recv(ws);
    assert_eq!(r["type"], "subscribed", "{r}");
}

// ----- tests -----------------------------------------------------------------

const HA: &str = "T127.0.0.1:0[HA]";

#[test]
fn routes_are_added_and_removed_and_an_invalid_config_is_kept_out() {
    let mut s = Sigma::start(&config(HA, &route("/a", "&echo")));
    assert_eq!(s.get("/a").status, 200);
    assert_eq!(s.get("/b").status, 404);
    // A keep-alive connection opened before the reload.
    let mut kept = Client::connect(s.addr);
    kept.send(&get("/a", ""));
    assert_eq!(kept.read_response().status, 200);

    s.reload(&config(HA, &route("/b", "&echo")), true);
    assert_eq!(s.get("/b").status, 200);
    assert_eq!(s.get("/a").status, 404);
    // The next request on the old connection sees the new routes.
    kept.send(&get("/b", ""));
    assert_eq!(kept.read_response().status, 200);
    kept.send(&get("/a", ""));
    assert_eq!(kept.read_response().status, 404);

    // An unknown key: refused whole, logged once with the key's path.
    let bad = format!(
        "{}\n[http]\nno_such_limit = 1\n",
        config(HA, &route("/c", "&echo"))
    );
    s.reload(&bad, false);
    assert_eq!(s.get("/b").status, 200, "the old routes still answer");
    assert_eq!(s.get("/c").status, 404, "nothing of the refused config");
    let log = s.stderr();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config reload refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("no_such_limit"), "{}", refused[0]);

    // A file that is not TOML at all, then a good one again.
    s.reload("[[route]\n", false);
    assert_eq!(s.get("/b").status, 200);
    s.reload(
        &config(HA, &(route("/b", "&echo") + &route("/c", "&echo"))),
        true,
    );
    assert_eq!(s.get("/c").status, 200);
    assert_eq!(reload_counts(s.addr), (2, 2));
    assert_eq!(
        log_count(&s.stderr(), "config reloaded"),
        2,
        "one log line per applied reload"
    );
}

fn log_count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The headline: one subscription, one socket, three reloads that each
/// change something else (a route added, the broadcast route's `auth`,
/// the HTTP limits); every publish arrives, in order, and nothing closes.
#[test]
fn a_broadcast_subscription_keeps_receiving_across_three_reloads() {
    let routes = |extra: &str, bc_auth: &str| {
        format!("[[route]]\npath = \"/bc\"\nto = \"&broadcast\"\nauth = \"{bc_auth}\"\n\n{extra}")
    };
    let mut s = Sigma::start(&config(HA, &routes("", "none")));
    let mut ws = ws_open(s.addr, "/bc");
    subscribe(&mut ws, "open:news");

    let configs = [
        config(HA, &routes(&route("/added", "&echo"), "none")),
        config(HA, &routes(&route("/added", "&echo"), "optional")),
        format!(
            "{}\n[http]\nkeepalive_timeout = \"7s\"\n",
            config(HA, &routes(&route("/added", "&echo"), "optional"))
        ),
    ];
    let mut sent = Vec::new();
    let mut publish_round = |s: &Sigma, round: usize| {
        for k in 0..3 {
            let data = json!({"round": round, "k": k});
            let seq = s.publish("open:news", &data);
            sent.push((seq, data));
        }
    };
    publish_round(&s, 0);
    for (i, c) in configs.iter().enumerate() {
        s.reload(c, true);
        publish_round(&s, i + 1);
    }
    assert_eq!(s.get("/added").status, 200, "the reloads were applied");

    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let m = ws_recv(&mut ws);
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["channel"], "open:news", "{m}");
        got.push((m["seq"].as_u64().expect("seq"), m["data"].clone()));
    }
    assert_eq!(got, sent, "every publish, in order");
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Still the same socket, still live both ways: its own publish comes
    // back as the next message.
    ws_send(
        &mut ws,
        &json!({"type": "publish", "channel": "open:news", "data": "own"}),
    );
    let m = ws_recv(&mut ws);
    assert_eq!(
        (m["type"].as_str(), m["data"].as_str()),
        (Some("message"), Some("own")),
        "{m}"
    );
    assert_eq!(m["seq"].as_u64(), seqs.last().map(|n| n + 1), "{m}");
    assert_eq!(reload_counts(s.addr), (3, 0));
}

#[test]
fn a_websocket_on_a_removed_route_is_closed_with_1001() {
    let both = route("/gone", "&echo") + &route("/stays", "&echo");
    let mut s = Sigma::start(&config(HA, &both));
    let mut gone = ws_open(s.addr, "/gone");
    let mut stays = ws_open(s.addr, "/stays");
    gone.send(Message::text("before")).expect("send");
    assert_eq!(gone.read().expect("echo"), Message::text("before"));

    s.reload(&config(HA, &route("/stays", "&echo")), true);
    assert_eq!(ws_close_code(&mut gone), 1001);
    // The kept route's socket goes on.
    stays.send(Message::text("after")).expect("send");
    assert_eq!(stays.read().expect("echo"), Message::text("after"));
    // A route whose destination changes is a removed one too.
    s.reload(&config(HA, &route("/stays", "&broadcast")), true);
    assert_eq!(ws_close_code(&mut stays), 1001);
}

#[test]
fn listeners_are_added_and_removed() {
    let routes = route("/e", "&echo");
    let two = "T127.0.0.1:0[HA] T127.0.0.1:0[H]";
    let mut s = Sigma::start(&config(HA, &routes));
    s.reload(&config(two, &routes), true);
    let (added, stages) = s.next_listening();
    assert_eq!(stages, "[H]");
    assert_ne!(added, s.addr);
    assert_eq!(request(added, "GET", "/e", &[], b"").status, 200);
    let mut on_added = ws_open(added, "/e");
    on_added.send(Message::text("x")).expect("send");
    assert_eq!(on_added.read().expect("echo"), Message::text("x"));
    // The first listener is untouched by either reload.
    let mut on_first = ws_open(s.addr, "/e");

    s.reload(&config(HA, &routes), true);
    // Drained as at shutdown: its WebSocket is closed "going away", and
    // it no longer accepts.
    assert_eq!(ws_close_code(&mut on_added), 1001);
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(added).is_ok() {
        assert!(Instant::now() < deadline, "{added} still accepts");
    }
    on_first.send(Message::text("y")).expect("send");
    assert_eq!(on_first.read().expect("echo"), Message::text("y"));
    assert_eq!(s.get("/e").status, 200);
}

/// `[auth]` is not reloaded: a warning names it, once per reload that
/// asks for a change, and going back to the running one is no change.
#[test]
fn keys_that_are_not_reloaded_are_named() {
    let routes = route("/e", "&echo");
    let mut s = Sigma::start(&config(HA, &routes));
    let auth = "[auth]\nsession_idle_timeout = \"1h\"\n";
    s.reload(&format!("{}\n{auth}", config(HA, &routes)), true);
    let warned = |s: &Sigma| log_count(&s.stderr(), "take effect at the next start");
    assert_eq!(warned(&s), 1, "{}", s.stderr());
    assert!(s.stderr().contains("[auth]"));
    s.reload(&config(HA, &routes), true);
    assert_eq!(warned(&s), 1, "{}", s.stderr());
}

#[test]
fn a_policy_change_applies_to_the_next_request_and_keeps_the_destination() {
    let policy = |keys: &str| {
        config(
            HA,
            &format!(
                "{}[[route]]\npath = \"/a\"\nto = \"&echo\"\nauth = \"none\"\n{keys}\n",
                route("/bc", "&broadcast")
            ),
        )
    };
    let mut s = Sigma::start(&policy("deny = [\"cidr:127.0.0.0/8\"]"));
    assert_eq!(s.get("/a").status, 403);
    let mut ws = ws_open(s.addr, "/bc");
    subscribe(&mut ws, "open:p");
    // The policy changes: the next request is judged by the new one.
    s.reload(&policy("methods = [\"POST\"]"), true);
    let r = s.get("/a");
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("POST"));
    s.reload(&policy(""), true);
    assert_eq!(s.get("/a").status, 200);
    // Policies are admission, not destinations: the open subscription on
    // the other route kept receiving through both reloads.
    let seq = s.publish("open:p", &serde_json::json!({"n": 1}));
    let got = ws_recv(&mut ws);
    assert_eq!(got["seq"], seq, "{got}");
}
