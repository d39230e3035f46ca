//! The gate in front of every HTTP route: the Origin and Host policy first (403), then the
//! key (401), then the route; CORS headers on the way back.
//!
//! Which check a path gets is decided here, in [`Route::of`], so that a route added later
//! is protected unless it is listed as an exception. The MCP routes get the CORS of a
//! reverse proxy for MCP clients ([`super::cors`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, VARY, WWW_AUTHENTICATE,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Access, Refusal, cors};

/// How long a browser may keep a preflight answer.
pub(super) const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// What a path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Probes (`/healthz`, `/readyz`): no check at all.
    Exempt,
    /// The WebSocket (`/ws`): Origin and Host; a key in the headers, the bearer
    /// subprotocol, or (checked later) `hello`.
    WebSocket,
    /// The web console's page and assets (`/`, `/console/...`): Origin and Host, but no
    /// key: they hold no data, and the page asks for the key itself, over `/ws`.
    Public,
    /// The MCP routes (`/mcp`, `/servers/{name}/...`): like [`Route::Protected`], and CORS
    /// that lets pages POST, DELETE, send the MCP headers and read `Mcp-Session-Id`.
    Mcp,
    /// Every other route: Origin and Host, and a key in the headers.
    Protected,
}

impl Route {
    /// The checks for `path`.
    pub fn of(path: &str) -> Self {
        match path {
            "/healthz" | "/readyz" => Self::Exempt,
            "/ws" => Self::WebSocket,
            "/" => Self::Public,
            console if console.starts_with("/console/") => Self::Public,
            "/mcp" => Self::Mcp,
            server if server.starts_with("/servers/") => Self::Mcp,
            _ => Self::Protected,
        }
    }
}

/// The middleware: refuses what the policy refuses, and leaves the [`super::Caller`] in
/// the request's extensions for the handler.
pub async fn gate(State(access): State<Arc<Access>>, mut request: Request, next: Next) -> Response {
    let route = Route::of(request.uri().path());
    if route == Route::Exempt {
        return next.run(request).await;
    }
    let origin = match access.origins().judge(request.headers()) {
        Ok(origin) => origin,
        Err(refusal) => return refuse(&refusal, None),
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, &origin) {
        return match route {
            Route::Mcp => cors::mcp_preflight(origin, request.headers()),
            _ => preflight_answer(origin),
        };
    }
    if route == Route::Public {
        let mut response = next.run(request).await;
        allow_origin(&mut response, origin.as_ref());
        return response;
    }
    let caller = match access.identify(request.headers(), route == Route::WebSocket) {
        Ok(caller) => caller,
        Err(refusal) => return refuse(&refusal, origin.as_ref()),
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if route != Route::WebSocket {
        allow_origin(&mut response, origin.as_ref());
    }
    if let (Route::Mcp, Some(_)) = (route, &origin) {
        cors::expose_mcp_headers(&mut response);
    }
    response
}

/// The answer to a refused request: its status, its sentence, and (for an allowed origin)
/// CORS headers so that the page can read why.
pub fn refuse(refusal: &Refusal, origin: Option<&HeaderValue>) -> Response {
    tracing::debug!(%refusal, "request refused");
    let mut response = (refusal.status(), refusal.to_string()).into_response();
    if refusal.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mcpmux\""),
        );
    }
    allow_origin(&mut response, origin);
    response
}

/// CORS for an allowed origin: echoed (never `*`), with `Vary: Origin` on every answer.
pub(super) fn allow_origin(response: &mut Response, origin: Option<&HeaderValue>) {
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
}

fn preflight_answer(origin: &HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut response, Some(origin));
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, x-api-key"),
    );
    headers.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_protected_unless_listed() {
        assert_eq!(Route::of("/healthz"), Route::Exempt);
        assert_eq!(Route::of("/readyz"), Route::Exempt);
        assert_eq!(Route::of("/ws"), Route::WebSocket);
        assert_eq!(Route::of("/"), Route::Public);
        assert_eq!(Route::of("/console/app.js"), Route::Public);
        assert_eq!(Route::of("/mcp"), Route::Mcp);
        assert_eq!(Route::of("/servers/everything/mcp"), Route::Mcp);
        assert_eq!(Route::of("/servers/everything/sse"), Route::Mcp);
        for path in [
            "/status",
            "/anything",
            "/healthz/",
            "/ws/",
            "/console",
            "/servers",
            "/mcp/",
        ] {
            assert_eq!(Route::of(path), Route::Protected, "{path}");
        }
    }

    #[test]
    fn refusals_have_their_status_and_cors_headers() {
        let origin = HeaderValue::from_static("http://localhost:5173");
        let response = refuse(&Refusal::WrongKey, Some(&origin));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], origin);
        assert_eq!(response.headers()[VARY], "Origin");
        assert!(response.headers().contains_key(WWW_AUTHENTICATE));
        let response = refuse(&Refusal::NullOrigin, None);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(!response.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }
}
