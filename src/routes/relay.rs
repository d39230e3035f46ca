//! An upstream's answer flowing on to the client as it arrives, chunk by chunk and never
//! gathered, so that an event stream reaches the client event by event.
//!
//! A [`Relay`] holds what its exchange occupies ([`Held`]: its count among the exchanges
//! a shutdown waits for, and for event streams a place among `maxSessions`, one of its
//! key's `maxConnections` and a legacy session's entry) until it ends: at the end of the
//! upstream body, when the client goes away (the relay is dropped, which closes the
//! upstream connection), or when `stop` fires (a shutdown). An upstream body that breaks
//! breaks the client's too, never ending it cleanly, so that the client knows the stream
//! was cut and may resume it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::legacy::Registration;
use crate::auth::ConnectionSlot;

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
}

/// An upstream body on its way to the client.
pub struct Relay {
    upstream: ByteStream,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    _held: Held,
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
            _held: held,
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
            this.stopped = true;
            return Poll::Ready(None);
        }
        match this.upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(err))) => {
                this.stopped = true;
                let why = err.without_url().to_string();
                tracing::debug!(%why, "upstream body broke; cutting the client's");
                Poll::Ready(Some(Err(std::io::Error::other(why))))
            }
            other => other.map(|item| item.map(|chunk| chunk.map_err(std::io::Error::other))),
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
