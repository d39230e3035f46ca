//! The `mcpmux` command: run the gateway, or check a configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mcpmux::{Config, Gateway, Options};
use tokio::signal::unix::{SignalKind, signal};

/// One WebSocket to every MCP server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (default: ./mcpmux.json if it exists, else a built-in demo).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen on this address instead of the configured one (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a configuration file and prints what it configures.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Runs a command as the guard of its process group (used by mcpmux itself).
    #[command(hide = true)]
    Guard {
        /// SIGTERM to SIGKILL, in milliseconds.
        #[arg(long)]
        grace_ms: u64,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Guard { grace_ms, command }) = &cli.command {
        let Some((program, args)) = command.split_first() else {
            return ExitCode::FAILURE;
        };
        let grace = std::time::Duration::from_millis(*grace_ms);
        let code = mcpmux::supervisor::guard::run(program, args, grace);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    init_logging();
    let result = match cli.command {
        Some(Command::Guard { .. }) => Ok(()),
        Some(Command::CheckConfig { file }) => check_config(&file),
        None => run(cli.config, cli.listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mcpmux: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MCPMUX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!("{}: ok", file.display());
    println!("listen: {}", config.gateway.listen);
    for (name, server) in &config.servers {
        match server {
            mcpmux::config::ServerConfig::Stdio(stdio) => {
                println!(
                    "server {name}: stdio `{} {}`",
                    stdio.command,
                    stdio.args.join(" ")
                );
            }
            mcpmux::config::ServerConfig::Remote(remote) => {
                println!(
                    "server {name}: remote {} ({:?})",
                    remote.url, remote.transport
                );
            }
        }
    }
    Ok(())
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Config> {
    let default = Path::new("mcpmux.json");
    match config {
        Some(path) => Ok(Config::load(&path)?),
        None if default.exists() => Ok(Config::load(default)?),
        None => {
            eprintln!(
                "mcpmux: no --config and no ./mcpmux.json: running the built-in demo (server-everything)"
            );
            Ok(Config::demo(Path::new("node_modules")))
        }
    }
}

fn run(config: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = load(config)?;
    if let Some(listen) = listen {
        config.gateway.listen = listen;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = config.gateway.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        // Children run under this binary as their guard, so none can outlive it.
        let options = Options {
            guard: std::env::current_exe().ok(),
        };
        let gateway = Gateway::start_with(config, listener, options).await?;
        // A line for people and for scripts that started us on port 0.
        println!("mcpmux listening on ws://{}/ws", gateway.local_addr());
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
        gateway.shutdown().await;
        anyhow::Ok(())
    })
}
