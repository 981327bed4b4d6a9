//! Invariant: any bytes: the session socket's envelope parser, the initiate parser, the `GET /world/<cmd>.js` query parser, the fork-cookie opener and the session state machine never panic; a parsed world message's `world` decodes to its id and a fork names a 1..=64-byte command; a parsed query has a 64-byte signature; random bytes never open as a cookie; the server's Lamport stamps strictly increase and nothing is sent after a close; the user's budget counts at most the one world and none after the close.
//!
//! Where it sits: `&world` (DESIGN §5), on everything a client controls
//! before a signature is checked: the JSON envelopes on `/ws`, and the
//! `initiate` and `sig` query parameters of the worker fetch.
//!
//! Input layout: byte 0 = mode (0: the rest is one client envelope; 1: an
//! initiate; 2: a query string; 3: a cookie; 4: the rest, split at
//! newlines, is a sequence of envelopes fed to one session that has said
//! hello, with one real world active whose key is `[1; 32]`: lines
//! starting with `!` are signed by that world first); 5: an initiate
//! forwarded by another node, or its answer (what decodes encodes back to
//! itself); 6+: the same lines as 4,
//! handled one by one and as one batch (`Session::prepare` then
//! `on_prepared`, the session socket's path for one read) by two such
//! sessions, which must send, forward and refuse exactly the same.
//! Invariant of 6+ too: batch verification changes no outcome.

#![no_main]

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use sigma::world::budget::UserBudget;
use sigma::world::cookie::MinuteKeys;
use sigma::world::envelope::{self, ClientMsg, CommandInfo};
use sigma::world::session::{Limits, Out, Session, WorldKey};
use sigma::world::{b64_encode, WorldId};

fn check_envelope(text: &str) {
    if let Ok(env) = envelope::parse_client(text) {
        match env.msg {
            ClientMsg::World {
                world_text, world, ..
            } => assert_eq!(WorldId::parse(&world_text), Some(world)),
            ClientMsg::Fork { command, .. } => {
                assert!(!command.is_empty() && command.len() <= envelope::MAX_COMMAND)
            }
            ClientMsg::Hello | ClientMsg::Disconnect { .. } => {}
        }
    }
}

/// An activated session with the one world (key `[1; 32]`) active.
fn session_with_world(budget: &mut UserBudget) -> Session {
    let commands = vec![CommandInfo {
        name: "echo".into(),
        code: "/world/echo.js".into(),
    }];
    let key = SigningKey::from_bytes(&[1; 32]);
    let world = WorldId(key.verifying_key().to_bytes());
    let mut s = Session::new("fuzz".into(), commands);
    let mut seal = |_: &WorldId, _: &str| Some("c".to_owned());
    let _ = s.on_text(r#"{"type":"hello","lamport":1}"#, 0, budget, &mut seal);
    s.activate_world(WorldKey::new(world).unwrap(), budget)
        .unwrap();
    s
}

fn limits() -> Limits {
    Limits {
        max_worlds: 2,
        forks_per_minute: 5,
        max_used: 4,
    }
}

/// Lines of `data` as envelopes (`!N body`: signed by the world).
fn texts(data: &[u8]) -> Vec<String> {
    let key = SigningKey::from_bytes(&[1; 32]);
    let w = WorldId(key.verifying_key().to_bytes()).encode();
    data.split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(|line| match line.strip_prefix('!') {
            Some(rest) => {
                let (n, body) = rest.split_once(' ').unwrap_or((rest, ""));
                let n: u64 = n.parse().unwrap_or(0);
                let sig = key.sign(&envelope::signed_bytes(&w, n, body));
                serde_json::json!({"type":"world","world":w,"lamport":n,"body":body,
                    "sig": b64_encode(&sig.to_bytes())})
                .to_string()
            }
            None => line.to_owned(),
        })
        .collect()
}

fn run_batch(data: &[u8]) {
    let texts = texts(data);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut seal = |_: &WorldId, _: &str| Some("c".to_owned());
    let mut b1 = UserBudget::new(limits(), 0);
    let mut one = session_with_world(&mut b1);
    let mut each = Vec::new();
    for t in &texts {
        each.extend(one.on_text(t, 0, &mut b1, &mut seal));
    }
    let mut b2 = UserBudget::new(limits(), 0);
    let mut batch = session_with_world(&mut b2);
    let mut together = Vec::new();
    for p in batch.prepare(&texts) {
        together.extend(batch.on_prepared(p, 0, &mut b2, &mut seal));
    }
    assert_eq!(each, together, "a batch is its messages one by one");
    assert_eq!(b1.worlds(), b2.worlds());
}

fn run_session(data: &[u8]) {
    let commands = vec![CommandInfo {
        name: "echo".into(),
        code: "/world/echo.js".into(),
    }];
    let key = SigningKey::from_bytes(&[1; 32]);
    let world = WorldId(key.verifying_key().to_bytes());
    let mut s = Session::new("fuzz".into(), commands);
    let mut budget = UserBudget::new(
        Limits {
            max_worlds: 2,
            forks_per_minute: 5,
            max_used: 4,
        },
        0,
    );
    let mut seal = |_: &WorldId, _: &str| Some("c".to_owned());
    let mut last = 0u64;
    let mut closed = false;
    let mut check = |outs: Vec<Out>, closed: &mut bool| {
        for o in outs {
            match o {
                Out::Send(t) => {
                    assert!(!*closed, "sent after close");
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    let n = v["lamport"].as_u64().unwrap();
                    assert!(
                        n > last && n <= envelope::MAX_LAMPORT,
                        "lamport {n} after {last}"
                    );
                    last = n;
                }
                Out::Close { .. } => *closed = true,
                Out::Forward { world: w, .. } | Out::EndWorld(w) => assert_eq!(w, world),
                Out::Illegal(_) => {}
            }
        }
    };
    let outs = s.on_text(r#"{"type":"hello","lamport":1}"#, 0, &mut budget, &mut seal);
    check(outs, &mut closed);
    s.activate_world(WorldKey::new(world).unwrap(), &mut budget)
        .unwrap();
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let text = match line.strip_prefix('!') {
            // `!N body`: a world message signed by the active world.
            Some(rest) => {
                let (n, body) = rest.split_once(' ').unwrap_or((rest, ""));
                let n: u64 = n.parse().unwrap_or(0);
                let w = world.encode();
                let sig = key.sign(&envelope::signed_bytes(&w, n, body));
                serde_json::json!({"type":"world","world":w,"lamport":n,"body":body,
                    "sig": b64_encode(&sig.to_bytes())})
                .to_string()
            }
            None => line.to_owned(),
        };
        let now = (i as u64).saturating_mul(1000);
        let outs = s.on_text(&text, now, &mut budget, &mut seal);
        assert!(budget.worlds() <= 1, "only the one world is ever counted");
        check(outs, &mut closed);
        if i % 7 == 6 {
            let outs = s.activation_deadline();
            check(outs, &mut closed);
        }
    }
    let outs = s.close(&mut budget);
    check(outs, &mut closed);
    assert_eq!(budget.worlds(), 0, "closing gives every world back");
}

fuzz_target!(|input: &[u8]| {
    let [mode, data @ ..] = input else {
        return;
    };
    match mode {
        0 => {
            if let Ok(t) = std::str::from_utf8(data) {
                check_envelope(t);
            }
        }
        1 => {
            if let Ok(i) = envelope::parse_initiate(data) {
                assert!(!i.command.is_empty() && i.command.len() <= envelope::MAX_COMMAND);
            }
        }
        2 => {
            if let Some((_, sig)) = envelope::parse_query(data) {
                assert_eq!(sig.len(), 64);
            }
        }
        3 => {
            let mut keys = MinuteKeys::new(std::time::Duration::from_secs(60));
            assert!(keys.open(data, 1_700_000_000_000).is_err());
        }
        4 => run_session(data),
        // What another node forwards, or answers: decoded, or refused;
        // what decodes encodes back to itself.
        5 => {
            if let Some(f) = sigma::world::forward::Forwarded::decode(data) {
                assert_eq!(sigma::world::forward::Forwarded::decode(&f.encode()), Some(f));
            }
            if let Some(o) = sigma::world::forward::Outcome::decode(data) {
                assert_eq!(sigma::world::forward::Outcome::decode(&o.encode()), Some(o));
            }
        }
        _ => run_batch(data),
    }
});
