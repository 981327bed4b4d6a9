//! `http://HOST[:PORT][/PATH]` and `https://…`: the upstream reverse
//! proxy (DESIGN §6, issue #6; the rules are in `docs/proxy.md`; TLS to
//! the upstream, DESIGN §2a, in [`tls`]).
//!
//! ```text
//!  A ──Tagged{identity, head}──▶ [ upstream ] ──HTTP/1.1 (hyper, pooled)──▶ service
//!      BodyRx (bounded) ────────▶            ──▶ request body, streamed
//!    ◀─Streamed{head, body} ─────            ◀── response, streamed
//! ```
//!
//! Each route has its own hyper client and connection pool. The request
//! body streams from the client through a bounded channel; the response
//! body streams back and is pulled only as fast as the client reads.
//! Errors never leak internals: the client gets 502 (refused, reset,
//! malformed, connect timeout) or 504 (no response head within
//! `read_timeout`), and the cause is logged. WebSocket upgrades are relayed
//! to the upstream by [`ws`].

pub mod config;
pub mod headers;
pub mod tls;
pub mod ws;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sigma_core::{
    Answer, BodyError, BodyRx, BodyStream, Capabilities, ClientInfo, Destination, LaterStreamed,
    Principal, Request, Streamed, Tagged, Upgrade, WsEndpoint, WsSender,
};
use sigma_http::{Header, RequestHead, Response, ResponseHead};

use crate::upstream::config::ProxyOptions;
use crate::DestContext;

/// Idle pooled connections to one upstream are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Since when the upstream has not taken the request body although sigma
/// gave it a piece (`None` while the client is the one awaited, or before
/// and after the body). While it is `Some` for `read_timeout`, the
/// upstream has stopped reading: 504.
#[derive(Debug, Default)]
struct Stall(std::sync::Mutex<Option<Instant>>);

impl Stall {
    fn set(&self, v: Option<Instant>) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = v;
    }

    fn since(&self) -> Option<Instant> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request body streamed from the client (or none).
pub struct ReqBody {
    rx: Option<BodyRx>,
    /// Dropped once the body has been handed over whole (or failed): the
    /// response-head timeout (`read_timeout`) starts then.
    sent: Option<tokio::sync::oneshot::Sender<()>>,
    /// Whether the upstream keeps taking the body.
    stall: Arc<Stall>,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Pending => {
                // Waiting for the client (whose pace H's body rate limits).
                self.stall.set(None);
                Poll::Pending
            }
            Poll::Ready(Some(Ok(b))) => {
                // Until the upstream asks for the next piece, it is the one
                // holding the body up.
                self.stall.set(Some(Instant::now()));
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.rx = None;
                self.sent = None;
                self.stall.set(None);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.rx = None;
                self.sent = None;
                self.stall.set(None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.rx.is_none() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

/// What every upstream route takes from the rest of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `[websocket] max_frame`: frames from the upstream are held to the
    /// same limit as the client's (over it: close 1009).
    pub ws_max_frame: usize,
    /// `[websocket] max_message`, likewise.
    pub ws_max_message: usize,
    /// `[websocket] close_timeout`: how long the relay waits for the
    /// upstream's answer to a close.
    pub ws_close_timeout: Duration,
    /// `X-Forwarded-Proto`: `https` when sigma is reached over TLS (a
    /// terminator in front): `[auth] public_url` is `https://…` or
    /// `[auth] cookie_secure` is set; otherwise `http`.
    pub forwarded_proto: &'static str,
    /// Sigma's own credentials, which never reach an upstream.
    pub own: DestContext,
}

impl Settings {
    /// The settings from `[websocket]` and what A tells destinations.
    pub fn of(ws: &sigma_http::WsLimits, own: DestContext) -> Self {
        Self {
            ws_max_frame: ws.max_frame,
            ws_max_message: ws.max_message,
            ws_close_timeout: ws.close_timeout,
            // The same rule that makes sigma's cookies `Secure`: TLS in front.
            forwarded_proto: if own.cookies_secure { "https" } else { "http" },
            own,
        }
    }
}

/// One upstream route.
pub struct Upstream {
    /// The URL as configured (the destination's name).
    url: String,
    /// The route's path prefix.
    prefix: String,
    /// `http` or `https`.
    scheme: &'static str,
    /// `host:port` (port 80, or 443 for https, when not written).
    authority: String,
    /// `https://` routes: the client config the WebSocket relay uses too.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL's path (may be empty).
    base: String,
    opts: ProxyOptions,
    settings: Settings,
    client: Client<HttpsConnector<HttpConnector>, ReqBody>,
    /// Outcomes and time to the response head, for `/metrics`.
    stats: Arc<Stats>,
    /// `assert_identity`: signs each request's `X-Sigma-Assertion`.
    asserter: Option<Arc<dyn sigma_core::Asserter>>,
    /// The upstream's origin as configured (the assertion's `aud`).
    origin: String,
}

/// An upstream route's `/metrics`: requests by [`RESULTS`], and the
/// seconds they waited for the response head (a counter: its rate over
/// the rate of `ok` is the mean).
#[derive(Debug, Default)]
struct Stats {
    results: [std::sync::atomic::AtomicU64; RESULTS.len()],
    head_us: std::sync::atomic::AtomicU64,
}

/// The `result` labels of `sigma_upstream_requests_total`.
const RESULTS: [&str; 5] = [
    "ok",
    "connect_error",
    "error",
    "timeout",
    "identity_mismatch",
];

impl Stats {
    fn count(&self, result: usize) {
        if let Some(c) = self.results.get(result) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn samples(&self) -> Vec<sigma_core::Sample> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out: Vec<sigma_core::Sample> = RESULTS
            .iter()
            .zip(&self.results)
            .map(|(r, n)| {
                sigma_core::Sample::counter(
                    "sigma_upstream_requests_total",
                    "Requests passed to the upstream, by result.",
                    n.load(Relaxed),
                )
                .with("result", r)
            })
            .collect();
        let mut secs = sigma_core::Sample::counter(
            "sigma_upstream_response_seconds_total",
            "Seconds spent waiting for upstream response heads (ok results).",
            0,
        );
        secs.value = self.head_us.load(Relaxed) as f64 / 1e6;
        out.push(secs);
        out
    }
}

/// Splits `http(s)://HOST[:PORT][/PATH]` into its scheme, `host:port`
/// and the path.
fn split_url(url: &str) -> Result<(&'static str, String, String), &'static str> {
    let (scheme, default_port, rest) = if let Some(r) = url.strip_prefix("http://") {
        ("http", 80, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        ("https", 443, r)
    } else {
        return Err("not an http:// or https:// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let has_port = match authority.rfind(']') {
        Some(close) => authority.get(close..).is_some_and(|a| a.contains(':')),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    authority
        .parse::<http::uri::Authority>()
        .map_err(|_| "invalid host or port")?;
    Ok((scheme, authority, path.to_owned()))
}

impl Upstream {
    /// The destination for route `prefix` to `url` (validated by config);
    /// `ca` adds a trusted root for an `https://` upstream.
    pub fn destination(
        prefix: &str,
        url: &str,
        opts: ProxyOptions,
        settings: Settings,
        ca: Option<&std::path::Path>,
        asserter: Option<Arc<dyn sigma_core::Asserter>>,
    ) -> Result<Arc<dyn Destination>, String> {
        let (scheme, authority, base) = split_url(url)?;
        // `scheme://host[:port]` as written, without the path.
        let origin = match url.split_once("://") {
            Some((sch, rest)) => format!("{sch}://{}", rest.split('/').next().unwrap_or(rest)),
            None => url.to_owned(),
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(opts.connect_timeout));
        connector.set_nodelay(true);
        // https: the URL's host is the SNI name and the name checked.
        connector.enforce_http(false);
        let tls = match scheme {
            // No ALPN set here: hyper-rustls offers http/1.1 itself (and
            // refuses a config that already has protocols).
            "https" => Some(tls::client_config(ca, &[])?),
            _ => None,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(match &tls {
                Some(c) => (**c).clone(),
                None => (*tls::client_config(None, &[])?).clone(),
            })
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Arc::new(Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            scheme,
            authority,
            tls,
            base,
            opts,
            settings,
            client,
            stats: Arc::default(),
            asserter: asserter.filter(|_| opts.assert_identity),
            origin,
        }))
    }

    /// The upstream request for `head`.
    fn request(
        &self,
        head: &RequestHead,
        identity: &Principal,
        client: ClientInfo,
        body: Option<BodyRx>,
        sent: tokio::sync::oneshot::Sender<()>,
        stall: Arc<Stall>,
    ) -> Result<http::Request<ReqBody>, http::Error> {
        let path = headers::map_target(&self.prefix, &self.base, &head.target);
        let uri = format!(
            "{}://{}{}",
            self.scheme,
            self.authority,
            String::from_utf8_lossy(&path)
        );
        let mut b = http::Request::builder()
            .method(head.method.as_str())
            .uri(uri)
            .version(http::Version::HTTP_11)
            .header(http::header::HOST, self.authority.as_str());
        for (n, v) in headers::forwarded_request(&self.settings.own, &head.headers, client.bearer) {
            b = b.header(n, &v[..]);
        }
        b = b
            .header("x-forwarded-for", client.ip.to_string())
            .header("x-forwarded-proto", self.settings.forwarded_proto);
        if let Some(host) = head.header("host") {
            b = b.header("x-forwarded-host", &host.value[..]);
        }
        for (n, v) in headers::identity_headers(identity) {
            b = b.header(n, v);
        }
        if let (Some(asserter), Some(id)) = (&self.asserter, identity.as_deref()) {
            let target = String::from_utf8_lossy(&path);
            let req = sigma_core::AssertedRequest {
                audience: &self.origin,
                method: head.method.as_str(),
                target: &target,
            };
            b = b.header(
                "x-sigma-assertion",
                asserter.assert(id, req, sigma_core::clock::unix_now_ms() / 1000),
            );
        }
        let sent = body.is_some().then_some(sent);
        b.body(ReqBody {
            rx: body,
            sent,
            stall,
        })
    }
}

/// True when the request has a body to stream.
fn has_body(head: &RequestHead) -> bool {
    head.header("transfer-encoding").is_some()
        || head
            .header("content-length")
            .is_some_and(|h| &h.value[..] != b"0")
}

/// A small plain-text response; never a cause (those are logged).
fn plain(status: u16, body: &'static str) -> Response {
    let mut r = sigma_core::response::plain(status, body);
    if status == 413 {
        r.headers
            .push(Header::new(&b"Connection"[..], &b"close"[..]));
    }
    r
}

/// True when `e` (or its cause) is the client's body going over `max_body`.
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<BodyError>() == Some(&BodyError::TooLarge) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The response body, each piece within `idle` of the previous one.
fn body_stream(body: Incoming, idle: Duration, url: Arc<str>) -> BodyStream {
    let data = http_body_util::BodyDataStream::new(body);
    Box::pin(futures_util::stream::unfold(Some(data), move |state| {
        let url = Arc::clone(&url);
        async move {
            let mut data = state?;
            match tokio::time::timeout(idle, data.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), Some(data))),
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    tracing::warn!(upstream = %url, error = %e, "upstream response body failed");
                    Some((Err(()), None))
                }
                Err(_) => {
                    tracing::warn!(upstream = %url, "upstream response body stalled (read_timeout)");
                    Some((Err(()), None))
                }
            }
        }
    }))
}

impl Destination for Upstream {
    fn name(&self) -> &str {
        &self.url
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streams_http: true,
            websocket: true,
            requires_identity: false,
        }
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Stream { head, body, client } => {
                Answer::Stream(self.forward(head, body, client))
            }
            // Upgrades need the path, the client's address and whether
            // `Authorization` is a sigma credential: a socket sigma opens
            // itself (no request) is not proxied.
            Request::Upgrade(Upgrade {
                identity,
                push,
                from: Some(from),
            }) => Answer::Socket(self.upgrade(&from.head, &identity, push, from.client)),
            other => other.not_taken(),
        }
    }

    fn metrics(&self) -> Vec<sigma_core::Sample> {
        self.stats.samples()
    }
}

impl Upstream {
    /// Passes a request on, its body streamed both ways.
    fn forward(
        &self,
        head: Tagged<RequestHead>,
        body: BodyRx,
        client: ClientInfo,
    ) -> LaterStreamed {
        let identity = head.identity;
        if headers::has_encoded_separator(head.msg.path()) {
            tracing::debug!(upstream = %self.url, "encoded / or \\ in the path: refused");
            return Box::pin(std::future::ready(Tagged::new(
                identity,
                Streamed::Whole(plain(400, "bad request: encoded / or \\ in the path\n")),
            )));
        }
        let body = has_body(&head.msg).then_some(body);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let stall = Arc::new(Stall::default());
        let request = match self.request(
            &head.msg,
            &identity,
            client,
            body,
            sent_tx,
            Arc::clone(&stall),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(upstream = %self.url, error = %e, "cannot build the upstream request");
                let resp = plain(502, "bad gateway\n");
                return Box::pin(std::future::ready(Tagged::new(
                    identity,
                    Streamed::Whole(resp),
                )));
            }
        };
        let sent = headers::identity_value(&identity);
        let fut = self.client.request(request);
        let opts = self.opts;
        let own = self.settings.own;
        let url: Arc<str> = Arc::from(self.url.as_str());
        let stats = Arc::clone(&self.stats);
        let started = Instant::now();
        Box::pin(async move {
            let whole =
                |status, body| Tagged::new(identity.clone(), Streamed::Whole(plain(status, body)));
            // `read_timeout` runs from the end of the request body: a large
            // upload from a slow client is limited by H's body-rate rule,
            // one the upstream stops taking by `read_timeout` (while it
            // does, H's clock stands: the connection stopped reading).
            let mut fut = std::pin::pin!(fut);
            let mut sent_rx = sent_rx;
            let rt = opts.read_timeout;
            let early = loop {
                let from = stall.since().unwrap_or_else(Instant::now);
                let wake = from.checked_add(rt).unwrap_or(from);
                tokio::select! {
                    r = &mut fut => break Some(r),
                    _ = &mut sent_rx => break None,
                    () = tokio::time::sleep_until(wake.into()) => {
                        if stall.since().is_some_and(|t| t.elapsed() >= rt) {
                            stats.count(3);
                            tracing::warn!(upstream = %url, "upstream stopped reading the request body (read_timeout)");
                            return whole(504, "gateway timeout\n");
                        }
                    }
                }
            };
            let res = match early {
                Some(r) => Ok(r),
                None => tokio::time::timeout(opts.read_timeout, fut).await,
            };
            let res = match res {
                Err(_) => {
                    stats.count(3);
                    tracing::warn!(upstream = %url, "no response head within read_timeout");
                    return whole(504, "gateway timeout\n");
                }
                Ok(Err(e)) => {
                    if body_too_large(&e) {
                        return whole(413, "request body too large\n");
                    }
                    let what = if e.is_connect() {
                        stats.count(1);
                        "connect failed"
                    } else {
                        stats.count(2);
                        "request failed"
                    };
                    tracing::warn!(upstream = %url, error = %sentence(&e), "{what}");
                    return whole(502, "bad gateway\n");
                }
                Ok(Ok(r)) => r,
            };
            let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let (parts, body) = res.into_parts();
            if opts.echo_identity {
                let mut got = parts.headers.get_all("x-sigma-identity").iter();
                let same = got.next().is_some_and(|v| v.as_bytes() == sent.as_bytes())
                    && got.next().is_none();
                if !same {
                    stats.count(4);
                    return Tagged::new(identity.clone(), Streamed::IdentityMismatch);
                }
            }
            let status = parts.status.as_u16();
            stats.count(if status < 200 { 2 } else { 0 });
            if status >= 200 {
                stats
                    .head_us
                    .fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
            }
            if status < 200 {
                tracing::warn!(upstream = %url, status, "unexpected interim status");
                return whole(502, "bad gateway\n");
            }
            let content_length = if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
                None
            } else {
                parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            };
            let pairs: Vec<(&[u8], &[u8])> = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .collect();
            let kept = headers::from_upstream(&own, &pairs)
                .into_iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case(b"content-length"))
                .map(|(n, v)| Header::new(Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
                .collect();
            let head = ResponseHead {
                status,
                headers: kept,
                content_length,
            };
            let body = body_stream(body, opts.read_timeout, url);
            Tagged::new(identity, Streamed::Stream { head, body })
        })
    }

    /// Passes a WebSocket upgrade on (the socket is accepted once the
    /// upstream accepts it: [`WsEndpoint::accept_when`]).
    fn upgrade(
        &self,
        head: &RequestHead,
        identity: &Principal,
        push: WsSender,
        client: ClientInfo,
    ) -> Box<dyn WsEndpoint> {
        if headers::has_encoded_separator(head.path()) {
            return ws::refuse(400);
        }
        let path = headers::map_target(&self.prefix, &self.base, &head.target);
        let ws_scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let url = format!(
            "{ws_scheme}://{}{}",
            self.authority,
            String::from_utf8_lossy(&path)
        );
        ws::open(ws::Target {
            url,
            head,
            identity: identity.clone(),
            connect_timeout: self.opts.connect_timeout,
            settings: self.settings,
            echo_identity: self.opts.echo_identity,
            client,
            push,
            name: Arc::from(self.url.as_str()),
            tls: self.tls.clone(),
        })
    }
}

/// `to = "http://HOST[:PORT][/PATH]"` (validated by config).
pub const FACTORY: &dyn crate::factory::Factory = &UpstreamFactory;

struct UpstreamFactory;

impl crate::factory::Factory for UpstreamFactory {
    fn name(&self) -> &'static str {
        "http://"
    }

    fn matches(&self, to: &str) -> bool {
        to.starts_with("http://") || to.starts_with("https://")
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<Arc<dyn Destination>, crate::UnavailableDestination> {
        Upstream::destination(
            cx.path,
            cx.to,
            cx.proxy.unwrap_or_default(),
            *cx.upstream,
            cx.ca,
            cx.asserter.cloned(),
        )
        .map_err(|e| crate::UnavailableDestination(format!("{}: {e}", cx.to)))
    }
}

/// An error and its causes as one readable sentence (`connect failed:
/// tcp connect error: Connection refused (os error 111)`), each cause
/// once: hyper's errors repeat their source in their own message, and
/// their `Debug` is a struct dump.
pub(crate) fn sentence(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "client error (Connect)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_read_as_one_sentence() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            super::sentence(&Outer(inner)),
            "client error (Connect): connection refused"
        );
        let plain = std::io::Error::other("timed out");
        assert_eq!(super::sentence(&plain), "timed out");
    }
    use super::{split_url, Settings};

    #[test]
    fn forwarded_proto_follows_secure_cookies() {
        let own = |cookies_secure| crate::DestContext {
            own_cookies: &[],
            own_issuer: "sigma",
            max_token_bytes: 8 * 1024,
            cookies_secure,
        };
        let ws = sigma_http::WsLimits::default();
        assert_eq!(Settings::of(&ws, own(false)).forwarded_proto, "http");
        assert_eq!(Settings::of(&ws, own(true)).forwarded_proto, "https");
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://h").unwrap(),
            ("http", "h:80".into(), "".into())
        );
        assert_eq!(
            split_url("http://h:8080/base").unwrap(),
            ("http", "h:8080".into(), "/base".into())
        );
        assert_eq!(
            split_url("http://[::1]/x").unwrap(),
            ("http", "[::1]:80".into(), "/x".into())
        );
        assert_eq!(
            split_url("http://[::1]:81").unwrap(),
            ("http", "[::1]:81".into(), "".into())
        );
        assert_eq!(
            split_url("https://h/x").unwrap(),
            ("https", "h:443".into(), "/x".into())
        );
    }
}
