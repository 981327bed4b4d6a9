//! Invariant: any bytes: the OAuth state cookie never opens unless sigma sealed it (any changed byte, other provider or other key is refused), a sealed state round-trips exactly, `safe_next` only ever yields a same-origin path, and the mapping rules only ever yield a valid sigma user name that the allow-lists admit; nothing panics.
//!
//! Where it sits: `A`, at `/auth/<name>/callback` (DESIGN §4, issue #7):
//! the `sigma_oauth` cookie and the `next` / claim values are the
//! attacker-controlled inputs of the OAuth login.
//!
//! Input layout: byte 0 = mode (0: the rest is a cookie value to open;
//! 1: the rest is split at byte 1 into `next` and a claim, sealed, opened,
//! then one byte of the seal (byte 2 picks which) is flipped; 2: the rest
//! is a `next` and a claim for `safe_next` and the mapping rules).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sigma::auth::endpoints::safe_next;
use sigma::auth::oauth::config::{OAuthProviderConfig, ProviderKind};
use sigma::auth::oauth::mapping::{map_user, ProviderUser};
use sigma::auth::oauth::state::{open, seal, LoginState};

const KEY: [u8; 32] = [42; 32];
const NOW: u64 = 1_700_000_000;

fn split(data: &[u8], at: u8) -> (String, String) {
    let at = usize::from(at).min(data.len());
    let (a, b) = data.split_at(at);
    (
        String::from_utf8_lossy(a).into_owned(),
        String::from_utf8_lossy(b).into_owned(),
    )
}

fn check_next(next: &str) {
    let n = safe_next(Some(next));
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.starts_with("//") && !n.contains('\\'), "{n:?}");
    assert!(n.bytes().all(|b| (0x21..0x7f).contains(&b)), "{n:?}");
    if n != "/" {
        assert_eq!(n, next);
    }
}

fn check_mapping(claim: &str, email: &str) {
    for kind in [ProviderKind::Oidc, ProviderKind::Github] {
        let cfg = OAuthProviderConfig {
            kind,
            issuer: None,
            client_id: "c".into(),
            client_secret: None,
            client_secret_file: None,
            scopes: None,
            user_claim: Some(
                if kind == ProviderKind::Oidc {
                    "email"
                } else {
                    "login"
                }
                .into(),
            ),
            groups_claim: None,
            allowed_domains: vec!["example.com".into()],
            allowed_users: vec![],
            auth_url: None,
            token_url: None,
            api_url: None,
        };
        let user = ProviderUser {
            claim: Some(claim.to_owned()),
            verified_emails: vec![email.to_owned()],
            groups: Vec::new(),
        };
        if let Ok(name) = map_user(&cfg, &user) {
            assert!(sigma::store::valid_user_name(&name), "{name:?}");
            assert!(
                email.to_ascii_lowercase().ends_with("@example.com"),
                "domain rule bypassed: {email:?}"
            );
        }
        let mut only = cfg.clone();
        only.allowed_domains.clear();
        only.allowed_users = vec!["alice@example.com".into(), "alice".into()];
        if let Ok(name) = map_user(&only, &user) {
            assert!(only.allowed_users.contains(&name), "{name:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let s = String::from_utf8_lossy(rest);
            assert!(open(&KEY, "corp", &s, NOW).is_err());
        }
        1 => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            let Some((&flip, rest)) = rest.split_first() else {
                return;
            };
            let (next, claim) = split(rest, at);
            let st = LoginState {
                state: claim.clone(),
                nonce: claim,
                verifier: "v".repeat(43),
                next,
                expires: NOW + 600,
            };
            let Ok(sealed) = seal(&KEY, "corp", &st, [7; 24]) else {
                return;
            };
            assert_eq!(open(&KEY, "corp", &sealed, NOW).as_ref(), Ok(&st));
            assert!(open(&KEY, "other", &sealed, NOW).is_err());
            assert!(open(&[1; 32], "corp", &sealed, NOW).is_err());
            assert!(open(&KEY, "corp", &sealed, NOW + 600).is_err());
            let mut bytes = sealed.into_bytes();
            let i = usize::from(flip) % bytes.len().max(1);
            if let Some(b) = bytes.get_mut(i) {
                // Another base64url character (never the same one).
                *b = if *b == b'A' { b'B' } else { b'A' };
            }
            let changed = String::from_utf8_lossy(&bytes);
            // The last character may carry unused bits: a change there can
            // decode to the same bytes; then it must open to the same state.
            match open(&KEY, "corp", &changed, NOW) {
                Ok(s) => assert_eq!(s, st),
                Err(_) => {}
            }
        }
        _ => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            let (next, claim) = split(rest, at);
            check_next(&next);
            check_mapping(&claim, &next);
        }
    }
});
