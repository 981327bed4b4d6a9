//! Test harness: runs the real `sigma` binary on an ephemeral port and talks
//! to it over real sockets.
//!
//! Synchronisation is always a read: the port is learned by reading the
//! server's stdout until `listening on …`, and every state is observed
//! through what the socket returns. Socket read/write timeouts are hang
//! guards only; no test sleeps to wait for the server.

#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub mod ws;

/// Hang guard for every socket read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `sigma` binary under test.
pub fn sigma_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sigma")
}

/// A fresh, unique directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("sigma-it-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A `Command` for the binary with no `SIGMA_*` variables inherited.
pub fn sigma_cmd() -> Command {
    let mut cmd = Command::new(sigma_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SIGMA_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd` to completion with piped stdout/stderr, bounded by a hang guard.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>) -> (ExitStatus, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn sigma");
    if let Some(input) = stdin {
        let mut sin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = sin.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(out);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("waiting for sigma failed: {e}"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("sigma did not exit within 20 s");
        }
    }
}

/// A running `sigma serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    /// Writes `config_toml` to a temp file and starts
    /// `sigma serve --config FILE --data DIR --pipeline 'T127.0.0.1:0[HA]'`.
    pub fn start(config_toml: &str) -> Server {
        let dir = temp_dir("srv");
        let cfg = dir.join("sigma.toml");
        fs::write(&cfg, config_toml).expect("write config");
        let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut cmd = sigma_cmd();
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--pipeline")
            .arg("T127.0.0.1:0[HA]")
            .arg("--workers")
            .arg("2")
            .env("SIGMA_LOG", "warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn sigma serve");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads stdout for the whole life of the process so it never blocks
        // on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let a = rest.split_whitespace().next().unwrap_or("");
                        break a.parse::<SocketAddr>().expect("listen address");
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                    panic!(
                        "sigma serve did not report its address; stdout: {seen:?}; stderr: {log}"
                    );
                }
            }
        };
        Server {
            child: Some(child),
            pid,
            addr,
            dir,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file it was started with (rewrite it, then `HUP`).
    #[allow(dead_code)] // not every test binary reloads
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("sigma.toml")
    }

    /// What the server logged so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"INT"`) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits (at most `limit`) for the process to exit; returns its status
    /// and how long the wait took.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("server still owned");
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(st)) => (st, t0.elapsed()),
            Ok(Err(e)) => panic!("wait failed: {e}"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
                panic!("sigma did not exit within {limit:?}");
            }
        }
    }

    /// A new client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects, writes `bytes`, half-closes, reads to EOF (or reset).
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut c = self.connect();
        c.send(bytes);
        c.shutdown_write();
        c.read_to_end()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// True if `Connection` lists `close`.
    pub fn closes(&self) -> bool {
        self.headers_named("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Statuses that never carry a body.
fn no_body_status(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Parses one response from the front of `buf`. `Ok(None)`: incomplete.
/// Returns the response and the bytes it used.
pub fn parse_response(buf: &[u8], head_only: bool) -> Result<Option<(Resp, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|e| format!("non-UTF-8 head: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_owned();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or("").to_owned();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        if n.is_empty() || n.contains(' ') || l.contains('\n') || l.contains('\r') {
            return Err(format!("bad header line {l:?}"));
        }
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let mut resp = Resp {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    let body_start = end + 4;
    if resp.header("transfer-encoding").is_some() {
        return Err("chunked responses are not expected from sigma's echo".into());
    }
    let len = if head_only || no_body_status(status) {
        0
    } else {
        match resp.header("content-length") {
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {v:?}"))?,
            None => return Err(format!("response {status} without Content-Length")),
        }
    };
    if buf.len() < body_start + len {
        return Ok(None);
    }
    resp.body = buf[body_start..body_start + len].to_vec();
    Ok(Some((resp, body_start + len)))
}

/// Parses every complete response in `buf` (no HEAD responses among them).
pub fn parse_all(buf: &[u8]) -> (Vec<Resp>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse_response(&buf[at..], false) {
            Ok(Some((r, n))) => {
                out.push(r);
                at += n;
            }
            Ok(None) => break,
            Err(e) => panic!(
                "unparseable response at byte {at}: {e}: {:?}",
                lossy(&buf[at..])
            ),
        }
    }
    (out, buf.len() - at)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned();
    if b.len() > 400 {
        format!("{s}…({} bytes)", b.len())
    } else {
        s
    }
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Eof,
    Reset,
}

/// One client connection with a read buffer.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes` (panics on error).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write failed: {e}"));
    }

    /// Writes, reporting errors instead of panicking.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer. `Ok(0)`: EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response (a GET/POST response; 1xx come back as themselves).
    pub fn read_response(&mut self) -> Resp {
        self.read_response_inner(false)
    }

    /// Reads one response to HEAD (no body whatever the headers say).
    pub fn read_head_response(&mut self) -> Resp {
        self.read_response_inner(true)
    }

    fn read_response_inner(&mut self, head_only: bool) -> Resp {
        match self.try_read_response_inner(head_only) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads one response or says why there is none.
    pub fn try_read_response(&mut self) -> Result<Resp, String> {
        self.try_read_response_inner(false)
    }

    fn try_read_response_inner(&mut self, head_only: bool) -> Result<Resp, String> {
        loop {
            match parse_response(&self.buf, head_only) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad response: {e}: {:?}", lossy(&self.buf))),
            }
            match self.fill() {
                Ok(0) => {
                    return Err(format!(
                        "EOF before a complete response; got {:?}",
                        lossy(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    return Err(format!(
                        "no complete response within {IO_TIMEOUT:?}; got {:?}",
                        lossy(&self.buf)
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "read error {e} before a complete response; got {:?}",
                        lossy(&self.buf)
                    ))
                }
            }
        }
    }

    /// Reads exactly the bytes `expected` (e.g. an interim response).
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            match self.fill() {
                Ok(0) => panic!(
                    "EOF while expecting {:?}; got {:?}",
                    lossy(expected),
                    lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "read error {e} while expecting {:?}; got {:?}",
                    lossy(expected),
                    lossy(&self.buf)
                ),
            }
        }
        assert_eq!(
            lossy(&self.buf[..expected.len()]),
            lossy(expected),
            "unexpected bytes"
        );
        self.buf.drain(..expected.len());
    }

    /// Reads until EOF or reset (at most `IO_TIMEOUT` between bytes); the
    /// already-buffered bytes come first.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => panic!(
                    "connection not closed within {IO_TIMEOUT:?}; got {:?}",
                    lossy(&self.buf)
                ),
                Err(e) if is_reset(&e) => break,
                Err(e) => panic!("read error {e}"),
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Asserts that the server closed the connection without sending
    /// anything more: the next read is EOF (or a reset).
    pub fn expect_closed(&mut self) -> ReadEnd {
        match self.try_expect_closed() {
            Ok(end) => end,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Client::expect_closed`] that reports instead of panicking.
    pub fn try_expect_closed(&mut self) -> Result<ReadEnd, String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unexpected bytes before close: {:?}",
                lossy(&self.buf)
            ));
        }
        match self.fill() {
            Ok(0) => Ok(ReadEnd::Eof),
            Ok(_) => Err(format!(
                "expected close, got more bytes: {:?}",
                lossy(&self.buf)
            )),
            Err(e) if is_reset(&e) => Ok(ReadEnd::Reset),
            Err(e) if is_timeout(&e) => Err("connection still open (read timed out)".into()),
            Err(e) => Err(format!("read error {e}")),
        }
    }

    /// Like [`Client::expect_closed`], but with a custom time bound; returns
    /// how long the close took.
    pub fn expect_closed_within(&mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        self.stream.set_read_timeout(Some(limit)).expect("timeout");
        self.expect_closed();
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("timeout");
        t0.elapsed()
    }

    /// Bytes buffered but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

// ----- request builders ------------------------------------------------------

/// One request as bytes: `Host` is the server's address, `Content-Length`
/// is set for a body and for POST/PUT/PATCH.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on a fresh connection (see [`request_bytes`]).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut c = Client::connect(addr);
    c.send(&request_bytes(addr, method, path, headers, body));
    c.read_response()
}

/// `GET path HTTP/1.1` with `Host: x` and extra header lines.
pub fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

/// `POST path HTTP/1.1` with a Content-Length body.
pub fn post(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// A TOML value for [`Cfg`]: strings are quoted, numbers are bare.
pub trait TomlValue {
    fn toml(&self) -> String;
}
impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}
impl TomlValue for u64 {
    fn toml(&self) -> String {
        self.to_string()
    }
}
impl TomlValue for usize {
    fn toml(&self) -> String {
        self.to_string()
    }
}
impl TomlValue for i32 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

/// A test config: small limits so the suite runs fast, each overridable.
#[derive(Debug, Clone)]
pub struct Cfg {
    server: Vec<(String, String)>,
    http: Vec<(String, String)>,
    tail: String,
}

fn set(table: &mut Vec<(String, String)>, k: &str, v: String) {
    match table.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v,
        None => table.push((k.to_owned(), v)),
    }
}

impl Default for Cfg {
    fn default() -> Self {
        Self::new()
    }
}

impl Cfg {
    pub fn new() -> Self {
        let mut c = Cfg {
            server: Vec::new(),
            http: Vec::new(),
            tail: String::new(),
        };
        c = c
            .server("linger_timeout", "2s")
            .server("drain_timeout", "10s")
            .http("head_timeout", "2s")
            .http("keepalive_timeout", "5s");
        c
    }

    /// Sets `[server] k = v`.
    pub fn server(mut self, k: &str, v: impl TomlValue) -> Self {
        set(&mut self.server, k, v.toml());
        self
    }

    /// Sets `[http] k = v`.
    pub fn http(mut self, k: &str, v: impl TomlValue) -> Self {
        set(&mut self.http, k, v.toml());
        self
    }

    /// Appends raw TOML after the tables (e.g. `[[route]]`s).
    pub fn tail(mut self, toml: &str) -> Self {
        self.tail.push_str(toml);
        self.tail.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let mut s = String::from("[server]\n");
        for (k, v) in &self.server {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str("\n[http]\n");
        for (k, v) in &self.http {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push('\n');
        s.push_str(&self.tail);
        s
    }

    pub fn start(&self) -> Server {
        Server::start(&self.toml())
    }
}

/// A config file in a temp directory (for `sigma check`).
pub fn write_temp_config(tag: &str, toml: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let p = dir.join("sigma.toml");
    fs::write(&p, toml).expect("write config");
    (dir, p)
}

/// The package's test data directory.
pub fn data_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data"))
}

/// Writes `bytes` in pieces of `piece` bytes, one piece every `every`, on a
/// clone of `stream`, until done, a write fails or `stop` is set. Returns
/// how many bytes were written and the error that stopped it, if any.
/// This is the slow client under test, not synchronisation.
pub fn trickle(
    stream: &TcpStream,
    bytes: Vec<u8>,
    piece: usize,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<(usize, Option<io::Error>)> {
    let mut s = stream.try_clone().expect("clone stream");
    thread::spawn(move || {
        let mut sent = 0;
        for chunk in bytes.chunks(piece.max(1)) {
            if stop.load(Ordering::SeqCst) {
                return (sent, None);
            }
            if let Err(e) = s.write_all(chunk) {
                return (sent, Some(e));
            }
            sent += chunk.len();
            thread::sleep(every);
        }
        (sent, None)
    })
}

// ----- servers on a chosen data directory and topology -----------------------

/// A server started by [`Server::launch`].
pub struct Launched {
    /// The server (its `addr()` is the first listener's).
    pub server: Server,
    /// Every listener's address, in the order of the topology.
    pub addrs: Vec<SocketAddr>,
    /// What the server printed on stdout before its listeners.
    pub stdout: Vec<String>,
}

impl Server {
    /// Like [`Server::start`], but on the data directory `data` (which
    /// outlives the server, so a later server can reuse it) and with the
    /// topology `pipeline`, which may name several listeners
    /// (`T127.0.0.1:0[HA] T127.0.0.1:0[H]`).
    pub fn launch(config_toml: &str, data: &Path, pipeline: &str) -> Launched {
        Self::launch_with(config_toml, data, pipeline, &[("SIGMA_LOG", "warn")], &[])
    }

    /// Like [`Server::launch`], with the environment `env` and the
    /// arguments `args` before `serve` (`--log-format json`).
    pub fn launch_with(
        config_toml: &str,
        data: &Path,
        pipeline: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Launched {
        let listeners = pipeline.split_whitespace().count();
        let dir = temp_dir("srv");
        let cfg = dir.join("sigma.toml");
        fs::write(&cfg, config_toml).expect("write config");
        let stderr = fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut cmd = sigma_cmd();
        cmd.args(args)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(data)
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--workers")
            .arg("2")
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn sigma serve");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let a = rest.split_whitespace().next().unwrap_or("");
                        addrs.push(a.parse::<SocketAddr>().expect("listen address"));
                    } else {
                        seen.push(line);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                    panic!(
                        "sigma serve did not report {listeners} address(es); stdout: {seen:?}; stderr: {log}"
                    );
                }
            }
        }
        Launched {
            server: Server {
                child: Some(child),
                pid,
                addr: addrs[0],
                dir,
            },
            addrs,
            stdout: seen,
        }
    }
}

// ----- a recording upstream ---------------------------------------------------

/// A one-shot-per-connection HTTP upstream on 127.0.0.1: records each
/// request head and answers `200 ok`.
pub struct Upstream {
    /// Its port on 127.0.0.1.
    pub port: u16,
    heads: mpsc::Receiver<String>,
}

impl Upstream {
    /// Starts it on a free port.
    pub fn start() -> Upstream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = l.local_addr().unwrap().port();
        let (tx, heads) = mpsc::channel();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() && buf.len() < 65536 {
                    match c.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    return;
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Upstream { port, heads }
    }

    /// The next request head the upstream received (lower-cased).
    pub fn next_head(&self) -> String {
        self.heads
            .recv_timeout(IO_TIMEOUT)
            .expect("the upstream saw no request")
            .to_ascii_lowercase()
    }
}

/// A TCP connection to `to` from the local (loopback) address `from`, so
/// that tests can be several clients.
#[allow(dead_code)]
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect_timeout(&to.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    s.into()
}

/// `POST /login` with a JSON body: the `sigma_session=…` pair for a
/// `Cookie` header, or `None` when the login is refused with 401 (any
/// other status fails the test).
#[allow(dead_code)]
pub fn try_login(addr: SocketAddr, user: &str, password: &str) -> Option<String> {
    let body = serde_json::json!({"user": user, "password": password}).to_string();
    let r = request(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    if r.status == 401 {
        return None;
    }
    assert_eq!(r.status, 200, "login {user}: {r:?}");
    let id = r
        .headers_named("set-cookie")
        .into_iter()
        .find_map(|c| c.strip_prefix("sigma_session="))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {r:?}"))
        .to_owned();
    Some(format!("sigma_session={id}"))
}

/// [`try_login`], which must succeed.
#[allow(dead_code)]
pub fn login_as(addr: SocketAddr, user: &str, password: &str) -> String {
    try_login(addr, user, password).unwrap_or_else(|| panic!("login {user}: refused"))
}
