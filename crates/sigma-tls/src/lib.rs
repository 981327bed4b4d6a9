//! `S`: the TLS stage of sigma (DESIGN §2a), between `T` and `H`.
//!
//! ```text
//!  client ──ciphertext──▶ T ──▶ [ S ] ──plaintext──▶ H ──events──▶ A ──▶ router ──▶ destination
//!         ◀─ciphertext──    ◀── [   ] ◀─plaintext──   ◀─replies──
//! ```
//!
//! Three parts, none of which knows HTTP (beyond spotting a plain-HTTP
//! request on a TLS port) or the config file:
//! - [`TlsConn`] (`conn.rs`): one connection as a sans-IO state machine
//!   over rustls (TLS 1.2 and 1.3, ALPN `http/1.1` only, session resumption
//!   through rustls' session cache and tickets, a handshake deadline,
//!   bounded buffers). Bytes and `now` in, bytes and a deadline out.
//! - [`CertStore`] (`store.rs`): the certificates, chosen by SNI, behind
//!   rustls' `ResolvesServerCert`; reloadable without touching open
//!   connections.
//! - [`acme::Acme`] (`acme.rs`): automatic certificates (RFC 8555) with
//!   `instant-acme`, feeding the store; `http-01` tokens for the plain
//!   listeners and `tls-alpn-01` certificates for the resolver.
//!
//! # How the driver (`crates/sigma`) uses it
//!
//! At start-up (`server.rs`), for a topology with `S`:
//! ```text
//! let store = Arc::new(CertStore::from_files(files)?);        // [tls] cert/key, [[tls.extra]]
//! let config = sigma_tls::server_config(store.clone(), &TlsOptions {
//!     acme_tls_alpn: acme_challenge == TlsAlpn01, ..Default::default() })?;
//! // with [tls.acme]: let acme = Acme::new(acme_config, store.clone())?;
//! //   acme.load_stored()  (serve what the data directory has, no network),
//! //   tokio::spawn(acme.clone().run())  (order/renew in the background:
//! //   a listener that has a certificate is never held up by ACME);
//! //   the plain-listener H consults acme.http01().lookup(token) for
//! //   GET /.well-known/acme-challenge/TOKEN.
//! // on SIGHUP: store.reload() — log the error, the old certificates stay.
//! ```
//! Per accepted connection (`conn.rs`, in the connection's own task, so a
//! slow handshake never stalls the accept loop), the loop around `H`
//! gains one layer:
//! ```text
//! let mut tls = TlsConn::new(config.clone(), now)?;
//! loop {
//!     // 1. socket readable and tls.wants_read(): read into rbuf;
//!     //    n = tls.handle_input(&rbuf, now)?; rbuf.drain(..n)
//!     //    (on EOF: tls.handle_eof()?)
//!     // 2. while let Plaintext::Data(_) = tls.poll_plaintext(&mut pbuf, MAX)? { h.receive(&pbuf, now) }
//!     //    ClosedByPeer / EofWithoutCloseNotify → h.receive_eof(now)
//!     //    after the handshake: if tls.is_acme_challenge() { close }
//!     // 3. h.poll_transmit(&mut hbuf); n = tls.send_plaintext(&hbuf)?; hbuf.drain(..n)
//!     //    H's ω (close) → tls.send_close_notify()
//!     // 4. write tls.output() to the socket; tls.handle_written(n)
//!     // 5. one Sleep at min(h.poll_timeout(), tls.poll_timeout());
//!     //    on fire: tls.handle_timeout(now)?; h.handle_timeout(now)
//! }
//! // on Err(e): write what tls.output() holds (an alert or the plain 400),
//! // count e.reason() (tls_handshake_timeout, tls_plain_http, …), close.
//! ```
//! The config keys of DESIGN §2a map one to one: `[tls] cert`/`key` and
//! each `[[tls.extra]]` → a [`CertFiles`] (in that order: the first is the
//! default certificate); `[tls.acme]` `directory`, `email`, `domains`,
//! `challenge`, `ca` → [`acme::AcmeConfig`], with `state_dir` =
//! `DATA_DIR/acme`. Build the [`ServerConfig`](rustls::ServerConfig) once
//! per process (its session cache and ticket keys live in it); reloads
//! change only the store behind it.
//!
//! With TLS on, the driver tells `A`/destinations the scheme is `https`
//! (Secure cookies, `X-Forwarded-Proto`, same-origin) — not this crate's
//! business.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod acme;
pub mod conn;
pub mod error;
pub mod file;
pub mod store;
#[cfg(test)]
mod testutil;

use std::sync::Arc;

use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

pub use conn::{Plaintext, TlsConn};
pub use error::{Blame, TlsError};
pub use store::{CertError, CertFiles, CertStore, Certificate};

/// How many sessions the server-side session cache keeps (TLS 1.2 session
/// IDs and TLS 1.3 stateful resumption).
pub const DEFAULT_SESSION_CACHE: usize = 4096;

/// How many TLS 1.3 session tickets a handshake ends with, by default.
///
/// rustls sends 2, for clients that open parallel connections on one
/// handshake's tickets. One is what a client needs for its next
/// connection, and every resumed connection gets a fresh one in turn
/// (OpenSSL sends one on a resumption too). Each ticket costs the server
/// a seal and a record, and the client a parse and a session copy.
pub const DEFAULT_SESSION_TICKETS: usize = 1;

/// The most tickets one handshake may send, by [`TlsOptions::tickets`] or
/// by a client's RFC 9149 `ticket_request`.
pub const MAX_SESSION_TICKETS: usize = 8;

/// Options for [`server_config`].
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Also offer ALPN `acme-tls/1`, so that ACME `tls-alpn-01`
    /// validation handshakes succeed (the resolver then serves the
    /// challenge certificate).
    pub acme_tls_alpn: bool,
    /// Entries in the session cache.
    pub session_cache: usize,
    /// TLS 1.3 session tickets per handshake (0: none, so TLS 1.3
    /// connections never resume); at most [`MAX_SESSION_TICKETS`].
    /// A client's RFC 9149 `ticket_request` may ask for up to
    /// [`MAX_SESSION_TICKETS`] when this is not 0.
    pub tickets: usize,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            acme_tls_alpn: false,
            session_cache: DEFAULT_SESSION_CACHE,
            tickets: DEFAULT_SESSION_TICKETS,
        }
    }
}

/// The rustls server configuration of `S`: TLS 1.3 and 1.2 with ring's
/// default suites, certificates from `store`, ALPN `http/1.1` (plus
/// `acme-tls/1` if asked), a session cache and `options.tickets` session
/// tickets per handshake.
pub fn server_config(
    store: Arc<CertStore>,
    options: &TlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(store::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Local)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![conn::ALPN_HTTP11.to_vec()];
    if options.acme_tls_alpn {
        config.alpn_protocols.push(conn::ALPN_ACME_TLS.to_vec());
    }
    config.session_storage = ServerSessionMemoryCache::new(options.session_cache);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Local)?;
    config.send_tls13_tickets = options.tickets.min(MAX_SESSION_TICKETS);
    config.max_tls13_tickets = if options.tickets == 0 {
        0
    } else {
        MAX_SESSION_TICKETS
    };
    Ok(Arc::new(config))
}
