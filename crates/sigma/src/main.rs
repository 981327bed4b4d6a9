//! The `sigma` binary: parses the command line, runs one mode, maps the
//! outcome to an exit status (DESIGN §8): 0 success, 2 usage or config
//! error, 1 runtime failure (the store locked or unreadable, an address in
//! use).

// Like the libraries: nothing derived from input may panic here.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "sigma",
    version,
    about = "A hardened HTTP/1.1 + WebSocket front server"
)]
struct Cli {
    /// Log format (also `SIGMA_LOG_FORMAT`).
    #[arg(long, global = true, value_enum, env = "SIGMA_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (default topology T127.0.0.1:3000[HA]).
    Serve {
        /// Configuration file (TOML; also `SIGMA_CONFIG`).
        #[arg(short, long, env = "SIGMA_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (overrides `data_dir`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Topology, e.g. `T3000[HA]` (overrides `pipeline`).
        #[arg(long)]
        pipeline: Option<String>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration and print the resolved topology and routes.
    Check {
        /// Configuration file (TOML; also `SIGMA_CONFIG`). Without one,
        /// the defaults and the `SIGMA_*` variables are checked.
        #[arg(short, long, env = "SIGMA_CONFIG")]
        config: Option<PathBuf>,
        /// Explain how a request would be served: "METHOD /path" (exit 0
        /// allowed, 1 refused).
        #[arg(long, value_name = "REQUEST")]
        explain: Option<String>,
        /// With --explain: the user making it (default: anonymous).
        #[arg(long, requires = "explain")]
        user: Option<String>,
        /// With --explain: a group of the user (repeat for several).
        #[arg(long = "group", value_name = "GROUP", requires = "user")]
        groups: Vec<String>,
        /// With --explain: the user's provider (password, oauth:NAME,
        /// jwt:ISSUER).
        #[arg(long, requires = "user")]
        provider: Option<String>,
        /// With --explain: the client address (default 127.0.0.1).
        #[arg(long, requires = "explain", default_value = "127.0.0.1")]
        from: std::net::IpAddr,
    },
    /// Manage users: add, del, list, passwd, groups.
    User {
        #[command(subcommand)]
        command: sigma::users::UserCommand,
    },
    /// Manage API keys: add, list, del.
    Apikey {
        #[command(subcommand)]
        command: sigma::users::ApiKeyCommand,
    },
    /// Copy an embedded store (users, sessions, secrets, &db) into an
    /// empty PostgreSQL database.
    Migrate {
        /// The data directory of the embedded store.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL, `postgres://user@host:port/database`.
        #[arg(long)]
        to: String,
    },
    /// Read raw HTTP on stdin and print H's events as JSON lines.
    Parse {
        /// Feed the codec this many bytes at a time (default: all at once).
        #[arg(long)]
        chunk: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("sigma: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// 1 for a runtime failure, 2 for a usage or configuration error.
fn exit_status(e: &anyhow::Error) -> u8 {
    use sigma::store::StoreError;
    let runtime = e.chain().any(|cause| {
        cause.is::<sigma::server::ListenError>()
            || cause
                .downcast_ref::<StoreError>()
                .is_some_and(|s| !matches!(s, StoreError::InvalidUserName))
            || cause
                .downcast_ref::<sigma::users::UserError>()
                .is_some_and(sigma::users::UserError::is_runtime)
    });
    if runtime {
        1
    } else {
        2
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGMA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: files and journald get
    // plain text, and NO_COLOR is honoured.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn env() -> Vec<(String, String)> {
    sigma::config::process_env()
}

fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve {
            config,
            data,
            pipeline,
            workers,
        } => {
            // The same file, environment and flags again on SIGHUP.
            let source = move || -> anyhow::Result<sigma::config::Config> {
                let mut cfg = sigma::config::load(config.as_deref(), &env())?;
                if let Some(d) = &data {
                    cfg.data_dir.clone_from(d);
                }
                if let Some(p) = &pipeline {
                    cfg.topology = sigma::pipeline::parse(p)?;
                }
                Ok(cfg)
            };
            let cfg = source()?;
            // Before listening: a locked data directory is a clear exit 1.
            // `[store] url`: PostgreSQL (unreachable: exit 1, naming it).
            // `admin` is created once the listeners are bound (server::run).
            let store = sigma::storage::open(&cfg.store, &cfg.data_dir)?;
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = workers {
                rt.worker_threads(n.max(1));
            }
            let rt = rt.enable_all().build()?;
            let code = rt.block_on(sigma::server::run(cfg, store, Box::new(source)))?;
            // Don't wait for lingering connections after a forced exit.
            rt.shutdown_background();
            Ok(code)
        }
        Command::Check {
            config,
            explain,
            user,
            groups,
            provider,
            from,
        } => {
            let cfg = sigma::config::load(config.as_deref(), &env())?;
            if let Some(request) = explain {
                let asker = sigma::explain::Asker {
                    user,
                    groups,
                    provider,
                    from,
                };
                let e = sigma::explain::explain(&cfg, &request, &asker)?;
                for line in &e.lines {
                    println!("{line}");
                }
                return Ok(if e.allowed { 0 } else { 1 });
            }
            // The route resolution `serve` and a reload do, and `A`'s
            // setup (`[[auth.jwt]] key_file`, OAuth `client_secret_file`s).
            sigma::reload::check(&cfg)?;
            println!("{}", cfg.describe());
            println!("ok");
            Ok(0)
        }
        Command::User { command } => {
            sigma::users::run(command, &env())?;
            Ok(0)
        }
        Command::Apikey { command } => {
            sigma::users::run_apikey(command, &env(), &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Migrate { from, to } => {
            sigma::storage::migrate(&from, &to, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Parse { chunk } => {
            sigma::parse::run(chunk)?;
            Ok(0)
        }
    }
}
