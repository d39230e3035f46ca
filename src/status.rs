//! What the main listener tells about the gateway itself: `GET /healthz` (the process
//! serves), `GET /readyz` (for load balancers: every server's first start has ended and
//! the gateway is not draining), and `GET /status` and `GET /servers` (the servers the
//! caller may use, with their state).
//!
//! `/readyz` turns 200 once every configured server's first start attempt has ended,
//! whatever its outcome, and stays 200 while servers fail and restart: one server down
//! must not take the whole gateway out of a load balancer. It is 503 before that and
//! while draining on shutdown.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::registry::ServerStatus;
use crate::state::GatewayState;

/// The routes of this module.
pub fn routes() -> Router<Arc<GatewayState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_page))
        .route("/servers", get(servers_page))
}

/// `GET /readyz`: 200 or 503, with every server's state.
async fn readyz(State(state): State<Arc<GatewayState>>) -> Response {
    let servers = state.context.servers.snapshot();
    let started = state.readiness.started();
    let draining = state.context.shutdown.is_cancelled();
    let ready = started && !draining;
    let listed: Vec<_> = servers
        .values()
        .map(|server| json!({"name": &*server.name, "state": server.state()}))
        .collect();
    let body = json!({"ready": ready, "draining": draining, "servers": listed});
    let status = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(body)).into_response()
}

/// `GET /status`: the state of every server the caller may use, with its child's pid.
async fn status_page(
    State(state): State<Arc<GatewayState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    server_list(&state, &caller, |status| ("pid", json!(status.pid)))
}

/// `GET /servers`: the servers the caller may use, with state, uptime, restarts and
/// last error.
async fn servers_page(
    State(state): State<Arc<GatewayState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    server_list(&state, &caller, |status| {
        ("uptimeMs", json!(status.uptime_ms()))
    })
}

/// `{"servers": [...]}`: each server the caller may use with its `name`, `state`,
/// `restarts`, `lastError`, and the one field `extra` adds.
fn server_list(
    state: &GatewayState,
    caller: &Caller,
    extra: impl Fn(&ServerStatus) -> (&'static str, Value),
) -> Response {
    let servers: Vec<_> = state
        .context
        .servers
        .snapshot()
        .values()
        .filter(|server| caller.may_use(&server.name))
        .map(|server| {
            let status = server.status();
            let (key, value) = extra(&status);
            let mut entry = json!({
                "name": &*server.name,
                "state": status.state,
                "restarts": status.restarts,
                "lastError": status.last_error,
            });
            entry[key] = value;
            entry
        })
        .collect();
    Json(json!({ "servers": servers })).into_response()
}
