//! An upstream's answer flowing on to the client as it arrives, chunk by chunk and never
//! gathered, so that an event stream reaches the client event by event.
//!
//! A [`Relay`] holds what its exchange occupies ([`Held`]: its count among the exchanges
//! a shutdown waits for, and for event streams a place among `maxSessions`, one of its
//! key's `maxConnections` and a legacy session's entry) until it ends: at the end of the
//! upstream body, when the client goes away (the relay is dropped, which closes the
//! upstream connection), or when `stop` fires (a shutdown). An upstream body that breaks
//! breaks the client's too, never ending it cleanly, so that the client knows the stream
//! was cut and may resume it. A relay counts what flows ([`Tally`]: each event of an
//! event stream, or a whole body, as one message to the client) and, for the answer to
//! a request, the request's outcome and latency when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::legacy::Registration;
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

/// An upstream body on its way to the client.
pub struct Relay {
    upstream: ByteStream,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    tally: Option<Tally>,
    held: Held,
}

impl Relay {
    /// Relays `upstream` until it ends or `stop` resolves, holding `held` until then.
    pub fn new(
        upstream: ByteStream,
        stop: impl Future<Output = ()> + Send + 'static,
        held: Held,
    ) -> Self {
        Self {
            upstream,
            stop: Box::pin(stop),
            stopped: false,
            tally: None,
            held,
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
        if this.stop.as_mut().poll(cx).is_ready() {
            this.end(Outcome::Gateway(ErrorCode::ServerUnavailable));
            return Poll::Ready(None);
        }
        match this.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(err))) => {
                this.end(Outcome::Gateway(ErrorCode::UpstreamError));
                let why = err.without_url().to_string();
                tracing::debug!(%why, "upstream body broke; cutting the client's");
                Poll::Ready(Some(Err(std::io::Error::other(why))))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(tally) = &mut this.tally {
                    tally.chunk(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.end(Outcome::Ok);
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
        let mut relay = Relay::new(upstream, stop.clone().cancelled_owned(), Held::default());
        assert_eq!(relay.next().await.unwrap().unwrap(), "data: 1\n\n");
        stop.cancel();
        assert!(relay.next().await.is_none());
        assert!(relay.next().await.is_none());
    }
}
