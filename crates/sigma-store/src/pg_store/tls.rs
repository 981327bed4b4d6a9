//! TLS to PostgreSQL: rustls with ring, the roots of `[store] ca` or the
//! system's.

use std::sync::Arc;

use crate::StoreError;

/// The TLS client of a PostgreSQL connection: the PEM roots `ca`, else
/// the system's.
fn client_config(ca: Option<&[u8]>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| StoreError::BadCa(format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| StoreError::BadCa(format!("a certificate is refused: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError::BadCa("no certificate in it".to_owned()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::BadCa(
                    "sslmode=require, and the system has no root certificates: name a CA file"
                        .to_owned(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::BadCa(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The TLS client `cfg` asks for: one when `ca` is given (then
/// `sslmode=require`) or the URL says `sslmode=require`; none otherwise.
pub(super) fn choose(
    cfg: &mut tokio_postgres::Config,
    ca: Option<&[u8]>,
) -> Result<Option<rustls::ClientConfig>, StoreError> {
    use tokio_postgres::config::SslMode;
    match (ca, cfg.get_ssl_mode()) {
        (Some(_), SslMode::Disable) => Err(StoreError::BadCa(
            "a CA with sslmode=disable: remove one of them".to_owned(),
        )),
        (Some(pem), _) => {
            cfg.ssl_mode(SslMode::Require);
            client_config(Some(pem)).map(Some)
        }
        (None, SslMode::Require) => client_config(None).map(Some),
        (None, _) => Ok(None),
    }
}
