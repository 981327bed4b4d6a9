//! What `A`'s own endpoints (endpoints, and OAuth's under `/auth/oauth/`)
//! share: the call they are handed on the way `H` → `A`, and the small
//! helpers they answer with (same-origin `next`, query parameters, HTML
//! escaping, the 303). Below both, so that neither imports the other for
//! them.

use bytes::Bytes;
use sigma_core::response::no_store;
use sigma_core::HttpRequest;
use sigma_http::{Header, Response};

use crate::{Principal, Via};

/// What an endpoint needs to know about the request.
pub struct Call<'a> {
    /// The request.
    pub req: &'a HttpRequest,
    /// Its identity, as `A` resolved it.
    pub identity: &'a Principal,
    /// How it was authenticated.
    pub via: &'a Via,
    /// The client's address (after trusted proxies).
    pub client_ip: std::net::IpAddr,
}

/// `next` if it is a same-origin path, else `/`: never an open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && n.len() <= 2048
                && n.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A query parameter of a request target, percent-decoded.
pub fn query_param(target: &[u8], name: &str) -> Option<String> {
    let q = target.splitn(2, |&b| b == b'?').nth(1)?;
    form_urlencoded::parse(q)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Escapes text for an HTML attribute or element.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A 303 to a same-origin path.
pub fn redirect(to: &str) -> Response {
    Response::new(
        303,
        vec![
            Header::new(&b"Location"[..], to.as_bytes().to_vec()),
            no_store(),
        ],
        Bytes::new(),
    )
}
