//! The standalone GET stream of one upstream session: forwards everything the server
//! sends outside a request (logs, list changes, resource updates), and resumes the
//! stream with `Last-Event-ID` when it breaks, so each event arrives once. A response
//! there to no request in flight is not forwarded (see `forward_event`).
//!
//! A stream that has shown it sends keep-alive comments and then stays silent past
//! `upstreamIdleTimeoutMs` counts as broken: a half-open connection would otherwise stop
//! notifications forever. Whenever events may have been lost (the stream broke and
//! cannot be replayed, an event could not be read, the stream cannot be reopened), the
//! client gets an `error` frame saying so: a gap is never silent.

use std::sync::Arc;
use std::time::Duration;

use super::UpstreamError;
use super::http::EventStream;
use super::session::{UpstreamEnd, UpstreamSession};

/// How often a GET stream that keeps failing is retried before the gateway gives up on
/// it (the session itself stays usable for requests).
const GET_STREAM_RETRIES: u32 = 5;
/// How often a GET is tried again while the server still holds our previous stream
/// (409): after a half-open connection, until the server notices it is gone.
const CONFLICT_RETRY: Duration = Duration::from_secs(5);

const MAY_BE_MISSING: &str = "notifications sent meanwhile may be missing";

/// The standalone GET stream of one upstream session.
pub(super) struct Listener {
    session: Arc<UpstreamSession>,
}

/// How one opened stream ended.
enum StreamEnd {
    /// The session ended, or the client session is gone: stop listening.
    Stop,
    /// The server ended the stream cleanly.
    Closed,
    /// The stream broke (or went silent); `lossy` when the events after it cannot be
    /// replayed (no event id) or one of them could not be read.
    Broke { lossy: bool, why: String },
}

impl Listener {
    pub(super) fn new(session: Arc<UpstreamSession>) -> Self {
        Self { session }
    }

    /// Forwards the stream until the session ends, resuming it when it breaks. Without
    /// `first`, opens it, after `last_event_id` if given (an adopted session's stream).
    pub(super) async fn run(
        self,
        first: Option<Result<Option<EventStream>, UpstreamError>>,
        mut last_event_id: Option<String>,
    ) {
        let session = &self.session;
        let mut failures = 0u32;
        let mut next_open = first;
        loop {
            let opened = match next_open.take() {
                Some(opened) => opened,
                None => match session.open_stream(last_event_id.as_deref()).await {
                    Some(opened) => opened,
                    None => return,
                },
            };
            let mut wait = None;
            match opened {
                Ok(None) => return,
                Ok(Some(stream)) => {
                    let opened_at = tokio::time::Instant::now();
                    let (end, delivered) = self.forward(stream, &mut last_event_id).await;
                    // A stream that served (events, or life until its idle deadline)
                    // was healthy: only streams that keep failing use up the retries.
                    if delivered || opened_at.elapsed() >= session.stream_idle_timeout() {
                        failures = 0;
                    }
                    match end {
                        StreamEnd::Stop => return,
                        StreamEnd::Closed => {}
                        StreamEnd::Broke { lossy, why } => {
                            tracing::debug!(server = %session.server_name(), %why, "GET stream broke");
                            if lossy {
                                let message = format!(
                                    "the server's event stream broke ({why}); {MAY_BE_MISSING}"
                                );
                                session.report_stream_gap(&message).await;
                            }
                        }
                    }
                }
                Err(UpstreamError::SessionGone) => {
                    session
                        .end(UpstreamEnd::Lost(
                            "the upstream session expired or was deleted".into(),
                        ))
                        .await;
                    return;
                }
                Err(UpstreamError::Status { status: 409, .. }) => {
                    // The server still holds our previous stream (it has not noticed the
                    // connection is gone): not a failure, wait for it to let go.
                    wait = Some(CONFLICT_RETRY);
                }
                Err(UpstreamError::Status { status: 400, .. }) if last_event_id.is_some() => {
                    // The server no longer keeps the events after ours: start afresh.
                    let message = format!(
                        "the server could not replay its event stream after a break; {MAY_BE_MISSING}"
                    );
                    session.report_stream_gap(&message).await;
                    last_event_id = None;
                }
                Err(err) => {
                    tracing::debug!(server = %session.server_name(), %err, "GET stream failed to open");
                }
            }
            let backoff = match wait {
                Some(wait) => wait,
                None => {
                    failures += 1;
                    if failures > GET_STREAM_RETRIES {
                        let message = "the server's event stream could not be reopened; its notifications \
                                       will not arrive until the server is initialized again";
                        session.report_stream_gap(message).await;
                        return;
                    }
                    Duration::from_millis(100 * 2u64.pow(failures.min(5)))
                }
            };
            tokio::select! {
                _ = session.ended() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Forwards one opened stream until it ends; also says whether it delivered events.
    ///
    /// With a shared session store, the id of each event is recorded once its frame is
    /// in the client session's outbox (not before: the store writes an id only with or
    /// after the frames pushed before it), so that an instance adopting the session
    /// after a crash reopens the stream right after the last event the client could
    /// have been given. Recording only replaces the mirror's latest value: the store's
    /// batched writes carry it, with no write of its own per event.
    async fn forward(
        &self,
        mut stream: EventStream,
        last_event_id: &mut Option<String>,
    ) -> (StreamEnd, bool) {
        let session = &self.session;
        stream.set_idle_timeout(session.stream_idle_timeout());
        let mut delivered = false;
        // The id last recorded, to record each new one once (mirrored sessions only).
        let mut recorded = session.is_mirrored().then(|| last_event_id.clone());
        // One wait for the session's end serves every event (not one per event).
        let ended = session.ended();
        tokio::pin!(ended);
        loop {
            let next = tokio::select! {
                _ = &mut ended => return (StreamEnd::Stop, delivered),
                next = stream.next() => next,
            };
            let end = match next {
                Some(Ok(event)) => {
                    // An event without data (a priming event) still moves the stream on.
                    if !event.data.trim().is_empty() {
                        delivered = true;
                        if !session.forward_event(&event.data).await {
                            return (StreamEnd::Stop, delivered);
                        }
                    }
                    if let Some(recorded) = &mut recorded {
                        let id = stream.last_event_id();
                        if id.is_some() && recorded.as_deref() != id {
                            *recorded = id.map(str::to_owned);
                            session.record(id);
                        }
                    }
                    None
                }
                // Cut or silent: resumable after the last event, if the server gave ids.
                Some(Err(UpstreamError::StreamCut(why))) => Some(StreamEnd::Broke {
                    lossy: stream.last_event_id().is_none(),
                    why,
                }),
                // An event that could not be read is skipped by the resume after it.
                Some(Err(err)) => Some(StreamEnd::Broke {
                    lossy: true,
                    why: err.to_string(),
                }),
                None => Some(StreamEnd::Closed),
            };
            if let Some(end) = end {
                // Only a reopened stream needs the id, so it is copied once, at the end.
                if let Some(id) = stream.last_event_id() {
                    // An id that came without an event (an id-only block) is recorded
                    // here: every frame before it is in the outbox.
                    if recorded.is_some_and(|r| r.as_deref() != Some(id)) {
                        session.record(Some(id));
                    }
                    *last_event_id = Some(id.to_owned());
                }
                return (end, delivered);
            }
        }
    }
}
