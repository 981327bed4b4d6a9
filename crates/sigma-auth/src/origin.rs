//! Cross-site request protection (DESIGN §4): for cookie-authenticated
//! unsafe methods and every cookie-authenticated WebSocket upgrade, the
//! request must come from sigma's own origin or an allowed one.
//!
//! Browsers send `Origin` on every cross-origin request, on every POST and
//! on WebSocket upgrades; `Sec-Fetch-Site` is the fallback. A request with
//! neither is not from a browser page and cannot ride a victim's cookie
//! across sites, so it passes. Bearer tokens are not sent automatically by
//! browsers, so token-authenticated requests are not checked here.

use sigma_http::{Method, RequestHead};

/// Why a request was refused as cross-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossSite;

/// True for methods that may change state.
pub fn is_unsafe(m: Method) -> bool {
    !matches!(m, Method::Get | Method::Head | Method::Options)
}

/// Checks that `head` comes from the same origin (its `Host`) or one of
/// `allowed` (`scheme://host[:port]`, compared case-insensitively).
pub fn check(head: &RequestHead, allowed: &[String]) -> Result<(), CrossSite> {
    check_with(head, None, allowed, false)
}

/// [`check`], with sigma's own origin given by `public_url` when it is
/// set (`[auth] public_url`: behind a proxy that rewrites `Host`, the
/// browser's origin is the public one), else by `Host`.
pub fn check_against(
    head: &RequestHead,
    public_url: Option<&str>,
    allowed: &[String],
) -> Result<(), CrossSite> {
    check_with(head, public_url, allowed, false)
}

/// [`check`]; with `https_only` (sigma is reached over TLS, DESIGN §2a)
/// sigma's own origin is `https://` `Host` only: an `http://` page on
/// the same host is another origin.
pub fn check_scheme(
    head: &RequestHead,
    allowed: &[String],
    https_only: bool,
) -> Result<(), CrossSite> {
    check_with(head, None, allowed, https_only)
}

/// The one same-origin check: `public_url` (when set) names sigma's own
/// origin, else `Host` does, `https://` only when `https_only`.
pub fn check_with(
    head: &RequestHead,
    public_url: Option<&str>,
    allowed: &[String],
    https_only: bool,
) -> Result<(), CrossSite> {
    if let Some(origin) = head.header("origin") {
        let origin = std::str::from_utf8(&origin.value).map_err(|_| CrossSite)?;
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return Ok(());
        }
        if let Some(public) = public_url {
            return if same_origin(origin, public) {
                Ok(())
            } else {
                Err(CrossSite)
            };
        }
        let host = head
            .header("host")
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .ok_or(CrossSite)?;
        let scheme_ok = !https_only
            || origin
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        return if scheme_ok && same_host(origin, host) {
            Ok(())
        } else {
            Err(CrossSite)
        };
    }
    match head.header("sec-fetch-site").map(|h| &h.value[..]) {
        Some(b"same-origin") | Some(b"none") | None => Ok(()),
        Some(_) => Err(CrossSite),
    }
}

/// `Origin` is the origin of `public_url` (`scheme://host[:port][/path]`):
/// same scheme, same authority (default ports aside).
fn same_origin(origin: &str, public_url: &str) -> bool {
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let authority = public_url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default());
    match (scheme(origin), scheme(public_url), authority) {
        (Some(a), Some(b), Some(auth)) if a == b => same_host(origin, auth),
        _ => false,
    }
}

/// `Origin: scheme://host[:port]` names the same authority as `Host`.
fn same_host(origin: &str, host: &str) -> bool {
    let (scheme, authority) = match origin.split_once("://") {
        Some(parts) => parts,
        None => return false, // includes "null"
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let norm = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        // Strip a default port so `example.com` equals `example.com:80`.
        match a.rsplit_once(':') {
            Some((h, p)) if p == default_port && !h.ends_with(':') => h.to_owned(),
            _ => a,
        }
    };
    !authority.is_empty() && norm(authority) == norm(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sigma_http::{Header, Version};

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: Method::Post,
            target: Bytes::from_static(b"/"),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_string()];
        let ok = |h: &[(&str, &str)]| check(&head(h), &allowed).is_ok();
        // Over TLS, sigma's own origin is https:// only.
        let tls = |h: &[(&str, &str)]| check_scheme(&head(h), &allowed, true).is_ok();
        assert!(tls(&[
            ("Origin", "https://a.example"),
            ("Host", "a.example")
        ]));
        assert!(tls(&[
            ("Origin", "https://a.example:443"),
            ("Host", "a.example")
        ]));
        assert!(!tls(&[
            ("Origin", "http://a.example"),
            ("Host", "a.example")
        ]));
        assert!(ok(&[("Origin", "http://a.example"), ("Host", "a.example")]));
        assert!(ok(&[
            ("Host", "sigma.test:3000"),
            ("Origin", "http://sigma.test:3000")
        ]));
        assert!(ok(&[
            ("Host", "sigma.test"),
            ("Origin", "http://sigma.test:80")
        ]));
        assert!(ok(&[
            ("Host", "sigma.test"),
            ("Origin", "https://app.example.com")
        ]));
        assert!(!ok(&[
            ("Host", "sigma.test"),
            ("Origin", "https://evil.test")
        ]));
        assert!(!ok(&[("Host", "sigma.test"), ("Origin", "null")]));
        assert!(!ok(&[
            ("Host", "sigma.test:3000"),
            ("Origin", "http://sigma.test:3001")
        ]));
        assert!(ok(&[
            ("Host", "sigma.test"),
            ("Sec-Fetch-Site", "same-origin")
        ]));
        assert!(!ok(&[
            ("Host", "sigma.test"),
            ("Sec-Fetch-Site", "cross-site")
        ]));
        assert!(!ok(&[
            ("Host", "sigma.test"),
            ("Sec-Fetch-Site", "same-site")
        ]));
        assert!(ok(&[("Host", "sigma.test")]));
    }

    /// Behind a proxy that rewrites `Host` (nginx `proxy_pass`), the
    /// browser's `Origin` is the public URL's, not `Host`.
    #[test]
    fn public_url_is_sigmas_own_origin() {
        let public = Some("https://chat.example.com/");
        let ok = |h: &[(&str, &str)]| check_against(&head(h), public, &[]).is_ok();
        assert!(ok(&[
            ("Host", "127.0.0.1:3000"),
            ("Origin", "https://chat.example.com")
        ]));
        assert!(ok(&[
            ("Host", "127.0.0.1:3000"),
            ("Origin", "https://CHAT.example.com:443")
        ]));
        assert!(!ok(&[
            ("Host", "127.0.0.1:3000"),
            ("Origin", "http://chat.example.com")
        ]));
        assert!(!ok(&[
            ("Host", "chat.evil.test"),
            ("Origin", "https://chat.evil.test")
        ]));
        assert!(!ok(&[
            ("Host", "127.0.0.1:3000"),
            ("Origin", "http://127.0.0.1:3000")
        ]));
        assert!(ok(&[("Host", "x"), ("Sec-Fetch-Site", "same-origin")]));
    }
}
