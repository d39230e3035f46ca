//! The running gateway: start-up, HTTP routes and graceful shutdown.
//!
//! [`Gateway::start`] takes a bound listener (tests bind port 0), starts a supervisor
//! per stdio server and serves `GET /ws` (the `mcpmux.v1` WebSocket), `GET /healthz`,
//! `GET /status`, the MCP routes over HTTP (`crate::routes`) and the web console at
//! `GET /` ([`crate::console`]), over TLS when
//! configured, behind [`auth::gate`]. [`Gateway::shutdown`] stops accepting, closes every
//! WebSocket with 1001, ends upstream sessions, then stops every child.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use reqwest::header::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Access, Caller};
use crate::config::{Config, RemoteServer, RemoteTransport, ServerConfig};
use crate::connection;
use crate::context::{Place, SessionContext};
use crate::metrics::{self, Metrics};
use crate::outbox::ResumeBudget;
use crate::protocol::{self, ServerState};
use crate::registry::{STATUS_BROADCAST_CAPACITY, Server, ServerStatus, Servers};
use crate::resume::Sessions;
use crate::state::GatewayState;
use crate::supervisor::{self, SupervisorConfig};
use crate::tls::{self, PeerAddr, TlsError, TlsListener};
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
    /// No API keys on an address other than loopback, without `allowAnonymous`.
    #[error(transparent)]
    Exposed(#[from] auth::Exposed),
    /// The TLS certificate or key is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How the gateway runs, beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `mcpmux` binary, to start every child under its guard so that nothing
    /// outlives mcpmux (see [`crate::supervisor::guard`]). The binary sets it; an
    /// embedding program that is not `mcpmux` leaves it `None`.
    pub guard: Option<std::path::PathBuf>,
    /// Where the gateway records its metrics; `None`: the process-wide registry that
    /// [`crate::metrics::render`] shows.
    pub metrics: Option<Metrics>,
}

/// A running gateway.
pub struct Gateway {
    state: Arc<GatewayState>,
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
        auth::check_exposure(&gateway, local_addr)?;
        if gateway.access.allow_anonymous && gateway.access.api_keys.is_empty() {
            tracing::warn!(%local_addr, "allowAnonymous: anyone who reaches this address may use every server without a key");
        }
        let tls_acceptor = gateway.tls.as_ref().map(tls::acceptor).transpose()?;
        let metrics = options.metrics.unwrap_or_else(|| metrics::global().clone());
        let access = Access::new(&gateway);
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
            metrics: metrics.clone(),
        };
        let mut servers = Servers::new();
        for (name, server_config) in config.servers {
            let initial = match &server_config {
                ServerConfig::Stdio(_) => status(ServerState::Starting, None),
                ServerConfig::Remote(remote) => {
                    let endpoint = remote_endpoint(&name, remote, http.raw())?;
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
        let places = Arc::new(Semaphore::new(
            gateway.max_sessions.min(Semaphore::MAX_PERMITS),
        ));
        let connections = TaskTracker::new();
        let resume_budget = ResumeBudget::new(gateway.resume_budget_bytes);
        let state = Arc::new(GatewayState {
            context: Arc::new(SessionContext {
                config: gateway,
                servers,
                status_changes,
                http,
                shutdown: shutdown.clone(),
                background: TaskTracker::new(),
                resume_budget,
                metrics: metrics.clone(),
            }),
            sessions: Arc::new(Sessions::new(connections.clone())),
            connections,
            access,
            places,
        });
        let servers_of = Arc::downgrade(&state.context);
        metrics.watch_servers(move || {
            let context = servers_of.upgrade()?;
            Some(context.servers.values().cloned().collect())
        });
        let app = Router::new()
            .route("/ws", get(upgrade))
            .route("/healthz", get(|| async { "ok" }))
            .route("/status", get(status_page))
            .merge(crate::routes::router(state.clone()))
            .merge(crate::console::routes())
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(
                state.access.clone(),
                auth::gate,
            ))
            .with_state(state.clone())
            .into_make_service_with_connect_info::<PeerAddr>();
        let stop_accepting = shutdown.clone();
        let stopped = async move { stop_accepting.cancelled().await };
        let server_task = match tls_acceptor {
            None => tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
                if let Err(err) = served {
                    tracing::error!(%err, "HTTP server failed");
                }
            }),
            Some(acceptor) => {
                let listener = TlsListener::new(listener, acceptor)?;
                tokio::spawn(async move {
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                    if let Err(err) = served {
                        tracing::error!(%err, "HTTPS server failed");
                    }
                })
            }
        };
        tracing::info!(%local_addr, "mcpmux listening");
        Ok(Self {
            state,
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

    /// Bytes of frames kept for resume by all sessions now (`resumeBudgetBytes` bounds
    /// it), for embedding and tests.
    pub fn resume_bytes_kept(&self) -> usize {
        self.state.context.resume_budget.used()
    }

    /// Every configured server, with its status, for embedding and tests.
    pub fn servers(&self) -> &Servers {
        &self.state.context.servers
    }

    /// The registry the gateway records its metrics into.
    pub fn metrics(&self) -> &Metrics {
        &self.state.context.metrics
    }

    /// Stops gracefully, in order: no new connections; 1001 to every client; in-flight
    /// requests given `shutdownGraceMs` to finish; upstream sessions ended (DELETE); then
    /// children stopped (SIGTERM, SIGKILL after `stopGraceMs`).
    pub async fn shutdown(self) {
        let context = &self.state.context;
        let config = &context.config;
        context.shutdown.cancel();
        self.state.connections.close();
        let drain = config.shutdown_grace + Duration::from_secs(3);
        if tokio::time::timeout(drain, self.state.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the grace period");
        }
        context.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), context.background.wait()).await;
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

/// A remote server's endpoint. Credentials in its URL (`user:pass@`) become a
/// `Basic` `Authorization` header here, as reqwest would make one for every request,
/// unless the entry sets that header itself: so the URL carries none, and the header is
/// marked sensitive and masked in error texts like every configured one.
fn remote_endpoint(
    name: &str,
    remote: &RemoteServer,
    http: &reqwest::Client,
) -> Result<Endpoint, GatewayError> {
    let invalid = |message: String| GatewayError::Server {
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
        generation: 1,
        transport,
    })
}

/// `GET /ws`: the subprotocol check, the socket limits, then the WebSocket.
async fn upgrade(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(caller): Extension<Caller>,
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
    if state.context.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "mcpmux is shutting down").into_response();
    }
    // Taken before the upgrade, atomically: concurrent upgrades cannot overshoot.
    let Ok(permit) = state.places.clone().try_acquire_owned() else {
        let message =
            "mcpmux holds as many client sessions as it may (maxSessions); try again later";
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    };
    let place = Place::new(permit);
    let admission = match state.access.admit_upgrade(caller, peer.ip()) {
        Ok(admission) => admission,
        Err(refusal) => return auth::refuse(&refusal, None),
    };
    let config = &state.context.config;
    let tracker = state.connections.clone();
    // Every line about this socket names it; `session` and `key` are known after hello.
    let span = tracing::info_span!("connection", %peer, session = tracing::field::Empty, key = tracing::field::Empty);
    ws.protocols([protocol::SUBPROTOCOL])
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .read_buffer_size(connection::READ_BUFFER_BYTES)
        .write_buffer_size(connection::WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let serve = connection::serve(socket, state, place, admission);
            tracker.track_future(tracing::Instrument::instrument(serve, span))
        })
}

/// `GET /status`: the state of every server the caller may use, for operators and probes.
async fn status_page(
    State(state): State<Arc<GatewayState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let servers: Vec<_> = state
        .context
        .servers
        .values()
        .filter(|server| caller.may_use(&server.name))
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

#[cfg(test)]
mod tests {
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
        let endpoint = remote_endpoint("s", &server, &http).unwrap();
        assert_eq!(endpoint.url.as_str(), "http://h:1/mcp?k=v");
        let basic = &endpoint.headers[reqwest::header::AUTHORIZATION];
        assert_eq!(basic, "Basic YWxpY2U6cHch"); // alice:pw!
        assert!(basic.is_sensitive());

        let server = remote("http://alice:pw@h/", &[("Authorization", "Bearer t0k")]);
        let endpoint = remote_endpoint("s", &server, &http).unwrap();
        assert_eq!(endpoint.url.as_str(), "http://h/");
        assert_eq!(
            endpoint.headers[reqwest::header::AUTHORIZATION],
            "Bearer t0k"
        );
        assert!(endpoint.headers.values().all(HeaderValue::is_sensitive));
    }
}
