//! The certificate store: what `S` presents in each handshake.
//!
//! `T → [S] → H → …`: rustls asks [`CertStore`] (a
//! [`ResolvesServerCert`]) for a certificate while it reads the client's
//! hello; nothing else in the pipeline sees certificates. The store is fed
//! by PEM files ([`CertFiles`], re-read by [`CertStore::reload`] on
//! `SIGHUP`), by ACME ([`CertStore::install`]) and by ACME's `tls-alpn-01`
//! challenge certificates ([`CertStore::set_challenge`]).
//!
//! The current map is an immutable [`CertMap`] behind an [`ArcSwap`]: a
//! reload or an install builds a new map and swaps it in, so new handshakes
//! get the new certificate while open connections (which hold their own
//! `Arc` of the old key, inside rustls) are untouched; a failed reload
//! leaves the old map in place and returns the error.
//!
//! Selection ([`select`], a pure function with a property test against a
//! reference model): an exact SAN DNS-name match wins, then a wildcard
//! match (`*.example.com` matches exactly one more label:
//! `a.example.com`, not `example.com` nor `a.b.example.com`), all ASCII
//! case-insensitive, earlier certificates first; no SNI or no match → the
//! first certificate.
//!
//! Judgement on expiry: an expired (or not yet valid) certificate file is
//! **refused** with an error naming the file, at start-up and on reload
//! (then the old map is kept): every client would reject it anyway, and a
//! loud failure at load time beats failed handshakes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::conn::ALPN_ACME_TLS;
use crate::file;

/// A certificate chain file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM: the leaf certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate or its key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertErrorKind {
    /// The file could not be read.
    #[error("{0}")]
    File(#[from] file::FileError),
    /// The file holds no `CERTIFICATE` PEM block.
    #[error("no PEM certificate in it")]
    NoCertificate,
    /// The file holds no private-key PEM block.
    #[error("no PEM private key in it")]
    NoKey,
    /// The PEM is malformed.
    #[error("bad PEM: {0}")]
    BadPem(String),
    /// The key is of a kind rustls cannot sign with.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    /// The key is not the one of the certificate.
    #[error("the private key does not match the certificate {0}")]
    KeyMismatch(PathBuf),
    /// The leaf certificate could not be parsed as X.509.
    #[error("bad X.509 certificate: {0}")]
    BadCertificate(String),
    /// The leaf certificate's `notAfter` is in the past.
    #[error("the certificate expired at {0} (unix time)")]
    Expired(u64),
    /// The leaf certificate's `notBefore` is in the future.
    #[error("the certificate is not valid before {0} (unix time)")]
    NotYetValid(u64),
}

/// A certificate or key that could not be used, naming its file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct CertError {
    /// The file at fault (the key file for a mismatch).
    pub path: PathBuf,
    /// What is wrong.
    pub kind: CertErrorKind,
}

/// A usable certificate: a chain, its signing key, and the facts the store
/// and ACME need (names, validity).
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the key
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses a PEM chain and key and checks that the key matches the leaf
    /// and that the leaf is valid at `now`. The error has no path: the
    /// caller knows the file ([`Certificate::load`] adds it).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, CertErrorKind> {
        let cert = Self::from_pem_unchecked(chain_pem, key_pem)?;
        cert.check_validity(now)?;
        Ok(cert)
    }

    /// As [`from_pem`](Self::from_pem) without the validity check (ACME
    /// reads its own stored certificate this way: expired means renew).
    pub fn from_pem_unchecked(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertErrorKind> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertErrorKind::BadPem(e.to_string()))?;
        let leaf = chain.first().ok_or(CertErrorKind::NoCertificate)?;
        let (names, not_before, not_after) = leaf_facts(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => CertErrorKind::NoKey,
            other => CertErrorKind::BadPem(other.to_string()),
        })?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertErrorKind::UnsupportedKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(CertErrorKind::KeyMismatch(PathBuf::new())),
        }
        Ok(Self {
            key: Arc::new(certified),
            names,
            not_before,
            not_after,
        })
    }

    /// Reads and checks a chain file and its key file.
    pub fn load(files: &CertFiles, now: SystemTime) -> Result<Self, CertError> {
        fn at(path: &Path) -> impl Fn(CertErrorKind) -> CertError + '_ {
            move |kind| CertError {
                path: path.to_path_buf(),
                kind,
            }
        }
        let chain = file::read(&files.cert).map_err(|e| CertError {
            path: files.cert.clone(),
            kind: e.into(),
        })?;
        let key = file::read(&files.key).map_err(|e| CertError {
            path: files.key.clone(),
            kind: e.into(),
        })?;
        let cert = Self::from_pem_unchecked(&chain, &key).map_err(|kind| match kind {
            CertErrorKind::KeyMismatch(_) => CertError {
                path: files.key.clone(),
                kind: CertErrorKind::KeyMismatch(files.cert.clone()),
            },
            CertErrorKind::NoKey | CertErrorKind::UnsupportedKey(_) => at(&files.key)(kind),
            CertErrorKind::BadPem(m) if !chain_is_pem_ok(&chain) => {
                at(&files.cert)(CertErrorKind::BadPem(m))
            }
            CertErrorKind::BadPem(m) => at(&files.key)(CertErrorKind::BadPem(m)),
            other => at(&files.cert)(other),
        })?;
        cert.check_validity(now).map_err(at(&files.cert))?;
        Ok(cert)
    }

    /// The SAN DNS names, lowercased.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The leaf's `notBefore`.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The leaf's `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// What rustls presents.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    fn check_validity(&self, now: SystemTime) -> Result<(), CertErrorKind> {
        if now > self.not_after {
            return Err(CertErrorKind::Expired(unix(self.not_after)));
        }
        if now < self.not_before {
            return Err(CertErrorKind::NotYetValid(unix(self.not_before)));
        }
        Ok(())
    }
}

fn chain_is_pem_ok(chain: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(chain).all(|r| r.is_ok())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH
            .checked_add(Duration::from_secs(s))
            .unwrap_or(UNIX_EPOCH),
        Err(_) => UNIX_EPOCH,
    }
}

/// The leaf's SAN DNS names (lowercased) and validity.
fn leaf_facts(
    leaf: &CertificateDer<'_>,
) -> Result<(Vec<String>, SystemTime, SystemTime), CertErrorKind> {
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertErrorKind::BadCertificate(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    let validity = x509.validity();
    Ok((
        names,
        from_unix(validity.not_before.timestamp()),
        from_unix(validity.not_after.timestamp()),
    ))
}

/// The crypto provider `S` uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---- selection ------------------------------------------------------

/// Whether a SAN `pattern` (lowercase) covers `name` (any case): equal, or
/// `*.rest` with `name` = one non-empty label + `.rest`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix("*.") {
        return match name.split_once('.') {
            Some((label, tail)) => !label.is_empty() && tail.eq_ignore_ascii_case(rest),
            None => false,
        };
    }
    pattern.eq_ignore_ascii_case(name)
}

/// Which certificate (by index into `names`, one name list per
/// certificate, in order) serves `sni`: the first with an exact name, else
/// the first with a matching wildcard, else the first; `None` only when
/// there is none.
pub fn select<S: AsRef<str>>(names: &[Vec<S>], sni: Option<&str>) -> Option<usize> {
    if names.is_empty() {
        return None;
    }
    let Some(sni) = sni else { return Some(0) };
    let exact = |p: &str| !p.starts_with("*.") && p.eq_ignore_ascii_case(sni);
    let wild = |p: &str| p.starts_with("*.") && name_matches(p, sni);
    names
        .iter()
        .position(|ns| ns.iter().any(|p| exact(p.as_ref())))
        .or_else(|| {
            names
                .iter()
                .position(|ns| ns.iter().any(|p| wild(p.as_ref())))
        })
        .or(Some(0))
}

/// An immutable snapshot of the certificates, in selection order.
#[derive(Debug, Default)]
pub struct CertMap {
    certs: Vec<Arc<Certificate>>,
    names: Vec<Vec<String>>,
}

impl CertMap {
    fn new(certs: Vec<Arc<Certificate>>) -> Self {
        let names = certs.iter().map(|c| c.names.clone()).collect();
        Self { certs, names }
    }

    /// The certificate for `sni` (see [`select`]).
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<Certificate>> {
        select(&self.names, sni).and_then(|i| self.certs.get(i))
    }

    /// How many certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

// ---- the store ------------------------------------------------------

/// The certificates `S` serves (see the module doc). Share it as
/// `Arc<CertStore>`: rustls holds one as its resolver, the reload path and
/// ACME hold others.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<CertMap>,
    files: Vec<CertFiles>,
    /// The certificates read from `files`, in order (replaced by reload).
    from_files: Mutex<Vec<Arc<Certificate>>>,
    /// ACME-installed certificates, by label, in installation order.
    installed: Mutex<Vec<(String, Arc<Certificate>)>>,
    /// `tls-alpn-01` challenge certificates by (lowercase) name.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Held across read-both-lists-and-swap, so that of two concurrent
    /// rebuilds (a reload and an install) the last to swap saw both.
    rebuilding: Mutex<()>,
}

impl CertStore {
    /// A store that serves `files` (the first is the default). Every file
    /// is read and checked now; the first bad one is the error.
    pub fn from_files(files: Vec<CertFiles>) -> Result<Self, CertError> {
        let store = Self {
            files,
            ..Self::default()
        };
        store.reload()?;
        Ok(store)
    }

    /// Re-reads every file and swaps the new map in; returns how many
    /// certificates are served. On error nothing changes.
    pub fn reload(&self) -> Result<usize, CertError> {
        self.reload_at(SystemTime::now())
    }

    /// [`reload`](Self::reload) with the validity checked at `now`.
    pub fn reload_at(&self, now: SystemTime) -> Result<usize, CertError> {
        let loaded = self
            .files
            .iter()
            .map(|f| Certificate::load(f, now).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        *lock(&self.from_files) = loaded;
        Ok(self.rebuild())
    }

    /// Serves `cert` under `label` (an ACME certificate), replacing the
    /// one installed under that label before. File certificates come
    /// first in selection order.
    pub fn install(&self, label: &str, cert: Certificate) {
        {
            let mut installed = lock(&self.installed);
            let cert = Arc::new(cert);
            match installed.iter_mut().find(|(l, _)| l == label) {
                Some(slot) => slot.1 = cert,
                None => installed.push((label.to_owned(), cert)),
            }
        }
        self.rebuild();
    }

    /// The certificate installed under `label`, if any.
    pub fn installed(&self, label: &str) -> Option<Arc<Certificate>> {
        lock(&self.installed)
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.clone())
    }

    /// Serves `key` to `tls-alpn-01` validation handshakes for `name`.
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let mut map = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_ascii_lowercase(), key);
    }

    /// Stops serving the challenge certificate for `name`.
    pub fn remove_challenge(&self, name: &str) {
        let mut map = self.challenges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&name.to_ascii_lowercase());
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CertMap> {
        self.current.load_full()
    }

    /// The certificate a handshake with this SNI gets now.
    pub fn resolve_name(&self, sni: Option<&str>) -> Option<Arc<Certificate>> {
        self.current.load().resolve(sni).cloned()
    }

    fn rebuild(&self) -> usize {
        let _one_at_a_time = lock(&self.rebuilding);
        let mut certs = lock(&self.from_files).clone();
        certs.extend(lock(&self.installed).iter().map(|(_, c)| c.clone()));
        let n = certs.len();
        self.current.store(Arc::new(CertMap::new(certs)));
        n
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ALPN_ACME_TLS));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            let map = self.challenges.read().unwrap_or_else(|e| e.into_inner());
            return map.get(&name).cloned();
        }
        self.current
            .load()
            .resolve(hello.server_name())
            .map(|c| c.key.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{client_conn, config, Pki};
    use crate::{Plaintext, TlsConn};
    use proptest::prelude::*;
    use std::io::Write as _;
    use std::time::Instant;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sigma-tls-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_pair(dir: &Path, stem: &str, (cert, key): &(String, String)) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    /// The leaf certificate a client is shown for `sni` by `config`.
    fn served(pki: &Pki, config: Arc<rustls::ServerConfig>, sni: &str) -> Vec<String> {
        let mut client = client_conn(pki.client(&[&rustls::version::TLS13], &[]), sni);
        let mut server = TlsConn::new(config, Instant::now()).unwrap();
        handshake(&mut client, &mut server);
        leaf_names(&client)
    }

    fn leaf_names(client: &rustls::ClientConnection) -> Vec<String> {
        let leaf = client.peer_certificates().unwrap().first().unwrap();
        leaf_facts(leaf).unwrap().0
    }

    fn handshake(client: &mut rustls::ClientConnection, server: &mut TlsConn) {
        for _ in 0..10 {
            let mut v = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut v).unwrap();
            }
            let mut rest = &v[..];
            while !rest.is_empty() {
                let n = server.handle_input(rest, Instant::now()).unwrap();
                rest = &rest[n..];
            }
            let out = server.output().to_vec();
            server.handle_written(out.len());
            let mut s = &out[..];
            while !s.is_empty() {
                client.read_tls(&mut s).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && v.is_empty() {
                return;
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn wildcards_match_exactly_one_label_case_insensitively() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "A.EXAMPLE.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("*.example.com", "aexample.com"));
        assert!(name_matches("www.example.com", "WWW.Example.COM"));
        assert!(!name_matches("www.example.com", "example.com"));
    }

    #[test]
    fn selection_prefers_exact_then_wildcard_then_the_first() {
        let names = vec![vec!["a.test"], vec!["*.b.test"], vec!["x.b.test", "c.test"]];
        assert_eq!(select(&names, None), Some(0));
        assert_eq!(select(&names, Some("unknown.test")), Some(0));
        assert_eq!(select(&names, Some("C.TEST")), Some(2));
        assert_eq!(
            select(&names, Some("x.b.test")),
            Some(2),
            "exact beats an earlier wildcard"
        );
        assert_eq!(select(&names, Some("y.b.test")), Some(1));
        assert_eq!(select(&names, Some("b.test")), Some(0));
        assert_eq!(select::<&str>(&[], Some("a.test")), None);
    }

    #[test]
    fn sni_chooses_among_two_certificates_in_real_handshakes() {
        let pki = Pki::new();
        let dir = tempdir("sni");
        let a = write_pair(&dir, "a", &pki.leaf(&["a.test"]));
        let b = write_pair(&dir, "b", &pki.leaf(&["*.b.test", "b.test"]));
        let store = Arc::new(CertStore::from_files(vec![a, b]).unwrap());
        let config = config(store.clone());
        assert_eq!(served(&pki, config.clone(), "a.test"), ["a.test"]);
        assert_eq!(
            served(&pki, config.clone(), "www.B.test"),
            ["*.b.test", "b.test"]
        );
        assert_eq!(
            served(&pki, config.clone(), "b.test"),
            ["*.b.test", "b.test"]
        );
        // unknown name: the first certificate (the client then rejects it, by name)
        assert_eq!(
            store.resolve_name(Some("other.test")).unwrap().names(),
            ["a.test"]
        );
        assert_eq!(store.resolve_name(None).unwrap().names(), ["a.test"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let pki = Pki::new();
        let dir = tempdir("bad");
        let good = write_pair(&dir, "good", &pki.leaf(&["a.test"]));
        let other = write_pair(&dir, "other", &pki.leaf(&["a.test"]));

        // a key that is not the certificate's
        let mismatched = CertFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let err = CertStore::from_files(vec![mismatched]).unwrap_err();
        assert!(matches!(err.kind, CertErrorKind::KeyMismatch(_)), "{err}");
        assert_eq!(err.path, other.key);
        let msg = err.to_string();
        assert!(
            msg.contains("other.key") && msg.contains("good.pem") && msg.contains("does not match"),
            "{msg}"
        );

        // expired
        let expired = write_pair(
            &dir,
            "expired",
            &pki.leaf_with(&["a.test"], |p| {
                p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                p.not_after = rcgen::date_time_ymd(2001, 1, 1);
            }),
        );
        let err = CertStore::from_files(vec![expired.clone()]).unwrap_err();
        assert!(
            matches!(err.kind, CertErrorKind::Expired(978_307_200)),
            "{err}"
        );
        assert_eq!(err.path, expired.cert);
        assert!(err.to_string().contains("expired"), "{err}");

        // unreadable, not a file, not PEM, no key
        let missing = CertFiles {
            cert: dir.join("missing.pem"),
            key: good.key.clone(),
        };
        let err = CertStore::from_files(vec![missing.clone()]).unwrap_err();
        assert_eq!(err.path, missing.cert);
        assert!(
            err.to_string().contains("missing.pem: cannot read it"),
            "{err}"
        );
        let dev = CertFiles {
            cert: good.cert.clone(),
            key: PathBuf::from("/dev/zero"),
        };
        let err = CertStore::from_files(vec![dev]).unwrap_err();
        assert!(
            err.to_string().contains("/dev/zero: not a regular file"),
            "{err}"
        );
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let err = CertStore::from_files(vec![CertFiles {
            cert: junk.clone(),
            key: good.key.clone(),
        }])
        .unwrap_err();
        assert!(
            matches!(err.kind, CertErrorKind::NoCertificate) && err.path == junk,
            "{err}"
        );
        let err = CertStore::from_files(vec![CertFiles {
            cert: good.cert.clone(),
            key: junk.clone(),
        }])
        .unwrap_err();
        assert!(
            matches!(err.kind, CertErrorKind::NoKey) && err.path == junk,
            "{err}"
        );

        assert_eq!(
            CertStore::from_files(vec![good]).unwrap().snapshot().len(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reload_swaps_for_new_handshakes_keeps_open_ones_and_survives_a_bad_file() {
        let pki = Pki::new();
        let dir = tempdir("reload");
        let files = write_pair(&dir, "site", &pki.leaf(&["a.test", "old.a.test"]));
        let store = Arc::new(CertStore::from_files(vec![files.clone()]).unwrap());
        let config = config(store.clone());

        // an open connection, handshaken on the old certificate
        let mut client = client_conn(pki.client(&[&rustls::version::TLS13], &[]), "a.test");
        let mut open = TlsConn::new(config.clone(), Instant::now()).unwrap();
        handshake(&mut client, &mut open);
        assert_eq!(leaf_names(&client), ["a.test", "old.a.test"]);

        write_pair(&dir, "site", &pki.leaf(&["a.test", "new.a.test"]));
        assert_eq!(store.reload().unwrap(), 1);
        assert_eq!(
            served(&pki, config.clone(), "a.test"),
            ["a.test", "new.a.test"]
        );

        // the open connection still works, on its old certificate
        client.writer().write_all(b"ping").unwrap();
        let mut v = Vec::new();
        client.write_tls(&mut v).unwrap();
        open.handle_input(&v, Instant::now()).unwrap();
        let mut got = Vec::new();
        assert_eq!(
            open.poll_plaintext(&mut got, 100).unwrap(),
            Plaintext::Data(4)
        );
        assert_eq!(got, b"ping");
        assert_eq!(leaf_names(&client), ["a.test", "old.a.test"]);

        // a broken file: the error, and the previous certificate stays
        std::fs::write(&files.key, pki.leaf(&["x"]).1).unwrap();
        let err = store.reload().unwrap_err();
        assert!(matches!(err.kind, CertErrorKind::KeyMismatch(_)), "{err}");
        assert_eq!(served(&pki, config, "a.test"), ["a.test", "new.a.test"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn installed_certificates_follow_the_files_and_replace_by_label() {
        let pki = Pki::new();
        let store = CertStore::default();
        assert!(store.resolve_name(None).is_none());
        store.install("acme", pki.certificate(&["one.test"]));
        assert_eq!(store.resolve_name(None).unwrap().names(), ["one.test"]);
        store.install("acme", pki.certificate(&["two.test"]));
        assert_eq!(store.snapshot().len(), 1);
        assert_eq!(
            store.resolve_name(Some("two.test")).unwrap().names(),
            ["two.test"]
        );
    }

    #[test]
    fn concurrent_reloads_and_installs_lose_nothing() {
        let pki = Pki::new();
        let dir = tempdir("race");
        let files = write_pair(&dir, "site", &pki.leaf(&["a.test"]));
        let store = Arc::new(CertStore::from_files(vec![files]).unwrap());
        let certs: Vec<Certificate> = (0..4)
            .map(|i| pki.certificate(&[&format!("c{i}.test")]))
            .collect();
        std::thread::scope(|s| {
            for (i, cert) in certs.iter().enumerate() {
                let store = store.clone();
                s.spawn(move || {
                    for _ in 0..200 {
                        store.install(&format!("l{i}"), cert.clone());
                    }
                });
            }
            let store = store.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    store.reload().unwrap();
                }
            });
        });
        assert_eq!(store.snapshot().len(), 5);
        for i in 0..4 {
            let name = format!("c{i}.test");
            assert_eq!(store.resolve_name(Some(&name)).unwrap().names(), [name]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The reference model: scan for equality, then for wildcards, else 0.
    fn model(names: &[Vec<String>], sni: Option<&str>) -> Option<usize> {
        if names.is_empty() {
            return None;
        }
        let Some(sni) = sni.map(|s| s.to_lowercase()) else {
            return Some(0);
        };
        for (i, ns) in names.iter().enumerate() {
            if ns
                .iter()
                .any(|n| !n.starts_with("*.") && n.to_lowercase() == sni)
            {
                return Some(i);
            }
        }
        for (i, ns) in names.iter().enumerate() {
            for n in ns {
                if let Some(base) = n.strip_prefix("*.") {
                    let labels: Vec<&str> = sni.split('.').collect();
                    if labels.len() >= 2
                        && !labels[0].is_empty()
                        && labels[1..].join(".") == base.to_lowercase()
                    {
                        return Some(i);
                    }
                }
            }
        }
        Some(0)
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("B".to_string()),
            Just("c".to_string()),
            Just("".to_string())
        ]
    }

    fn dns_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 1..4).prop_map(|ls| ls.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (any::<bool>(), dns_name()).prop_map(|(wild, n)| {
            if wild {
                format!("*.{n}")
            } else {
                n.to_lowercase()
            }
        })
    }

    proptest! {
        #[test]
        fn selection_agrees_with_the_reference_model(
            names in proptest::collection::vec(proptest::collection::vec(pattern(), 0..3), 0..4),
            sni in proptest::option::of(dns_name()),
        ) {
            prop_assert_eq!(select(&names, sni.as_deref()), model(&names, sni.as_deref()));
        }
    }
}
