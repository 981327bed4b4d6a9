//! `A`: the identity gate (seed `000`, "Session authentication and routing").
//!
//! ```text
//!  H ──events──▶ [ A ] ──Tagged{identity, msg}──▶ router ──▶ destination
//!    ◀─replies──  [   ] ◀─Tagged{identity, reply}──
//! ```
//!
//! `A` right-terminates one HTTP session: it tags everything it forwards
//! with the connection's identity (or `null`), and enforces the seed's
//! central safety property, *the reply rule*: a reply whose identity is not
//! the one `A` attached is not sent ([`Gate::check_reply`]). Until password
//! login, sessions and tokens arrive (issue 5), every identity is `null`;
//! the gate and the rule are already in the pipeline. It also strips
//! client-supplied identity headers (`X-Sigma-*`, any spelling) so no
//! destination can be fooled by them.
//!
//! This crate is `A` as a stage of its own (the `sigma-auth` crate of
//! DESIGN §11): it sits above `sigma-core` and `sigma-store` and below the
//! `sigma` shell, which builds it from `[auth]` ([`config::AuthConfig`])
//! and hands it a [`Rejects`] (its metrics) to count refusals. No
//! destination imports it.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod admit;
pub mod apikey;
pub mod assertion;
pub mod call;
pub mod config;
pub mod endpoints;
pub mod forwarded;
pub mod jwt;
pub mod oauth;
pub mod origin;
pub mod password;
pub mod policy;
pub mod revoke;
pub mod session;
pub mod shared_throttle;
pub mod throttle;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use sigma_core::{Clock, SystemClock};
use sigma_http::RequestHead;

use crate::config::{AuthConfig, Cidr};
use session::Sessions;

pub use admit::{admit, authorize, Denied, RouteAccess};
use sigma_core::Rejects;
use sigma_store::{SessionId, Store};

// The identity values and the reply rule live in `sigma-core`;
// re-exported here so `sigma::auth::…` paths keep working.
pub use sigma_core::identity::{
    is_identity_header, strip_identity_headers, tag_request, Identity, IdentityMismatch, Principal,
    Provider, Tagged,
};
pub use sigma_core::reply::check_reply;

/// The `A` stage of one connection.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    identity: Principal,
}

impl Gate {
    /// A gate for a new connection (anonymous until it authenticates).
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate for a connection authenticated as `identity` (a WebSocket,
    /// whose identity is fixed at the upgrade).
    pub fn with_identity(identity: Principal) -> Self {
        Self { identity }
    }

    /// The identity of this connection.
    pub fn identity(&self) -> &Principal {
        &self.identity
    }

    /// Prepares a request for forwarding: strips client-supplied identity
    /// headers and tags it with the connection's identity.
    pub fn tag_request(&self, mut head: RequestHead) -> Tagged<RequestHead> {
        strip_identity_headers(&mut head.headers);
        Tagged::new(self.identity.clone(), head)
    }

    /// Tags any message with the connection's identity.
    pub fn tag<T>(&self, msg: T) -> Tagged<T> {
        Tagged::new(self.identity.clone(), msg)
    }

    /// The reply rule for this connection's own identity (WebSocket).
    pub fn check_reply<T>(&self, reply: &Tagged<T>) -> Result<(), IdentityMismatch> {
        check_reply(&self.identity, reply)
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// No credentials (or a session cookie that no longer holds).
    Anonymous,
    /// The session cookie, with the session's id.
    Cookie(SessionId),
    /// A valid `Authorization: Bearer` token.
    Bearer,
    /// A bearer token that does not verify: the request is refused (401),
    /// never treated as anonymous. The label says why (metrics).
    InvalidBearer(&'static str),
    /// A session cookie the store could not be asked about (PostgreSQL is
    /// unreachable, the session is not cached): anonymous where a route
    /// needs no identity, 503 where it needs one
    /// ([`admit::Denied::Unavailable`]) — never a 401 that would send a
    /// logged-in user to the login page.
    Unverified,
}

/// The identity `A` found for a request.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The principal, or `null`.
    pub identity: Principal,
    /// Where it came from.
    pub via: Via,
    /// The login session behind it: the cookie's, or the one a token of
    /// sigma's belongs to (its `sid`). A WebSocket opened with it closes
    /// when that session ends.
    pub session: Option<SessionId>,
}

impl Resolved {
    /// An anonymous request.
    pub fn anonymous() -> Self {
        Self {
            identity: None,
            via: Via::Anonymous,
            session: None,
        }
    }

    fn refused(reason: &'static str) -> Self {
        Self {
            identity: None,
            via: Via::InvalidBearer(reason),
            session: None,
        }
    }
}

/// Why `POST /auth/token` gave no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefused {
    /// The session asked too often; retry after this long (429).
    Throttled(std::time::Duration),
}

/// `A`'s process-wide state: sessions, password checks, login throttling,
/// tokens, and the settings of `[auth]`.
pub struct Auth {
    /// Server-side sessions.
    pub sessions: Sessions,
    store: Arc<dyn Store>,
    passwords: password::Verifier,
    throttle: throttle::Throttle,
    /// The login limits every node shares (`[cluster] redis`), if any.
    shared_throttle: Option<shared_throttle::SharedThrottle>,
    config: AuthConfig,
    metrics: Arc<dyn Rejects>,
    /// Where `A` reads the time (a fake one in tests).
    clock: Arc<dyn Clock>,
    /// sigma's own token issuer.
    issuer: jwt::Issuer,
    /// The seed of sigma's keys, for the assertion keys of the JWKS
    /// ([`assertion::published`]). Never shown.
    key_seed: [u8; 32],
    /// `POST /auth/token` per session (`auth.token_per_session_per_minute`).
    token_throttle: governor::DefaultKeyedRateLimiter<revoke::SessionHandle>,
    /// Token requests since the throttle's map was last trimmed.
    token_checks: std::sync::atomic::AtomicU64,
    /// Verifies sigma's tokens and the configured external issuers'.
    pub verifier: jwt::Verifier,
    /// OAuth2 / OIDC login (`[auth.oauth.*]`), if any provider is configured.
    pub oauth: Option<Arc<oauth::OAuth>>,
    /// API keys (`Bearer sgk_…`).
    pub apikeys: apikey::ApiKeys,
}

/// The `tracing` target of security events (DESIGN §8): failed logins,
/// throttling, refused cross-site requests, bad tokens, identity
/// mismatches; at `WARN`, rate-limited.
pub const SECURITY: &str = "sigma::security";

/// The store secret of sigma's Ed25519 key (its tokens and assertions).
pub const TOKEN_SEED_SECRET: &str = "jwt-ed25519-seed";

/// The `iss` and `aud` of the tokens sigma issues itself.
pub const OWN_ISSUER: &str = "sigma";

/// Why `A` could not be set up.
#[derive(Debug)]
pub enum AuthSetupError {
    /// The token key could not be read or created in the store.
    Store(sigma_store::StoreError),
    /// The stored token key is not 32 bytes.
    BadKey,
    /// An `[[auth.jwt]]` table cannot be used.
    Jwt(jwt::JwtConfigError),
    /// An `[auth.oauth.<name>]` table cannot be used.
    OAuth(oauth::OAuthSetupError),
}

impl fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "token signing key: {e}"),
            Self::BadKey => f.write_str("token signing key in the store has the wrong length"),
            Self::Jwt(e) => write!(f, "auth.jwt: {e}"),
            Self::OAuth(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AuthSetupError {}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// `A` over `store`, configured by `[auth]`. sigma's token signing key
    /// (an Ed25519 seed) is created in the store on first use.
    pub fn new(
        store: Arc<dyn Store>,
        config: &AuthConfig,
        metrics: Arc<dyn Rejects>,
    ) -> Result<Self, AuthSetupError> {
        let seed = store
            .secret(TOKEN_SEED_SECRET, 32)
            .map_err(AuthSetupError::Store)?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| AuthSetupError::BadKey)?;
        let issuer = jwt::Issuer::new(
            &seed,
            OWN_ISSUER.into(),
            OWN_ISSUER.into(),
            config.token_ttl,
        );
        let mut verifier = jwt::Verifier::builder().own(&issuer);
        for cfg in &config.jwt {
            verifier =
                verifier.external(jwt::ExternalIssuer::load(cfg).map_err(AuthSetupError::Jwt)?);
        }
        let verifier = verifier.build().map_err(AuthSetupError::Jwt)?;
        let secure = cookies_secure(config);
        let handle_key = store
            .secret("session-handle-key", 32)
            .map_err(AuthSetupError::Store)?;
        let handle_key: [u8; 32] = handle_key.try_into().map_err(|_| AuthSetupError::BadKey)?;
        let token_quota = governor::Quota::per_minute(
            std::num::NonZeroU32::new(config.token_per_session_per_minute)
                .unwrap_or(std::num::NonZeroU32::MIN),
        );
        let oauth = if config.oauth.is_empty() {
            None
        } else {
            let key = store
                .secret("oauth-state-key", 32)
                .map_err(AuthSetupError::Store)?;
            let key: [u8; 32] = key.try_into().map_err(|_| AuthSetupError::BadKey)?;
            let public_url = config.public_url.as_deref().unwrap_or_default();
            Some(Arc::new(
                oauth::OAuth::new(&config.oauth, public_url, key, secure)
                    .map_err(AuthSetupError::OAuth)?,
            ))
        };
        Ok(Self {
            issuer,
            key_seed: seed,
            verifier,
            sessions: Sessions::new(
                Arc::clone(&store),
                config.session_idle_timeout,
                config.session_lifetime,
                secure,
                config.oauth.keys().cloned().collect(),
                handle_key,
            ),
            token_throttle: governor::RateLimiter::keyed(token_quota),
            token_checks: std::sync::atomic::AtomicU64::new(0),
            apikeys: apikey::ApiKeys::new(Arc::clone(&store)),
            store,
            passwords: password::Verifier::new(config.password_workers, config.password_queue),
            throttle: throttle::Throttle::new(throttle::Limits {
                per_addr: config.login_per_ip_per_minute,
                failures_per_user: config.login_failures_per_user_per_minute,
                failures: config.login_failures_per_minute,
            }),
            shared_throttle: None,
            config: config.clone(),
            metrics,
            clock: Arc::new(SystemClock),
            oauth,
        })
    }

    /// `A` whose login limits are also counted in `counters`, shared by
    /// every node of a cluster ([`shared_throttle`]).
    pub fn with_shared_counters(mut self, counters: Arc<dyn sigma_store::SharedCounters>) -> Self {
        let limits = throttle::Limits {
            per_addr: self.config.login_per_ip_per_minute,
            failures_per_user: self.config.login_failures_per_user_per_minute,
            failures: self.config.login_failures_per_minute,
        };
        self.shared_throttle = Some(shared_throttle::SharedThrottle::new(counters, limits));
        self
    }

    /// `A` reading the time from `clock` instead of the system's (tests
    /// move a [`sigma_core::FakeClock`] by hand instead of sleeping).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where `A` reads the time: callers pass [`Clock::unix_ms`] to
    /// [`Auth::identify`] and to the session table.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The identity of a request at `now_ms` (unix ms): a bearer token,
    /// else the session cookie, else anonymous. One of sigma's own tokens
    /// holds only while its session (`sid`) does.
    pub fn identify(&self, head: &RequestHead, now_ms: u64, client: IpAddr) -> Resolved {
        if let Some(auth) = head.header("authorization") {
            let Some(token) = jwt::bearer_token(&auth.value) else {
                return Resolved::refused("malformed_authorization");
            };
            if token.starts_with(apikey::PREFIX.as_bytes()) {
                return self.identify_key(token, client);
            }
            let v = match self.verifier.verify(token, now_ms / 1000) {
                Ok(v) => v,
                Err(e) => {
                    self.metrics.reject(e.reason());
                    return Resolved::refused(e.reason());
                }
            };
            let session = if v.issuer == OWN_ISSUER {
                match self.token_session(&v, now_ms) {
                    Ok(found) => Some(found),
                    Err(reason) => {
                        self.metrics.reject(reason);
                        return Resolved::refused(reason);
                    }
                }
            } else {
                None
            };
            // sigma's own tokens carry the session's groups (as they are
            // now); an external issuer's, its `groups` claim.
            let groups = match &session {
                Some((_, _, identity)) => identity.groups.clone(),
                None => v.groups,
            };
            return Resolved {
                identity: Some(Arc::new(Identity {
                    user: v.user,
                    provider: Provider::Jwt(v.issuer),
                    world: None,
                    session: session.as_ref().map(|(_, handle, _)| handle.to_ref()),
                    groups,
                })),
                via: Via::Bearer,
                session: session.map(|(id, _, _)| id),
            };
        }
        if let Some(id) = session::session_cookie(&head.headers) {
            match self.sessions.lookup_checked(&id, now_ms) {
                Ok(Some(identity)) => {
                    return Resolved {
                        identity: Some(identity),
                        via: Via::Cookie(id.clone()),
                        session: Some(id),
                    }
                }
                Ok(None) => {}
                Err(session::StoreDown) => {
                    return Resolved {
                        identity: None,
                        via: Via::Unverified,
                        session: None,
                    }
                }
            }
        }
        Resolved::anonymous()
    }

    /// An API key's identity, or why not: `api_key_throttled` when the
    /// client's network sent too many wrong keys (answered 429),
    /// `unknown_api_key`, `store_unavailable`. Only wrong keys spend the
    /// network's budget.
    fn identify_key(&self, token: &[u8], client: IpAddr) -> Resolved {
        let attempt = match self.throttle.begin_key(client) {
            Ok(a) => a,
            Err(t) => {
                self.metrics.reject(t.reason);
                return Resolved::refused(t.reason);
            }
        };
        let found = if apikey::well_formed(token) {
            self.apikeys.lookup(token)
        } else {
            Ok(None)
        };
        match found {
            Ok(Some(identity)) => {
                self.throttle.key_ok(attempt);
                Resolved {
                    identity: Some(identity),
                    via: Via::Bearer,
                    session: None,
                }
            }
            Ok(None) => {
                self.metrics.reject("unknown_api_key");
                Resolved::refused("unknown_api_key")
            }
            Err(_) => {
                self.throttle.key_ok(attempt);
                Resolved::refused("store_unavailable")
            }
        }
    }

    /// The live session one of sigma's tokens belongs to, or why there is
    /// none: no `sid` (a token of an older sigma), or a session that ended.
    fn token_session(
        &self,
        v: &jwt::Verified,
        now_ms: u64,
    ) -> Result<(SessionId, revoke::SessionHandle, Arc<Identity>), &'static str> {
        let handle = v
            .claims
            .sid
            .as_deref()
            .ok_or("missing_sid")
            .and_then(|s| revoke::SessionHandle::parse(s).ok_or("invalid_sid"))?;
        self.sessions
            .lookup_token(&handle, &v.user, now_ms)
            .map(|(id, identity)| (id, handle, identity))
            .ok_or("session_ended")
    }

    /// Ends every session of `user` at once: its tokens are refused and
    /// its WebSockets close with 4401. Call it after the store deleted the
    /// user or changed its password (which deletes the sessions' records in
    /// the same transaction).
    pub fn revoke_user(&self, user: &str) -> usize {
        self.sessions.revoke_user(user)
    }

    /// `GET /.well-known/sigma/jwks.json`: the public key of sigma's
    /// tokens and upstream assertions.
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys = vec![self.issuer.public_jwk()];
        keys.extend(assertion::published(
            &self.key_seed,
            self.clock.unix_ms() / 1000,
        ));
        serde_json::json!({ "keys": keys })
    }

    /// Makes `user`'s open sessions pick up a change of the user record
    /// (its groups) on their next request; they stay logged in.
    pub fn refresh_user(&self, user: &str) -> usize {
        self.sessions.refresh_user(user)
    }

    /// The client's address: the peer, or for a trusted proxy the
    /// right-most hop of its chain that is not a trusted proxy
    /// ([`forwarded::resolve`]).
    pub fn client_ip(&self, peer: IpAddr, head: &RequestHead) -> IpAddr {
        client_ip(peer, head, &self.config.trusted_proxies)
    }

    /// `[auth] trusted_proxies`: the peers whose forwarding headers are
    /// believed ([`forwarded::resolve`]).
    pub fn trusted_proxies(&self) -> &[Cidr] {
        &self.config.trusted_proxies
    }

    /// `[auth] public_url`, if set: the origin browsers use.
    pub fn public_url(&self) -> Option<&str> {
        self.config.public_url.as_deref()
    }

    /// The same-origin check of `head` ([`origin::check_with`] with
    /// `public_url`, `allowed_origins` and, with TLS on, `https://` only).
    pub fn same_origin(&self, head: &RequestHead) -> Result<(), origin::CrossSite> {
        origin::check_with(
            head,
            self.public_url(),
            self.allowed_origins(),
            self.https_only(),
        )
    }

    /// Origins allowed besides sigma's own.
    pub fn allowed_origins(&self) -> &[String] {
        &self.config.allowed_origins
    }

    /// Whether sigma is reached over TLS (its own, DESIGN §2a, or a
    /// terminator: [`cookies_secure`]): then its own origin, for the
    /// cross-site checks, is `https://` only.
    pub fn https_only(&self) -> bool {
        cookies_secure(&self.config)
    }

    /// A token for `user` of session `session` from `POST /auth/token`,
    /// with its lifetime; throttled per session, so each token is not a
    /// fresh budget.
    pub fn issue_token(
        &self,
        user: &str,
        session: &SessionId,
    ) -> Result<(String, u64), TokenRefused> {
        use std::sync::atomic::Ordering;
        const TRIM_EVERY: u64 = 1024;
        if self.token_checks.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
            self.token_throttle.retain_recent();
        }
        let handle = self.sessions.handle(session);
        if let Err(not_until) = self.token_throttle.check_key(&handle) {
            use governor::clock::Clock as _;
            let now = governor::clock::DefaultClock::default().now();
            return Err(TokenRefused::Throttled(not_until.wait_time_from(now)));
        }
        Ok(self
            .issuer
            .issue_for_session(user, &handle.encode(), self.clock.unix_secs()))
    }

    /// Login page buttons for the configured OAuth providers.
    pub fn provider_buttons(&self, next: &str) -> String {
        self.oauth
            .as_ref()
            .map(|o| o.buttons(next))
            .unwrap_or_default()
    }
}

/// True if sigma's cookies (session and OAuth state) must be `Secure`:
/// TLS is configured, by `cookie_secure` (a TLS terminator in front) or by
/// an `https` `public_url` (DESIGN §4: "Secure whenever TLS is on or
/// configured").
pub fn cookies_secure(config: &AuthConfig) -> bool {
    config.cookie_secure
        || config
            .public_url
            .as_deref()
            .and_then(|u| u.get(..8))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// See [`Auth::client_ip`] ([`forwarded::resolve`]).
pub fn client_ip(peer: IpAddr, head: &RequestHead, trusted: &[Cidr]) -> IpAddr {
    forwarded::resolve(peer, head, trusted).ip
}

/// Seconds since the Unix epoch (the wall clock of tokens).
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch (the wall clock of sessions).
pub use sigma_core::clock::unix_now_ms;

#[cfg(test)]
mod tests {
    const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    use super::*;

    #[test]
    fn cookies_are_secure_when_tls_is_configured() {
        let mut c = AuthConfig::default();
        assert!(!cookies_secure(&c));
        c.public_url = Some("http://chat.example.com".into());
        assert!(!cookies_secure(&c));
        c.public_url = Some("https://chat.example.com".into());
        assert!(cookies_secure(&c));
        c.public_url = Some("HTTPS://chat.example.com".into());
        assert!(cookies_secure(&c));
        c.public_url = None;
        c.cookie_secure = true;
        assert!(cookies_secure(&c));
    }

    fn get(headers: Vec<sigma_http::Header>) -> RequestHead {
        RequestHead {
            method: sigma_http::Method::Get,
            target: bytes::Bytes::from_static(b"/"),
            version: sigma_http::Version::Http11,
            headers,
            keep_alive: true,
            websocket: None,
        }
    }

    /// The cookie's identity and a token's of that session name the
    /// session by its handle (never its id); another session's differs.
    #[test]
    fn identities_carry_their_session_handle() {
        let store: Arc<dyn Store> = Arc::new(sigma_store::RedbStore::in_memory().unwrap());
        let auth = Auth::new(
            store,
            &AuthConfig::default(),
            Arc::new(sigma_core::RejectCounts::default()),
        )
        .unwrap();
        let now = auth.clock().unix_ms();
        let id = auth
            .sessions
            .create("alice", &Provider::Password, Vec::new(), now)
            .unwrap();
        let other = auth
            .sessions
            .create("alice", &Provider::Password, Vec::new(), now)
            .unwrap();
        let handle = auth.sessions.handle(&id).to_ref();
        let cookie = |id: &SessionId| {
            let set = auth.sessions.set_cookie(id);
            let pair = set.split(';').next().unwrap().to_owned();
            get(vec![sigma_http::Header::new(
                &b"Cookie"[..],
                pair.into_bytes(),
            )])
        };
        let by_cookie = auth.identify(&cookie(&id), now, LOCAL).identity.unwrap();
        assert_eq!(by_cookie.session, Some(handle));
        assert!(by_cookie.groups.is_empty());
        let by_other = auth.identify(&cookie(&other), now, LOCAL).identity.unwrap();
        assert!(by_other.session.is_some());
        assert_ne!(by_other.session, Some(handle));
        let (token, _) = auth.issue_token("alice", &id).unwrap();
        let bearer = get(vec![sigma_http::Header::new(
            &b"Authorization"[..],
            format!("Bearer {token}").into_bytes(),
        )]);
        let resolved = auth.identify(&bearer, now, LOCAL);
        assert_eq!(resolved.via, Via::Bearer);
        assert_eq!(resolved.session, Some(id));
        let by_token = resolved.identity.unwrap();
        assert_eq!(by_token.provider, Provider::Jwt(OWN_ISSUER.into()));
        assert_eq!(by_token.session, Some(handle));
        assert!(format!("{by_token:?}").contains("session: Some(SessionRef(…))"));
    }

    /// Session expiry on a fake clock: used within the idle timeout the
    /// cookie holds; idle for the timeout it is anonymous. No sleeping.
    #[test]
    fn a_session_expires_on_the_clock_it_is_read_from() {
        use sigma_core::FakeClock;
        let store: Arc<dyn Store> = Arc::new(sigma_store::RedbStore::in_memory().unwrap());
        let config = AuthConfig {
            session_idle_timeout: std::time::Duration::from_secs(60),
            ..AuthConfig::default()
        };
        let clock = Arc::new(FakeClock::default());
        let auth = Auth::new(
            store,
            &config,
            Arc::new(sigma_core::RejectCounts::default()),
        )
        .unwrap()
        .with_clock(Arc::clone(&clock) as Arc<dyn Clock>);
        let id = auth
            .sessions
            .create(
                "alice",
                &Provider::Password,
                Vec::new(),
                auth.clock().unix_ms(),
            )
            .unwrap();
        let cookie = auth.sessions.set_cookie(&id);
        let pair = cookie.split(';').next().unwrap().to_owned();
        let head = RequestHead {
            method: sigma_http::Method::Get,
            target: bytes::Bytes::from_static(b"/"),
            version: sigma_http::Version::Http11,
            headers: vec![sigma_http::Header::new(&b"Cookie"[..], pair.into_bytes())],
            keep_alive: true,
            websocket: None,
        };
        let at = |auth: &Auth| auth.identify(&head, auth.clock().unix_ms(), LOCAL);
        clock.advance(std::time::Duration::from_secs(59));
        assert_eq!(at(&auth).via, Via::Cookie(id.clone()));
        // Used at 59 s: idle again from there.
        clock.advance(std::time::Duration::from_secs(59));
        assert_eq!(at(&auth).via, Via::Cookie(id.clone()));
        clock.advance(std::time::Duration::from_secs(60));
        assert_eq!(at(&auth).via, Via::Anonymous);
    }

    #[test]
    fn reply_rule() {
        let anon = Gate::new();
        assert!(anon.check_reply(&Tagged::new(None, ())).is_ok());
        let alice = Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }));
        assert_eq!(
            anon.check_reply(&Tagged::new(alice.clone(), ())),
            Err(IdentityMismatch)
        );
        let gate = Gate {
            identity: alice.clone(),
        };
        assert!(gate.check_reply(&Tagged::new(alice.clone(), ())).is_ok());
        assert_eq!(
            gate.check_reply(&Tagged::new(None, ())),
            Err(IdentityMismatch)
        );
        // A world's identity is not its user's, nor another world's.
        let in_world = |w: &str| {
            Some(Arc::new(Identity {
                world: Some(w.into()),
                ..(**alice.as_ref().unwrap()).clone()
            }))
        };
        let world_gate = Gate::with_identity(in_world("W1"));
        assert!(world_gate
            .check_reply(&Tagged::new(in_world("W1"), ()))
            .is_ok());
        assert_eq!(
            world_gate.check_reply(&Tagged::new(in_world("W2"), ())),
            Err(IdentityMismatch)
        );
        assert_eq!(
            world_gate.check_reply(&Tagged::new(alice.clone(), ())),
            Err(IdentityMismatch)
        );
        assert_eq!(
            gate.check_reply(&Tagged::new(in_world("W1"), ())),
            Err(IdentityMismatch)
        );
    }
}
