//! `[server]`: the limits of T, the first stage of T → H → A → router →
//! destination (DESIGN §2), and the CIDR lists it and A read.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
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

/// An IP network, `ADDR/PREFIX` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid network {s:?}: not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid network {s:?}: prefix must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses
    /// match IPv4 networks).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

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

pub(super) fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| Cidr::parse(s).map_err(de::Error::custom))
        .collect()
}
