//! An upstream's answer flowing on to the client as it arrives, chunk by chunk and never
//! gathered, so that an event stream reaches the client event by event.
//!
//! A [`Relay`] holds what its exchange occupies ([`Held`]: its count among the exchanges
//! a shutdown waits for, and for event streams a place among `maxSessions`, one of its
//! key's `maxConnections` and a legacy session's entry) until it ends: at the end of the
//! upstream body, when the client goes away (the relay is dropped, which closes the
//! upstream connection), or when `stop` fires with the code of why (a shutdown, the
//! access or the server instance gone: [`super::lifetime`]). An upstream body that breaks
//! breaks the client's too, never ending it cleanly, so that the client knows the stream
//! was cut and may resume it. A stop ends an event stream that answers a request with
//! one more event, the JSON-RPC error for the request's id (unless its response passed
//! already), and breaks any other body it cuts, so that a cut answer never looks whole.
//! A relay counts what flows ([`Tally`]: each event of an event stream, or a whole body,
//! as one message to the client) and, for the answer to a request, the request's outcome
//! (a result, a JSON-RPC error, seen by a [`Scan`], or the code of a stop) and latency
//! when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::error::{RouteError, error_body};
use super::legacy::Registration;
use super::scan::Scan;
use crate::auth::ConnectionSlot;
use crate::metrics::{Direction, Metrics, Outcome, RequestMeter};
use crate::protocol::ErrorCode;

/// An upstream body.
pub type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What an exchange occupies while its answer flows; released when the relay ends.
/// Never read: each field is held for what its drop frees.
#[derive(Default)]
#[allow(dead_code)]
pub struct Held {
    /// Its count among the exchanges a shutdown waits for.
    pub exchange: Option<TaskTrackerToken>,
    /// A place among `maxSessions` (event streams).
    pub place: Option<OwnedSemaphorePermit>,
    /// One of its key's `maxConnections` (event streams).
    pub key_slot: Option<ConnectionSlot>,
    /// The entry of a legacy SSE session, which names where its messages go.
    pub legacy: Option<Registration>,
    /// The request whose answer this is, counted when the answer ends.
    pub meter: Option<RequestMeter>,
}

/// The request an answer is for: told why, if its answer is cut.
pub struct Asked {
    /// The server the request named.
    pub server: String,
    /// The request's id; `None` for a notification or a response the client sent.
    pub id: Option<Box<RawValue>>,
}

impl Asked {
    /// Not a request: a stream of its own, or a `DELETE`.
    pub fn nothing(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            id: None,
        }
    }
}

/// An upstream body on its way to the client.
pub struct Relay {
    upstream: ByteStream,
    stop: Pin<Box<dyn Future<Output = ErrorCode> + Send>>,
    stopped: bool,
    scan: Scan,
    asked: Option<Asked>,
    tally: Option<Tally>,
    held: Held,
}

impl Relay {
    /// Relays `upstream` (an event stream when `events`) until it ends or `stop`
    /// resolves, holding `held` until then.
    pub fn new(
        upstream: ByteStream,
        events: bool,
        stop: impl Future<Output = ErrorCode> + Send + 'static,
        held: Held,
    ) -> Self {
        Self {
            upstream,
            stop: Box::pin(stop),
            stopped: false,
            scan: Scan::new(events),
            asked: None,
            tally: None,
            held,
        }
    }

    /// The answer is for the POSTed message `asked`.
    pub fn answering(mut self, asked: Asked) -> Self {
        self.asked = Some(asked);
        self
    }

    /// What the answer carried, once it ended: a result or a JSON-RPC error.
    fn carried(&self) -> Outcome {
        match self.scan.is_error() {
            true => Outcome::Error,
            false => Outcome::Ok,
        }
    }

    /// `stop` fired with `code`: what the client gets last.
    fn cut(&mut self, code: ErrorCode) -> Option<std::io::Result<Bytes>> {
        let answered = self.scan.answered();
        self.end(match answered {
            true => self.carried(),
            false => Outcome::Gateway(code),
        });
        let request = self.asked.as_ref().filter(|a| a.id.is_some());
        let error = |server: &str| match code {
            ErrorCode::UnknownServer => RouteError::UnknownServer(server.to_owned()),
            ErrorCode::SessionLost => RouteError::InstanceGone(server.to_owned()),
            _ => RouteError::ShuttingDown,
        };
        match (self.scan.is_events(), request) {
            // A stream that is not an answer, or whose answer passed: it just ends.
            (true, None) => None,
            (true, Some(_)) if answered => None,
            (true, Some(asked)) if self.scan.between_events() => {
                let why = error(&asked.server);
                let body = error_body(
                    asked.id.as_deref(),
                    code,
                    &why.to_string(),
                    Some(&asked.server),
                    None,
                );
                let event = format!("event: message\ndata: {body}\n\n");
                Some(Ok(Bytes::from(event)))
            }
            _ => {
                let server = self.asked.as_ref().map_or("", |a| a.server.as_str());
                let why = error(server).to_string();
                tracing::debug!(%why, "answer cut by the gateway");
                Some(Err(std::io::Error::other(why)))
            }
        }
    }

    /// Counts the messages and bytes that flow to the client in `tally`.
    pub fn counted(mut self, tally: Tally) -> Self {
        self.tally = Some(tally);
        self
    }

    /// The relay has ended: the request (if one is metered) counts with `outcome`.
    fn end(&mut self, outcome: Outcome) {
        self.stopped = true;
        if let Some(tally) = &mut self.tally {
            tally.end();
        }
        if let Some(meter) = &self.held.meter {
            meter.finish(outcome);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away before the answer ended.
        if let Some(meter) = &self.held.meter {
            meter.finish(Outcome::Cancelled);
        }
    }
}

/// Counts an answer's messages and bytes to the client: each event of an event stream
/// (up to its blank line) as one message, a whole other body as one.
pub struct Tally {
    metrics: Metrics,
    server: Arc<str>,
    events: bool,
    line_start: bool,
    pending: usize,
}

impl Tally {
    /// A tally for `server`'s answer; `events`: the answer is an event stream.
    pub fn new(metrics: Metrics, server: Arc<str>, events: bool) -> Self {
        Self {
            metrics,
            server,
            events,
            line_start: false,
            pending: 0,
        }
    }

    fn chunk(&mut self, bytes: &[u8]) {
        let mut from = 0;
        if self.events {
            for (at, byte) in bytes.iter().enumerate() {
                match byte {
                    b'\n' if self.line_start => {
                        let event = self.pending + at + 1 - from;
                        self.metrics
                            .message(&self.server, Direction::ToClient, event);
                        self.pending = 0;
                        from = at + 1;
                    }
                    b'\n' => self.line_start = true,
                    b'\r' => {}
                    _ => self.line_start = false,
                }
            }
        }
        self.pending += bytes.len() - from;
    }

    fn end(&mut self) {
        if !self.events && self.pending > 0 {
            let bytes = std::mem::take(&mut self.pending);
            self.metrics
                .message(&self.server, Direction::ToClient, bytes);
        }
    }
}

impl Stream for Relay {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stopped {
            return Poll::Ready(None);
        }
        if let Poll::Ready(code) = this.stop.as_mut().poll(cx) {
            return Poll::Ready(this.cut(code));
        }
        match this.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(err))) => {
                this.end(Outcome::Gateway(ErrorCode::UpstreamError));
                let why = err.without_url().to_string();
                tracing::debug!(%why, "upstream body broke; cutting the client's");
                Poll::Ready(Some(Err(std::io::Error::other(why))))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                this.scan.chunk(&chunk);
                if let Some(tally) = &mut this.tally {
                    tally.chunk(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.scan.end();
                let outcome = this.carried();
                this.end(outcome);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn chunks(items: Vec<reqwest::Result<Bytes>>) -> ByteStream {
        Box::pin(futures::stream::iter(items).chain(futures::stream::pending()))
    }

    #[tokio::test]
    async fn chunks_pass_as_they_come_until_stopped() {
        let stop = tokio_util::sync::CancellationToken::new();
        let upstream = chunks(vec![Ok(Bytes::from_static(b"data: 1\n\n"))]);
        let stopped = stop.clone();
        let stopped = async move {
            stopped.cancelled().await;
            ErrorCode::ServerUnavailable
        };
        let mut relay = Relay::new(upstream, true, stopped, Held::default());
        assert_eq!(relay.next().await.unwrap().unwrap(), "data: 1\n\n");
        stop.cancel();
        assert!(relay.next().await.is_none());
        assert!(relay.next().await.is_none());
    }

    fn asked() -> Asked {
        Asked {
            server: "files".into(),
            id: Some(serde_json::value::to_raw_value(&7).unwrap()),
        }
    }

    #[tokio::test]
    async fn a_cut_answer_stream_ends_with_the_error_for_its_request() {
        let progress = "event: message\ndata: {\"method\":\"notifications/progress\"}\n\n";
        let upstream = chunks(vec![Ok(Bytes::from(progress))]);
        let stop = async { ErrorCode::SessionLost };
        let held = Held::default();
        let mut relay = Relay::new(upstream, true, stop, held).answering(asked());
        // The stop is ready at once: nothing of the upstream passes after it.
        let last = relay.next().await.unwrap().unwrap();
        let text = std::str::from_utf8(&last).unwrap();
        let data = text
            .strip_prefix("event: message\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["data"]["gateway"], "session_lost");
        assert!(relay.next().await.is_none());
    }

    #[tokio::test]
    async fn a_cut_json_answer_or_event_breaks() {
        let upstream = chunks(vec![Ok(Bytes::from_static(b"{\"jsonrpc\":\"2.0\","))]);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
            ErrorCode::UnknownServer
        };
        let mut relay = Relay::new(upstream, false, stop, Held::default()).answering(asked());
        assert!(relay.next().await.unwrap().is_ok());
        tx.send(()).unwrap();
        assert!(relay.next().await.unwrap().is_err(), "never a clean end");
        assert!(relay.next().await.is_none());
        // Mid-event: an event added would merge with it, so the stream breaks.
        let upstream = chunks(vec![Ok(Bytes::from_static(b"data: {\"id\""))]);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
            ErrorCode::ServerUnavailable
        };
        let mut relay = Relay::new(upstream, true, stop, Held::default()).answering(asked());
        assert!(relay.next().await.unwrap().is_ok());
        tx.send(()).unwrap();
        assert!(relay.next().await.unwrap().is_err());
    }
}
