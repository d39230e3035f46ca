//! Supervision of stdio servers: one mcp-proxy child per server, bound to 127.0.0.1 on a
//! free port with its own random API key, in its own process group.
//!
//! The key reaches mcp-proxy through its environment (`MCP_PROXY_API_KEY`, which it reads
//! like every `MCP_PROXY_*` variable), never its arguments: a command line is readable by
//! every local user, an environment only by the same user. That environment is otherwise
//! minimal ([`environment`]).
//!
//! The loop: start, poll `/ping` until ready (never a fixed sleep), publish `ready` with a
//! new endpoint generation, then watch for the end: mcp-proxy exiting, or its stdio
//! server dying (mcp-proxy then stays up and answers every call with "Not connected", so
//! the process group is checked every [`HEALTH_INTERVAL`], and at once when a reply
//! says so). On any end: stop the group, back off (jittered, exponential, capped) and
//! start again. Shutdown stops the group: SIGTERM, then SIGKILL after the grace period.

pub mod environment;
pub mod guard;
pub mod output;
pub mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::config::StdioServer;
use crate::metrics::Metrics;
use crate::protocol::ServerState;
use crate::registry::Server;
use crate::upstream::{Endpoint, Transport};
use process::{ChildSpec, GroupChild};

/// How often the process group is checked for a dead stdio server.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How often `/ping` is polled while mcp-proxy starts.
const READY_POLL: Duration = Duration::from_millis(50);
/// A run shorter than this counts as a failed start for the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// Settings of one supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The command that launches mcp-proxy (program and leading arguments).
    pub mcp_proxy: Vec<String>,
    /// How long mcp-proxy may take to answer `/ping`.
    pub start_timeout: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// First restart delay.
    pub backoff_min: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// The `mcpmux` binary, to run each child under its guard ([`guard`]); `None` runs
    /// mcp-proxy directly (when mcpmux is embedded as a library).
    pub guard: Option<std::path::PathBuf>,
    /// Where the child's output lines dropped are counted.
    pub metrics: Metrics,
}

/// Why an instance ended.
#[derive(Debug)]
enum InstanceEnd {
    Shutdown,
    Failed(String),
}

/// Runs one stdio server until `shutdown` is cancelled.
pub async fn supervise(
    server: Arc<Server>,
    spec: StdioServer,
    config: SupervisorConfig,
    http: reqwest::Client,
    shutdown: CancellationToken,
) {
    let mut generation = 0u64;
    let mut consecutive_failures = 0u32;
    loop {
        generation += 1;
        let started = Instant::now();
        let ended = run_instance(&server, &spec, &config, &http, &shutdown, generation).await;
        let reason = match ended {
            InstanceEnd::Shutdown => break,
            InstanceEnd::Failed(reason) => reason,
        };
        tracing::warn!(server = %server.name, %reason, "server stopped; restarting");
        if started.elapsed() >= STABLE_RUN {
            consecutive_failures = 0;
        }
        consecutive_failures += 1;
        // The first failure after a good run restarts at once (state `restarting`);
        // repeated failures wait out a growing backoff in state `down`.
        let state = if consecutive_failures <= 1 {
            ServerState::Restarting
        } else {
            ServerState::Down
        };
        server.update(|s| {
            s.state = state;
            s.endpoint = None;
            s.pid = None;
            s.restarts += 1;
            s.last_error = Some(reason);
        });
        let delay = backoff(&config, consecutive_failures);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        server.update(|s| s.state = ServerState::Restarting);
    }
    server.update(|s| {
        s.state = ServerState::Down;
        s.endpoint = None;
        s.pid = None;
    });
}

/// The delay before restart number `failures` (1-based): min·2^(n-1), capped, with
/// ±25% jitter so that servers that died together do not restart in lockstep.
fn backoff(config: &SupervisorConfig, failures: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(config.backoff_max);
    let jitter = rand::rng().random_range(0.75..1.25);
    exp.mul_f64(jitter).min(config.backoff_max)
}

async fn run_instance(
    server: &Arc<Server>,
    spec: &StdioServer,
    config: &SupervisorConfig,
    http: &reqwest::Client,
    shutdown: &CancellationToken,
    generation: u64,
) -> InstanceEnd {
    let port = match free_port() {
        Ok(port) => port,
        Err(err) => return InstanceEnd::Failed(format!("no free port: {err}")),
    };
    let api_key = random_key();
    let Some((proxy, leading)) = config.mcp_proxy.split_first() else {
        return InstanceEnd::Failed("the mcp-proxy command is empty".into());
    };
    let (program, mut args) = match &config.guard {
        Some(binary) => {
            let grace = config.stop_grace.as_millis().to_string();
            let guard = [guard::SUBCOMMAND, "--grace-ms", &grace, "--", proxy];
            (
                binary.display().to_string(),
                guard.map(str::to_owned).to_vec(),
            )
        }
        None => (proxy.clone(), Vec::new()),
    };
    args.extend(leading.iter().cloned());
    args.extend([
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        // Both transports (mcp-proxy's default): Streamable HTTP on /mcp for the gateway
        // and its HTTP route, the legacy HTTP+SSE on /sse for `GET /servers/{name}/sse`.
        "--".into(),
        spec.command.clone(),
    ]);
    args.extend(spec.args.iter().cloned());
    let child_spec = ChildSpec {
        program,
        args,
        env: environment::for_server(spec, &api_key, |name| std::env::var_os(name)),
        cwd: spec.cwd.clone(),
    };
    let mut child = match GroupChild::spawn(child_spec).await {
        Ok(child) => child,
        Err(err) => return InstanceEnd::Failed(err.to_string()),
    };
    let pid = child.pid();
    server.update(|s| s.pid = Some(pid));
    output::capture(&server.name, "stdout", child.take_stdout(), &config.metrics);
    output::capture(&server.name, "stderr", child.take_stderr(), &config.metrics);

    let base = format!("http://127.0.0.1:{port}");
    let ready = tokio::select! {
        _ = shutdown.cancelled() => Err(None),
        ready = wait_ready(http, &base, config.start_timeout) => ready.map_err(Some),
        status = child.wait() => Err(Some(format!("mcp-proxy exited during start-up ({})", describe_exit(status)))),
    };
    if let Err(reason) = ready {
        child.stop(config.stop_grace).await;
        return reason.map_or(InstanceEnd::Shutdown, InstanceEnd::Failed);
    }
    let endpoint = match endpoint(&base, &api_key, generation) {
        Ok(endpoint) => endpoint,
        Err(reason) => {
            child.stop(config.stop_grace).await;
            return InstanceEnd::Failed(reason);
        }
    };
    server.update(|s| {
        s.state = ServerState::Ready;
        s.endpoint = Some(Arc::new(endpoint));
        s.pid = Some(pid);
    });

    let ended = watch_instance(server, &mut child, shutdown).await;
    // Clients must stop using this instance before it is stopped.
    if let InstanceEnd::Failed(_) = ended {
        server.update(|s| {
            s.state = ServerState::Restarting;
            s.endpoint = None;
        });
    }
    child.stop(config.stop_grace).await;
    ended
}

/// Watches a ready instance until it ends. Every process of its group at the time it
/// became ready (the stdio server, and any wrapper such as npx around it or around
/// mcp-proxy) must stay alive: mcp-proxy itself does not exit when its server dies.
async fn watch_instance(
    server: &Server,
    child: &mut GroupChild,
    shutdown: &CancellationToken,
) -> InstanceEnd {
    let leader = child.pid();
    let watched: Vec<u32> = process::group_members(leader)
        .into_iter()
        .filter(|pid| *pid != leader)
        .collect();
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return InstanceEnd::Shutdown,
            status = child.wait() => {
                return InstanceEnd::Failed(format!("mcp-proxy exited ({})", describe_exit(status)));
            }
            _ = tick.tick() => {}
            _ = server.suspected() => {}
        }
        let alive = process::group_members(leader);
        if alive.len() <= 1 || watched.iter().any(|pid| !alive.contains(pid)) {
            return InstanceEnd::Failed("the stdio server under mcp-proxy exited".into());
        }
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("{base}/ping");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let probe = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Err(format!(
        "mcp-proxy did not answer /ping within {} ms",
        timeout.as_millis()
    ))
}

fn endpoint(base: &str, api_key: &str, generation: u64) -> Result<Endpoint, String> {
    let url = reqwest::Url::parse(&format!("{base}/mcp")).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    let mut key = HeaderValue::from_str(api_key).map_err(|e| e.to_string())?;
    key.set_sensitive(true);
    headers.insert("x-api-key", key);
    Ok(Endpoint {
        url,
        headers,
        generation,
        transport: Transport::StreamableHttp,
    })
}

/// A port that was free a moment ago (mcp-proxy binds it itself; a lost race makes it
/// exit, which is one more restart).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn random_key() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = SupervisorConfig {
            mcp_proxy: vec![],
            start_timeout: Duration::from_secs(1),
            stop_grace: Duration::from_secs(1),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            guard: None,
            metrics: Metrics::new(),
        };
        let first = backoff(&config, 1);
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(625));
        let fourth = backoff(&config, 4);
        assert!(fourth >= Duration::from_millis(3000) && fourth <= Duration::from_millis(5000));
        assert!(backoff(&config, 40) <= Duration::from_secs(30));
    }
}
