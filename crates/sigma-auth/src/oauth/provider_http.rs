//! The HTTP client sigma talks to providers with (DESIGN §4, issue #7).
//!
//! ```text
//!  openidconnect / oauth2 ──HttpRequest──▶ [ ProviderHttp ] ──reqwest──▶ provider
//!                          ◀─HttpResponse─  [ ≤ MAX_PROVIDER_BODY ]  ◀─body─
//! ```
//!
//! One shared reqwest client: rustls, no redirects followed (SSRF), a
//! whole-request timeout. [`ProviderHttp`] is what the `openidconnect`
//! and `oauth2` flows get (discovery, JWKS, token endpoint): it refuses a
//! URL that is not `https` (or `http` to a loopback host) and stops reading
//! a body past [`MAX_PROVIDER_BODY`], so a provider (or whoever answers in
//! its name) cannot make sigma buffer an unbounded response. The user API
//! and userinfo calls read their bodies with [`read_limited`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

use super::config::url_ok;

/// Largest provider response read (discovery, JWKS, token endpoint, user
/// API, userinfo), bytes.
pub const MAX_PROVIDER_BODY: usize = 256 * 1024;

/// Why a provider request failed.
#[derive(Debug)]
pub enum ProviderHttpError {
    /// The URL is not `https` (or `http` to a loopback host).
    Url,
    /// Sending, receiving or reading failed (or timed out).
    Request(reqwest::Error),
    /// The body is larger than [`MAX_PROVIDER_BODY`].
    TooLarge,
    /// The response could not be rebuilt for the flow.
    Response(String),
}

impl fmt::Display for ProviderHttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url => f.write_str("provider URL is not https (or http to a loopback host)"),
            Self::Request(e) => write!(f, "request failed: {e}"),
            Self::TooLarge => write!(
                f,
                "response larger than {MAX_PROVIDER_BODY} bytes, not read"
            ),
            Self::Response(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl std::error::Error for ProviderHttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Request(e) => Some(e),
            _ => None,
        }
    }
}

/// Whole-request timeout of every call to a provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared reqwest client for providers: no redirects (SSRF), bounded
/// time.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROVIDER_TIMEOUT)
        .user_agent("sigma")
        .build()
}

/// The provider client (see the module docs); cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
}

impl ProviderHttp {
    /// Wraps the shared `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// The reqwest client itself (callers cap bodies with [`read_limited`]).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            if !url_ok(&request.uri().to_string()) {
                return Err(ProviderHttpError::Url);
            }
            let request =
                reqwest::Request::try_from(request).map_err(ProviderHttpError::Request)?;
            let resp = self
                .client
                .execute(request)
                .await
                .map_err(ProviderHttpError::Request)?;
            let mut builder = http::Response::builder()
                .status(resp.status())
                .version(resp.version());
            for (name, value) in resp.headers() {
                builder = builder.header(name, value);
            }
            let body = read_capped(resp).await?;
            builder
                .body(body)
                .map_err(|e| ProviderHttpError::Response(e.to_string()))
        })
    }
}

/// Reads at most [`MAX_PROVIDER_BODY`] bytes of a response: a larger one
/// (by `Content-Length`, or once that many bytes have come) is an error.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, ProviderHttpError> {
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > MAX_PROVIDER_BODY))
    {
        return Err(ProviderHttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ProviderHttpError::Request)? {
        if body.len().saturating_add(chunk.len()) > MAX_PROVIDER_BODY {
            return Err(ProviderHttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most [`MAX_PROVIDER_BODY`] bytes of a response.
pub(crate) async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    read_capped(resp).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback answering every connection with
    /// `body` (with or without `Content-Length`); its URL.
    async fn serve(body: Vec<u8>, content_length: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head = if content_length {
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n".to_owned()
                    };
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        format!("http://{addr}/")
    }

    fn get(url: &str) -> HttpRequest {
        http::Request::builder().uri(url).body(Vec::new()).unwrap()
    }

    #[tokio::test]
    async fn bodies_are_capped() {
        let http = ProviderHttp::new(http_client().unwrap());
        let small = serve(b"{}".to_vec(), true).await;
        let r = http.call(get(&small)).await.unwrap();
        assert_eq!(r.body(), b"{}");
        let exact = serve(vec![b' '; MAX_PROVIDER_BODY], false).await;
        assert_eq!(
            http.call(get(&exact)).await.unwrap().body().len(),
            MAX_PROVIDER_BODY
        );
        for content_length in [true, false] {
            let big = serve(vec![b' '; MAX_PROVIDER_BODY + 1], content_length).await;
            let e = http.call(get(&big)).await.unwrap_err();
            assert!(matches!(e, ProviderHttpError::TooLarge), "{e}");
        }
        // Through the flows too: a JWKS past the cap is not read.
        let big = serve(vec![b' '; 4 * MAX_PROVIDER_BODY], false).await;
        let url = openidconnect::JsonWebKeySetUrl::new(big).unwrap();
        let e = openidconnect::core::CoreJsonWebKeySet::fetch_async(&url, &http)
            .await
            .unwrap_err();
        assert!(super::super::error_chain(&e).contains("larger than"), "{e}");
    }

    #[tokio::test]
    async fn only_https_or_loopback_urls() {
        let http = ProviderHttp::new(http_client().unwrap());
        for url in ["http://id.example.com/x", "ftp://127.0.0.1/x"] {
            let e = http.call(get(url)).await.unwrap_err();
            assert!(matches!(e, ProviderHttpError::Url), "{url}: {e}");
        }
    }
}
