//! `sigma user add|del|list|passwd` and the first-start `admin` account,
//! driven through the real binary (DESIGN §8, §9): exit status 0 on
//! success, 2 with the message on stderr for usage errors, a plain message
//! when a running server holds the data directory without answering on
//! its admin socket.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Runs `sigma user ARGS… --data DIR` with `stdin`.
fn user(dir: &Path, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = sigma_cmd();
    cmd.arg("user").args(args).arg("--data").arg(dir);
    let (st, out, err) = run_bounded(cmd, stdin.map(str::as_bytes));
    (st.code(), out, err)
}

fn list(dir: &Path) -> Vec<String> {
    let (code, out, err) = user(dir, &["list"], None);
    assert_eq!(code, Some(0), "stderr: {err}");
    out.lines().map(str::to_owned).collect()
}

/// A `sigma serve` on `data`, killed on drop; `stdout` holds what it
/// printed before `listening on`.
struct Serve {
    child: Child,
    stdout: Vec<String>,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        let mut cmd = sigma_cmd();
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--pipeline")
            .arg("T127.0.0.1:0[HA]")
            .arg("--workers")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn sigma serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stdout = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("listening on ") => break,
                Ok(line) => stdout.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sigma serve did not start; stdout: {stdout:?}");
                }
            }
        }
        Serve { child, stdout }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        Self(temp_dir(tag))
    }
    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn add_list_passwd_del_round_trip() {
    let t = TempDir::new("users-rt");
    let d = t.data();
    let (code, out, err) = user(&d, &["add", "bob", "--password-stdin"], Some("pw one\n"));
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "added user bob\n");
    let (code, _, err) = user(
        &d,
        &["add", "alice@example.com", "--password-stdin"],
        Some("pw two\r\n"),
    );
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(list(&d), vec!["alice@example.com", "bob"]);

    let (code, out, err) = user(&d, &["passwd", "bob", "--password-stdin"], Some("new pw\n"));
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(out.starts_with("changed the password of bob"), "{out}");

    let (code, out, err) = user(&d, &["del", "bob"], None);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(out, "deleted user bob (0 &db keys)\n");
    assert_eq!(list(&d), vec!["alice@example.com"]);
}

#[test]
fn duplicate_add_exits_2() {
    let t = TempDir::new("users-dup");
    let d = t.data();
    let (code, _, err) = user(&d, &["add", "bob", "--password-stdin"], Some("pw\n"));
    assert_eq!(code, Some(0), "stderr: {err}");
    let (code, out, err) = user(&d, &["add", "bob", "--password-stdin"], Some("other\n"));
    assert_eq!(code, Some(2), "stdout: {out}");
    assert!(err.contains("user bob already exists"), "{err}");
    assert_eq!(list(&d), vec!["bob"]);
}

#[test]
fn bad_names_exit_2() {
    let t = TempDir::new("users-badname");
    let d = t.data();
    let long = "x".repeat(65);
    for name in ["a b", "a/b", "é", "a:b", long.as_str(), ""] {
        let (code, _, err) = user(&d, &["add", name, "--password-stdin"], Some("pw\n"));
        assert_eq!(code, Some(2), "{name:?}: stderr: {err}");
        assert!(err.contains("invalid user name"), "{name:?}: {err}");
    }
    let (code, _, err) = user(&d, &["del", "a b"], None);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("invalid user name"), "{err}");
    // Refused before anything was created.
    assert!(!d.exists(), "a refused add created {}", d.display());
}

#[test]
fn empty_or_missing_password_exits_2() {
    let t = TempDir::new("users-nopw");
    let d = t.data();
    for stdin in ["", "\n", "\r\n"] {
        let (code, _, err) = user(&d, &["add", "bob", "--password-stdin"], Some(stdin));
        assert_eq!(code, Some(2), "{stdin:?}: stderr: {err}");
        assert!(err.contains("the password is empty"), "{stdin:?}: {err}");
    }
    let long = format!("{}\n", "p".repeat(1025));
    let (code, _, err) = user(&d, &["add", "bob", "--password-stdin"], Some(&long));
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("at most 1024"), "{err}");
    assert!(!err.contains("ppppp"), "the password leaked: {err}");
    // No --password-stdin and no terminal: a usage error, not a hang.
    let (code, _, err) = user(&d, &["add", "bob"], None);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("--password-stdin"), "{err}");
    assert_eq!(list(&d), Vec::<String>::new());
}

#[test]
fn unknown_user_for_del_and_passwd_exits_2() {
    let t = TempDir::new("users-nouser");
    let d = t.data();
    fs::create_dir_all(&d).expect("mkdir");
    let (code, _, err) = user(&d, &["del", "ghost"], None);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("no such user: ghost"), "{err}");
    let (code, _, err) = user(&d, &["passwd", "ghost", "--password-stdin"], Some("pw\n"));
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("no such user: ghost"), "{err}");
}

#[test]
fn data_dir_from_config() {
    let t = TempDir::new("users-cfg");
    let d = t.0.join("configured");
    fs::create_dir_all(&t.0).expect("mkdir");
    let cfg = t.0.join("sigma.toml");
    fs::write(&cfg, format!("data_dir = {:?}\n", d.display().to_string())).expect("config");
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", "carol", "--password-stdin", "--config"])
        .arg(&cfg);
    let (st, _, err) = run_bounded(cmd, Some(b"pw\n"));
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    assert_eq!(list(&d), vec!["carol"]);
}

#[test]
fn first_start_prints_the_admin_password_exactly_once() {
    let t = TempDir::new("users-first");
    let d = t.data();
    let pw = {
        let s = Serve::start(&d);
        let created: Vec<&String> = s.stdout.iter().filter(|l| l.contains("admin")).collect();
        assert_eq!(created.len(), 2, "stdout: {:?}", s.stdout);
        let pw = created[0]
            .strip_prefix("created user admin with password ")
            .unwrap_or_else(|| panic!("stdout: {:?}", s.stdout))
            .to_owned();
        assert_eq!(pw.len(), 20, "{pw:?}");
        assert!(pw.bytes().all(|b| b.is_ascii_alphanumeric()), "{pw:?}");
        assert_eq!(
            created[1],
            "change it with: sigma user passwd admin --password-stdin"
        );
        pw
    };
    // Killed, not shut down: the account was written durably.
    let s = Serve::start(&d);
    assert!(
        !s.stdout.iter().any(|l| l.contains("admin")),
        "second start mentions admin: {:?}",
        s.stdout
    );
    assert!(
        !s.stdout.iter().any(|l| l.contains(&pw)),
        "second start repeats the password"
    );
    drop(s);
    assert_eq!(list(&d), vec!["admin"]);
}

#[test]
fn no_admin_when_users_exist() {
    let t = TempDir::new("users-noadmin");
    let d = t.data();
    let (code, _, err) = user(&d, &["add", "bob", "--password-stdin"], Some("pw\n"));
    assert_eq!(code, Some(0), "stderr: {err}");
    let s = Serve::start(&d);
    assert!(
        !s.stdout.iter().any(|l| l.contains("admin")),
        "{:?}",
        s.stdout
    );
    drop(s);
    assert_eq!(list(&d), vec!["bob"]);
}

#[test]
fn locked_data_dir_gives_a_plain_message_and_exit_1() {
    // A locked store is a runtime failure (DESIGN §8: exit 1), not a
    // usage or configuration error (2). While the server runs, `sigma
    // user` talks to it (tests/admin_socket.rs); without its admin socket
    // (removed here) the CLI meets the lock.
    let t = TempDir::new("users-locked");
    let d = t.data();
    let _s = Serve::start(&d);
    fs::remove_file(d.join("admin.sock")).expect("remove admin.sock");
    let want = format!(
        "the data directory {} is in use by another sigma process",
        d.display()
    );

    let (code, _, err) = user(&d, &["add", "bob", "--password-stdin"], Some("pw\n"));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = user(&d, &["list"], None);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains(&want), "{err}");

    // A second server on the same data directory refuses to start.
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--data")
        .arg(&d)
        .arg("--pipeline")
        .arg("T127.0.0.1:0[HA]");
    let (st, out, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains(&want), "{err}");
    assert!(!out.contains("listening on"), "{out}");
}
