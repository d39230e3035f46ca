//! Why an MCP route could not carry a request, and the answer a client gets for it: an
//! HTTP status and a JSON-RPC error body in the form the WebSocket uses (section 6 of
//! `protocol.md`), with the request's own `id` when it is known and `null` otherwise.

use std::sync::Arc;

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use crate::protocol::ErrorCode;
use crate::upstream::UpstreamError;

/// Why a request on an MCP route was refused or failed. The text is the error's
/// `message`; it never holds a key, a header value or a URL's secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// `/mcp` without one `X-MCP-Server` header.
    #[error(
        "name the server: send the header \"X-MCP-Server: NAME\" (once), or use /servers/NAME/mcp"
    )]
    NoServerNamed,
    /// A `/servers/{name}/...` path whose name is not UTF-8 once percent-decoded.
    #[error("the server name in the path is not valid UTF-8 once percent-decoded")]
    BadServerName,
    /// No server of that name, or one the caller's key may not use: the same answer.
    #[error("no server is named {0:?}; GET /status lists the servers")]
    UnknownServer(String),
    /// A body larger than `maxFrameBytes`.
    #[error("the request body exceeds {0} bytes (maxFrameBytes); send a smaller message")]
    TooLarge(usize),
    /// A body that is not one JSON-RPC message.
    #[error("the request body is not a JSON-RPC message: {0}")]
    NotJsonRpc(String),
    /// A JSON-RPC batch.
    #[error(
        "JSON-RPC batches are not carried (they left MCP in 2025-06-18); POST each message on its own"
    )]
    Batch,
    /// The key is over its rate limit.
    #[error("{message}")]
    RateLimited {
        /// The sentence, naming the key and the limit.
        message: String,
        /// Milliseconds until a message would be accepted.
        retry_after_ms: u64,
    },
    /// The key has `maxConnections` sockets and event streams open.
    #[error(
        "API key \"{key}\" has {max} sockets and event streams open already (maxConnections); close one or try again later"
    )]
    TooManyStreams {
        /// The key's name.
        key: Arc<str>,
        /// Its `maxConnections`.
        max: usize,
    },
    /// Every place among `maxSessions` is taken.
    #[error(
        "mcpmux holds as many client sessions and event streams as it may (maxSessions); try again later"
    )]
    Full,
    /// The gateway is shutting down.
    #[error("mcpmux is shutting down; try again later")]
    ShuttingDown,
    /// The server speaks only the legacy HTTP+SSE transport.
    #[error(
        "server {0:?} speaks only the legacy HTTP+SSE transport (2024-11-05); open GET /servers/{0}/sse"
    )]
    LegacyOnly(String),
    /// A legacy message POST naming no open SSE stream of this caller and server.
    #[error(
        "no open SSE stream of this server and key has this session; open GET /servers/{0}/sse again"
    )]
    NoLegacySession(String),
    /// The server's instance the request went to is gone (its entry changed, or it
    /// restarted) before the answer did.
    #[error(
        "server {0:?} changed or restarted before it answered; send the request again (initialize first if the server answers 404 for its session)"
    )]
    InstanceGone(String),
    /// The upstream could not be reached, did not answer in time, or answered unusably.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl RouteError {
    /// The gateway error code (`error.data.gateway`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoServerNamed | Self::BadServerName | Self::TooLarge(_) | Self::NotJsonRpc(_) => {
                ErrorCode::BadFrame
            }
            Self::UnknownServer(_) => ErrorCode::UnknownServer,
            Self::Batch => ErrorCode::Batch,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::TooManyStreams { .. } | Self::Full => ErrorCode::TooManySessions,
            Self::ShuttingDown => ErrorCode::ServerUnavailable,
            Self::LegacyOnly(_) => ErrorCode::UpstreamError,
            Self::NoLegacySession(_) | Self::InstanceGone(_) => ErrorCode::SessionLost,
            Self::Upstream(err) => err.code(),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoServerNamed
            | Self::BadServerName
            | Self::NotJsonRpc(_)
            | Self::Batch
            | Self::LegacyOnly(_) => StatusCode::BAD_REQUEST,
            Self::UnknownServer(_) | Self::NoLegacySession(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Full | Self::ShuttingDown | Self::InstanceGone(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(err) => match err.code() {
                ErrorCode::ServerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The answer, about `server` (if one was named) and the request `id` (if known).
    pub fn about(self, server: Option<&str>, id: Option<&RawValue>) -> Refused {
        Refused {
            error: self,
            server: server.map(str::to_owned),
            id: id.map(RawValue::to_owned),
        }
    }
}

/// A refused or failed request, ready to be answered.
#[derive(Debug)]
pub struct Refused {
    /// What went wrong.
    pub error: RouteError,
    /// The server the request named, if any.
    pub server: Option<String>,
    /// The JSON-RPC request's id, if the request was one and could be read.
    pub id: Option<Box<RawValue>>,
}

impl From<RouteError> for Refused {
    fn from(error: RouteError) -> Self {
        error.about(None, None)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let retry_after_ms = match &self.error {
            RouteError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        };
        let body = error_body(
            self.id.as_deref(),
            self.error.code(),
            &self.error.to_string(),
            self.server.as_deref(),
            retry_after_ms,
        );
        let mut response = (self.error.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(ms) = retry_after_ms {
            headers.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
        }
        response
    }
}

/// A JSON-RPC error response: `error.code` -32001 for `timeout`, -32000 otherwise;
/// `error.data` with the gateway code, the server and, when rate limited, the wait.
pub fn error_body(
    id: Option<&RawValue>,
    code: ErrorCode,
    message: &str,
    server: Option<&str>,
    retry_after_ms: Option<u64>,
) -> String {
    let mut data = serde_json::Map::new();
    data.insert("gateway".into(), code.as_str().into());
    if let Some(server) = server {
        data.insert("server".into(), server.into());
    }
    if let Some(ms) = retry_after_ms {
        data.insert("retry_after_ms".into(), ms.into());
    }
    let error = serde_json::json!({
        "code": code.jsonrpc_code(),
        "message": message,
        "data": data,
    });
    let id = id.map_or("null", RawValue::get);
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    async fn parse(response: Response) -> (StatusCode, Value) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn an_unknown_server_is_404_with_the_request_id() {
        let id: Box<RawValue> = serde_json::from_str(r#""call-1""#).unwrap();
        let refused = RouteError::UnknownServer("nowhere".into()).about(Some("nowhere"), Some(&id));
        let (status, body) = parse(refused.into_response()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["id"], "call-1");
        assert_eq!(body["error"]["code"], -32000);
        assert_eq!(
            body["error"]["data"],
            json!({"gateway": "unknown_server", "server": "nowhere"})
        );
    }

    #[tokio::test]
    async fn upstream_failures_map_to_502_503_504() {
        let cases = [
            (
                UpstreamError::Unavailable("down"),
                503,
                "server_unavailable",
            ),
            (
                UpstreamError::Connect("refused".into()),
                503,
                "server_unavailable",
            ),
            (
                UpstreamError::Timeout(std::time::Duration::from_secs(1)),
                504,
                "timeout",
            ),
            (
                UpstreamError::Protocol("html".into()),
                502,
                "upstream_error",
            ),
        ];
        for (error, status, code) in cases {
            let (got, body) = parse(Refused::from(RouteError::from(error)).into_response()).await;
            assert_eq!(got.as_u16(), status, "{code}");
            assert_eq!(body["id"], Value::Null);
            assert_eq!(body["error"]["data"]["gateway"], code);
        }
    }

    #[tokio::test]
    async fn rate_limited_answers_say_when_to_retry() {
        let error = RouteError::RateLimited {
            message: "slow down".into(),
            retry_after_ms: 1200,
        };
        let response = error.about(Some("s"), None).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let (status, body) = parse(response).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["data"]["retry_after_ms"], 1200);
    }
}
