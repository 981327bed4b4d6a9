//! `&web`: the bundled web page (DESIGN §9 clients; issue #6).
//!
//! ```text
//!  A ──Tagged{identity, GET /}──▶ [ route ] ──▶ Web ──▶ index.html | app.js | style.css | sigma.js
//! ```
//!
//! A small page that uses sigma's public interfaces the way any client
//! would: `GET /auth/whoami`, `POST /login` (JSON), `POST /logout`, a chat
//! over `&broadcast` at `/broadcast` (WebSocket), and notes in `&db` at
//! `/db` (`PUT` with `If-Match`). The assets are compiled in
//! (`crates/sigma-dest/assets/web/`); there is no build step. Every answer
//! carries a strict `Content-Security-Policy` (same origin only), an
//! `ETag` (revalidated: `Cache-Control: no-cache`) and `nosniff`.
//! This destination never reads the identity: the page asks `whoami`.

use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sigma_core::{Answer, Capabilities, Destination, Handled, Request, Tagged};
use sigma_http::{Header, Method, Response};

/// The page's Content-Security-Policy: nothing but this origin. In
/// Chromium and Firefox `connect-src 'self'` also admits same-origin
/// `ws:`/`wss:` (CSP Level 3), which the chat uses.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
frame-ancestors 'none'";

/// One compiled-in file.
struct Asset {
    /// The path under the route (`/` is `index.html`).
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/web/style.css"),
    },
    Asset {
        path: "/sigma.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/web/sigma.js"),
    },
    Asset {
        path: "/worlds.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/web/worlds.js"),
    },
];

/// Each asset's strong ETag (a SHA-256 prefix of its bytes), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = Sha256::digest(a.body);
                let hex: String = d.iter().take(12).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The `&web` destination of one route.
#[derive(Debug)]
pub struct Web {
    /// The route's prefix without a trailing `/` (`""` for `/`).
    prefix: String,
}

impl Web {
    /// The destination for a route at `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The answer to `method path` (sans-IO; `inm` is `If-None-Match`).
    fn answer(&self, method: &Method, path: &[u8], inm: Option<&[u8]>) -> Response {
        if !matches!(method, Method::Get | Method::Head) {
            let mut r = plain(405, "method not allowed\n");
            r.headers
                .push(Header::new(&b"Allow"[..], &b"GET, HEAD"[..]));
            return r;
        }
        let Some(rest) = path.strip_prefix(self.prefix.as_bytes()) else {
            return plain(404, "not found\n");
        };
        if rest.is_empty() {
            // `/app` → `/app/`, so the page's relative asset URLs resolve.
            let mut r = plain(308, "see the page at the route with a trailing slash\n");
            let loc = format!("{}/", self.prefix);
            r.headers
                .push(Header::new(&b"Location"[..], loc.into_bytes()));
            return r;
        }
        let want: &[u8] = if rest == b"/" { b"/index.html" } else { rest };
        let Some((i, asset)) = ASSETS
            .iter()
            .enumerate()
            .find(|(_, a)| a.path.as_bytes() == want)
        else {
            return plain(404, "not found\n");
        };
        let etag = etags().get(i).map_or("\"0\"", String::as_str);
        let mut headers = vec![
            Header::new(&b"ETag"[..], Bytes::copy_from_slice(etag.as_bytes())),
            Header::new(&b"Cache-Control"[..], &b"no-cache"[..]),
            Header::new(&b"Content-Security-Policy"[..], CSP.as_bytes()),
            Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
            Header::new(&b"Referrer-Policy"[..], &b"same-origin"[..]),
        ];
        if inm.is_some_and(|v| crate::staticfiles::none_match(v, etag)) {
            return Response::new(304, headers, Bytes::new());
        }
        headers.push(Header::new(
            &b"Content-Type"[..],
            asset.content_type.as_bytes(),
        ));
        Response::new(200, headers, Bytes::from_static(asset.body))
    }
}

/// [`sigma_core::response::plain`] with the page's CSP.
fn plain(status: u16, body: &'static str) -> Response {
    let mut r = sigma_core::response::plain(status, body);
    r.headers.extend([
        Header::new(&b"Content-Security-Policy"[..], CSP.as_bytes()),
        Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
    ]);
    r
}

impl Destination for Web {
    fn name(&self) -> &str {
        "&web"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP
    }

    fn handle(&self, req: Request) -> Answer {
        let Request::Http(req) = req else {
            return req.not_taken();
        };
        let head = &req.msg.head;
        let inm = head.header("if-none-match").map(|h| h.value.as_ref());
        let resp = self.answer(&head.method, head.path(), inm);
        Answer::Http(Handled::Ready(Tagged::new(req.identity, resp)))
    }
}

/// `to = "&web"`.
pub const FACTORY: &dyn crate::factory::Factory = &WebFactory;

struct WebFactory;

impl crate::factory::Factory for WebFactory {
    fn name(&self) -> &'static str {
        "&web"
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<std::sync::Arc<dyn Destination>, crate::UnavailableDestination> {
        Ok(std::sync::Arc::new(Web::new(cx.path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a [u8]> {
        r.headers
            .iter()
            .find(|h| h.is(name))
            .map(|h| h.value.as_ref())
    }

    #[test]
    fn serves_index_and_assets() {
        let w = Web::new("/");
        let r = w.answer(&Method::Get, b"/", None);
        assert_eq!(r.status, 200);
        assert_eq!(
            header(&r, "content-type"),
            Some(&b"text/html; charset=utf-8"[..])
        );
        assert_eq!(header(&r, "content-security-policy"), Some(CSP.as_bytes()));
        assert!(r.body.starts_with(b"<!doctype html>"));
        for p in ["/app.js", "/style.css", "/sigma.js", "/index.html"] {
            assert_eq!(
                w.answer(&Method::Get, p.as_bytes(), None).status,
                200,
                "{p}"
            );
        }
        assert_eq!(w.answer(&Method::Get, b"/nope", None).status, 404);
        assert_eq!(w.answer(&Method::Get, b"/../Cargo.toml", None).status, 404);
        assert_eq!(w.answer(&Method::Post, b"/", None).status, 405);
    }

    #[test]
    fn revalidates_with_etag() {
        let w = Web::new("/");
        let r = w.answer(&Method::Get, b"/app.js", None);
        let etag = header(&r, "etag").unwrap().to_vec();
        assert_eq!(w.answer(&Method::Get, b"/app.js", Some(&etag)).status, 304);
        assert_eq!(
            w.answer(&Method::Get, b"/app.js", Some(b"\"x\"")).status,
            200
        );
    }

    #[test]
    fn under_a_prefix() {
        let w = Web::new("/app/");
        assert_eq!(w.answer(&Method::Get, b"/app", None).status, 308);
        assert_eq!(w.answer(&Method::Get, b"/app/", None).status, 200);
        assert_eq!(w.answer(&Method::Get, b"/app/app.js", None).status, 200);
    }
}
