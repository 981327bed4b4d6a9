//! The `sigma` binary: parses the command line, runs one mode, maps the
//! outcome to an exit status (DESIGN §8): 0 success, 2 usage or config
//! error, 1 runtime failure (the store locked or unreadable, an address in
//! use).

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
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
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
        /// Configuration file (TOML).
        #[arg(short, long)]
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
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Manage users: add, del, list, passwd.
    User {
        #[command(subcommand)]
        command: sigma::users::UserCommand,
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
    let store_runtime = |s: &StoreError| !matches!(s, StoreError::InvalidUserName);
    let runtime = e.chain().any(|cause| {
        cause.is::<sigma::server::ListenError>()
            || cause
                .downcast_ref::<StoreError>()
                .is_some_and(store_runtime)
            || cause
                .downcast_ref::<sigma::users::UserError>()
                .is_some_and(|u| match u {
                    sigma::users::UserError::Store(s) => store_runtime(s),
                    sigma::users::UserError::ReadPassword(_)
                    | sigma::users::UserError::Output(_) => true,
                    _ => false,
                })
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            let mut cfg = sigma::config::load(config.as_deref(), &env())?;
            if let Some(d) = data {
                cfg.data_dir = d;
            }
            if let Some(p) = pipeline {
                cfg.topology = sigma::pipeline::parse(&p)?;
            }
            // Before listening: a locked data directory is a clear exit 2,
            // and a store with no users gets `admin` (password shown once).
            let store = sigma::store::RedbStore::open(&cfg.data_dir)?;
            sigma::users::first_start(&store, &mut std::io::stdout().lock())?;
            let store: std::sync::Arc<dyn sigma::store::Store> = std::sync::Arc::new(store);
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = workers {
                rt.worker_threads(n.max(1));
            }
            let rt = rt.enable_all().build()?;
            let code = rt.block_on(sigma::server::run(cfg, store))?;
            // Don't wait for lingering connections after a forced exit.
            rt.shutdown_background();
            Ok(code)
        }
        Command::Check { config } => {
            let cfg = sigma::config::load(Some(&config), &env())?;
            // The same route resolution `serve` does, so `check` fails
            // exactly when `serve` would; over an in-memory store, since
            // the data directory may be locked by a running server.
            let store: std::sync::Arc<dyn sigma::store::Store> =
                std::sync::Arc::new(sigma::store::RedbStore::in_memory()?);
            let metrics = std::sync::Arc::new(sigma::metrics::Metrics::default());
            let audit: std::sync::Arc<dyn sigma_core::ReplyAudit> = metrics.clone();
            sigma::route::RouteTable::build(&cfg, &store, &audit)?;
            // `A` too: it reads `[[auth.jwt]] key_file` and the OAuth
            // `client_secret_file`s.
            sigma::auth::Auth::new(std::sync::Arc::clone(&store), &cfg.auth, metrics)?;
            println!("{}", cfg.describe());
            println!("ok");
            Ok(0)
        }
        Command::User { command } => {
            sigma::users::run(command, &env())?;
            Ok(0)
        }
        Command::Parse { chunk } => {
            sigma::parse::run(chunk)?;
            Ok(0)
        }
    }
}
