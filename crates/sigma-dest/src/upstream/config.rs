//! An upstream route's options (`[[route]]` keys `connect_timeout`,
//! `read_timeout`, `echo_identity`): the config of the upstream
//! destination, the last stage of T → H → A → router → destination. The
//! `sigma` shell reads them from the route table.

use std::time::Duration;

/// How an upstream route proxies (DESIGN §6; docs/proxy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Connecting to the upstream may take this long; breach: 502
    /// (`connect_timeout`, default 5 s).
    pub connect_timeout: Duration,
    /// The upstream's response head must arrive this long after the
    /// request was sent; breach: 504 (`read_timeout`, default 30 s).
    pub read_timeout: Duration,
    /// The upstream must return the `X-Sigma-Identity` it was sent, or the
    /// reply is not sent (502) (`echo_identity`, default false).
    pub echo_identity: bool,
    /// Each request carries `X-Sigma-Assertion`, an EdDSA JWT of the
    /// identity bound to this request's method and path
    /// (`assert_identity`, default false; docs/upstream-identity.md).
    pub assert_identity: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            echo_identity: false,
            assert_identity: false,
        }
    }
}
