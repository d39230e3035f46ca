//! Upstream MCP servers over Streamable HTTP: where they are ([`Endpoint`]), how an
//! exchange fails ([`UpstreamError`]), the HTTP exchanges themselves ([`http`]), the
//! event-stream parser ([`sse`]) and one client's session with one server ([`session`]).

pub mod http;
pub mod legacy;
pub mod link;
mod listener;
pub mod session;
pub mod sse;

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::protocol::ErrorCode;

/// Where one server instance answers, and the headers every request to it carries.
#[derive(Debug)]
pub struct Endpoint {
    /// The Streamable HTTP endpoint (`…/mcp`).
    pub url: reqwest::Url,
    /// Headers for every request: the child's API key, or a remote server's configured headers.
    pub headers: HeaderMap,
    /// Which instance of the server this is; a restart makes a new generation, and
    /// upstream sessions of an older generation are lost.
    pub generation: u64,
    /// How to talk to it.
    pub transport: Transport,
}

/// The HTTP transport an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Streamable HTTP (2025 revisions and 2026-07-28).
    #[default]
    StreamableHttp,
    /// Streamable HTTP, falling back to the legacy transport when an initialize is
    /// refused (the specification's backwards-compatibility rule; remote servers).
    Detect,
    /// The legacy HTTP+SSE transport (2024-11-05): a GET event stream and POSTs to the
    /// URL its `endpoint` event names.
    LegacySse,
}

/// Why a message could not be carried to, or answered by, an upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The server is not ready (starting, restarting or down).
    #[error("server is {0}; wait for its status to be ready")]
    Unavailable(&'static str),
    /// The TCP/TLS connection could not be made.
    #[error("could not connect to the server: {0}")]
    Connect(String),
    /// No answer in time.
    #[error("the server did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// HTTP 404 on a request that carried a session id: the upstream session is gone.
    #[error("the upstream session no longer exists (HTTP 404); send initialize again")]
    SessionGone,
    /// Any other error status.
    #[error("the server answered HTTP {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body, for the client to read.
        body: String,
    },
    /// The reply was not usable (wrong content type, bad JSON, a 202 for a request).
    #[error("the server's reply is not usable: {0}")]
    Protocol(String),
    /// The response stream broke or ended before the response.
    #[error("the server's response stream ended before the response: {0}")]
    StreamCut(String),
    /// One message exceeded `maxUpstreamMessageBytes`.
    #[error("a message from the server exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The client ended the upstream session (`close` or a new `initialize`).
    #[error("the upstream session was closed by the client")]
    SessionClosed,
    /// The upstream session was lost (expired, or the server restarted).
    #[error("the upstream session was lost: {0}")]
    SessionLost(String),
    /// No server has this name (any more): the same answer as for one never configured.
    #[error("no server is named {0:?}; the welcome frame lists the servers")]
    UnknownServer(String),
}

impl UpstreamError {
    /// The gateway error code clients see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable(_) | Self::Connect(_) => ErrorCode::ServerUnavailable,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::SessionGone | Self::SessionLost(_) => ErrorCode::SessionLost,
            Self::SessionClosed => ErrorCode::SessionClosed,
            Self::UnknownServer(_) => ErrorCode::UnknownServer,
            Self::Status { .. }
            | Self::Protocol(_)
            | Self::StreamCut(_)
            | Self::TooLarge { .. } => ErrorCode::UpstreamError,
        }
    }
}
