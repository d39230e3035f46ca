//! One message's exchange over Streamable HTTP: wait for its turn, POST it, forward
//! every event of its reply, resume a broken response stream with `Last-Event-ID`, and
//! make sure a request is answered. Also the standalone GET stream's opening, which
//! `initialize` triggers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tracing::Instrument;

use super::{Carried, UpstreamEnd, UpstreamSession};
use crate::jsonrpc::{self, Head, Kind};
use crate::metrics::{Direction, Outcome};
use crate::protocol::{ErrorCode, SessionState};
use crate::upstream::http::{EventStream, Headers, PostOutcome, Reply, announced_body};
use crate::upstream::listener::Listener;
use crate::upstream::{Endpoint, Transport, UpstreamError};

/// How often one response stream is resumed before its request fails.
const STREAM_RESUMES: u32 = 3;
/// How long a finished response stream is given to end by itself before it is dropped.
const STREAM_END_GRACE: Duration = Duration::from_secs(1);

impl UpstreamSession {
    /// Runs one exchange to its end and makes sure a request is answered.
    pub(super) async fn exchange_guarded(self: Arc<Self>, carried: Carried) {
        let answered = AtomicBool::new(false);
        let outcome = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(self.end_error()),
            _ = carried.cancel.cancelled() => Ok(()),
            result = tokio::time::timeout(self.link.request_timeout, self.exchange(&carried, &answered)) => {
                result.unwrap_or(Err(UpstreamError::Timeout(self.link.request_timeout)))
            }
        };
        carried.ticket.release();
        self.forget_in_flight(&carried);
        if carried.is_initialize() {
            self.barrier.lower();
        }
        // A request answered by the server was counted then; this counts the others.
        carried.finish(match &outcome {
            Ok(()) => Outcome::Cancelled,
            Err(error) => Outcome::Gateway(error.code()),
        });
        self.request_over(&carried, outcome.is_ok());
        if let Err(mut error) = outcome {
            if self.server.is_removed() {
                // Whatever the removal made fail is answered as for an unknown server.
                error = UpstreamError::UnknownServer(self.server.name.to_string());
            }
            if matches!(error, UpstreamError::SessionGone) {
                self.end(UpstreamEnd::Lost(
                    "the upstream session expired or was deleted".into(),
                ))
                .await;
            }
            let answered = answered.load(Ordering::Acquire);
            let client_gone = matches!(self.ended.get(), Some(UpstreamEnd::ClientSessionEnded));
            if !(answered || client_gone) {
                self.report(&carried, error.code(), &error.to_string())
                    .await;
            }
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
            self.barrier.wait_past_initialize().await?
        };
        carried.ticket.turn().await;
        if endpoint.transport == Transport::LegacySse || self.server.speaks_legacy_sse() {
            return self.exchange_legacy(&endpoint, carried).await;
        }
        let posted = if carried.is_initialize() {
            self.post_initialize(&endpoint, carried).await
        } else {
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
            let body = announced_body(carried.body.clone(), carried.ticket.on_written());
            self.link.http.post(&endpoint, headers, body).await
        };
        let outcome = match posted {
            Ok(outcome) => outcome,
            Err(
                refused @ UpstreamError::Status {
                    status: 400 | 404 | 405,
                    ..
                },
            ) if carried.is_initialize() && endpoint.transport == Transport::Detect => {
                // Still this message's turn: the legacy initialize goes first.
                return self.fall_back_to_legacy(&endpoint, carried, refused).await;
            }
            Err(err) => return Err(err),
        };
        // Accepted: later messages need not wait for this one any more.
        carried.ticket.release();
        if carried.is_initialize() {
            self.opened();
            self.link
                .push_session(&self.server.name, SessionState::Open, None)
                .await;
        }
        match outcome.reply? {
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
                } else {
                    self.forward(text, carried, answered).await?;
                }
                if carried.kind == Kind::Request && !answered.load(Ordering::Acquire) {
                    let missing = "the JSON reply does not hold the response to the request";
                    return Err(UpstreamError::Protocol(missing.into()));
                }
                Ok(())
            }
            Reply::Events(stream) => self.drain(*stream, carried, answered).await,
        }
    }

    /// POSTs an `initialize` to its reply headers in a task of its own, which the
    /// exchange being given up does not stop: the session id the server creates is then
    /// still learned, and deleted at once if this session has ended meanwhile.
    async fn post_initialize(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        carried: &Carried,
    ) -> Result<PostOutcome, UpstreamError> {
        let (session, endpoint) = (self.clone(), endpoint.clone());
        let body = announced_body(carried.body.clone(), carried.ticket.on_written());
        // The request's place among those in flight goes with the POST, so a client
        // looping initialize cannot pile them up.
        let permit = carried.take_permit();
        let limit = self.link.request_timeout;
        let initialize = async move {
            let post = session.link.http.post(&endpoint, Headers::default(), body);
            let posted = tokio::time::timeout(limit, post)
                .await
                .unwrap_or(Err(UpstreamError::Timeout(limit)));
            drop(permit);
            if let Ok(outcome) = &posted {
                let id = outcome.session_id.as_deref();
                if !session.barrier.open(id) {
                    if let Some(id) = id {
                        tracing::debug!(server = %session.server.name, "deleting an upstream session given up before its initialize was answered");
                        session.delete_upstream(endpoint, id.to_owned());
                    }
                }
            }
            posted
        };
        let span = self.span().clone();
        let posting = self.link.background.spawn(initialize.instrument(span));
        posting.await.unwrap_or_else(|_| {
            Err(UpstreamError::Protocol(
                "the initialize exchange stopped".into(),
            ))
        })
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
        // A stream that always has the next event ready (and a client queue with room)
        // would otherwise run on without ever yielding: the session's other exchanges
        // share its driver task, and other tasks its worker thread.
        tokio::task::consume_budget().await;
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
        let ends = carried.answers().filter(|_| answers);
        if !self.link.push_answer(&self.server.name, text, ends).await {
            return Err(UpstreamError::SessionClosed);
        }
        let metrics = &self.link.metrics;
        metrics.message(&self.server.name, Direction::ToClient, text.len());
        // Only once queued: an exchange cut off while waiting for room must still be
        // answered with an error.
        if answers {
            carried.finish(if head.error.is_some() {
                Outcome::Error
            } else {
                Outcome::Ok
            });
            answered.store(true, Ordering::Release);
            // Answered: no longer in flight, so a copy the server replays on the
            // standalone stream while this stream lingers is dropped there.
            self.forget_in_flight(carried);
        }
        Ok(())
    }

    /// Takes `carried` out of the requests in flight (not a later request that reused
    /// its id).
    pub(super) fn forget_in_flight(&self, carried: &Carried) {
        if let Some(key) = &carried.id_key {
            let mut inflight = self.lock_inflight();
            if inflight
                .get(key)
                .is_some_and(|(serial, _)| *serial == carried.serial)
            {
                inflight.remove(key);
            }
        }
    }

    /// Forwards one event of the standalone GET stream; false once the client session
    /// is over. A response there to no request in flight is dropped (counted as
    /// `direction="dropped"`): the spec allows a response only on its request's own
    /// stream, and a server that replays every stream's events after a `Last-Event-ID`
    /// would otherwise hand the client an answer it already had (protocol.md section 7).
    pub(in crate::upstream) async fn forward_event(&self, text: &str) -> bool {
        // As in `forward`: an event stream always ready never yields by itself.
        tokio::task::consume_budget().await;
        let name = &self.server.name;
        match Head::parse(text) {
            Ok(head) => {
                if head.says_stdio_server_gone() {
                    self.server.suspect();
                }
                // (An error without an id, a parse error say, answers nothing: passed on.)
                let answers_one = head.id.is_some_and(|id| id.get() != "null");
                if head.kind() == Kind::Response && answers_one && !self.has_in_flight(head.id) {
                    tracing::debug!(server = %name, "dropped a response on the standalone stream that answers no request in flight");
                    let metrics = &self.link.metrics;
                    metrics.message(name, Direction::Dropped, text.len());
                    return true;
                }
                let pushed = self.link.push_rpc(name, text).await;
                if pushed {
                    let metrics = &self.link.metrics;
                    metrics.message(name, Direction::ToClient, text.len());
                }
                pushed
            }
            Err(err) => {
                let message = format!("the server sent invalid JSON on its event stream: {err}");
                self.link
                    .push_error(ErrorCode::UpstreamError, &message, Some(name), None)
                    .await
            }
        }
    }

    /// True when a request with this id is in flight on this session.
    fn has_in_flight(&self, id: Option<&RawValue>) -> bool {
        id.is_some_and(|id| self.lock_inflight().contains_key(&jsonrpc::id_key(id)))
    }

    /// After a successful initialize, before its result is forwarded: remember the
    /// version and open the GET stream, so that nothing the server sends after the
    /// client has seen the result can be missed.
    async fn on_initialized(self: &Arc<Self>, response: &str) {
        self.barrier
            .set_protocol_version(jsonrpc::negotiated_version(response));
        if self.barrier.session_id().is_none() || self.endpoint.get().is_none() {
            return;
        }
        let first = self.open_stream(None).await;
        self.record(None);
        let listen = Listener::new(self.clone()).run(first, None);
        self.link
            .tasks
            .spawn(listen.instrument(self.span().clone()));
    }

    /// Opens the standalone GET stream, or with `last_event_id` resumes a broken stream
    /// (a response stream or the GET stream). `None` when the session ended meanwhile.
    pub(in crate::upstream) async fn open_stream(
        &self,
        last_event_id: Option<&str>,
    ) -> Option<Result<Option<EventStream>, UpstreamError>> {
        let endpoint = self.endpoint.get()?;
        let (session_id, version) = self.barrier.headers();
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
}
