//! One client session's upstream session with one server: carries the client's JSON-RPC
//! messages as POSTs, forwards every event of every response stream and of the
//! standalone GET stream, and guarantees that each request carried is answered: by the
//! upstream, or by a JSON-RPC error the gateway writes with the request's own id.
//!
//! Lifecycle: created lazily by the first message for a server. An `initialize` always
//! gets a fresh `UpstreamSession`; until its reply headers bring the `Mcp-Session-Id`,
//! later messages wait ([`barrier`]). Messages reach the server in the order the client
//! sent them wherever that order carries meaning ([`order`]). The session ends once, for
//! one reason ([`UpstreamEnd`]); ending cancels its streams, fails its in-flight requests and,
//! unless the upstream already forgot it, deletes it upstream.
//!
//! Parts: [`exchange`] carries one message over Streamable HTTP and forwards its
//! replies; [`driver`] runs a session's exchanges in one task; [`fallback`] is the glue
//! to the legacy HTTP+SSE transport.

mod barrier;
mod driver;
mod exchange;
mod fallback;
mod order;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{OnceCell, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::barrier::Barrier;
use self::driver::Driver;
use self::order::{Sequencer, Ticket};
use super::legacy::LegacySession;
use super::link::Link;
use super::listener::Listener;
use super::{Endpoint, UpstreamError};
use crate::jsonrpc::{self, Head, Kind};
use crate::metrics::{Direction, OpenGuard, Outcome, RequestMeter};
use crate::protocol::{ErrorCode, SessionState};
use crate::registry::Server;
use crate::store::sessions::{UpstreamIds, recordable_id, request_field};

/// The most a DELETE at the end of a session may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an upstream session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEnd {
    /// The client sent `close`.
    Closed,
    /// The client sent a new `initialize`.
    Replaced,
    /// The client session is over (its socket closed, its resume window passed, the
    /// gateway is stopping).
    ClientSessionEnded,
    /// The upstream forgot it (404) or its server restarted; the reason says which.
    Lost(String),
    /// The server was removed from the configuration, or the client's key may no longer
    /// use it: its requests in flight are answered as for an unknown server.
    Removed,
    /// The gateway is draining with a shared session store: the upstream session is
    /// left to the instance that resumes its client session (not deleted).
    HandedOver,
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
    /// Tells this request from a later one that reused its id (numbered per client
    /// session, so that requests of its other upstream sessions never share one).
    serial: u64,
    /// Recorded in flight in the shared session store ([`UpstreamSession::request_carried`]).
    recorded: bool,
    /// Its place in the order of the session's messages.
    ticket: Ticket,
    /// Held while the request is in flight.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Counts a request once it is answered (only requests have one).
    meter: Option<RequestMeter>,
}

impl Carried {
    /// Takes the in-flight permit, for a task that outlives the exchange.
    fn take_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Counts the request's end (the first call for a request; nothing otherwise).
    fn finish(&self, outcome: Outcome) {
        if let Some(meter) = &self.meter {
            meter.finish(outcome);
        }
    }

    /// What an answer to it ends in the record of requests in flight (its canonical id
    /// and serial), if it was recorded.
    fn answers(&self) -> Option<(&str, u64)> {
        let key = self.id_key.as_deref().filter(|_| self.recorded)?;
        Some((key, self.serial))
    }

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
    barrier: Barrier,
    order: Sequencer,
    ended: OnceLock<UpstreamEnd>,
    cancel: CancellationToken,
    /// Requests in flight, by canonical id, so `notifications/cancelled` can end them.
    inflight: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// The legacy HTTP+SSE session, for legacy servers, once opened.
    legacy: OnceCell<Arc<LegacySession>>,
    /// Counts the session among those open with its server, from `open` to its end.
    open: Mutex<Option<OpenGuard>>,
    /// The span of its tasks: every line about it names the server and the session.
    span: tracing::Span,
    /// This session's message exchanges, so that its end can wait for their answers.
    exchanges: TaskTracker,
    /// The task that runs them (among the client session's tasks).
    driver: Driver,
}

impl std::fmt::Debug for UpstreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSession")
            .field("server", &self.server.name)
            .field("ended", &self.ended.get())
            .finish_non_exhaustive()
    }
}

impl UpstreamSession {
    /// A session that will carry `first` (an initialize puts it behind the barrier at once),
    /// for the client session whose log id is `session`.
    pub fn new(server: Arc<Server>, link: Link, initializing: bool, session: &str) -> Arc<Self> {
        let span = tracing::info_span!(parent: None, "upstream", server = %server.name, session);
        Arc::new(Self {
            server,
            link,
            endpoint: OnceCell::new(),
            barrier: Barrier::new(initializing),
            order: Sequencer::default(),
            ended: OnceLock::new(),
            cancel: CancellationToken::new(),
            inflight: Mutex::new(HashMap::new()),
            legacy: OnceCell::new(),
            open: Mutex::new(None),
            span,
            exchanges: TaskTracker::new(),
            driver: Driver::default(),
        })
    }

    /// Goes on with an upstream session another instance opened, by its stored ids:
    /// requests carry its `Mcp-Session-Id` and protocol version, and its standalone
    /// stream is reopened after its last event. Without an event id to resume after,
    /// the stream is opened afresh and the client is told that notifications sent
    /// meanwhile may be missing (a gap is never silent).
    pub fn adopt(server: Arc<Server>, link: Link, ids: UpstreamIds, session: &str) -> Arc<Self> {
        let adopted = Self::new(server, link, false, session);
        adopted.barrier.open(ids.session_id.as_deref());
        adopted.barrier.set_protocol_version(ids.protocol_version);
        adopted.opened();
        let listening = adopted.clone();
        let listen = async move {
            let ready = listening
                .endpoint
                .get_or_try_init(|| listening.server.ready_endpoint(listening.link.ready_wait))
                .await;
            if let Err(err) = ready {
                let message = format!(
                    "the server's event stream could not be reopened after the session moved ({err}); notifications sent meanwhile may be missing"
                );
                return listening.report_stream_gap(&message).await;
            }
            if ids.last_event_id.is_none() {
                let message = "the server's event stream was reopened after the session moved, with no event id to resume after; notifications sent meanwhile may be missing";
                listening.report_stream_gap(message).await;
            }
            // Stored again under this instance, with the id it resumes after.
            listening.record(ids.last_event_id.as_deref());
            Listener::new(listening.clone())
                .run(None, ids.last_event_id)
                .await;
        };
        let span = adopted.span.clone();
        adopted.link.tasks.spawn(listen.instrument(span));
        adopted
    }

    /// Records this session's ids for adoption by another instance (with a shared
    /// session store only), with the standalone stream's last event id. Called once an
    /// event's frame is in the outbox: the store's writer takes upstream ids before the
    /// frames, and writes them only with a batch that reaches every frame pushed before
    /// them, so an id is never stored ahead of its event.
    pub(in crate::upstream) fn record(&self, last_event_id: Option<&str>) {
        let Some(mirror) = &self.link.mirror else {
            return;
        };
        if self.is_ended() {
            return;
        }
        let (session_id, protocol_version) = self.barrier.headers();
        let ids = UpstreamIds {
            session_id,
            protocol_version,
            last_event_id: last_event_id.map(str::to_owned),
            movable: self.movable(),
        };
        mirror.upstream_changed(&self.server.name, Some(ids));
    }

    /// True when this session's ids are recorded in a shared session store.
    pub(in crate::upstream) fn is_mirrored(&self) -> bool {
        self.link.mirror.is_some()
    }

    /// Whether another instance could go on with this session, decided by the server's
    /// configured entry (so also before its child starts, and for remote servers, whose
    /// status has no pid): only with a remote server over Streamable HTTP. Not with a
    /// stdio server (its mcp-proxy child is local to this instance), nor over the legacy
    /// HTTP+SSE transport (bound to its stream), configured or detected.
    pub fn movable(&self) -> bool {
        self.server.reachable_anywhere()
            && !self.server.speaks_legacy_sse()
            && self
                .endpoint
                .get()
                .is_none_or(|e| e.transport != super::Transport::LegacySse)
    }

    /// The server this session is with.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Waits (up to `limit`) until every exchange of this ended session has finished,
    /// each request in flight answered.
    pub async fn settled(&self, limit: Duration) {
        self.exchanges.close();
        let _ = tokio::time::timeout(limit, self.exchanges.wait()).await;
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
    /// parsed head. Returns at once; the exchange runs in the session's driver task. Called for the
    /// client's messages one at a time, in the order the client sent them.
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
            serial: self.link.next_serial(),
            recorded: false,
            ticket: self.order.ticket(kind == Kind::Request),
            permit: Mutex::new(None),
            meter: None,
        };
        let metrics = &self.link.metrics;
        if kind == Kind::Request {
            match self.link.inflight.clone().try_acquire_owned() {
                Ok(permit) => carried.permit = Mutex::new(Some(permit)),
                Err(_) => {
                    let refused = Outcome::Gateway(ErrorCode::TooManyRequests);
                    metrics.request(&self.server.name, &carried.method, refused, None);
                    if carried.is_initialize() {
                        // Nothing will carry it: release the barrier it put up.
                        self.barrier.lower();
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
            carried.recorded = self.request_carried(&carried);
        } else {
            match self.link.carrying.clone().acquire_owned().await {
                Ok(permit) => carried.permit = Mutex::new(Some(permit)),
                Err(_) => return,
            }
        }
        let name = &self.server.name;
        metrics.message(name, Direction::ToServer, carried.body.len());
        if kind == Kind::Request {
            carried.meter = Some(RequestMeter::start(metrics, name, &carried.method));
        }
        if carried.method == "notifications/cancelled" {
            if let Some(key) = params.request_id.map(jsonrpc::id_key) {
                // After the notification is carried, stop reading the cancelled request's
                // stream: mcp-proxy would leave it open forever.
                let token = self.lock_inflight().remove(&key);
                if let Some((_, token)) = token {
                    let session = self.clone();
                    let exchange = self.exchanges.track_future(async move {
                        session.exchange_guarded(carried).await;
                        token.cancel();
                    });
                    return self.run(Box::pin(exchange));
                }
            }
        }
        let session = self.clone();
        let exchange = self
            .exchanges
            .track_future(session.exchange_guarded(carried));
        self.run(Box::pin(exchange));
    }

    /// Runs one exchange in the session's driver task.
    fn run(&self, exchange: driver::Exchange) {
        let tasks = &self.link.tasks;
        self.driver.run(exchange, tasks, &self.cancel, &self.span);
    }

    /// Ends the session for `why`. Only the first call counts.
    pub async fn end(&self, why: UpstreamEnd) {
        if self.ended.set(why.clone()).is_err() {
            return;
        }
        self.cancel.cancel();
        drop(self.lock_open().take());
        tracing::debug!(parent: &self.span, end = ?why, "upstream session ended");
        let session_id = self.barrier.end();
        if let Some(mirror) = &self.link.mirror {
            if !matches!(
                why,
                UpstreamEnd::HandedOver | UpstreamEnd::ClientSessionEnded
            ) {
                mirror.upstream_changed(&self.server.name, None);
            }
        }
        match why {
            // Left for the instance that resumes the client session.
            UpstreamEnd::HandedOver => {}
            // The upstream forgot the session, or its instance is gone.
            UpstreamEnd::Lost(reason) => {
                self.link
                    .push_session(&self.server.name, SessionState::Lost, Some(&reason))
                    .await;
            }
            UpstreamEnd::Closed
            | UpstreamEnd::Replaced
            | UpstreamEnd::ClientSessionEnded
            | UpstreamEnd::Removed => {
                if let (Some(id), Some(endpoint)) = (session_id, self.endpoint.get()) {
                    self.delete_upstream(endpoint.clone(), id);
                }
            }
        }
    }

    /// Counts the session as open with its server (it got its upstream session), until
    /// it ends.
    fn opened(&self) {
        let mut open = self.lock_open();
        // `end` marks the session ended before it takes the guard: an ended session is
        // never counted again.
        if !self.is_ended() && open.is_none() {
            *open = Some(self.link.metrics.upstream_session_opened(&self.server.name));
            tracing::debug!(parent: &self.span, "upstream session open");
        }
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, Option<OpenGuard>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes upstream session `id`, in a task that may outlive this session.
    fn delete_upstream(&self, endpoint: Arc<Endpoint>, id: String) {
        let http = self.link.http.clone();
        let delete = async move {
            let _ = tokio::time::timeout(DELETE_TIMEOUT, http.delete(&endpoint, &id)).await;
        };
        self.link
            .background
            .spawn(delete.instrument(self.span.clone()));
    }

    fn end_error(&self) -> UpstreamError {
        match self.ended.get() {
            Some(UpstreamEnd::Lost(reason)) => UpstreamError::SessionLost(reason.clone()),
            Some(UpstreamEnd::Removed) => {
                UpstreamError::UnknownServer(self.server.name.to_string())
            }
            _ => UpstreamError::SessionClosed,
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

    /// The span of the session's tasks.
    pub(super) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The server's name.
    pub(super) fn server_name(&self) -> &str {
        &self.server.name
    }

    /// How long a long-lived upstream stream may stay silent before it counts as broken.
    pub(super) fn stream_idle_timeout(&self) -> Duration {
        self.link.stream_idle_timeout
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
        let answers = carried.answers();
        if !self
            .link
            .refuse_answering(name, request_id, reference, (code, message), answers)
            .await
        {
            tracing::debug!(server = %name, "client gone before an error could be reported");
        }
    }

    /// With a shared session store, records a request carried to a session that can
    /// move as in flight, so that the instance that takes the client session over
    /// answers it if this one stops first. Its answer ends the record
    /// ([`Link::push_answer`]). A request whose id is too long ([`recordable_id`]) is
    /// not recorded. True when recorded.
    fn request_carried(&self, carried: &Carried) -> bool {
        let (Some(mirror), Some(id), Some(key)) = (&self.link.mirror, &carried.id, &carried.id_key)
        else {
            return false;
        };
        let id = id.get();
        if !recordable_id(id, key) {
            tracing::debug!(server = %self.server.name, "a request id too long to record in flight");
            return false;
        }
        if !self.movable() {
            return false;
        }
        let field = request_field(&self.server.name, key);
        mirror.request_started(field, carried.serial, id);
        true
    }

    /// A request's exchange is over: a request that ended with no answer (`settled`:
    /// cancelled by the client) leaves the record of requests in flight. One that
    /// failed unanswered (its client session closed) stays recorded: the instance that
    /// takes the session over answers it.
    fn request_over(&self, carried: &Carried, settled: bool) {
        if !(settled && carried.recorded) {
            return;
        }
        if let (Some(mirror), Some(key)) = (&self.link.mirror, &carried.id_key) {
            let field = request_field(&self.server.name, key);
            mirror.request_ended(&field, carried.serial, 0);
        }
    }

    fn lock_inflight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}
