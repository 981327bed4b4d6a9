//! `sigma user …` while `sigma serve` runs on the same data directory
//! (DESIGN §8): the commands go through the server's admin socket
//! (`DATA_DIR/admin.sock`, mode 0600) and take effect at once; a missing
//! data directory is an error; `admin` is created only once the
//! listeners are bound. Real binary, real sockets.

mod common;

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// `sigma user ARGS… --data DIR` with `stdin`: (exit code, stdout, stderr).
fn user(dir: &Path, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = sigma_cmd();
    cmd.arg("user").args(args).arg("--data").arg(dir);
    let (st, out, err) = run_bounded(cmd, stdin.map(str::as_bytes));
    (st.code(), out, err)
}

fn ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = user(dir, args, stdin);
    assert_eq!(code, Some(0), "sigma user {args:?}: stderr: {err}");
    out
}

/// `POST /login`; the session cookie on success.
fn login(addr: SocketAddr, name: &str, pw: &str) -> Option<String> {
    try_login(addr, name, pw)
}

/// `GET /auth/whoami` with `cookie` (a `sigma_session=…` pair).
fn whoami(addr: SocketAddr, cookie: &str) -> Value {
    let r = request(addr, "GET", "/auth/whoami", &[("Cookie", cookie)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_slice::<Value>(&r.body).expect("JSON")["user"].clone()
}

/// One raw request line to the admin socket; its JSON answer.
fn ask(socket: &Path, line: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect admin.sock");
    s.write_all(line).expect("write");
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).expect("read");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn user_commands_while_serving_take_effect_at_once() {
    let data = temp_dir("admin-live");
    let l = Server::launch("", &data, "T127.0.0.1:0[HA]");
    let addr = l.server.addr();
    let socket = data.join("admin.sock");
    let mode = fs::metadata(&socket)
        .expect("admin.sock")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    // add: the next request can log in.
    assert_eq!(
        ok(&data, &["add", "bob", "--password-stdin"], Some("pw one\n")),
        "added user bob\n"
    );
    let (code, _, err) = user(&data, &["add", "bob", "--password-stdin"], Some("x\n"));
    assert_eq!(code, Some(2));
    assert_eq!(err.trim(), "sigma: user bob already exists");
    assert_eq!(ok(&data, &["list"], None), "admin\nbob\n");
    let first = login(addr, "bob", "pw one").expect("bob logs in");
    assert_eq!(whoami(addr, &first), "bob");

    // passwd: the session open in the server ends now, not at its expiry.
    let out = ok(
        &data,
        &["passwd", "bob", "--password-stdin"],
        Some("pw two\n"),
    );
    assert!(out.starts_with("changed the password of bob"), "{out}");
    assert_eq!(whoami(addr, &first), Value::Null);
    assert!(login(addr, "bob", "pw one").is_none());
    let second = login(addr, "bob", "pw two").expect("the new password");
    assert_eq!(whoami(addr, &second), "bob");

    // del: gone from the server at once.
    assert_eq!(
        ok(&data, &["del", "bob"], None),
        "deleted user bob (0 &db keys)\n"
    );
    assert_eq!(whoami(addr, &second), Value::Null);
    assert!(login(addr, "bob", "pw two").is_none());
    let (code, _, err) = user(&data, &["del", "bob"], None);
    assert_eq!((code, err.trim()), (Some(2), "sigma: no such user: bob"));

    // Killed (no clean shutdown): the stale socket file answers nobody,
    // so the CLI opens the store itself, and the next server binds again.
    drop(l);
    assert!(socket.exists(), "a killed server leaves its socket file");
    assert_eq!(ok(&data, &["list"], None), "admin\n");
    let l = Server::launch("", &data, "T127.0.0.1:0[HA]");
    assert_eq!(
        ok(&data, &["add", "carol", "--password-stdin"], Some("pw\n")),
        "added user carol\n"
    );
    assert!(login(l.server.addr(), "carol", "pw").is_some());
}

#[test]
fn the_admin_socket_refuses_bad_requests_and_goes_on() {
    let data = temp_dir("admin-bad");
    let l = Server::launch("", &data, "T127.0.0.1:0[HA]");
    let socket = data.join("admin.sock");
    for (line, want) in [
        (&b"hello\n"[..], "bad request"),
        (br#"{"op":"rm","name":"admin"}"#, "bad request"),
        (
            br#"{"op":"add","name":"a b","phc":"x"}"# as &[u8],
            "invalid user name",
        ),
        (br#"{"op":"list","extra":1}"#, "bad request"),
    ] {
        let mut line = line.to_vec();
        line.push(b'\n');
        let v = ask(&socket, &line);
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty() && msg.contains(want), "{line:?}: {v}");
    }
    // A hash that is not Argon2id is refused: no user without a password.
    let v = ask(
        &socket,
        b"{\"op\":\"add\",\"name\":\"eve\",\"phc\":\"plain\"}\n",
    );
    assert_eq!(v["error"]["message"], "not an Argon2id password hash");
    // Too long, and no newline: refused without reading more.
    let mut long = vec![b'x'; 5000];
    long.push(b'\n');
    let v = ask(&socket, &long);
    assert_eq!(v["error"]["message"], "request too long or unterminated");
    let mut s = UnixStream::connect(&socket).expect("connect");
    s.write_all(b"{\"op\":\"list\"}").expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.contains("unterminated"), "{answer}");
    // The server and the socket still work.
    assert_eq!(
        ask(&socket, b"{\"op\":\"list\"}\n"),
        json!({"ok": ["admin"]})
    );
    let r = request(l.server.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn another_unix_user_is_refused() {
    // Needs root to act as another user (CI runs as root).
    let me = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        eprintln!("skipped: not root");
        return;
    }
    let data = temp_dir("admin-uid");
    let _l = Server::launch("", &data, "T127.0.0.1:0[HA]");
    let socket = data.join("admin.sock");
    // Open the file and the directories to everyone, as a mistaken chmod
    // (or the moment between bind and chmod) would: the peer check holds.
    let mut p = Some(socket.as_path());
    while let Some(dir) = p {
        if dir == Path::new("/") || dir == std::env::temp_dir() {
            break;
        }
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o777));
        p = dir.parent();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(sigma_bin())
        .args(["user", "list", "--data"])
        .arg(&data)
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("permission denied: not the server's user"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "listed users: {:?}", out.stdout);
}

#[test]
fn a_missing_data_directory_is_an_error() {
    let base = temp_dir("admin-missing");
    let missing = base.join("typo");
    for args in [
        &["list"][..],
        &["del", "bob"],
        &["passwd", "bob", "--password-stdin"],
    ] {
        let (code, out, err) = user(&missing, args, Some("pw\n"));
        assert_eq!(code, Some(2), "{args:?}: {out} {err}");
        assert_eq!(err.lines().count(), 1, "printed once: {err}");
        assert!(
            err.starts_with(&format!("sigma: no data directory {}", missing.display())),
            "{err}"
        );
        assert!(!missing.exists(), "{args:?} created the directory");
    }
    // `add` seeds a new store, as the first start would.
    assert_eq!(
        ok(&missing, &["add", "bob", "--password-stdin"], Some("pw\n")),
        "added user bob\n"
    );
    assert_eq!(ok(&missing, &["list"], None), "bob\n");
}

#[test]
fn a_busy_port_creates_no_admin() {
    let data = temp_dir("admin-busy");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--data")
        .arg(&data)
        .arg("--pipeline")
        .arg(format!("T127.0.0.1:{port}[HA]"));
    let (st, out, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!out.contains("admin"), "a password was printed: {out}");
    // The store was opened (and is empty): the next start creates admin.
    assert_eq!(ok(&data, &["list"], None), "");
    drop(busy);
}
