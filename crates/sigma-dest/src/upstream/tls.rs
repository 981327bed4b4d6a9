//! `https://` and `wss://` upstreams (DESIGN §2a, issue #16): the rustls
//! client config of one route — Mozilla's roots (webpki-roots) plus the
//! route's optional `ca = FILE`, TLS 1.2 and 1.3 over ring, certificate
//! names checked against the URL's host (SNI sent).
//!
//! `destination → [upstream (rustls client)] → service`. Built once per
//! route at start-up; a CA file that cannot be read or holds no
//! certificate is refused then, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The client config for an `https://` upstream; `ca` adds trust.
pub fn client_config(ca: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let name = path.display();
        let pem = sigma_core::namedfile::read(path).map_err(|e| format!("ca {name}: {e}"))?;
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("ca {name}: bad PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca {name}: unusable certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca {name}: no PEM certificate in it"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("sigma-upstream-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let e = client_config(Some(&empty), &[]).unwrap_err();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let e = client_config(Some(&missing), &[]).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        assert!(client_config(None, &[b"http/1.1"]).is_ok());
    }
}
