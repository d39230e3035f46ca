//! Streamable HTTP through mcpmux: `POST`, `GET` and `DELETE` on `/servers/{name}/mcp`,
//! or on `/mcp` with `X-MCP-Server: NAME`, carried to the server's own endpoint.
//!
//! - `POST`: one JSON-RPC message; the answer (`202`, JSON, or an event stream with the
//!   progress notifications and the response) flows back as it comes.
//! - `GET`: the standalone event stream of a session, or with `Last-Event-ID` the replay
//!   of a broken stream (tried again for a moment while the server still holds the
//!   broken one); it holds a place among `maxSessions` and one of its key's
//!   `maxConnections` while open.
//! - `DELETE`: ends a session.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::time::Instant;

use super::error::{Refused, RouteError};
use super::exchange::{self, Answer, Expect, Request};
use super::message::Message;
use super::relay::Asked;
use super::{Routes, ServerName, Until, legacy_only};
use crate::auth::Caller;
use crate::metrics::Outcome;

/// How long a resumption (`GET` with `Last-Event-ID`) that the server refuses with 409
/// is tried again. The server refuses while it still holds the broken stream being
/// resumed; when the client's connection broke, mcpmux closed that stream upstream, but
/// the server may learn of it a moment after the client's new `GET` arrives.
const RESUME_CONFLICT_WAIT: Duration = Duration::from_secs(2);
/// The pause between two such tries.
const RESUME_CONFLICT_PAUSE: Duration = Duration::from_millis(50);

/// `POST /servers/{name}/mcp`, or `/mcp` with `X-MCP-Server`.
pub async fn post(
    State(routes): State<Arc<Routes>>,
    ServerName(name): ServerName,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    carry_message(&routes, &caller, &name, &headers, body)
        .await
        .unwrap_or_else(|r| routes.refused(r))
}

/// `GET /servers/{name}/mcp`, or `/mcp` with `X-MCP-Server`.
pub async fn get(
    State(routes): State<Arc<Routes>>,
    ServerName(name): ServerName,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    open_stream(&routes, &caller, &name, &headers)
        .await
        .unwrap_or_else(|r| routes.refused(r))
}

/// `DELETE /servers/{name}/mcp`, or `/mcp` with `X-MCP-Server`.
pub async fn delete(
    State(routes): State<Arc<Routes>>,
    ServerName(name): ServerName,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    end_session(&routes, &caller, &name, &headers)
        .await
        .unwrap_or_else(|r| routes.refused(r))
}

/// Carries one POSTed message and relays its answer.
async fn carry_message(
    routes: &Routes,
    caller: &Caller,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let about =
        |error: RouteError, id: Option<&serde_json::value::RawValue>| error.about(Some(name), id);
    let Message { body, id, method } = routes.receive(caller, name, body).await?;
    let id = id.as_deref();
    let server = routes.server(caller, name).map_err(|e| about(e, id))?;
    let meter = routes.meter(&server, method);
    let body_len = body.len();
    let refuse = |error: RouteError| {
        if let Some(meter) = &meter {
            meter.finish(Outcome::Gateway(error.code()));
        }
        about(error, id)
    };
    let endpoint = routes.endpoint(&server).await.map_err(refuse)?;
    if legacy_only(&server, &endpoint) {
        return Err(refuse(RouteError::LegacyOnly(name.to_owned())));
    }
    let request = Request {
        method: reqwest::Method::POST,
        url: endpoint.url.clone(),
        endpoint: &endpoint,
        client_headers: headers,
        body: Some(body),
        expect: Expect::Message,
    };
    routes.sent(&server, body_len);
    let answer = exchange::send(&routes.context().http, request)
        .await
        .map_err(|e| refuse(e.into()))?;
    let grant = routes.grant(caller, server, &endpoint);
    routes.answer_message(answer, meter, grant, name, id)
}

/// Opens (or resumes, with `Last-Event-ID`) an event stream and relays it.
async fn open_stream(
    routes: &Routes,
    caller: &Caller,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let about = |error: RouteError| error.about(Some(name), None);
    routes.check_running().map_err(about)?;
    let server = routes.server(caller, name).map_err(about)?;
    let held = routes.stream(caller).await.map_err(about)?;
    let endpoint = routes.endpoint(&server).await.map_err(about)?;
    if legacy_only(&server, &endpoint) {
        return Err(about(RouteError::LegacyOnly(name.to_owned())));
    }
    let resuming = headers.contains_key("last-event-id");
    let deadline = Instant::now() + RESUME_CONFLICT_WAIT;
    loop {
        let request = Request {
            method: reqwest::Method::GET,
            url: endpoint.url.clone(),
            endpoint: &endpoint,
            client_headers: headers,
            body: None,
            expect: Expect::EventStream,
        };
        let answer = exchange::send(&routes.context().http, request)
            .await
            .map_err(|e| about(e.into()))?;
        match answer {
            Answer::Refusal { status, .. }
                if status == StatusCode::CONFLICT && resuming && Instant::now() < deadline =>
            {
                tracing::debug!(server = name, "resumption refused with 409; trying again");
                tokio::time::sleep(RESUME_CONFLICT_PAUSE).await;
            }
            answer => {
                let grant = routes.grant(caller, server, &endpoint);
                return routes.answer(answer, held, grant, Until::Stream, Asked::nothing(name));
            }
        }
    }
}

/// Ends a session upstream.
async fn end_session(
    routes: &Routes,
    caller: &Caller,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let about = |error: RouteError| error.about(Some(name), None);
    routes.check_running().map_err(about)?;
    let server = routes.server(caller, name).map_err(about)?;
    let endpoint = routes.endpoint(&server).await.map_err(about)?;
    if legacy_only(&server, &endpoint) {
        return Err(about(RouteError::LegacyOnly(name.to_owned())));
    }
    let request = Request {
        method: reqwest::Method::DELETE,
        url: endpoint.url.clone(),
        endpoint: &endpoint,
        client_headers: headers,
        body: None,
        expect: Expect::Anything,
    };
    let answer = exchange::send(&routes.context().http, request)
        .await
        .map_err(|e| about(e.into()))?;
    let grant = routes.grant(caller, server, &endpoint);
    let held = routes.exchange(None);
    routes.answer(answer, held, grant, Until::Answered, Asked::nothing(name))
}
