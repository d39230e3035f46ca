//! The HTTP exchanges of the Streamable HTTP transport: POST a message, open the
//! standalone GET stream (or resume one with `Last-Event-ID`), DELETE a session.
//!
//! Replies are classified, not interpreted: `202`, a JSON body, or an event stream that
//! yields raw SSE events. Bodies are read in chunks and bounded by
//! `maxUpstreamMessageBytes`; a JSON body or one event larger than that is an error.
//!
//! Redirects are not followed: a 3xx is an error naming its status, so that the
//! configured headers never reach another address. Error texts never show an endpoint's
//! secrets: reqwest's own texts are taken without
//! their URL, and a quoted error body has the endpoint's URL credentials and header
//! values masked ([`crate::redact`]), since servers echo requests in error pages.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};

use super::sse::{SseEvent, SseParser};
use super::{Endpoint, UpstreamError};
use crate::redact::Scrubber;

/// The most of an error body that is quoted back to the client.
const ERROR_BODY_QUOTE: usize = 512;
/// TCP keepalive on every upstream connection: the first probe after this much silence.
/// Long-lived streams (the standalone GET, legacy SSE) may be silent for long; keepalive
/// notices a peer that vanished without closing (a NAT or load balancer that dropped the
/// flow), and keeps such middleboxes from dropping it.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Between unanswered keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is dead: about a minute of silence in all.
pub const TCP_KEEPALIVE_PROBES: u32 = 3;

/// Per-request headers beyond the endpoint's own.
#[derive(Debug, Default, Clone, Copy)]
pub struct Headers<'a> {
    /// `Mcp-Session-Id`.
    pub session_id: Option<&'a str>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// `Mcp-Method` (2026-07-28).
    pub method: Option<&'a str>,
    /// `Mcp-Name` (2026-07-28).
    pub name: Option<&'a str>,
    /// `Last-Event-ID`, to resume a stream.
    pub last_event_id: Option<&'a str>,
}

/// What a POST came back with.
pub enum Reply {
    /// `202 Accepted`: nothing to forward.
    Accepted,
    /// An `application/json` body.
    Json(Bytes),
    /// A `text/event-stream` body.
    Events(Box<EventStream>),
}

/// A successful POST: the reply and the session id the upstream assigned, if any.
pub struct PostOutcome {
    /// `Mcp-Session-Id` from the reply headers.
    pub session_id: Option<String>,
    /// The body.
    pub reply: Reply,
}

/// The HTTP client shared by every upstream exchange of the gateway.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    /// How long to wait for response headers.
    header_timeout: Duration,
    /// The largest single upstream message accepted.
    max_message_bytes: usize,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

impl HttpClient {
    /// A client with a connection pool sized for many concurrent streams.
    pub fn new(header_timeout: Duration, max_message_bytes: usize) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE_IDLE)
            .tcp_keepalive_interval(TCP_KEEPALIVE_INTERVAL)
            .tcp_keepalive_retries(TCP_KEEPALIVE_PROBES)
            .connect_timeout(header_timeout)
            // A redirect would carry the configured headers (an API key, say) to wherever
            // the Location points; a 3xx is an error instead (`error_status`).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            header_timeout,
            max_message_bytes,
        })
    }

    /// How long to wait for response headers.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The largest single upstream message accepted.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The underlying client, for plain requests such as readiness probes.
    pub fn raw(&self) -> &reqwest::Client {
        &self.client
    }

    /// POSTs one JSON-RPC message.
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        headers: Headers<'_>,
        body: Bytes,
    ) -> Result<PostOutcome, UpstreamError> {
        let request = self
            .request(reqwest::Method::POST, endpoint, headers)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(body);
        let response = self.send(request).await?;
        let session_id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reply = match response.status() {
            StatusCode::ACCEPTED => Reply::Accepted,
            status if status.is_success() => self.classify(response).await?,
            _ => {
                let had_session = headers.session_id.is_some();
                return Err(error_status(response, had_session, &scrubber(endpoint)).await);
            }
        };
        Ok(PostOutcome { session_id, reply })
    }

    /// Opens (or, with `last_event_id`, resumes) a GET event stream. `Ok(None)` when the
    /// server offers no standalone stream (405).
    pub async fn get_stream(
        &self,
        endpoint: &Endpoint,
        headers: Headers<'_>,
    ) -> Result<Option<EventStream>, UpstreamError> {
        let request = self
            .request(reqwest::Method::GET, endpoint, headers)
            .header(header::ACCEPT, "text/event-stream");
        let response = self.send(request).await?;
        match response.status() {
            StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            status if status.is_success() => match self.classify(response).await? {
                Reply::Events(stream) => Ok(Some(*stream)),
                _ => Err(UpstreamError::Protocol(
                    "GET did not answer with text/event-stream".into(),
                )),
            },
            _ => {
                let had_session = headers.session_id.is_some();
                Err(error_status(response, had_session, &scrubber(endpoint)).await)
            }
        }
    }

    /// Ends an upstream session. Failures only matter to logs: the session is over for
    /// us either way, and mcp-proxy reaps idle sessions by itself.
    pub async fn delete(&self, endpoint: &Endpoint, session_id: &str) {
        let headers = Headers {
            session_id: Some(session_id),
            ..Headers::default()
        };
        let request = self.request(reqwest::Method::DELETE, endpoint, headers);
        match self.send(request).await {
            Ok(response) => {
                tracing::debug!(status = %response.status(), "upstream session deleted")
            }
            Err(err) => tracing::debug!(%err, "upstream session DELETE failed"),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        endpoint: &Endpoint,
        headers: Headers<'_>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method, endpoint.url.clone())
            .headers(endpoint.headers.clone());
        let optional = [
            ("mcp-session-id", headers.session_id),
            ("mcp-protocol-version", headers.protocol_version),
            ("mcp-method", headers.method),
            ("mcp-name", headers.name),
            ("last-event-id", headers.last_event_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                request = request.header(name, value);
            }
        }
        request
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(self.header_timeout, request.send()).await {
            Err(_) => Err(UpstreamError::Timeout(self.header_timeout)),
            Ok(Err(err)) => Err(send_error(err, self.header_timeout)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    async fn classify(&self, response: reqwest::Response) -> Result<Reply, UpstreamError> {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body: ByteStream = Box::pin(response.bytes_stream());
        if content_type.starts_with("text/event-stream") {
            Ok(Reply::Events(Box::new(EventStream::new(
                body,
                self.max_message_bytes,
            ))))
        } else if content_type.starts_with("application/json") {
            Ok(Reply::Json(
                read_bounded(body, self.max_message_bytes).await?,
            ))
        } else {
            Err(UpstreamError::Protocol(format!(
                "unexpected content type {content_type:?}"
            )))
        }
    }
}

/// A parsed event stream.
pub struct EventStream {
    body: ByteStream,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
}

impl EventStream {
    fn new(body: ByteStream, max_event_bytes: usize) -> Self {
        Self {
            body,
            parser: SseParser::new(max_event_bytes),
            ready: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// The next event; `None` at a clean end of the stream. An end in the middle of an
    /// event is an error ([`UpstreamError::StreamCut`]).
    pub async fn next(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            match self.body.next().await {
                None if self.parser.has_partial() => {
                    return Some(Err(UpstreamError::StreamCut(
                        "ended inside an event".into(),
                    )));
                }
                None => return None,
                Some(Err(err)) => return Some(Err(UpstreamError::StreamCut(describe(err)))),
                Some(Ok(chunk)) => {
                    if let Err(err) = self.parser.feed(&chunk, &mut self.scratch) {
                        return Some(Err(match err {
                            super::sse::SseError::EventTooLarge { limit } => {
                                UpstreamError::TooLarge { limit }
                            }
                            other => UpstreamError::Protocol(other.to_string()),
                        }));
                    }
                    self.ready.extend(self.scratch.drain(..));
                }
            }
        }
    }

    /// The id of the last event read, for `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id()
    }
}

async fn read_bounded(mut body: ByteStream, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::StreamCut(describe(e)))?;
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Classifies a failed request: no connection, a timeout, or a broken exchange.
pub(super) fn send_error(err: reqwest::Error, timeout: Duration) -> UpstreamError {
    if err.is_connect() {
        UpstreamError::Connect(describe(err))
    } else if err.is_timeout() {
        UpstreamError::Timeout(timeout)
    } else {
        UpstreamError::StreamCut(describe(err))
    }
}

/// What to mask in texts about `endpoint`.
fn scrubber(endpoint: &Endpoint) -> Scrubber {
    Scrubber::new(&endpoint.url, &endpoint.headers)
}

/// An error status, with the start of its body quoted for the client, `secrets` masked.
/// A 404 on a request that carried a session id means the upstream forgot the session.
pub(super) async fn error_status(
    response: reqwest::Response,
    had_session: bool,
    secrets: &Scrubber,
) -> UpstreamError {
    let status = response.status();
    if status == StatusCode::NOT_FOUND && had_session {
        return UpstreamError::SessionGone;
    }
    if status.is_redirection() {
        // Neither the Location nor a body that repeats it: it may carry the query.
        let body = "redirects are not followed; set the server's url to where it redirects";
        return UpstreamError::Status {
            status: status.as_u16(),
            body: body.into(),
        };
    }
    // Read past the quote by the longest secret, so that none is cut where the reading
    // stops and shown in part.
    let read = ERROR_BODY_QUOTE + secrets.longest();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while body.len() < read {
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let body = secrets.scrub(String::from_utf8_lossy(&body).trim());
    let mut end = body.len().min(ERROR_BODY_QUOTE);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    UpstreamError::Status {
        status: status.as_u16(),
        body: body[..end].to_owned(),
    }
}

/// An error with its causes, since reqwest's own Display hides the useful part; without
/// its URL, which may hold credentials.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
