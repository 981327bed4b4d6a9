//! [`TlsConn`]: one TLS connection as a sans-IO state machine (the `S` of
//! `T443[SHA]`).
//!
//! `T → [S] → H → A → router → destination`. On its left `S` faces the
//! client's socket: ciphertext comes in through [`TlsConn::handle_input`]
//! and leaves through [`TlsConn::output`] / [`TlsConn::handle_written`]. On
//! its right it faces `H`: plaintext for `H` comes out of
//! [`TlsConn::poll_plaintext`], and `H`'s output goes in through
//! [`TlsConn::send_plaintext`]. It owns no socket and reads no clock: `now`
//! is an argument and the only deadline (the handshake) is
//! [`TlsConn::poll_timeout`]. It knows nothing of HTTP except the one check
//! that a plain-HTTP request arrived on a TLS port.
//!
//! Every buffer is bounded: rustls' own buffers are limited to
//! [`DEFAULT_MAX_BUFFER`] (its plaintext-in and ciphertext-out queues), the
//! ciphertext-out buffer here to [`DEFAULT_MAX_OUTPUT`], and `handle_input`
//! takes only what rustls accepts (it returns how much), so a client that
//! sends without reading, or never reads, cannot grow memory.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

use crate::error::TlsError;

/// The handshake deadline (DESIGN §2a): 10 s from the accept.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The limit on each of rustls' internal buffers (received plaintext not
/// yet read, ciphertext not yet handed out), in bytes.
pub const DEFAULT_MAX_BUFFER: usize = 64 * 1024;

/// The most ciphertext [`TlsConn::output`] holds before `S` stops taking
/// more from rustls (and so [`TlsConn::send_plaintext`] accepts less), in
/// bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;

/// The ALPN protocol `S` offers for HTTP (`h2` is not offered: DESIGN §2a).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The ALPN protocol of the ACME `tls-alpn-01` challenge (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// What a plain-HTTP client on a TLS port gets before the close.
pub const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 46\r\n\
connection: close\r\n\
\r\n\
This port speaks HTTPS: use an https:// URL.\r\n";

/// What [`TlsConn::poll_plaintext`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// This many bytes were appended to the buffer.
    Data(usize),
    /// Nothing now: feed more ciphertext (if [`TlsConn::wants_read`]).
    Pending,
    /// The peer sent `close_notify`: its plaintext stream ended cleanly
    /// (hand `H` end-of-input). Reported every time from now on.
    ClosedByPeer,
    /// The socket reached EOF without `close_notify` (many clients do
    /// this; it is also what a truncation attack looks like). `H` gets
    /// end-of-input, the driver may count it.
    EofWithoutCloseNotify,
}

/// Before the first byte, TLS; after it, whatever it said.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// No byte yet: the first one tells TLS from plain HTTP.
    ExpectFirstByte,
    /// A TLS record stream (handshake or traffic).
    Tls,
    /// Failed; the error is sticky.
    Failed(TlsError),
}

/// One server-side TLS connection, sans-IO.
///
/// Call order, per readable/writable event of the socket:
/// 1. while [`wants_read`](Self::wants_read): read the socket, pass the
///    bytes to [`handle_input`](Self::handle_input); it returns how many it
///    took, keep the rest for the next call;
/// 2. drain [`poll_plaintext`](Self::poll_plaintext) into `H`, then call
///    `handle_input` again with the rest;
/// 3. pass `H`'s output to [`send_plaintext`](Self::send_plaintext) (it
///    returns how much it took: back-pressure);
/// 4. write [`output`](Self::output) to the socket, report with
///    [`handle_written`](Self::handle_written);
/// 5. arm one timer at [`poll_timeout`](Self::poll_timeout); when it fires
///    call [`handle_timeout`](Self::handle_timeout).
///
/// On any `Err`, write what `output` still holds (an alert, or
/// [`PLAIN_HTTP_RESPONSE`]) and close the socket.
pub struct TlsConn {
    conn: ServerConnection,
    state: State,
    out: Vec<u8>,
    max_output: usize,
    handshake_deadline: Instant,
    handshake_timeout: Duration,
    saw_eof: bool,
    sent_close_notify: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("state", &self.state)
            .field("handshaking", &self.conn.is_handshaking())
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// A connection accepted at `now`, with the default limits.
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Result<Self, TlsError> {
        Self::with_limits(config, now, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_BUFFER)
    }

    /// A connection with an explicit handshake timeout and buffer limit.
    pub fn with_limits(
        config: Arc<ServerConfig>,
        now: Instant,
        handshake_timeout: Duration,
        max_buffer: usize,
    ) -> Result<Self, TlsError> {
        let mut conn = ServerConnection::new(config).map_err(TlsError::Local)?;
        conn.set_buffer_limit(Some(max_buffer));
        Ok(Self {
            conn,
            state: State::ExpectFirstByte,
            out: Vec::new(),
            max_output: max_buffer.clamp(1, DEFAULT_MAX_OUTPUT),
            handshake_deadline: now.checked_add(handshake_timeout).unwrap_or(now),
            handshake_timeout,
            saw_eof: false,
            sent_close_notify: false,
        })
    }

    // ---- inputs -----------------------------------------------------

    /// Ciphertext from the socket. Returns how many bytes were taken
    /// (possibly fewer than given, even 0, while rustls holds unread
    /// plaintext or output: drain those and call again with the rest).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<usize, TlsError> {
        self.check_failed()?;
        self.check_deadline(now)?;
        if self.state == State::ExpectFirstByte {
            match data.first() {
                None => return Ok(0),
                Some(b) if b.is_ascii_uppercase() => {
                    self.out.clear();
                    self.out.extend_from_slice(PLAIN_HTTP_RESPONSE);
                    return Err(self.fail(TlsError::PlainHttp));
                }
                Some(_) => self.state = State::Tls,
            }
        }
        let mut rest = data;
        while !rest.is_empty() && self.conn.wants_read() {
            match self.conn.read_tls(&mut rest) {
                Ok(0) | Err(_) => break, // Err: rustls' buffer is full (back-pressure)
                Ok(_) => {}
            }
            if let Err(e) = self.conn.process_new_packets() {
                self.fill_output();
                return Err(self.fail(TlsError::from_rustls(e)));
            }
            self.fill_output();
        }
        Ok(data.len().saturating_sub(rest.len()))
    }

    /// The socket reached EOF (the peer half-closed or closed).
    pub fn handle_eof(&mut self) -> Result<(), TlsError> {
        self.check_failed()?;
        self.saw_eof = true;
        let mut empty: &[u8] = &[];
        // Ok(0) marks EOF inside rustls; a full buffer is no error here.
        let _ = self.conn.read_tls(&mut empty);
        if let Err(e) = self.conn.process_new_packets() {
            self.fill_output();
            return Err(self.fail(TlsError::from_rustls(e)));
        }
        self.fill_output();
        Ok(())
    }

    /// The timer from [`poll_timeout`](Self::poll_timeout) fired. A
    /// spurious call does nothing.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TlsError> {
        self.check_failed()?;
        self.check_deadline(now)
    }

    /// `n` bytes of [`output`](Self::output) were written to the socket.
    pub fn handle_written(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
        self.fill_output();
    }

    // ---- commands ---------------------------------------------------

    /// `H`'s output (plaintext). Returns how many bytes were taken; fewer
    /// than given (even 0) means the buffers are full: write
    /// [`output`](Self::output) and retry. Before the handshake ends the
    /// plaintext is queued (within the same limit).
    pub fn send_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        self.check_failed()?;
        if self.sent_close_notify {
            return Err(TlsError::SendAfterClose);
        }
        let n = self.conn.writer().write(data).unwrap_or(0);
        self.fill_output();
        Ok(n)
    }

    /// Ends this side's plaintext stream cleanly: queues `close_notify`
    /// (the driver then writes the output and shuts down the socket's
    /// write side).
    pub fn send_close_notify(&mut self) {
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        self.sent_close_notify = true;
        self.conn.send_close_notify();
        self.fill_output();
    }

    // ---- outputs ----------------------------------------------------

    /// Appends up to `max` bytes of plaintext for `H` to `buf`.
    pub fn poll_plaintext(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<Plaintext, TlsError> {
        self.check_failed()?;
        let start = buf.len();
        buf.resize(start.saturating_add(max), 0);
        let got = match buf.get_mut(start..) {
            Some(dst) => self.conn.reader().read(dst),
            None => Ok(0),
        };
        let result = match got {
            Ok(0) if max > 0 => Plaintext::ClosedByPeer,
            Ok(0) => Plaintext::Pending,
            Ok(n) => Plaintext::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plaintext::Pending,
            Err(_) => Plaintext::EofWithoutCloseNotify,
        };
        let got = match result {
            Plaintext::Data(n) => n,
            _ => 0,
        };
        buf.truncate(start.saturating_add(got));
        self.fill_output();
        Ok(result)
    }

    /// Ciphertext (or, after [`TlsError::PlainHttp`], the plain 400) to
    /// write to the socket.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The handshake deadline, while the handshake runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Failed(_) => None,
            _ if self.conn.is_handshaking() => Some(self.handshake_deadline),
            _ => None,
        }
    }

    // ---- getters ----------------------------------------------------

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the driver should read the socket and call
    /// [`handle_input`](Self::handle_input): false while plaintext or
    /// output is queued (back-pressure), after `close_notify`, EOF or an
    /// error.
    pub fn wants_read(&self) -> bool {
        !matches!(self.state, State::Failed(_))
            && !self.saw_eof
            && self.conn.wants_read()
            && self.out.len() < self.max_output
    }

    /// Whether [`output`](Self::output) holds bytes to write.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether this handshake was an ACME `tls-alpn-01` validation
    /// (RFC 8737): the driver closes it after the handshake, no HTTP.
    pub fn is_acme_challenge(&self) -> bool {
        self.alpn_protocol() == Some(ALPN_ACME_TLS)
    }

    /// The SNI name the client sent.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    /// The TLS version agreed on, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether the handshake resumed an earlier session (cache or ticket).
    pub fn is_resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    // ---- internals --------------------------------------------------

    fn check_failed(&self) -> Result<(), TlsError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn check_deadline(&mut self, now: Instant) -> Result<(), TlsError> {
        if self.conn.is_handshaking() && now >= self.handshake_deadline {
            return Err(self.fail(TlsError::HandshakeTimeout(self.handshake_timeout)));
        }
        Ok(())
    }

    fn fail(&mut self, error: TlsError) -> TlsError {
        self.state = State::Failed(error.clone());
        error
    }

    /// Moves ciphertext from rustls into `out`, up to `max_output`.
    fn fill_output(&mut self) {
        while self.conn.wants_write() && self.out.len() < self.max_output {
            let room = self.max_output.saturating_sub(self.out.len());
            let mut sink = Bounded {
                out: &mut self.out,
                room,
            };
            match self.conn.write_tls(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// A `Write` into a `Vec` that takes at most `room` bytes.
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    room: usize,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room);
        if let Some(part) = buf.get(..n) {
            self.out.extend_from_slice(part);
        }
        self.room = self.room.saturating_sub(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{client_conn, config, store, Pki};
    use crate::TlsOptions;
    use rustls::client::ClientSessionStore as _;
    use rustls::pki_types::ServerName;
    use rustls::version::{TLS12, TLS13};
    use rustls::ClientConnection;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

    fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
        let mut v = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut v).unwrap();
        }
        v
    }

    /// Feeds `bytes` to the server (retrying with what it did not take),
    /// draining plaintext into `got`.
    fn feed(
        server: &mut TlsConn,
        bytes: &[u8],
        now: Instant,
        got: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        let mut rest = bytes;
        for _ in 0..100_000 {
            if rest.is_empty() {
                return Ok(());
            }
            let n = server.handle_input(rest, now)?;
            rest = &rest[n..];
            while let Plaintext::Data(_) = server.poll_plaintext(got, 4096)? {}
            if n == 0 {
                to_client_discard(server);
            }
        }
        panic!("server never took its input");
    }

    fn to_client_discard(server: &mut TlsConn) {
        let n = server.output().len();
        server.handle_written(n);
    }

    fn to_client(server: &mut TlsConn, client: &mut ClientConnection) {
        while server.wants_write() {
            let out = server.output().to_vec();
            let mut s = &out[..];
            while !s.is_empty() {
                client.read_tls(&mut s).unwrap();
                client.process_new_packets().unwrap();
            }
            server.handle_written(out.len());
        }
    }

    /// Runs the conversation until both sides are idle; the client's bytes
    /// go through `split` (into chunks fed one by one). Returns the
    /// plaintext the server received.
    fn run(
        client: &mut ClientConnection,
        server: &mut TlsConn,
        now: Instant,
        split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, TlsError> {
        let mut got = Vec::new();
        for _ in 0..50 {
            let cb = client_bytes(client);
            for chunk in split(&cb) {
                feed(server, &chunk, now, &mut got)?;
            }
            let had_output = server.wants_write();
            to_client(server, client);
            if cb.is_empty() && !had_output {
                return Ok(got);
            }
        }
        panic!("conversation did not settle");
    }

    fn whole(b: &[u8]) -> Vec<Vec<u8>> {
        vec![b.to_vec()]
    }

    fn pair(
        pki: &Pki,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> (ClientConnection, TlsConn) {
        let server = TlsConn::new(config(store(pki, &[&["a.test"]])), Instant::now()).unwrap();
        (client_conn(pki.client(versions, alpn), "a.test"), server)
    }

    fn exchange(
        client: &mut ClientConnection,
        server: &mut TlsConn,
        split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>,
    ) {
        let now = Instant::now();
        client.writer().write_all(REQUEST).unwrap();
        let got = run(client, server, now, split).unwrap();
        assert_eq!(got, REQUEST);
        assert!(!server.is_handshaking());
        assert_eq!(server.poll_timeout(), None);
        assert_eq!(server.send_plaintext(RESPONSE).unwrap(), RESPONSE.len());
        to_client(server, client);
        let mut back = vec![0; 256];
        let n = client.reader().read(&mut back).unwrap();
        assert_eq!(&back[..n], RESPONSE);
    }

    #[test]
    fn tls13_handshake_alpn_http11_and_data_both_ways() {
        let pki = Pki::new();
        let (mut client, mut server) = pair(&pki, &[&TLS13], &[b"h2", b"http/1.1"]);
        exchange(&mut client, &mut server, &whole);
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(
            server.alpn_protocol(),
            Some(ALPN_HTTP11),
            "h2 must not be chosen"
        );
        assert_eq!(client.alpn_protocol(), Some(ALPN_HTTP11));
        assert_eq!(server.server_name(), Some("a.test"));
        assert!(!server.is_acme_challenge());
    }

    #[test]
    fn tls12_handshake_and_data() {
        let pki = Pki::new();
        let (mut client, mut server) = pair(&pki, &[&TLS12], &[b"http/1.1"]);
        exchange(&mut client, &mut server, &whole);
        assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(server.alpn_protocol(), Some(ALPN_HTTP11));
    }

    #[test]
    fn no_alpn_is_fine_and_h2_only_is_refused() {
        let pki = Pki::new();
        let (mut client, mut server) = pair(&pki, &[&TLS13], &[]);
        exchange(&mut client, &mut server, &whole);
        assert_eq!(server.alpn_protocol(), None);

        let (mut client, mut server) = pair(&pki, &[&TLS13], &[b"h2"]);
        let err = run(&mut client, &mut server, Instant::now(), &whole).unwrap_err();
        assert_eq!(err, TlsError::Peer(rustls::Error::NoApplicationProtocol));
        assert_eq!(err.reason(), "tls_peer_incompatible");
    }

    #[test]
    fn every_split_of_the_client_hello_and_one_byte_at_a_time() {
        let pki = Pki::new();
        let server_config = config(store(&pki, &[&["a.test"]]));
        let client_config = pki.client(&[&TLS13, &TLS12], &[b"http/1.1"]);
        let hello_len = client_bytes(&mut client_conn(client_config.clone(), "a.test")).len();
        assert!(hello_len > 100);
        for k in 0..=hello_len {
            let mut client = client_conn(client_config.clone(), "a.test");
            let mut server = TlsConn::new(server_config.clone(), Instant::now()).unwrap();
            let mut first = true;
            let split = move |b: &[u8]| {
                if std::mem::take(&mut first) && b.len() == hello_len {
                    vec![b[..k].to_vec(), b[k..].to_vec()]
                } else {
                    vec![b.to_vec()]
                }
            };
            let split = std::cell::RefCell::new(split);
            exchange(&mut client, &mut server, &|b| (split.borrow_mut())(b));
        }
        let mut client = client_conn(client_config, "a.test");
        let mut server = TlsConn::new(server_config, Instant::now()).unwrap();
        exchange(&mut client, &mut server, &|b| {
            b.chunks(1).map(|c| c.to_vec()).collect()
        });
    }

    #[test]
    fn handshake_deadline_on_a_fake_clock() {
        let pki = Pki::new();
        let t0 = Instant::now();
        let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), t0).unwrap();
        let deadline = t0 + DEFAULT_HANDSHAKE_TIMEOUT;
        assert_eq!(server.poll_timeout(), Some(deadline));
        server
            .handle_timeout(deadline - Duration::from_millis(1))
            .unwrap();
        // half a ClientHello, then silence
        let hello = client_bytes(&mut client_conn(pki.client(&[&TLS13], &[]), "a.test"));
        let n = server
            .handle_input(&hello[..hello.len() / 2], t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(n, hello.len() / 2);
        assert_eq!(
            server.poll_timeout(),
            Some(deadline),
            "input does not extend the deadline"
        );
        let err = server.handle_timeout(deadline).unwrap_err();
        assert_eq!(err, TlsError::HandshakeTimeout(DEFAULT_HANDSHAKE_TIMEOUT));
        assert_eq!(err.reason(), "tls_handshake_timeout");
        assert_eq!(err.blame(), crate::Blame::Peer);
        assert_eq!(server.poll_timeout(), None);
        assert_eq!(
            server
                .handle_input(&hello[hello.len() / 2..], deadline)
                .unwrap_err(),
            err,
            "sticky"
        );
        assert!(!server.wants_read());

        // input arriving after the deadline fails too, even without the timer
        let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), t0).unwrap();
        assert_eq!(server.handle_input(&hello, deadline).unwrap_err(), err);

        // a finished handshake has no deadline
        let (mut client, mut server) = pair(&pki, &[&TLS13], &[]);
        exchange(&mut client, &mut server, &whole);
        server
            .handle_timeout(Instant::now() + Duration::from_secs(3600))
            .unwrap();
    }

    #[test]
    fn plain_http_on_the_tls_port_gets_a_plain_400() {
        let pki = Pki::new();
        for input in [&b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..], b"P", b"HEAD"] {
            let mut server =
                TlsConn::new(config(store(&pki, &[&["a.test"]])), Instant::now()).unwrap();
            assert_eq!(
                server.handle_input(input, Instant::now()).unwrap_err(),
                TlsError::PlainHttp
            );
            assert_eq!(server.output(), PLAIN_HTTP_RESPONSE);
            assert_eq!(TlsError::PlainHttp.reason(), "tls_plain_http");
            assert!(!server.wants_read());
        }
        let text = std::str::from_utf8(PLAIN_HTTP_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        // an empty read decides nothing
        let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), Instant::now()).unwrap();
        assert_eq!(server.handle_input(b"", Instant::now()).unwrap(), 0);
    }

    #[test]
    fn garbage_after_a_record_byte_is_a_peer_error_with_an_alert() {
        let pki = Pki::new();
        let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), Instant::now()).unwrap();
        let err = server
            .handle_input(
                &[0x16, 3, 1, 0, 8, 1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(err.blame(), crate::Blame::Peer, "{err:?}");
        assert!(
            server.output().first() == Some(&0x15),
            "an alert record is queued: {:?} {err:?}",
            server.output()
        );
    }

    proptest::proptest! {
        /// Any bytes, whole or split anywhere, either are taken or end in
        /// an error; never a panic, never unbounded output.
        #[test]
        fn arbitrary_input_is_taken_or_refused(
            first in proptest::prelude::any::<u8>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let pki = PKI.with(|p| p.clone());
            let mut input = vec![first];
            input.extend_from_slice(&bytes);
            let cut = cut.min(input.len());
            let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), Instant::now()).unwrap();
            let mut result = Ok(());
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                result = feed(&mut server, part, Instant::now(), &mut got);
                if result.is_err() {
                    break;
                }
            }
            proptest::prop_assert!(server.output().len() <= DEFAULT_MAX_OUTPUT);
            if first.is_ascii_uppercase() {
                proptest::prop_assert_eq!(result, Err(TlsError::PlainHttp));
            }
            proptest::prop_assert!(got.is_empty(), "no plaintext before a handshake");
        }
    }

    thread_local! {
        static PKI: std::rc::Rc<Pki> = std::rc::Rc::new(Pki::new());
    }

    #[test]
    fn an_old_protocol_is_refused() {
        // a TLS 1.1 ClientHello (no supported_versions extension), one
        // suite (ECDHE-RSA-AES128-SHA), no compression, no extensions
        let mut hello = vec![0x03, 0x02];
        hello.extend_from_slice(&[0x42; 32]);
        hello.extend_from_slice(&[0, 0, 2, 0xc0, 0x13, 1, 0]);
        let mut handshake = vec![1, 0, 0, hello.len() as u8];
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
        record.extend_from_slice(&handshake);
        let pki = Pki::new();
        let mut server = TlsConn::new(config(store(&pki, &[&["a.test"]])), Instant::now()).unwrap();
        let err = server.handle_input(&record, Instant::now()).unwrap_err();
        assert!(
            matches!(err, TlsError::Peer(rustls::Error::PeerIncompatible(_))),
            "{err:?}"
        );
        assert_eq!(err.reason(), "tls_peer_incompatible");
        assert_eq!(server.output().first(), Some(&0x15), "an alert goes back");
    }

    #[test]
    fn clean_close_both_ways_and_eof_without_close_notify() {
        let pki = Pki::new();
        let (mut client, mut server) = pair(&pki, &[&TLS13], &[]);
        exchange(&mut client, &mut server, &whole);
        client.send_close_notify();
        let bytes = client_bytes(&mut client);
        let mut got = Vec::new();
        feed(&mut server, &bytes, Instant::now(), &mut got).unwrap();
        assert_eq!(
            server.poll_plaintext(&mut got, 100).unwrap(),
            Plaintext::ClosedByPeer
        );
        assert!(!server.wants_read());
        server.send_close_notify();
        let out = server.output().to_vec();
        assert!(!out.is_empty());
        let mut s = &out[..];
        client.read_tls(&mut s).unwrap();
        assert!(client.process_new_packets().unwrap().peer_has_closed());
        assert_eq!(
            server.send_plaintext(b"late").unwrap_err(),
            TlsError::SendAfterClose
        );

        let (mut client, mut server) = pair(&pki, &[&TLS13], &[]);
        exchange(&mut client, &mut server, &whole);
        server.handle_eof().unwrap();
        let mut got = Vec::new();
        assert_eq!(
            server.poll_plaintext(&mut got, 100).unwrap(),
            Plaintext::EofWithoutCloseNotify
        );
        assert!(!server.wants_read());
    }

    /// One whole exchange on a new connection; whether it resumed.
    fn handshake(client: &Arc<rustls::ClientConfig>, server: &Arc<rustls::ServerConfig>) -> bool {
        let mut client = client_conn(client.clone(), "a.test");
        let mut server = TlsConn::new(server.clone(), Instant::now()).unwrap();
        exchange(&mut client, &mut server, &whole);
        server.is_resumed()
    }

    #[test]
    fn sessions_resume_with_tls13_tickets_and_tls12_ids() {
        let pki = Pki::new();
        let server_config = config(store(&pki, &[&["a.test"]]));
        for version in [&TLS13, &TLS12] {
            let client_config = pki.client(&[version], &[b"http/1.1"]);
            let resumed: Vec<bool> = (0..2)
                .map(|_| handshake(&client_config, &server_config))
                .collect();
            assert_eq!(resumed, [false, true], "{version:?}");
        }
    }

    #[test]
    fn one_ticket_per_handshake_by_default_and_as_configured() {
        let pki = Pki::new();
        for (tickets, resumes) in [(None, true), (Some(2), true), (Some(0), false)] {
            let options = TlsOptions {
                tickets: tickets.unwrap_or(crate::DEFAULT_SESSION_TICKETS),
                ..TlsOptions::default()
            };
            let server_config =
                crate::server_config(store(&pki, &[&["a.test"]]), &options).unwrap();
            let store = Arc::new(rustls::client::ClientSessionMemoryCache::new(16));
            let mut client_config = (*pki.client(&[&TLS13], &[b"http/1.1"])).clone();
            client_config.resumption = rustls::client::Resumption::store(store.clone());
            let client_config = Arc::new(client_config);
            let name = ServerName::try_from("a.test").unwrap();
            let mut per_handshake = Vec::new();
            let mut resumed = Vec::new();
            for _ in 0..3 {
                resumed.push(handshake(&client_config, &server_config));
                // The tickets this handshake left (the store held none
                // before it); the newest goes back for the next one.
                let mut got = Vec::new();
                while let Some(t) = store.take_tls13_ticket(&name) {
                    got.push(t);
                }
                per_handshake.push(got.len());
                if let Some(t) = got.pop() {
                    store.insert_tls13_ticket(name.clone(), t);
                }
            }
            let n = tickets.unwrap_or(1);
            assert_eq!(per_handshake, [n; 3], "tickets {tickets:?}");
            assert_eq!(resumed, [false, resumes, resumes], "tickets {tickets:?}");
        }
    }

    #[test]
    fn a_peer_that_never_reads_cannot_grow_buffers() {
        let pki = Pki::new();
        let (mut client, mut server) = pair(&pki, &[&TLS13], &[]);
        exchange(&mut client, &mut server, &whole);
        // client floods; server never polls plaintext
        let chunk = vec![b'x'; 16 * 1024];
        let mut taken = 0usize;
        for _ in 0..64 {
            client.writer().write_all(&chunk).unwrap();
            let bytes = client_bytes(&mut client);
            let n = server.handle_input(&bytes, Instant::now()).unwrap();
            taken += n;
            if n < bytes.len() {
                break;
            }
        }
        assert!(
            !server.wants_read(),
            "back-pressure once rustls holds unread plaintext"
        );
        assert!(taken < DEFAULT_MAX_BUFFER + 2 * 17 * 1024, "took {taken}");
        // server writes; client never reads
        let mut sent = 0usize;
        for _ in 0..1000 {
            let n = server.send_plaintext(&chunk).unwrap();
            sent += n;
            if n == 0 {
                break;
            }
        }
        assert!(server.output().len() <= DEFAULT_MAX_OUTPUT);
        assert!(
            sent <= DEFAULT_MAX_OUTPUT + DEFAULT_MAX_BUFFER + chunk.len(),
            "sent {sent}"
        );
        // writing unblocks it
        let n = server.output().len();
        server.handle_written(n);
        assert!(server.send_plaintext(&chunk).unwrap() > 0);
    }
}
