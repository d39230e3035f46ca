//! Every configured server at run time, as the supervisors and endpoints that serve
//! them: started with the gateway, then added, replaced, restarted and removed one by
//! one while it runs (by a configuration reload or the admin API), and stopped on
//! shutdown.
//!
//! Each operation returns at once with what to wait for (the outcome of a start
//! attempt, a child's stop), so that callers wait without holding the lock that puts
//! changes in order. A stdio server that is replaced starts its new instance only once
//! the old one has stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{RemoteServer, RemoteTransport, ServerConfig};
use crate::protocol::ServerState;
use crate::registry::{Registry, Server, ServerStatus};
use crate::supervisor::{self, SupervisorConfig};
use crate::upstream::{Endpoint, Transport};

/// How long a removed server's metrics outlive it: past the drain its sessions give the
/// requests in flight on it.
const METRICS_LINGER: Duration = Duration::from_secs(5);

/// Why a server could not be added, changed or found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    /// A remote server's URL or headers are not usable.
    #[error("server {server:?}: {message}")]
    Endpoint {
        /// The server's name.
        server: String,
        /// What is wrong.
        message: String,
    },
    /// No server has this name.
    #[error("no server is named {0:?}")]
    Unknown(String),
    /// The gateway is stopping its servers.
    #[error("mcpmux is shutting down")]
    ShuttingDown,
}

/// A start attempt under way.
#[derive(Debug)]
pub struct Starting {
    server: Arc<Server>,
    /// Start attempts that had ended before this one.
    starts: u64,
}

impl Starting {
    /// The status once the attempt has ended: ready, or failed (`down`), or `removed`
    /// if it was removed meanwhile.
    pub async fn outcome(&self) -> ServerStatus {
        self.server.started_after(self.starts).await
    }
}

/// A server's child being stopped.
#[derive(Debug)]
pub struct Stopping(Option<JoinHandle<()>>);

impl Stopping {
    /// Resolves once the child (if the server had one) has stopped.
    pub async fn done(self) {
        if let Some(task) = self.0 {
            let _ = task.await;
        }
    }
}

/// The supervisor of a stdio server's current configuration.
#[derive(Debug)]
struct Supervisor {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// One configured server and what serves it.
#[derive(Debug)]
struct Running {
    server: Arc<Server>,
    config: ServerConfig,
    supervisor: Option<Supervisor>,
}

/// Every configured server and its supervisor.
#[derive(Debug)]
pub struct Fleet {
    registry: Arc<Registry>,
    supervision: SupervisorConfig,
    http: reqwest::Client,
    /// Parent of every supervisor's stop token: cancelled on shutdown.
    stop_all: CancellationToken,
    /// Every supervisor task, including those of replaced and removed servers that are
    /// still stopping their children.
    supervisors: TaskTracker,
    running: BTreeMap<String, Running>,
}

impl Fleet {
    /// No servers yet; they will be announced in `registry`.
    pub fn new(
        registry: Arc<Registry>,
        supervision: SupervisorConfig,
        http: reqwest::Client,
    ) -> Self {
        Self {
            registry,
            supervision,
            http,
            stop_all: CancellationToken::new(),
            supervisors: TaskTracker::new(),
            running: BTreeMap::new(),
        }
    }

    /// The entry `name` runs with.
    pub fn config(&self, name: &str) -> Option<&ServerConfig> {
        self.running.get(name).map(|r| &r.config)
    }

    /// Fails if `config` could not be served as `name` (a remote server's URL or
    /// headers that no request could carry) or the fleet is stopping; changes nothing.
    pub fn check(&self, name: &str, config: &ServerConfig) -> Result<(), FleetError> {
        // A change checked after shutdown began would be written but never applied.
        self.refuse_when_stopped()?;
        match config {
            ServerConfig::Stdio(_) => Ok(()),
            ServerConfig::Remote(remote) => remote_endpoint(name, remote, &self.http, 0).map(drop),
        }
    }

    /// Starts server `name` (replacing one of that name).
    pub fn add(&mut self, name: &str, config: ServerConfig) -> Result<Starting, FleetError> {
        if self.running.contains_key(name) {
            return self.replace(name, config);
        }
        self.check(name, &config)?;
        let server = self
            .registry
            .add(name, ServerStatus::new(ServerState::Starting));
        let (owner, status) = server.take_over(|_| {});
        self.start(name, server, (owner, status), config, None)
    }

    /// Restarts server `name` with `config`: its upstream sessions are lost, its clients
    /// see `restarting`, then `ready` (or `down`).
    pub fn replace(&mut self, name: &str, config: ServerConfig) -> Result<Starting, FleetError> {
        if !self.running.contains_key(name) {
            return self.add(name, config);
        }
        self.check(name, &config)?;
        let Some(running) = self.running.remove(name) else {
            return Err(FleetError::Unknown(name.to_owned()));
        };
        let server = running.server;
        let (owner, status) = server.take_over(|s| {
            s.state = ServerState::Restarting;
            s.endpoint = None;
            s.pid = None;
            s.restarts += 1;
        });
        server.forget_transport();
        let previous = running.supervisor.map(|old| {
            old.stop.cancel();
            old.task
        });
        self.start(name, server, (owner, status), config, previous)
    }

    /// Serves `server` with `config` under the ownership just taken of its status (after
    /// the supervisor task `previous` ended), and records it as running.
    fn start(
        &mut self,
        name: &str,
        server: Arc<Server>,
        (owner, status): (u64, ServerStatus),
        config: ServerConfig,
        previous: Option<JoinHandle<()>>,
    ) -> Result<Starting, FleetError> {
        let reachable = matches!(
            &config,
            ServerConfig::Remote(remote) if remote.transport == RemoteTransport::StreamableHttp
        );
        server.set_reachable_anywhere(reachable);
        let supervisor = self.serve(&server, owner, &config, previous)?;
        self.running.insert(
            name.to_owned(),
            Running {
                server: server.clone(),
                config,
                supervisor,
            },
        );
        Ok(Starting {
            server,
            starts: status.starts,
        })
    }

    /// Restarts server `name` with its current entry.
    pub fn restart(&mut self, name: &str) -> Result<Starting, FleetError> {
        let config = self
            .config(name)
            .cloned()
            .ok_or_else(|| FleetError::Unknown(name.to_owned()))?;
        self.replace(name, config)
    }

    /// Removes server `name`: its clients see `removed`, and its child is stopped.
    pub fn remove(&mut self, name: &str) -> Result<Stopping, FleetError> {
        let running = self
            .running
            .remove(name)
            .ok_or_else(|| FleetError::Unknown(name.to_owned()))?;
        self.registry.remove(name);
        self.forget_metrics_later(name);
        Ok(Stopping(running.supervisor.map(|supervisor| {
            supervisor.stop.cancel();
            supervisor.task
        })))
    }

    /// Drops the metric series of removed server `name` once its requests in flight
    /// have been answered (sessions give them [`METRICS_LINGER`] at most), unless a
    /// server of that name was added again meanwhile: label sets stay bounded by the
    /// servers configured now.
    fn forget_metrics_later(&self, name: &str) {
        let (metrics, registry) = (self.supervision.metrics.clone(), self.registry.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(METRICS_LINGER).await;
            if registry.get(&name).is_none() {
                metrics.forget_server(&name);
            }
        });
    }

    /// Stops every child (SIGTERM, SIGKILL after `stopGraceMs`), waiting up to `wait`,
    /// and marks the stdio servers `down`. No server starts after this.
    pub async fn shutdown(&mut self, wait: Duration) {
        self.stop_all.cancel();
        self.supervisors.close();
        if tokio::time::timeout(wait, self.supervisors.wait())
            .await
            .is_err()
        {
            tracing::warn!("some servers did not stop within the grace period");
        }
        for running in self.running.values() {
            if matches!(running.config, ServerConfig::Stdio(_)) {
                running.server.update(|s| {
                    s.state = ServerState::Down;
                    s.endpoint = None;
                    s.pid = None;
                });
            }
        }
    }

    fn refuse_when_stopped(&self) -> Result<(), FleetError> {
        if self.stop_all.is_cancelled() {
            return Err(FleetError::ShuttingDown);
        }
        Ok(())
    }

    /// Serves `server` with `config` as `owner`: a supervisor for a stdio server (which
    /// first waits for `previous` to stop), the endpoint for a remote one.
    fn serve(
        &self,
        server: &Arc<Server>,
        owner: u64,
        config: &ServerConfig,
        previous: Option<JoinHandle<()>>,
    ) -> Result<Option<Supervisor>, FleetError> {
        match config {
            ServerConfig::Remote(remote) => {
                let generation = server.next_generation();
                let endpoint = remote_endpoint(&server.name, remote, &self.http, generation)?;
                server.update_as(owner, |s| {
                    s.state = ServerState::Ready;
                    s.endpoint = Some(Arc::new(endpoint));
                    s.starts += 1;
                });
                Ok(None)
            }
            ServerConfig::Stdio(spec) => {
                let stop = self.stop_all.child_token();
                let run = supervisor::supervise(
                    server.clone(),
                    spec.clone(),
                    self.supervision.clone(),
                    self.http.clone(),
                    stop.clone(),
                    owner,
                );
                let task = self.supervisors.spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    run.await;
                });
                Ok(Some(Supervisor { stop, task }))
            }
        }
    }
}

/// A remote server's endpoint. Credentials in its URL (`user:pass@`) become a
/// `Basic` `Authorization` header here, as reqwest would make one for every request,
/// unless the entry sets that header itself: so the URL carries none, and the header is
/// marked sensitive and masked in error texts like every configured one.
fn remote_endpoint(
    name: &str,
    remote: &RemoteServer,
    http: &reqwest::Client,
    generation: u64,
) -> Result<Endpoint, FleetError> {
    let invalid = |message: String| FleetError::Endpoint {
        server: name.to_owned(),
        message,
    };
    let url = reqwest::Url::parse(&remote.url).map_err(|e| invalid(format!("bad url: {e}")))?;
    // reqwest moves userinfo into the header when a request is built.
    let probe = http
        .get(url)
        .build()
        .map_err(|e| invalid(format!("bad url: {}", e.without_url())))?;
    let url = probe.url().clone();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(basic) = probe.headers().get(reqwest::header::AUTHORIZATION) {
        let mut basic = basic.clone();
        basic.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, basic);
    }
    for (key, value) in &remote.headers {
        let key = HeaderName::from_bytes(key.as_bytes())
            .map_err(|e| invalid(format!("header {key:?}: {e}")))?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|e| invalid(format!("header {key}: {e}")))?;
        value.set_sensitive(true);
        headers.insert(key, value);
    }
    let transport = match remote.transport {
        RemoteTransport::StreamableHttp => Transport::Detect,
        RemoteTransport::Sse => Transport::LegacySse,
    };
    Ok(Endpoint {
        url,
        headers,
        generation,
        transport,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Secret;

    fn remote(url: &str, headers: &[(&str, &str)]) -> RemoteServer {
        RemoteServer {
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(*v)))
                .collect(),
            transport: RemoteTransport::StreamableHttp,
        }
    }

    #[test]
    fn url_credentials_become_a_sensitive_header() {
        let http = reqwest::Client::new();
        let server = remote("http://alice:pw%21@h:1/mcp?k=v", &[]);
        let endpoint = remote_endpoint("s", &server, &http, 1).unwrap();
        assert_eq!(endpoint.url.as_str(), "http://h:1/mcp?k=v");
        let basic = &endpoint.headers[reqwest::header::AUTHORIZATION];
        assert_eq!(basic, "Basic YWxpY2U6cHch"); // alice:pw!
        assert!(basic.is_sensitive());

        let server = remote("http://alice:pw@h/", &[("Authorization", "Bearer t0k")]);
        let endpoint = remote_endpoint("s", &server, &http, 1).unwrap();
        assert_eq!(endpoint.url.as_str(), "http://h/");
        assert_eq!(
            endpoint.headers[reqwest::header::AUTHORIZATION],
            "Bearer t0k"
        );
        assert!(endpoint.headers.values().all(HeaderValue::is_sensitive));
    }

    /// Supervision for unit tests: `true` stands in for mcp-proxy, short timeouts.
    pub(crate) fn supervision() -> SupervisorConfig {
        SupervisorConfig {
            mcp_proxy: vec!["true".into()],
            start_timeout: Duration::from_secs(1),
            stop_grace: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            guard: None,
            metrics: crate::metrics::Metrics::new(),
        }
    }

    fn fleet() -> (Arc<Registry>, Fleet) {
        let registry = Arc::new(Registry::new());
        let fleet = Fleet::new(registry.clone(), supervision(), reqwest::Client::new());
        (registry, fleet)
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_servers_metrics_go_once_its_requests_are_answered() {
        let (registry, mut fleet) = fleet();
        let metrics = fleet.supervision.metrics.clone();
        let watched = registry.clone();
        metrics.watch_servers(move || Some(watched.snapshot().values().cloned().collect()));
        let entry = ServerConfig::Remote(remote("http://127.0.0.1:9/mcp", &[]));
        fleet
            .add("gone", entry.clone())
            .expect("added")
            .outcome()
            .await;
        fleet.add("kept", entry).expect("added").outcome().await;
        metrics.http_route_request("gone", "ok");
        metrics.http_route_request("kept", "ok");
        assert!(metrics.render().contains(r#"server="gone""#));
        fleet.remove("gone").expect("removed").done().await;
        assert!(registry.get("gone").is_none());
        tokio::time::sleep(METRICS_LINGER + Duration::from_secs(1)).await;
        let text = metrics.render();
        assert!(!text.contains(r#"server="gone""#), "{text}");
        assert!(text.contains(r#"server="kept""#), "{text}");
    }

    #[tokio::test]
    async fn remote_servers_are_added_changed_and_removed() {
        let (registry, mut fleet) = fleet();
        let mut changes = registry.subscribe();
        let entry = ServerConfig::Remote(remote("http://127.0.0.1:9/mcp", &[]));
        let added = fleet.add("r", entry.clone()).expect("added");
        assert_eq!(added.outcome().await.state, ServerState::Ready);
        let first = registry.get("r").expect("r").status();
        let changed = ServerConfig::Remote(remote("http://127.0.0.1:10/mcp", &[]));
        let replaced = fleet.replace("r", changed).expect("replaced");
        let status = replaced.outcome().await;
        assert_eq!(status.state, ServerState::Ready);
        assert_eq!(status.restarts, 1);
        let generation = |s: &ServerStatus| s.endpoint.as_ref().map(|e| e.generation);
        assert!(generation(&status) > generation(&first));
        fleet.remove("r").expect("removed").done().await;
        assert!(registry.get("r").is_none());
        assert!(matches!(fleet.remove("r"), Err(FleetError::Unknown(_))));
        let mut states = Vec::new();
        while let Ok(crate::registry::Change::Status(change)) = changes.try_recv() {
            states.push(change.state);
        }
        use ServerState::*;
        assert_eq!(
            states,
            [Starting, Ready, Restarting, Ready, Removed],
            "the fixed sequences"
        );
    }

    #[tokio::test]
    async fn only_remote_streamable_http_entries_are_reachable_from_any_instance() {
        let (registry, mut fleet) = fleet();
        let stdio = ServerConfig::Stdio(crate::config::StdioServer {
            command: "server".into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
            cwd: None,
        });
        let starting = fleet.add("s", stdio).expect("added");
        // Known from the entry, before the child has started (it has no pid yet).
        let server = registry.get("s").expect("s");
        assert!(server.status().pid.is_none());
        assert!(!server.reachable_anywhere());
        starting.outcome().await;
        let streamable = ServerConfig::Remote(remote("http://127.0.0.1:9/mcp", &[]));
        fleet.add("r", streamable).expect("added").outcome().await;
        let server = registry.get("r").expect("r");
        assert!(server.reachable_anywhere());
        let mut sse = remote("http://127.0.0.1:9/sse", &[]);
        sse.transport = RemoteTransport::Sse;
        let replaced = fleet
            .replace("r", ServerConfig::Remote(sse))
            .expect("replaced");
        assert!(!server.reachable_anywhere());
        replaced.outcome().await;
        fleet.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_remote_entry_no_request_could_carry_is_refused_before_anything_changes() {
        let (registry, mut fleet) = fleet();
        let bad = ServerConfig::Remote(remote("http://h/", &[("X-Key", "line\nbreak")]));
        assert!(matches!(
            fleet.add("r", bad),
            Err(FleetError::Endpoint { .. })
        ));
        assert!(registry.get("r").is_none());
        fleet.shutdown(Duration::from_secs(1)).await;
        let entry = ServerConfig::Remote(remote("http://h/", &[]));
        assert!(matches!(
            fleet.add("r", entry),
            Err(FleetError::ShuttingDown)
        ));
    }
}
