//! sigma-load: the WebSocket load generator of sigma's benchmarks.
//!
//! It drives a WebSocket server with one of three scenarios and reports
//! messages per second and latency percentiles from an HDR histogram:
//!
//! - [`echo`]: N connections against an echo endpoint, each keeping a number
//!   of messages of a given size in flight (closed loop);
//! - [`idle`]: N connections that complete their handshake and then sit
//!   idle, for measuring a server's memory per connection;
//! - [`pubsub`]: subscribers and publishers on channels (the `&broadcast`
//!   protocol of DESIGN §9), for fan-out throughput and delivery latency;
//! - [`world`]: signed world messages through sigma's session socket
//!   (DESIGN §5), for the cost of per-message signature verification.
//!
//! ```text
//!  fleet (threads × current-thread runtimes) ──▶ scenario ──▶ ws (client codec)
//!                     └──── stats (window, stamps, HDR histogram) ◀──┘
//! ```
//!
//! Every message carries its send stamp, so latency is measured by whoever
//! receives it. The client codec ([`ws`]) is small and hand-written: masking,
//! framing and the opening handshake, and permessage-deflate without
//! context takeover ([`deflate`], `--deflate`). HTTP load is `wrk`'s job
//! (see `bench/`).

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod deflate;
pub mod echo;
pub mod fleet;
pub mod idle;
pub mod pubsub;
pub mod stats;
pub mod world;
pub mod ws;

#[cfg(test)]
mod testserver;
