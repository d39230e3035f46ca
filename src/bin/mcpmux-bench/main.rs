//! `mcpmux-bench`: measures what going through mcpmux costs, from outside, on loopback.
//!
//! It runs a release mcpmux (the binary next to it, or `--mcpmux`) as a child process,
//! puts the load of each scenario on it and on the same upstream directly, alternating
//! the two sides round by round in one run, and reports medians of the rounds with their
//! ranges, plus the gateway's CPU time per call from `/proc/PID/stat`. Scenarios
//! (BENCHMARKS.md says more):
//! - a: echo calls on server-everything behind mcp-proxy, through mcpmux versus direct;
//! - b: gateway capacity against a fast Streamable HTTP upstream (the `upstream`
//!   subcommand of this binary);
//! - c: fan-out of upstream notifications to many clients;
//! - d: idle connections: memory per socket and connections accepted per second;
//! - e: supergateway's WebSocket mode beside mcpmux on the same stdio server;
//! - f: memory kept for resume by clients that never ack (`resumeBudgetBytes`).
//!
//! `--smoke` runs every scenario tiny and fast (the test suite does, without looking at
//! the numbers). Every loop is bounded in time and count and stops by itself.

mod load;
mod procs;
mod report;
mod scenarios;
mod upstream;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Benchmarks mcpmux against direct upstream access and a peer gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run every scenario tiny and fast (a check that the tool works; numbers mean nothing).
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, e.g. `a,c` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// The mcpmux binary (default: the one next to this binary).
    #[arg(long)]
    mcpmux: Option<PathBuf>,
    /// The repository root, where `node_modules` is (default: the working directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Rounds per comparison (default 5; 1 with --smoke).
    #[arg(long)]
    rounds: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the fast Streamable HTTP echo upstream on 127.0.0.1:0 (prints its address).
    Upstream,
}

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rounds per comparison.
    pub rounds: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// The measured window of a closed-loop round.
    pub window: Duration,
    /// Clients of the fan-out scenario.
    pub fanout_clients: usize,
    /// Notifications per client per fan-out round.
    pub fanout_per_client: u64,
    /// The fixed offered rate of the fan-out scenario, notifications/s in all.
    pub fanout_rate: f64,
    /// Sockets of the idle scenario.
    pub idle_sockets: usize,
    /// Sockets of scenario b's many-sockets case.
    pub many_sockets: usize,
    /// Clients of scenario f (memory kept for resume).
    pub kept_clients: usize,
    /// Bytes of frames each client of scenario f receives.
    pub kept_bytes_per_client: usize,
    /// Notifications per second in all in scenario f.
    pub kept_rate: f64,
    /// True for `--smoke`.
    pub smoke: bool,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 5,
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(2),
            fanout_clients: 1000,
            fanout_per_client: 100,
            fanout_rate: 50_000.0,
            idle_sockets: 10_000,
            many_sockets: 100,
            kept_clients: 2000,
            kept_bytes_per_client: 1 << 20,
            kept_rate: 20_000.0,
            smoke: false,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            warmup: Duration::from_millis(50),
            window: Duration::from_millis(200),
            fanout_clients: 10,
            fanout_per_client: 5,
            fanout_rate: 1000.0,
            idle_sockets: 50,
            many_sockets: 4,
            kept_clients: 10,
            kept_bytes_per_client: 64 << 10,
            kept_rate: 1000.0,
            smoke: true,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Upstream) = cli.command {
        return upstream::run();
    }
    let mut plan = if cli.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if let Some(rounds) = cli.rounds {
        plan.rounds = rounds.max(1);
    }
    let root = match cli.root {
        Some(root) => root,
        None => std::env::current_dir()?,
    };
    anyhow::ensure!(
        root.join("node_modules/mcp-proxy").exists(),
        "{} has no node_modules/mcp-proxy: run scripts/setup there, or pass --root",
        root.display()
    );
    let mcpmux = cli.mcpmux.unwrap_or_else(procs::default_mcpmux);
    anyhow::ensure!(mcpmux.exists(), "no mcpmux binary at {}", mcpmux.display());
    let open_files = procs::raise_open_files();
    let wanted = |s: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == s);
    let context = scenarios::Context { root, mcpmux, plan };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut report = report::Report::default();
    let load_before = load_average();
    runtime.block_on(async {
        type Scenario = for<'a> fn(
            &'a scenarios::Context,
            &'a mut report::Report,
        ) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
        let all: [(&str, Scenario); 7] = [
            ("a", |c, r| {
                Box::pin(scenarios::a_through_versus_direct(c, r))
            }),
            ("b", |c, r| Box::pin(scenarios::b_capacity(c, r))),
            ("c", |c, r| Box::pin(scenarios::c_fanout(c, r))),
            ("d", |c, r| Box::pin(scenarios::d_idle(c, r))),
            ("e", |c, r| Box::pin(scenarios::e_peer(c, r))),
            ("f", |c, r| Box::pin(scenarios::f_kept_for_resume(c, r))),
            ("g", |c, r| Box::pin(scenarios::g_session_store(c, r))),
        ];
        for (name, run) in all {
            if wanted(name) {
                eprintln!("mcpmux-bench: scenario {name}");
                run(&context, &mut report)
                    .await
                    .with_context(|| format!("scenario {name}"))?;
            }
        }
        anyhow::Ok(())
    })?;
    report.note(
        "all",
        format!(
            "load average (1 min) {} before the run, {} after: other work on the machine skews wall-clock figures; CPU per call less",
            load_before,
            load_average()
        ),
    );
    print!("{}", report.table());
    let json = serde_json::json!({
        "machine": machine(open_files),
        "load_average": { "before": load_before, "after": load_average() },
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "smoke": context.plan.smoke,
        "rounds": context.plan.rounds,
        "scenarios": report.scenarios(),
        "rows": report.rows,
        "notes": report.notes,
    });
    std::fs::write(&cli.json, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", cli.json.display()))?;
    eprintln!("mcpmux-bench: results written to {}", cli.json.display());
    Ok(())
}

/// The 1-minute load average, as /proc/loadavg says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// What the figures were measured on.
fn machine(open_files: u64) -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": memory,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "open_files": open_files,
    })
}
