//! ACME (RFC 8555): certificates obtained and renewed automatically, fed
//! into the [`CertStore`].
//!
//! Outside the per-connection path of `T → S → H → …`: [`Acme`] is a
//! background task of the server. It talks to the ACME server with
//! `instant-acme`, answers challenges through the two seams the pipeline
//! already has — `http-01` through [`Http01Tokens`] (the plain listeners'
//! `H` answers `GET /.well-known/acme-challenge/TOKEN` from
//! [`Http01Tokens::lookup`]), `tls-alpn-01` through
//! [`CertStore::set_challenge`] (the resolver serves the challenge
//! certificate to handshakes that offer ALPN `acme-tls/1`) — and installs
//! the result with [`CertStore::install`].
//!
//! State lives in one directory: `account.json` (the ACME account key and
//! URL, mode 0600), `cert.pem` (the chain) and `key.pem` (mode 0600),
//! each written to a temporary file and renamed. [`Acme::load_stored`]
//! serves a stored certificate without any network, so a restart orders
//! nothing while the certificate is not due.
//!
//! Renewal is due when a third of the lifetime is left ([`renewal_time`],
//! pure). A failed attempt is retried after [`backoff_delay`] (exponential,
//! capped); nothing already served is ever removed — a failure only logs
//! and waits. Every request to the ACME server is bounded by
//! [`AcmeConfig::request_timeout`], so a directory that does not answer is
//! an error naming its URL, not a hang.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::file;
use crate::store::{provider, CertErrorKind, CertStore, Certificate};

/// The default bound on one request (or one polling phase) to the ACME
/// server.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry delay after a failed order.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(60);
/// The longest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// The longest sleep of [`Acme::run`] between checks (clock jumps and
/// suspended machines are noticed within this).
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// The label under which ACME certificates sit in the [`CertStore`].
pub const STORE_LABEL: &str = "acme";

/// How the ACME server validates the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `http-01`: a token under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// `tls-alpn-01` (RFC 8737): a special certificate on port 443.
    TlsAlpn01,
}

/// What [`Acme`] needs.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact email (becomes `mailto:`), optional.
    pub email: Option<String>,
    /// The DNS names of the one certificate.
    pub domains: Vec<String>,
    /// The challenge kind.
    pub challenge: ChallengeKind,
    /// A PEM root to trust for the ACME server itself (tests: pebble);
    /// otherwise the platform's roots.
    pub ca: Option<PathBuf>,
    /// Where the account and certificate are kept.
    pub state_dir: PathBuf,
    /// Bound on each request or polling phase.
    pub request_timeout: Duration,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl AcmeConfig {
    /// A config with the default timeouts.
    pub fn new(
        directory: &str,
        domains: Vec<String>,
        challenge: ChallengeKind,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            directory: directory.to_owned(),
            email: None,
            domains,
            challenge,
            ca: None,
            state_dir,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Why an ACME step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The config cannot work.
    #[error("ACME config: {0}")]
    Config(String),
    /// The directory could not be reached or did not answer in time.
    #[error("ACME directory {url} did not answer: {reason}")]
    DirectoryUnreachable {
        /// The directory URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The ACME server refused or failed a step.
    #[error("ACME server {url}: {step}: {reason}")]
    Server {
        /// The directory URL.
        url: String,
        /// What was being done (`new order`, `finalize`, …).
        step: &'static str,
        /// The server's problem or the client's error.
        reason: String,
    },
    /// The state directory could not be read or written.
    #[error("ACME state {}: {error}", path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The issued (or stored) certificate is unusable.
    #[error("ACME certificate {}: {kind}", path.display())]
    Certificate {
        /// Where it is (or would be) stored.
        path: PathBuf,
        /// What is wrong.
        kind: CertErrorKind,
    },
}

/// What [`Acme::ensure_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The served certificate is not due: nothing was ordered.
    NotDue {
        /// When it will be.
        renew_at: SystemTime,
    },
    /// A new certificate was ordered, stored and installed.
    Issued {
        /// When it will be due.
        renew_at: SystemTime,
    },
}

/// When a certificate valid from `not_before` to `not_after` is due for
/// renewal: when a third of its lifetime is left.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_after.checked_sub(lifetime / 3).unwrap_or(not_before)
}

/// The delay before retry number `attempt` (0 = the first retry):
/// `initial · 2^attempt`, at most `max`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// How long [`Acme::run`] sleeps before the next check.
pub fn next_check(now: SystemTime, renew_at: SystemTime) -> Duration {
    renew_at
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_CHECK_INTERVAL)
}

/// The `http-01` answers being offered: token → key authorization. Cheap
/// to clone; the plain listeners' `H` keeps one.
#[derive(Debug, Clone, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl Http01Tokens {
    /// The body to answer `GET /.well-known/acme-challenge/{token}` with
    /// (`text/plain`), if that token is being validated.
    pub fn lookup(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn insert(&self, token: String, key_authorization: String) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, key_authorization);
    }

    fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

/// The stored account: its directory and credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME manager for one certificate (see the module doc).
#[derive(Clone)]
pub struct Acme {
    config: Arc<AcmeConfig>,
    store: Arc<CertStore>,
    tokens: Http01Tokens,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Acme {
    /// Checks the config; touches neither the network nor the disk.
    pub fn new(config: AcmeConfig, store: Arc<CertStore>) -> Result<Self, AcmeError> {
        if config.domains.is_empty() {
            return Err(AcmeError::Config("no domains".into()));
        }
        if let Some(bad) = config
            .domains
            .iter()
            .find(|d| rustls::pki_types::DnsName::try_from(d.as_str()).is_err())
        {
            return Err(AcmeError::Config(format!("{bad:?} is not a DNS name")));
        }
        if !(config.directory.starts_with("https://") || config.directory.starts_with("http://")) {
            return Err(AcmeError::Config(format!(
                "directory {:?} is not an http(s) URL",
                config.directory
            )));
        }
        Ok(Self {
            config: Arc::new(config),
            store,
            tokens: Http01Tokens::default(),
        })
    }

    /// The `http-01` token map for the plain listeners.
    pub fn http01(&self) -> Http01Tokens {
        self.tokens.clone()
    }

    /// The config.
    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    fn path(&self, name: &str) -> PathBuf {
        self.config.state_dir.join(name)
    }

    /// Installs the stored certificate, if there is one for these domains
    /// and it has not expired (an expired one is left for
    /// [`ensure_at`](Self::ensure_at) to replace; the store never gets
    /// it). No network.
    pub fn load_stored(&self) -> Result<Option<Arc<Certificate>>, AcmeError> {
        let (cert_path, key_path) = (self.path("cert.pem"), self.path("key.pem"));
        if !cert_path.exists() {
            return Ok(None);
        }
        let read = |p: &Path| {
            file::read(p).map_err(|e| AcmeError::Certificate {
                path: p.to_path_buf(),
                kind: e.into(),
            })
        };
        let cert = Certificate::from_pem_unchecked(&read(&cert_path)?, &read(&key_path)?).map_err(
            |kind| {
                let path = match kind {
                    CertErrorKind::NoKey
                    | CertErrorKind::UnsupportedKey(_)
                    | CertErrorKind::KeyMismatch(_) => key_path.clone(),
                    _ => cert_path.clone(),
                };
                AcmeError::Certificate { path, kind }
            },
        )?;
        if SystemTime::now() > cert.not_after() {
            tracing::warn!(path = %cert_path.display(), "stored ACME certificate has expired; ordering anew");
            return Ok(None);
        }
        if !self.covers(&cert) {
            tracing::info!(path = %cert_path.display(), "stored ACME certificate does not cover the configured domains; ordering anew");
            return Ok(None);
        }
        self.store.install(STORE_LABEL, cert);
        Ok(self.store.installed(STORE_LABEL))
    }

    fn covers(&self, cert: &Certificate) -> bool {
        self.config
            .domains
            .iter()
            .all(|d| cert.names().iter().any(|n| n.eq_ignore_ascii_case(d)))
    }

    /// Orders a certificate if the served one is missing or due at `now`.
    pub async fn ensure_at(&self, now: SystemTime) -> Result<Outcome, AcmeError> {
        if let Some(cert) = self.store.installed(STORE_LABEL).filter(|c| self.covers(c)) {
            let renew_at = renewal_time(cert.not_before(), cert.not_after());
            if now < renew_at {
                return Ok(Outcome::NotDue { renew_at });
            }
        }
        let cert = self.order().await?;
        let renew_at = renewal_time(cert.not_before(), cert.not_after());
        self.store.install(STORE_LABEL, cert);
        Ok(Outcome::Issued { renew_at })
    }

    /// [`ensure_at`](Self::ensure_at) now.
    pub async fn ensure(&self) -> Result<Outcome, AcmeError> {
        self.ensure_at(SystemTime::now()).await
    }

    /// Forever: load what is stored, then order and renew when due,
    /// retrying failures with backoff. Spawn it; it never returns.
    pub async fn run(self) {
        if let Err(e) = self.load_stored() {
            tracing::warn!(error = %e, "cannot use the stored ACME certificate");
        }
        let mut attempt = 0u32;
        loop {
            let wait = match self.ensure().await {
                Ok(outcome) => {
                    attempt = 0;
                    let renew_at = match outcome {
                        Outcome::Issued { renew_at } => {
                            tracing::info!(domains = ?self.config.domains, "ACME certificate issued");
                            renew_at
                        }
                        Outcome::NotDue { renew_at } => renew_at,
                    };
                    next_check(SystemTime::now(), renew_at)
                }
                Err(e) => {
                    let wait = backoff_delay(
                        attempt,
                        self.config.backoff_initial,
                        self.config.backoff_max,
                    );
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "ACME order failed; serving what we have");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    // ---- the ACME conversation ---------------------------------------

    fn server_error(&self, step: &'static str, e: impl std::fmt::Display) -> AcmeError {
        AcmeError::Server {
            url: self.config.directory.clone(),
            step,
            reason: e.to_string(),
        }
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        step: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, AcmeError> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.server_error(step, e)),
            Err(_) => Err(self.server_error(
                step,
                format!("no answer within {:?}", self.config.request_timeout),
            )),
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        // instant-acme's client uses rustls' process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| AcmeError::Config(format!("ca {}: {e}", ca.display()))),
            None => Account::builder().map_err(|e| AcmeError::Config(e.to_string())),
        }
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> AcmeError {
        AcmeError::DirectoryUnreachable {
            url: self.config.directory.clone(),
            reason: reason.to_string(),
        }
    }

    /// Loads the stored account, or creates one and stores it.
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.path("account.json");
        if path.exists() {
            let bytes = file::read(&path).map_err(|e| AcmeError::State {
                path: path.clone(),
                error: std::io::Error::other(e.to_string()),
            })?;
            let stored: StoredAccount =
                serde_json::from_slice(&bytes).map_err(|e| AcmeError::State {
                    path: path.clone(),
                    error: std::io::Error::other(e),
                })?;
            if stored.directory == self.config.directory {
                return self
                    .within(
                        "load account",
                        self.builder()?.from_credentials(stored.credentials),
                    )
                    .await;
            }
            tracing::info!(path = %path.display(), "stored ACME account is for another directory; creating one");
        }
        let contact = self
            .config
            .email
            .iter()
            .map(|e| format!("mailto:{e}"))
            .collect::<Vec<_>>();
        let contact = contact.iter().map(String::as_str).collect::<Vec<_>>();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = self
            .within(
                "create account",
                self.builder()?
                    .create(&new, self.config.directory.clone(), None),
            )
            .await?;
        let stored = StoredAccount {
            directory: self.config.directory.clone(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::State {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        self.write_private(&path, &json)?;
        Ok(account)
    }

    /// The first contact with the directory: a connection failure or a
    /// timeout here means the directory does not answer.
    async fn within<T>(
        &self,
        step: &'static str,
        fut: impl std::future::Future<Output = Result<T, instant_acme::Error>>,
    ) -> Result<T, AcmeError> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e @ (instant_acme::Error::Hyper(_) | instant_acme::Error::Other(_)))) => {
                Err(self.unreachable(format!("{step}: {}", error_chain(&e))))
            }
            Ok(Err(e)) => Err(self.server_error(step, e)),
            Err(_) => Err(self.unreachable(format!(
                "{step}: no answer within {:?}",
                self.config.request_timeout
            ))),
        }
    }

    /// One order, start to finish; challenge answers are withdrawn after.
    async fn order(&self) -> Result<Certificate, AcmeError> {
        let account = self.account().await?;
        let mut tokens = Vec::new();
        let mut names = Vec::new();
        let result = self.order_with(&account, &mut tokens, &mut names).await;
        for t in &tokens {
            self.tokens.remove(t);
        }
        for n in &names {
            self.store.remove_challenge(n);
        }
        result
    }

    async fn order_with(
        &self,
        account: &Account,
        tokens: &mut Vec<String>,
        names: &mut Vec<String>,
    ) -> Result<Certificate, AcmeError> {
        let identifiers = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect::<Vec<_>>();
        let mut order = self
            .timed("new order", account.new_order(&NewOrder::new(&identifiers)))
            .await?;
        let kind = match self.config.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = self.timed_next(&mut authorizations).await? {
            let mut authz = authz;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(self.server_error("authorization", format!("status {other:?}")))
                }
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                self.server_error("authorization", format!("no {kind:?} challenge offered"))
            })?;
            let key_authorization = challenge.key_authorization();
            let domain = challenge.identifier().to_string();
            match self.config.challenge {
                ChallengeKind::Http01 => {
                    self.tokens.insert(
                        challenge.token.clone(),
                        key_authorization.as_str().to_owned(),
                    );
                    tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let key = alpn_challenge_key(&domain, key_authorization.digest().as_ref())
                        .map_err(|e| self.server_error("challenge certificate", e))?;
                    self.store.set_challenge(&domain, key);
                    names.push(domain.clone());
                }
            }
            self.timed("challenge ready", challenge.set_ready()).await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(self.config.request_timeout);
        let status = self.timed("validation", order.poll_ready(&retry)).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default();
            return Err(self.server_error("validation", format!("order {status:?} {detail}")));
        }
        let key_pem = self.timed("finalize", order.finalize()).await?;
        let chain_pem = self
            .timed("certificate", order.poll_certificate(&retry))
            .await?;
        let cert_path = self.path("cert.pem");
        let cert =
            Certificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes(), SystemTime::now())
                .map_err(|kind| AcmeError::Certificate {
                    path: cert_path.clone(),
                    kind,
                })?;
        self.write_private(&self.path("key.pem"), key_pem.as_bytes())?;
        self.write_private(&cert_path, chain_pem.as_bytes())?;
        Ok(cert)
    }

    async fn timed_next<'a>(
        &self,
        authorizations: &'a mut instant_acme::Authorizations<'_>,
    ) -> Result<Option<instant_acme::AuthorizationHandle<'a>>, AcmeError> {
        match tokio::time::timeout(self.config.request_timeout, authorizations.next()).await {
            Ok(None) => Ok(None),
            Ok(Some(Ok(a))) => Ok(Some(a)),
            Ok(Some(Err(e))) => Err(self.server_error("authorization", e)),
            Err(_) => Err(self.server_error("authorization", "no answer")),
        }
    }

    /// Writes `bytes` to `path` with mode 0600, through a temporary file
    /// and a rename (a crash never leaves half a key).
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
        let err = |error| AcmeError::State {
            path: path.to_path_buf(),
            error,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.config.state_dir)
            .map_err(err)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The RFC 8737 challenge certificate for `domain`: self-signed, the SAN
/// `domain`, the critical `acmeIdentifier` extension holding the SHA-256
/// of the key authorization.
pub fn alpn_challenge_key(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        // 90 days: due after 60
        let day = 86_400;
        assert_eq!(renewal_time(at(0), at(90 * day)), at(60 * day));
        assert_eq!(renewal_time(at(1000), at(1300)), at(1200));
        // a broken certificate (notAfter before notBefore) is due at once
        assert_eq!(renewal_time(at(500), at(100)), at(100));
        // the fake clock: before, at, after the point
        let renew = renewal_time(at(0), at(300));
        assert_eq!(next_check(at(150), renew), Duration::from_secs(50));
        assert_eq!(next_check(at(200), renew), Duration::ZERO);
        assert_eq!(next_check(at(250), renew), Duration::ZERO);
        assert_eq!(next_check(at(0), at(10 * day)), MAX_CHECK_INTERVAL);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        let got: Vec<u64> = (0..8).map(|a| backoff_delay(a, i, m).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff_delay(u32::MAX, i, m), m);
    }

    #[test]
    fn config_is_checked() {
        let store = Arc::new(CertStore::default());
        let dir = PathBuf::from("/nonexistent");
        let bad = |d: &str, domains: Vec<String>| {
            Acme::new(
                AcmeConfig::new(d, domains, ChallengeKind::Http01, dir.clone()),
                store.clone(),
            )
            .unwrap_err()
        };
        assert!(bad("https://x/dir", vec![])
            .to_string()
            .contains("no domains"));
        assert!(bad("https://x/dir", vec!["a b".into()])
            .to_string()
            .contains("not a DNS name"));
        assert!(bad("ftp://x", vec!["a.test".into()])
            .to_string()
            .contains("not an http(s) URL"));
    }

    #[test]
    fn stored_certificates_load_only_when_valid_and_covering_the_domains() {
        let pki = crate::testutil::Pki::new();
        let dir =
            std::env::temp_dir().join(format!("sigma-tls-acme-stored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(CertStore::default());
        let acme = Acme::new(
            AcmeConfig::new(
                "https://127.0.0.1:1/dir",
                vec!["a.test".into()],
                ChallengeKind::Http01,
                dir.clone(),
            ),
            store.clone(),
        )
        .unwrap();
        assert!(acme.load_stored().unwrap().is_none(), "nothing stored");
        let put = |(c, k): (String, String)| {
            std::fs::write(dir.join("cert.pem"), c).unwrap();
            std::fs::write(dir.join("key.pem"), k).unwrap();
        };
        put(pki.leaf_with(&["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }));
        assert!(acme.load_stored().unwrap().is_none(), "expired: not served");
        put(pki.leaf(&["b.test"]));
        assert!(
            acme.load_stored().unwrap().is_none(),
            "other domains: not served"
        );
        assert!(store.resolve_name(None).is_none());
        put(pki.leaf(&["a.test"]));
        let loaded = acme.load_stored().unwrap().unwrap();
        assert_eq!(loaded.names(), ["a.test"]);
        assert_eq!(
            store.resolve_name(Some("a.test")).unwrap().names(),
            ["a.test"]
        );
        std::fs::write(dir.join("key.pem"), "junk").unwrap();
        let err = acme.load_stored().unwrap_err();
        assert!(
            err.to_string().contains("key.pem: no PEM private key"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_alpn_challenge_certificate_is_served_only_to_acme_tls_handshakes() {
        use crate::testutil::{client_conn, Pki};
        use crate::{server_config, TlsConn, TlsOptions};
        let pki = Pki::new();
        let store = crate::testutil::store(&pki, &[&["a.test"]]);
        let key = alpn_challenge_key("a.test", &[7; 32]).unwrap();
        let challenge_der = key.cert[0].clone();
        store.set_challenge("A.test", key);
        let config = server_config(
            store.clone(),
            &TlsOptions {
                acme_tls_alpn: true,
                ..Default::default()
            },
        )
        .unwrap();
        // resolver level: acme-tls/1 → the challenge cert, otherwise the normal one
        let mut client_config = (*pki.client(&[&rustls::version::TLS13], &[b"acme-tls/1"])).clone();
        client_config
            .dangerous()
            .set_certificate_verifier(Arc::new(AcceptAny));
        let mut client = client_conn(Arc::new(client_config), "a.test");
        let mut server = TlsConn::new(config.clone(), std::time::Instant::now()).unwrap();
        for _ in 0..10 {
            let mut v = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut v).unwrap();
            }
            let mut rest = &v[..];
            while !rest.is_empty() {
                let n = server
                    .handle_input(rest, std::time::Instant::now())
                    .unwrap();
                rest = &rest[n..];
            }
            let out = server.output().to_vec();
            server.handle_written(out.len());
            let mut s = &out[..];
            while !s.is_empty() {
                client.read_tls(&mut s).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        assert!(server.is_acme_challenge());
        assert_eq!(client.peer_certificates().unwrap()[0], challenge_der);
        store.remove_challenge("a.test");
        assert_eq!(
            store.resolve_name(Some("a.test")).unwrap().names(),
            ["a.test"]
        );
    }

    #[derive(Debug)]
    struct AcceptAny;

    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
