//! ACME through the real server (DESIGN §2a, issue #16): `sigma serve`
//! with `[tls.acme]` and no certificate file, against Debian's `pebble`
//! with real validation (`PEBBLE_VA_ALWAYS_VALID=0`). pebble's DNS
//! (`pebble-challtestsrv`) answers every name with 127.0.0.1, so pebble
//! validates by connecting to sigma's own listeners: `tls-alpn-01` on the
//! `[SHA]` listener, `http-01` on the plain `[H]` one.
//!
//! Each test: the certificate is issued and served, kept across a restart
//! (served with pebble gone, so from the data directory), and — made
//! short-lived — renewed by the running server. The pebble harness is the
//! one of `crates/sigma-tls/tests`; without pebble (and no apt) the tests
//! skip loudly, under `CI=true` they fail.

mod common;

#[path = "../../sigma-tls/tests/support/pebble.rs"]
mod pebble;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{temp_dir, Server};
use pebble::{free_tcp_port, have_pebble, Pebble};

/// What `openssl s_client` gets from `port` for SNI `name`: the leaf's
/// text (subject, issuer, SANs, serial), or `None` when no handshake.
fn served(port: u16, name: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial -issuer -ext subjectAltName 2>/dev/null"
        ))
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.contains("serial=").then_some(text)
}

/// Polls until the served leaf for `name` satisfies `ok` (deadline
/// `limit`).
fn wait_served(port: u16, name: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = served(port, name).filter(|t| ok(t)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no suitable certificate for {name}"
        );
        std::thread::park_timeout(Duration::from_millis(200));
    }
}

fn config(p: &Pebble, domain: &str, challenge: &str) -> String {
    format!(
        "[tls.acme]\ndirectory = \"{}\"\ndomains = [\"{domain}\"]\nchallenge = \"{challenge}\"\nca = {:?}\nemail = \"ops@sigma.test\"\n",
        p.directory,
        p.ca.display().to_string()
    )
}

fn issue_keep_renew(challenge: &str, domain: &str) {
    if !have_pebble() {
        return;
    }
    let (tls_port, http_port) = (free_tcp_port(), free_tcp_port());
    let pipeline = format!("T127.0.0.1:{tls_port}[SHA] T127.0.0.1:{http_port}[H]");
    let data = temp_dir("acme-data");

    // 1. Issued at start-up through the server's own listeners.
    let first = {
        let p = Pebble::start(http_port, tls_port, 3600);
        let s = Server::launch(&config(&p, domain, challenge), &data, &pipeline).server;
        let leaf = wait_served(tls_port, domain, Duration::from_secs(60), |t| {
            t.contains(&format!("DNS:{domain}")) && t.to_lowercase().contains("pebble")
        });
        let log = p.log();
        // pebble really connected to sigma's listener and checked it.
        if challenge == "http-01" {
            assert!(log.contains("validate w/ HTTP"), "{log}");
        } else {
            let m = get(http_port, "/metrics");
            let n: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("sigma_tls_acme_validations_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            assert!(n >= 1, "sigma answered no tls-alpn-01 validation: {m}");
        }
        assert!(log.contains("set VALID by completed challenge"), "{log}");
        assert!(data.join("acme/cert.pem").exists());
        assert!(data.join("acme/account.json").exists());
        drop(s);
        leaf
    };

    // 2. Kept across a restart: pebble is gone, the data directory serves.
    {
        let s = Server::launch(&config_without(&data, domain, challenge), &data, &pipeline).server;
        let again = wait_served(tls_port, domain, Duration::from_secs(10), |_| true);
        assert_eq!(serial(&again), serial(&first));
        drop(s);
    }

    // 3. Renewed by itself when short-lived (a third of 12 s left).
    let p = Pebble::start(http_port, tls_port, 12);
    // A fresh pebble knows neither the account nor the certificate.
    std::fs::remove_dir_all(data.join("acme")).unwrap();
    let s = Server::launch(&config(&p, domain, challenge), &data, &pipeline).server;
    let short = wait_served(tls_port, domain, Duration::from_secs(60), |t| {
        serial(t) != serial(&first)
    });
    let renewed = wait_served(tls_port, domain, Duration::from_secs(60), |t| {
        serial(t) != serial(&short)
    });
    assert!(renewed.contains(&format!("DNS:{domain}")));
    drop(s);
}

/// The same `[tls.acme]`, pointing at a directory that does not answer.
fn config_without(_data: &Path, domain: &str, challenge: &str) -> String {
    format!(
        "[tls.acme]\ndirectory = \"https://127.0.0.1:1/dir\"\ndomains = [\"{domain}\"]\nchallenge = \"{challenge}\"\n"
    )
}

/// `GET path` on the plain listener.
fn get(port: u16, path: &str) -> String {
    let mut c = common::Client::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    c.read_response().body_str()
}

fn serial(leaf: &str) -> String {
    leaf.lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn tls_alpn01_through_the_server_issue_keep_renew() {
    issue_keep_renew("tls-alpn-01", "alpn.sigma.test");
}

#[test]
fn http01_through_the_server_issue_keep_renew() {
    issue_keep_renew("http-01", "http.sigma.test");
}
