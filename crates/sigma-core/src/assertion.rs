//! The seam of the signed identity for upstreams (DESIGN §4, route key
//! `assert_identity`): the upstream destination asks for an assertion of
//! a request's identity; `A` (which holds sigma's signing key) makes it.
//! The destinations never see the key.

use crate::Identity;

/// What a request to an upstream is, for its assertion: the upstream's
/// origin (`aud`), and the method and path with query (`htm`, `htu`) of
/// the request exactly as the upstream receives it.
#[derive(Debug, Clone, Copy)]
pub struct AssertedRequest<'a> {
    /// The upstream's origin, `http://host:port` as configured.
    pub audience: &'a str,
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path and query the upstream receives.
    pub target: &'a str,
}

/// Signs `X-Sigma-Assertion` values.
pub trait Asserter: Send + Sync {
    /// A compact JWS asserting `identity` for `req`, valid a short while
    /// from `now_unix`.
    fn assert(&self, identity: &Identity, req: AssertedRequest<'_>, now_unix: u64) -> String;
}
