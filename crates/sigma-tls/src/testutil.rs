//! Test-only PKI and an in-memory rustls client for the unit tests of `S`
//! (outside the pipeline: never built into the server).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::store::{CertStore, Certificate};
use crate::{server_config, TlsOptions};

/// A test CA that signs leaf certificates.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    #[allow(dead_code)] // the pebble-less tests of acme.rs
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sigma test CA");
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) for `names`, valid now.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf_with(names, |_| {})
    }

    /// As `leaf`, with the parameters adjusted first (validity…).
    pub fn leaf_with(
        &self,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn certificate(&self, names: &[&str]) -> Certificate {
        let (c, k) = self.leaf(names);
        Certificate::from_pem(c.as_bytes(), k.as_bytes(), std::time::SystemTime::now()).unwrap()
    }

    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(crate::store::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A store serving one certificate per name list, in order.
pub fn store(pki: &Pki, certs: &[&[&str]]) -> Arc<CertStore> {
    let store = Arc::new(CertStore::default());
    for (i, names) in certs.iter().enumerate() {
        store.install(&format!("c{i}"), pki.certificate(names));
    }
    store
}

pub fn config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    server_config(store, &TlsOptions::default()).unwrap()
}

pub fn client_conn(config: Arc<ClientConfig>, name: &str) -> ClientConnection {
    ClientConnection::new(config, ServerName::try_from(name.to_string()).unwrap()).unwrap()
}
