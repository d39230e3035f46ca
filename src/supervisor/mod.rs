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
//! start again. Stopping the supervisor (shutdown, or its server removed or replaced)
//! stops the group: SIGTERM, then SIGKILL after the grace period.

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
    Stopped,
    Failed {
        reason: String,
        /// The instance had become ready before it failed.
        was_ready: bool,
    },
}

/// Runs one stdio server, as `owner` of its status ([`Server::take_over`]), until `stop`
/// is cancelled. Whoever stops it decides the state that follows: `down` on shutdown,
/// `removed`, or a new owner's `restarting`.
pub async fn supervise(
    server: Arc<Server>,
    spec: StdioServer,
    config: SupervisorConfig,
    http: reqwest::Client,
    stop: CancellationToken,
    owner: u64,
) {
    let mut consecutive_failures = 0u32;
    let instance = Instance {
        server: &server,
        owner,
        spec: &spec,
        config: &config,
        http: &http,
        stop: &stop,
    };
    loop {
        let started = Instant::now();
        let (reason, was_ready) = match instance.run().await {
            InstanceEnd::Stopped => break,
            InstanceEnd::Failed { reason, was_ready } => (reason, was_ready),
        };
        tracing::warn!(server = %server.name, %reason, "server stopped; restarting");
        if started.elapsed() >= STABLE_RUN {
            consecutive_failures = 0;
        }
        consecutive_failures += 1;
        // The first failure after a good run restarts at once (state `restarting`); a
        // start that fails, and repeated failures, wait out a growing backoff in state
        // `down`.
        let state = if was_ready && consecutive_failures <= 1 {
            ServerState::Restarting
        } else {
            ServerState::Down
        };
        let owned = server.update_as(owner, |s| {
            s.state = state;
            s.endpoint = None;
            s.pid = None;
            s.restarts += 1;
            s.last_error = Some(reason);
            if !was_ready {
                s.starts += 1;
            }
        });
        if !owned {
            break;
        }
        let delay = backoff(&config, consecutive_failures);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        server.update_as(owner, |s| s.state = ServerState::Restarting);
    }
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

/// One supervisor's view of its server, for running instances of it.
struct Instance<'a> {
    server: &'a Arc<Server>,
    owner: u64,
    spec: &'a StdioServer,
    config: &'a SupervisorConfig,
    http: &'a reqwest::Client,
    stop: &'a CancellationToken,
}

impl Instance<'_> {
    /// Starts one instance and runs it until it fails or is stopped.
    async fn run(&self) -> InstanceEnd {
        let failed = |reason: String| InstanceEnd::Failed {
            reason,
            was_ready: false,
        };
        let (server, config) = (self.server, self.config);
        let port = match free_port() {
            Ok(port) => port,
            Err(err) => return failed(format!("no free port: {err}")),
        };
        let api_key = random_key();
        let Some(child_spec) = child_spec(self.spec, config, port, &api_key) else {
            return failed("the mcp-proxy command is empty".into());
        };
        let mut child = match GroupChild::spawn(child_spec).await {
            Ok(child) => child,
            Err(err) => return failed(err.to_string()),
        };
        let pid = child.pid();
        server.update_as(self.owner, |s| s.pid = Some(pid));
        output::capture(&server.name, "stdout", child.take_stdout(), &config.metrics);
        output::capture(&server.name, "stderr", child.take_stderr(), &config.metrics);

        let base = format!("http://127.0.0.1:{port}");
        let ready = tokio::select! {
            _ = self.stop.cancelled() => Err(None),
            ready = wait_ready(self.http, &base, config.start_timeout) => ready.map_err(Some),
            status = child.wait() => Err(Some(format!("mcp-proxy exited during start-up ({})", describe_exit(status)))),
        };
        if let Err(reason) = ready {
            child.stop(config.stop_grace).await;
            return reason.map_or(InstanceEnd::Stopped, failed);
        }
        let endpoint = match endpoint(&base, &api_key, server.next_generation()) {
            Ok(endpoint) => endpoint,
            Err(reason) => {
                child.stop(config.stop_grace).await;
                return failed(reason);
            }
        };
        server.update_as(self.owner, |s| {
            s.state = ServerState::Ready;
            s.endpoint = Some(Arc::new(endpoint));
            s.pid = Some(pid);
            s.starts += 1;
        });

        let ended = watch_instance(server, &mut child, self.stop).await;
        // Clients must stop using this instance before it is stopped.
        if let InstanceEnd::Failed { .. } = ended {
            server.update_as(self.owner, |s| {
                s.state = ServerState::Restarting;
                s.endpoint = None;
            });
        }
        child.stop(config.stop_grace).await;
        ended
    }
}

/// The command line and environment of one instance: mcp-proxy (under the guard, when
/// there is one) on `port`, in front of the server. `None` for an empty mcp-proxy command.
fn child_spec(
    spec: &StdioServer,
    config: &SupervisorConfig,
    port: u16,
    api_key: &str,
) -> Option<ChildSpec> {
    let (proxy, leading) = config.mcp_proxy.split_first()?;
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
    Some(ChildSpec {
        program,
        args,
        env: environment::for_server(spec, api_key, |name| std::env::var_os(name)),
        cwd: spec.cwd.clone(),
    })
}

/// Watches a ready instance until it ends. Every process of its group at the time it
/// became ready (the stdio server, and any wrapper such as npx around it or around
/// mcp-proxy) must stay alive: mcp-proxy itself does not exit when its server dies.
async fn watch_instance(
    server: &Server,
    child: &mut GroupChild,
    stop: &CancellationToken,
) -> InstanceEnd {
    let leader = child.pid();
    let watched: Vec<u32> = process::group_members(leader)
        .into_iter()
        .filter(|pid| *pid != leader)
        .collect();
    let failed = |reason: String| InstanceEnd::Failed {
        reason,
        was_ready: true,
    };
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return InstanceEnd::Stopped,
            status = child.wait() => {
                return failed(format!("mcp-proxy exited ({})", describe_exit(status)));
            }
            _ = tick.tick() => {}
            _ = server.suspected() => {}
        }
        let alive = process::group_members(leader);
        if alive.len() <= 1 || watched.iter().any(|pid| !alive.contains(pid)) {
            return failed("the stdio server under mcp-proxy exited".into());
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
