//! `S` end to end (DESIGN §2a, issue #16): the real binary on
//! `T127.0.0.1:0[SHA] T127.0.0.1:0[H]`, real clients (`curl --cacert`,
//! Python's `ssl`, `openssl s_client`), certificates from a test CA made
//! with rcgen.
//!
//! Every wait is a read or a poll with a deadline; nothing sleeps to
//! synchronise.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_bounded, sigma_cmd, temp_dir, Server};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const PIPELINE: &str = "T127.0.0.1:0[SHA] T127.0.0.1:0[H]";

/// A running server and its listeners (TLS first, then plain).
struct Tls {
    server: Server,
    addrs: Vec<SocketAddr>,
}

impl std::ops::Deref for Tls {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

fn start(config: &str, pipeline: &str) -> Tls {
    let data = temp_dir("tls-data");
    let l = Server::launch(config, &data, pipeline);
    Tls {
        server: l.server,
        addrs: l.addrs,
    }
}

/// A test CA writing leaf certificates to files.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = temp_dir(tag);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sigma tls test CA");
        let ca = params.self_signed(&key).unwrap();
        fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `NAME.pem` and `NAME.key` for `names`; returns their paths.
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_with(file, names, |_| {})
    }

    fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        // Written whole then renamed, as a deployment's reload would.
        fs::write(c.with_extension("tmp"), cert.pem()).unwrap();
        fs::rename(c.with_extension("tmp"), &c).unwrap();
        fs::write(k.with_extension("tmpk"), key.serialize_pem()).unwrap();
        fs::rename(k.with_extension("tmpk"), &k).unwrap();
        (c, k)
    }
}

fn tls_config(cert: &Path, key: &Path, rest: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n{rest}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// `curl` with the test CA, `NAME` resolved to the server: (exit ok,
/// stdout).
fn curl(ca: &Path, name: &str, addr: SocketAddr, path: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .args(extra)
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs a Python 3 script (the system's `python3`: its `ssl` module is
/// the client under test) with `args`; returns stdout, panicking with
/// stderr on failure.
fn python(script: &str, args: &[String]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "python failed: {err}\nstdout: {out}");
    out
}

/// Python: one handshake per line of output, `NAME VERSION ALPN CN
/// RESUMED` or `NAME refused REASON`.
const PY_PROBE: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
contexts = {}
def context(version, alpn, verify):
    key = (version, alpn, verify)
    if key not in contexts:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations(ca)
        c.check_hostname = verify
        if version is not None:
            c.minimum_version = c.maximum_version = version
            if version < ssl.TLSVersion.TLSv1_2:
                c.set_ciphers("ALL:@SECLEVEL=0")
        c.set_alpn_protocols(list(alpn))
        contexts[key] = c
    return contexts[key]
def probe(sni, version=None, alpn=("h2", "http/1.1"), session=None, verify=True):
    c = context(version, alpn, verify)
    try:
        s = c.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                          server_hostname=sni, session=session)
    except (ssl.SSLError, OSError) as e:
        print(sni, "refused", type(e).__name__, getattr(e, "reason", ""))
        return None
    cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + sni.encode() + b"\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        body += d
    status = body.split(b"\r\n", 1)[0].decode()
    print(sni, s.version(), s.selected_alpn_protocol(), cn, s.session_reused, status.replace(" ", "_"))
    sess = s.session
    s.close()
    return sess
"#;

/// A Python probe script: [`PY_PROBE`] plus `body`.
fn probe(port: u16, ca: &Path, body: &str) -> Vec<String> {
    let script = format!("{PY_PROBE}\n{body}\n");
    python(&script, &[port.to_string(), ca.display().to_string()])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One request on a new plain connection.
fn get(addr: SocketAddr, request: &str) -> common::Resp {
    let mut c = common::Client::connect(addr);
    c.send(request.as_bytes());
    c.read_response()
}

fn metrics(ca: &Path, addr: SocketAddr) -> String {
    let (ok, out) = curl(ca, "a.test", addr, "/metrics", &[]);
    assert!(ok, "{out}");
    out
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in {text}"))
}

#[test]
fn curl_gets_http11_over_tls_with_hsts() {
    let pki = Pki::new("tls-curl");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(
        &tls_config(&c, &k, "[tls.http]\nhsts = \"max-age=600\"\n"),
        PIPELINE,
    );
    let tls = s.addrs[0];
    // curl offers h2 too: ALPN must settle on http/1.1.
    let (ok, out) = curl(&pki.ca(), "a.test", tls, "/healthz", &["--http2", "-v"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("ALPN: server accepted http/1.1"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=600"),
        "{out}"
    );
    // Keep-alive: two requests, one connection.
    let url = format!("https://a.test:{}/healthz", tls.port());
    let (ok, out) = curl(&pki.ca(), "a.test", tls, "/healthz", &[&url]);
    assert!(ok && out.matches("HTTP/1.1 200").count() == 2, "{out}");
    // The plain listener carries no HSTS.
    let plain = s.addrs[1];
    let raw = get(plain, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(raw.status, 200);
    assert!(raw.header("strict-transport-security").is_none());
    let m = metrics(&pki.ca(), tls);
    assert!(metric(&m, "sigma_tls_handshakes_total") >= 3, "{m}");
}

#[test]
fn python_ssl_tls12_and_13_accepted_tls11_refused_sessions_resume() {
    let pki = Pki::new("tls-py");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(&tls_config(&c, &k, ""), PIPELINE);
    let out = probe(
        s.addrs[0].port(),
        &pki.ca(),
        r#"
sess = probe("a.test", ssl.TLSVersion.TLSv1_2)
probe("a.test", ssl.TLSVersion.TLSv1_2, session=sess)
probe("a.test", ssl.TLSVersion.TLSv1_3)
probe("a.test", ssl.TLSVersion.TLSv1_1)
probe("a.test", alpn=("h2",))
"#,
    );
    assert_eq!(out.len(), 5, "{out:?}");
    assert_eq!(
        out[0],
        "a.test TLSv1.2 http/1.1 a.test False HTTP/1.1_200_OK"
    );
    assert_eq!(
        out[1],
        "a.test TLSv1.2 http/1.1 a.test True HTTP/1.1_200_OK"
    );
    assert_eq!(
        out[2],
        "a.test TLSv1.3 http/1.1 a.test False HTTP/1.1_200_OK"
    );
    assert!(out[3].starts_with("a.test refused"), "{out:?}");
    // Only h2 offered: no common protocol, refused (never h2).
    assert!(out[4].starts_with("a.test refused"), "{out:?}");
    let m = metrics(&pki.ca(), s.addrs[0]);
    assert!(metric(&m, "sigma_tls_resumed_total") >= 1, "{m}");
    assert!(
        metric(
            &m,
            "sigma_rejections_total{reason=\"tls_peer_incompatible\"}"
        ) >= 2,
        "{m}"
    );
}

#[test]
fn sni_picks_among_two_certificates_and_defaults_to_the_first() {
    let pki = Pki::new("tls-sni");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let (bc, bk) = pki.leaf("b", &["b.test", "*.b.test"]);
    let extra = format!(
        "[[tls.extra]]\ncert = {:?}\nkey = {:?}\n",
        bc.display().to_string(),
        bk.display().to_string()
    );
    let s = start(&tls_config(&c, &k, &extra), PIPELINE);
    let out = probe(
        s.addrs[0].port(),
        &pki.ca(),
        r#"
probe("a.test")
probe("b.test")
probe("www.b.test")
probe("other.test", verify=False)
"#,
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(out[0].contains(" a.test False HTTP/1.1_200"), "{out:?}");
    assert!(out[1].contains(" b.test False HTTP/1.1_200"), "{out:?}");
    assert!(out[2].contains(" b.test False HTTP/1.1_200"), "{out:?}");
    // An unknown name gets the first certificate.
    assert!(out[3].contains(" a.test False HTTP/1.1_200"), "{out:?}");
}

#[test]
fn plain_http_on_the_tls_port_gets_a_clean_400_and_is_counted() {
    let pki = Pki::new("tls-plain");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(&tls_config(&c, &k, ""), PIPELINE);
    let mut sock = TcpStream::connect(s.addrs[0]).unwrap();
    sock.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    // EOF, not a reset and not a hang.
    sock.read_to_end(&mut got).expect("clean close");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("https://"), "{text}");
    let m = metrics(&pki.ca(), s.addrs[0]);
    assert_eq!(
        metric(&m, "sigma_rejections_total{reason=\"tls_plain_http\"}"),
        1,
        "{m}"
    );
}

#[test]
fn a_silent_handshake_times_out_without_holding_up_others() {
    let pki = Pki::new("tls-slow");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(
        &tls_config(&c, &k, "handshake_timeout = \"1s\"\n"),
        PIPELINE,
    );
    let started = Instant::now();
    // Ten connections that never send a byte, and one that half-sends a
    // ClientHello.
    let mut silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(s.addrs[0]).unwrap())
        .collect();
    let mut partial = TcpStream::connect(s.addrs[0]).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Meanwhile a real client is served at once.
    let (ok, out) = curl(&pki.ca(), "a.test", s.addrs[0], "/healthz", &[]);
    assert!(ok && out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    silent.push(partial);
    for sock in &mut silent {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        // The server closes it (EOF or an alert then EOF), after ~1 s.
        loop {
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("not closed: {e}"),
            }
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let m = metrics(&pki.ca(), s.addrs[0]);
    assert_eq!(
        metric(
            &m,
            "sigma_rejections_total{reason=\"tls_handshake_timeout\"}"
        ),
        11,
        "{m}"
    );
}

#[test]
fn plain_listener_redirects_to_https_except_acme_challenges() {
    let pki = Pki::new("tls-redirect");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(
        &tls_config(&c, &k, "[tls.http]\nredirect = true\n"),
        PIPELINE,
    );
    let tls_port = s.addrs[0].port();
    let plain = s.addrs[1];
    let r = get(plain, "GET /db/x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{tls_port}/db/x?y=1").as_str())
    );
    let r = get(
        plain,
        "GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: a.test\r\n\r\n",
    );
    assert_eq!(r.status, 404, "challenges are not redirected");
    let r = get(plain, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_ne!(r.status, 308, "a bad Host is never copied into Location");
    // curl follows the redirect to the TLS listener.
    let out = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "10", "--cacert"])
        .arg(pki.ca())
        .arg("--resolve")
        .arg(format!("a.test:{tls_port}:127.0.0.1"))
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", plain.port()))
        .arg(format!("http://a.test:{}/healthz", plain.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

/// `sigma serve` with `config` fails: (exit code, stderr).
fn serve_fails(config: &str) -> (i32, String) {
    let dir = temp_dir("tls-bad");
    fs::write(dir.join("sigma.toml"), config).unwrap();
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("sigma.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--pipeline")
        .arg(PIPELINE);
    let (st, _out, err) = run_bounded(cmd, None);
    (st.code().unwrap_or(-1), err)
}

#[test]
fn bad_certificate_files_are_refused_naming_the_file() {
    let pki = Pki::new("tls-badfiles");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let (_c2, k2) = pki.leaf("other", &["other.test"]);
    let (ec, ek) = pki.leaf_with("old", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let missing = pki.dir.join("missing.pem");
    let cases = [
        (tls_config(&c, &k2, ""), k2.clone(), "does not match"),
        (tls_config(&ec, &ek, ""), ec.clone(), "expired"),
        (tls_config(&missing, &k, ""), missing.clone(), ""),
        (tls_config(&pki.dir, &k, ""), pki.dir.clone(), ""),
    ];
    for (config, file, what) in cases {
        let (code, err) = serve_fails(&config);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(what), "{err}");
    }
    // Shape errors name the key.
    let (code, err) = serve_fails("[tls]\ncert = \"a.pem\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("tls.key"), "{err}");
    let (code, err) = serve_fails("[tls]\ncert = \"a.pem\"\nkey = \"k\"\nbogus = 1\n");
    assert_eq!(code, 2);
    assert!(err.contains("bogus"), "{err}");
    let (code, err) = serve_fails("[tls]\ncert = \"a.pem\"\nkey = \"k\"\nsession_tickets = 9\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("tls.session_tickets") && err.contains("at most 8"),
        "{err}"
    );
}

#[test]
fn an_acme_directory_that_does_not_answer_is_named_and_the_file_cert_served() {
    let pki = Pki::new("tls-acme-down");
    let (c, k) = pki.leaf("a", &["a.test"]);
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/dir",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    let acme = format!("[tls.acme]\ndirectory = \"{url}\"\ndomains = [\"acme.test\"]\n");
    let s = start(&tls_config(&c, &k, &acme), PIPELINE);
    let (ok, out) = curl(&pki.ca(), "a.test", s.addrs[0], "/healthz", &[]);
    assert!(ok && out.starts_with("HTTP/1.1 200"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.stderr();
        if log.contains(&url) {
            assert!(log.contains("ACME"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory is not named: {log}"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

#[test]
fn sighup_swaps_the_certificate_for_new_handshakes_only() {
    let pki = Pki::new("tls-reload");
    let (c, k) = pki.leaf("a", &["a.test"]);
    let s = start(&tls_config(&c, &k, ""), PIPELINE);
    let port = s.addrs[0].port();
    let fingerprint = || {
        probe(
            port,
            &pki.ca(),
            r#"
import hashlib
c = ssl.create_default_context(cafile=ca)
s = c.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="a.test")
print(hashlib.sha256(s.getpeercert(True)).hexdigest())
"#,
        )[0]
        .clone()
    };
    let before = fingerprint();
    pki.leaf("a", &["a.test"]);
    s.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if fingerprint() != before {
            break;
        }
        assert!(Instant::now() < deadline, "certificate not reloaded");
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // A broken file on reload: the current certificate stays.
    let now = fingerprint();
    fs::write(&c, "not a certificate").unwrap();
    s.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The reload is refused whole, naming the file; the old certificate
    // stays.
    while !(s.stderr().contains("reload refused") && s.stderr().contains("a.pem")) {
        assert!(Instant::now() < deadline, "{}", s.stderr());
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(fingerprint(), now);
    // The ticket count is built into the TLS config: a restart, not a
    // reload.
    pki.leaf("a", &["a.test"]);
    fs::write(s.config_path(), tls_config(&c, &k, "session_tickets = 2\n")).unwrap();
    s.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains("tls.session_tickets changed") {
        assert!(Instant::now() < deadline, "{}", s.stderr());
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(fingerprint(), now, "a refused reload swaps nothing");
}
