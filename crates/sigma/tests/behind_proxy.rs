//! sigma behind the real nginx (docs/behind-a-proxy.md), over real
//! sockets, and its access log and security events parsed as JSON.
//!
//! Addresses: sigma listens on 127.0.0.1, nginx on 127.0.0.2 and connects
//! to sigma from 127.0.0.1 (the trusted proxy), and the test's "browser"
//! connects from 127.0.0.3, which is not in `server.metrics_allow`. So
//! what sigma believes about the client is visible: `/metrics` through
//! the proxy is refused, a forged `X-Forwarded-For` changes nothing.
//!
//! nginx: Debian's `nginx` (scripts/test.sh installs it), run as a
//! private non-daemon child with its own config, pid and logs in a
//! temporary directory. The nginx `location` block is read from
//! docs/deployment.md (the same as docs/behind-a-proxy.md's), with
//! `proxy_pass` left plain: nginx rewrites `Host` to the
//! upstream's address, and `[auth] public_url` is what makes the
//! same-origin check pass.

mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The test's client address: not loopback's `127.0.0.1`.
const BROWSER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Where nginx listens.
const NGINX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The nginx binary.
fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed (scripts/test.sh installs Debian's nginx)");
}

/// A free TCP port on `ip` (bound, then released for the server to take).
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind(SocketAddrV4::new(ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `location / { … }` block of the nginx snippet in
/// docs/deployment.md (and docs/behind-a-proxy.md: the same block),
/// read from the page itself, proxying to `to` instead of
/// 127.0.0.1:3000. So the snippet operators copy is the one tested.
fn nginx_location(to: SocketAddr) -> String {
    let mut blocks = Vec::new();
    for page in ["docs/deployment.md", "docs/behind-a-proxy.md"] {
        let text = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(page),
        )
        .unwrap_or_else(|e| panic!("{page}: {e}"));
        let nginx = text
            .split("```nginx\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .unwrap_or_else(|| panic!("{page}: no nginx block"));
        let start = nginx.find("    location / {").expect("a location / block");
        let len = nginx[start..].find("\n    }\n").expect("its end") + "\n    }\n".len();
        blocks.push(nginx[start..start + len].to_owned());
    }
    assert_eq!(
        blocks[0], blocks[1],
        "the two pages show different nginx blocks"
    );
    assert!(
        blocks[0].contains("proxy_pass http://127.0.0.1:3000;"),
        "{}",
        blocks[0]
    );
    blocks[0].replace("http://127.0.0.1:3000", &format!("http://{to}"))
}

/// A private nginx in front of sigma, killed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    /// nginx on `NGINX_IP:port`, proxying to `sigma`.
    fn start(port: u16, sigma: SocketAddr) -> Nginx {
        let dir = temp_dir("nginx");
        let d = dir.display();
        let addr = SocketAddr::from((NGINX_IP, port));
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             \x20   server {{\n\
             \x20       listen {addr};\n\
             {}\
             \x20   }}\n\
             }}\n",
            nginx_location(sigma)
        );
        fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = n.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
                panic!("nginx did not come up on {addr} ({exited:?}): {log}");
            }
            std::thread::yield_now();
        }
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// sigma with `alice` and nginx in front of it.
struct Setup {
    sigma: Server,
    sigma_addr: SocketAddr,
    nginx: Nginx,
    up: Upstream,
    _data: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const ALICE_PW: &str = "alice-password-1";

impl Setup {
    /// `[auth] public_url` is nginx's address unless `public_url` is false.
    fn start(public_url: bool) -> Setup {
        let data = TempDir(temp_dir("behind-proxy"));
        let mut cmd = sigma_cmd();
        cmd.args(["user", "add", "alice", "--password-stdin", "--data"])
            .arg(data.0.join("data"));
        let (st, _, err) = run_bounded(cmd, Some(format!("{ALICE_PW}\n").as_bytes()));
        assert!(st.success(), "sigma user add: {err}");
        let up = Upstream::start();
        let nginx_port = free_port(NGINX_IP);
        let public = if public_url {
            format!("public_url = \"http://{NGINX_IP}:{nginx_port}\"\n")
        } else {
            String::new()
        };
        let toml = format!(
            "[server]\nmetrics_allow = [\"127.0.0.1/32\"]\n\
             [http]\nhead_timeout = \"2s\"\n\
             [auth]\n{public}trusted_proxies = [\"127.0.0.1/32\"]\n\
             [[route]]\npath = \"/db\"\nto = \"&db\"\n\
             [[route]]\npath = \"/echo\"\nto = \"&echo\"\nauth = \"none\"\n\
             [[route]]\npath = \"/up\"\nto = \"http://127.0.0.1:{}\"\nauth = \"optional\"\n",
            up.port
        );
        let l = Server::launch_with(
            &toml,
            &data.0.join("data"),
            "T127.0.0.1:0[HA]",
            &[("SIGMA_LOG", "info")],
            &["--log-format", "json"],
        );
        let sigma_addr = l.addrs[0];
        let nginx = Nginx::start(nginx_port, sigma_addr);
        Setup {
            sigma: l.server,
            sigma_addr,
            nginx,
            up,
            _data: data,
        }
    }

    /// nginx's origin, as a browser on it sends it.
    fn origin(&self) -> String {
        format!("http://{}", self.nginx.addr)
    }

    /// One request from the browser's address to `to`.
    fn send(
        &self,
        to: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut c = Client::from_stream(connect_from(BROWSER, to));
        c.send(&request_bytes(to, method, path, headers, body));
        c.read_response()
    }

    /// A request through nginx.
    fn via_nginx(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(self.nginx.addr, method, path, headers, body)
    }

    /// Browser-style form login through nginx: the session cookie.
    fn login(&self) -> Result<String, Resp> {
        let origin = self.origin();
        let r = self.via_nginx(
            "POST",
            "/login",
            &browser_post(&origin, "application/x-www-form-urlencoded"),
            format!("user=alice&password={ALICE_PW}&next=%2Fdb%2F").as_bytes(),
        );
        if r.status != 303 {
            return Err(r);
        }
        let set = r.header("set-cookie").unwrap_or_default();
        Ok(set.split(';').next().unwrap_or_default().to_owned())
    }

    /// The JSON log lines sigma wrote under `target`, waiting (bounded)
    /// until `done` holds for them.
    fn log_lines(&self, target: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = json_lines(&self.sigma.stderr(), target);
            if done(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The headers a browser sends with a same-origin `fetch`/form POST.
fn browser_post<'a>(origin: &'a str, content_type: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Origin", origin),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "navigate"),
        ("Content-Type", content_type),
    ]
}

/// The fields of a JSON log line (tracing-subscriber's JSON puts them
/// under `fields`; a flattened format has them at the top).
fn fields(line: &Value) -> &serde_json::Map<String, Value> {
    line.get("fields")
        .and_then(Value::as_object)
        .or_else(|| line.as_object())
        .expect("a JSON object")
}

/// Every JSON line of `log` whose `target` is `target`.
fn json_lines(log: &str, target: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("target").and_then(Value::as_str) == Some(target))
        .collect()
}

/// The access log line of request `req`.
fn access_line<'a>(lines: &'a [Value], req: &str) -> Option<&'a serde_json::Map<String, Value>> {
    lines
        .iter()
        .map(fields)
        .find(|f| f.get("req").and_then(Value::as_str) == Some(req))
}

/// The access log's field names; `user` and `route` only when there is one.
const ACCESS_FIELDS: &[&str] = &[
    "ts",
    "client",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "user",
    "route",
    "dest",
    "req",
];

/// Checks that `f` has exactly the access log's fields (`user` and `route`
/// as `absent` says) and well-formed values.
fn assert_access_shape(f: &serde_json::Map<String, Value>, absent: &[&str]) {
    let mut want: Vec<&str> = ACCESS_FIELDS
        .iter()
        .copied()
        .filter(|k| !absent.contains(k))
        .collect();
    want.sort_unstable();
    let mut got: Vec<&str> = f.keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, want, "{f:?}");
    let ts = f["ts"].as_str().expect("ts");
    assert!(humantime::parse_rfc3339(ts).is_ok(), "ts {ts}");
    for n in ["status", "bytes_in", "bytes_out", "duration_ms"] {
        assert!(f[n].as_u64().is_some(), "{n}: {f:?}");
    }
    assert!(f["duration_ms"].as_u64().unwrap() < 10_000, "{f:?}");
}

/// The browser logs in through a plain `proxy_pass` (Host rewritten to
/// sigma's address) and writes with its cookie; the access log says who,
/// from where, with the request id nginx generated and sent on.
#[test]
fn browser_login_and_cookie_put_through_plain_proxy_pass() {
    let s = Setup::start(true);
    let cookie = s
        .login()
        .unwrap_or_else(|r| panic!("login through nginx: {r:?}"));
    assert!(cookie.starts_with("sigma_session="), "{cookie}");
    let origin = s.origin();
    let mut h = browser_post(&origin, "text/plain");
    h.push(("Cookie", &cookie));
    let put = s.via_nginx("PUT", "/db/note", &h, b"hello");
    assert!(
        matches!(put.status, 200 | 201 | 204),
        "cookie PUT through nginx: {put:?}"
    );
    let get = s.via_nginx("GET", "/db/note", &[("Cookie", &cookie)], b"");
    assert_eq!(
        (get.status, get.body_str().as_str()),
        (200, "hello"),
        "{get:?}"
    );
    // Another site's page cannot ride the cookie.
    let mut evil = browser_post("http://evil.test", "text/plain");
    evil.push(("Cookie", &cookie));
    evil[1] = ("Sec-Fetch-Site", "cross-site");
    let r = s.via_nginx("PUT", "/db/note", &evil, b"pwned");
    assert_eq!(r.status, 403, "{r:?}");

    // The access line of the PUT: every field.
    let req = put
        .header("x-request-id")
        .expect("nginx's X-Request-Id")
        .to_owned();
    let lines = s.log_lines("sigma::access", |l| access_line(l, &req).is_some());
    let f =
        access_line(&lines, &req).unwrap_or_else(|| panic!("no access line for {req}: {lines:?}"));
    assert_access_shape(f, &[]);
    assert_eq!(f["client"], "127.0.0.3");
    assert_eq!(f["method"], "PUT");
    assert_eq!(f["path"], "/db/note");
    assert_eq!(f["status"].as_u64(), Some(u64::from(put.status)));
    assert_eq!(f["bytes_in"].as_u64(), Some(5));
    assert_eq!(f["bytes_out"].as_u64(), Some(put.body.len() as u64));
    assert_eq!(f["user"], "alice");
    assert_eq!(f["route"], "/db");
    assert_eq!(f["dest"], "&db");
    // The login's line: A's endpoint, anonymous until it succeeded.
    let lines = s.log_lines("sigma::access", |l| {
        l.iter().map(fields).any(|f| f["path"] == "/login")
    });
    let login = lines
        .iter()
        .map(fields)
        .find(|f| f["path"] == "/login")
        .expect("the login's access line");
    assert_access_shape(login, &["user", "route"]);
    assert_eq!(login["status"].as_u64(), Some(303));
    assert_eq!(login["dest"], "&auth");
    assert_eq!(login["client"], "127.0.0.3");
    // The cross-site refusal is a security event.
    let sec = s.log_lines("sigma::security", |l| {
        l.iter()
            .map(fields)
            .any(|f| f.get("event") == Some(&Value::from("cross_site")))
    });
    let ev = sec
        .iter()
        .find(|l| fields(l).get("event") == Some(&Value::from("cross_site")))
        .unwrap_or_else(|| panic!("no cross_site event: {sec:?}"));
    assert_eq!(ev["level"], "WARN");
    assert_eq!(fields(ev)["client"], "127.0.0.3");
    assert_eq!(fields(ev)["user"], "alice");
    assert_eq!(fields(ev)["path"], "/db/note");
}

/// Without `public_url`, the same browser login through a plain
/// `proxy_pass` is cross-site (nginx rewrote `Host`): the case the issue
/// reported, and what `public_url` fixes.
#[test]
fn without_public_url_the_rewritten_host_is_cross_site() {
    let s = Setup::start(false);
    let r = s.login().expect_err("login must be refused");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body_str().contains("cross_site"), "{r:?}");
}

/// `/metrics` is for `server.metrics_allow` (127.0.0.1 here): through the
/// proxy the client is 127.0.0.3 and is refused, even when it claims to be
/// 127.0.0.1 in `X-Forwarded-For`; directly from 127.0.0.3 with the same
/// claim too (it is not a trusted proxy). sigma's own neighbour is let in.
#[test]
fn metrics_through_the_proxy_are_refused_and_forwarded_for_is_not_believed() {
    let s = Setup::start(true);
    let r = s.via_nginx("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 403, "through nginx: {r:?}");
    let r = s.via_nginx("GET", "/metrics", &[("X-Forwarded-For", "127.0.0.1")], b"");
    assert_eq!(r.status, 403, "through nginx, forged XFF: {r:?}");
    let forged = [
        ("X-Forwarded-For", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1"),
        ("X-Request-Id", "forged-id"),
    ];
    let r = s.send(s.sigma_addr, "GET", "/metrics", &forged, b"");
    assert_eq!(r.status, 403, "direct, forged XFF: {r:?}");
    let r = request(s.sigma_addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "from 127.0.0.1: {}", r.status);

    // The upstream hears of the resolved client and the request id, and
    // none of the client's forwarding headers.
    let r = s.send(s.sigma_addr, "GET", "/up/x", &forged, b"");
    assert_eq!(r.status, 200, "{r:?}");
    let head = s.up.next_head();
    assert!(head.contains("x-forwarded-for: 127.0.0.3\r\n"), "{head}");
    assert!(!head.contains("forged"), "{head}");
    assert!(!head.contains("forwarded: for"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("X-Request-Id upstream")
        .to_owned();
    assert!(
        id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // Through nginx, nginx's request id is the one passed on.
    let r = s.via_nginx("GET", "/up/y", &[("X-Request-Id", "forged-id")], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let nginx_id = r
        .header("x-request-id")
        .expect("nginx's id")
        .to_ascii_lowercase();
    let head = s.up.next_head();
    assert!(
        head.contains(&format!("x-request-id: {nginx_id}\r\n")),
        "{nginx_id}: {head}"
    );
    assert!(head.contains("x-forwarded-for: 127.0.0.3\r\n"), "{head}");

    // The access log saw the same clients: the direct forged request is
    // logged as 127.0.0.3, with sigma's own id, not the forged one.
    let lines = s.log_lines("sigma::access", |l| access_line(l, &id).is_some());
    let f = access_line(&lines, &id).unwrap_or_else(|| panic!("no line for {id}: {lines:?}"));
    assert_access_shape(f, &["user"]);
    assert_eq!(f["client"], "127.0.0.3");
    assert_eq!(f["path"], "/up/x");
    assert_eq!(f["status"].as_u64(), Some(200));
    assert_eq!(f["bytes_out"].as_u64(), Some(2));
    assert_eq!(f["route"], "/up");
    assert!(
        f["dest"].as_str().unwrap().starts_with("http://127.0.0.1:"),
        "{f:?}"
    );
    let metrics = lines
        .iter()
        .map(fields)
        .find(|f| f["path"] == "/metrics" && f["status"] == 403)
        .expect("the refused /metrics line");
    assert_access_shape(metrics, &["user", "route"]);
    assert_eq!(metrics["dest"], "&sigma");
}

/// Failed logins and bad tokens are security events at WARN with the
/// client's address (what fail2ban reads).
#[test]
fn failed_logins_and_bad_tokens_are_security_events() {
    let s = Setup::start(true);
    let origin = s.origin();
    let r = s.via_nginx(
        "POST",
        "/login",
        &browser_post(&origin, "application/x-www-form-urlencoded"),
        b"user=alice&password=wrong",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = s.via_nginx(
        "GET",
        "/db/x",
        &[("Authorization", "Bearer not.a.token")],
        b"",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let has = |l: &[Value], e: &str| {
        l.iter()
            .map(fields)
            .any(|f| f.get("event") == Some(&Value::from(e)))
    };
    let sec = s.log_lines("sigma::security", |l| {
        has(l, "login_failed") && has(l, "bad_token")
    });
    let find = |e: &str| {
        sec.iter()
            .find(|l| fields(l).get("event") == Some(&Value::from(e)))
            .unwrap_or_else(|| panic!("no {e} event: {sec:?}"))
    };
    let failed = find("login_failed");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(fields(failed)["user"], "alice");
    assert_eq!(fields(failed)["client"], "127.0.0.3");
    let bad = find("bad_token");
    assert_eq!(bad["level"], "WARN");
    assert_eq!(fields(bad)["client"], "127.0.0.3");
    assert_eq!(fields(bad)["path"], "/db/x");
    // And the refused requests are in the access log.
    let lines = s.log_lines("sigma::access", |l| {
        l.iter().map(fields).any(|f| f["path"] == "/db/x")
    });
    let f = lines
        .iter()
        .map(fields)
        .find(|f| f["path"] == "/db/x")
        .expect("the bad token's access line");
    assert_access_shape(f, &["user", "route"]);
    assert_eq!(f["status"].as_u64(), Some(401));
}

/// A masked client frame (small payloads).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let len = u8::try_from(payload.len()).expect("a small frame");
    assert!(len < 126, "a small frame");
    let mut f = vec![0x80 | opcode, 0x80 | len];
    f.extend_from_slice(&key);
    f.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    f
}

/// A WebSocket through nginx (the snippet's `Upgrade`/`Connection`
/// headers) has one access line when it ends: status 101, the message
/// bytes both ways, the route and the request id.
#[test]
fn a_websocket_session_through_nginx_is_one_access_line_when_it_ends() {
    let s = Setup::start(true);
    let origin = s.origin();
    let mut c = Client::from_stream(connect_from(BROWSER, s.nginx.addr));
    c.send(&request_bytes(
        s.nginx.addr,
        "GET",
        "/echo",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", &origin),
        ],
        b"",
    ));
    let r = c.read_head_response();
    assert_eq!(r.status, 101, "{r:?}");
    let req = r
        .header("x-request-id")
        .expect("nginx's request id")
        .to_owned();
    c.send(&ws_frame(0x1, b"hello"));
    c.expect_bytes(b"\x81\x05hello");
    // No line while the session is open.
    let open = json_lines(&s.sigma.stderr(), "sigma::access");
    assert!(access_line(&open, &req).is_none(), "{open:?}");
    c.send(&ws_frame(0x8, &[0x03, 0xe8]));
    c.expect_bytes(&[0x88, 0x02, 0x03, 0xe8]);
    drop(c);
    let lines = s.log_lines("sigma::access", |l| access_line(l, &req).is_some());
    let f = access_line(&lines, &req).unwrap_or_else(|| panic!("no line for {req}: {lines:?}"));
    assert_access_shape(f, &["user"]);
    assert_eq!(f["status"].as_u64(), Some(101));
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/echo");
    assert_eq!(f["client"], "127.0.0.3");
    assert_eq!(
        (f["bytes_in"].as_u64(), f["bytes_out"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(f["route"], "/echo");
    assert_eq!(f["dest"], "&echo");
}

/// `[log] access = false`: no access lines, security events still.
#[test]
fn the_access_log_can_be_turned_off() {
    let data = TempDir(temp_dir("no-access-log"));
    let l = Server::launch_with(
        "[log]\naccess = false\n",
        &data.0.join("data"),
        "T127.0.0.1:0[HA]",
        &[("SIGMA_LOG", "info")],
        &["--log-format", "json"],
    );
    let addr = l.addrs[0];
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").status, 200);
    // A later bad token's security event marks that the request above
    // was logged if it ever will be (lines go out as responses do).
    let r = request(
        addr,
        "GET",
        "/db/x",
        &[("Authorization", "Bearer x.y.z")],
        b"",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while json_lines(&l.server.stderr(), "sigma::security").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no security event: {}",
            l.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let access = json_lines(&l.server.stderr(), "sigma::access");
    assert!(access.is_empty(), "{access:?}");
}
