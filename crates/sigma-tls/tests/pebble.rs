//! ACME end to end against Debian's `pebble` (Let's Encrypt's test ACME
//! server), with real challenge validation (`PEBBLE_VA_ALWAYS_VALID=0`).
//!
//! Outside the request path: this drives [`sigma_tls::acme::Acme`] the way
//! the server will. `pebble-challtestsrv` is only pebble's DNS here: it
//! answers every A query with 127.0.0.1, so pebble validates
//! `*.sigma.test` by connecting to this test's own listeners on loopback —
//! an `http-01` responder fed by [`Acme::http01`], and a TLS listener
//! running the real `S` stage ([`TlsConn`] over the [`CertStore`]
//! resolver) for `tls-alpn-01`. pebble is installed with apt when missing;
//! without it the pebble tests skip loudly, except under `CI=true`, where
//! they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use sigma_tls::acme::{renewal_time, Acme, AcmeConfig, AcmeError, ChallengeKind, Outcome};
use sigma_tls::{server_config, CertStore, Certificate, TlsConn, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "support/pebble.rs"]
mod support;
use support::*;

/// The `http-01` responder of a plain listener: `GET
/// /.well-known/acme-challenge/TOKEN` from the manager's token map.
/// `answered` counts the tokens served; with `lie`, every answer is wrong.
async fn serve_http01(listener: TcpListener, acme: Acme, answered: Arc<AtomicUsize>, lie: bool) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let tokens = acme.http01();
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split(' ').nth(1).unwrap_or("");
            let answer = path
                .strip_prefix("/.well-known/acme-challenge/")
                .and_then(|t| tokens.lookup(t));
            let answer = answer.map(|a| if lie { format!("{a}x") } else { a });
            if answer.is_some() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            let reply = match answer {
                Some(body) => format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
            };
            let _ = sock.write_all(reply.as_bytes()).await;
        });
    }
}

/// A TLS listener running `S` ([`TlsConn`]) over the store: answers
/// `tls-alpn-01` validation handshakes, then closes.
/// `answered` counts the finished `acme-tls/1` handshakes.
async fn serve_tls(listener: TcpListener, store: Arc<CertStore>, answered: Arc<AtomicUsize>) {
    let config = server_config(
        store,
        &TlsOptions {
            acme_tls_alpn: true,
            ..Default::default()
        },
    )
    .unwrap();
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let config = config.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = TlsConn::new(config, Instant::now()) else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if tls.wants_write() {
                        let n = tls.output().len();
                        if sock.write_all(tls.output()).await.is_err() {
                            return;
                        }
                        tls.handle_written(n);
                    }
                    if !tls.is_handshaking() {
                        if tls.is_acme_challenge() {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        return; // an acme-tls/1 handshake ends here (RFC 8737)
                    }
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut rest = &buf[..n];
                    while !rest.is_empty() {
                        match tls.handle_input(rest, Instant::now()) {
                            Ok(0) => break,
                            Ok(k) => rest = &rest[k..],
                            Err(_) => {
                                let _ = sock.write_all(tls.output()).await;
                                return;
                            }
                        }
                    }
                }
            })
            .await;
        });
    }
}

fn leaf_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn served_der(store: &CertStore, name: &str) -> Vec<u8> {
    store.resolve_name(Some(name)).unwrap().certified_key().cert[0].to_vec()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn issue_with(challenge: ChallengeKind, domains: &[&str]) {
    if !have_pebble() {
        return;
    }
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(
        http.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
        3600,
    );
    let state = tempdir("acme-state");
    let mut config = AcmeConfig::new(
        &pebble.directory,
        domains.iter().map(|d| d.to_string()).collect(),
        challenge,
        state.clone(),
    );
    config.ca = Some(pebble.ca.clone());
    config.email = Some("ops@sigma.test".into());
    config.request_timeout = Duration::from_secs(30);

    let store = Arc::new(CertStore::default());
    let acme = Acme::new(config.clone(), store.clone()).unwrap();
    let (http_answers, tls_answers) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    tokio::spawn(serve_http01(
        http,
        acme.clone(),
        http_answers.clone(),
        false,
    ));
    tokio::spawn(serve_tls(tls, store.clone(), tls_answers.clone()));

    // first start: nothing stored, one order, really validated
    assert!(acme.load_stored().unwrap().is_none());
    let outcome = acme
        .ensure()
        .await
        .unwrap_or_else(|e| panic!("{e}\npebble log:\n{}", pebble.log()));
    let Outcome::Issued { renew_at } = outcome else {
        panic!("{outcome:?}")
    };
    let cert_pem = std::fs::read(state.join("cert.pem")).unwrap();
    for d in domains {
        assert_eq!(
            served_der(&store, d),
            leaf_der(&cert_pem),
            "{d} is served the issued certificate"
        );
    }
    let cert = store.resolve_name(Some(domains[0])).unwrap();
    let mut names = cert.names().to_vec();
    names.sort();
    let mut want: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(renew_at, renewal_time(cert.not_before(), cert.not_after()));
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(
        lifetime <= Duration::from_secs(3601),
        "pebble's short validity: {lifetime:?}"
    );
    assert_eq!(mode(&state.join("account.json")), 0o600);
    assert_eq!(mode(&state.join("key.pem")), 0o600);
    // pebble really came to our listener (no always-valid shortcut)
    let (used, unused) = match challenge {
        ChallengeKind::Http01 => (&http_answers, &tls_answers),
        ChallengeKind::TlsAlpn01 => (&tls_answers, &http_answers),
    };
    assert!(
        used.load(Ordering::SeqCst) >= domains.len(),
        "validated through our listener"
    );
    assert_eq!(unused.load(Ordering::SeqCst), 0);
    assert_eq!(acme.http01().lookup("x"), None);

    // a restart: a fresh store and manager load the certificate, no order
    let store2 = Arc::new(CertStore::default());
    let acme2 = Acme::new(config.clone(), store2.clone()).unwrap();
    let loaded = acme2.load_stored().unwrap().expect("stored certificate");
    assert_eq!(loaded.certified_key().cert[0].to_vec(), leaf_der(&cert_pem));
    assert_eq!(acme2.ensure().await.unwrap(), Outcome::NotDue { renew_at });
    assert_eq!(served_der(&store2, domains[0]), leaf_der(&cert_pem));
    let issued = |p: &Pebble| p.log().matches("Issued certificate serial").count();
    assert_eq!(issued(&pebble), 1, "the restart ordered nothing");

    // renewal: at the renewal point (fake clock) the first manager orders
    // again; the old certificate is served until the new one replaces it
    assert_eq!(
        acme.ensure_at(renew_at - Duration::from_secs(1))
            .await
            .unwrap(),
        Outcome::NotDue { renew_at }
    );
    let Outcome::Issued { .. } = acme
        .ensure_at(renew_at + Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("not renewed")
    };
    let renewed_pem = std::fs::read(state.join("cert.pem")).unwrap();
    assert_ne!(leaf_der(&renewed_pem), leaf_der(&cert_pem));
    assert_eq!(served_der(&store, domains[0]), leaf_der(&renewed_pem));
    assert_eq!(issued(&pebble), 2);
    std::fs::remove_dir_all(&state).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issue_keep_across_restart_and_renew() {
    issue_with(ChallengeKind::Http01, &["a.sigma.test", "www.sigma.test"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issue_keep_across_restart_and_renew() {
    issue_with(ChallengeKind::TlsAlpn01, &["b.sigma.test"]).await;
}

/// A genuinely short-lived certificate (pebble issues it for 9 s): the
/// background loop `run()` renews it on its own, at a third of its
/// lifetime left, and the store serves the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_renews_a_short_lived_certificate_by_itself() {
    if !have_pebble() {
        return;
    }
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(http.local_addr().unwrap().port(), free_tcp_port(), 9);
    let state = tempdir("acme-short");
    let mut config = AcmeConfig::new(
        &pebble.directory,
        vec!["d.sigma.test".into()],
        ChallengeKind::Http01,
        state.clone(),
    );
    config.ca = Some(pebble.ca.clone());
    let store = Arc::new(CertStore::default());
    let acme = Acme::new(config, store.clone()).unwrap();
    tokio::spawn(serve_http01(
        http,
        acme.clone(),
        Arc::new(AtomicUsize::new(0)),
        false,
    ));
    let runner = tokio::spawn(acme.run());
    let issued = |p: &Pebble| p.log().matches("Issued certificate serial").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "not renewed in time:\n{}",
            pebble.log()
        );
        if let Some(cert) = store.resolve_name(Some("d.sigma.test")) {
            let der = cert.certified_key().cert[0].to_vec();
            match &first {
                None => first = Some((der, cert.not_before(), cert.not_after())),
                Some((old, _, _)) if *old != der => break,
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling the store, with a deadline
    }
    runner.abort();
    let (_, not_before, not_after) = first.unwrap();
    assert!(not_after.duration_since(not_before).unwrap() <= Duration::from_secs(10));
    assert!(
        SystemTime::now() >= renewal_time(not_before, not_after),
        "not renewed early"
    );
    assert!(issued(&pebble) >= 2);
    std::fs::remove_dir_all(&state).unwrap();
}

/// The negative control: a responder that answers wrongly fails the
/// validation (so the tests above pass only through real validation), and
/// nothing is installed or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_http01_answer_fails_validation() {
    if !have_pebble() {
        return;
    }
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(http.local_addr().unwrap().port(), free_tcp_port(), 3600);
    let state = tempdir("acme-lie");
    let mut config = AcmeConfig::new(
        &pebble.directory,
        vec!["c.sigma.test".into()],
        ChallengeKind::Http01,
        state.clone(),
    );
    config.ca = Some(pebble.ca.clone());
    let store = Arc::new(CertStore::default());
    let acme = Acme::new(config, store.clone()).unwrap();
    let answers = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve_http01(http, acme.clone(), answers.clone(), true));
    let err = acme.ensure().await.unwrap_err();
    assert!(
        matches!(
            err,
            AcmeError::Server {
                step: "validation",
                ..
            }
        ),
        "{err}"
    );
    assert!(answers.load(Ordering::SeqCst) >= 1);
    assert!(store.resolve_name(None).is_none());
    assert!(!state.join("cert.pem").exists());
    std::fs::remove_dir_all(&state).unwrap();
}

/// A directory that does not answer (a listener that accepts and never
/// speaks, and a closed port): the error names the URL, and the store
/// keeps serving what it had. No pebble needed.
#[tokio::test]
async fn an_unanswering_directory_is_named_and_the_store_keeps_serving() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!(
        "https://127.0.0.1:{}/dir",
        silent.local_addr().unwrap().port()
    );
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let closed_url = format!("https://127.0.0.1:{}/dir", free_tcp_port());

    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["a.sigma.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let existing = Certificate::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        SystemTime::now(),
    )
    .unwrap();
    let store = Arc::new(CertStore::default());
    store.install("files", existing);

    // run(): the failures are retried with backoff, the store keeps serving
    let attempts = Arc::new(AtomicUsize::new(0));
    let counting = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let counting_url = format!(
        "https://127.0.0.1:{}/dir",
        counting.local_addr().unwrap().port()
    );
    let seen = attempts.clone();
    let _count = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = counting.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let run_state = tempdir("acme-run");
    let mut config = AcmeConfig::new(
        &counting_url,
        vec!["a.sigma.test".into()],
        ChallengeKind::Http01,
        run_state.clone(),
    );
    config.request_timeout = Duration::from_millis(200);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    let runner = tokio::spawn(Acme::new(config, store.clone()).unwrap().run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while attempts.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "run() did not retry");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a counter, with a deadline
    }
    runner.abort();
    assert_eq!(
        store.resolve_name(Some("a.sigma.test")).unwrap().names(),
        ["a.sigma.test"]
    );
    let _ = std::fs::remove_dir_all(&run_state);

    for url in [silent_url, closed_url] {
        let state = tempdir("acme-down");
        let mut config = AcmeConfig::new(
            &url,
            vec!["a.sigma.test".into()],
            ChallengeKind::Http01,
            state.clone(),
        );
        config.request_timeout = Duration::from_secs(1);
        let acme = Acme::new(config, store.clone()).unwrap();
        let started = Instant::now();
        let err = acme.ensure().await.unwrap_err();
        assert!(
            matches!(err, AcmeError::DirectoryUnreachable { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bounded by the request timeout"
        );
        assert_eq!(
            store.resolve_name(Some("a.sigma.test")).unwrap().names(),
            ["a.sigma.test"]
        );
        assert!(!state.join("account.json").exists());
        let _ = std::fs::remove_dir_all(&state);
    }
}
