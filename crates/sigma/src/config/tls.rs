//! `[tls]`: the settings of `S`, the TLS stage of `T443[SHA]` (DESIGN
//! §2a): certificate files, automatic certificates (`[tls.acme]`) and what
//! the plain listeners do (`[tls.http]`).
//!
//! Only the shape and the cross-key rules are checked here (the error
//! names the key path); the files themselves are read when the server
//! starts (`crate::tls`), where a key that does not match its
//! certificate, an expired certificate or an unreadable file is refused
//! with the file's name.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de::duration;

use super::keypath::{key, KeyPath, Seg};
use crate::pipeline::{Stage, Topology};

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The first certificate chain (PEM); served without SNI or for an
    /// unknown name.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// More certificates, chosen by SNI (`[[tls.extra]]`).
    #[serde(default)]
    pub extra: Vec<CertPair>,
    /// Automatic certificates (`[tls.acme]`).
    pub acme: Option<AcmeTable>,
    /// What the plain listeners do (`[tls.http]`).
    #[serde(default)]
    pub http: TlsHttp,
    /// How long a client has to finish the handshake (default 10 s;
    /// counted as `tls_handshake_timeout` when it does not).
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// TLS 1.3 session tickets per handshake (default 1; 0 turns TLS 1.3
    /// resumption off; at most 8).
    #[serde(default = "default_session_tickets")]
    pub session_tickets: usize,
}

fn default_session_tickets() -> usize {
    sigma_tls::DEFAULT_SESSION_TICKETS
}

fn default_handshake_timeout() -> Duration {
    sigma_tls::conn::DEFAULT_HANDSHAKE_TIMEOUT
}

/// One `[[tls.extra]]` certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// The chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// `[tls.acme]` (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeTable {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact address (optional).
    pub email: Option<String>,
    /// The names of the certificate.
    pub domains: Vec<String>,
    /// How the ACME server validates the names.
    #[serde(default)]
    pub challenge: Challenge,
    /// A PEM root to trust for the ACME server itself (tests: pebble).
    pub ca: Option<PathBuf>,
}

/// `tls.acme.challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Challenge {
    /// `tls-alpn-01` (RFC 8737), answered by the TLS listeners.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `http-01`, answered by the plain listeners.
    #[serde(rename = "http-01")]
    Http01,
}

/// `[tls.http]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsHttp {
    /// Plain listeners answer `308` to `https://` (except ACME challenges).
    pub redirect: bool,
    /// `Strict-Transport-Security` on every TLS response, e.g.
    /// `"max-age=31536000"`.
    pub hsts: Option<String>,
}

/// The checks across `[tls]`'s keys. The error names the key. (What
/// depends on the listeners is [`check_topology`]: `--pipeline` may
/// replace them after the file is read.)
pub(super) fn check(tls: Option<&TlsConfig>) -> Result<(), (KeyPath, String)> {
    let Some(tls) = tls else {
        return Ok(());
    };
    match (&tls.cert, &tls.key) {
        (Some(_), None) => {
            return Err((
                vec![key("tls"), key("key")],
                "is required with tls.cert".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                vec![key("tls"), key("cert")],
                "is required with tls.key".into(),
            ))
        }
        (None, None) if tls.acme.is_none() => {
            return Err((
                vec![key("tls"), key("cert")],
                "is required (with tls.key) unless [tls.acme] is set".into(),
            ))
        }
        (None, None) if !tls.extra.is_empty() => {
            return Err((
                vec![key("tls"), key("cert")],
                "is required with [[tls.extra]] (it is the default certificate)".into(),
            ))
        }
        _ => {}
    }
    for (i, pair) in tls.extra.iter().enumerate() {
        for (name, p) in [("cert", &pair.cert), ("key", &pair.key)] {
            if p.as_os_str().is_empty() {
                return Err((
                    vec![key("tls"), key("extra"), Seg::Index(i), key(name)],
                    "must not be empty".into(),
                ));
            }
        }
    }
    if tls.session_tickets > sigma_tls::MAX_SESSION_TICKETS {
        return Err((
            vec![key("tls"), key("session_tickets")],
            format!(
                "{} is too many: at most {} tickets per handshake",
                tls.session_tickets,
                sigma_tls::MAX_SESSION_TICKETS
            ),
        ));
    }
    if let Some(acme) = &tls.acme {
        check_acme(acme)?;
    }
    if let Some(hsts) = &tls.http.hsts {
        if hsts.is_empty() || !hsts.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err((
                vec![key("tls"), key("http"), key("hsts")],
                format!("invalid header value {hsts:?}: expected e.g. \"max-age=31536000\""),
            ));
        }
    }
    Ok(())
}

/// The checks of `[tls]` against the listeners that will run: `S` needs
/// `[tls]`, `[tls]` needs an `S` listener, a redirect and `http-01` need
/// a plain one. The message names the key.
pub fn check_topology(tls: Option<&TlsConfig>, topology: &Topology) -> Result<(), String> {
    let has_s = topology.listeners.iter().any(|l| l.has(Stage::S));
    let has_plain = topology.listeners.iter().any(|l| !l.has(Stage::S));
    let Some(tls) = tls else {
        if has_s {
            return Err("pipeline: a listener has `S` (TLS) but there is no [tls] table: set tls.cert and tls.key, or [tls.acme]".into());
        }
        return Ok(());
    };
    if !has_s {
        return Err("tls: [tls] is set but no listener has `S`: add one, e.g. pipeline = \"T0.0.0.0:443[SHA] T0.0.0.0:80[H]\"".into());
    }
    if tls.http.redirect && !has_plain {
        return Err(
            "tls.http.redirect: needs a plain listener (one without `S`) to redirect from".into(),
        );
    }
    if tls
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == Challenge::Http01)
        && !has_plain
    {
        return Err("tls.acme.challenge: \"http-01\" is answered on a plain listener, and the pipeline has none (add e.g. T0.0.0.0:80[H])".into());
    }
    Ok(())
}

fn check_acme(acme: &AcmeTable) -> Result<(), (KeyPath, String)> {
    let at = |k: &str| vec![key("tls"), key("acme"), key(k)];
    let url_ok = acme
        .directory
        .strip_prefix("https://")
        .or_else(|| acme.directory.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.bytes().any(|b| b.is_ascii_whitespace()));
    if !url_ok {
        return Err((
            at("directory"),
            format!(
                "invalid URL {:?}: expected e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
                acme.directory
            ),
        ));
    }
    if acme.domains.is_empty() {
        return Err((at("domains"), "must name at least one domain".into()));
    }
    for (i, d) in acme.domains.iter().enumerate() {
        if !valid_dns_name(d) {
            return Err((
                vec![key("tls"), key("acme"), key("domains"), Seg::Index(i)],
                format!("invalid domain {d:?}: expected a DNS name such as \"example.com\""),
            ));
        }
    }
    if let Some(email) = &acme.email {
        if !email.contains('@') || email.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err((at("email"), format!("invalid address {email:?}")));
        }
    }
    Ok(())
}

/// A DNS name ACME can issue for: labels of letters, digits and `-`,
/// at most 253 bytes. Wildcards are not offered (they need `dns-01`).
fn valid_dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["example.com", "a-b.example", "localhost", "x1.test"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*.example.com",
            "a..b",
            "-a.b",
            "a_b.c",
            "é.com",
            "a.b.",
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
