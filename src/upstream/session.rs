//! One client session's upstream session with one server: carries the client's JSON-RPC
//! messages as POSTs, forwards every event of every response stream and of the
//! standalone GET stream, and guarantees that each request carried is answered: by the
//! upstream, or by a JSON-RPC error the gateway writes with the request's own id.
//!
//! Lifecycle: created lazily by the first message for a server. An `initialize` always
//! gets a fresh `UpstreamSession`; until its reply headers bring the `Mcp-Session-Id`,
//! later messages wait (the "initialize barrier"). The session ends once, for one
//! reason ([`End`]); ending cancels its streams, fails its in-flight requests and, unless
//! the upstream already forgot it, sends DELETE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{EventStream, Headers, HttpClient, Reply};
use super::{Endpoint, UpstreamError};
use crate::jsonrpc::{self, Head, Kind};
use crate::outbox::Outbox;
use crate::protocol::{self, ErrorCode, GatewayFrame, SessionState};
use crate::registry::Server;

/// How long a GET stream that keeps failing is retried before the gateway gives up on
/// it (the session itself stays usable for requests).
const GET_STREAM_RETRIES: u32 = 5;
/// How often one response stream is resumed before its request fails.
const STREAM_RESUMES: u32 = 3;
/// How long a finished response stream is given to end by itself before it is dropped.
const STREAM_END_GRACE: Duration = Duration::from_secs(1);
/// The most a DELETE at the end of a session may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a client session lends its upstream sessions.
#[derive(Debug, Clone)]
pub struct Link {
    /// The client session's outbound queue.
    pub outbox: Arc<Outbox>,
    /// The gateway's HTTP client.
    pub http: HttpClient,
    /// The client session's tasks (message exchanges, GET streams).
    pub tasks: TaskTracker,
    /// Gateway-wide tasks that may outlive the client session (DELETEs).
    pub background: TaskTracker,
    /// Requests in flight for the whole client session, bounded by `maxInflightRequests`.
    pub inflight: Arc<Semaphore>,
    /// The most one request may take, end to end.
    pub request_timeout: Duration,
    /// How long a message waits for a starting server.
    pub ready_wait: Duration,
}

/// Why an upstream session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client sent `close`.
    Closed,
    /// The client sent a new `initialize`.
    Replaced,
    /// The client session is over (socket gone, gateway stopping).
    Detached,
    /// The upstream forgot it (404) or its server restarted; the reason says which.
    Lost(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No initialize carried: messages go without a session id.
    Fresh,
    /// An initialize is on its way; other messages wait for its reply headers.
    Initializing,
    /// Initialized; the id is `None` for servers that do not use sessions.
    Open { session_id: Option<String> },
}

/// A client message on its way upstream.
struct Carried {
    body: Bytes,
    kind: Kind,
    /// The request's id, verbatim, for the gateway's own error responses.
    id: Option<Box<RawValue>>,
    /// The id's canonical form, to recognise the response.
    id_key: Option<String>,
    method: String,
    /// `Some(version)` for messages of the stateless 2026-07-28 revision.
    stateless_version: Option<String>,
    /// `Mcp-Name` for the stateless revision.
    name: Option<String>,
    reference: Option<Box<RawValue>>,
    /// Set by the client's `notifications/cancelled`.
    cancel: CancellationToken,
    /// Tells this request from a later one that reused its id.
    serial: u64,
    /// Held while the request is in flight.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Carried {
    fn is_initialize(&self) -> bool {
        self.kind == Kind::Request
            && self.method == "initialize"
            && self.stateless_version.is_none()
    }
}

/// One client's upstream session with one server.
pub struct UpstreamSession {
    server: Arc<Server>,
    link: Link,
    endpoint: OnceCell<Arc<Endpoint>>,
    phase: watch::Sender<Phase>,
    /// The protocol version negotiated by initialize, sent on later requests.
    protocol_version: Mutex<Option<String>>,
    ended: OnceLock<End>,
    cancel: CancellationToken,
    /// Requests in flight, by canonical id, so `notifications/cancelled` can end them.
    inflight: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// Numbers the messages carried.
    serials: AtomicU64,
}

impl std::fmt::Debug for UpstreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSession")
            .field("server", &self.server.name)
            .field("phase", &*self.phase.borrow())
            .field("ended", &self.ended.get())
            .finish()
    }
}

impl UpstreamSession {
    /// A session that will carry `first` (an initialize puts it behind the barrier at once).
    pub fn new(server: Arc<Server>, link: Link, initializing: bool) -> Arc<Self> {
        let phase = if initializing {
            Phase::Initializing
        } else {
            Phase::Fresh
        };
        Arc::new(Self {
            server,
            link,
            endpoint: OnceCell::new(),
            phase: watch::Sender::new(phase),
            protocol_version: Mutex::new(None),
            ended: OnceLock::new(),
            cancel: CancellationToken::new(),
            inflight: Mutex::new(HashMap::new()),
            serials: AtomicU64::new(0),
        })
    }

    /// True once the session has ended; a new message then needs a new session.
    pub fn is_ended(&self) -> bool {
        self.ended.get().is_some()
    }

    /// The generation of the server instance this session lives on, once known.
    pub fn generation(&self) -> Option<u64> {
        self.endpoint.get().map(|e| e.generation)
    }

    /// Carries one client message. `head` is the message's parsed head. Returns at once;
    /// the exchange runs in its own task.
    pub async fn carry(
        self: &Arc<Self>,
        message: &RawValue,
        head: &Head<'_>,
        reference: Option<&RawValue>,
    ) {
        let kind = head.kind();
        let params = head.params();
        let mut carried = Carried {
            body: Bytes::copy_from_slice(message.get().as_bytes()),
            kind,
            id: head.id.map(ToOwned::to_owned),
            id_key: head.id.map(jsonrpc::id_key),
            method: head.method().to_owned(),
            stateless_version: params.meta.and_then(|m| m.protocol_version).map(Into::into),
            name: match head.method() {
                "tools/call" | "prompts/get" => params.name.map(Into::into),
                "resources/read" => params.uri.map(Into::into),
                _ => None,
            },
            reference: reference.map(ToOwned::to_owned),
            cancel: CancellationToken::new(),
            serial: self.serials.fetch_add(1, Ordering::Relaxed),
            _permit: None,
        };
        if kind == Kind::Request {
            match self.link.inflight.clone().try_acquire_owned() {
                Ok(permit) => carried._permit = Some(permit),
                Err(_) => {
                    let error =
                        "too many requests in flight on this connection; wait for some to finish";
                    self.report(&carried, ErrorCode::TooManyRequests, error)
                        .await;
                    return;
                }
            }
            if let Some(key) = &carried.id_key {
                let entry = (carried.serial, carried.cancel.clone());
                self.lock_inflight().insert(key.clone(), entry);
            }
        }
        if carried.method == "notifications/cancelled" {
            if let Some(key) = params.request_id.map(jsonrpc::id_key) {
                // After the notification is carried, stop reading the cancelled request's
                // stream: mcp-proxy would leave it open forever.
                let token = self.lock_inflight().remove(&key);
                if let Some((_, token)) = token {
                    let session = self.clone();
                    self.link.tasks.spawn(async move {
                        session.exchange_guarded(carried).await;
                        token.cancel();
                    });
                    return;
                }
            }
        }
        let session = self.clone();
        self.link.tasks.spawn(session.exchange_guarded(carried));
    }

    /// Ends the session for `why`. Only the first call counts.
    pub async fn end(&self, why: End) {
        if self.ended.set(why.clone()).is_err() {
            return;
        }
        self.cancel.cancel();
        let session_id = match &*self.phase.borrow() {
            Phase::Open { session_id } => session_id.clone(),
            _ => None,
        };
        match why {
            End::Lost(reason) => {
                self.emit_session(SessionState::Lost, Some(&reason)).await;
            }
            End::Closed | End::Replaced | End::Detached => {
                if let (Some(id), Some(endpoint)) = (session_id, self.endpoint.get().cloned()) {
                    let http = self.link.http.clone();
                    self.link.background.spawn(async move {
                        let _ =
                            tokio::time::timeout(DELETE_TIMEOUT, http.delete(&endpoint, &id)).await;
                    });
                }
            }
        }
    }

    /// Runs one exchange to its end and makes sure a request is answered.
    async fn exchange_guarded(self: Arc<Self>, carried: Carried) {
        let answered = AtomicBool::new(false);
        let outcome = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(self.end_error()),
            _ = carried.cancel.cancelled() => Ok(()),
            result = tokio::time::timeout(self.link.request_timeout, self.exchange(&carried, &answered)) => {
                result.unwrap_or(Err(UpstreamError::Timeout(self.link.request_timeout)))
            }
        };
        if let Some(key) = &carried.id_key {
            let mut inflight = self.lock_inflight();
            if inflight
                .get(key)
                .is_some_and(|(serial, _)| *serial == carried.serial)
            {
                inflight.remove(key);
            }
        }
        if carried.is_initialize() && *self.phase.borrow() == Phase::Initializing {
            self.phase.send_replace(Phase::Fresh);
        }
        if let Err(error) = outcome {
            if matches!(error, UpstreamError::SessionGone) {
                self.end(End::Lost(
                    "the upstream session expired or was deleted".into(),
                ))
                .await;
            }
            let answered = answered.load(Ordering::Acquire);
            if !(answered || self.is_ended() && matches!(self.ended.get(), Some(End::Detached))) {
                self.report(&carried, error.code(), &error.to_string())
                    .await;
            }
        }
    }

    fn end_error(&self) -> UpstreamError {
        match self.ended.get() {
            Some(End::Lost(reason)) => UpstreamError::SessionLost(reason.clone()),
            _ => UpstreamError::SessionClosed,
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        carried: &Carried,
        answered: &AtomicBool,
    ) -> Result<(), UpstreamError> {
        let endpoint = self
            .endpoint
            .get_or_try_init(|| self.server.ready_endpoint(self.link.ready_wait))
            .await?
            .clone();
        let (session_id, protocol_version) = if let Some(version) = &carried.stateless_version {
            (None, Some(version.clone()))
        } else if carried.is_initialize() {
            (None, None)
        } else {
            self.wait_past_initialize().await?
        };
        let headers = Headers {
            session_id: session_id.as_deref(),
            protocol_version: protocol_version.as_deref(),
            method: carried
                .stateless_version
                .as_ref()
                .map(|_| carried.method.as_str()),
            name: carried
                .stateless_version
                .as_ref()
                .and(carried.name.as_deref()),
            last_event_id: None,
        };
        let outcome = self
            .link
            .http
            .post(&endpoint, headers, carried.body.clone())
            .await?;
        if carried.is_initialize() {
            self.phase.send_replace(Phase::Open {
                session_id: outcome.session_id.clone(),
            });
            self.emit_session(SessionState::Open, None).await;
        }
        match outcome.reply {
            Reply::Accepted if carried.kind == Kind::Request => Err(UpstreamError::Protocol(
                "202 Accepted for a request, which needs a response".into(),
            )),
            Reply::Accepted => Ok(()),
            Reply::Json(body) => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| UpstreamError::Protocol("the JSON body is not UTF-8".into()))?;
                if text.trim_start().starts_with('[') {
                    let messages: Vec<&RawValue> = serde_json::from_str(text)
                        .map_err(|e| UpstreamError::Protocol(format!("bad JSON: {e}")))?;
                    for message in messages {
                        self.forward(message.get(), carried, answered).await?;
                    }
                    Ok(())
                } else {
                    self.forward(text, carried, answered).await
                }
            }
            Reply::Events(stream) => self.drain(*stream, carried, answered).await,
        }
    }

    /// Forwards every event of a response stream until the response has arrived and the
    /// stream has ended (or lingered past [`STREAM_END_GRACE`]). A stream that breaks
    /// before the response is resumed with `Last-Event-ID`, so every event reaches the
    /// client once; only when that fails does the request fail.
    async fn drain(
        self: &Arc<Self>,
        mut stream: EventStream,
        carried: &Carried,
        answered: &AtomicBool,
    ) -> Result<(), UpstreamError> {
        let mut resumes = 0;
        loop {
            let next = if answered.load(Ordering::Acquire) {
                match tokio::time::timeout(STREAM_END_GRACE, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(()),
                }
            } else {
                stream.next().await
            };
            let failure = match next {
                Some(Ok(event)) if event.data.trim().is_empty() => continue,
                Some(Ok(event)) => {
                    self.forward(&event.data, carried, answered).await?;
                    continue;
                }
                None if answered.load(Ordering::Acquire) || carried.kind != Kind::Request => {
                    return Ok(());
                }
                Some(Err(_)) if answered.load(Ordering::Acquire) => return Ok(()),
                None => UpstreamError::StreamCut("it closed with no response".into()),
                Some(Err(err)) => err,
            };
            let resumable = matches!(failure, UpstreamError::StreamCut(_))
                && carried.stateless_version.is_none();
            if resumable && resumes < STREAM_RESUMES {
                let last_event_id = stream.last_event_id().map(str::to_owned);
                if let Some(resumed) = self.resume_stream(last_event_id).await {
                    resumes += 1;
                    stream = resumed;
                    continue;
                }
            }
            return Err(failure);
        }
    }

    /// Reopens a broken stream after its last event (2025 revisions; the 2026-07-28
    /// revision has no resumption).
    async fn resume_stream(&self, last_event_id: Option<String>) -> Option<EventStream> {
        let last_event_id = last_event_id?;
        let endpoint = self.endpoint.get()?;
        let session_id = match &*self.phase.borrow() {
            Phase::Open { session_id } => session_id.clone(),
            _ => None,
        };
        let version = self
            .protocol_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let headers = Headers {
            session_id: session_id.as_deref(),
            protocol_version: version.as_deref(),
            last_event_id: Some(&last_event_id),
            ..Headers::default()
        };
        match self.link.http.get_stream(endpoint, headers).await {
            Ok(Some(stream)) => {
                tracing::debug!(server = %self.server.name, %last_event_id, "response stream resumed");
                Some(stream)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(server = %self.server.name, %err, "response stream could not be resumed");
                None
            }
        }
    }

    /// Forwards one upstream message to the client, noting the answer to `carried`.
    async fn forward(
        self: &Arc<Self>,
        text: &str,
        carried: &Carried,
        answered: &AtomicBool,
    ) -> Result<(), UpstreamError> {
        let head = Head::parse(text)
            .map_err(|e| UpstreamError::Protocol(format!("the server sent invalid JSON: {e}")))?;
        if head.says_stdio_server_gone() {
            self.server.suspect();
        }
        if head.kind() == Kind::Response && head.id.map(jsonrpc::id_key) == carried.id_key {
            if carried.is_initialize() {
                self.on_initialized(text).await;
            }
            answered.store(true, Ordering::Release);
        }
        if self.push_message(text).await {
            Ok(())
        } else {
            Err(UpstreamError::SessionClosed)
        }
    }

    /// Queues one upstream message for the client; false once the client session is over.
    async fn push_message(&self, text: &str) -> bool {
        let name = &self.server.name;
        self.link
            .outbox
            .push(|seq| protocol::rpc_frame(name, seq, text))
            .await
            .is_ok()
    }

    /// After a successful initialize, before its result is forwarded: remember the
    /// version and open the GET stream, so that nothing the server sends after the
    /// client has seen the result can be missed.
    async fn on_initialized(self: &Arc<Self>, response: &str) {
        let version = jsonrpc::negotiated_version(response);
        *self
            .protocol_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = version.clone();
        let session_id = match &*self.phase.borrow() {
            Phase::Open { session_id } => session_id.clone(),
            _ => None,
        };
        let (Some(session_id), Some(endpoint)) = (session_id, self.endpoint.get().cloned()) else {
            return;
        };
        let listener = Listener {
            session: self.clone(),
            endpoint,
            session_id,
            version,
        };
        let first = listener.open(None).await;
        self.link.tasks.spawn(listener.run(first));
    }

    async fn wait_past_initialize(
        &self,
    ) -> Result<(Option<String>, Option<String>), UpstreamError> {
        let mut rx = self.phase.subscribe();
        let phase = rx
            .wait_for(|p| *p != Phase::Initializing)
            .await
            .map_err(|_| UpstreamError::SessionClosed)?
            .clone();
        let session_id = match phase {
            Phase::Open { session_id } => session_id,
            _ => None,
        };
        let version = self
            .protocol_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((session_id, version))
    }

    /// Tells the client a message failed: a JSON-RPC error for a request, an `error`
    /// frame otherwise.
    async fn report(&self, carried: &Carried, code: ErrorCode, message: &str) {
        let name = &self.server.name;
        let pushed = match (&carried.id, carried.kind) {
            (Some(id), Kind::Request) => {
                let response = jsonrpc::error_response(id, code, message, name);
                self.link
                    .outbox
                    .push(|seq| protocol::rpc_frame(name, seq, &response))
                    .await
            }
            _ => {
                let reference = carried.reference.as_deref();
                self.link
                    .outbox
                    .push(|seq| {
                        GatewayFrame::Error {
                            seq,
                            code,
                            message,
                            server: Some(name),
                            reference,
                        }
                        .encode()
                    })
                    .await
            }
        };
        if pushed.is_err() {
            tracing::debug!(server = %name, "client gone before an error could be reported");
        }
    }

    async fn emit_session(&self, state: SessionState, reason: Option<&str>) {
        let name = &self.server.name;
        let _ = self
            .link
            .outbox
            .push(|seq| {
                GatewayFrame::Session {
                    server: name,
                    seq,
                    state,
                    reason,
                }
                .encode()
            })
            .await;
    }

    fn lock_inflight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The standalone GET stream of one upstream session: forwards everything on it
/// (logs, list changes, resource updates) and resumes it with `Last-Event-ID` when it breaks.
struct Listener {
    session: Arc<UpstreamSession>,
    endpoint: Arc<Endpoint>,
    session_id: String,
    version: Option<String>,
}

impl Listener {
    /// Opens (or resumes) the stream; `None` when the session ended meanwhile.
    async fn open(
        &self,
        last_event_id: Option<&str>,
    ) -> Option<Result<Option<EventStream>, UpstreamError>> {
        let headers = Headers {
            session_id: Some(&self.session_id),
            protocol_version: self.version.as_deref(),
            last_event_id,
            ..Headers::default()
        };
        tokio::select! {
            _ = self.session.cancel.cancelled() => None,
            opened = self.session.link.http.get_stream(&self.endpoint, headers) => Some(opened),
        }
    }

    async fn run(self, first: Option<Result<Option<EventStream>, UpstreamError>>) {
        let session = &self.session;
        let cancel = &session.cancel;
        let mut last_event_id: Option<String> = None;
        let mut failures = 0u32;
        let mut next_open = first;
        loop {
            let opened = match next_open.take() {
                Some(opened) => opened,
                None => match self.open(last_event_id.as_deref()).await {
                    Some(opened) => opened,
                    None => return,
                },
            };
            if cancel.is_cancelled() {
                return;
            }
            match opened {
                Ok(None) => return,
                Ok(Some(mut stream)) => {
                    loop {
                        let next = tokio::select! {
                            _ = cancel.cancelled() => return,
                            next = stream.next() => next,
                        };
                        match next {
                            Some(Ok(event)) if event.data.trim().is_empty() => {}
                            Some(Ok(event)) => {
                                failures = 0;
                                if !self.forward(&event.data).await {
                                    return;
                                }
                            }
                            Some(Err(err)) => {
                                tracing::debug!(server = %session.server.name, %err, "GET stream broke");
                                break;
                            }
                            None => break,
                        }
                        if let Some(id) = stream.last_event_id() {
                            if last_event_id.as_deref() != Some(id) {
                                last_event_id = Some(id.to_owned());
                            }
                        }
                    }
                    if let Some(id) = stream.last_event_id() {
                        last_event_id = Some(id.to_owned());
                    }
                }
                Err(UpstreamError::SessionGone) => {
                    session
                        .end(End::Lost(
                            "the upstream session expired or was deleted".into(),
                        ))
                        .await;
                    return;
                }
                Err(err) => {
                    tracing::debug!(server = %session.server.name, %err, "GET stream failed to open");
                }
            }
            failures += 1;
            if failures > GET_STREAM_RETRIES {
                tracing::warn!(server = %session.server.name, "giving up on the GET stream after repeated failures");
                return;
            }
            let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Forwards one event; false once the client session is closed.
    async fn forward(&self, text: &str) -> bool {
        let session = &self.session;
        let name = &session.server.name;
        match Head::parse(text) {
            Ok(head) => {
                if head.says_stdio_server_gone() {
                    session.server.suspect();
                }
                session.push_message(text).await
            }
            Err(err) => {
                let message = format!("the server sent invalid JSON on its event stream: {err}");
                session
                    .link
                    .outbox
                    .push(|seq| {
                        GatewayFrame::Error {
                            seq,
                            code: ErrorCode::UpstreamError,
                            message: &message,
                            server: Some(name),
                            reference: None,
                        }
                        .encode()
                    })
                    .await
                    .is_ok()
            }
        }
    }
}
