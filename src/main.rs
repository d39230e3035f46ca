//! The `mcpmux` command: run the gateway, or check a configuration file.

use std::io::Write;
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
    /// How log lines are written to standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The `--log-format` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    mcpmux::logging::init(match cli.log_format {
        LogFormat::Text => mcpmux::logging::LogFormat::Text,
        LogFormat::Json => mcpmux::logging::LogFormat::Json,
    });
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

/// Raises the open-file limit as far as allowed and logs how many clients it holds:
/// every client socket and upstream connection is a descriptor, and the usual soft
/// limit (1024) would cap the gateway far below `maxSessions`.
fn raise_open_file_limit(config: &Config) {
    use mcpmux::open_files::{client_capacity, raise_to_hard_limit};
    let limit = match raise_to_hard_limit() {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(%err, "cannot read or raise the open-file limit");
            return;
        }
    };
    let servers = config.servers.len();
    let stdio = config
        .servers
        .values()
        .filter(|s| matches!(s, mcpmux::config::ServerConfig::Stdio(_)))
        .count();
    let capacity = client_capacity(limit.soft, servers, stdio);
    let max_sessions = config.gateway.max_sessions;
    let (before, soft, hard) = (limit.before, limit.soft, limit.hard);
    if soft > before {
        tracing::info!(
            "open-file limit raised from {before} to {soft}: room for about {capacity} clients"
        );
    } else {
        tracing::info!("open-file limit {soft} (hard {hard}): room for about {capacity} clients");
    }
    if u64::try_from(max_sessions).is_ok_and(|max| capacity < max) {
        tracing::warn!(
            "the open-file limit holds fewer clients than maxSessions ({max_sessions}); raise \
             the hard limit (ulimit -Hn, or LimitNOFILE= for a systemd service) or lower \
             maxSessions"
        );
    }
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!("{}: ok", file.display());
    println!("listen: {}", config.gateway.listen);
    println!("instance: {}", config.gateway.instance);
    if let Some(redis) = &config.gateway.store.redis {
        // The password is never printed.
        println!("store: {}", mcpmux::redact::url(redis.expose()));
    }
    print_access(&config.gateway);
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
                // Credentials in the URL and header values are never printed.
                let headers: Vec<&str> = remote.headers.keys().map(String::as_str).collect();
                println!(
                    "server {name}: remote {} ({:?}){}",
                    mcpmux::redact::url(&remote.url),
                    remote.transport,
                    if headers.is_empty() {
                        String::new()
                    } else {
                        format!(", headers: {}", headers.join(", "))
                    }
                );
            }
        }
    }
    Ok(())
}

/// Who may connect, as `check-config` shows it: key names and limits, never a key.
fn print_access(gateway: &mcpmux::config::GatewayConfig) {
    use mcpmux::config::ServerGrant;
    let access = &gateway.access;
    if let Some(tls) = &gateway.tls {
        println!(
            "tls: cert {}, key {}",
            tls.cert.display(),
            tls.key.display()
        );
    }
    if access.api_keys.is_empty() {
        let anonymous = if access.allow_anonymous {
            " (allowAnonymous)"
        } else {
            ""
        };
        println!("api keys: none; anyone who reaches the address may connect{anonymous}");
    }
    for key in &access.api_keys {
        let servers = match &key.servers {
            ServerGrant::All => "*".to_owned(),
            ServerGrant::Only(names) => names.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        let mut limits = Vec::new();
        if let Some(rate) = key.rate_limit.as_ref().and_then(|r| r.overall) {
            limits.push(format!("{}/s burst {}", rate.per_second, rate.burst));
        }
        for (server, rate) in key.rate_limit.iter().flat_map(|r| &r.servers) {
            limits.push(format!(
                "{server} {}/s burst {}",
                rate.per_second, rate.burst
            ));
        }
        if let Some(max) = key.max_connections {
            limits.push(format!("maxConnections {max}"));
        }
        let limits = if limits.is_empty() {
            String::new()
        } else {
            format!("; {}", limits.join("; "))
        };
        println!(
            "api key {}: {:?}; servers {servers}{limits}",
            key.name, key.key
        );
    }
    if let Some(admin) = &gateway.admin {
        println!("admin API: {}, {:?}", admin.listen, admin.key);
    }
    if !gateway.watch_config {
        println!("watchConfig: false (reload with SIGHUP or POST /admin/reload)");
    }
    for origin in &access.allowed_origins {
        println!("allowed origin: {origin}");
    }
    for host in &access.allowed_hosts {
        println!("allowed host: {host}");
    }
}

/// The configuration, and the file it came from (none for the demo).
fn load(config: Option<PathBuf>) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let default = Path::new("mcpmux.json");
    match config {
        Some(path) => Ok((Config::load(&path)?, Some(path))),
        None if default.exists() => Ok((Config::load(default)?, Some(default.to_path_buf()))),
        None => {
            eprintln!(
                "mcpmux: no --config and no ./mcpmux.json: running the built-in demo (server-everything)"
            );
            Ok((Config::demo(Path::new("node_modules")), None))
        }
    }
}

fn run(config: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let (mut config, config_path) = load(config)?;
    if let Some(listen) = listen {
        config.gateway.listen = listen;
    }
    // Refused before anything listens, not after.
    mcpmux::auth::check_exposure(&config.gateway, config.gateway.listen)?;
    raise_open_file_limit(&config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr = config.gateway.listen;
        let scheme = if config.gateway.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        // Watched before anything is announced: a SIGHUP sent as soon as the first line
        // is out must reload, not end the process.
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        // Children run under this binary as their guard, so none can outlive it.
        let options = Options {
            guard: std::env::current_exe().ok(),
            config_path,
            listen_from_command_line: listen.is_some(),
            ..Options::default()
        };
        let gateway = Gateway::start_with(config, listener, options).await?;
        // Lines for people and for scripts that started us on port 0 (they parse the first).
        // One write, so that a reader that stops after the first line cannot make the
        // second fail; and a closed stdout is no reason to stop serving.
        let addr = gateway.local_addr();
        let mut started = format!(
            "mcpmux listening on {scheme}://{addr}/ws\nmcpmux console: {} (open it in a browser)\n",
            mcpmux::console::url(addr, scheme == "wss")
        );
        if let Some(admin) = gateway.admin_addr() {
            let scheme = if scheme == "wss" { "https" } else { "http" };
            started.push_str(&format!(
                "mcpmux admin API: {scheme}://{admin}/admin/servers\n"
            ));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(started.as_bytes())
            .and_then(|()| stdout.flush());
        drop(stdout);
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                // Re-read the configuration file.
                _ = hangup.recv() => gateway.reload().await,
            }
        }
        tracing::info!("shutting down");
        gateway.shutdown().await;
        anyhow::Ok(())
    })
}
