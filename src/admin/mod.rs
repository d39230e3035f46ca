//! The admin API, on a listener of its own (`gateway.admin`): the servers, changed
//! while the gateway runs, and `/metrics`.
//!
//! - `GET /admin/servers`: every server with its state.
//! - `PUT /admin/servers/{name}` (a configuration entry as the body),
//!   `DELETE /admin/servers/{name}`: edit the configuration file (atomically, keeping
//!   `${VAR}` references as written) and apply it; answered once the server has
//!   started (its first start attempt ended) or stopped.
//! - `POST /admin/servers/{name}/restart`, `POST /admin/reload`.
//! - `GET /metrics`: the Prometheus text format.
//!
//! Every route needs the admin key ([`AdminKey`]): 401 with a JSON body without it.
//! Answers are JSON; errors are `{"error": "a sentence"}`.

mod servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::AdminKey;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::serve::{ConnectionsPerIp, PlainAccept};
use crate::tls::TlsListener;

/// What the admin routes use.
#[derive(Debug)]
pub struct AdminState {
    /// The key every request must present.
    pub key: Arc<AdminKey>,
    /// Applies configuration changes.
    pub reloader: Arc<Reloader>,
    /// Every server now.
    pub registry: Arc<Registry>,
    /// The longest a write waits for a server's start attempt to end.
    pub start_wait: Duration,
    /// Cancelled when the gateway shuts down: waits end, the listener stops.
    pub shutdown: CancellationToken,
    /// The gateway's metrics, which `/metrics` shows.
    pub metrics: Metrics,
}

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = Json(serde_json::json!({ "error": message.to_string() }));
    (status, body).into_response()
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/servers", get(servers::list))
        .route(
            "/admin/servers/{name}",
            axum::routing::put(servers::put).delete(servers::delete),
        )
        .route("/admin/servers/{name}/restart", post(servers::restart))
        .route("/admin/reload", post(servers::reload))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// Connections one address may hold open to the admin listener.
const ADMIN_CONNECTIONS_PER_IP: usize = 64;
/// How long a connection to the admin listener may take to send a request's headers.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin API on `listener` (over TLS when `tls` is set) until `shutdown`.
pub fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AdminState>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let stop = state.shutdown.clone();
    let app = router(state);
    let per_ip = ConnectionsPerIp::new(ADMIN_CONNECTIONS_PER_IP);
    Ok(match tls {
        None => {
            let incoming = PlainAccept::new(listener, per_ip);
            tokio::spawn(crate::serve::serve(
                incoming,
                app,
                ADMIN_HEADER_TIMEOUT,
                stop,
            ))
        }
        Some(acceptor) => {
            let incoming = TlsListener::new(listener, acceptor, per_ip);
            tokio::spawn(crate::serve::serve(
                incoming,
                app,
                ADMIN_HEADER_TIMEOUT,
                stop,
            ))
        }
    })
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Refuses every request without the admin key.
async fn require_key(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.key.admits(request.headers()) {
        return next.run(request).await;
    }
    tracing::debug!(path = %request.uri().path(), "admin request without the admin key");
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "the admin API needs its key (gateway.admin.key): send \"Authorization: Bearer KEY\" or \"X-API-Key: KEY\"",
    );
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"mcpmux admin\""),
    );
    response
}

/// `GET /metrics`: the gateway's own metrics in the Prometheus text format.
async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, content_type);
    response
}
