//! WebSocket pass-through to an upstream (DESIGN §6; docs/proxy.md).
//!
//! ```text
//!  client ══ws══ H ─▶ dispatch ─▶ [ WsProxy ] ─mpsc─▶ relay task ══ws══▶ upstream
//!                 ◀── push queue (WsSender) ◀────────────┘
//! ```
//!
//! The client's WebSocket ends in sigma's `H` (its limits apply). A relay
//! task connects to the upstream (tokio-tungstenite) with the identity
//! headers; the client's upgrade is accepted only once the upstream has
//! accepted (else refused with 502), then messages are relayed both ways.
//! An upstream error closes the client's socket with 1011; the upstream's
//! close is passed on. When the client's socket ends, the
//! endpoint is dropped, the relay's queue closes and the task closes the
//! upstream socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sigma_core::{Principal, Refusal, Tagged, WsEndpoint, WsSender};
use sigma_http::{RequestHead, Utf8Bytes, WsMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::headers;

/// Client messages queued toward the upstream; when full (the upstream is
/// not keeping up) the pass-through ends.
const TO_UPSTREAM_QUEUE: usize = 256;

/// Where and as whom to connect.
pub struct Target<'a> {
    /// `ws://host:port/path?query`.
    pub url: String,
    /// The client's upgrade request (for the forwarded headers).
    pub head: &'a RequestHead,
    /// The socket's identity.
    pub identity: Principal,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// The `[websocket]` limits the upstream is held to.
    pub settings: super::Settings,
    /// `echo_identity`: the upstream's `101` must carry the
    /// `X-Sigma-Identity` it was sent, or the upgrade is refused.
    pub echo_identity: bool,
    /// The client's address and whether `Authorization` was sigma's.
    pub client: sigma_core::body::ClientInfo,
    /// The client's push queue.
    pub push: WsSender,
    /// The upstream's configured URL (logs).
    pub name: Arc<str>,
    /// `wss://`: the route's rustls client config (SNI and names checked
    /// against the URL's host).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the client side sends the relay.
#[derive(Debug)]
enum FromClient {
    /// A message for the upstream.
    Message(WsMessage),
    /// The client closed (or answered sigma's close) with this code and
    /// reason: the upstream gets the same.
    Close(Option<u16>, String),
}

/// The client side of one pass-through.
struct WsProxy {
    to_upstream: Option<mpsc::Sender<FromClient>>,
    /// Set when the client's messages found the queue full (the upstream
    /// is not keeping up), before the sender is dropped.
    flooded: Arc<AtomicBool>,
    /// Whether the upstream accepted: the client's upgrade waits for it.
    connected: Option<oneshot::Receiver<Result<(), Refusal>>>,
}

impl WsEndpoint for WsProxy {
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        if let Some(tx) = &self.to_upstream {
            if tx.try_send(FromClient::Message(msg.msg)).is_err() {
                // Dropping the sender ends the relay, which closes both sides.
                self.flooded.store(true, Ordering::Release);
                self.to_upstream = None;
            }
        }
        None
    }

    fn on_close(&mut self, code: Option<u16>, reason: &str) {
        if let Some(tx) = self.to_upstream.take() {
            // A full queue: the sender is dropped all the same, and the
            // upstream is told the client went away (1001).
            let _ = tx.try_send(FromClient::Close(code, reason.to_owned()));
        }
    }

    fn accept_when(&mut self) -> Option<sigma_core::body::Admission> {
        let rx = self.connected.take()?;
        Some(Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(r)) => Err(r),
                Err(_) => Err(Refusal::Status(502)),
            }
        }))
    }
}

/// An upgrade refused before any connection is made (with `400` for a
/// path the upstream could read differently than sigma routed it).
struct Refused(Option<Refusal>);

impl WsEndpoint for Refused {
    fn on_message(&mut self, _msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>> {
        None
    }

    fn accept_when(&mut self) -> Option<sigma_core::body::Admission> {
        let r = self.0.take()?;
        Some(Box::pin(std::future::ready(Err(r))))
    }
}

/// An endpoint that refuses the upgrade with `status`.
pub fn refuse(status: u16) -> Box<dyn WsEndpoint> {
    Box::new(Refused(Some(Refusal::Status(status))))
}

/// Opens the pass-through: returns the endpoint and starts the relay.
pub fn open(t: Target<'_>) -> Box<dyn WsEndpoint> {
    let (tx, rx) = mpsc::channel(TO_UPSTREAM_QUEUE);
    let flooded = Arc::new(AtomicBool::new(false));
    let (connected_tx, connected) = oneshot::channel();
    let mut request = t.url.as_str().into_client_request();
    if let Ok(req) = request.as_mut() {
        let h = req.headers_mut();
        let mut add = |n: &str, v: &[u8]| {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_bytes(v),
            ) {
                h.append(n, v);
            }
        };
        for (n, v) in headers::identity_headers(&t.identity) {
            add(n, v.as_bytes());
        }
        if let Some(host) = t.head.header("host") {
            add("x-forwarded-host", &host.value);
        }
        add("x-forwarded-for", t.client.ip.to_string().as_bytes());
        add("x-forwarded-proto", t.settings.forwarded_proto.as_bytes());
        // The client's end-to-end headers, as for HTTP, less the
        // handshake's own (the relay makes its own handshake, without
        // extensions; H negotiated permessage-deflate with the client, if
        // at all, for the client's hop only).
        for (n, v) in headers::forwarded_request(&t.settings.own, &t.head.headers, t.client.bearer)
        {
            let handshake = n.len() >= 14
                && n.get(..14)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"sec-websocket-"));
            if !handshake {
                if let Ok(n) = std::str::from_utf8(n) {
                    add(n, &v);
                }
            }
        }
    }
    let identity = t.identity;
    let push = t.push;
    let name = t.name;
    let timeout = t.connect_timeout;
    let tls = t.tls;
    let settings = t.settings;
    let echo = t.echo_identity.then(|| headers::identity_value(&identity));
    let flooded_relay = Arc::clone(&flooded);
    tokio::spawn(async move {
        let Ok(request) = request else {
            tracing::warn!(upstream = %name, "cannot build the upstream WebSocket request");
            refused(connected_tx, &push);
            return;
        };
        let relay = Relay {
            push,
            identity,
            name,
            settings,
            echo,
            flooded: Arc::clone(&flooded_relay),
        };
        relay.run(request, timeout, tls, rx, connected_tx).await;
    });
    Box::new(WsProxy {
        to_upstream: Some(tx),
        flooded,
        connected: Some(connected),
    })
}

/// The upstream cannot be reached: the client's upgrade is refused (502),
/// or, if it was accepted already, its socket is closed with 1014.
fn refused(connected: oneshot::Sender<Result<(), Refusal>>, push: &WsSender) {
    if connected.send(Err(Refusal::Status(502))).is_err() {
        let _ = push.close(1014, "bad gateway");
    }
}

/// A connected upstream socket, plain or TLS (boxed: both are large).
enum Either {
    Plain(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
        http::Response<Option<Vec<u8>>>,
    ),
    Tls(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            >,
        >,
        http::Response<Option<Vec<u8>>>,
    ),
}

/// Connects to a `wss://` upstream: TCP, then TLS with the URL's host as
/// SNI and checked name, then the WebSocket handshake.
async fn connect_tls(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    config: WebSocketConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        http::Response<Option<Vec<u8>>>,
    ),
    String,
> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| e.to_string())
}

/// The relay task's fixed parts.
struct Relay {
    push: WsSender,
    identity: Principal,
    name: Arc<str>,
    settings: super::Settings,
    /// With `echo_identity`: the `X-Sigma-Identity` the `101` must carry.
    echo: Option<String>,
    /// The client flooded the upstream ([`WsProxy::flooded`]).
    flooded: Arc<AtomicBool>,
}

/// True when `response` carries exactly one `X-Sigma-Identity`, `sent`.
fn echoes(response: &http::Response<Option<Vec<u8>>>, sent: &str) -> bool {
    let mut got = response.headers().get_all("x-sigma-identity").iter();
    got.next().is_some_and(|v| v.as_bytes() == sent.as_bytes()) && got.next().is_none()
}

/// What ended a relay from the upstream's side.
enum UpstreamEnd {
    /// It closed with this code and reason.
    Closed(u16, String),
    /// It went over `[websocket] max_frame` / `max_message`.
    TooBig,
    /// It failed (reset, protocol error, end without a close).
    Failed,
}

impl Relay {
    /// Connects and relays until either side ends.
    async fn run(
        self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
        from_client: mpsc::Receiver<FromClient>,
        connected: oneshot::Sender<Result<(), Refusal>>,
    ) {
        let (push, name) = (&self.push, &self.name);
        // The upstream is held to the limits the client is held to (its
        // messages end up on the client's socket).
        let config = WebSocketConfig::default()
            .max_frame_size(Some(self.settings.ws_max_frame))
            .max_message_size(Some(self.settings.ws_max_message));
        let connected_ws = match tls {
            None => {
                let connect =
                    tokio_tungstenite::connect_async_with_config(request, Some(config), true);
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok((ws, response))) => Ok(Either::Plain(Box::new(ws), response)),
                    Ok(Err(e)) => Err(Some(e.to_string())),
                    Err(_) => Err(None),
                }
            }
            Some(tls) => {
                match tokio::time::timeout(timeout, connect_tls(request, config, tls)).await {
                    Ok(Ok((ws, response))) => Ok(Either::Tls(Box::new(ws), response)),
                    Ok(Err(e)) => Err(Some(e)),
                    Err(_) => Err(None),
                }
            }
        };
        match connected_ws {
            Ok(Either::Plain(ws, response)) => {
                self.relay(*ws, response, from_client, connected).await;
            }
            Ok(Either::Tls(ws, response)) => {
                self.relay(*ws, response, from_client, connected).await;
            }
            Err(Some(e)) => {
                tracing::warn!(upstream = %name, error = %e, "upstream WebSocket connect failed");
                refused(connected, push);
            }
            Err(None) => {
                tracing::warn!(upstream = %name, "upstream WebSocket connect timed out");
                refused(connected, push);
            }
        }
    }

    /// Relays between the client and the connected upstream `ws` until
    /// either side ends.
    async fn relay<S>(
        self,
        mut ws: tokio_tungstenite::WebSocketStream<S>,
        response: http::Response<Option<Vec<u8>>>,
        mut from_client: mpsc::Receiver<FromClient>,
        connected: oneshot::Sender<Result<(), Refusal>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (push, name) = (&self.push, &self.name);
        if let Some(sent) = &self.echo {
            if !echoes(&response, sent) {
                // The reply rule: the client gets 502, not this socket.
                tracing::warn!(upstream = %name, "upstream's 101 does not echo X-Sigma-Identity");
                let _ = connected.send(Err(Refusal::IdentityMismatch));
                let _ = tokio::time::timeout(
                    self.settings.ws_close_timeout,
                    ws.close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "identity mismatch".into(),
                    })),
                )
                .await;
                return;
            }
        }
        // The client's upgrade is accepted now (if it was not already).
        let _ = connected.send(Ok(()));
        let (mut sink, mut stream) = ws.split();
        let end = loop {
            tokio::select! {
                m = from_client.recv() => match m {
                    Some(FromClient::Message(m)) => {
                        let msg = match m {
                            WsMessage::Text(t) => Message::text(t.as_str()),
                            WsMessage::Binary(b) => Message::binary(b),
                        };
                        if let Err(e) = sink.send(msg).await {
                            tracing::warn!(upstream = %name, error = %e, "upstream WebSocket send failed");
                            let _ = push.close(1011, "upstream error");
                            return;
                        }
                    }
                    Some(FromClient::Close(code, reason)) => {
                        // The client's close, passed on as it was (its
                        // socket is closing in H: nothing more to push).
                        let frame = match code {
                            Some(c) if sendable(c) => close_frame(c, &reason),
                            Some(_) => close_frame(1000, &reason),
                            None => Message::Close(None),
                        };
                        self.close_upstream(&mut sink, &mut stream, frame).await;
                        return;
                    }
                    None if self.flooded.load(Ordering::Acquire) => {
                        let _ = push.close(1011, "upstream not keeping up");
                        let frame = close_frame(1008, "not keeping up");
                        self.close_upstream(&mut sink, &mut stream, frame).await;
                        return;
                    }
                    None => {
                        // The client's socket ended without a close.
                        let frame = close_frame(1001, "client went away");
                        self.close_upstream(&mut sink, &mut stream, frame).await;
                        return;
                    }
                },
                m = stream.next() => {
                    let msg = match m {
                        Some(Ok(Message::Text(t))) => WsMessage::Text(Utf8Bytes::from(t.as_str())),
                        Some(Ok(Message::Binary(b))) => WsMessage::Binary(b),
                        Some(Ok(Message::Close(frame))) => {
                            break match frame {
                                Some(f) => UpstreamEnd::Closed(u16::from(f.code), f.reason.as_str().to_owned()),
                                None => UpstreamEnd::Closed(1000, String::new()),
                            };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(WsError::Capacity(e))) => {
                            tracing::warn!(upstream = %name, error = %e, "upstream WebSocket message over the limits");
                            break UpstreamEnd::TooBig;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(upstream = %name, error = %e, "upstream WebSocket failed");
                            break UpstreamEnd::Failed;
                        }
                        None => break UpstreamEnd::Failed,
                    };
                    if self.push.push(Tagged::new(self.identity.clone(), msg)).is_err() {
                        // Slow consumer (the connection closes with 1008) or gone.
                        let _ = sink.send(close_frame(1008, "client not keeping up")).await;
                        return;
                    }
                }
            }
        };
        match end {
            UpstreamEnd::Closed(code, reason) => {
                let code = if sendable(code) { code } else { 1000 };
                let _ = push.close(code, &reason);
                // Sends tungstenite's answer to the upstream's close.
                let _ = tokio::time::timeout(self.settings.ws_close_timeout, sink.close()).await;
            }
            UpstreamEnd::TooBig => {
                let _ = push.close(1009, "upstream message too big");
                let _ = tokio::time::timeout(
                    self.settings.ws_close_timeout,
                    sink.send(close_frame(1009, "message too big")),
                )
                .await;
            }
            UpstreamEnd::Failed => {
                let _ = push.close(1011, "upstream error");
            }
        }
    }
}

impl Relay {
    /// Sends `frame` (a close) to the upstream and waits, at most
    /// `close_timeout`, for its answer.
    async fn close_upstream<Si, St>(&self, sink: &mut Si, stream: &mut St, frame: Message)
    where
        Si: futures_util::Sink<Message> + Unpin,
        St: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let _ = tokio::time::timeout(self.settings.ws_close_timeout, async {
            if sink.send(frame).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// A close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Close codes an endpoint may send (RFC 6455 §7.4).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
