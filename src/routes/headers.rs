//! Which headers cross the proxy, each way. Both directions use allow-lists: what MCP
//! needs passes (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`, `Mcp-Method`,
//! `Mcp-Name`, every `Mcp-Param-*`, and the media types), nothing else does. So a
//! client's key (`Authorization`, `X-API-Key`), its cookies and its `Origin` never reach
//! an upstream, which gets the headers of its own entry instead (an mcp-proxy child's
//! key, a remote server's configured headers); and an upstream's cookies or
//! authentication challenges never reach the client.

use axum::http::HeaderMap;
use axum::http::header::{
    ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER,
};

use crate::auth::MCP_PARAM_PREFIX;
use crate::upstream::Endpoint;

/// Asks nginx and its kind not to buffer an event stream.
pub const X_ACCEL_BUFFERING: &str = "x-accel-buffering";
/// Names the server on `/mcp`.
pub const X_MCP_SERVER: &str = "x-mcp-server";
/// The MCP session header.
pub const MCP_SESSION_ID: &str = "mcp-session-id";

/// The MCP headers that pass both ways, besides `mcp-param-*`.
const MCP_HEADERS: [&str; 5] = [
    MCP_SESSION_ID,
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
];

fn is_mcp_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    MCP_HEADERS.contains(&name) || name.starts_with(MCP_PARAM_PREFIX)
}

/// The headers of a request to `endpoint`: the client's MCP and media-type headers, then
/// the endpoint's own, which win.
pub fn upstream_request(client: &HeaderMap, endpoint: &Endpoint) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        if is_mcp_header(name) || name == ACCEPT || name == CONTENT_TYPE {
            headers.append(name.clone(), value.clone());
        }
    }
    for name in endpoint.headers.keys() {
        headers.remove(name);
    }
    for (name, value) in &endpoint.headers {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// The headers of the answer the client gets: the upstream's MCP headers, its media
/// type and its `Retry-After` and `Allow`; for an event stream, no caching and no
/// buffering on the way.
pub fn client_response(upstream: &HeaderMap, event_stream: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in upstream {
        if is_mcp_header(name) || [CONTENT_TYPE, RETRY_AFTER, ALLOW].contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if event_stream {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    headers
}

/// True when `headers` say the body is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    media_type(headers).starts_with("text/event-stream")
}

/// The `Content-Type`, lower case ("" without one).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Transport;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_client_key_stays_and_the_endpoint_key_goes() {
        let endpoint = Endpoint {
            url: "http://127.0.0.1:1/mcp".parse().unwrap(),
            headers: map(&[("x-api-key", "child-key")]),
            generation: 1,
            transport: Transport::StreamableHttp,
        };
        let client = map(&[
            ("authorization", "Bearer client-key"),
            ("x-api-key", "client-key"),
            ("cookie", "a=b"),
            ("origin", "http://localhost:5173"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", "s-1"),
            ("MCP-Protocol-Version", "2025-11-25"),
            ("last-event-id", "e-9"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("mcp-param-region", "eu"),
            ("x-mcp-server", "everything"),
        ]);
        let sent = upstream_request(&client, &endpoint);
        assert_eq!(
            sent.get_all("x-api-key").iter().collect::<Vec<_>>(),
            ["child-key"]
        );
        for gone in ["authorization", "cookie", "origin", "x-mcp-server"] {
            assert!(!sent.contains_key(gone), "{gone}");
        }
        for kept in [
            "accept",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "mcp-method",
            "mcp-name",
            "mcp-param-region",
        ] {
            assert_eq!(sent[kept], client[kept], "{kept}");
        }
    }

    #[test]
    fn answers_carry_the_mcp_headers_and_not_the_rest() {
        let upstream = map(&[
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "s-1"),
            ("mcp-param-region", "eu"),
            ("set-cookie", "a=b"),
            ("www-authenticate", "Bearer"),
            ("x-powered-by", "Express"),
        ]);
        let sent = client_response(&upstream, is_event_stream(&upstream));
        assert_eq!(sent["mcp-session-id"], "s-1");
        assert_eq!(sent["mcp-param-region"], "eu");
        assert_eq!(sent[X_ACCEL_BUFFERING], "no");
        assert_eq!(sent[CACHE_CONTROL], "no-cache");
        for gone in ["set-cookie", "www-authenticate", "x-powered-by"] {
            assert!(!sent.contains_key(gone), "{gone}");
        }
    }
}
