//! A client session: what a WebSocket's `hello` opens and a resume re-attaches. It owns
//! the session's upstream sessions (one per server), its outbox, and its view of server
//! status changes, and turns client frames into upstream traffic.
//!
//! A session is owned by exactly one task at a time: the connection task while a socket
//! is attached, a holder task ([`crate::resume`]) while it waits for a resume.
//!
//! The servers change while it lives: it keeps the set of servers it has shown its
//! client (in `welcome` and `status` frames), so that a server removed from the
//! configuration, or one its key may no longer use, is reported `removed` exactly once,
//! after the requests in flight to it have been answered as for an unknown server.
//! The wait for those answers runs in a task of the session, so that frames of other
//! servers keep flowing. Meanwhile the server may be added (or allowed) again: a status
//! frame for it, or a client frame to it, first waits for that task (at most
//! `REMOVAL_DRAIN`), so that nothing about the server comes before its `removed`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Grant, RateLimited};
use crate::context::{Place, SessionContext};
use crate::jsonrpc::{Head, Kind};
use crate::metrics::Outcome;
use crate::outbox::{Limits, Outbox};
use crate::protocol::ServerState;
use crate::protocol::{
    self, ClientFrame, ErrorCode, GatewayFrame, ServerEntry, SessionState, close_code,
    decode_client_frame,
};
use crate::registry::{Change, Server, StatusChange};
use crate::store::sessions::{
    Batch, KeptFrame, SessionMirror, SessionStore, SessionStoreError, StoredRequest, StoredSession,
    UpstreamIds, keep_from,
};
use crate::upstream::UpstreamError;
use crate::upstream::link::Link;
use crate::upstream::session::{UpstreamEnd, UpstreamSession};

/// How long a finished session waits for its exchanges to notice the end.
const TASKS_DRAIN: Duration = Duration::from_secs(2);
/// How long the requests in flight to a removed server may take to be answered before
/// `removed` is sent.
const REMOVAL_DRAIN: Duration = Duration::from_secs(2);

/// The most frames written to the store in one batch, and the most bytes of them (a
/// larger frame goes alone): one script call stays small, whatever the frames.
const MIRROR_BATCH: usize = 64;
const MIRROR_BATCH_BYTES: usize = 256 * 1024;
/// The shortest interval at which a session's keys are refreshed while idle.
const MIN_IDLE_REFRESH: Duration = Duration::from_millis(100);
/// The most the DELETE of an upstream session that was not adopted may take.
const UNADOPTED_DELETE: Duration = Duration::from_secs(2);
/// Why a stdio server's upstream session is lost after its client session moved.
pub const STOPPED_INSTANCE: &str = "the instance that ran it stopped";

/// The message of the error that answers a request in flight on a stopped instance.
pub const LOST_REQUEST: &str = "the gateway instance carrying this request stopped before its answer arrived; the request may or may not have run at the server";

/// A reason to close the socket: a close code and a sentence.
pub type CloseReason = (u16, String);

/// One client session.
pub struct ClientSession {
    /// The session id clients resume with: this instance's name and 128 random bits
    /// ([`protocol::session_id`]).
    pub id: String,
    context: Arc<SessionContext>,
    /// What upstream sessions borrow from this session (its outbox among it).
    pub link: Link,
    upstreams: HashMap<String, Arc<UpstreamSession>>,
    /// Status changes of every server and replaced access rules; kept with the session
    /// so none is missed while it moves between tasks.
    pub changes: broadcast::Receiver<Change>,
    /// The servers this session may use and see, and its key's rate.
    grant: Grant,
    /// Client frames read after `hello`, on every socket of the session: a client that
    /// resumes resends the frames after this count (protocol.md, section 8).
    received: u64,
    /// The servers its client has been shown (in `welcome` or a `status` frame) and not
    /// told `removed` since.
    shown: BTreeSet<Arc<str>>,
    /// With a shared session store: what is written to it.
    mirror: Option<Arc<SessionMirror>>,
    /// The task writing it.
    pump: Option<Pump>,
    /// The tasks sending a `removed` once the answers in flight to that server settled:
    /// at most one per server name, finished ones pruned at each removal.
    removals: HashMap<Arc<str>, JoinHandle<()>>,
    /// This session's place among `maxSessions`, given back when it ends (is dropped).
    _place: Place,
}

/// The task that writes a session's frames and ids to the shared store.
struct Pump {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ClientSession {
    /// A new session with a fresh id, in the place its socket was admitted to, allowed
    /// what `grant` allows. `changes` must have been subscribed before `grant` was
    /// decided, so that no replacement of the access rules goes unseen.
    pub fn new(
        context: Arc<SessionContext>,
        place: Place,
        grant: Grant,
        changes: broadcast::Receiver<Change>,
    ) -> Self {
        let id = protocol::session_id::new(&context.config.instance, rand::random());
        let mut session = Self::build(context, place, grant, changes, id);
        session.start_mirror(true, 0, Vec::new());
        session
    }

    /// A session another instance owned, taken from the shared store: `frames` (every
    /// frame after `last_seq`, contiguous) are written first; its upstream sessions are
    /// adopted with [`Self::adopt_upstreams`].
    pub fn from_store(
        context: Arc<SessionContext>,
        (place, grant, changes): (Place, Grant, broadcast::Receiver<Change>),
        id: String,
        last_seq: u64,
        stored: &StoredSession,
        frames: Vec<KeptFrame>,
    ) -> Self {
        let mut session = Self::build(context, place, grant, changes, id);
        session.received = stored.received;
        session
            .link
            .outbox
            .restore(last_seq, stored.last_seq, frames);
        session.start_mirror(false, stored.received, stored.upstreams.clone());
        session
    }

    fn build(
        context: Arc<SessionContext>,
        place: Place,
        grant: Grant,
        changes: broadcast::Receiver<Change>,
        id: String,
    ) -> Self {
        let config = &context.config;
        let shared = context.session_store.shared();
        let limits = Limits {
            queue_bytes: config.outbound_queue_bytes,
            keep_frames: config.resume_max_frames,
            keep_bytes: config.resume_max_bytes,
        };
        let mirror = shared.then(|| SessionMirror::new(id.clone(), 0));
        let outbox = match shared {
            true => Outbox::mirrored(limits, &context.resume_budget),
            false => Outbox::with_budget(limits, &context.resume_budget),
        };
        let link = Link {
            outbox,
            http: context.http.clone(),
            tasks: TaskTracker::new(),
            background: context.background.clone(),
            inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
            carrying: Arc::new(Semaphore::new(config.max_inflight_requests)),
            request_timeout: config.request_timeout,
            ready_wait: config.connect_timeout,
            stream_idle_timeout: config.upstream_idle_timeout,
            metrics: context.metrics.clone(),
            mirror: mirror.clone(),
            serials: Arc::default(),
        };
        Self {
            id,
            changes,
            context,
            link,
            upstreams: HashMap::new(),
            grant,
            received: 0,
            shown: BTreeSet::new(),
            mirror,
            pump: None,
            removals: HashMap::new(),
            _place: place,
        }
    }

    /// Starts writing this session to the shared store (if one is configured); `open`
    /// records it as new first. `upstreams`: the upstream sessions the store already
    /// holds of a session taken from it.
    fn start_mirror(&mut self, open: bool, received: u64, upstreams: Vec<(String, UpstreamIds)>) {
        let Some(mirror) = &self.mirror else {
            return;
        };
        mirror.set_received(received);
        let writer = MirrorWriter {
            store: self.context.session_store.clone(),
            outbox: self.link.outbox.clone(),
            mirror: mirror.clone(),
            key: self.grant.key_name().cloned(),
            // Clamped: a tiny window must not make the refresh spin.
            idle: (self.context.config.resume_window / 3).max(MIN_IDLE_REFRESH),
            upstreams: upstreams.into_iter().collect(),
        };
        let stop = CancellationToken::new();
        let span = tracing::info_span!(parent: None, "store", session = %self.log_id());
        let task = tokio::spawn(tracing::Instrument::instrument(
            writer.run(open, stop.clone()),
            span,
        ));
        self.pump = Some(Pump { stop, task });
    }

    /// Adopts the upstream sessions a client session taken from the store had on its
    /// previous instance: those with remote servers go on by their ids; the others (stdio
    /// servers, whose children died with that instance; servers gone or not allowed
    /// here) are reported `lost`. Adopted sessions count against `maxUpstreamSessions`
    /// as sessions opened here do: one past the limit is reported `lost` too (saying
    /// so), and its upstream session is deleted, since nothing will use it.
    pub async fn adopt_upstreams(&mut self, upstreams: Vec<(String, UpstreamIds)>) {
        let limit = self.context.config.max_upstream_sessions;
        for (server, ids) in upstreams {
            let target = self
                .context
                .servers
                .get(&server)
                .filter(|_| self.grant.may_use(&server));
            let reason = match target {
                Some(target) if ids.movable && ids.session_id.is_some() => {
                    if self.upstreams.len() < limit {
                        let adopted =
                            UpstreamSession::adopt(target, self.link.clone(), ids, self.log_id());
                        self.upstreams.insert(server, adopted);
                        continue;
                    }
                    self.delete_unadopted(&target, ids);
                    format!(
                        "this connection already holds {limit} upstream sessions (maxUpstreamSessions) on the instance that took it over"
                    )
                }
                _ => STOPPED_INSTANCE.to_owned(),
            };
            if let Some(mirror) = &self.mirror {
                mirror.upstream_changed(&server, None);
            }
            // No writer runs yet and the replay may fill the queue: never wait.
            self.link
                .push_session_now(&server, SessionState::Lost, Some(&reason));
        }
    }

    /// Answers the requests the store holds as in flight on the instance that owned
    /// this session before (it stopped before their answers were stored): each gets a
    /// JSON-RPC error response with its own id, `session_lost`, after the replayed
    /// frames; its record goes with the write that stores that answer.
    pub fn answer_lost_requests(&self, requests: Vec<StoredRequest>) {
        let Some(mirror) = &self.mirror else {
            return;
        };
        for request in requests {
            let StoredRequest { field, server, id } = request;
            let Ok(raw) = serde_json::from_str::<&RawValue>(&id) else {
                tracing::warn!(server = %server, "the session store holds a request in flight with a malformed id; it cannot be answered");
                mirror.request_forgotten(&field, 0, &id);
                continue;
            };
            let response =
                crate::jsonrpc::error_response(raw, ErrorCode::SessionLost, LOST_REQUEST, &server);
            // No writer runs yet and the replay may fill the queue: never wait.
            let pushed = self.link.outbox.push_now(|seq| {
                mirror.request_forgotten(&field, seq, &id);
                protocol::rpc_frame(&server, seq, &response)
            });
            if pushed.is_err() {
                tracing::debug!("client session closed before a lost request could be answered");
            }
        }
    }

    /// Deletes a remote upstream session that was not adopted, in the background, if
    /// its server is ready (otherwise the server's own idle timeout reaps it).
    fn delete_unadopted(&self, server: &Server, ids: UpstreamIds) {
        let (Some(endpoint), Some(id)) = (server.status().endpoint, ids.session_id) else {
            return;
        };
        let http = self.link.http.clone();
        self.context.background.spawn(async move {
            let delete = http.delete(&endpoint, &id);
            let _ = tokio::time::timeout(UNADOPTED_DELETE, delete).await;
        });
    }

    /// The start of the id, for logs (its instance and 8 hex digits): the whole id lets
    /// its holder resume the session.
    pub fn log_id(&self) -> &str {
        protocol::session_id::logged(&self.id)
    }

    /// What the session shares with the others.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.context
    }

    /// The `welcome` frame for a socket attaching to this session; the servers it lists
    /// count as shown.
    pub fn welcome(&mut self, resumed: bool) -> String {
        let config = &self.context.config;
        let snapshot = self.context.servers.snapshot();
        let visible: Vec<&Arc<Server>> = snapshot
            .values()
            .filter(|s| self.grant.may_use(&s.name))
            .collect();
        self.shown.extend(visible.iter().map(|s| s.name.clone()));
        let servers = visible
            .iter()
            .map(|s| ServerEntry {
                name: &s.name,
                state: s.state(),
            })
            .collect();
        GatewayFrame::Welcome {
            session: &self.id,
            protocol: protocol::SUBPROTOCOL,
            resumed,
            resume_window_ms: millis(config.resume_window),
            heartbeat_ms: millis(config.heartbeat),
            received: self.received,
            servers,
        }
        .encode()
    }

    /// Handles one text frame (its bytes, which carried messages are sliced from
    /// without a copy); `Some` closes the connection.
    pub async fn on_text(&mut self, frame: Utf8Bytes) -> Option<CloseReason> {
        self.received += 1;
        if let Some(mirror) = &self.mirror {
            mirror.set_received(self.received);
        }
        let decoded = decode_client_frame(frame.as_str());
        let reference = decoded.reference;
        match decoded.frame {
            Err(err) => {
                self.error_frame(err.code, &err.message, err.server.as_deref(), reference)
                    .await;
            }
            Ok(ClientFrame::Hello { .. }) => {
                return Some((
                    close_code::PROTOCOL_VIOLATION,
                    "hello was already received".into(),
                ));
            }
            Ok(ClientFrame::Ping) => {
                let _ = self
                    .link
                    .outbox
                    .push_unsequenced(GatewayFrame::Pong.encode());
            }
            Ok(ClientFrame::Ack { seq }) => {
                self.link.outbox.ack(seq);
                if let Some(mirror) = &self.mirror {
                    mirror.acked(seq);
                }
            }
            Ok(ClientFrame::Close { server }) => self.on_close(&server, reference).await,
            Ok(ClientFrame::Rpc { server, message }) => {
                // The same buffer, counted once more: the message is not copied.
                let body = Bytes::from(frame.clone()).slice_ref(message.get().as_bytes());
                return self.on_rpc(&server, message, body, reference).await;
            }
        }
        None
    }

    /// Answers a binary message, which the protocol does not have.
    pub async fn on_binary(&mut self) {
        self.received += 1;
        if let Some(mirror) = &self.mirror {
            mirror.set_received(self.received);
        }
        let message = "binary frames are not part of mcpmux.v1; send each frame as JSON text";
        self.error_frame(ErrorCode::BadFrame, message, None, None)
            .await;
    }

    async fn on_rpc(
        &mut self,
        server: &str,
        message: &RawValue,
        body: Bytes,
        reference: Option<&RawValue>,
    ) -> Option<CloseReason> {
        // Every rpc frame counts against the key's rate, whatever it names.
        if let Err(limited) = self.grant.check_rate(server).await {
            return self.rate_limited(server, message, reference, limited).await;
        }
        self.carry_rpc(server, message, body, reference).await;
        None
    }

    /// Answers an `rpc` frame refused for rate: a JSON-RPC error for a request, an
    /// `error` frame otherwise; closes with 4029 after a streak of refusals.
    async fn rate_limited(
        &self,
        server: &str,
        message: &RawValue,
        reference: Option<&RawValue>,
        limited: RateLimited,
    ) -> Option<CloseReason> {
        let RateLimited {
            retry_after_ms,
            message: why,
            close,
        } = limited;
        let head = Head::parse(message.get()).ok();
        let request = head.as_ref().filter(|h| h.kind() == Kind::Request);
        if let Some(key) = self.grant.key_name() {
            self.context.metrics.rate_limited(key);
        }
        // Counted for the server only when it is one the key may use.
        let target = self.context.servers.get(server);
        if let (Some(head), Some(target)) = (request, target.filter(|_| self.grant.may_use(server)))
        {
            let refused = Outcome::Gateway(ErrorCode::RateLimited);
            let metrics = &self.context.metrics;
            metrics.request(&target.name, head.method(), refused, None);
        }
        match request.and_then(|h| h.id) {
            Some(id) => {
                let response = protocol::rate_limited_response(id, &why, server, retry_after_ms);
                self.link.push_rpc(server, &response).await;
            }
            None => {
                let frame = |seq| {
                    GatewayFrame::RateLimited {
                        seq,
                        code: ErrorCode::RateLimited,
                        message: &why,
                        server,
                        reference,
                        retry_after_ms,
                    }
                    .encode()
                };
                let _ = self.link.outbox.push(frame).await;
            }
        }
        close.then(|| {
            let why = "rate limited without pause for 10 s; reconnect later".to_owned();
            (close_code::RATE_LIMITED, why)
        })
    }

    async fn carry_rpc(
        &mut self,
        server: &str,
        message: &RawValue,
        body: Bytes,
        reference: Option<&RawValue>,
    ) {
        // Nothing about a server added again may come before its delayed `removed`.
        self.after_removal(server).await;
        let head = match Head::parse(message.get()) {
            Ok(head) if head.kind() != Kind::Invalid => head,
            Ok(_) => {
                let why = "`message` is not a JSON-RPC message: it needs a `method` or an `id`";
                return self
                    .error_frame(ErrorCode::BadFrame, why, Some(server), reference)
                    .await;
            }
            Err(err) => {
                let why = format!("`message` is not a JSON-RPC message: {err}");
                return self
                    .error_frame(ErrorCode::BadFrame, &why, Some(server), reference)
                    .await;
            }
        };
        // A server the key may not use is answered exactly as one that does not exist.
        let visible = self
            .context
            .servers
            .get(server)
            .filter(|_| self.grant.may_use(server));
        let Some(target) = visible else {
            let why = UpstreamError::UnknownServer(server.to_owned()).to_string();
            return self
                .refuse(server, &head, reference, ErrorCode::UnknownServer, &why)
                .await;
        };
        let initialize = head.kind() == Kind::Request
            && head.method() == "initialize"
            && head
                .params()
                .meta
                .and_then(|m| m.protocol_version)
                .is_none();
        let upstream = match self.upstreams.get(server) {
            Some(existing)
                if !initialize
                    && !existing.is_ended()
                    && Arc::ptr_eq(existing.server(), &target) =>
            {
                existing.clone()
            }
            _ => {
                if let Some(previous) = self.upstreams.remove(server) {
                    // A session on a server of that name that was removed and added again
                    // is over, as for the removal.
                    let why = match previous.server().is_removed() {
                        true => UpstreamEnd::Removed,
                        false => UpstreamEnd::Replaced,
                    };
                    previous.end(why).await;
                }
                if self.upstreams.len() >= self.context.config.max_upstream_sessions {
                    if head.kind() == Kind::Request {
                        let refused = Outcome::Gateway(ErrorCode::TooManySessions);
                        let metrics = &self.context.metrics;
                        metrics.request(&target.name, head.method(), refused, None);
                    }
                    let why = format!(
                        "this connection already holds {} upstream sessions (maxUpstreamSessions); close one first",
                        self.upstreams.len()
                    );
                    return self
                        .refuse(server, &head, reference, ErrorCode::TooManySessions, &why)
                        .await;
                }
                let fresh =
                    UpstreamSession::new(target, self.link.clone(), initialize, self.log_id());
                self.upstreams.insert(server.to_owned(), fresh.clone());
                fresh
            }
        };
        upstream.carry(body, &head, reference).await;
    }

    /// A message that cannot be carried: a JSON-RPC error for a request, an error frame
    /// otherwise.
    async fn refuse(
        &self,
        server: &str,
        head: &Head<'_>,
        reference: Option<&RawValue>,
        code: ErrorCode,
        why: &str,
    ) {
        let request_id = head.id.filter(|_| head.kind() == Kind::Request);
        self.link
            .refuse(server, request_id, reference, code, why)
            .await;
    }

    async fn on_close(&mut self, server: &str, reference: Option<&RawValue>) {
        self.after_removal(server).await;
        if self.context.servers.get(server).is_none() || !self.grant.may_use(server) {
            let why = UpstreamError::UnknownServer(server.to_owned()).to_string();
            return self
                .error_frame(ErrorCode::UnknownServer, &why, Some(server), reference)
                .await;
        }
        if let Some(upstream) = self.upstreams.remove(server) {
            upstream.end(UpstreamEnd::Closed).await;
        }
        self.link
            .push_session(server, SessionState::Closed, None)
            .await;
    }

    /// Handles what the change broadcast delivered; `Some` closes the connection (its
    /// key was revoked, 4503).
    pub async fn on_status_event(
        &mut self,
        event: Result<Change, broadcast::error::RecvError>,
    ) -> Option<CloseReason> {
        match event {
            Ok(Change::Status(change)) => self.on_status(change).await,
            Ok(Change::Access) => return self.on_access().await,
            Err(broadcast::error::RecvError::Lagged(_)) => return self.resync().await,
            Err(broadcast::error::RecvError::Closed) => {}
        }
        None
    }

    /// Forwards a status change, and ends upstream sessions on a replaced instance.
    /// Servers the session may not use stay unseen.
    async fn on_status(&mut self, change: StatusChange) {
        let name = &change.server;
        if change.state == ServerState::Removed {
            return self.forget_server(name).await;
        }
        if !self.grant.may_use(name) {
            return;
        }
        self.shown.insert(name.clone());
        self.status(name, change.state).await;
        let stale = self
            .upstreams
            .get(&**name)
            .and_then(|u| u.generation())
            .is_some_and(|generation| change.generation != Some(generation));
        if stale {
            if let Some(upstream) = self.upstreams.remove(&**name) {
                upstream
                    .end(UpstreamEnd::Lost("the server restarted".into()))
                    .await;
            }
        }
    }

    /// Sends a status frame for `server`, after its delayed `removed` if one waits.
    async fn status(&mut self, server: &Arc<str>, state: ServerState) {
        self.after_removal(server).await;
        push_status(&self.link.outbox, server, state).await;
    }

    /// Waits until the delayed `removed` of `server`, if one is pending, was sent: what
    /// follows about a server added again comes after it. Bounded by `REMOVAL_DRAIN`
    /// (the task's own wait) plus room in the outbox.
    async fn after_removal(&mut self, server: &str) {
        // The common case, on every frame: nothing pending, not even a hash to take.
        if self.removals.is_empty() {
            return;
        }
        if let Some(removal) = self.removals.remove(server) {
            let _ = removal.await;
        }
    }

    /// A server the client was shown is gone for it (removed from the configuration,
    /// or no longer allowed to its key): the requests in flight to it are answered as
    /// for an unknown server, then `removed` is sent, and nothing more about it.
    async fn forget_server(&mut self, name: &Arc<str>) {
        if !self.shown.remove(name) {
            return;
        }
        // The upstream session under that name may already be one with a server added
        // again under it: that one stays.
        let over = self
            .upstreams
            .get(&**name)
            .is_some_and(|u| u.server().is_removed() || !self.grant.may_use(name));
        let Some(upstream) = over.then(|| self.upstreams.remove(&**name)).flatten() else {
            return self.status(name, ServerState::Removed).await;
        };
        upstream.end(UpstreamEnd::Removed).await;
        // The answers in flight settle in a task, so that frames for the other servers
        // keep flowing meanwhile; `removed` follows them, and anything later about the
        // server waits for it (`after_removal`).
        self.removals.retain(|_, removal| !removal.is_finished());
        let outbox = self.link.outbox.clone();
        let server = name.clone();
        let removal = self.link.tasks.spawn(async move {
            upstream.settled(REMOVAL_DRAIN).await;
            push_status(&outbox, &server, ServerState::Removed).await;
        });
        self.removals.insert(name.clone(), removal);
    }

    /// The access rules were replaced: the key goes on with what it may use now (servers
    /// it lost are `removed`, servers it gained are shown), or is revoked.
    async fn on_access(&mut self) -> Option<CloseReason> {
        if let Err(revoked) = self.grant.refresh() {
            tracing::info!(session = %self.log_id(), key = ?self.grant.key_name(), "API key revoked; closing its connection");
            return Some(revoked.close_reason());
        }
        let lost: Vec<Arc<str>> = self
            .shown
            .iter()
            .filter(|name| !self.grant.may_use(name))
            .cloned()
            .collect();
        for name in lost {
            self.forget_server(&name).await;
        }
        let gained: Vec<(Arc<str>, ServerState)> = self
            .context
            .servers
            .snapshot()
            .values()
            .filter(|s| self.grant.may_use(&s.name) && !self.shown.contains(&s.name))
            .map(|s| (s.name.clone(), s.state()))
            .collect();
        for (name, state) in gained {
            self.shown.insert(name.clone());
            self.status(&name, state).await;
        }
        None
    }

    /// After falling behind the change broadcast: checks the key again, reports servers
    /// that are gone, and sends every server's current state.
    async fn resync(&mut self) -> Option<CloseReason> {
        if let Some(close) = self.on_access().await {
            return Some(close);
        }
        let snapshot = self.context.servers.snapshot();
        let gone: Vec<Arc<str>> = self
            .shown
            .iter()
            .filter(|name| snapshot.get(&***name).is_none())
            .cloned()
            .collect();
        for name in gone {
            self.forget_server(&name).await;
        }
        for server in snapshot.values() {
            let status = server.status();
            let change = StatusChange {
                server: server.name.clone(),
                state: status.state,
                generation: status.endpoint.map(|e| e.generation),
            };
            self.on_status(change).await;
        }
        None
    }

    async fn error_frame(
        &self,
        code: ErrorCode,
        message: &str,
        server: Option<&str>,
        reference: Option<&RawValue>,
    ) {
        self.link.push_error(code, message, server, reference).await;
    }

    /// Ends the session: optionally lets in-flight requests finish for up to `drain`,
    /// then ends every upstream session (DELETE) and closes the outbox.
    ///
    /// With a shared store, a drain (the gateway stopping) hands the session over
    /// instead: its frames are flushed to the store, its upstream sessions with remote
    /// servers are left for the instance that resumes it (not deleted), those with stdio
    /// servers are deleted, and its ownership is released. Otherwise it is forgotten.
    pub async fn finish(mut self, drain: Option<Duration>) {
        let hand_over = drain.is_some() && self.mirror.is_some();
        // Nobody reads any more: producers must not wait for a socket.
        self.link.outbox.detach();
        if let Some(grace) = drain {
            let all = u32::try_from(self.context.config.max_inflight_requests).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(grace, self.link.inflight.acquire_many(all)).await;
        }
        for (_, upstream) in self.upstreams.drain() {
            let why = match hand_over && upstream.movable() {
                true => UpstreamEnd::HandedOver,
                false => UpstreamEnd::ClientSessionEnded,
            };
            upstream.end(why).await;
        }
        self.link.outbox.close();
        self.link.tasks.close();
        let _ = tokio::time::timeout(TASKS_DRAIN, self.link.tasks.wait()).await;
        if let Some(pump) = self.pump.take() {
            pump.stop.cancel();
            let _ = pump.task.await;
            let store = &self.context.session_store;
            let done = match hand_over {
                true => store.release(&self.id).await,
                false => store.forget(&self.id).await,
            };
            if let Err(SessionStoreError::NotOwner) = done {
                tracing::debug!(session = %self.log_id(), "another instance owns the ended session; left to it");
            } else if let Err(SessionStoreError::Store(err)) = &done
                && err.is_outage()
            {
                // The outage itself is logged once by the store's link.
                tracing::debug!(session = %self.log_id(), %err, "the session store did not take the end of a client session");
            } else if let Err(err) = done {
                tracing::warn!(session = %self.log_id(), %err, "the session store did not take the end of a client session");
            }
        }
        tracing::debug!(session = %self.log_id(), "client session ended");
    }
}

/// Writes one session's frames (before the socket is given them), upstream ids, acks
/// and received count to the shared store, in batches; refreshes its expiry while idle.
///
/// While the store does not answer, a batch fails at once (no call is tried): its
/// frames go to the socket anyway and are given up on for the store, their highest seq
/// kept as the session's gap, written with the first batch after the store answers
/// again (at once when it does), so that a resume elsewhere from before it is refused.
/// Nothing else accumulates meanwhile: upstream changes wait in the mirror, one per
/// server (the latest wins), and the next frames wait in the outbox, bounded by its
/// resume limits. A record the store lost is rebuilt whole by the next write.
struct MirrorWriter {
    store: Arc<dyn SessionStore>,
    outbox: Arc<Outbox>,
    mirror: Arc<SessionMirror>,
    key: Option<Arc<str>>,
    idle: Duration,
    /// Every upstream session as last changed: what rebuilds a lost record.
    upstreams: HashMap<String, UpstreamIds>,
}

impl MirrorWriter {
    async fn run(mut self, open: bool, stop: CancellationToken) {
        let id = self.mirror.id.clone();
        if open {
            if let Err(err) = self.store.open(&id, self.key.as_deref()).await {
                // The first write rebuilds the record once the store answers.
                tracing::debug!(%err, "the session store did not record a new client session");
            }
        }
        let mut recoveries = self.store.recoveries();
        let mut refresh = false;
        // The highest seq given up on and not yet recorded as the session's gap.
        let mut lost = 0u64;
        // The lowest seq the stream keeps, as of the last write: a trim is sent only
        // when it moves (an ack, the outbox's limits), not with every frame.
        let mut trimmed = 0u64;
        // Another instance took the session over: nothing more is written.
        let mut disowned = false;
        let mut held = HeldUpstreams::default();
        loop {
            let stopping = stop.is_cancelled();
            // Upstream ids before frames: an event's id is recorded once its frame is
            // pushed, so every frame an id taken now follows has a seq up to `pushed`.
            // The ids go with a batch that hands every such frame to the store, never
            // ahead of them (a crash in between would skip those events on adoption);
            // otherwise they wait for the next batch.
            // Each change keeps the `pushed` of when it was first taken, so that a
            // steady backlog (always more frames pushed than one batch takes) delays
            // it by the frames before it only, never for good.
            let mut pending = self.mirror.take_pending();
            let pushed = self.outbox.last_seq();
            // Every frame up to it was handed to the store (written or given up on)
            // before this batch.
            let handed_before = self.outbox.handed_through();
            let (frames, oldest) = self.outbox.unstored(MIRROR_BATCH, MIRROR_BATCH_BYTES);
            let handed = self.outbox.handed_through();
            held.hold(std::mem::take(&mut pending.upstreams), pushed);
            pending.upstreams = held.ready(handed);
            for (server, ids) in &pending.upstreams {
                match ids {
                    Some(ids) => self.upstreams.insert(server.clone(), ids.clone()),
                    None => self.upstreams.remove(server),
                };
            }
            // Requests after frames: a request's end is recorded while the frame that
            // answers it is built, before the frame is in the outbox, so it goes with
            // the batch that stores that frame.
            self.mirror.take_requests(&mut pending, handed);
            let changed = !frames.is_empty()
                || !pending.upstreams.is_empty()
                || pending.acked.is_some()
                || !pending.requests.is_empty()
                || pending.requests_reset;
            let mut failed = false;
            if disowned {
                if let Some(last) = frames.last() {
                    self.outbox.mark_stored(last.seq);
                    continue;
                }
            } else if changed || refresh || stopping || lost > 0 {
                // The last write always carries `received`.
                refresh = false;
                let keep = keep_from(oldest, lost);
                let mut batch = Batch {
                    frames: &frames,
                    pending: &pending,
                    received: self.mirror.received(),
                    key: self.key.as_deref(),
                    keep_from: if keep > trimmed { keep } else { 0 },
                    lost,
                    handed: handed_before,
                    rebuild: None,
                };
                let mut written = self.store.append(&id, batch.clone()).await;
                if let Err(SessionStoreError::Missing) = written {
                    tracing::debug!("the session store lost this session's record; rebuilding it");
                    batch.rebuild = Some(&self.upstreams);
                    written = self.store.append(&id, batch).await;
                    // The requests recorded before are gone with it: the next write
                    // records every one still in flight.
                    self.mirror.rewrite_requests();
                }
                match written {
                    Ok(()) => {
                        lost = 0;
                        trimmed = trimmed.max(keep);
                    }
                    Err(SessionStoreError::NotOwner) => {
                        disowned = true;
                        tracing::info!(
                            "another instance took this session over; its frames are no longer stored"
                        );
                    }
                    Err(err) => {
                        // An outage is logged once by the store's link, an error answer
                        // every 10 s: not once per session.
                        failed = true;
                        tracing::debug!(%err, "a batch of this session was not stored");
                        if let Some(last) = frames.last() {
                            lost = lost.max(last.seq);
                        }
                        held.put_back(std::mem::take(&mut pending.upstreams));
                        self.mirror.restore(pending);
                    }
                }
                // Written, or given up on: the client is never held back by the store.
                if let Some(last) = frames.last() {
                    self.outbox.mark_stored(last.seq);
                }
                let more = !frames.is_empty();
                if more && !(stopping && failed) {
                    continue;
                }
            }
            if stopping {
                return;
            }
            // A gap not yet recorded is written as soon as the store answers again.
            let recovered = async {
                match recoveries.as_mut() {
                    Some(recoveries) if lost > 0 => {
                        if recoveries.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.outbox.storable() => {}
                _ = self.mirror.wake.notified() => {}
                _ = stop.cancelled() => {}
                () = recovered => {}
                _ = tokio::time::sleep(self.idle) => refresh = true,
            }
        }
    }
}

/// One upstream change taken from the mirror: the last seq pushed when it was first
/// taken (its stamp: every frame its ids follow has a seq up to it), and the change.
type Stamped = (u64, Option<UpstreamIds>);

/// Upstream changes taken from the mirror and not written yet, by server: each waits
/// until the store was handed every frame up to its stamp. Per server at most two wait:
/// the oldest, whose stamp never moves (so it is written once the backlog reaches it,
/// whatever keeps coming after), and the latest (a newer change replaces it, with its
/// own stamp; it becomes the oldest once that is written). The map is bounded by the
/// servers.
#[derive(Debug, Default)]
struct HeldUpstreams(HashMap<String, (Stamped, Option<Stamped>)>);

impl HeldUpstreams {
    /// Takes `changes`, pushed through `stamp`.
    fn hold(&mut self, changes: HashMap<String, Option<UpstreamIds>>, stamp: u64) {
        for (server, ids) in changes {
            match self.0.entry(server) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    held.get_mut().1 = Some((stamp, ids));
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(((stamp, ids), None));
                }
            }
        }
    }

    /// The changes whose frames were all handed to the store (up to `handed`): the
    /// latest ready one of each server.
    fn ready(&mut self, handed: u64) -> HashMap<String, Option<UpstreamIds>> {
        let mut ready = HashMap::new();
        self.0.retain(|server, (oldest, latest)| {
            if latest.as_ref().is_some_and(|(stamp, _)| *stamp <= handed) {
                if let Some((_, ids)) = latest.take() {
                    ready.insert(server.clone(), ids);
                }
                return false;
            }
            if oldest.0 > handed {
                return true;
            }
            let next = latest.take();
            ready.insert(server.clone(), std::mem::take(&mut oldest.1));
            match next {
                Some(next) => {
                    *oldest = next;
                    true
                }
                None => false,
            }
        });
        ready
    }

    /// Puts back changes a failed write took: ready at once, older than what waits.
    fn put_back(&mut self, failed: HashMap<String, Option<UpstreamIds>>) {
        for (server, ids) in failed {
            match self.0.entry(server) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    let (oldest, latest) = held.get_mut();
                    if latest.is_none() {
                        *latest = Some(std::mem::replace(oldest, (0, ids)));
                    } else {
                        // The one between goes: the latest still follows.
                        *oldest = (0, ids);
                    }
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(((0, ids), None));
                }
            }
        }
    }
}

async fn push_status(outbox: &Outbox, server: &str, state: ServerState) {
    let _ = outbox
        .push(|seq| GatewayFrame::Status { server, seq, state }.encode())
        .await;
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::outbox::ResumeBudget;
    use crate::store::sessions::{Ownership, ReadSession};

    /// What one write carried: the frames' seqs and the upstream sessions changed.
    type Written = (Vec<u64>, Vec<String>);

    /// A store that keeps what each write carried.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<Written>>);

    fn done<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, SessionStoreError>> {
        Box::pin(async move { Ok(value) })
    }

    /// The part of a test store that no test of the writer uses: it is shared, opens
    /// every session, and nothing is ever taken over, read, released or forgotten.
    macro_rules! all_but_append {
        () => {
            fn shared(&self) -> bool {
                true
            }
            fn open<'a>(
                &'a self,
                _: &'a str,
                _: Option<&'a str>,
            ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
                done(())
            }
            fn take<'a>(
                &'a self,
                _: &'a str,
                _: Option<&'a str>,
            ) -> BoxFuture<'a, Result<Ownership, SessionStoreError>> {
                done(Ownership::Unknown)
            }
            fn read<'a>(
                &'a self,
                _: &'a str,
                _: u64,
            ) -> BoxFuture<'a, Result<Option<ReadSession>, SessionStoreError>> {
                done(None)
            }
            fn release<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
                done(())
            }
            fn forget<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
                done(())
            }
        };
    }

    impl SessionStore for Recording {
        fn append<'a>(
            &'a self,
            _: &'a str,
            batch: Batch<'a>,
        ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
            let seqs = batch.frames.iter().map(|f| f.seq).collect();
            let requests = batch.pending.requests.iter().map(|(field, id)| match id {
                Some(id) => format!("{field}={id}"),
                None => format!("{field}-"),
            });
            let ids = batch
                .pending
                .upstreams
                .keys()
                .cloned()
                .chain(requests)
                .collect();
            self.0.lock().unwrap().push((seqs, ids));
            done(())
        }
        all_but_append!();
    }

    #[tokio::test]
    async fn an_upstream_id_is_never_written_ahead_of_the_frames_pushed_before_it() {
        // More frames than one write takes, then the id of the last one's event.
        let frames = MIRROR_BATCH + 6;
        let (outbox, mirror) = frames_then_an_event_id(frames as u64).await;
        let store = Arc::new(Recording::default());
        write_once(&store, &outbox, &mirror).await;
        let written = store.0.lock().unwrap().clone();
        let first: Vec<u64> = (1..=MIRROR_BATCH as u64).collect();
        let rest: Vec<u64> = (MIRROR_BATCH as u64 + 1..=frames as u64).collect();
        // (The last write, on stopping, carries only `received`.)
        assert_eq!(
            written,
            [
                (first, vec![]),
                (rest, vec!["remote".to_owned()]),
                (vec![], vec![])
            ],
            "the id waits for the batch that stores its event's frame"
        );
    }

    /// An outbox with `frames` frames pushed, and a mirror told after them of the
    /// standalone stream's event id (`e<frames>`) of server `remote`.
    async fn frames_then_an_event_id(frames: u64) -> (Arc<Outbox>, Arc<SessionMirror>) {
        let outbox = small_outbox();
        let mirror = SessionMirror::new("s".into(), 0);
        for _ in 0..frames {
            outbox
                .push(|seq| format!("{{\"seq\":{seq}}}"))
                .await
                .unwrap();
        }
        let ids = UpstreamIds {
            last_event_id: Some(format!("e{frames}")),
            movable: true,
            ..UpstreamIds::default()
        };
        mirror.upstream_changed("remote", Some(ids));
        (outbox, mirror)
    }

    /// One pass of a store writer over `outbox` and `mirror` (it stops after it).
    async fn write_once(store: &Arc<Recording>, outbox: &Arc<Outbox>, mirror: &Arc<SessionMirror>) {
        let writer = MirrorWriter {
            store: store.clone(),
            outbox: outbox.clone(),
            mirror: mirror.clone(),
            key: None,
            idle: Duration::from_secs(60),
            upstreams: HashMap::new(),
        };
        let stop = CancellationToken::new();
        stop.cancel();
        writer.run(false, stop).await;
    }

    fn small_outbox() -> Arc<Outbox> {
        let limits = Limits {
            queue_bytes: 1 << 20,
            keep_frames: 1000,
            keep_bytes: 1 << 20,
        };
        Outbox::mirrored(limits, &ResumeBudget::new(1 << 20))
    }

    /// Pushes the answer to request `field` (serial 0) as the exchanges do.
    async fn push_answer(outbox: &Outbox, mirror: &SessionMirror, field: &str) {
        outbox
            .push(|seq| {
                mirror.request_ended(field, 0, seq);
                format!("{{\"seq\":{seq}}}")
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_that_starts_and_ends_between_two_writes_writes_nothing() {
        let outbox = small_outbox();
        let mirror = SessionMirror::new("s".into(), 0);
        let store = Arc::new(Recording::default());
        mirror.request_started("req:remote\n7".into(), 0, "7");
        push_answer(&outbox, &mirror, "req:remote\n7").await;
        write_once(&store, &outbox, &mirror).await;
        let written = store.0.lock().unwrap().clone();
        // (The last write, on stopping, carries only `received`.)
        let nothing = (vec![], vec![]);
        assert_eq!(
            written,
            [(vec![1], vec![]), nothing],
            "only the answer's frame"
        );
    }

    #[tokio::test]
    async fn a_request_leaves_the_store_in_the_write_that_stores_its_answer() {
        let outbox = small_outbox();
        let mirror = SessionMirror::new("s".into(), 0);
        let store = Arc::new(Recording::default());
        mirror.request_started("req:remote\n\"a\"".into(), 0, "\"a\"");
        write_once(&store, &outbox, &mirror).await;
        outbox
            .push(|seq| format!("{{\"seq\":{seq}}}"))
            .await
            .unwrap();
        push_answer(&outbox, &mirror, "req:remote\n\"a\"").await;
        write_once(&store, &outbox, &mirror).await;
        // Ended again (its exchange's end): nothing more.
        mirror.request_ended("req:remote\n\"a\"", 0, 0);
        write_once(&store, &outbox, &mirror).await;
        let written = store.0.lock().unwrap().clone();
        let started = vec!["req:remote\n\"a\"=\"a\"".to_owned()];
        let ended = vec!["req:remote\n\"a\"-".to_owned()];
        assert_eq!(
            written,
            [
                (vec![], started),
                (vec![1, 2], ended),
                (vec![], vec![]),
                (vec![], vec![])
            ]
        );
    }

    /// A store behind a steady backlog: each of its first `writes` appends pushes one
    /// batch of new frames more, so the outbox never catches up meanwhile.
    #[derive(Debug)]
    struct Backlogged {
        outbox: Arc<Outbox>,
        writes: usize,
        written: Mutex<Vec<Written>>,
    }

    impl SessionStore for Backlogged {
        fn append<'a>(
            &'a self,
            _: &'a str,
            batch: Batch<'a>,
        ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
            let seqs = batch.frames.iter().map(|f| f.seq).collect();
            let ids = batch.pending.upstreams.keys().cloned().collect();
            let count = {
                let mut written = self.written.lock().unwrap();
                written.push((seqs, ids));
                written.len()
            };
            Box::pin(async move {
                if count <= self.writes {
                    for _ in 0..MIRROR_BATCH {
                        let pushed = self.outbox.push(|seq| format!("{{\"seq\":{seq}}}"));
                        pushed.await.unwrap();
                    }
                }
                Ok(())
            })
        }
        all_but_append!();
    }

    #[tokio::test]
    async fn an_upstream_id_is_written_within_two_writes_of_its_frame_under_a_steady_backlog() {
        // Two batches queued, then the id of the last one's event.
        let its_frame = 2 * MIRROR_BATCH as u64;
        let (outbox, mirror) = frames_then_an_event_id(its_frame).await;
        let store = Arc::new(Backlogged {
            outbox: outbox.clone(),
            writes: 8,
            written: Mutex::default(),
        });
        let writer = MirrorWriter {
            store: store.clone(),
            outbox: outbox.clone(),
            mirror,
            key: None,
            idle: Duration::from_secs(60),
            upstreams: HashMap::new(),
        };
        let stop = CancellationToken::new();
        stop.cancel();
        writer.run(false, stop).await;
        let written = store.written.lock().unwrap().clone();
        let frame_write = written
            .iter()
            .position(|(seqs, _)| seqs.contains(&its_frame))
            .expect("its frame is written");
        let id_write = written
            .iter()
            .position(|(_, ids)| ids.contains(&"remote".to_owned()))
            .expect("the id is written");
        assert!(
            (frame_write..=frame_write + 1).contains(&id_write),
            "frame in write {frame_write}, id in write {id_write}: {written:?}"
        );
    }

    #[test]
    fn held_upstream_changes_are_written_in_order_and_never_starve() {
        let ids = |event: &str| {
            Some(UpstreamIds {
                last_event_id: Some(event.into()),
                ..UpstreamIds::default()
            })
        };
        let event = |ready: &HashMap<String, Option<UpstreamIds>>| {
            ready
                .get("a")
                .map(|ids| ids.as_ref().and_then(|i| i.last_event_id.clone()))
        };
        let mut held = HeldUpstreams::default();
        held.hold(HashMap::from([("a".into(), ids("1"))]), 10);
        assert_eq!(event(&held.ready(9)), None, "its frame is not handed yet");
        // Newer changes keep coming, each after more frames: the first keeps its stamp.
        held.hold(HashMap::from([("a".into(), ids("2"))]), 20);
        held.hold(HashMap::from([("a".into(), ids("3"))]), 30);
        assert_eq!(event(&held.ready(10)), Some(Some("1".into())));
        assert_eq!(event(&held.ready(29)), None, "3 waits for frame 30");
        held.hold(HashMap::from([("a".into(), ids("4"))]), 40);
        assert_eq!(event(&held.ready(30)), Some(Some("3".into())));
        // The latest, once ready, supersedes the one before it.
        held.hold(HashMap::from([("a".into(), ids("5"))]), 50);
        assert_eq!(event(&held.ready(50)), Some(Some("5".into())));
        assert!(held.0.is_empty());
        // A failed write's change is ready at once, before what waits.
        held.hold(HashMap::from([("a".into(), ids("6"))]), 60);
        held.put_back(HashMap::from([("a".into(), ids("5"))]));
        assert_eq!(event(&held.ready(0)), Some(Some("5".into())));
        assert_eq!(event(&held.ready(60)), Some(Some("6".into())));
    }
}
