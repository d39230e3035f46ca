//! The running gateway: shared state, HTTP routes, start-up and graceful shutdown.
//!
//! [`Gateway::start`] takes a bound listener (tests bind port 0), starts a supervisor
//! per stdio server and serves `GET /ws` (the `mcpmux.v1` WebSocket), `GET /healthz`
//! and `GET /status`. [`Gateway::shutdown`] stops accepting, closes every WebSocket
//! with 1001, ends upstream sessions, then stops every child.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, GatewayConfig, RemoteServer, RemoteTransport, ServerConfig};
use crate::connection;
use crate::outbox::ResumeBudget;
use crate::protocol::{self, ServerState};
use crate::registry::{STATUS_BROADCAST_CAPACITY, Server, ServerStatus, Servers, StatusChange};
use crate::resume::Sessions;
use crate::supervisor::{self, SupervisorConfig};
use crate::upstream::http::HttpClient;
use crate::upstream::{Endpoint, Transport, UpstreamError};

/// Errors of starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener could not be used.
    #[error("cannot serve on the listener: {0}")]
    Listener(#[from] std::io::Error),
    /// A remote server's URL or headers are not usable.
    #[error("server {server:?}: {message}")]
    Server {
        /// The server's name.
        server: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] UpstreamError),
}

/// State shared by every connection. Cheap to clone through its `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// Limits and timeouts.
    pub config: GatewayConfig,
    /// Every configured server.
    pub servers: Servers,
    /// Status changes of every server, for `status` frames.
    pub status_changes: broadcast::Sender<StatusChange>,
    /// The HTTP client for every upstream exchange.
    pub http: HttpClient,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// One task per WebSocket connection.
    pub connections: TaskTracker,
    /// Tasks that may outlive their connection (upstream DELETEs).
    pub background: TaskTracker,
    /// Every client session, attached or held for resume.
    pub sessions: Sessions,
    /// Bytes of frames kept for resume by all sessions (`resumeBudgetBytes`).
    pub resume_budget: Arc<ResumeBudget>,
}

/// How the gateway runs, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `mcpmux` binary, to start every child under its guard so that nothing
    /// outlives mcpmux (see [`crate::supervisor::guard`]). The binary sets it; an
    /// embedding program that is not `mcpmux` leaves it `None`.
    pub guard: Option<std::path::PathBuf>,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    supervisors: TaskTracker,
    /// Cancelled last in a shutdown, once client sessions have ended.
    stop_children: CancellationToken,
    server_task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts serving `config` on `listener`, and starts every stdio server.
    pub async fn start(config: Config, listener: TcpListener) -> Result<Self, GatewayError> {
        Self::start_with(config, listener, Options::default()).await
    }

    /// [`Gateway::start`] with [`Options`].
    pub async fn start_with(
        config: Config,
        listener: TcpListener,
        options: Options,
    ) -> Result<Self, GatewayError> {
        let local_addr = listener.local_addr()?;
        let gateway = config.gateway.clone();
        let (status_changes, _) = broadcast::channel(STATUS_BROADCAST_CAPACITY);
        let http = HttpClient::new(gateway.connect_timeout, gateway.max_upstream_message_bytes)?;
        let shutdown = CancellationToken::new();
        let supervisors = TaskTracker::new();
        let stop_children = CancellationToken::new();
        let supervisor_config = SupervisorConfig {
            mcp_proxy: crate::config::resolve_mcp_proxy(
                gateway.mcp_proxy.as_deref(),
                std::path::Path::new("node_modules"),
                std::env::var("PATH").ok().as_deref(),
            ),
            start_timeout: gateway.start_timeout,
            stop_grace: gateway.stop_grace,
            backoff_min: gateway.restart_backoff_min,
            backoff_max: gateway.restart_backoff_max,
            guard: options.guard,
        };
        let mut servers = Servers::new();
        for (name, server_config) in config.servers {
            let initial = match &server_config {
                ServerConfig::Stdio(_) => status(ServerState::Starting, None),
                ServerConfig::Remote(remote) => {
                    let endpoint = remote_endpoint(&name, remote)?;
                    status(ServerState::Ready, Some(Arc::new(endpoint)))
                }
            };
            let server = Arc::new(Server::new(&name, initial, status_changes.clone()));
            if let ServerConfig::Stdio(spec) = server_config {
                supervisors.spawn(supervisor::supervise(
                    server.clone(),
                    spec,
                    supervisor_config.clone(),
                    http.raw().clone(),
                    stop_children.clone(),
                ));
            }
            servers.insert(name, server);
        }
        supervisors.close();
        let resume_budget = ResumeBudget::new(gateway.resume_budget_bytes);
        let shared = Arc::new(Shared {
            config: gateway,
            servers,
            status_changes,
            http,
            shutdown: shutdown.clone(),
            connections: TaskTracker::new(),
            background: TaskTracker::new(),
            sessions: Sessions::default(),
            resume_budget,
        });
        let app = Router::new()
            .route("/ws", get(upgrade))
            .route("/healthz", get(|| async { "ok" }))
            .route("/status", get(status_page))
            .with_state(shared.clone());
        let stop_accepting = shutdown.clone();
        let server_task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
                .await;
            if let Err(err) = served {
                tracing::error!(%err, "HTTP server failed");
            }
        });
        tracing::info!(%local_addr, "mcpmux listening");
        Ok(Self {
            shared,
            local_addr,
            supervisors,
            stop_children,
            server_task,
        })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared state (servers and their status), for embedding and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops gracefully, in order: no new connections; 1001 to every client; in-flight
    /// requests given `shutdownGraceMs` to finish; upstream sessions ended (DELETE); then
    /// children stopped (SIGTERM, SIGKILL after `stopGraceMs`).
    pub async fn shutdown(self) {
        let config = &self.shared.config;
        self.shared.shutdown.cancel();
        self.shared.connections.close();
        let drain = config.shutdown_grace + Duration::from_secs(3);
        if tokio::time::timeout(drain, self.shared.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the grace period");
        }
        self.shared.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.background.wait()).await;
        self.stop_children.cancel();
        let stop = config.stop_grace + Duration::from_secs(2);
        if tokio::time::timeout(stop, self.supervisors.wait())
            .await
            .is_err()
        {
            tracing::warn!("some servers did not stop within the grace period");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server_task).await;
    }
}

fn status(state: ServerState, endpoint: Option<Arc<Endpoint>>) -> ServerStatus {
    ServerStatus {
        state,
        endpoint,
        pid: None,
        restarts: 0,
        last_error: None,
    }
}

fn remote_endpoint(name: &str, remote: &RemoteServer) -> Result<Endpoint, GatewayError> {
    let invalid = |message: String| GatewayError::Server {
        server: name.to_owned(),
        message,
    };
    let url = reqwest::Url::parse(&remote.url).map_err(|e| invalid(format!("bad url: {e}")))?;
    let mut headers = reqwest::header::HeaderMap::new();
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
        generation: 1,
        transport,
    })
}

/// `GET /ws`: the subprotocol check, then the WebSocket.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !offered.is_empty() && !offered.contains(&protocol::SUBPROTOCOL) {
        let message = format!(
            "this gateway speaks the WebSocket subprotocol {}; offer it, or offer none",
            protocol::SUBPROTOCOL
        );
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "mcpmux is shutting down").into_response();
    }
    if shared.sessions.len() >= shared.config.max_sessions {
        let message =
            "mcpmux holds as many client sessions as it may (maxSessions); try again later";
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    let config = &shared.config;
    let tracker = shared.connections.clone();
    ws.protocols([protocol::SUBPROTOCOL])
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .read_buffer_size(connection::READ_BUFFER_BYTES)
        .write_buffer_size(connection::WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| tracker.track_future(connection::serve(socket, shared)))
}

/// `GET /status`: every server's state, for operators and probes.
async fn status_page(State(shared): State<Arc<Shared>>) -> Response {
    let servers: Vec<_> = shared
        .servers
        .values()
        .map(|server| {
            let status = server.status();
            serde_json::json!({
                "name": &*server.name,
                "state": status.state,
                "pid": status.pid,
                "restarts": status.restarts,
                "lastError": status.last_error,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "servers": servers })).into_response()
}
