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
use reqwest::header::{self, HeaderName, HeaderValue};

use super::sse::{SseEvent, SseParser};
use super::{Endpoint, UpstreamError};
use crate::redact::Scrubber;

/// The most of an error body that is quoted back to the client.
const ERROR_BODY_QUOTE: usize = 512;
const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const JSON_OR_EVENTS: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
const EVENTS: HeaderValue = HeaderValue::from_static("text/event-stream");
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

/// A POST answered with a success status: the session id the upstream assigned, if
/// any, and the reply, which may still be unusable (the id must be kept either way, to
/// delete the session it names).
pub struct PostOutcome {
    /// `Mcp-Session-Id` from the reply headers.
    pub session_id: Option<String>,
    /// The body.
    pub reply: Result<Reply, UpstreamError>,
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
    /// A client with a connection pool sized for many concurrent streams: mcp-proxy
    /// speaks HTTP/1.1 only, so every call in flight holds a connection, and a pool
    /// smaller than the calls in flight closes and reopens one per call.
    pub fn new(header_timeout: Duration, max_message_bytes: usize) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
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

    /// POSTs one JSON-RPC message (see [`announced_body`] to learn when it was written).
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        headers: Headers<'_>,
        body: impl Into<reqwest::Body>,
    ) -> Result<PostOutcome, UpstreamError> {
        let mut request = self.request(reqwest::Method::POST, endpoint, headers);
        let fixed = request.headers_mut();
        fixed.insert(header::CONTENT_TYPE, JSON);
        fixed.insert(header::ACCEPT, JSON_OR_EVENTS);
        *request.body_mut() = Some(body.into());
        let response = self.send(request).await?;
        let session_id = response
            .headers()
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reply = match response.status() {
            StatusCode::ACCEPTED => Ok(Reply::Accepted),
            status if status.is_success() => self.classify(response).await,
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
        let mut request = self.request(reqwest::Method::GET, endpoint, headers);
        request.headers_mut().insert(header::ACCEPT, EVENTS);
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

    /// A request built from the endpoint's parsed URL and header map, with no
    /// builder in between: the builder would merge the headers into a map of its own
    /// and parse every header name again, for each message.
    fn request(
        &self,
        method: reqwest::Method,
        endpoint: &Endpoint,
        headers: Headers<'_>,
    ) -> reqwest::Request {
        let mut request = reqwest::Request::new(method, endpoint.url.clone());
        let map = request.headers_mut();
        *map = endpoint.headers.clone();
        let optional = [
            (MCP_SESSION_ID, headers.session_id),
            (MCP_PROTOCOL_VERSION, headers.protocol_version),
            (MCP_METHOD, headers.method),
            (MCP_NAME, headers.name),
            (LAST_EVENT_ID, headers.last_event_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                map.insert(name, value);
            }
        }
        request
    }

    async fn send(&self, request: reqwest::Request) -> Result<reqwest::Response, UpstreamError> {
        match tokio::time::timeout(self.header_timeout, self.client.execute(request)).await {
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
            .unwrap_or("");
        let is = |prefix: &str| {
            content_type
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        };
        let (events, json) = (is("text/event-stream"), is("application/json"));
        // Copied only to be quoted in the error.
        let unexpected = (!events && !json).then(|| content_type.to_ascii_lowercase());
        let body: ByteStream = Box::pin(response.bytes_stream());
        if events {
            Ok(Reply::Events(Box::new(EventStream::new(
                body,
                self.max_message_bytes,
            ))))
        } else if json {
            Ok(Reply::Json(
                read_bounded(body, self.max_message_bytes).await?,
            ))
        } else {
            let content_type = unexpected.unwrap_or_default();
            Err(UpstreamError::Protocol(format!(
                "unexpected content type {content_type:?}"
            )))
        }
    }
}

/// A request body that calls `written` once its bytes have been handed to the HTTP
/// connection, for the order of an upstream session's messages. Its length is known, so
/// the request still carries `Content-Length`.
pub fn announced_body(
    data: Bytes,
    written: impl FnOnce() + Send + Sync + 'static,
) -> reqwest::Body {
    reqwest::Body::wrap(AnnouncedBody {
        data: Some(data),
        written: Some(Box::new(written)),
    })
}

struct AnnouncedBody {
    data: Option<Bytes>,
    written: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl http_body::Body for AnnouncedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = this
            .data
            .take()
            .map(|data| Ok(http_body::Frame::data(data)));
        if let Some(written) = this.written.take() {
            written();
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let length = self.data.as_ref().map_or(0, Bytes::len);
        http_body::SizeHint::with_exact(length as u64)
    }
}

/// A parsed event stream.
pub struct EventStream {
    body: ByteStream,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
    /// A parse fault, reported once the events before it have been taken.
    fault: Option<UpstreamError>,
    /// How long the stream may stay silent (no event, no comment) before it counts as
    /// broken; `None`: as long as it likes.
    idle_timeout: Option<Duration>,
}

impl EventStream {
    fn new(body: ByteStream, max_event_bytes: usize) -> Self {
        Self {
            body,
            parser: SseParser::new(max_event_bytes),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            fault: None,
            idle_timeout: None,
        }
    }

    /// The next event; `None` at a clean end of the stream. An end in the middle of an
    /// event is an error ([`UpstreamError::StreamCut`]).
    pub async fn next(&mut self) -> Option<Result<SseEvent, UpstreamError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if let Some(fault) = self.fault.take() {
                self.body = Box::pin(futures::stream::empty());
                return Some(Err(fault));
            }
            // Silence means death only for a server that has shown it sends keep-alives.
            let idle_timeout = self
                .idle_timeout
                .filter(|_| self.parser.comments_seen() > 0);
            let chunk = match idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, self.body.next()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        let silent = format!("no data for {} ms", idle.as_millis());
                        self.body = Box::pin(futures::stream::empty());
                        return Some(Err(UpstreamError::StreamCut(silent)));
                    }
                },
                None => self.body.next().await,
            };
            match chunk {
                None if self.parser.has_partial() => {
                    return Some(Err(UpstreamError::StreamCut(
                        "ended inside an event".into(),
                    )));
                }
                None => return None,
                Some(Err(err)) => return Some(Err(UpstreamError::StreamCut(describe(err)))),
                Some(Ok(chunk)) => {
                    let fed = self.parser.feed(&chunk, &mut self.scratch);
                    // Events completed before a fault are delivered before it.
                    self.ready.extend(self.scratch.drain(..));
                    if let Err(err) = fed {
                        self.fault = Some(match err {
                            super::sse::SseError::EventTooLarge { limit } => {
                                UpstreamError::TooLarge { limit }
                            }
                            other => UpstreamError::Protocol(other.to_string()),
                        });
                    }
                }
            }
        }
    }

    /// Makes a silence of `idle` (no bytes at all: keep-alive comments count as life)
    /// end the stream with [`UpstreamError::StreamCut`], as a broken connection would:
    /// a half-open connection otherwise goes unnoticed forever. It applies once the
    /// stream has sent a comment line: from a server that sends no keep-alives, silence
    /// proves nothing (TCP keep-alive still notices a dead peer).
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        self.idle_timeout = Some(idle);
    }

    /// The id of the last event read, for `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id()
    }
}

/// Reads a whole body of at most `limit` bytes. A body that arrives in one chunk (the
/// usual JSON reply) is copied once at its exact size: the chunk shares the pooled
/// connection's whole read buffer, which a reply waiting for room in a slow client's
/// queue would otherwise keep from being reused.
async fn read_bounded(mut body: ByteStream, limit: usize) -> Result<Bytes, UpstreamError> {
    let read = |chunk: Option<reqwest::Result<Bytes>>| {
        chunk
            .transpose()
            .map_err(|e| UpstreamError::StreamCut(describe(e)))
    };
    let Some(first) = read(body.next().await)? else {
        return Ok(Bytes::new());
    };
    if first.len() > limit {
        return Err(UpstreamError::TooLarge { limit });
    }
    let Some(second) = read(body.next().await)? else {
        return Ok(Bytes::copy_from_slice(&first));
    };
    let mut buf = BytesMut::from(first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
        next = read(body.next().await)?;
    }
    Ok(buf.freeze())
}

/// Classifies a failed request: no connection, a timeout, or a broken exchange.
pub(crate) fn send_error(err: reqwest::Error, timeout: Duration) -> UpstreamError {
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
pub(crate) async fn error_status(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Transport;

    #[test]
    fn per_request_headers_replace_configured_ones_of_the_same_name() {
        let client = HttpClient::new(Duration::from_secs(1), 1024).unwrap();
        let mut configured = reqwest::header::HeaderMap::new();
        configured.insert("authorization", HeaderValue::from_static("Bearer k"));
        configured.insert("mcp-session-id", HeaderValue::from_static("configured"));
        let endpoint = Endpoint {
            url: "http://127.0.0.1:9/mcp".parse().unwrap(),
            headers: configured,
            generation: 0,
            transport: Transport::StreamableHttp,
        };
        let headers = Headers {
            session_id: Some("s1"),
            protocol_version: Some("2025-11-25"),
            ..Headers::default()
        };
        let request = client.request(reqwest::Method::POST, &endpoint, headers);
        let sent = request.headers();
        assert_eq!(request.url(), &endpoint.url);
        assert_eq!(sent["authorization"], "Bearer k");
        let ids: Vec<_> = sent.get_all("mcp-session-id").iter().collect();
        assert_eq!(ids, [&HeaderValue::from_static("s1")]);
        assert_eq!(sent["mcp-protocol-version"], "2025-11-25");
        assert!(sent.get("mcp-method").is_none());
        assert!(sent.get("last-event-id").is_none());
    }

    fn stream_of(chunks: &[&'static [u8]], max_event_bytes: usize) -> EventStream {
        let chunks: Vec<reqwest::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        EventStream::new(Box::pin(futures::stream::iter(chunks)), max_event_bytes)
    }

    fn body_of(chunks: &[&'static [u8]]) -> ByteStream {
        let chunks: Vec<reqwest::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_json_body_is_read_whole_in_one_chunk_or_many_and_bounded() {
        let one = read_bounded(body_of(&[b"{\"id\":1}"]), 8).await.unwrap();
        assert_eq!(one, &b"{\"id\":1}"[..]);
        let many = read_bounded(body_of(&[b"{\"id\"", b":1", b"}"]), 8).await;
        assert_eq!(many.unwrap(), &b"{\"id\":1}"[..]);
        assert_eq!(read_bounded(body_of(&[]), 8).await.unwrap(), &b""[..]);
        for chunks in [&[&b"0123456789"[..]][..], &[b"01234", b"56789"]] {
            let over = read_bounded(body_of(chunks), 8).await;
            assert!(matches!(over, Err(UpstreamError::TooLarge { limit: 8 })));
        }
    }

    #[tokio::test]
    async fn events_before_a_fault_in_the_same_chunk_are_delivered_first() {
        let mut stream = stream_of(
            &[b"data: {\"id\":1}\n\ndata: {\"id\":2}\n\ndata: 0123456789abcdef\n\ndata: 3\n\n"],
            12,
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.data, "{\"id\":1}");
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.data, "{\"id\":2}");
        assert!(matches!(
            stream.next().await,
            Some(Err(UpstreamError::TooLarge { limit: 12 }))
        ));
        // The fault ends the stream: nothing after it is read.
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_counts_as_cut_after_its_idle_timeout() {
        let body = futures::stream::iter([Ok(Bytes::from_static(b": keepalive\n\ndata: 1\n\n"))])
            .chain(futures::stream::pending());
        let mut stream = EventStream::new(Box::pin(body), 1024);
        stream.set_idle_timeout(Duration::from_secs(60));
        assert_eq!(stream.next().await.unwrap().unwrap().data, "1");
        let started = tokio::time::Instant::now();
        assert!(matches!(
            stream.next().await,
            Some(Err(UpstreamError::StreamCut(_)))
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn invalid_utf8_after_an_event_keeps_the_event() {
        let mut stream = stream_of(&[b"data: ok\n\ndata: \xff\xfe\n\n"], 1024);
        assert_eq!(stream.next().await.unwrap().unwrap().data, "ok");
        assert!(matches!(
            stream.next().await,
            Some(Err(UpstreamError::Protocol(_)))
        ));
    }
}
