//! What a listener answers for TLS before `A` sees a request (DESIGN §2a):
//! on a plain listener, ACME `http-01` challenges and, with
//! `[tls.http] redirect`, a `308` to `https://`; on a TLS listener, the
//! `Strict-Transport-Security` header of `[tls.http] hsts`.
//!
//! `H → [front] → A → router → destination`: dispatch asks [`answer`]
//! first for every request and [`decorate`] for every reply it hands `H`.
//! Pure functions over a request head; no socket, no state of its own.

use bytes::Bytes;
use sigma_core::response::plain;
use sigma_http::{Header, Method, Reply, RequestHead, Response};
use sigma_tls::acme::Http01Tokens;

/// The path prefix of ACME `http-01` challenges (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// The longest `Host` a redirect copies into its `Location`.
pub const MAX_REDIRECT_HOST: usize = 255;

/// One listener's TLS duties outside `S`.
#[derive(Debug, Clone, Default)]
pub struct Front {
    /// Plain listener with `[tls.http] redirect`: the port of the TLS
    /// listener to redirect to.
    pub redirect_port: Option<u16>,
    /// Plain listener with `[tls.acme] challenge = "http-01"`: the tokens.
    pub http01: Option<Http01Tokens>,
    /// TLS listener with `[tls.http] hsts`: the header value.
    pub hsts: Option<Bytes>,
}

impl Front {
    /// Whether [`answer`] or [`decorate`] can do anything here.
    pub fn is_active(&self) -> bool {
        self.redirect_port.is_some() || self.http01.is_some() || self.hsts.is_some()
    }
}

/// The answer of the front for `head`, if it has one: an `http-01`
/// key authorization (or `404` for an unknown token), or the `308` to
/// `https://`.
pub fn answer(front: &Front, head: &RequestHead) -> Option<Response> {
    let path = head.path();
    if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
        if let Some(tokens) = &front.http01 {
            let get = matches!(head.method, Method::Get | Method::Head);
            let found = std::str::from_utf8(token)
                .ok()
                .filter(|_| get)
                .and_then(|t| tokens.lookup(t));
            return Some(match found {
                Some(key_auth) => Response::new(
                    200,
                    vec![Header::new(
                        &b"Content-Type"[..],
                        &b"application/octet-stream"[..],
                    )],
                    key_auth,
                ),
                None => plain(404, "not found\n"),
            });
        }
        // Challenges are never redirected.
        if front.redirect_port.is_some() {
            return Some(plain(404, "not found\n"));
        }
        return None;
    }
    let port = front.redirect_port?;
    Some(redirect(head, port))
}

/// `308 Location: https://HOST[:PORT]TARGET`; `400` when `Host` is missing
/// or not a plain host name or address.
fn redirect(head: &RequestHead, port: u16) -> Response {
    let host = head
        .header("host")
        .map(|h| &h.value[..])
        .and_then(host_only)
        .filter(|h| h.len() <= MAX_REDIRECT_HOST);
    let Some(host) = host else {
        return plain(400, "a valid Host header is required\n");
    };
    let mut location = Vec::with_capacity(host.len() + head.target.len() + 16);
    location.extend_from_slice(b"https://");
    location.extend_from_slice(host);
    if port != 443 {
        location.extend_from_slice(format!(":{port}").as_bytes());
    }
    if head.target.first() == Some(&b'/') {
        location.extend_from_slice(&head.target);
    } else {
        location.push(b'/');
    }
    let mut resp = plain(308, "moved to https\n");
    resp.headers
        .push(Header::new(&b"Location"[..], Bytes::from(location)));
    resp
}

/// The host part of a `Host` value (its port dropped), if it is made
/// only of the characters of a DNS name or an IP address.
fn host_only(value: &[u8]) -> Option<&[u8]> {
    let host = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']')?;
        value.get(..=end)?
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => value.get(..i)?,
            None => value,
        }
    };
    let ok = !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    ok.then_some(host)
}

/// Adds `Strict-Transport-Security` to a response going out on a TLS
/// listener.
pub fn decorate(front: &Front, reply: &mut Reply) {
    let Some(hsts) = &front.hsts else {
        return;
    };
    let headers = match reply {
        Reply::Response(r) => &mut r.headers,
        Reply::Head(h) => &mut h.headers,
        _ => return,
    };
    if !headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(b"strict-transport-security"))
    {
        headers.push(Header::new(&b"Strict-Transport-Security"[..], hsts.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_http::Version;

    fn head(target: &str, host: Option<&str>) -> RequestHead {
        RequestHead {
            method: Method::Get,
            target: Bytes::from(target.to_owned()),
            version: Version::Http11,
            headers: host
                .map(|h| vec![Header::new(&b"Host"[..], Bytes::from(h.to_owned()))])
                .unwrap_or_default(),
            keep_alive: true,
            websocket: None,
        }
    }

    fn location(r: &Response) -> String {
        let h = r.headers.iter().find(|h| h.name == "Location").unwrap();
        String::from_utf8(h.value.to_vec()).unwrap()
    }

    #[test]
    fn redirects_to_the_tls_port() {
        let f = Front {
            redirect_port: Some(8443),
            ..Front::default()
        };
        let r = answer(&f, &head("/a?b=c", Some("example.com:8080"))).unwrap();
        assert_eq!(r.status, 308);
        assert_eq!(location(&r), "https://example.com:8443/a?b=c");
        let f = Front {
            redirect_port: Some(443),
            ..Front::default()
        };
        let r = answer(&f, &head("/", Some("[::1]:80"))).unwrap();
        assert_eq!(location(&r), "https://[::1]/");
    }

    #[test]
    fn a_bad_host_is_refused_not_copied() {
        let f = Front {
            redirect_port: Some(443),
            ..Front::default()
        };
        for bad in [None, Some(""), Some("a b"), Some("x/y"), Some("e\"vil")] {
            assert_eq!(answer(&f, &head("/", bad)).unwrap().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn challenges_are_answered_not_redirected() {
        let f = Front {
            redirect_port: Some(443),
            ..Front::default()
        };
        let r = answer(&f, &head("/.well-known/acme-challenge/x", Some("a"))).unwrap();
        assert_eq!(r.status, 404);
        assert!(answer(&Front::default(), &head("/", Some("a"))).is_none());
    }

    #[test]
    fn hsts_is_added_once() {
        let f = Front {
            hsts: Some(Bytes::from_static(b"max-age=60")),
            ..Front::default()
        };
        let mut reply = Reply::Response(plain(200, "ok"));
        decorate(&f, &mut reply);
        decorate(&f, &mut reply);
        let Reply::Response(r) = reply else { panic!() };
        let n = r
            .headers
            .iter()
            .filter(|h| h.name == "Strict-Transport-Security")
            .count();
        assert_eq!(n, 1);
    }
}
