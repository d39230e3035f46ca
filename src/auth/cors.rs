//! CORS of the MCP routes, for pages that speak MCP over HTTP to an allowed origin: a
//! preflight that allows `GET`, `POST` and `DELETE` with the headers an MCP client sends,
//! and answers that let the page read the headers an MCP client needs (`Mcp-Session-Id`
//! above all). Only ever applied for an origin the policy allowed ([`super::gate`]).

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::gate::{PREFLIGHT_MAX_AGE_SECS, allow_origin};

/// Request headers a page may send on the MCP routes, besides `mcp-param-*`.
const MCP_REQUEST_HEADERS: [&str; 10] = [
    "accept",
    "authorization",
    "content-type",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
    "x-api-key",
    "x-mcp-server",
];

/// Response headers a page may read, besides the `mcp-param-*` an answer carries.
const MCP_EXPOSED_HEADERS: &str =
    "Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name, Retry-After, WWW-Authenticate";

/// The prefix of the per-parameter headers of the 2026-07-28 revision.
pub const MCP_PARAM_PREFIX: &str = "mcp-param-";

/// True for a request header name a page may send on the MCP routes.
fn allowed_request_header(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    MCP_REQUEST_HEADERS.contains(&name.as_str())
        || (name.len() > MCP_PARAM_PREFIX.len() && name.starts_with(MCP_PARAM_PREFIX))
}

/// The answer to a preflight from an allowed `origin`: the methods of the MCP routes and,
/// of the headers it asks for, those the MCP routes take (a browser refuses the request
/// if one it needs is missing).
pub fn mcp_preflight(origin: &HeaderValue, request: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut response, Some(origin));
    let asked = request
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| allowed_request_header(name))
        .collect::<Vec<_>>();
    let mut allowed = MCP_REQUEST_HEADERS.join(", ");
    for name in asked.iter().filter(|n| n.starts_with(MCP_PARAM_PREFIX)) {
        allowed.push_str(", ");
        allowed.push_str(name);
    }
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    if let Ok(allowed) = HeaderValue::from_str(&allowed) {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
    }
    headers.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
    );
    response
}

/// Lets the page read the MCP headers of an answer to an allowed origin.
pub fn expose_mcp_headers(response: &mut Response) {
    let mut exposed = MCP_EXPOSED_HEADERS.to_owned();
    for name in response.headers().keys() {
        if name.as_str().starts_with(MCP_PARAM_PREFIX) {
            exposed.push_str(", ");
            exposed.push_str(name.as_str());
        }
    }
    if let Ok(exposed) = HeaderValue::from_str(&exposed) {
        response
            .headers_mut()
            .insert(ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN;

    #[test]
    fn a_preflight_allows_the_mcp_methods_and_headers() {
        let origin = HeaderValue::from_static("http://localhost:5173");
        let mut request = HeaderMap::new();
        request.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type, Mcp-Session-Id, mcp-param-region, x-evil"),
        );
        let response = mcp_preflight(&origin, &request);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], origin);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, DELETE");
        let allowed = headers[ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        for name in [
            "mcp-session-id",
            "content-type",
            "mcp-param-region",
            "authorization",
        ] {
            assert!(
                allowed.split(", ").any(|a| a == name),
                "{name} in {allowed}"
            );
        }
        assert!(!allowed.contains("x-evil"), "{allowed}");
    }

    #[test]
    fn answers_expose_the_session_id_and_the_param_headers_they_carry() {
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert("mcp-param-region", HeaderValue::from_static("eu"));
        expose_mcp_headers(&mut response);
        let exposed = response.headers()[ACCESS_CONTROL_EXPOSE_HEADERS]
            .to_str()
            .unwrap();
        assert!(exposed.contains("Mcp-Session-Id"), "{exposed}");
        assert!(exposed.ends_with("mcp-param-region"), "{exposed}");
    }
}
