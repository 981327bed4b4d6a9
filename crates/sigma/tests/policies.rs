//! Route policies over real sockets (DESIGN §4, docs/policies.md): every
//! subject kind, deny wins, methods (405), the browser page against the
//! JSON answer, groups from `sigma user add --group` and `sigma user
//! groups` taking effect on open sessions without a restart, the query
//! and forwarded headers unable to steer a decision, and `sigma check
//! --explain`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[route]]
path = "/admin"
to = "&echo"
allow = ["group:admins", "user:carol"]
deny = ["user:mallory", "cidr:127.0.0.9/32"]
methods = ["GET", "POST"]

[[route]]
path = "/lan"
to = "&echo"
auth = "optional"
allow = ["cidr:127.0.0.0/8"]
deny = ["provider:password"]
"#;

fn user(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = sigma_cmd();
    cmd.arg("user").args(args).arg("--data").arg(data);
    let (st, out, err) = run_bounded(cmd, stdin.map(str::as_bytes));
    assert!(st.success(), "sigma user {args:?}: {err}");
    out
}

fn login(addr: SocketAddr, name: &str) -> String {
    login_as(addr, name, &format!("pw-{name}"))
}

/// One request on a fresh connection from `from`.
fn from(
    from: Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut c = Client::from_stream(connect_from(from, addr));
    c.send(&request_bytes(addr, method, path, headers, b""));
    c.read_response()
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[test]
fn policies_decide_by_every_subject_and_deny_wins() {
    let data = temp_dir("policies");
    user(
        &data,
        &["add", "alice", "--group", "admins", "--password-stdin"],
        Some("pw-alice\n"),
    );
    user(&data, &["add", "bob", "--password-stdin"], Some("pw-bob\n"));
    user(
        &data,
        &["add", "carol", "--password-stdin"],
        Some("pw-carol\n"),
    );
    user(
        &data,
        &["add", "mallory", "--group", "admins", "--password-stdin"],
        Some("pw-mallory\n"),
    );
    let l = Server::launch(CONFIG, &data, "T127.0.0.1:0[HA]");
    let addr = l.server.addr();
    let lo = Ipv4Addr::LOCALHOST;
    let alice = login(addr, "alice");
    let bob = login(addr, "bob");
    let carol = login(addr, "carol");
    let mallory = login(addr, "mallory");
    let origin = format!("http://{addr}");

    // group: and user: admit.
    assert_eq!(
        from(lo, addr, "GET", "/admin/x", &[("Cookie", &alice)]).status,
        200
    );
    assert_eq!(
        from(lo, addr, "GET", "/admin/x", &[("Cookie", &carol)]).status,
        200
    );
    let post = from(
        lo,
        addr,
        "POST",
        "/admin/x",
        &[("Cookie", &alice), ("Origin", &origin)],
    );
    assert_eq!(post.status, 200, "{post:?}");
    // methods: 405 with Allow (HEAD goes with GET).
    let del = from(
        lo,
        addr,
        "DELETE",
        "/admin/x",
        &[("Cookie", &alice), ("Origin", &origin)],
    );
    assert_eq!(del.status, 405, "{del:?}");
    assert_eq!(del.header("allow"), Some("GET, POST, HEAD"));
    assert_eq!(
        json_of(&del),
        json!({"error": "method_not_allowed", "message": sigma_core::response::error_message("method_not_allowed")})
    );
    assert_eq!(
        from(lo, addr, "HEAD", "/admin/x", &[("Cookie", &alice)]).status,
        200
    );
    // Not in the allow list: 403, JSON for APIs, a page for browsers.
    let r = from(lo, addr, "GET", "/admin/x", &[("Cookie", &bob)]);
    assert_eq!(
        (r.status, json_of(&r)),
        (
            403,
            json!({"error": "forbidden", "message": sigma_core::response::error_message("forbidden")})
        )
    );
    let r = from(
        lo,
        addr,
        "GET",
        "/admin/x",
        &[("Cookie", &bob), ("Accept", "text/html")],
    );
    assert_eq!(r.status, 403);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{r:?}"
    );
    assert!(r.body_str().contains("<h1>Forbidden</h1>"), "{r:?}");
    // Anonymous: 401 (a login could be admitted).
    assert_eq!(from(lo, addr, "GET", "/admin/x", &[]).status, 401);
    // deny wins over a matching allow: a user, and a network.
    assert_eq!(
        from(lo, addr, "GET", "/admin/x", &[("Cookie", &mallory)]).status,
        403
    );
    let nine = Ipv4Addr::new(127, 0, 0, 9);
    assert_eq!(
        from(nine, addr, "GET", "/admin/x", &[("Cookie", &alice)]).status,
        403
    );
    // Neither the query nor forwarded headers (from an untrusted peer)
    // steer the decision.
    assert_eq!(
        from(
            lo,
            addr,
            "GET",
            "/admin/x?user=carol&group=admins",
            &[("Cookie", &bob)]
        )
        .status,
        403
    );
    let steer = [
        ("Cookie", alice.as_str()),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Uri", "/lan"),
        ("Forwarded", "for=127.0.0.1"),
    ];
    assert_eq!(from(nine, addr, "GET", "/admin/x", &steer).status, 403);
    // cidr: admits anonymous clients; provider: denies password logins.
    assert_eq!(from(lo, addr, "GET", "/lan", &[]).status, 200);
    assert_eq!(
        from(lo, addr, "GET", "/lan", &[("Cookie", &carol)]).status,
        403
    );

    // Refusals by policy are counted (8 above: the anonymous 401 came
    // from `auth = "required"`, before the policy).
    let m = from(lo, addr, "GET", "/metrics", &[]);
    assert!(
        m.body_str()
            .contains("sigma_rejections_total{reason=\"policy_refused\"} 8\n"),
        "{}",
        m.body_str()
    );
}

#[test]
fn group_changes_apply_to_open_sessions_at_once() {
    let data = temp_dir("policies-groups");
    user(&data, &["add", "bob", "--password-stdin"], Some("pw-bob\n"));
    let l = Server::launch(CONFIG, &data, "T127.0.0.1:0[HA]");
    let addr = l.server.addr();
    let lo = Ipv4Addr::LOCALHOST;
    let bob = login(addr, "bob");
    let whoami = || json_of(&from(lo, addr, "GET", "/auth/whoami", &[("Cookie", &bob)]));
    assert_eq!(whoami(), json!({"user": "bob", "provider": "password"}));
    assert_eq!(
        from(lo, addr, "GET", "/admin", &[("Cookie", &bob)]).status,
        403
    );

    // Through the running server's admin socket: the same session now
    // has the group, without logging in again.
    assert_eq!(
        user(&data, &["groups", "bob", "admins", "ops", "admins"], None),
        "user bob is in admins, ops\n"
    );
    assert_eq!(
        whoami(),
        json!({"user": "bob", "provider": "password", "groups": ["admins", "ops"]})
    );
    assert_eq!(
        from(lo, addr, "GET", "/admin", &[("Cookie", &bob)]).status,
        200
    );
    // And away again.
    assert_eq!(
        user(&data, &["groups", "bob"], None),
        "user bob has no groups\n"
    );
    assert_eq!(
        from(lo, addr, "GET", "/admin", &[("Cookie", &bob)]).status,
        403
    );

    // Bad group names are refused by the CLI, naming the group.
    let mut cmd = sigma_cmd();
    cmd.args(["user", "groups", "bob", "no way", "--data"])
        .arg(&data);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("invalid group \"no way\""), "{err}");
}

#[test]
fn check_explain_names_the_rule() {
    let (_, cfg) = write_temp_config("explain", CONFIG);
    let explain = |args: &[&str]| {
        let mut cmd = sigma_cmd();
        cmd.arg("check").arg("--config").arg(&cfg).args(args);
        let (st, out, err) = run_bounded(cmd, None);
        (st.code(), out, err)
    };
    let (code, out, err) = explain(&[
        "--explain",
        "GET /admin/users",
        "--user",
        "alice",
        "--group",
        "admins",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "request GET /admin/users from 127.0.0.1 as alice (password; groups admins)\n\
         route /admin -> &echo (auth required, allow group:admins,user:carol, deny user:mallory,cidr:127.0.0.9/32, methods GET,POST)\n\
         decision: allowed, by allow group:admins\n"
    );
    let (code, out, _) = explain(&[
        "--explain",
        "GET /admin",
        "--user",
        "alice",
        "--group",
        "admins",
        "--from",
        "127.0.0.9",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.ends_with("decision: refused, 403: by deny cidr:127.0.0.9/32\n"),
        "{out}"
    );
    let (code, out, _) = explain(&["--explain", "PUT /admin", "--user", "carol"]);
    assert_eq!(code, Some(1));
    assert!(
        out.ends_with("decision: refused, 405: by PUT not in methods\n"),
        "{out}"
    );
    let (code, _, err) = explain(&["--explain", "/admin"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("write \"METHOD /path\""), "{err}");
}
