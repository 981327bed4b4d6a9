//! The proxy's header and path rules, as pure functions (docs/proxy.md).
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways:
//!   `Connection` and every header it names, `Keep-Alive`, `Proxy-*`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade`; also `Expect` (sigma's `H`
//!   already answered `100-continue`).
//! - Toward the upstream, sigma alone sets `Host` (the upstream's
//!   authority), `X-Forwarded-For/-Proto/-Host` (client-sent ones and
//!   `Forwarded` are dropped) and the identity headers `X-Sigma-User`,
//!   `X-Sigma-Provider`, `X-Sigma-World` and `X-Sigma-Identity`
//!   (DESIGN §4/§6); any client-sent `X-Sigma-*` is dropped.
//! - sigma's own credentials never reach an upstream, whatever the
//!   route's `auth`: its cookies (session, OAuth state) are cut out of
//!   `Cookie`, and an `Authorization` header is dropped when `A`
//!   authenticated the request with it or when it carries a token sigma
//!   issued ([`is_sigma_token`]). Other credentials (`Basic`, an external
//!   issuer's token on an `auth = "none"` route) are the upstream's.
//! - From the upstream, `X-Sigma-*` headers never reach the client.
//! - Paths: the route prefix is replaced by the upstream URL's path:
//!   `/api/x?q` on route `/api` to `http://h:8080/base` goes to `/base/x?q`.

use base64::Engine;
use sigma_core::Principal;
use sigma_http::Header;

use crate::DestContext;

/// The `X-Sigma-Identity` value of the anonymous (`null`) identity.
pub const ANONYMOUS_IDENTITY: &str = "null";

/// True for the hop-by-hop headers that are never forwarded (besides those
/// a `Connection` header names).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// The header names listed by `Connection` headers (lowercase).
fn connection_listed(headers: &[(&[u8], &[u8])]) -> Vec<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Which direction a header list travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    Request,
    /// Upstream → client.
    Response,
}

/// Keeps the end-to-end headers of `headers` for `dir` (see the module
/// doc); framing (`Content-Length`) is left to the caller.
pub fn end_to_end<'a>(
    headers: &[(&'a [u8], &'a [u8])],
    dir: Direction,
) -> Vec<(&'a [u8], &'a [u8])> {
    let listed = connection_listed(headers);
    headers
        .iter()
        .filter(|(n, _)| {
            let lower = n.to_ascii_lowercase();
            if is_hop_by_hop(n) || listed.contains(&lower) || sigma_core::is_identity_header(n) {
                return false;
            }
            match dir {
                Direction::Request => !matches!(
                    &lower[..],
                    b"host"
                        | b"expect"
                        | b"forwarded"
                        | b"x-forwarded-for"
                        | b"x-forwarded-proto"
                        | b"x-forwarded-host"
                ),
                Direction::Response => true,
            }
        })
        .copied()
        .collect()
}

/// [`end_to_end`] over `H`'s header type.
pub fn end_to_end_request(headers: &[Header]) -> Vec<(&[u8], &[u8])> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| (&h.name[..], &h.value[..]))
        .collect();
    end_to_end(&pairs, Direction::Request)
}

/// True when `name` is one of sigma's own cookies (any case): the
/// session and the OAuth state ([`DestContext::own_cookies`]).
fn is_sigma_cookie(own: &DestContext, name: &[u8]) -> bool {
    let name = name.trim_ascii();
    own.own_cookies
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
}

/// A `Cookie` value without sigma's own cookies (the session, the OAuth
/// state): the upstream learns who the user is from the identity headers;
/// it never gets a credential for sigma. Empty when nothing else is left.
pub fn without_session_cookie(own: &DestContext, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for pair in value.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        let is_session = pair
            .split(|&b| b == b'=')
            .next()
            .is_some_and(|n| is_sigma_cookie(own, n));
        if pair.is_empty() || is_session {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    out
}

/// True for a `Set-Cookie` value that sets one of sigma's own cookies:
/// an upstream must not plant a session (fixation) or an OAuth state.
pub fn sets_sigma_cookie(own: &DestContext, value: &[u8]) -> bool {
    let pair = value.split(|&b| b == b';').next().unwrap_or(value);
    pair.split(|&b| b == b'=')
        .next()
        .is_some_and(|n| is_sigma_cookie(own, n))
}

/// The upstream's end-to-end response headers as they go to the client
/// ([`end_to_end`]), less any `Set-Cookie` of sigma's own cookies.
pub fn from_upstream<'a>(
    own: &DestContext,
    headers: &[(&'a [u8], &'a [u8])],
) -> Vec<(&'a [u8], &'a [u8])> {
    end_to_end(headers, Direction::Response)
        .into_iter()
        .filter(|(n, v)| !(n.eq_ignore_ascii_case(b"set-cookie") && sets_sigma_cookie(own, v)))
        .collect()
}

/// The client's end-to-end request headers as they go to the upstream
/// ([`end_to_end_request`], with [`without_session_cookie`] applied).
/// `Authorization` is dropped with `bearer` (`A` authenticated the request
/// with it: a credential the upstream could replay against sigma) and
/// whenever it holds a token sigma issued ([`is_sigma_token`]), even where
/// `A` did not read it (`auth = "none"`); any other `Authorization` is
/// passed on.
pub fn forwarded_request<'a>(
    own: &DestContext,
    headers: &'a [Header],
    bearer: bool,
) -> Vec<(&'a [u8], std::borrow::Cow<'a, [u8]>)> {
    end_to_end_request(headers)
        .into_iter()
        .filter_map(|(n, v)| {
            if n.eq_ignore_ascii_case(b"authorization") && (bearer || is_sigma_token(own, v)) {
                None
            } else if n.eq_ignore_ascii_case(b"cookie") {
                let kept = without_session_cookie(own, v);
                (!kept.is_empty()).then_some((n, std::borrow::Cow::Owned(kept)))
            } else {
                Some((n, std::borrow::Cow::Borrowed(v)))
            }
        })
        .collect()
}

/// True when an `Authorization` value carries a token sigma issued: any
/// of its whitespace-separated words (so `Bearer`, any spelling or
/// spacing) is a JWT whose claims name sigma's issuer
/// ([`DestContext::own_issuer`]). The signature is not checked: a forged token
/// claiming sigma's issuer is dropped as well, which costs nobody
/// anything, and a token sigma really issued always has that claim. Cheap:
/// one base64 decode and one JSON parse of at most
/// [`DestContext::max_token_bytes`].
pub fn is_sigma_token(own: &DestContext, value: &[u8]) -> bool {
    value
        .split(|b| b.is_ascii_whitespace())
        .any(|word| jwt_issuer(own, word).as_deref() == Some(own.own_issuer))
}

/// The unverified `iss` claim of a compact JWT, if `word` is one.
fn jwt_issuer(own: &DestContext, word: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Option<String>,
    }
    if word.len() > own.max_token_bytes {
        return None;
    }
    let mut parts = word.split(|&b| b == b'.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Claims>(&json).ok()?.iss
}

/// The upstream target for `target` (origin-form, matched by the route
/// `prefix` at a segment boundary) with the upstream URL's `base` path.
pub fn map_target(prefix: &str, base: &str, target: &[u8]) -> Vec<u8> {
    let prefix = prefix.trim_end_matches('/').as_bytes();
    let rest = target.strip_prefix(prefix).unwrap_or(target);
    let base = base.trim_end_matches('/').as_bytes();
    let mut out = Vec::with_capacity(base.len() + rest.len() + 1);
    out.extend_from_slice(base);
    if out.is_empty() && rest.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    out
}

/// True when `path` holds an encoded `/` or `\\` (`%2F`, `%5C`, any case):
/// an upstream that decodes them before routing would see other segments
/// than sigma routed on, so such requests are refused (400).
pub fn has_encoded_separator(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w.first() == Some(&b'%')
            && (w.get(1..).is_some_and(|x| x.eq_ignore_ascii_case(b"2f"))
                || w.get(1..).is_some_and(|x| x.eq_ignore_ascii_case(b"5c")))
    })
}

/// The `X-Sigma-Identity` value of `identity`: `null` for anonymous, else
/// `v1.` and the unpadded base64url of the JSON object
/// `{"provider":…,"user":…,"world":…|null}` (keys sorted). It names
/// the exact identity; clients cannot send it (A strips `X-Sigma-*`).
pub fn identity_value(identity: &Principal) -> String {
    match identity {
        None => ANONYMOUS_IDENTITY.to_owned(),
        Some(id) => {
            let json = serde_json::json!({
                "user": id.user,
                "provider": id.provider.to_string(),
                "world": id.world,
            });
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
            format!("v1.{b64}")
        }
    }
}

/// A header value for free text (a user name), percent-encoded so that it
/// decodes back to exactly one string: each byte of its UTF-8 that is
/// visible ASCII other than `%` stays as is; every other byte (`%`, space,
/// non-ASCII) becomes `%XX` (upper-case hex). Decoding is plain
/// percent-decoding (`+` is `+`): `zoë` is `zo%C3%AB`, `zo%C3%AB` is
/// `zo%25C3%25AB`.
pub fn text_value(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            let hex = |n: u8| char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0x0f));
        }
    }
    out
}

/// The identity headers sigma sets toward the upstream.
pub fn identity_headers(identity: &Principal) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(4);
    if let Some(id) = identity {
        out.push(("x-sigma-user", text_value(&id.user)));
        out.push(("x-sigma-provider", text_value(&id.provider.to_string())));
        if let Some(w) = &id.world {
            out.push(("x-sigma-world", text_value(w)));
        }
    }
    out.push(("x-sigma-identity", identity_value(identity)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::{Identity, Provider};
    use std::sync::Arc;

    /// A's values as the shell passes them (crates/sigma checks they are
    /// A's constants).
    const OWN: DestContext = DestContext {
        own_cookies: &["sigma_session", "sigma_oauth"],
        own_issuer: "sigma",
        max_token_bytes: 8 * 1024,
        cookies_secure: false,
    };

    fn names(v: &[(&[u8], &[u8])]) -> Vec<String> {
        v.iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn hop_by_hop_and_listed_headers_are_removed() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"sigma"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"x"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"Expect", b"100-continue"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"X-Sigma-User", b"admin"),
            (b"X_Sigma_Identity", b"v1.x"),
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"3"),
            (b"Accept", b"*/*"),
        ];
        assert_eq!(
            names(&end_to_end(&h, Direction::Request)),
            ["Content-Type", "Content-Length", "Accept"]
        );
        let r: Vec<(&[u8], &[u8])> = vec![
            (b"connection", b"close"),
            (b"transfer-encoding", b"chunked"),
            (b"x-sigma-identity", b"null"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"set-cookie", b"a=b"),
        ];
        assert_eq!(
            names(&end_to_end(&r, Direction::Response)),
            ["x-forwarded-for", "set-cookie"]
        );
    }

    #[test]
    fn sigma_session_cookie_is_not_forwarded() {
        let s = |v: &str| String::from_utf8(without_session_cookie(&OWN, v.as_bytes())).unwrap();
        assert_eq!(s("a=1; sigma_session=xyz; b=2"), "a=1; b=2");
        assert_eq!(s("sigma_session=xyz"), "");
        assert_eq!(s(" sigma_session = x ;theme=dark"), "theme=dark");
        assert_eq!(s("sigma_sessionx=1"), "sigma_sessionx=1");
        let h = vec![
            Header::new("Cookie", "sigma_session=abc"),
            Header::new("Cookie", "sigma_session=abc; app=1"),
        ];
        let f = forwarded_request(&OWN, &h, false);
        assert_eq!(f.len(), 1);
        assert_eq!(&f[0].1[..], b"app=1");
        assert_eq!(s("sigma_oauth=st; a=1; SIGMA_SESSION=x"), "a=1");
    }

    #[test]
    fn consumed_authorization_is_not_forwarded() {
        let h = vec![
            Header::new("Authorization", "Bearer sigma-token"),
            Header::new("Accept", "*/*"),
        ];
        let names = |f: Vec<(&[u8], std::borrow::Cow<'_, [u8]>)>| -> Vec<String> {
            f.iter()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .collect()
        };
        assert_eq!(names(forwarded_request(&OWN, &h, true)), ["Accept"]);
        assert_eq!(
            names(forwarded_request(&OWN, &h, false)),
            ["Authorization", "Accept"]
        );
    }

    /// A compact JWT with these claims (the signature is not looked at).
    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"EdDSA","kid":"k"}"#),
            b64(claims)
        )
    }

    #[test]
    fn sigma_tokens_are_never_forwarded() {
        let own = jwt(r#"{"iss":"sigma","aud":"sigma","sub":"alice","exp":9}"#);
        let ext = jwt(r#"{"iss":"https://id.example.com","sub":"alice"}"#);
        for v in [
            format!("Bearer {own}"),
            format!("bearer   {own} "),
            format!("BEARER\t{own}"),
            format!("Token {own}"),
        ] {
            assert!(is_sigma_token(&OWN, v.as_bytes()), "{v}");
            let h = vec![
                Header::new("Authorization", v),
                Header::new("Accept", "*/*"),
            ];
            let f = forwarded_request(&OWN, &h, false);
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0].0, b"Accept");
        }
        for v in [
            format!("Bearer {ext}"),
            "Basic dXA6c3RyZWFt".to_owned(),
            "Bearer not.a.jwt".to_owned(),
            "Bearer a.b".to_owned(),
            format!("Bearer {}", jwt(r#"{"iss":["sigma"]}"#)),
            format!("Bearer {}", jwt(r#"{"sub":"sigma"}"#)),
            String::new(),
        ] {
            assert!(!is_sigma_token(&OWN, v.as_bytes()), "{v}");
            let h = vec![Header::new("Authorization", v.clone())];
            assert_eq!(forwarded_request(&OWN, &h, false).len(), 1, "{v}");
        }
        let long = format!(
            "Bearer {}",
            jwt(&format!(r#"{{"iss":"sigma","x":"{}"}}"#, "a".repeat(9000)))
        );
        assert!(
            !is_sigma_token(&OWN, long.as_bytes()),
            "longer than sigma ever issues"
        );
    }

    #[test]
    fn upstream_cannot_set_sigma_cookies() {
        let r: Vec<(&[u8], &[u8])> = vec![
            (b"Set-Cookie", b"sigma_session=evil; Path=/; HttpOnly"),
            (b"set-cookie", b" Sigma_Session =x"),
            (b"Set-Cookie", b"sigma_oauth=st; Path=/auth"),
            (b"Set-Cookie", b"app=1; Path=/"),
            (b"Set-Cookie", b"sigma_sessionx=1"),
            (b"X-Other", b"sigma_session=1"),
        ];
        let kept: Vec<&[u8]> = from_upstream(&OWN, &r).iter().map(|(_, v)| *v).collect();
        assert_eq!(
            kept,
            [
                &b"app=1; Path=/"[..],
                b"sigma_sessionx=1",
                b"sigma_session=1"
            ]
        );
    }

    #[test]
    fn the_route_prefix_becomes_the_upstream_path() {
        let m = |p, b, t: &str| String::from_utf8(map_target(p, b, t.as_bytes())).unwrap();
        assert_eq!(m("/api", "/base", "/api/x"), "/base/x");
        assert_eq!(m("/api", "/base/", "/api/x?q=1"), "/base/x?q=1");
        assert_eq!(m("/api", "/base", "/api"), "/base");
        assert_eq!(m("/api", "/base", "/api?q"), "/base?q");
        assert_eq!(m("/api/", "", "/api/x"), "/x");
        assert_eq!(m("/api", "", "/api"), "/");
        assert_eq!(m("/api", "", "/api?q"), "/?q");
        assert_eq!(m("/", "", "/a/b"), "/a/b");
        assert_eq!(m("/", "/base", "/a"), "/base/a");
        assert_eq!(m("/", "/", "/"), "/");
    }

    #[test]
    fn encoded_separators_are_found() {
        for p in ["/a%2Fb", "/a%2f", "%5C", "/x%5cy"] {
            assert!(has_encoded_separator(p.as_bytes()), "{p}");
        }
        for p in ["/a/b", "/a%252F", "/%2", "/%F2", "/a%25%32F"] {
            assert!(!has_encoded_separator(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn identity_values_name_the_exact_identity() {
        assert_eq!(identity_value(&None), "null");
        let alice = Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }));
        let v = identity_value(&alice);
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.strip_prefix("v1.").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"provider":"password","user":"alice","world":null}"#
        );
        let bob = Some(Arc::new(Identity {
            user: "bob".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }));
        assert_ne!(identity_value(&bob), v);
        let h = identity_headers(&alice);
        assert_eq!(h[0], ("x-sigma-user", "alice".to_owned()));
        assert_eq!(h[1], ("x-sigma-provider", "password".to_owned()));
        assert_eq!(h[2].0, "x-sigma-identity");
        assert_eq!(
            identity_headers(&None),
            [("x-sigma-identity", "null".to_owned())]
        );
        assert_eq!(text_value("zoë"), "zo%C3%AB");
    }

    #[test]
    fn text_values_decode_to_one_string() {
        for (s, v) in [
            ("alice", "alice"),
            ("zoë", "zo%C3%AB"),
            ("zo%C3%AB", "zo%25C3%25AB"),
            ("a b+c", "a%20b+c"),
            ("a+b", "a+b"),
            ("100%", "100%25"),
            ("x\u{7f}", "x%7F"),
        ] {
            assert_eq!(text_value(s), v, "{s:?}");
            let back = sigma_core::percent::percent_decode(v.as_bytes()).unwrap();
            assert_eq!(back, s.as_bytes(), "{v}");
        }
    }

    proptest::proptest! {
        /// Different names never give the same header value.
        #[test]
        fn text_value_is_injective(s in "\\PC{0,12}") {
            let v = text_value(&s);
            proptest::prop_assert!(v.bytes().all(|b| b.is_ascii_graphic()));
            proptest::prop_assert_eq!(sigma_core::percent::percent_decode(v.as_bytes()), Some(s.as_bytes().to_vec()));
        }
    }
}
