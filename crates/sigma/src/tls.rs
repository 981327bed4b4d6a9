//! `S` assembled from `[tls]` (DESIGN §2a): the certificate store, the
//! rustls server config shared by every TLS listener, ACME, and the
//! certificate reload the `SIGHUP` path calls.
//!
//! `T → [S] → H → A → router → destination`. This is start-up and
//! lifecycle only; the per-connection part is [`crate::tlswire`], the
//! sans-IO machine and the store are in `sigma-tls`.
//!
//! Start-up refuses a certificate file that cannot be read, a key that
//! does not match its certificate and an expired certificate, naming the
//! file. ACME never blocks start-up: what the data directory holds is
//! served at once, ordering and renewal run in the background, and a
//! failure (an ACME directory that does not answer, say) is logged with
//! the directory's URL and retried with backoff while the listeners keep
//! serving the certificates they have.

use std::path::Path;
use std::sync::Arc;

use sigma_tls::acme::{Acme, AcmeConfig, AcmeError, ChallengeKind, Http01Tokens};
use sigma_tls::{CertError, CertFiles, CertStore, TlsError, TlsOptions};

use crate::config::{Challenge, TlsConfig};

/// Where under the data directory ACME keeps its account and certificate.
pub const ACME_DIR: &str = "acme";

/// `S` for one process.
pub struct Tls {
    /// The certificates, chosen by SNI; reloadable.
    pub store: Arc<CertStore>,
    /// The rustls config of every TLS listener (its session cache and
    /// ticket keys live in it, so it is built once).
    pub server_config: Arc<rustls::ServerConfig>,
    /// ACME, when `[tls.acme]` is set (not started yet: [`Tls::spawn`]).
    pub acme: Option<Acme>,
    /// The certificate files it serves, in order.
    files: Vec<CertFiles>,
    /// `tls.session_tickets`, built into `server_config`.
    tickets: usize,
}

/// `[tls]` could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file (named in the message).
    #[error("tls: {0}")]
    Cert(#[from] CertError),
    /// `[tls.acme]`.
    #[error("tls.acme: {0}")]
    Acme(#[from] AcmeError),
    /// rustls refused the config.
    #[error("tls: {0}")]
    Rustls(#[from] TlsError),
    /// `[tls]` does not fit the listeners (the message names the key).
    #[error("{0}")]
    Topology(String),
    /// No certificate at all yet, and no ACME to get one.
    #[error("tls: no certificate: set tls.cert and tls.key, or [tls.acme]")]
    NoCertificate,
}

impl Tls {
    /// Reads the certificate files, loads what ACME stored in
    /// `data_dir/acme` and builds the rustls config. No network.
    pub fn build(cfg: &TlsConfig, data_dir: &Path) -> Result<Self, TlsSetupError> {
        let files = files_of(cfg);
        if files.is_empty() && cfg.acme.is_none() {
            return Err(TlsSetupError::NoCertificate);
        }
        let store = Arc::new(CertStore::from_files(files.clone())?);
        let acme = match &cfg.acme {
            None => None,
            Some(a) => {
                let kind = match a.challenge {
                    Challenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
                    Challenge::Http01 => ChallengeKind::Http01,
                };
                let mut ac = AcmeConfig::new(
                    &a.directory,
                    a.domains.clone(),
                    kind,
                    data_dir.join(ACME_DIR),
                );
                ac.email = a.email.clone();
                ac.ca = a.ca.clone();
                let acme = Acme::new(ac, Arc::clone(&store))?;
                // What a restart finds is served at once, without network.
                if let Err(e) = acme.load_stored() {
                    tracing::warn!(error = %e, "cannot use the stored ACME certificate; ordering anew");
                }
                Some(acme)
            }
        };
        let options = TlsOptions {
            acme_tls_alpn: cfg
                .acme
                .as_ref()
                .is_some_and(|a| a.challenge == Challenge::TlsAlpn01),
            tickets: cfg.session_tickets,
            ..TlsOptions::default()
        };
        let server_config = sigma_tls::server_config(Arc::clone(&store), &options)?;
        Ok(Self {
            store,
            server_config,
            acme,
            files,
            tickets: cfg.session_tickets,
        })
    }

    /// The `http-01` tokens the plain listeners answer, with that
    /// challenge.
    pub fn http01(&self) -> Option<Http01Tokens> {
        self.acme
            .as_ref()
            .filter(|a| a.config().challenge == ChallengeKind::Http01)
            .map(Acme::http01)
    }

    /// Starts ACME in the background (order now if nothing valid is
    /// stored, renew at a third of the lifetime left, retry with backoff).
    pub fn spawn(&self) {
        if let Some(acme) = &self.acme {
            tokio::spawn(acme.clone().run());
        }
    }
}

/// Re-reads every certificate file (`SIGHUP`, DESIGN §8): new handshakes
/// get the new certificates, open connections keep theirs. On error the
/// old certificates stay and the error (naming the file) is returned.
/// The one call the reload path makes for `S`.
pub fn reload_certs(store: &CertStore) -> Result<usize, CertError> {
    match store.reload() {
        Ok(n) => {
            tracing::info!(certificates = n, "TLS certificates reloaded");
            Ok(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old ones");
            Err(e)
        }
    }
}

/// The certificate files `cfg` names, in serving order.
fn files_of(cfg: &TlsConfig) -> Vec<CertFiles> {
    let mut files = Vec::new();
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        files.push(CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    files.extend(cfg.extra.iter().map(|p| CertFiles {
        cert: p.cert.clone(),
        key: p.key.clone(),
    }));
    files
}

/// `S`'s part of a `SIGHUP` config reload ([`crate::reload::Reloader`]):
/// the check reads and checks every certificate file of the new config
/// (a bad one refuses the whole reload, naming the file; the old
/// certificates stay), the commit swaps them in for new handshakes. Open
/// connections keep theirs. Turning `[tls]` on or off, changing which
/// files it names or `tls.session_tickets`, needs a restart (the reload
/// is refused, saying so); the files' contents reload.
pub fn reloader(tls: Arc<Tls>) -> crate::reload::Reloader {
    crate::reload::Reloader {
        name: "tls certificates",
        prepare: Box::new(move |config: &crate::config::Config| {
            let Some(cfg) = &config.tls else {
                anyhow::bail!("[tls] was removed: turning TLS off needs a restart");
            };
            if files_of(cfg) != tls.files {
                anyhow::bail!(
                    "tls.cert, tls.key or [[tls.extra]] name other files: that needs a restart (the files themselves reload)"
                );
            }
            if cfg.session_tickets != tls.tickets {
                anyhow::bail!("tls.session_tickets changed: that needs a restart");
            }
            let now = std::time::SystemTime::now();
            for f in &tls.files {
                sigma_tls::Certificate::load(f, now)?;
            }
            let tls = Arc::clone(&tls);
            Ok(Box::new(move || {
                let _ = reload_certs(&tls.store);
            }) as crate::reload::Commit)
        }),
    }
}
