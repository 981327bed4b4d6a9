//! What docs/deployment.md promises an operator: `examples/sigma.toml`
//! (and its direct-TLS variant) and every TOML snippet of the page pass
//! `sigma check`; the systemd unit's `Type=notify` is real: READY=1 once
//! the listeners are bound, RELOADING=1 then READY=1 around a SIGHUP,
//! STOPPING=1 on SIGTERM, on a real `$NOTIFY_SOCKET`.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `sigma check` on `toml` (through `SIGMA_CONFIG`, as the unit runs it):
/// exit status and output.
fn check(tag: &str, toml: &str) -> (Option<i32>, String, String) {
    let (_, cfg) = write_temp_config(tag, toml);
    let mut cmd = sigma_cmd();
    cmd.arg("check").env("SIGMA_CONFIG", &cfg);
    let (st, out, err) = run_bounded(cmd, None);
    (st.code(), out, err)
}

fn assert_checks(tag: &str, toml: &str) -> String {
    let (code, out, err) = check(tag, toml);
    assert_eq!(code, Some(0), "{tag}: stderr: {err}\n--- config:\n{toml}");
    assert!(out.trim_end().ends_with("ok"), "{tag}: {out}");
    out
}

#[test]
fn the_example_config_passes_sigma_check() {
    let toml = fs::read_to_string(repo().join("examples/sigma.toml")).expect("examples/sigma.toml");
    let out = assert_checks("example", &toml);
    // What it says it configures is what sigma resolved.
    assert!(out.contains("T127.0.0.1:3000[HA]"), "{out}");
    assert!(out.contains("/api"), "{out}");

    // Its commented direct-TLS variant: the other pipeline and the
    // `[tls]` tables uncommented.
    let direct: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("pipeline = ") {
                "pipeline = \"T0.0.0.0:443[SHA] T0.0.0.0:80[H]\"".to_owned()
            } else if let Some(rest) = l.strip_prefix("# ").filter(|r| {
                r.starts_with("[tls")
                    || [
                        "directory",
                        "email",
                        "domains",
                        "challenge",
                        "redirect",
                        "hsts",
                    ]
                    .iter()
                    .any(|k| r.starts_with(&format!("{k} =")))
            }) {
                rest.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(direct.contains("\n[tls.acme]\n"), "{direct}");
    let out = assert_checks("example-tls", &direct);
    assert!(out.contains("[SHA]"), "{out}");
}

#[test]
fn every_toml_snippet_of_the_deployment_page_passes_sigma_check() {
    let page = fs::read_to_string(repo().join("docs/deployment.md")).expect("deployment.md");
    let blocks = fenced(&page, "toml");
    assert!(blocks.len() >= 2, "{blocks:?}");
    for (i, b) in blocks.iter().enumerate() {
        assert_checks(&format!("deployment-{i}"), b);
    }
}

#[test]
fn the_systemd_unit_is_type_notify_and_reloads_with_sighup() {
    let unit = fs::read_to_string(repo().join("examples/sigma.service")).expect("sigma.service");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Environment=SIGMA_CONFIG=/etc/sigma/sigma.toml",
        "ExecStart=/usr/local/bin/sigma serve",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
}

/// Every fenced block of `lang` in the Markdown `page`.
pub fn fenced(page: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in page.lines() {
        match &mut cur {
            None if line.trim_end() == format!("```{lang}") => cur = Some(String::new()),
            Some(_) if line.trim_end() == "```" => out.extend(cur.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The next datagram on `sock`, as text.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_ready_reloading_stopping() {
    let dir = temp_dir("notify");
    fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify = path.to_str().expect("utf-8 path").to_owned();
    let mut l = Server::launch_with(
        "",
        &dir.join("data"),
        "T127.0.0.1:0[HA]",
        &[("SIGMA_LOG", "warn"), ("NOTIFY_SOCKET", &notify)],
        &[],
    );
    // READY=1 comes once the listeners answer.
    assert_eq!(next(&sock).trim(), "READY=1");
    let r = request(l.server.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);

    l.server.signal("HUP");
    let reloading = next(&sock);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
    let usec = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(usec.is_some_and(|u| u > 0), "{reloading:?}");
    assert_eq!(next(&sock).trim(), "READY=1");

    l.server.signal("TERM");
    assert_eq!(next(&sock).trim(), "STOPPING=1");
    let (st, _) = l.server.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0));
}
