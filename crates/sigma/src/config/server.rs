//! `[server]`: the limits of T, the first stage of T → H → A → router →
//! destination (DESIGN §2), and the CIDR lists it and A read.

use std::time::Duration;

use serde::Deserialize;

use super::de::{duration, positive};

/// Open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open connections from one client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// Listen backlog passed to `listen(2)`.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// Graceful shutdown deadline.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After our `SHUT_WR`, how long to wait for the peer's EOF.
pub const DEFAULT_LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// `[server]`: the limits of `T` (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Open connections, all clients together (> 0).
    #[serde(deserialize_with = "positive")]
    pub max_connections: usize,
    /// Open connections from one client IP (> 0).
    #[serde(deserialize_with = "positive")]
    pub max_connections_per_ip: usize,
    /// Listen backlog (> 0), ready for `socket2::Socket::listen` (a `c_int`).
    #[serde(deserialize_with = "positive")]
    pub backlog: i32,
    /// Graceful shutdown deadline.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// After our `SHUT_WR`, wait this long for the peer's EOF.
    #[serde(deserialize_with = "duration")]
    pub linger_timeout: Duration,
    /// Client networks allowed to read `GET /metrics` (default: loopback).
    #[serde(deserialize_with = "cidr_list")]
    pub metrics_allow: Vec<Cidr>,
    /// Bytes all connections' buffers may hold together (> 0): read
    /// buffers, WebSocket messages being assembled, outbound queues and
    /// buffered request bodies. The connection that would pass it is
    /// refused (503, close 1009 or 1008).
    #[serde(deserialize_with = "positive")]
    pub memory_budget: usize,
}

/// An IP network, `ADDR/PREFIX` (now in `sigma-core`, shared with A).
pub use sigma_core::net::Cidr;

/// The default `/metrics` allow-list: loopback only.
pub fn default_metrics_allow() -> Vec<Cidr> {
    vec![
        Cidr {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            backlog: DEFAULT_BACKLOG,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            linger_timeout: DEFAULT_LINGER_TIMEOUT,
            metrics_allow: default_metrics_allow(),
            memory_budget: sigma_http::budget::DEFAULT_MEMORY_BUDGET,
        }
    }
}

pub(super) use sigma_core::de::cidr_list;
