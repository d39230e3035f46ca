//! The standalone GET stream of one upstream session: forwards everything the server
//! sends outside a request (logs, list changes, resource updates), and resumes the
//! stream with `Last-Event-ID` when it breaks, so each event arrives once. A stream
//! silent past `upstreamIdleTimeoutMs` (not even a keep-alive comment) counts as broken:
//! a half-open connection would otherwise stop notifications forever.

use std::sync::Arc;
use std::time::Duration;

use super::UpstreamError;
use super::http::EventStream;
use super::session::{End, UpstreamSession};

/// How often a GET stream that keeps failing is retried before the gateway gives up on
/// it (the session itself stays usable for requests).
const GET_STREAM_RETRIES: u32 = 5;

/// The standalone GET stream of one upstream session.
pub(super) struct Listener {
    session: Arc<UpstreamSession>,
}

impl Listener {
    pub(super) fn new(session: Arc<UpstreamSession>) -> Self {
        Self { session }
    }

    /// Forwards the stream until the session ends, resuming it when it breaks. When the
    /// server cannot replay what followed the last event, or the stream cannot be
    /// reopened at all, the client is told: notifications may be missing.
    pub(super) async fn run(self, first: Option<Result<Option<EventStream>, UpstreamError>>) {
        let session = &self.session;
        let mut last_event_id: Option<String> = None;
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
            match opened {
                Ok(None) => return,
                Ok(Some(mut stream)) => {
                    let idle = session.stream_idle_timeout();
                    stream.set_idle_timeout(idle);
                    let opened_at = tokio::time::Instant::now();
                    let mut delivered = false;
                    loop {
                        let next = tokio::select! {
                            _ = session.ended() => return,
                            next = stream.next() => next,
                        };
                        match next {
                            Some(Ok(event)) if event.data.trim().is_empty() => {}
                            Some(Ok(event)) => {
                                delivered = true;
                                if !session.forward_event(&event.data).await {
                                    return;
                                }
                            }
                            Some(Err(err)) => {
                                tracing::debug!(server = %session.server_name(), %err, "GET stream broke");
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
                    // A stream that served (events, or life until its idle deadline)
                    // was healthy: only streams that keep failing at once use up the retries.
                    if delivered || opened_at.elapsed() >= idle {
                        failures = 0;
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
                Err(UpstreamError::Status { status: 400, .. }) if last_event_id.is_some() => {
                    // The server no longer keeps the events after ours: start afresh.
                    let message = "the server could not replay its event stream after a break; \
                                   notifications sent meanwhile may be missing";
                    session.report_stream_gap(message).await;
                    last_event_id = None;
                }
                Err(err) => {
                    tracing::debug!(server = %session.server_name(), %err, "GET stream failed to open");
                }
            }
            failures += 1;
            if failures > GET_STREAM_RETRIES {
                let message = "the server's event stream could not be reopened; its notifications \
                               will not arrive until the server is initialized again";
                session.report_stream_gap(message).await;
                return;
            }
            let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
            tokio::select! {
                _ = session.ended() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
}
