//! The admin API's server routes: list, put, delete, restart, and reload. A write is
//! answered once its change is applied: the server's start attempt has ended (it is
//! `ready`, or `down` with its error) or its child has stopped; a change still being
//! applied after the start wait (`startTimeoutMs` + 10 s), or when a shutdown begins
//! meanwhile, is answered 202 Accepted with the server's state then. An entry equal to
//! the one in force is answered 200 `unchanged`, the file not written.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AdminState, error};
use crate::config::ServerConfig;
use crate::fleet::FleetError;
use crate::registry::{Server, ServerStatus};
use crate::reload::{Outcome, ReloadError};

/// `GET /admin/servers`: every server with its state.
pub async fn list(State(state): State<Arc<AdminState>>) -> Response {
    let config = state.reloader.config().await;
    let servers: Vec<Value> = state
        .registry
        .snapshot()
        .values()
        .map(|server| describe(server, &server.status(), config.servers.get(&*server.name)))
        .collect();
    Json(json!({ "servers": servers })).into_response()
}

/// `PUT /admin/servers/{name}`: adds the server, or changes its entry (and restarts it).
pub async fn put(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if !is_server_name(&name) {
        return error(StatusCode::BAD_REQUEST, invalid_name(&name));
    }
    let entry = match serde_json::from_slice::<Value>(&body) {
        Ok(entry @ Value::Object(_)) => entry,
        _ => {
            let why = "the body must be one configuration entry, a JSON object such as \
                       {\"command\": \"npx\", \"args\": [...]} or {\"url\": \"https://...\"}";
            return error(StatusCode::BAD_REQUEST, why);
        }
    };
    let outcome = match state.reloader.edit_server(&name, Some(entry)).await {
        Ok(outcome) => outcome,
        Err(err) => return refused(err, StatusCode::BAD_REQUEST),
    };
    // Decided by the edit itself, under the lock that applied it.
    let (change, mut code) = if outcome.added.contains(&name) {
        ("added", StatusCode::CREATED)
    } else if outcome.changed.contains(&name) {
        ("changed", StatusCode::OK)
    } else {
        ("unchanged", StatusCode::OK)
    };
    if let Some((_, err)) = outcome.failed.into_iter().find(|(n, _)| *n == name) {
        // In the file, but its start could not begin.
        return refused(ReloadError::Server(err), StatusCode::BAD_REQUEST);
    }
    let starting = outcome.starting.into_iter().find(|(n, _)| *n == name);
    let status = match starting {
        Some((_, starting)) => match wait(&state, starting.outcome()).await {
            Waited::Done(status) => status,
            // Applied, its start not over: what happened so far.
            Waited::Slow => {
                code = StatusCode::ACCEPTED;
                match state.registry.get(&name) {
                    Some(server) => server.status(),
                    None => return removed_meanwhile(),
                }
            }
        },
        None => match state.registry.get(&name) {
            Some(server) => server.status(),
            None => return removed_meanwhile(),
        },
    };
    answer_for(&state, &name, status, change, code).await
}

/// `DELETE /admin/servers/{name}`: removes the server and stops its child.
pub async fn delete(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    if state.registry.get(&name).is_none() {
        return unknown(&name);
    }
    let outcome = match state.reloader.edit_server(&name, None).await {
        Ok(outcome) => outcome,
        // The rest of the configuration needs the server (a key names it, or it is
        // the last one).
        Err(err) => return refused(err, StatusCode::CONFLICT),
    };
    let stopped = async {
        for (_, stopping) in outcome.stopping {
            stopping.done().await;
        }
    };
    let code = match wait(&state, stopped).await {
        Waited::Done(()) => StatusCode::OK,
        // Removed; its child not stopped yet.
        Waited::Slow => StatusCode::ACCEPTED,
    };
    let body = json!({"name": name, "state": "removed", "change": "removed"});
    (code, Json(body)).into_response()
}

/// `POST /admin/servers/{name}/restart`: restarts the server with its entry.
pub async fn restart(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    let starting = match state.reloader.restart(&name).await {
        Ok(starting) => starting,
        Err(FleetError::Unknown(_)) => return unknown(&name),
        Err(err) => return refused(ReloadError::Server(err), StatusCode::CONFLICT),
    };
    let (status, code) = match wait(&state, starting.outcome()).await {
        Waited::Done(status) => (status, StatusCode::OK),
        Waited::Slow => match state.registry.get(&name) {
            Some(server) => (server.status(), StatusCode::ACCEPTED),
            None => return removed_meanwhile(),
        },
    };
    answer_for(&state, &name, status, "restarted", code).await
}

/// `POST /admin/reload`: reads the configuration file again and applies it.
pub async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let outcome = match state.reloader.reload().await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::error!(
                "the admin API asked for a reload, but the configuration was rejected; the running configuration stays: {err}"
            );
            return refused(err, StatusCode::BAD_REQUEST);
        }
    };
    let Outcome {
        added,
        removed,
        changed,
        access_changed,
        restart_needed,
        starting,
        stopping,
        failed,
    } = outcome;
    let settled = async {
        for (_, stopping) in stopping {
            stopping.done().await;
        }
        for (_, starting) in starting {
            starting.outcome().await;
        }
    };
    let code = match wait(&state, settled).await {
        Waited::Done(()) => StatusCode::OK,
        Waited::Slow => StatusCode::ACCEPTED,
    };
    let failed: Vec<Value> = failed
        .iter()
        .map(|(name, err)| json!({"name": name, "error": err.to_string()}))
        .collect();
    let body = json!({
        "failed": failed,
        "added": added,
        "removed": removed,
        "changed": changed,
        "accessChanged": access_changed,
        "restartNeeded": restart_needed,
    });
    (code, Json(body)).into_response()
}

/// How waiting for a change to be applied ended.
enum Waited<T> {
    /// It was applied.
    Done(T),
    /// It is still being applied after the start wait, or the gateway began to shut
    /// down meanwhile: the change is in force, what it started or stopped is not over;
    /// answered 202 Accepted.
    Slow,
}

/// Waits for `done`, at most the start wait, and not past the start of a shutdown.
async fn wait<T>(state: &AdminState, done: impl Future<Output = T>) -> Waited<T> {
    tokio::select! {
        value = done => Waited::Done(value),
        _ = tokio::time::sleep(state.start_wait) => Waited::Slow,
        _ = state.shutdown.cancelled() => Waited::Slow,
    }
}

fn removed_meanwhile() -> Response {
    error(StatusCode::CONFLICT, "the server was removed meanwhile")
}

/// A server's description, with `change` saying what the request did.
async fn answer_for(
    state: &AdminState,
    name: &str,
    status: ServerStatus,
    change: &str,
    code: StatusCode,
) -> Response {
    let config = state.reloader.config().await;
    let Some(server) = state.registry.get(name) else {
        return removed_meanwhile();
    };
    let mut body = describe(&server, &status, config.servers.get(name));
    body["change"] = Value::from(change);
    (code, Json(body)).into_response()
}

/// A server as the admin API shows it. Entries are not shown: they may hold secrets.
fn describe(server: &Server, status: &ServerStatus, entry: Option<&ServerConfig>) -> Value {
    let kind = match entry {
        Some(ServerConfig::Stdio(_)) => "stdio",
        Some(ServerConfig::Remote(_)) => "remote",
        None => "unknown",
    };
    json!({
        "name": &*server.name,
        "type": kind,
        "state": status.state,
        "pid": status.pid,
        "uptimeMs": status.uptime_ms(),
        "restarts": status.restarts,
        "lastError": status.last_error,
    })
}

/// A write that was not applied: `invalid` is the status for a configuration it would
/// make invalid.
fn refused(err: ReloadError, invalid: StatusCode) -> Response {
    let status = match &err {
        ReloadError::Config(_) | ReloadError::Exposed(_) => invalid,
        ReloadError::Server(FleetError::Endpoint { .. }) => StatusCode::BAD_REQUEST,
        ReloadError::Server(FleetError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
        ReloadError::Server(FleetError::Unknown(_)) => StatusCode::NOT_FOUND,
        ReloadError::NoFile | ReloadError::FileInvalid(_) => StatusCode::CONFLICT,
        ReloadError::Edit(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err)
}

fn unknown(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, FleetError::Unknown(name.to_owned()))
}

fn is_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn invalid_name(name: &str) -> String {
    let shown: String = name.chars().take(64).collect();
    format!("{shown:?} is not a valid server name; use 1 to 64 characters from A-Z a-z 0-9 _ . -")
}
