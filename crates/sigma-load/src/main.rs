//! `sigma-load`: the command line of the WebSocket load generator (see the
//! library's documentation for the scenarios). Prints a human-readable
//! report, or one JSON line with `--json`; exits 1 when no connection could
//! be opened or the run failed.

#![forbid(unsafe_code)]
// Like the libraries: nothing derived from input may panic here.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use sigma_load::echo::Echo;
use sigma_load::idle::Idle;
use sigma_load::pubsub::PubSub;
use sigma_load::stats::Report;
use sigma_load::world::World;
use sigma_load::{fleet, ws::Target};

#[derive(Parser)]
#[command(
    name = "sigma-load",
    version,
    about = "WebSocket load generator: echo, idle and publish/subscribe scenarios"
)]
struct Cli {
    /// Load threads, each with its own single-threaded runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Print the report as one JSON line.
    #[arg(long, global = true)]
    json: bool,
    /// Connections opened at once during the connect phase.
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
    /// Extra handshake header, `Name: value` (repeatable), e.g.
    /// `Cookie: sigma_session=...` or `Authorization: Bearer ...`.
    #[arg(short = 'H', long = "header", global = true)]
    headers: Vec<String>,
    /// Offer permessage-deflate (RFC 7692, no context takeover either way),
    /// fail any connection whose server does not accept it, and compress
    /// every message sent (inflating the compressed ones received).
    #[arg(long, global = true)]
    deflate: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Timing {
    /// Measured time (after the warm-up), e.g. `10s`.
    #[arg(short, long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Warm-up before measuring, e.g. `2s`.
    #[arg(short, long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop echo: each connection keeps `--in-flight` messages out.
    Echo {
        /// The echo endpoint, e.g. `ws://127.0.0.1:3000/echo`.
        #[arg(long)]
        url: String,
        /// Connections.
        #[arg(short, long, default_value_t = 100)]
        connections: usize,
        /// Message size in bytes (at least 8, 20 with `--text`, 103 with
        /// `--json-payload`).
        #[arg(short, long, default_value_t = 64)]
        size: usize,
        /// Messages in flight per connection.
        #[arg(short, long, default_value_t = 1)]
        in_flight: usize,
        /// Send text messages (a decimal stamp) instead of binary.
        #[arg(long)]
        text: bool,
        /// Send text messages shaped like a chat message in JSON (a stamp
        /// field, then type, channel, from and English text), which
        /// compress like real traffic (for `--deflate`).
        #[arg(long)]
        json_payload: bool,
        #[command(flatten)]
        timing: Timing,
    },
    /// Open connections, print `open N failed M`, hold them idle.
    Idle {
        /// Any WebSocket endpoint, e.g. `ws://127.0.0.1:3000/echo`.
        #[arg(long)]
        url: String,
        /// Connections.
        #[arg(short, long, default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them once all are open.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        hold: Duration,
    },
    /// Publish/subscribe fan-out (the `&broadcast` protocol).
    Pubsub {
        /// The `&broadcast` endpoint, e.g. `ws://127.0.0.1:3000/broadcast`.
        #[arg(long)]
        url: String,
        /// Another node's `&broadcast` endpoint: half the subscribers (odd
        /// ids) connect there, the publishers stay on `--url` (a cluster's
        /// cross-node fan-out).
        #[arg(long)]
        split_url: Option<String>,
        /// Subscriber connections.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publisher connections.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Channels (subscribers and publishers are spread round-robin).
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Publishes per second, all publishers together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Length of each publish's `data` string (at least 20).
        #[arg(short, long, default_value_t = 64)]
        size: usize,
        /// Channel name prefix; channels are PREFIX0, PREFIX1, ...
        #[arg(long, default_value = "public:bench-")]
        channel_prefix: String,
        /// How long a subscriber waits for `subscribed`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        subscribe_timeout: Duration,
        /// How long subscribers read on after the window for the deliveries
        /// of its last publishes (deliveries count by when their publish
        /// was sent).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        grace: Duration,
        #[command(flatten)]
        timing: Timing,
    },
    /// Signed world messages through sigma's session socket (`/ws`, DESIGN
    /// §5): one world per connection, `--in-flight` messages outstanding.
    /// Authenticate with `-H 'Cookie: sigma_session=…' -H 'Origin: http://HOST'`.
    World {
        /// The session socket, e.g. `ws://127.0.0.1:3000/ws`.
        #[arg(long)]
        url: String,
        /// Connections (one world each).
        #[arg(short, long, default_value_t = 100)]
        connections: usize,
        /// Messages in flight per connection.
        #[arg(short, long, default_value_t = 1)]
        in_flight: usize,
        /// The world command to fork (its destination echoes, e.g. `echo`).
        #[arg(long, default_value = "echo")]
        command: String,
        #[command(flatten)]
        timing: Timing,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sigma-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (threads, cc) = (cli.threads.max(1), cli.connect_concurrency.max(1));
    let (headers, deflate) = (cli.headers, cli.deflate);
    let target = |url: &str| -> anyhow::Result<Target> {
        let mut t = headers
            .iter()
            .try_fold(Target::parse(url)?, |t, h| t.with_header(h))?;
        t.deflate = deflate;
        Ok(t)
    };
    let report = match cli.command {
        Command::Echo {
            url,
            connections,
            size,
            in_flight,
            text,
            json_payload: json,
            timing,
        } => {
            let min = Echo::min_size(text, json);
            if size < min {
                bail!("--size must be at least {min}");
            }
            let mut params = vec![
                ("url", url.clone()),
                ("connections", connections.to_string()),
                ("size", size.to_string()),
                ("in_flight", in_flight.to_string()),
                ("text", (text || json).to_string()),
                ("json_payload", json.to_string()),
                ("threads", threads.to_string()),
                ("deflate", deflate.to_string()),
            ];
            let echo = Echo {
                target: target(&url)?,
                connections,
                size,
                in_flight: in_flight.max(1),
                text: text || json,
                json,
                connect_concurrency: cc,
            };
            if deflate {
                // What one message (stamp zero) becomes on the wire.
                let body = sigma_load::deflate::compress(&echo.payload())?;
                params.push(("deflated_size", body.len().to_string()));
            }
            let stats = fleet::run(Arc::new(echo), threads, timing.warmup, timing.duration)?;
            Report {
                mode: "echo",
                params,
                duration: timing.duration,
                stats,
            }
        }
        Command::Idle {
            url,
            connections,
            hold,
        } => {
            let params = vec![
                ("url", url.clone()),
                ("connections", connections.to_string()),
                ("hold", humantime::format_duration(hold).to_string()),
                ("deflate", deflate.to_string()),
            ];
            let idle = Idle::new(target(&url)?, connections, cc);
            let stats = fleet::run(Arc::new(idle), threads, Duration::ZERO, hold)?;
            Report {
                mode: "idle",
                params,
                duration: hold,
                stats,
            }
        }
        Command::Pubsub {
            url,
            split_url,
            subscribers,
            publishers,
            channels,
            rate,
            size,
            channel_prefix,
            subscribe_timeout,
            grace,
            timing,
        } => {
            if size < sigma_load::stats::TEXT_STAMP_LEN {
                bail!(
                    "--size must be at least {}",
                    sigma_load::stats::TEXT_STAMP_LEN
                );
            }
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number");
            }
            if channel_prefix.contains(['"', '\\']) || channel_prefix.chars().any(char::is_control)
            {
                bail!("--channel-prefix must not need JSON escaping");
            }
            let params = vec![
                ("url", url.clone()),
                ("split_url", split_url.clone().unwrap_or_default()),
                ("subscribers", subscribers.to_string()),
                ("publishers", publishers.to_string()),
                ("channels", channels.to_string()),
                ("rate", rate.to_string()),
                ("size", size.to_string()),
                ("threads", threads.to_string()),
                ("deflate", deflate.to_string()),
                ("grace", humantime::format_duration(grace).to_string()),
            ];
            let split = split_url.as_deref().map(target).transpose()?;
            let ps = PubSub {
                target: target(&url)?,
                split,
                subscribers,
                publishers: publishers.max(1),
                channels: channels.max(1),
                rate,
                size,
                channel_prefix,
                connect_concurrency: cc,
                subscribe_timeout,
                grace,
            };
            let stats = fleet::run(Arc::new(ps), threads, timing.warmup, timing.duration)?;
            Report {
                mode: "pubsub",
                params,
                duration: timing.duration,
                stats,
            }
        }
        Command::World {
            url,
            connections,
            in_flight,
            command,
            timing,
        } => {
            let params = vec![
                ("url", url.clone()),
                ("connections", connections.to_string()),
                ("in_flight", in_flight.to_string()),
                ("command", command.clone()),
                ("threads", threads.to_string()),
            ];
            let world = World {
                target: target(&url)?,
                connections,
                in_flight: in_flight.max(1),
                command,
                connect_concurrency: cc,
            };
            let stats = fleet::run(Arc::new(world), threads, timing.warmup, timing.duration)?;
            Report {
                mode: "world",
                params,
                duration: timing.duration,
                stats,
            }
        }
    };
    if cli.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    Ok(if report.stats.connected == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
