//! The glue between an upstream session and the legacy HTTP+SSE transport: detecting a
//! legacy server by the specification's backwards-compatibility rule, opening the
//! legacy session, and carrying messages over it.

use std::sync::Arc;

use super::{Carried, UpstreamEnd, UpstreamSession};
use crate::jsonrpc::Kind;
use crate::metrics::{Direction, Outcome};
use crate::protocol::SessionState;
use crate::upstream::legacy::{Deliver, LegacyLimits, LegacySession};
use crate::upstream::{Endpoint, UpstreamError};

impl UpstreamSession {
    /// The backwards-compatibility rule of the Streamable HTTP transport: a server that
    /// refuses a POSTed initialize with 400, 404 or 405 may be a legacy HTTP+SSE server.
    /// If its URL then opens an SSE stream with an `endpoint` event, the server is
    /// remembered as legacy; otherwise the original refusal stands.
    pub(super) async fn fall_back_to_legacy(
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
    pub(super) async fn exchange_legacy(
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
            self.opened();
            self.link
                .push_session(&self.server.name, SessionState::Open, None)
                .await;
        }
        let posted = legacy.post(carried.body.clone(), request_id).await;
        // The server answered the POST: later messages need not wait for this one.
        if carried.is_initialize() && posted.is_ok() {
            self.barrier.open(None);
        }
        carried.ticket.release();
        let Some(answered) = posted? else {
            return Ok(());
        };
        let delivered = answered.await.unwrap_or_else(|_| {
            Err(UpstreamError::StreamCut(
                "the legacy session was dropped".into(),
            ))
        })?;
        carried.finish(if delivered.is_error {
            Outcome::Error
        } else {
            Outcome::Ok
        });
        Ok(())
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
            Box::pin(async move {
                let pushed = link.push_rpc(&name, &text).await;
                if pushed {
                    link.metrics.message(&name, Direction::ToClient, text.len());
                }
                pushed
            })
        });
        let http = &self.link.http;
        let limits = LegacyLimits {
            connect_timeout: http.header_timeout(),
            max_message_bytes: http.max_message_bytes(),
            idle_timeout: self.link.stream_idle_timeout,
        };
        let opened = LegacySession::open(
            http.raw(),
            endpoint,
            deliver,
            limits,
            self.cancel.clone(),
            &self.link.tasks,
        )
        .await?;
        let legacy = Arc::new(opened);
        let (session, watched) = (self.clone(), legacy.clone());
        let watch = async move {
            tokio::select! {
                biased;
                _ = session.cancel.cancelled() => {}
                _ = watched.closed() => {
                    session.end(UpstreamEnd::Lost("the server closed its SSE stream".into())).await;
                }
            }
        };
        let span = self.span().clone();
        self.link
            .tasks
            .spawn(tracing::Instrument::instrument(watch, span));
        Ok(legacy)
    }
}
