//! The errors of `S` (the TLS stage between `T` and `H`), grouped by blame.
//!
//! `T → [S] → H → A → router → destination`: a [`TlsError`] ends one
//! connection; the driver counts it by [`TlsError::reason`] and closes the
//! socket (after writing whatever [`crate::TlsConn::output`] still holds: a
//! TLS alert, or the plain 400 for [`TlsError::PlainHttp`]). Like rustls'
//! own errors they are grouped by who is to blame ([`Blame`]), so a server
//! bug is never mistaken for a bad client. Certificate-store and ACME errors
//! live with their modules ([`crate::store::CertError`],
//! [`crate::acme::AcmeError`]): they concern files and the ACME server, not
//! a connection.

use std::time::Duration;

/// Who caused a [`TlsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client: bad bytes, a refused offer, an alert, silence, plain HTTP.
    Peer,
    /// This server: no certificate for the handshake, a crypto failure.
    Local,
    /// The caller broke the call contract (a write after close).
    Caller,
}

/// Why a TLS connection ended. Sticky: once returned, every later input
/// call returns the same error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The first byte was an ASCII capital letter: a plain-HTTP request on
    /// a TLS port (TLS starts with the record type 0x16). A plain `400`
    /// saying so waits in the output; write it, then close.
    #[error("plain HTTP request on a TLS port")]
    PlainHttp,
    /// The handshake did not finish within the deadline (counted as
    /// `tls_handshake_timeout`).
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer sent something rustls refused, offered nothing acceptable
    /// (protocol version, cipher suite, ALPN), or sent a fatal alert.
    #[error("TLS error caused by the peer: {0}")]
    Peer(rustls::Error),
    /// This side failed (for example no certificate could be chosen).
    #[error("TLS error on this side: {0}")]
    Local(rustls::Error),
    /// Plaintext was sent after `close_notify` (caller misuse).
    #[error("plaintext sent after the TLS connection was closed")]
    SendAfterClose,
}

impl TlsError {
    /// Sorts a rustls error by blame.
    pub(crate) fn from_rustls(error: rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidEncryptedClientHello(_)
            | E::InvalidMessage(_)
            | E::NoCertificatesPresented
            | E::UnsupportedNameType
            | E::DecryptError
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::AlertReceived(_)
            | E::InvalidCertificate(_)
            | E::NoApplicationProtocol
            | E::PeerSentOversizedRecord => Self::Peer(error),
            other => Self::Local(other),
        }
    }

    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            Self::PlainHttp | Self::HandshakeTimeout(_) | Self::Peer(_) => Blame::Peer,
            Self::Local(_) => Blame::Local,
            Self::SendAfterClose => Blame::Caller,
        }
    }

    /// The metrics label the driver counts this error under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PlainHttp => "tls_plain_http",
            Self::HandshakeTimeout(_) => "tls_handshake_timeout",
            Self::Peer(rustls::Error::AlertReceived(_)) => "tls_alert_received",
            Self::Peer(
                rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol,
            ) => "tls_peer_incompatible",
            Self::Peer(_) => "tls_peer_error",
            Self::Local(_) => "tls_local_error",
            Self::SendAfterClose => "tls_send_after_close",
        }
    }
}
