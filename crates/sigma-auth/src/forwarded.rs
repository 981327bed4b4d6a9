//! Behind a reverse proxy (DESIGN §4): who the client is, as the proxies
//! in `[auth] trusted_proxies` say.
//!
//! `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`, RFC 7239
//! `Forwarded` and `X-Request-Id` are believed only when the TCP peer is a
//! trusted proxy. The client is then the right-most hop of the chain that
//! is not a trusted proxy (a client can prepend anything it likes; only
//! what the trusted proxies appended is true). `Forwarded` wins over the
//! `X-Forwarded-*` headers when both are present. A chain that does not
//! parse is not believed at all (the client is the peer).
//!
//! [`resolve`] reads; [`apply`] then removes every such header from the
//! request (whoever sent them: sigma sets its own toward upstreams) and,
//! for a trusted proxy's `X-Forwarded-Host`, puts the original host back
//! into `Host`, so that the same-origin check and the upstream's
//! `X-Forwarded-Host` see the host the browser used.

use std::net::IpAddr;

use sigma_http::{Header, RequestHead};

use crate::config::Cidr;

/// The longest `Host` (or `X-Forwarded-Host`) taken from a proxy.
const MAX_HOST: usize = 255;
/// The longest `X-Request-Id` taken from a proxy.
pub const MAX_REQUEST_ID: usize = 128;

/// The client of one request, as resolved through the trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address (the peer's unless a trusted proxy said).
    pub ip: IpAddr,
    /// The TCP peer is a trusted proxy.
    pub via_proxy: bool,
    /// The host the client asked for, from a trusted proxy.
    pub host: Option<Vec<u8>>,
    /// `http` or `https`, from a trusted proxy.
    pub proto: Option<&'static str>,
    /// The proxy's request id, if valid ([`valid_request_id`]).
    pub request_id: Option<String>,
}

impl Client {
    /// A client reached directly.
    pub fn direct(peer: IpAddr) -> Self {
        Self {
            ip: peer,
            via_proxy: false,
            host: None,
            proto: None,
            request_id: None,
        }
    }
}

/// The client of `head` received from `peer`, given the `trusted` proxies.
pub fn resolve(peer: IpAddr, head: &RequestHead, trusted: &[Cidr]) -> Client {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return Client::direct(peer);
    }
    let mut client = Client {
        via_proxy: true,
        request_id: head
            .header("x-request-id")
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_owned),
        ..Client::direct(peer)
    };
    let hops = if head.headers.iter().any(|h| h.is("forwarded")) {
        forwarded_hops(head)
    } else {
        x_forwarded_hops(peer, head)
    };
    let Some(hops) = hops else {
        return client;
    };
    // The right-most hop that is not a trusted proxy, and what the proxy
    // that received the request from it said.
    let mut chosen: Option<&Hop> = None;
    for hop in hops.iter().rev() {
        chosen = Some(hop);
        if !is_trusted(hop.ip) {
            break;
        }
    }
    if let Some(hop) = chosen {
        client.ip = hop.ip;
        client.host.clone_from(&hop.host);
        client.proto = hop.proto;
    }
    client
}

/// Removes the forwarding headers and `X-Request-Id` from `head` (sigma
/// sets its own toward upstreams), and puts a trusted proxy's host into
/// `Host`.
pub fn apply(head: &mut RequestHead, client: &Client) {
    head.headers.retain(|h| !is_forwarding_header(&h.name));
    if let Some(host) = &client.host {
        head.headers.retain(|h| !h.is("host"));
        head.headers.push(Header::new(&b"Host"[..], host.clone()));
    }
}

/// True for the headers only a trusted proxy may set.
pub fn is_forwarding_header(name: &[u8]) -> bool {
    [
        &b"forwarded"[..],
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
        b"x-request-id",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// A request id sigma takes from a proxy and passes on: 1 to
/// [`MAX_REQUEST_ID`] bytes of letters, digits and `-_.:`.
pub fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// One hop of a forwarding chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hop {
    ip: IpAddr,
    host: Option<Vec<u8>>,
    proto: Option<&'static str>,
}

/// The hops of `X-Forwarded-For`; the last proxy's `X-Forwarded-Host` and
/// `-Proto` go with the right-most one. `None` when it does not parse.
fn x_forwarded_hops(peer: IpAddr, head: &RequestHead) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for h in head.headers.iter().filter(|h| h.is("x-forwarded-for")) {
        let v = std::str::from_utf8(&h.value).ok()?;
        for part in v.split(',') {
            hops.push(Hop {
                ip: part.trim().parse().ok()?,
                host: None,
                proto: None,
            });
        }
    }
    let last_value = |name: &str| {
        head.headers
            .iter()
            .rev()
            .find(|h| h.is(name))
            .and_then(|h| h.value.rsplit(|&b| b == b',').next())
            .map(|v| v.trim_ascii().to_vec())
    };
    let host = last_value("x-forwarded-host").filter(|h| valid_host(h));
    let proto = last_value("x-forwarded-proto").and_then(|p| proto(&p));
    // Without a chain, the proxy still said which host and scheme it was
    // asked for: they go with the peer.
    if hops.is_empty() {
        hops.push(Hop {
            ip: peer,
            host: None,
            proto: None,
        });
    }
    if let Some(last) = hops.last_mut() {
        last.host = host;
        last.proto = proto;
    }
    Some(hops)
}

/// The hops of RFC 7239 `Forwarded` (`for=`, `host=`, `proto=` of each
/// element, in order). `None` when an element's `for` is missing or is
/// not an address (`unknown`, an obfuscated name): such a chain is not
/// believed.
fn forwarded_hops(head: &RequestHead) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for h in head.headers.iter().filter(|h| h.is("forwarded")) {
        let v = std::str::from_utf8(&h.value).ok()?;
        for element in split_outside_quotes(v, ',') {
            let mut hop = None;
            let (mut host, mut scheme) = (None, None);
            for pair in split_outside_quotes(element, ';') {
                let (k, val) = pair.trim().split_once('=')?;
                let val = unquote(val.trim());
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => hop = Some(node_ip(val)?),
                    "host" => host = Some(val.as_bytes().to_vec()).filter(|h| valid_host(h)),
                    "proto" => scheme = proto(val.as_bytes()),
                    _ => {}
                }
            }
            hops.push(Hop {
                ip: hop?,
                host,
                proto: scheme,
            });
        }
    }
    Some(hops)
}

/// Splits at `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(s.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// The address of a `for=` node: `192.0.2.1`, `192.0.2.1:80`, `[::1]`,
/// `[::1]:4711`.
fn node_ip(v: &str) -> Option<IpAddr> {
    if let Some(rest) = v.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return ip.parse().ok();
    }
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    let (ip, _port) = v.rsplit_once(':')?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn proto(v: &[u8]) -> Option<&'static str> {
    if v.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if v.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// A host as a proxy may name it: `name[:port]` or `[v6][:port]`, short,
/// of host characters only.
fn valid_host(h: &[u8]) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOST
        && h.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: sigma_http::Method::Get,
            target: Bytes::from_static(b"/"),
            version: sigma_http::Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    fn trusted() -> Vec<Cidr> {
        vec![
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_say() {
        let h = head(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4;host=evil"),
            ("X-Forwarded-Host", "evil"),
            ("X-Request-Id", "abc"),
        ]);
        let c = resolve(ip("192.0.2.9"), &h, &trusted());
        assert_eq!(c, Client::direct(ip("192.0.2.9")));
        let mut stripped = h.clone();
        apply(&mut stripped, &c);
        assert!(stripped.headers.is_empty(), "{:?}", stripped.headers);
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let h = head(&[
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
            ("X-Forwarded-For", "10.1.1.1"),
            ("X-Forwarded-Host", "chat.example.com"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "req-42"),
        ]);
        let c = resolve(ip("127.0.0.1"), &h, &trusted());
        assert_eq!(c.ip, ip("203.0.113.7"));
        assert!(c.via_proxy);
        assert_eq!(c.request_id.as_deref(), Some("req-42"));
        // The host the last proxy was asked for goes with its client only
        // when that client is the right-most hop.
        let c = resolve(
            ip("127.0.0.1"),
            &head(&[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-Host", "chat.example.com"),
                ("X-Forwarded-Proto", "https"),
            ]),
            &trusted(),
        );
        assert_eq!(c.host.as_deref(), Some(&b"chat.example.com"[..]));
        assert_eq!(c.proto, Some("https"));
        let mut h2 = head(&[("Host", "127.0.0.1:3000")]);
        apply(&mut h2, &c);
        assert_eq!(h2.header("host").unwrap().value, &b"chat.example.com"[..]);
        // A malformed chain is not believed; every hop trusted: the
        // left-most.
        assert_eq!(
            resolve(
                ip("127.0.0.1"),
                &head(&[("X-Forwarded-For", "1.2.3.4, x")]),
                &trusted()
            )
            .ip,
            ip("127.0.0.1")
        );
        assert_eq!(
            resolve(
                ip("127.0.0.1"),
                &head(&[("X-Forwarded-For", "10.0.0.2, 10.0.0.3")]),
                &trusted()
            )
            .ip,
            ip("10.0.0.2")
        );
    }

    #[test]
    fn rfc_7239_forwarded() {
        let c = resolve(
            ip("127.0.0.1"),
            &head(&[
                (
                    "Forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https;host=\"a.example:8443\"",
                ),
                ("X-Forwarded-For", "9.9.9.9"),
            ]),
            &trusted(),
        );
        assert_eq!(c.ip, ip("2001:db8::1"));
        assert_eq!(c.proto, Some("https"));
        assert_eq!(c.host.as_deref(), Some(&b"a.example:8443"[..]));
        let c = resolve(
            ip("127.0.0.1"),
            &head(&[("Forwarded", "for=192.0.2.60:8080;by=10.0.0.1, for=10.0.0.5")]),
            &trusted(),
        );
        assert_eq!(c.ip, ip("192.0.2.60"));
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=1.2.3.4;host=a b",
        ] {
            let c = resolve(ip("127.0.0.1"), &head(&[("Forwarded", bad)]), &trusted());
            if bad.contains("host") {
                assert_eq!((c.ip, c.host), (ip("1.2.3.4"), None), "{bad}");
            } else {
                assert_eq!(c.ip, ip("127.0.0.1"), "{bad}");
            }
        }
    }

    #[test]
    fn request_ids_are_bounded() {
        assert!(valid_request_id("0f3a-B_9.x:1"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"a".repeat(MAX_REQUEST_ID + 1)));
        assert!(valid_request_id(&"a".repeat(MAX_REQUEST_ID)));
    }
}
