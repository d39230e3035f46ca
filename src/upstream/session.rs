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
use tokio::sync::{OnceCell, OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use super::http::{EventStream, Headers, Reply};
use super::legacy::{Deliver, LegacySession};
use super::link::Link;
use super::listener::Listener;
use super::{Endpoint, Transport, UpstreamError};
use crate::jsonrpc::{self, Head, Kind};
use crate::protocol::{ErrorCode, SessionState};
use crate::registry::Server;

/// How often one response stream is resumed before its request fails.
const STREAM_RESUMES: u32 = 3;
/// How long a finished response stream is given to end by itself before it is dropped.
const STREAM_END_GRACE: Duration = Duration::from_secs(1);
/// The most a DELETE at the end of a session may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The legacy HTTP+SSE session, for legacy servers, once opened.
    legacy: OnceCell<Arc<LegacySession>>,
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
            legacy: OnceCell::new(),
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

    /// Carries one client message: `body` is its bytes exactly as received, `head` its
    /// parsed head. Returns at once; the exchange runs in its own task.
    pub async fn carry(
        self: &Arc<Self>,
        body: Bytes,
        head: &Head<'_>,
        reference: Option<&RawValue>,
    ) {
        let kind = head.kind();
        let params = head.params();
        let mut carried = Carried {
            body,
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
                    if carried.is_initialize() {
                        // Nothing will carry it: release the barrier it put up.
                        self.phase.send_replace(Phase::Fresh);
                    }
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
        } else {
            match self.link.carrying.clone().acquire_owned().await {
                Ok(permit) => carried._permit = Some(permit),
                Err(_) => return,
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
                self.link
                    .push_session(&self.server.name, SessionState::Lost, Some(&reason))
                    .await;
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
        if endpoint.transport == Transport::LegacySse || self.server.speaks_legacy_sse() {
            return self.exchange_legacy(&endpoint, carried).await;
        }
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
        let outcome = match self
            .link
            .http
            .post(&endpoint, headers, carried.body.clone())
            .await
        {
            Ok(outcome) => outcome,
            Err(
                refused @ UpstreamError::Status {
                    status: 400 | 404 | 405,
                    ..
                },
            ) if carried.is_initialize() && endpoint.transport == Transport::Detect => {
                return self.fall_back_to_legacy(&endpoint, carried, refused).await;
            }
            Err(err) => return Err(err),
        };
        if carried.is_initialize() {
            self.phase.send_replace(Phase::Open {
                session_id: outcome.session_id.clone(),
            });
            self.link
                .push_session(&self.server.name, SessionState::Open, None)
                .await;
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

    /// The backwards-compatibility rule of the Streamable HTTP transport: a server that
    /// refuses a POSTed initialize with 400, 404 or 405 may be a legacy HTTP+SSE server.
    /// If its URL then opens an SSE stream with an `endpoint` event, the server is
    /// remembered as legacy; otherwise the original refusal stands.
    async fn fall_back_to_legacy(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        carried: &Carried,
        refused: UpstreamError,
    ) -> Result<(), UpstreamError> {
        if let Err(err) = self
            .legacy
            .get_or_try_init(|| self.open_legacy(endpoint))
            .await
        {
            tracing::debug!(server = %self.server.name, %err, "not a legacy HTTP+SSE server either");
            return Err(refused);
        }
        tracing::info!(server = %self.server.name, "server speaks the legacy HTTP+SSE transport");
        self.server.remember_legacy_sse();
        self.exchange_legacy(endpoint, carried).await
    }

    /// Carries one message over the legacy HTTP+SSE session (opened by the first
    /// message): POST it, then, for a request, wait until its response was delivered.
    async fn exchange_legacy(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        carried: &Carried,
    ) -> Result<(), UpstreamError> {
        let legacy = self
            .legacy
            .get_or_try_init(|| self.open_legacy(endpoint))
            .await?
            .clone();
        let request_id = carried
            .id_key
            .clone()
            .filter(|_| carried.kind == Kind::Request);
        if carried.is_initialize() {
            // The session exists once its stream is open; the initialize result may
            // arrive on it before the POST's own reply, so `open` goes first.
            self.phase.send_replace(Phase::Open { session_id: None });
            self.link
                .push_session(&self.server.name, SessionState::Open, None)
                .await;
        }
        let waiter = legacy.post(carried.body.clone(), request_id).await?;
        match waiter {
            Some(answered) => answered.await.unwrap_or_else(|_| {
                Err(UpstreamError::StreamCut(
                    "the legacy session was dropped".into(),
                ))
            }),
            None => Ok(()),
        }
    }

    /// Opens the legacy session: every message on its stream goes to the client, and
    /// the upstream session is lost when the stream ends.
    async fn open_legacy(
        self: &Arc<Self>,
        endpoint: &Endpoint,
    ) -> Result<Arc<LegacySession>, UpstreamError> {
        // The delivery holds the link, not the session, so no cycle keeps either alive.
        let (link, name) = (self.link.clone(), self.server.name.clone());
        let deliver: Deliver = Arc::new(move |text: String| {
            let (link, name) = (link.clone(), name.clone());
            Box::pin(async move { link.push_rpc(&name, &text).await })
        });
        let http = &self.link.http;
        let opened = LegacySession::open(
            http.raw(),
            endpoint,
            deliver,
            http.header_timeout(),
            http.max_message_bytes(),
            self.cancel.clone(),
            &self.link.tasks,
        )
        .await?;
        let legacy = Arc::new(opened);
        let (session, watched) = (self.clone(), legacy.clone());
        self.link.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = session.cancel.cancelled() => {}
                _ = watched.closed() => {
                    session.end(End::Lost("the server closed its SSE stream".into())).await;
                }
            }
        });
        Ok(legacy)
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
        match self.open_stream(Some(&last_event_id)).await? {
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
        let answers =
            head.kind() == Kind::Response && head.id.map(jsonrpc::id_key) == carried.id_key;
        if answers && carried.is_initialize() {
            self.on_initialized(text).await;
        }
        if !self.link.push_rpc(&self.server.name, text).await {
            return Err(UpstreamError::SessionClosed);
        }
        // Only once queued: an exchange cut off while waiting for room must still be
        // answered with an error.
        if answers {
            answered.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Forwards one event that answers no request of ours (the GET stream's); false
    /// once the client session is over.
    pub(super) async fn forward_event(&self, text: &str) -> bool {
        let name = &self.server.name;
        match Head::parse(text) {
            Ok(head) => {
                if head.says_stdio_server_gone() {
                    self.server.suspect();
                }
                self.link.push_rpc(name, text).await
            }
            Err(err) => {
                let message = format!("the server sent invalid JSON on its event stream: {err}");
                self.link
                    .push_error(ErrorCode::UpstreamError, &message, Some(name), None)
                    .await
            }
        }
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
        if self.open_session_id().is_none() || self.endpoint.get().is_none() {
            return;
        }
        let first = self.open_stream(None).await;
        self.link
            .tasks
            .spawn(Listener::new(self.clone()).run(first));
    }

    /// The upstream session id, once initialize has given one.
    fn open_session_id(&self) -> Option<String> {
        match &*self.phase.borrow() {
            Phase::Open { session_id } => session_id.clone(),
            _ => None,
        }
    }

    /// Opens the standalone GET stream, or with `last_event_id` resumes a broken stream
    /// (a response stream or the GET stream). `None` when the session ended meanwhile.
    pub(super) async fn open_stream(
        &self,
        last_event_id: Option<&str>,
    ) -> Option<Result<Option<EventStream>, UpstreamError>> {
        let endpoint = self.endpoint.get()?;
        let session_id = self.open_session_id();
        let version = self
            .protocol_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let headers = Headers {
            session_id: session_id.as_deref(),
            protocol_version: version.as_deref(),
            last_event_id,
            ..Headers::default()
        };
        tokio::select! {
            _ = self.cancel.cancelled() => None,
            opened = self.link.http.get_stream(endpoint, headers) => Some(opened),
        }
    }

    /// Tells the client that notifications of this session may be missing.
    pub(super) async fn report_stream_gap(&self, message: &str) {
        tracing::warn!(server = %self.server.name, "{message}");
        let name = &self.server.name;
        self.link
            .push_error(ErrorCode::UpstreamError, message, Some(name), None)
            .await;
    }

    /// Resolves when the session has ended.
    pub(super) async fn ended(&self) {
        self.cancel.cancelled().await;
    }

    /// The server's name.
    pub(super) fn server_name(&self) -> &str {
        &self.server.name
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
        let request_id = carried
            .id
            .as_deref()
            .filter(|_| carried.kind == Kind::Request);
        let reference = carried.reference.as_deref();
        let name = &self.server.name;
        if !self
            .link
            .refuse(name, request_id, reference, code, message)
            .await
        {
            tracing::debug!(server = %name, "client gone before an error could be reported");
        }
    }

    fn lock_inflight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}
