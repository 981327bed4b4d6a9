//! OAuth2 / OpenID Connect login (DESIGN §4, issue #7).
//!
//! ```text
//!  browser ─GET /auth/<name>/login?next=/p─▶ A: state+nonce+PKCE sealed in a cookie
//!          ◀─303 provider/authorize?…code_challenge(S256)&state&nonce─
//!  browser ─────────────▶ provider (user signs in) ──303──▶
//!  browser ─GET /auth/<name>/callback?code&state─▶ A: open cookie, state ==, single use
//!          A ─code + PKCE verifier─▶ token endpoint ─▶ ID token (JWKS, iss, aud, exp, nonce)
//!            (GitHub: access token ─▶ /user, /user/emails)
//!          A: mapping rules ─▶ session (provider oauth:<name>) ─303 /p─▶ browser
//! ```
//!
//! The flows are the `openidconnect` (OIDC, Google) and `oauth2` (GitHub)
//! crates' over the workspace's reqwest (rustls, no redirects followed,
//! 10 s timeout, every provider response capped: [`provider_http`]). Discovery and the JWKS are fetched by a background task
//! ([`background`]) and cached; a provider that is down at startup does
//! not stop sigma (its login shows "provider unavailable" and discovery
//! is retried). An ID token signed with a `kid` the cache does not know
//! triggers one JWKS refetch (at most every [`JWKS_MIN_REFETCH_SECS`]) and
//! is checked again: key rotation at the provider just works.
//!
//! Every failure is a small HTML page with a reason code, never a 500:
//! `access_denied` (403), a missing / forged / expired state cookie or a
//! `state` mismatch (400), a reused `state` (400: the cookie is single
//! use, the server remembers used states until they expire), a code the
//! provider refuses (400), the provider unreachable (502/503), an invalid
//! ID token (403), a user the mapping rules refuse (403), a mapped name
//! that is a local password user's and not linked to the provider (403,
//! `oauth_name_taken`), too many
//! callbacks from one address (429, the password login's throttle).
//! Operator documentation: `docs/oauth.md`.

pub mod config;
pub mod github;
pub mod mapping;
pub mod provider_http;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cookie::{Cookie, SameSite};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _,
};
use sigma_http::{Header, Method, Response};
use subtle::ConstantTimeEq;

use self::config::OAuthProviderConfig;
use self::mapping::{MapError, ProviderUser};
use self::provider_http::{http_client, read_limited, ProviderHttp};
use self::state::{LoginState, StateError, STATE_COOKIE, STATE_TTL_SECS};
use super::{unix_now, unix_now_ms, Auth, Provider, Tagged, Via};
use crate::call::{self, html_escape, query_param, safe_next, Call};
use sigma_core::Handled;

/// Shortest time between two JWKS refetches of one provider caused by an
/// unknown `kid`, seconds.
pub const JWKS_MIN_REFETCH_SECS: u64 = 5;
/// How often the JWKS of a discovered provider is refreshed anyway, seconds.
pub const JWKS_REFRESH_SECS: u64 = 600;
/// Shortest time between two discovery attempts of one provider, seconds
/// (a login while the provider is down retries at most this often).
pub const DISCOVERY_RETRY_SECS: u64 = 5;
/// Longest `next` carried through a provider login (longer: `/`).
pub const MAX_NEXT_LEN: usize = 1024;
/// Most used `state` values remembered at once; past it the oldest are
/// forgotten (a replay of those is still refused by the provider, whose
/// codes are single use).
const MAX_USED_STATES: usize = 100_000;

/// The OAuth part of `A`: the configured providers and the state-cookie key.
pub struct OAuth {
    providers: BTreeMap<String, Arc<ProviderRt>>,
    key: [u8; 32],
    secure: bool,
    http: ProviderHttp,
    /// `state` values already used at a callback, by expiry then value
    /// (a replay carries the same sealed cookie, so the same expiry).
    used: Mutex<BTreeSet<(u64, String)>>,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One provider at run time.
struct ProviderRt {
    name: String,
    cfg: OAuthProviderConfig,
    secret: Option<config::Secret>,
    redirect: String,
    oidc: Option<OidcRt>,
}

/// The discovered state of an OIDC provider.
struct OidcRt {
    issuer: String,
    metadata: RwLock<Option<Arc<CoreProviderMetadata>>>,
    last_discovery: AtomicU64,
    last_jwks: AtomicU64,
    last_kid_refetch: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
}

/// Why the OAuth providers cannot be set up.
#[derive(Debug)]
pub struct OAuthSetupError(pub String);

impl fmt::Display for OAuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OAuthSetupError {}

impl OAuth {
    /// The providers of `[auth.oauth.*]`, with `public_url` (already
    /// validated) and the state key. Reads client secret files.
    pub fn new(
        providers: &BTreeMap<String, OAuthProviderConfig>,
        public_url: &str,
        key: [u8; 32],
        secure: bool,
    ) -> Result<Self, OAuthSetupError> {
        let mut out = BTreeMap::new();
        for (name, cfg) in providers {
            if cfg.kind == config::ProviderKind::Github
                && cfg.allowed_users.is_empty()
                && cfg.allowed_domains.is_empty()
            {
                tracing::warn!(
                    provider = %name,
                    "auth.oauth.{name}: kind = \"github\" with neither allowed_users nor allowed_domains: any GitHub account can sign in"
                );
            }
            let secret = match (&cfg.client_secret, &cfg.client_secret_file) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(path)) => {
                    let s = sigma_core::namedfile::read_to_string(path).map_err(|e| {
                        OAuthSetupError(format!("auth.oauth.{name}.client_secret_file: {e}"))
                    })?;
                    let s = s.strip_suffix('\n').unwrap_or(&s);
                    let s = s.strip_suffix('\r').unwrap_or(s);
                    if s.is_empty() {
                        return Err(OAuthSetupError(format!(
                            "auth.oauth.{name}.client_secret_file: {} is empty",
                            path.display()
                        )));
                    }
                    Some(config::Secret::from(s))
                }
                (None, None) => None,
            };
            let oidc = cfg.issuer_url().map(|issuer| OidcRt {
                issuer: issuer.to_owned(),
                metadata: RwLock::new(None),
                last_discovery: AtomicU64::new(0),
                last_jwks: AtomicU64::new(0),
                last_kid_refetch: AtomicU64::new(0),
                fetching: tokio::sync::Mutex::new(()),
            });
            out.insert(
                name.clone(),
                Arc::new(ProviderRt {
                    name: name.clone(),
                    cfg: cfg.clone(),
                    secret,
                    redirect: format!("{}/auth/{name}/callback", public_url.trim_end_matches('/')),
                    oidc,
                }),
            );
        }
        let http = http_client().map_err(|e| {
            OAuthSetupError(format!("auth.oauth: cannot build the HTTP client: {e}"))
        })?;
        Ok(Self {
            providers: out,
            key,
            secure,
            http: ProviderHttp::new(http),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// Login page buttons, one per provider, carrying `next`.
    pub fn buttons(&self, next: &str) -> String {
        if self.providers.is_empty() {
            return String::new();
        }
        let next_q: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        let mut out = String::from("<div class=\"providers\">");
        for (name, p) in &self.providers {
            out.push_str(&format!(
                "<a class=\"provider\" style=\"display:block;text-align:center;padding:.55rem;border:1px solid GrayText;border-radius:.4rem;text-decoration:none;color:inherit\" href=\"/auth/{}/login?next={}\">Sign in with {}</a>",
                html_escape(name),
                html_escape(&next_q),
                html_escape(&p.cfg.label(name)),
            ));
        }
        out.push_str("</div>");
        out
    }

    /// Remembers `state` as used; false if it already was (a replay).
    /// Err only if the memory is poisoned.
    fn first_use(&self, state: &str, expires: u64, now: u64) -> Result<bool, ()> {
        let mut used = self.used.lock().map_err(|_| ())?;
        Ok(remember(&mut used, MAX_USED_STATES, state, expires, now))
    }

    fn state_cookie(&self, name: &str, value: &str, max_age: i64) -> Header {
        let c = Cookie::build((STATE_COOKIE, value.to_owned()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path(format!("/auth/{name}/"))
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(max_age))
            .build();
        Header::new(&b"Set-Cookie"[..], c.to_string())
    }
}

/// Remembers `(expires, state)` in `used`, keeping at most `cap`: expired
/// entries go first, then, if it is still full, the oldest (the earliest
/// expiry). A flood of callbacks therefore never refuses other logins; it
/// only pushes the flood's own oldest entries out. False if the entry was
/// already there (a replay).
fn remember(
    used: &mut BTreeSet<(u64, String)>,
    cap: usize,
    state: &str,
    expires: u64,
    now: u64,
) -> bool {
    while used.first().is_some_and(|(e, _)| *e <= now) {
        used.pop_first();
    }
    let entry = (expires, state.to_owned());
    if used.contains(&entry) {
        return false;
    }
    while used.len() >= cap.max(1) && used.pop_first().is_some() {}
    used.insert(entry)
}

/// Keeps OIDC discovery and JWKS fresh: discovers providers that are not
/// yet (retrying while they are down) and refreshes every JWKS every
/// [`JWKS_REFRESH_SECS`].
pub async fn background(auth: Arc<Auth>) {
    let Some(oauth) = auth.oauth.as_ref() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(DISCOVERY_RETRY_SECS));
    // Per provider: the next background discovery attempt and the current
    // back-off (5 s doubling to 5 min), so a provider that stays down costs
    // little and logs rarely; a login still retries every 5 s.
    let mut backoff: HashMap<String, (u64, u64)> = HashMap::new();
    loop {
        tick.tick().await;
        for p in oauth.providers.values() {
            let Some(oidc) = &p.oidc else { continue };
            let now = unix_now();
            let known = oidc.current().is_some();
            if !known {
                let (next_at, delay) = backoff
                    .get(&p.name)
                    .copied()
                    .unwrap_or((0, DISCOVERY_RETRY_SECS));
                if now < next_at {
                    continue;
                }
                match oidc.discover(&oauth.http, now).await {
                    Ok(_) => {
                        backoff.remove(&p.name);
                    }
                    Err(e) => {
                        tracing::warn!(provider = %p.name, error = %e, retry_in_secs = delay, "OIDC discovery failed");
                        backoff.insert(
                            p.name.clone(),
                            (now.saturating_add(delay), delay.saturating_mul(2).min(300)),
                        );
                    }
                }
            } else if now
                >= oidc
                    .last_jwks
                    .load(Ordering::Relaxed)
                    .saturating_add(JWKS_REFRESH_SECS)
            {
                if let Err(e) = oidc.refetch_jwks(&oauth.http, now).await {
                    tracing::warn!(provider = %p.name, error = %e, "JWKS refresh failed");
                }
            }
        }
    }
}

impl OidcRt {
    fn current(&self) -> Option<Arc<CoreProviderMetadata>> {
        self.metadata.read().ok().and_then(|m| m.clone())
    }

    /// The provider metadata, discovering it now if it is not known and the
    /// last attempt is older than [`DISCOVERY_RETRY_SECS`].
    async fn metadata(
        &self,
        http: &ProviderHttp,
        now: u64,
    ) -> Result<Arc<CoreProviderMetadata>, String> {
        if let Some(m) = self.current() {
            return Ok(m);
        }
        self.discover(http, now).await
    }

    async fn discover(
        &self,
        http: &ProviderHttp,
        now: u64,
    ) -> Result<Arc<CoreProviderMetadata>, String> {
        let _guard = self.fetching.lock().await;
        if let Some(m) = self.current() {
            return Ok(m);
        }
        let last = self.last_discovery.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(DISCOVERY_RETRY_SECS) {
            return Err("discovery failed recently; retrying shortly".into());
        }
        self.last_discovery.store(now, Ordering::Relaxed);
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = CoreProviderMetadata::discover_async(issuer, http)
            .await
            .map_err(|e| error_chain(&e))?;
        discovered_endpoints_ok(&meta)?;
        let meta = Arc::new(meta);
        if let Ok(mut m) = self.metadata.write() {
            *m = Some(Arc::clone(&meta));
        }
        self.last_jwks.store(now, Ordering::Relaxed);
        tracing::info!(issuer = %self.issuer, keys = meta.jwks().keys().len(), "OIDC provider discovered");
        Ok(meta)
    }

    /// Fetches the JWKS again and installs it (the background refresh);
    /// returns the new metadata.
    async fn refetch_jwks(
        &self,
        http: &ProviderHttp,
        now: u64,
    ) -> Result<Arc<CoreProviderMetadata>, String> {
        let guard = self.fetching.lock().await;
        self.install_jwks(&guard, http, now).await
    }

    /// Keys newer than `seen`, for an ID token whose `kid` `seen` does not
    /// know. First whatever is installed now, if it is not `seen` (another
    /// login or the background refresh fetched since this login took its
    /// snapshot, or is fetching right now: this waits for it); else one
    /// refetch, at most every [`JWKS_MIN_REFETCH_SECS`] per provider
    /// (claimed with a compare-exchange, so racing logins fetch once).
    /// `None`: nothing newer, and a refetch is not allowed yet.
    async fn keys_after(
        &self,
        http: &ProviderHttp,
        seen: &Arc<CoreProviderMetadata>,
        now: u64,
    ) -> Result<Option<Arc<CoreProviderMetadata>>, String> {
        let newer = || self.current().filter(|cur| !Arc::ptr_eq(cur, seen));
        if let Some(cur) = newer() {
            return Ok(Some(cur));
        }
        let guard = self.fetching.lock().await;
        if let Some(cur) = newer() {
            return Ok(Some(cur));
        }
        let last = self.last_kid_refetch.load(Ordering::Acquire);
        if now < last.saturating_add(JWKS_MIN_REFETCH_SECS)
            || self
                .last_kid_refetch
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(None);
        }
        self.install_jwks(&guard, http, now).await.map(Some)
    }

    /// Fetches the JWKS and installs it, with the fetch lock held
    /// (`_held`); returns the new metadata.
    async fn install_jwks(
        &self,
        _held: &tokio::sync::MutexGuard<'_, ()>,
        http: &ProviderHttp,
        now: u64,
    ) -> Result<Arc<CoreProviderMetadata>, String> {
        let Some(meta) = self.current() else {
            return Err("not discovered".into());
        };
        let jwks = CoreJsonWebKeySet::fetch_async(meta.jwks_uri(), http)
            .await
            .map_err(|e| error_chain(&e))?;
        if jwks.keys().is_empty() {
            // Keep the keys we have rather than refuse every login.
            return Err("the provider's JWKS has no keys".into());
        }
        let updated = Arc::new((*meta).clone().set_jwks(jwks));
        if let Ok(mut m) = self.metadata.write() {
            *m = Some(Arc::clone(&updated));
        }
        self.last_jwks.store(now, Ordering::Relaxed);
        Ok(updated)
    }
}

/// The endpoints of a discovery document follow the rule of configured
/// provider URLs: `https`, or `http` only to a loopback host, no
/// credentials. (Discovery itself already insists that the document's
/// `issuer` is the configured one.)
fn discovered_endpoints_ok(meta: &CoreProviderMetadata) -> Result<(), String> {
    let endpoints = [
        (
            "authorization_endpoint",
            Some(meta.authorization_endpoint().url()),
        ),
        ("token_endpoint", meta.token_endpoint().map(|u| u.url())),
        (
            "userinfo_endpoint",
            meta.userinfo_endpoint().map(|u| u.url()),
        ),
        ("jwks_uri", Some(meta.jwks_uri().url())),
    ];
    for (name, url) in endpoints {
        if let Some(url) = url {
            if !config::url_ok(url.as_str()) {
                // Scheme and host only: the URL might carry credentials.
                return Err(format!(
                    "discovered {name} ({}://{}) is not https (or http to a loopback host) or has credentials",
                    url.scheme(),
                    url.host_str().unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A failed login step: the status, a reason code and a message for the
/// user (shown on the error page; never a secret or a provider body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status of the page.
    pub status: u16,
    /// Machine-readable reason (also counted in the metrics).
    pub reason: &'static str,
    /// What the user reads.
    pub message: String,
    /// Seconds for `Retry-After` (a throttled callback).
    pub retry_after: Option<u64>,
}

impl Failure {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The error page for a failed login.
pub fn error_page(f: &Failure) -> Response {
    let retry = f
        .retry_after
        .map(|s| Header::new(&b"Retry-After"[..], s.to_string()));
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign-in failed · sigma</title>\
<style>:root{{color-scheme:light dark;font-family:system-ui,sans-serif}}body{{display:grid;place-items:center;min-height:100vh;margin:0}}main{{width:min(26rem,90vw);padding:2rem;border:1px solid GrayText;border-radius:.75rem}}.reason{{color:GrayText;font-size:.85rem}}</style></head>\
<body><main><h1>Sign-in failed</h1><p class=\"error\" role=\"alert\">{}</p><p class=\"reason\">Reason: <code id=\"reason\">{}</code></p><p><a href=\"/login\">Back to sign in</a></p></main></body></html>\n",
        html_escape(&f.message),
        f.reason
    );
    Response::new(
        f.status,
        vec![
            Header::new(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..]),
            Header::new(&b"Cache-Control"[..], &b"no-store"[..]),
            Header::new(&b"X-Frame-Options"[..], &b"DENY"[..]),
            Header::new(
                &b"Content-Security-Policy"[..],
                &b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"[..],
            ),
            Header::new(&b"Sigma-Login-Error"[..], f.reason.as_bytes().to_vec()),
        ]
        .into_iter()
        .chain(retry)
        .collect(),
        page,
    )
}

/// Answers `/auth/<name>/login` and `/auth/<name>/callback` for a
/// configured provider; `None` for any other path.
pub fn handle(auth: &Arc<Auth>, call: &Call<'_>) -> Option<Handled> {
    let oauth = auth.oauth.as_ref()?;
    let head = &call.req.head;
    let rest = head.path().strip_prefix(b"/auth/")?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (name, step) = rest.split_once('/')?;
    let provider = oauth.providers.get(name)?;
    let identity = call.identity.clone();
    let ready = |resp: Response| Some(Handled::Ready(Tagged::new(identity.clone(), resp)));
    if !matches!(step, "login" | "callback") {
        return None;
    }
    // The callback has effects (a token request, a session): GET only.
    let allowed = match step {
        "login" => matches!(head.method, Method::Get | Method::Head),
        _ => head.method == Method::Get,
    };
    if !allowed {
        return ready(sigma_core::response::json_error(405, "method_not_allowed"));
    }
    let auth2 = Arc::clone(auth);
    let oauth = Arc::clone(oauth);
    let provider = Arc::clone(provider);
    if step == "login" {
        let mut next = safe_next(query_param(&head.target, "next").as_deref());
        // The state cookie must stay well under a browser's 4 KiB.
        if next.len() > MAX_NEXT_LEN {
            next = "/".into();
        }
        return Some(Handled::Later(Box::pin(async move {
            let resp = match login(&oauth, &provider, next).await {
                Ok(r) => r,
                Err(f) => fail(&auth2, &provider, &f),
            };
            Tagged::new(identity, resp)
        })));
    }
    let query = Callback::parse(&head.target);
    let cookie = state_cookie_value(&head.headers);
    let client_ip = call.client_ip;
    let old = match call.via {
        Via::Cookie(id) => Some(id.clone()),
        _ => None,
    };
    Some(Handled::Later(Box::pin(async move {
        let mut resp =
            match callback(&auth2, &oauth, &provider, query, cookie, old, client_ip).await {
                Ok(r) => r,
                Err(f) => fail(&auth2, &provider, &f),
            };
        // The state cookie is single use: every callback clears it.
        resp.headers.push(oauth.state_cookie(&provider.name, "", 0));
        Tagged::new(identity, resp)
    })))
}

fn fail(auth: &Auth, provider: &ProviderRt, f: &Failure) -> Response {
    auth.metrics.reject(f.reason);
    tracing::info!(provider = %provider.name, reason = f.reason, status = f.status, "OAuth login refused");
    error_page(f)
}

fn unavailable(e: &str) -> Failure {
    tracing::warn!(error = %e, "OAuth provider unavailable");
    Failure::new(
        503,
        "oauth_provider_unavailable",
        "The sign-in provider cannot be reached right now. Please try again in a minute.",
    )
}

fn random_token(bytes: usize) -> Result<String, Failure> {
    let mut b = vec![0u8; bytes];
    sigma_store::random_bytes(&mut b)
        .map_err(|_| Failure::new(503, "oauth_internal", "Sign-in is unavailable right now."))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// `GET /auth/<name>/login`: the redirect to the provider, with the sealed
/// state cookie.
async fn login(oauth: &OAuth, p: &ProviderRt, next: String) -> Result<Response, Failure> {
    let internal = |_| Failure::new(503, "oauth_internal", "Sign-in is unavailable right now.");
    let redirect = RedirectUrl::new(p.redirect.clone()).map_err(internal)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = random_token(32)?;
    let scopes = p.cfg.scopes();
    // The nonce binds an ID token to this login: OIDC only (GitHub has no
    // ID token; its state cookie carries an empty nonce).
    let (url, nonce) = match &p.oidc {
        Some(oidc) => {
            let meta = oidc
                .metadata(&oauth.http, unix_now())
                .await
                .map_err(|e| unavailable(&e))?;
            let nonce = random_token(32)?;
            let client = CoreClient::from_provider_metadata(
                (*meta).clone(),
                ClientId::new(p.cfg.client_id.clone()),
                p.secret
                    .as_ref()
                    .map(|s| ClientSecret::new(s.expose().to_owned())),
            )
            .set_redirect_uri(redirect);
            let (st, no) = (state.clone(), nonce.clone());
            let mut req = client
                .authorize_url(
                    CoreAuthenticationFlow::AuthorizationCode,
                    move || CsrfToken::new(st),
                    move || Nonce::new(no),
                )
                .set_pkce_challenge(challenge);
            for s in scopes.into_iter().filter(|s| s != "openid") {
                req = req.add_scope(Scope::new(s));
            }
            (req.url().0, nonce)
        }
        None => {
            let client = github::client(p, redirect).map_err(internal)?;
            let st = state.clone();
            let mut req = client
                .authorize_url(move || CsrfToken::new(st))
                .set_pkce_challenge(challenge);
            for s in scopes {
                req = req.add_scope(Scope::new(s));
            }
            (req.url().0, String::new())
        }
    };
    let now = unix_now();
    let login = LoginState {
        state,
        nonce,
        verifier: verifier.secret().clone(),
        next,
        expires: now.saturating_add(STATE_TTL_SECS),
    };
    let mut seal_nonce = [0u8; 24];
    sigma_store::random_bytes(&mut seal_nonce)
        .map_err(|_| Failure::new(503, "oauth_internal", "Sign-in is unavailable right now."))?;
    let sealed = state::seal(&oauth.key, &p.name, &login, seal_nonce)
        .map_err(|_| Failure::new(503, "oauth_internal", "Sign-in is unavailable right now."))?;
    let mut resp = call::redirect(url.as_str());
    resp.headers.push(oauth.state_cookie(
        &p.name,
        &sealed,
        i64::try_from(STATE_TTL_SECS).unwrap_or(600),
    ));
    Ok(resp)
}

/// The query of a callback.
#[derive(Debug, Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Callback {
    fn parse(target: &[u8]) -> Self {
        Self {
            code: query_param(target, "code"),
            state: query_param(target, "state"),
            error: query_param(target, "error"),
        }
    }
}

/// The value of the single `sigma_oauth` cookie (two of them: none).
fn state_cookie_value(headers: &[Header]) -> Option<String> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.is("cookie")) {
        let Ok(value) = std::str::from_utf8(&h.value) else {
            continue;
        };
        for c in Cookie::split_parse(value).flatten() {
            if c.name() == STATE_COOKIE {
                if found.is_some() {
                    return None;
                }
                found = Some(c.value().to_owned());
            }
        }
    }
    found
}

/// Checks the state cookie against the callback's `state` (sans-IO part
/// of the callback): the login it belongs to.
fn check_state(
    oauth: &OAuth,
    name: &str,
    q: &Callback,
    cookie: Option<&str>,
    now: u64,
) -> Result<LoginState, Failure> {
    let restart = "Your sign-in could not be matched to this browser (missing, expired or altered sign-in state). Please start again.";
    let Some(cookie) = cookie else {
        return Err(Failure::new(400, "oauth_no_state_cookie", restart));
    };
    let login = state::open(&oauth.key, name, cookie, now).map_err(|e| match e {
        StateError::Expired => Failure::new(
            400,
            "oauth_state_expired",
            "Your sign-in took too long. Please start again.",
        ),
        _ => Failure::new(400, "oauth_bad_state_cookie", restart),
    })?;
    let Some(state) = q.state.as_deref() else {
        return Err(Failure::new(400, "oauth_bad_state", restart));
    };
    if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
        return Err(Failure::new(400, "oauth_bad_state", restart));
    }
    Ok(login)
}

/// `GET /auth/<name>/callback`.
async fn callback(
    auth: &Arc<Auth>,
    oauth: &OAuth,
    p: &ProviderRt,
    q: Callback,
    cookie: Option<String>,
    old: Option<sigma_store::SessionId>,
    client_ip: std::net::IpAddr,
) -> Result<Response, Failure> {
    if let Some(err) = q.error.as_deref() {
        return Err(if err == "access_denied" {
            Failure::new(
                403,
                "oauth_access_denied",
                "Sign-in was cancelled at the provider.",
            )
        } else {
            Failure::new(
                400,
                "oauth_provider_error",
                "The sign-in provider reported an error. Please try again.",
            )
        });
    }
    let now = unix_now();
    let login = check_state(oauth, &p.name, &q, cookie.as_deref(), now)?;
    // A callback that passes the state check costs a request to the
    // provider: it counts as a login attempt of the client's address
    // (`[auth] login_per_ip_per_minute`).
    if let Err(t) = auth.throttle.check_addr(client_ip) {
        let mut f = Failure::new(
            429,
            "login_throttled",
            "Too many sign-in attempts from your address. Please wait a minute.",
        );
        f.retry_after = Some(t.retry_after_secs());
        return Err(f);
    }
    match oauth.first_use(&login.state, login.expires, now) {
        Ok(true) => {}
        Ok(false) => {
            return Err(Failure::new(
                400,
                "oauth_state_reused",
                "This sign-in link was already used. Please start again.",
            ))
        }
        Err(()) => {
            return Err(Failure::new(
                503,
                "oauth_internal",
                "Sign-in is unavailable right now.",
            ))
        }
    }
    let Some(code) = q.code else {
        return Err(Failure::new(
            400,
            "oauth_no_code",
            "The provider did not send an authorization code. Please start again.",
        ));
    };
    let internal = |_| Failure::new(503, "oauth_internal", "Sign-in is unavailable right now.");
    let redirect = RedirectUrl::new(p.redirect.clone()).map_err(internal)?;
    let user = match &p.oidc {
        Some(oidc) => oidc_user(oauth, p, oidc, redirect, code, &login).await?,
        None => github::user(oauth, p, redirect, code, &login).await?,
    };
    let name = mapping::map_user(&p.cfg, &user)
        .map_err(|e: MapError| Failure::new(403, e.reason(), e.to_string()))?;
    // The name may not be a local password user's unless the operator
    // linked it (listed it in this provider's `allowed_users`): otherwise
    // a provider account named `admin` would be sigma's `admin`.
    let linked = mapping::linked(&p.cfg, &name);
    // The same session as a password login: rotation, cookie attributes.
    // The store is read and written off the executor.
    let store_auth = Arc::clone(auth);
    let provider = Provider::OAuth(p.name.clone());
    let user_name = name.clone();
    let groups = user.groups.clone();
    let now_ms = unix_now_ms();
    let created = tokio::task::spawn_blocking(move || {
        if !linked && store_auth.store.user_get(&user_name)?.is_some() {
            return Ok(None);
        }
        if let Some(old) = old {
            let _ = store_auth.sessions.revoke(&old);
        }
        store_auth
            .sessions
            .create(&user_name, &provider, groups, now_ms)
            .map(Some)
    })
    .await;
    let id = match created {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => {
            let e = MapError::NameTaken;
            tracing::warn!(user = %name, provider = %p.name, "OAuth login refused: the name is a local password user's");
            return Err(Failure::new(403, e.reason(), e.to_string()));
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not store a session");
            return Err(Failure::new(
                503,
                "oauth_internal",
                "Sign-in is unavailable right now.",
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                503,
                "oauth_internal",
                "Sign-in is unavailable right now.",
            ))
        }
    };
    tracing::info!(user = %name, provider = %p.name, "login");
    let mut resp = call::redirect(&safe_next(Some(&login.next)));
    resp.headers.push(Header::new(
        &b"Set-Cookie"[..],
        auth.sessions.set_cookie(&id),
    ));
    Ok(resp)
}

/// The token exchange failed: the provider refused the code, or could not
/// be reached.
fn exchange_failure<RE: std::error::Error + 'static, T: oauth2::ErrorResponse + 'static>(
    p: &ProviderRt,
    e: &oauth2::RequestTokenError<RE, T>,
) -> Failure {
    tracing::warn!(provider = %p.name, error = %error_chain(e), "token exchange failed");
    match e {
        oauth2::RequestTokenError::Request(_) => Failure::new(
            502,
            "oauth_provider_unreachable",
            "The sign-in provider cannot be reached right now. Please try again in a minute.",
        ),
        _ => Failure::new(
            400,
            "oauth_code_rejected",
            "The provider refused the sign-in code (already used or expired). Please start again.",
        ),
    }
}

fn bad_token(reason: &'static str) -> Failure {
    Failure::new(
        403,
        reason,
        "The identity token from the provider is not valid. Please try again.",
    )
}

/// The OIDC half of the callback: code → tokens → validated ID token →
/// claims (plus userinfo when the user claim is not in the ID token).
async fn oidc_user(
    oauth: &OAuth,
    p: &ProviderRt,
    oidc: &OidcRt,
    redirect: RedirectUrl,
    code: String,
    login: &LoginState,
) -> Result<ProviderUser, Failure> {
    let now = unix_now();
    let meta = oidc
        .metadata(&oauth.http, now)
        .await
        .map_err(|e| unavailable(&e))?;
    let client = CoreClient::from_provider_metadata(
        (*meta).clone(),
        ClientId::new(p.cfg.client_id.clone()),
        p.secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose().to_owned())),
    )
    .set_redirect_uri(redirect);
    let request = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| {
            Failure::new(
                503,
                "oauth_provider_unavailable",
                "The provider has no token endpoint.",
            )
        })?;
    let tokens = request
        .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
        .request_async(&oauth.http)
        .await
        .map_err(|e| exchange_failure(p, &e))?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| bad_token("oauth_no_id_token"))?;
    let nonce = Nonce::new(login.nonce.clone());
    let verify = |meta: &CoreProviderMetadata| {
        let client_id = ClientId::new(p.cfg.client_id.clone());
        let v = match &p.secret {
            Some(s) => CoreIdTokenVerifier::new_confidential_client(
                client_id,
                ClientSecret::new(s.expose().to_owned()),
                meta.issuer().clone(),
                meta.jwks().clone(),
            ),
            None => CoreIdTokenVerifier::new_public_client(
                client_id,
                meta.issuer().clone(),
                meta.jwks().clone(),
            ),
        };
        // The provider's advertised algorithms, asymmetric ones only
        // (never `none`, never a MAC keyed by the client secret).
        let v = v.set_allowed_algs(
            meta.id_token_signing_alg_values_supported()
                .iter()
                .filter(|a| {
                    !matches!(
                        a,
                        CoreJwsSigningAlgorithm::None
                            | CoreJwsSigningAlgorithm::HmacSha256
                            | CoreJwsSigningAlgorithm::HmacSha384
                            | CoreJwsSigningAlgorithm::HmacSha512
                    )
                })
                .cloned(),
        );
        id_token
            .claims(&v, &nonce)
            .map(|c| c.subject().as_str().to_owned())
    };
    // An unknown key: the provider may have rotated. Retry with newer keys:
    // those installed since this login's snapshot, else one refetch
    // (rate-limited), then once more after the first retry in case that
    // one was installed before the rotation reached it.
    let mut keys = Arc::clone(&meta);
    let mut retries = 0u8;
    let subject = loop {
        match verify(&keys) {
            Ok(s) => break s,
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if retries < 2 => {
                retries = retries.saturating_add(1);
                match oidc
                    .keys_after(&oauth.http, &keys, now)
                    .await
                    .map_err(|e| unavailable(&e))?
                {
                    Some(newer) => keys = newer,
                    None => return Err(bad_token("oauth_id_token_unknown_key")),
                }
            }
            Err(e) => return Err(id_token_failure(p, &e)),
        }
    };
    // The token verified: its payload is the claims, all of them.
    let raw = id_token.to_string();
    let mut claims = raw
        .split('.')
        .nth(1)
        .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
        .ok_or_else(|| bad_token("oauth_id_token_malformed"))?;
    let claim = p.cfg.user_claim();
    // Userinfo is asked when the ID token lacks what the rules need: the
    // user claim, or a verified address (`user_claim = "email"`, or any
    // `allowed_domains`).
    let has_email = claims.contains_key("email") && claims.contains_key("email_verified");
    let needs_email = claim == "email" || !p.cfg.allowed_domains.is_empty();
    let needs_userinfo = !claims.contains_key(claim) || (needs_email && !has_email);
    if needs_userinfo {
        if let Some(url) = meta.userinfo_endpoint() {
            let info = userinfo(oauth, url.url().as_str(), tokens.access_token()).await?;
            if info.get("sub").and_then(|s| s.as_str()) != Some(subject.as_str()) {
                return Err(bad_token("oauth_userinfo_subject_mismatch"));
            }
            // An address and its `email_verified` come from one source:
            // if the ID token has not both, userinfo's pair replaces them.
            if !has_email && info.contains_key("email") && info.contains_key("email_verified") {
                claims.remove("email");
                claims.remove("email_verified");
            }
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
    }
    let verified_email = match (claims.get("email"), claims.get("email_verified")) {
        (Some(serde_json::Value::String(e)), Some(v))
            if v.as_bool() == Some(true) || v.as_str() == Some("true") =>
        {
            vec![e.clone()]
        }
        _ => Vec::new(),
    };
    Ok(ProviderUser {
        claim: claims.get(claim).and_then(claim_text),
        verified_emails: verified_email,
        groups: p
            .cfg
            .groups_claim
            .as_deref()
            .map(|g| mapping::groups_of(claims.get(g)))
            .unwrap_or_default(),
    })
}

fn claim_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn id_token_failure(p: &ProviderRt, e: &openidconnect::ClaimsVerificationError) -> Failure {
    use openidconnect::ClaimsVerificationError as E;
    tracing::warn!(provider = %p.name, error = %e, "ID token refused");
    bad_token(match e {
        E::Expired(_) => "oauth_id_token_expired",
        E::InvalidAudience(_) => "oauth_id_token_bad_audience",
        E::InvalidIssuer(_) => "oauth_id_token_bad_issuer",
        E::InvalidNonce(_) => "oauth_id_token_bad_nonce",
        E::SignatureVerification(openidconnect::SignatureVerificationError::NoMatchingKey) => {
            "oauth_id_token_unknown_key"
        }
        E::SignatureVerification(_) => "oauth_id_token_bad_signature",
        _ => "oauth_id_token_invalid",
    })
}

async fn userinfo(
    oauth: &OAuth,
    url: &str,
    token: &AccessToken,
) -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    let resp = oauth
        .http
        .client()
        .get(url)
        .bearer_auth(token.secret())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(&format!("userinfo: HTTP {}", resp.status())));
    }
    let body = read_limited(resp).await.map_err(|e| unavailable(&e))?;
    serde_json::from_slice(&body).map_err(|_| unavailable("userinfo: not a JSON object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth() -> OAuth {
        OAuth::new(&BTreeMap::new(), "http://127.0.0.1:1", [5; 32], false).unwrap()
    }

    fn sealed(o: &OAuth, name: &str, st: &str, expires: u64) -> String {
        let l = LoginState {
            state: st.into(),
            nonce: "n".into(),
            verifier: "v".into(),
            next: "/".into(),
            expires,
        };
        state::seal(&o.key, name, &l, [2; 24]).unwrap()
    }

    #[test]
    fn state_checks() {
        let o = oauth();
        let q = |s: Option<&str>| Callback {
            code: Some("c".into()),
            state: s.map(str::to_owned),
            error: None,
        };
        let c = sealed(&o, "corp", "abc", 100);
        assert!(check_state(&o, "corp", &q(Some("abc")), Some(&c), 10).is_ok());
        let reason = |r: Result<LoginState, Failure>| r.unwrap_err().reason;
        assert_eq!(
            reason(check_state(&o, "corp", &q(Some("abd")), Some(&c), 10)),
            "oauth_bad_state"
        );
        assert_eq!(
            reason(check_state(&o, "corp", &q(None), Some(&c), 10)),
            "oauth_bad_state"
        );
        assert_eq!(
            reason(check_state(&o, "corp", &q(Some("abc")), None, 10)),
            "oauth_no_state_cookie"
        );
        assert_eq!(
            reason(check_state(&o, "other", &q(Some("abc")), Some(&c), 10)),
            "oauth_bad_state_cookie"
        );
        assert_eq!(
            reason(check_state(&o, "corp", &q(Some("abc")), Some(&c), 100)),
            "oauth_state_expired"
        );
        assert_eq!(o.first_use("abc", 100, 10), Ok(true));
        assert_eq!(o.first_use("abc", 100, 10), Ok(false));
    }

    #[test]
    fn used_states_are_bounded_and_evict_the_oldest() {
        let mut used = BTreeSet::new();
        assert!(remember(&mut used, 3, "a", 100, 0));
        assert!(remember(&mut used, 3, "b", 101, 0));
        assert!(remember(&mut used, 3, "c", 102, 0));
        // Full of unexpired states: the oldest goes, the new login passes.
        assert!(remember(&mut used, 3, "d", 103, 0));
        assert_eq!(used.len(), 3);
        assert!(!used.iter().any(|(_, s)| s == "a"));
        // The others are still remembered as used.
        assert!(!remember(&mut used, 3, "d", 103, 0));
        assert!(!remember(&mut used, 3, "b", 101, 0));
        // Expired ones are dropped first.
        assert!(remember(&mut used, 3, "e", 200, 102));
        assert_eq!(
            used.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
            ["d", "e"]
        );
    }

    #[test]
    fn a_flood_of_used_states_does_not_refuse_logins() {
        let o = oauth();
        for i in 0..MAX_USED_STATES {
            let expires = 1000 + u64::try_from(i).unwrap();
            assert_eq!(o.first_use(&format!("flood{i}"), expires, 10), Ok(true));
        }
        assert_eq!(o.first_use("mine", 5000, 10), Ok(true));
        assert_eq!(o.first_use("mine", 5000, 10), Ok(false));
        assert_eq!(o.used.lock().unwrap().len(), MAX_USED_STATES);
    }

    #[test]
    fn discovered_endpoints_follow_the_url_rule() {
        let doc = |token: &str| {
            serde_json::from_value::<CoreProviderMetadata>(serde_json::json!({
                "issuer": "https://id.example.com",
                "authorization_endpoint": "https://id.example.com/authorize",
                "token_endpoint": token,
                "jwks_uri": "https://id.example.com/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }))
            .unwrap()
        };
        assert!(discovered_endpoints_ok(&doc("https://id.example.com/token")).is_ok());
        assert!(discovered_endpoints_ok(&doc("http://127.0.0.1:9/token")).is_ok());
        for bad in [
            "http://id.example.com/token",
            "https://user:pw@id.example.com/token",
        ] {
            let e = discovered_endpoints_ok(&doc(bad)).unwrap_err();
            assert!(e.contains("token_endpoint"), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn cookie_lookup() {
        let h = |v: &str| Header::new(&b"Cookie"[..], v.as_bytes().to_vec());
        assert_eq!(
            state_cookie_value(&[h("a=1; sigma_oauth=xyz")]).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            state_cookie_value(&[h("sigma_oauth=x"), h("sigma_oauth=y")]),
            None
        );
        assert_eq!(state_cookie_value(&[]), None);
    }

    #[test]
    fn error_page_escapes() {
        let r = error_page(&Failure::new(400, "oauth_bad_state", "<b>"));
        assert_eq!(r.status, 400);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("&lt;b&gt;") && body.contains("oauth_bad_state"));
    }
}
