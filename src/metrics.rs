//! The gateway's metrics, in the Prometheus text format (version 0.0.4).
//!
//! A [`Metrics`] is a registry of every series the gateway records, cheap to clone
//! (a handle). Each gateway records into one: its own when [`crate::Options::metrics`]
//! gives one, else the process-wide [`global`] one, which [`render`] shows. The README
//! lists every metric and its labels.
//!
//! Label values come only from bounded sets, so the number of series stays bounded
//! whatever clients send: the server label takes only configured server names (a
//! server that does not exist is never a label value), methods outside the MCP
//! specification's request methods count as `other`, outcomes and close reasons are
//! fixed lists, and keys are named by their configured `name`, never by the key. No
//! session id is ever a label.
//!
//! What is current rather than counted (each server's state and restarts) is read from
//! the servers when the metrics are rendered, so it cannot drift from what `/status`
//! says, and a server that no longer exists has no state series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{ErrorCode, ServerState};
use crate::registry::Server;

/// The `Content-Type` of what [`render`] and [`Metrics::render`] return.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request latency histogram's buckets: from a local
/// `ping` to the longest `requestTimeoutMs` default (300 s).
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Request methods of the MCP specification (2025-11-25, and the 2026-07-28 draft's
/// additions): the values the `method` label takes besides `other`.
pub const METHODS: [&str; 17] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
];

/// The `method` label of a request method: the method itself when the specification
/// defines it, else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

/// How a request ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with a result.
    Ok,
    /// The server answered with a JSON-RPC error.
    Error,
    /// The client cancelled it (`notifications/cancelled`) before an answer.
    Cancelled,
    /// The gateway answered it with this error code.
    Gateway(ErrorCode),
}

impl Outcome {
    /// The label value: `ok`, `error`, `cancelled`, or the gateway's error code.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
            Self::Gateway(code) => code.as_str(),
        }
    }

    /// Every outcome, for removing a server's series.
    fn all() -> impl Iterator<Item = Self> {
        [Self::Ok, Self::Error, Self::Cancelled]
            .into_iter()
            .chain(ErrorCode::ALL.into_iter().map(Self::Gateway))
    }
}

/// Which way a message went, as the `direction` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the server.
    ToServer,
    /// From the server to a client.
    ToClient,
    /// From the server, not passed on: a response that answers no request in flight
    /// (protocol.md section 7).
    Dropped,
}

impl Direction {
    /// Every direction, for removing a server's series.
    const ALL: [Self; 3] = [Self::ToServer, Self::ToClient, Self::Dropped];

    fn label(self) -> &'static str {
        match self {
            Self::ToServer => "to_server",
            Self::ToClient => "to_client",
            Self::Dropped => "dropped",
        }
    }
}

/// Why a client's WebSocket ended, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketClose {
    /// The client sent a close frame.
    Client,
    /// The connection dropped without a close frame (or a write to it failed).
    Dropped,
    /// Close 4000: a write missed `writeTimeoutMs`.
    SlowConsumer,
    /// Close 4001: no answer to pings for two heartbeat intervals.
    Heartbeat,
    /// Close 4002: another connection resumed the session.
    TakenOver,
    /// Close 1001: the gateway is shutting down.
    Shutdown,
    /// Close 4029: rate limited without pause for too long.
    RateLimited,
    /// A protocol violation (4500) or a frame over the limit (1009).
    Violation,
}

impl SocketClose {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Dropped => "dropped",
            Self::SlowConsumer => "slow_consumer",
            Self::Heartbeat => "heartbeat",
            Self::TakenOver => "taken_over",
            Self::Shutdown => "shutdown",
            Self::RateLimited => "rate_limited",
            Self::Violation => "violation",
        }
    }
}

/// The outcomes an HTTP-route request is counted under; any other value counts as
/// `other`.
pub const HTTP_OUTCOMES: [&str; 21] = [
    "ok",
    "error",
    "cancelled",
    "refused_by_server",
    "bad_frame",
    "unknown_type",
    "unknown_server",
    "batch",
    "server_unavailable",
    "upstream_error",
    "timeout",
    "session_lost",
    "session_closed",
    "too_many_requests",
    "too_many_sessions",
    "rate_limited",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: Arc<str>,
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    server: Arc<str>,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    server: Arc<str>,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    server: Arc<str>,
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// Empty for a request naming no configured server.
    server: Option<Arc<str>>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

/// The child output streams, as the `stream` label says them.
const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// A registry of every metric of a gateway. Clones share it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    upstream_sessions: Family<ServerLabels, Gauge>,
    messages: Family<DirectionLabels, Counter>,
    message_bytes: Family<DirectionLabels, Counter>,
    child_lines_dropped: Family<StreamLabels, Counter>,
    connections: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    resumes: Family<OutcomeLabels, Counter>,
    socket_closes: Family<ReasonLabels, Counter>,
    rate_limited: Family<KeyLabels, Counter>,
    store_up: Gauge,
    store_fallbacks: Family<PartLabels, Counter>,
    servers: Arc<ServerReadings>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// A registry of its own, with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "mcpmux_requests",
            "JSON-RPC requests from clients to each server, by method and outcome",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register_with_unit(
            "mcpmux_request_duration",
            "Time from a request's arrival to its answer, for requests carried to the server",
            Unit::Seconds,
            latency.clone(),
        );
        let upstream_sessions = Family::default();
        registry.register(
            "mcpmux_upstream_sessions",
            "Upstream MCP sessions open with each server",
            upstream_sessions.clone(),
        );
        let messages = Family::default();
        registry.register(
            "mcpmux_messages",
            "JSON-RPC messages carried (or dropped), by server and direction",
            messages.clone(),
        );
        let message_bytes = Family::default();
        registry.register_with_unit(
            "mcpmux_message",
            "Bytes of JSON-RPC messages carried, by server and direction",
            Unit::Bytes,
            message_bytes.clone(),
        );
        let child_lines_dropped = Family::default();
        registry.register(
            "mcpmux_child_log_lines_dropped",
            "Lines of a stdio server's output dropped because the log could not keep up",
            child_lines_dropped.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "mcpmux_websocket_connections",
            "Client WebSockets open",
            connections.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "mcpmux_http_requests",
            "Requests on the HTTP routes to servers, by server and outcome",
            http_requests.clone(),
        );
        let resumes = Family::default();
        registry.register(
            "mcpmux_resumes",
            "Resume requests in hello, by outcome (granted, refused)",
            resumes.clone(),
        );
        let socket_closes = Family::default();
        registry.register(
            "mcpmux_websocket_closes",
            "Client WebSockets ended, by reason",
            socket_closes.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "mcpmux_rate_limited",
            "rpc frames and HTTP-route messages refused for rate, by API key name",
            rate_limited.clone(),
        );
        let store_up = Gauge::default();
        store_up.set(1);
        registry.register(
            "mcpmux_store_up",
            "1 while the shared store answers (always, without one), 0 while it does not",
            store_up.clone(),
        );
        let store_fallbacks = Family::default();
        registry.register(
            "mcpmux_store_fallback",
            "Decisions made in this instance's memory because the shared store did not answer, \
             by part (rate, connections, sessions)",
            store_fallbacks.clone(),
        );
        let servers = Arc::new(ServerReadings::default());
        registry.register_collector(Box::new(servers.clone()));
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                upstream_sessions,
                messages,
                message_bytes,
                child_lines_dropped,
                connections,
                http_requests,
                resumes,
                socket_closes,
                rate_limited,
                store_up,
                store_fallbacks,
                servers,
            }),
        }
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and no metric's encoding returns an error.
        let _ = prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }

    /// Reads the state and restart count of the servers `servers` returns at every
    /// render, until it returns `None` (its gateway is gone). A server named by two
    /// sources (two gateways on one registry) is shown once.
    pub fn watch_servers(
        &self,
        servers: impl Fn() -> Option<Vec<Arc<Server>>> + Send + Sync + 'static,
    ) {
        self.inner.servers.lock().push(Box::new(servers));
    }

    /// Counts a request that ended with `outcome`; `latency`, when given, goes into the
    /// latency histogram. `server` must be a configured server.
    pub fn request(
        &self,
        server: &Arc<str>,
        method: &str,
        outcome: Outcome,
        latency: Option<Duration>,
    ) {
        let method = method_label(method);
        let labels = RequestLabels {
            server: server.clone(),
            method,
            outcome: outcome.label(),
        };
        self.inner.requests.get_or_create(&labels).inc();
        if let Some(latency) = latency {
            let labels = LatencyLabels {
                server: labels.server,
                method,
            };
            self.inner
                .latency
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
        }
    }

    /// Counts one message of `bytes` bytes carried between a client and `server`.
    pub fn message(&self, server: &Arc<str>, direction: Direction, bytes: usize) {
        let labels = DirectionLabels {
            server: server.clone(),
            direction: direction.label(),
        };
        self.inner.messages.get_or_create(&labels).inc();
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.inner
            .message_bytes
            .get_or_create(&labels)
            .inc_by(bytes);
    }

    /// Counts an upstream session with `server` as open until the guard is dropped.
    pub fn upstream_session_opened(&self, server: &Arc<str>) -> OpenGuard {
        let labels = ServerLabels {
            server: server.clone(),
        };
        OpenGuard::new(self.inner.upstream_sessions.get_or_create_owned(&labels))
    }

    /// Counts `lines` lines of `server`'s `stream` (`stdout` or `stderr`) dropped.
    pub fn child_lines_dropped(&self, server: &Arc<str>, stream: &'static str, lines: u64) {
        let stream = STREAMS
            .iter()
            .find(|s| **s == stream)
            .copied()
            .unwrap_or("stderr");
        let labels = StreamLabels {
            server: server.clone(),
            stream,
        };
        self.inner
            .child_lines_dropped
            .get_or_create(&labels)
            .inc_by(lines);
    }

    /// Counts a client WebSocket as open until the guard is dropped.
    pub fn connection_opened(&self) -> OpenGuard {
        OpenGuard::new(self.inner.connections.clone())
    }

    /// Counts a client WebSocket that ended for `reason`.
    pub fn socket_closed(&self, reason: SocketClose) {
        let labels = ReasonLabels {
            reason: reason.label(),
        };
        self.inner.socket_closes.get_or_create(&labels).inc();
    }

    /// Counts a resume request, granted or refused.
    pub fn resume(&self, granted: bool) {
        let outcome = if granted { "granted" } else { "refused" };
        self.inner
            .resumes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts an `rpc` frame refused for rate, by the name of the key it came with.
    pub fn rate_limited(&self, key: &Arc<str>) {
        let labels = KeyLabels { key: key.clone() };
        self.inner.rate_limited.get_or_create(&labels).inc();
    }

    /// Records whether the shared store answers (`mcpmux_store_up`).
    pub fn store_up(&self, up: bool) {
        self.inner.store_up.set(i64::from(up));
    }

    /// Counts a decision about `part` (`rate`, `connections`, `sessions`) made in this
    /// instance's memory because the shared store did not answer.
    pub fn store_fallback(&self, part: &'static str) {
        let labels = PartLabels { part };
        self.inner.store_fallbacks.get_or_create(&labels).inc();
    }

    /// Counts a request on an HTTP route. `server` counts only when it is a configured
    /// server (any other name counts as `server=""`); `outcome` is one of
    /// [`HTTP_OUTCOMES`], any other value counts as `other`.
    pub fn http_route_request(&self, server: &str, outcome: &str) {
        let server = self.inner.servers.configured(server);
        let outcome = HTTP_OUTCOMES
            .iter()
            .find(|known| **known == outcome)
            .copied()
            .unwrap_or("other");
        let labels = HttpLabels { server, outcome };
        self.inner.http_requests.get_or_create(&labels).inc();
    }

    /// Removes every series of `server` (a server removed from the configuration), so
    /// that removed servers do not accumulate.
    pub fn forget_server(&self, server: &str) {
        let server: Arc<str> = Arc::from(server);
        let inner = &self.inner;
        let methods = METHODS.iter().copied().chain(["other"]);
        for method in methods {
            for outcome in Outcome::all() {
                inner.requests.remove(&RequestLabels {
                    server: server.clone(),
                    method,
                    outcome: outcome.label(),
                });
            }
            inner.latency.remove(&LatencyLabels {
                server: server.clone(),
                method,
            });
        }
        for direction in Direction::ALL {
            let labels = DirectionLabels {
                server: server.clone(),
                direction: direction.label(),
            };
            inner.messages.remove(&labels);
            inner.message_bytes.remove(&labels);
        }
        for stream in STREAMS {
            inner.child_lines_dropped.remove(&StreamLabels {
                server: server.clone(),
                stream,
            });
        }
        for outcome in HTTP_OUTCOMES.iter().copied().chain(["other"]) {
            inner.http_requests.remove(&HttpLabels {
                server: Some(server.clone()),
                outcome,
            });
        }
        inner.upstream_sessions.remove(&ServerLabels { server });
    }
}

/// A gauge counted up while this guard lives.
#[derive(Debug)]
pub struct OpenGuard {
    gauge: Gauge,
}

impl OpenGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One request on its way: counted once, when it ends, with the time it took.
#[derive(Debug)]
pub struct RequestMeter {
    metrics: Metrics,
    server: Arc<str>,
    method: &'static str,
    started: Instant,
    done: AtomicBool,
}

impl RequestMeter {
    /// Starts measuring a request for `method` to `server` (a configured server).
    pub fn start(metrics: &Metrics, server: &Arc<str>, method: &str) -> Self {
        Self {
            metrics: metrics.clone(),
            server: server.clone(),
            method: method_label(method),
            started: Instant::now(),
            done: AtomicBool::new(false),
        }
    }

    /// Records the request's outcome and latency; only the first call counts.
    pub fn finish(&self, outcome: Outcome) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let latency = self.started.elapsed();
            let metrics = &self.metrics;
            metrics.request(&self.server, self.method, outcome, Some(latency));
        }
    }
}

/// Where the servers' current state is read from at each render.
type ServerSource = Box<dyn Fn() -> Option<Vec<Arc<Server>>> + Send + Sync>;

/// The sources of the servers' state and restarts: a collector read at each render.
#[derive(Default)]
struct ServerReadings {
    sources: Mutex<Vec<ServerSource>>,
}

impl std::fmt::Debug for ServerReadings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerReadings").finish_non_exhaustive()
    }
}

impl ServerReadings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServerSource>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every server of every live source, each name once; sources that are gone are
    /// dropped.
    fn current(&self) -> Vec<Arc<Server>> {
        let mut servers: Vec<Arc<Server>> = Vec::new();
        self.lock().retain(|source| match source() {
            Some(found) => {
                for server in found {
                    if !servers.iter().any(|s| s.name == server.name) {
                        servers.push(server);
                    }
                }
                true
            }
            None => false,
        });
        servers
    }

    /// `name` as a label value when a source has a server of that name.
    fn configured(&self, name: &str) -> Option<Arc<str>> {
        self.lock()
            .iter()
            .filter_map(|source| source())
            .flatten()
            .find(|server| &*server.name == name)
            .map(|server| server.name.clone())
    }
}

/// The states the `mcpmux_server_state` gauge shows for each server.
const STATES: [ServerState; 4] = [
    ServerState::Starting,
    ServerState::Ready,
    ServerState::Restarting,
    ServerState::Down,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    server: Arc<str>,
    state: &'static str,
}

impl Collector for ServerReadings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let servers = self.current();
        let states: Vec<(Arc<str>, ServerState, u64)> = servers
            .iter()
            .map(|s| {
                let status = s.status();
                (s.name.clone(), status.state, status.restarts)
            })
            .collect();
        let help = "1 for each server's current state, 0 for the others";
        let kind = ConstGauge::new(0i64).metric_type();
        let mut family = encoder.encode_descriptor("mcpmux_server_state", help, None, kind)?;
        for (server, current, _) in &states {
            for state in STATES {
                let labels = StateLabels {
                    server: server.clone(),
                    state: state_label(state),
                };
                let value = ConstGauge::new(i64::from(*current == state));
                value.encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "Restarts of each stdio server's mcp-proxy child";
        let kind = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor("mcpmux_server_restarts", help, None, kind)?;
        for (server, _, restarts) in &states {
            let labels = ServerLabels {
                server: server.clone(),
            };
            ConstCounter::new(*restarts).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn state_label(state: ServerState) -> &'static str {
    match state {
        ServerState::Starting => "starting",
        ServerState::Ready => "ready",
        ServerState::Restarting => "restarting",
        ServerState::Down => "down",
        ServerState::Removed => "removed",
    }
}

/// The process-wide registry: what gateways record into unless given their own.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// The process-wide registry ([`global`]) in the Prometheus text format
/// ([`CONTENT_TYPE`]): what `GET /metrics` answers.
pub fn render() -> String {
    global().render()
}

/// Counts a request on an HTTP route in the process-wide registry; see
/// [`Metrics::http_route_request`].
pub fn http_route_request(server: &str, outcome: &str) {
    global().http_route_request(server, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ServerStatus;

    /// The value of the sample `name{labels}` (labels in any order, all of them given).
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
                if metric != name {
                    return None;
                }
                let mut found: Vec<(&str, &str)> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect();
                let mut wanted = labels.to_vec();
                found.sort_unstable();
                wanted.sort_unstable();
                (found == wanted).then(|| value.parse().ok())?
            })
    }

    fn server(name: &str, state: ServerState, restarts: u64) -> Arc<Server> {
        let status = ServerStatus {
            restarts,
            ..ServerStatus::new(state)
        };
        let (changes, _) = tokio::sync::broadcast::channel(1);
        Arc::new(Server::new(name, status, changes))
    }

    #[test]
    fn methods_outside_the_specification_count_as_other() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(
            method_label("resources/templates/list"),
            "resources/templates/list"
        );
        assert_eq!(method_label("tools/call/evil"), "other");
        assert_eq!(method_label(""), "other");
        assert_eq!(method_label("x".repeat(10_000).as_str()), "other");
    }

    #[test]
    fn requests_are_counted_by_server_method_and_outcome_with_latency() {
        let metrics = Metrics::new();
        let name: Arc<str> = Arc::from("everything");
        metrics.request(
            &name,
            "tools/call",
            Outcome::Ok,
            Some(Duration::from_millis(30)),
        );
        metrics.request(
            &name,
            "tools/call",
            Outcome::Ok,
            Some(Duration::from_millis(3)),
        );
        metrics.request(
            &name,
            "my/own",
            Outcome::Error,
            Some(Duration::from_secs(2)),
        );
        let refused = Outcome::Gateway(ErrorCode::TooManyRequests);
        metrics.request(&name, "tools/call", refused, None);
        let text = metrics.render();
        let requests = |method, outcome| {
            let labels = [
                ("server", "everything"),
                ("method", method),
                ("outcome", outcome),
            ];
            sample(&text, "mcpmux_requests_total", &labels)
        };
        assert_eq!(requests("tools/call", "ok"), Some(2.0), "{text}");
        assert_eq!(requests("other", "error"), Some(1.0));
        assert_eq!(requests("tools/call", "too_many_requests"), Some(1.0));
        let call = [("server", "everything"), ("method", "tools/call")];
        let count = sample(&text, "mcpmux_request_duration_seconds_count", &call);
        assert_eq!(count, Some(2.0), "refusals have no latency");
        let sum = sample(&text, "mcpmux_request_duration_seconds_sum", &call).unwrap();
        assert!((sum - 0.033).abs() < 1e-9, "{sum}");
        let fast = [
            ("server", "everything"),
            ("method", "tools/call"),
            ("le", "0.005"),
        ];
        let fast = sample(&text, "mcpmux_request_duration_seconds_bucket", &fast);
        assert_eq!(fast, Some(1.0));
        assert!(text.contains("# TYPE mcpmux_requests_total counter"));
        assert!(text.contains("# TYPE mcpmux_request_duration_seconds histogram"));
    }

    #[test]
    fn a_meter_counts_its_request_once() {
        let metrics = Metrics::new();
        let name: Arc<str> = Arc::from("s");
        let meter = RequestMeter::start(&metrics, &name, "ping");
        meter.finish(Outcome::Ok);
        meter.finish(Outcome::Gateway(ErrorCode::Timeout));
        let text = metrics.render();
        let ok = [("server", "s"), ("method", "ping"), ("outcome", "ok")];
        assert_eq!(sample(&text, "mcpmux_requests_total", &ok), Some(1.0));
        let timeout = [("server", "s"), ("method", "ping"), ("outcome", "timeout")];
        assert_eq!(sample(&text, "mcpmux_requests_total", &timeout), None);
    }

    #[test]
    fn gauges_follow_their_guards() {
        let metrics = Metrics::new();
        let name: Arc<str> = Arc::from("s");
        let first = metrics.upstream_session_opened(&name);
        let second = metrics.upstream_session_opened(&name);
        let socket = metrics.connection_opened();
        let text = metrics.render();
        let labels = [("server", "s")];
        assert_eq!(
            sample(&text, "mcpmux_upstream_sessions", &labels),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "mcpmux_websocket_connections", &[]),
            Some(1.0)
        );
        drop((first, socket));
        let text = metrics.render();
        assert_eq!(
            sample(&text, "mcpmux_upstream_sessions", &labels),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "mcpmux_websocket_connections", &[]),
            Some(0.0)
        );
        drop(second);
    }

    #[test]
    fn messages_count_bytes_each_way() {
        let metrics = Metrics::new();
        let name: Arc<str> = Arc::from("s");
        metrics.message(&name, Direction::ToServer, 10);
        metrics.message(&name, Direction::ToServer, 5);
        metrics.message(&name, Direction::ToClient, 7);
        let text = metrics.render();
        let up = [("server", "s"), ("direction", "to_server")];
        let down = [("server", "s"), ("direction", "to_client")];
        assert_eq!(sample(&text, "mcpmux_messages_total", &up), Some(2.0));
        assert_eq!(sample(&text, "mcpmux_message_bytes_total", &up), Some(15.0));
        assert_eq!(sample(&text, "mcpmux_messages_total", &down), Some(1.0));
        assert_eq!(
            sample(&text, "mcpmux_message_bytes_total", &down),
            Some(7.0)
        );
    }

    #[test]
    fn server_state_and_restarts_are_read_at_render_until_the_source_is_gone() {
        let metrics = Metrics::new();
        let servers = Arc::new(vec![
            server("a", ServerState::Ready, 2),
            server("b", ServerState::Down, 0),
        ]);
        let weak = Arc::downgrade(&servers);
        metrics.watch_servers(move || weak.upgrade().map(|s| s.to_vec()));
        let text = metrics.render();
        let state = |server, state| {
            sample(
                &text,
                "mcpmux_server_state",
                &[("server", server), ("state", state)],
            )
        };
        assert_eq!(state("a", "ready"), Some(1.0), "{text}");
        assert_eq!(state("a", "down"), Some(0.0));
        assert_eq!(state("b", "down"), Some(1.0));
        assert_eq!(state("b", "starting"), Some(0.0));
        let restarts = sample(&text, "mcpmux_server_restarts_total", &[("server", "a")]);
        assert_eq!(restarts, Some(2.0));
        servers[0].update(|s| {
            s.state = ServerState::Restarting;
            s.restarts = 3;
        });
        let text = metrics.render();
        let state = [("server", "a"), ("state", "restarting")];
        assert_eq!(sample(&text, "mcpmux_server_state", &state), Some(1.0));
        let restarts = sample(&text, "mcpmux_server_restarts_total", &[("server", "a")]);
        assert_eq!(restarts, Some(3.0));
        drop(servers);
        let text = metrics.render();
        assert!(!text.contains("server=\"a\""), "{text}");
    }

    #[test]
    fn http_route_labels_stay_bounded() {
        let metrics = Metrics::new();
        let servers = Arc::new(vec![server("known", ServerState::Ready, 0)]);
        let weak = Arc::downgrade(&servers);
        metrics.watch_servers(move || weak.upgrade().map(|s| s.to_vec()));
        metrics.http_route_request("known", "ok");
        metrics.http_route_request("made-up-1", "unknown_server");
        metrics.http_route_request("made-up-2", "unknown_server");
        metrics.http_route_request("known", "a status nobody listed");
        let text = metrics.render();
        let count = |server, outcome| {
            sample(
                &text,
                "mcpmux_http_requests_total",
                &[("server", server), ("outcome", outcome)],
            )
        };
        assert_eq!(count("known", "ok"), Some(1.0), "{text}");
        assert_eq!(count("", "unknown_server"), Some(2.0));
        assert_eq!(count("known", "other"), Some(1.0));
        assert!(!text.contains("made-up"), "{text}");
    }

    #[test]
    fn forgetting_a_server_removes_its_series() {
        let metrics = Metrics::new();
        let gone: Arc<str> = Arc::from("gone");
        let kept: Arc<str> = Arc::from("kept");
        for name in [&gone, &kept] {
            metrics.request(
                name,
                "tools/list",
                Outcome::Ok,
                Some(Duration::from_millis(1)),
            );
            metrics.request(name, "bogus", Outcome::Cancelled, None);
            metrics.message(name, Direction::ToClient, 1);
            metrics.message(name, Direction::Dropped, 1);
            metrics.child_lines_dropped(name, "stderr", 3);
            drop(metrics.upstream_session_opened(name));
        }
        metrics.forget_server("gone");
        let text = metrics.render();
        assert!(!text.contains("\"gone\""), "{text}");
        assert!(text.contains("server=\"kept\""), "{text}");
    }

    #[test]
    fn gateway_counters_have_fixed_label_values() {
        let metrics = Metrics::new();
        metrics.resume(true);
        metrics.resume(false);
        metrics.resume(false);
        metrics.socket_closed(SocketClose::SlowConsumer);
        metrics.socket_closed(SocketClose::Heartbeat);
        metrics.rate_limited(&Arc::from("dashboard"));
        let text = metrics.render();
        let resumes = |outcome| sample(&text, "mcpmux_resumes_total", &[("outcome", outcome)]);
        assert_eq!(resumes("granted"), Some(1.0));
        assert_eq!(resumes("refused"), Some(2.0));
        let closes = |reason| {
            sample(
                &text,
                "mcpmux_websocket_closes_total",
                &[("reason", reason)],
            )
        };
        assert_eq!(closes("slow_consumer"), Some(1.0));
        assert_eq!(closes("heartbeat"), Some(1.0));
        let limited = sample(&text, "mcpmux_rate_limited_total", &[("key", "dashboard")]);
        assert_eq!(limited, Some(1.0));
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let metrics = Metrics::new();
        let name: Arc<str> = Arc::from("s");
        metrics.request(&name, "ping", Outcome::Ok, Some(Duration::from_millis(1)));
        metrics.message(&name, Direction::ToServer, 1);
        metrics.child_lines_dropped(&name, "stderr", 1);
        metrics.socket_closed(SocketClose::Client);
        metrics.resume(true);
        metrics.rate_limited(&name);
        metrics.http_route_request("s", "ok");
        metrics.store_fallback("rate");
        let _open = (
            metrics.upstream_session_opened(&name),
            metrics.connection_opened(),
        );
        let servers = Arc::new(vec![server("s", ServerState::Ready, 0)]);
        let weak = Arc::downgrade(&servers);
        metrics.watch_servers(move || weak.upgrade().map(|s| s.to_vec()));
        let readme = include_str!("../README.md");
        let text = metrics.render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(names.len(), 15, "{text}");
        for name in names {
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "README lacks {name}"
            );
        }
    }
}
