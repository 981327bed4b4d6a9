//! API keys over real sockets (DESIGN §4): `sigma apikey add` prints a
//! key once and stores only its SHA-256; `Authorization: Bearer sgk_…` is
//! `{user: NAME, provider: "apikey"}` with the key's groups, subject to
//! policies; `del` refuses the key at once; wrong keys are throttled per
//! client network (429) without locking out other networks.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[route]]
path = "/admin"
to = "&echo"
allow = ["group:bots", "user:alice"]

[[route]]
path = "/machines"
to = "&echo"
allow = ["provider:apikey"]
"#;

fn apikey(data: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = sigma_cmd();
    cmd.arg("apikey").args(args).arg("--data").arg(data);
    let (st, out, err) = run_bounded(cmd, None);
    (st.code(), out, err)
}

fn get(from: Ipv4Addr, addr: SocketAddr, path: &str, key: Option<&str>) -> Resp {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut h = Vec::new();
    if let Some(b) = &bearer {
        h.push(("Authorization", b.as_str()));
    }
    let mut c = Client::from_stream(connect_from(from, addr));
    c.send(&request_bytes(addr, "GET", path, &h, b""));
    c.read_response()
}

#[test]
fn api_keys_identify_machines_and_end_at_once() {
    let data = temp_dir("apikeys");
    let l = Server::launch(CONFIG, &data, "T127.0.0.1:0[HA]");
    let addr = l.server.addr();
    let lo = Ipv4Addr::LOCALHOST;

    let (code, out, err) = apikey(&data, &["add", "robot", "--group", "bots"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "added API key robot");
    let key = lines[1].to_owned();
    assert!(key.starts_with("sgk_") && key.len() == 47, "{key}");

    let who = get(lo, addr, "/auth/whoami", Some(&key));
    assert_eq!(
        serde_json::from_slice::<Value>(&who.body).expect("json"),
        json!({"user": "robot", "provider": "apikey", "groups": ["bots"]})
    );
    assert_eq!(get(lo, addr, "/admin/x", Some(&key)).status, 200);
    assert_eq!(get(lo, addr, "/machines/x", Some(&key)).status, 200);
    assert_eq!(get(lo, addr, "/machines/x", None).status, 401);

    // `list` shows no key; the store holds the hash, never the key.
    let (code, out, _) = apikey(&data, &["list"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("robot groups=bots created="), "{out}");
    assert!(!out.contains("sgk_"), "{out}");
    let file = std::fs::read(data.join("sigma.redb")).expect("the store file");
    assert!(
        !file.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is stored"
    );
    let hash = sigma::auth::apikey::hash(key.as_bytes());
    assert!(
        file.windows(64).any(|w| w == hash.as_bytes()),
        "the hash is not stored"
    );

    // A second key of the same name is refused; del ends the key at once.
    let (code, _, err) = apikey(&data, &["add", "robot"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("API key robot already exists"), "{err}");
    let (code, out, _) = apikey(&data, &["del", "robot"]);
    assert_eq!((code, out.as_str()), (Some(0), "deleted API key robot\n"));
    let r = get(lo, addr, "/machines/x", Some(&key));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body_str().contains("unknown_api_key"), "{r:?}");
}

#[test]
fn wrong_keys_are_throttled_per_network() {
    let data = temp_dir("apikeys-throttle");
    let l = Server::launch(CONFIG, &data, "T127.0.0.1:0[HA]");
    let addr = l.server.addr();
    let (_, out, _) = apikey(&data, &["add", "robot"]);
    let key = out.lines().nth(1).expect("the key").to_owned();
    let guesser = Ipv4Addr::new(127, 0, 0, 7);
    let wrong = format!("sgk_{}", "A".repeat(43));
    // login_failures_per_user_per_minute (10) wrong keys, then 429.
    for i in 0..10 {
        let r = get(guesser, addr, "/machines", Some(&wrong));
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
    }
    let r = get(guesser, addr, "/machines", Some(&wrong));
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("60"));
    // Another network is not affected; right keys spend nothing.
    let other = Ipv4Addr::new(127, 0, 1, 7);
    for _ in 0..20 {
        assert_eq!(get(other, addr, "/machines", Some(&key)).status, 200);
    }
}
