//! pebble (Debian's test ACME server) and `pebble-challtestsrv` for the
//! ACME tests: started on free loopback ports with real challenge
//! validation, killed on drop. Shared by `crates/sigma-tls/tests/pebble.rs`
//! and `crates/sigma/tests/tls_acme.rs` (included with `#[path]`).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// pebble and its DNS, killed on drop.
pub struct Pebble {
    pub dir: PathBuf,
    children: Vec<Child>,
    pub directory: String,
    pub ca: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sigma-tls-{tag}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port that is free now and that no outgoing connection will take
/// meanwhile: drawn below the kernel's ephemeral range, where `bind(0)`
/// and `connect` pick theirs. A port from `bind(0)` stays in that range
/// after it is closed, so a connection of another test running alongside
/// could take it before the server under test binds it ("Address already
/// in use" in a CI run); these ports have to be fixed in advance because
/// pebble is told where to validate, and the server restarts on them.
fn free_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low);
    assert!(to > from + 1000, "the ephemeral port range starts at {low}");
    for attempt in 0u64..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        if free(port) {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

pub fn free_tcp_port() -> u16 {
    free_port(|p| StdListener::bind(("127.0.0.1", p)).is_ok())
}

pub fn free_udp_port() -> u16 {
    free_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// Whether pebble is there (installing it with apt if not). `false`
/// means skip; under CI=true a missing pebble panics instead.
pub fn have_pebble() -> bool {
    let present = || Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists();
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !present() && !apt(&["install", "-y", "-qq", "pebble"]) {
        // a fresh machine has no package lists yet
        apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", "pebble"]);
    }
    if present() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but pebble is missing and `apt-get install -y pebble` failed");
    }
    eprintln!(
        "\n\n*** SKIPPED: pebble ACME tests: {PEBBLE} missing and apt-get install failed ***\n\n"
    );
    false
}

pub fn wait_for_tcp(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            panic!(
                "{what} did not listen on {addr}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50)); // polling a port, with a deadline
    }
}

impl Pebble {
    /// Starts pebble validating on `http_port`/`tls_port` of 127.0.0.1,
    /// issuing certificates valid for `validity` seconds.
    pub fn start(http_port: u16, tls_port: u16, validity: u64) -> Self {
        let dir = tempdir("pebble");
        // pebble's own HTTPS certificate, from a CA the ACME client trusts
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pebble test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

        let (dns, mgmt, listen, pebble_mgmt) = (
            free_udp_port(),
            free_tcp_port(),
            free_tcp_port(),
            free_tcp_port(),
        );
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{pebble_mgmt}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns_srv = Command::new(CHALLTESTSRV)
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new(PEBBLE)
            .args(["-config", dir.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let this = Self {
            children: vec![pebble, dns_srv],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca,
            dir,
        };
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], mgmt)),
            "pebble-challtestsrv",
            &this.dir.join("challtestsrv.err"),
        );
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], listen)),
            "pebble",
            &this.dir.join("pebble.log"),
        );
        this
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}
