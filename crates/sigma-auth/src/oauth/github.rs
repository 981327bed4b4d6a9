//! GitHub login (DESIGN §4, issue #7): OAuth2 with PKCE (the `oauth2`
//! crate), then the REST user API, since GitHub issues no ID token.
//!
//! ```text
//!  code ─POST token_url (Accept: application/json)─▶ {access_token}
//!  access_token ─GET api_url/user─▶ {login, id}
//!               ─GET api_url/user/emails─▶ [{email, verified, primary}]   (only when needed)
//! ```
//!
//! `auth_url`, `token_url` and `api_url` default to GitHub's and can point
//! at a stand-in (the tests do). GitHub answers a refused code with HTTP
//! 200 and `{"error": …}`: that parses as no token and is reported as a
//! refused code.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    PkceCodeVerifier, RedirectUrl, TokenResponse as _, TokenUrl,
};
use serde::Deserialize;

use super::config::{GITHUB_API_URL, GITHUB_AUTH_URL, GITHUB_TOKEN_URL};
use super::mapping::ProviderUser;
use super::state::LoginState;
use super::{exchange_failure, read_limited, unavailable, Failure, OAuth, ProviderRt};

/// The GitHub client: authorization and token endpoints set.
pub(super) type GithubClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The OAuth2 client for provider `p`.
pub(super) fn client(
    p: &ProviderRt,
    redirect: RedirectUrl,
) -> Result<GithubClient, oauth2::url::ParseError> {
    let mut c = BasicClient::new(ClientId::new(p.cfg.client_id.clone()))
        .set_auth_uri(AuthUrl::new(
            p.cfg
                .auth_url
                .clone()
                .unwrap_or_else(|| GITHUB_AUTH_URL.into()),
        )?)
        .set_token_uri(TokenUrl::new(
            p.cfg
                .token_url
                .clone()
                .unwrap_or_else(|| GITHUB_TOKEN_URL.into()),
        )?)
        .set_redirect_uri(redirect)
        // GitHub documents the secret as a form parameter.
        .set_auth_type(AuthType::RequestBody);
    if let Some(s) = &p.secret {
        c = c.set_client_secret(ClientSecret::new(s.expose().to_owned()));
    }
    Ok(c)
}

#[derive(Deserialize)]
struct GithubUser {
    login: String,
    id: u64,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    #[serde(default)]
    verified: bool,
    #[serde(default)]
    primary: bool,
}

/// Code → access token → the user and (when the rules need them) the
/// verified e-mail addresses.
pub(super) async fn user(
    oauth: &OAuth,
    p: &ProviderRt,
    redirect: RedirectUrl,
    code: String,
    login: &LoginState,
) -> Result<ProviderUser, Failure> {
    let client = client(p, redirect).map_err(|e| unavailable(&e.to_string()))?;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
        .request_async(&oauth.http)
        .await
        .map_err(|e| exchange_failure(p, &e))?;
    let token = tokens.access_token().secret();
    let api = p
        .cfg
        .api_url
        .as_deref()
        .unwrap_or(GITHUB_API_URL)
        .trim_end_matches('/');
    let get = |path: &str| {
        oauth
            .http
            .client()
            .get(format!("{api}{path}"))
            .bearer_auth(token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
    };
    let resp = get("/user")
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(&format!(
            "GitHub /user: HTTP {}",
            resp.status()
        )));
    }
    let body = read_limited(resp).await.map_err(|e| unavailable(&e))?;
    let gh: GithubUser =
        serde_json::from_slice(&body).map_err(|_| unavailable("GitHub /user: unexpected shape"))?;
    let claim = p.cfg.user_claim();
    let mut verified = Vec::new();
    let mut primary = None;
    if claim == "email" || !p.cfg.allowed_domains.is_empty() {
        let resp = get("/user/emails")
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(&format!(
                "GitHub /user/emails: HTTP {}",
                resp.status()
            )));
        }
        let body = read_limited(resp).await.map_err(|e| unavailable(&e))?;
        let emails: Vec<GithubEmail> = serde_json::from_slice(&body)
            .map_err(|_| unavailable("GitHub /user/emails: unexpected shape"))?;
        for e in emails.into_iter().filter(|e| e.verified) {
            if e.primary {
                primary = Some(e.email.clone());
            }
            verified.push(e.email);
        }
    }
    let value = match claim {
        "email" => primary,
        "id" => Some(gh.id.to_string()),
        _ => Some(gh.login),
    };
    Ok(ProviderUser {
        claim: value,
        verified_emails: verified,
        groups: Vec::new(),
    })
}
