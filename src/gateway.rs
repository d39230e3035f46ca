//! The running gateway: start-up, HTTP routes, live configuration changes and graceful
//! shutdown.
//!
//! [`Gateway::start`] takes a bound listener (tests bind port 0), starts every server
//! ([`crate::fleet`]) and serves `GET /ws` (the `mcpmux.v1` WebSocket), the status routes
//! ([`crate::status`]), the MCP routes over HTTP (`crate::routes`) and the web console at
//! `GET /` ([`crate::console`]), over TLS when
//! configured, behind [`auth::gate`]; and, with `gateway.admin`, the admin API on its
//! own listener ([`crate::admin`]). The configuration file is watched and re-read on
//! [`Gateway::reload`] ([`crate::reload`]). [`Gateway::shutdown`] stops accepting, closes
//! every WebSocket with 1001, ends upstream sessions, then stops every child.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::auth::{self, Access, AdminKey, Caller};
use crate::config::Config;
use crate::connection;
use crate::context::{Place, SessionContext};
use crate::fleet::{Fleet, FleetError};
use crate::metrics::{self, Metrics};
use crate::outbox::ResumeBudget;
use crate::protocol;
use crate::registry::{Registry, Servers};
use crate::reload::{self, Reloader, Source};
use crate::resume::Sessions;
use crate::serve::{self, ConnectionsPerIp, PlainAccept};
use crate::state::GatewayState;
use crate::store::{Store, StoreError, sessions};
use crate::supervisor::SupervisorConfig;
use crate::tls::{self, PeerAddr, TlsError, TlsListener};
use crate::upstream::UpstreamError;
use crate::upstream::http::HttpClient;

/// Errors of starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener could not be used.
    #[error("cannot serve on the listener: {0}")]
    Listener(#[from] std::io::Error),
    /// A server could not be served (a remote server's URL or headers are not usable).
    #[error(transparent)]
    Server(#[from] FleetError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] UpstreamError),
    /// No API keys on an address other than loopback, without `allowAnonymous`.
    #[error(transparent)]
    Exposed(#[from] auth::Exposed),
    /// The TLS certificate or key is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The shared store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The admin API's listener could not be bound.
    #[error("cannot listen on {addr} for the admin API: {source}")]
    AdminListener {
        /// `gateway.admin.listen`.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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
    /// The file the configuration was read from: watched (unless `watchConfig` is
    /// false), re-read by [`Gateway::reload`], edited by the admin API. `None`: the
    /// configuration cannot change while the gateway runs.
    pub config_path: Option<PathBuf>,
    /// True when the listen address was set on the command line: the file's is then
    /// not a change that needs a restart.
    pub listen_from_command_line: bool,
}

/// A running gateway.
pub struct Gateway {
    state: Arc<GatewayState>,
    local_addr: SocketAddr,
    reloader: Arc<Reloader>,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// Watches the configuration file while it lives.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Stops the main listener: cancelled at the end of a shutdown, after the drain.
    listening: CancellationToken,
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
        let metrics = options
            .metrics
            .clone()
            .unwrap_or_else(|| metrics::global().clone());
        let store = Store::open(&gateway, &metrics)?;
        if let Some(link) = store.redis() {
            // Bounded: an unreachable Redis is an outage to serve through, not a failure.
            link.ping().await;
        }
        let session_store = sessions::open(&store, &gateway);
        let access = Access::with_store(&gateway, store.clone());
        // The instance name is claimed and the counts written before anything is
        // accepted; a name another live gateway holds is refused here.
        store.join().await?;
        let http = HttpClient::new(gateway.connect_timeout, gateway.max_upstream_message_bytes)?;
        let shutdown = CancellationToken::new();
        let supervision = SupervisorConfig {
            mcp_proxy: crate::config::resolve_mcp_proxy(
                gateway.mcp_proxy.as_deref(),
                std::path::Path::new("node_modules"),
                std::env::var("PATH").ok().as_deref(),
            ),
            start_timeout: gateway.start_timeout,
            stop_grace: gateway.stop_grace,
            backoff_min: gateway.restart_backoff_min,
            backoff_max: gateway.restart_backoff_max,
            guard: options.guard.clone(),
            metrics: metrics.clone(),
        };
        let registry = Arc::new(Registry::new());
        let mut fleet = Fleet::new(registry.clone(), supervision, http.raw().clone());
        for (name, entry) in &config.servers {
            fleet.check(name, entry)?;
        }
        for (name, entry) in &config.servers {
            fleet.add(name, entry.clone())?;
        }
        let admin_key = gateway
            .admin
            .as_ref()
            .map(|admin| Arc::new(AdminKey::new(&admin.key)));
        let admin_listener = match &gateway.admin {
            None => None,
            Some(admin) => Some(admin::bind(admin.listen).await.map_err(|source| {
                GatewayError::AdminListener {
                    addr: admin.listen,
                    source,
                }
            })?),
        };
        let source = Source {
            path: options.config_path.clone(),
            local_addr,
            listen_fixed: options.listen_from_command_line,
        };
        let watch_config = gateway.watch_config;
        let reloader = Arc::new(Reloader::new(
            config,
            fleet,
            access.clone(),
            admin_key.clone(),
            registry.clone(),
            source,
        ));
        let places = Arc::new(Semaphore::new(
            gateway.max_sessions.min(Semaphore::MAX_PERMITS),
        ));
        let connections = TaskTracker::new();
        let start_wait = gateway.start_timeout + Duration::from_secs(10);
        let resume_budget_bytes = gateway.resume_budget_bytes;
        let state = Arc::new(GatewayState {
            context: Arc::new(SessionContext {
                config: gateway,
                servers: registry.clone(),
                http,
                shutdown: shutdown.clone(),
                background: TaskTracker::new(),
                resume_budget: ResumeBudget::new(resume_budget_bytes),
                metrics: metrics.clone(),
                session_store: session_store.clone(),
                store: store.clone(),
            }),
            store,
            sessions: Arc::new(Sessions::new(connections.clone())),
            connections,
            access,
            places,
            readiness: Default::default(),
        });
        let first_starts = registry.snapshot().values().cloned().collect();
        let readiness = state.readiness.clone();
        let draining = shutdown.clone();
        state
            .context
            .background
            .spawn(async move { readiness.latch_after(first_starts, draining).await });
        let admin = match (admin_listener, admin_key) {
            (Some(listener), Some(key)) => {
                let addr = listener.local_addr()?;
                let admin_state = Arc::new(AdminState {
                    key,
                    reloader: reloader.clone(),
                    registry,
                    start_wait,
                    shutdown: shutdown.clone(),
                    metrics: metrics.clone(),
                });
                let task = admin::serve(listener, tls_acceptor.clone(), admin_state)?;
                tracing::info!(%addr, "admin API listening");
                Some((addr, task))
            }
            _ => None,
        };
        let watcher = match (&options.config_path, watch_config) {
            (Some(path), true) => {
                match reload::watch(path, Arc::downgrade(&reloader), shutdown.clone()) {
                    Ok(watcher) => Some(watcher),
                    Err(err) => {
                        tracing::warn!(%err, "cannot watch the configuration file; reload it with SIGHUP");
                        None
                    }
                }
            }
            _ => None,
        };
        let servers_of = Arc::downgrade(&state.context);
        metrics.watch_servers(move || {
            let context = servers_of.upgrade()?;
            Some(context.servers.snapshot().values().cloned().collect())
        });
        let app = Router::new()
            .route("/ws", get(upgrade))
            .merge(crate::status::routes())
            .merge(crate::routes::router(state.clone()))
            .merge(crate::console::routes())
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(
                state.access.clone(),
                auth::gate,
            ))
            .with_state(state.clone());
        let per_ip = ConnectionsPerIp::new(state.context.config.max_connections_per_ip);
        let header_timeout = state.context.config.header_timeout;
        // The main listener outlives the drain, so that probes see it (`/readyz` 503).
        let listening = CancellationToken::new();
        let stop = listening.clone();
        let server_task = match tls_acceptor {
            None => {
                let incoming = PlainAccept::new(listener, per_ip);
                tokio::spawn(serve::serve(incoming, app, header_timeout, stop))
            }
            Some(acceptor) => {
                let incoming = TlsListener::new(listener, acceptor, per_ip);
                tokio::spawn(serve::serve(incoming, app, header_timeout, stop))
            }
        };
        tracing::info!(%local_addr, instance = %state.store.instance(), "mcpmux listening");
        Ok(Self {
            state,
            local_addr,
            reloader,
            admin,
            _watcher: watcher,
            listening,
            server_task,
        })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin API, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(addr, _)| *addr)
    }

    /// Bytes of frames kept for resume by all sessions now (`resumeBudgetBytes` bounds
    /// it), for embedding and tests.
    pub fn resume_bytes_kept(&self) -> usize {
        self.state.context.resume_budget.used()
    }

    /// The registry the gateway records its metrics into.
    pub fn metrics(&self) -> &Metrics {
        &self.state.context.metrics
    }

    /// Resolves once every server configured at start has ended its first start attempt
    /// (ready or down): from then on `/readyz` answers 200 unless draining.
    pub async fn first_starts_ended(&self) {
        self.state.readiness.wait().await;
    }

    /// Every configured server now, with its status, for embedding and tests.
    pub fn servers(&self) -> Arc<Servers> {
        self.state.context.servers.snapshot()
    }

    /// Reads the configuration file again and applies what changed (SIGHUP); an invalid
    /// file is rejected with one log line, and the running configuration stays.
    pub async fn reload(&self) {
        self.reloader
            .reload_logged("reloading the configuration")
            .await;
    }

    /// Stops gracefully, in order: draining (`/readyz` 503, new WebSockets and MCP-route
    /// requests refused with 503, the main listener still answering); 1001 to every
    /// client; in-flight requests given `shutdownGraceMs` to finish; upstream sessions
    /// ended (DELETE); children stopped (SIGTERM, SIGKILL after `stopGraceMs`); then the
    /// main listener closes.
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
        // Its sockets are closed: the other instances stop counting them at once.
        self.state.store.close().await;
        self.reloader
            .shutdown(config.stop_grace + Duration::from_secs(2))
            .await;
        if let Some((_, task)) = self.admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        self.listening.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server_task).await;
    }
}

/// `GET /ws` (`?session=ID` when resuming): the subprotocol check, the socket limits,
/// then the WebSocket.
async fn upgrade(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
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
        let body = serde_json::json!({"error": "mcpmux is shutting down (draining); connect again to another instance or after its restart"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    // Taken before the upgrade, atomically: concurrent upgrades cannot overshoot.
    let Ok(permit) = state.places.clone().try_acquire_owned() else {
        let message =
            "mcpmux holds as many client sessions as it may (maxSessions); try again later";
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    };
    let place = Place::new(permit);
    let admission = match state.access.admit_upgrade(caller, peer.ip()).await {
        Ok(admission) => admission,
        Err(refusal) => return auth::refuse(&refusal, None),
    };
    // The session a load balancer routed on; the hello must name the same one.
    let routed = query
        .as_deref()
        .and_then(protocol::session_id::from_query)
        .map(Box::<str>::from);
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
            let serve = connection::serve(socket, state, place, admission, routed);
            tracker.track_future(tracing::Instrument::instrument(serve, span))
        })
}
