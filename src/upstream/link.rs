//! What a client session lends its upstream sessions: the outbox their frames go to,
//! the HTTP client, task trackers and limits; and the frame-writing helpers that every
//! part of a session shares, so each frame is built in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::http::HttpClient;
use crate::jsonrpc;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{self, ErrorCode, GatewayFrame, SessionState};
use crate::store::sessions::{SessionMirror, request_field};

/// A client session's resources, shared with its upstream sessions.
#[derive(Debug, Clone)]
pub struct Link {
    /// The client session's outbound frames.
    pub outbox: Arc<Outbox>,
    /// The gateway's HTTP client.
    pub http: HttpClient,
    /// The client session's tasks (message exchanges, GET streams).
    pub tasks: TaskTracker,
    /// Gateway-wide tasks that may outlive the client session (DELETEs).
    pub background: TaskTracker,
    /// Requests in flight for the whole client session, bounded by `maxInflightRequests`
    /// (more are refused with `too_many_requests`).
    pub inflight: Arc<Semaphore>,
    /// Notifications and responses being carried, bounded by `maxInflightRequests` too
    /// (more wait: the client's frames are then read no faster than they are carried).
    pub carrying: Arc<Semaphore>,
    /// The most one request may take, end to end.
    pub request_timeout: Duration,
    /// How long a message waits for a starting server.
    pub ready_wait: Duration,
    /// How long a long-lived upstream stream may stay silent before it counts as broken.
    pub stream_idle_timeout: Duration,
    /// Where requests, messages and upstream sessions are counted.
    pub metrics: Metrics,
    /// With a shared session store: where upstream session ids are recorded, so that
    /// another instance can adopt them.
    pub mirror: Option<Arc<SessionMirror>>,
    /// Numbers the requests carried in the client session (all its upstream sessions),
    /// so that a request is told from a later one that reused its id.
    pub serials: Arc<AtomicU64>,
}

impl Link {
    /// The next request serial of the client session.
    pub fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an `rpc` frame carrying `message` (valid JSON) from `server`. False once
    /// the client session is over.
    pub async fn push_rpc(&self, server: &str, message: &str) -> bool {
        self.push_answer(server, message, None).await
    }

    /// Queues an `rpc` frame carrying `message`, which answers the request `answers`
    /// (its canonical id and serial), if any and if it was recorded in flight: with a
    /// shared session store, the request's record ends with this frame (recorded before the frame is in the
    /// outbox, so the store writer finds the end with the frame). False once the client
    /// session is over.
    pub async fn push_answer(
        &self,
        server: &str,
        message: &str,
        answers: Option<(&str, u64)>,
    ) -> bool {
        let ends = self.mirror.as_deref().zip(answers);
        self.outbox
            .push(|seq| {
                if let Some((mirror, (key, serial))) = ends {
                    mirror.request_ended(&request_field(server, key), serial, seq);
                }
                protocol::rpc_frame(server, seq, message)
            })
            .await
            .is_ok()
    }

    /// Queues a `session` frame.
    pub async fn push_session(
        &self,
        server: &str,
        state: SessionState,
        reason: Option<&str>,
    ) -> bool {
        let frame = session_frame(server, state, reason);
        self.outbox.push(frame).await.is_ok()
    }

    /// Queues a `session` frame without waiting for room in the socket's queue (see
    /// [`Outbox::push_now`]).
    pub fn push_session_now(&self, server: &str, state: SessionState, reason: Option<&str>) {
        let frame = session_frame(server, state, reason);
        // Closed: the session is ending; nobody is left to tell.
        let _ = self.outbox.push_now(frame);
    }

    /// Queues an `error` frame.
    pub async fn push_error(
        &self,
        code: ErrorCode,
        message: &str,
        server: Option<&str>,
        reference: Option<&RawValue>,
    ) -> bool {
        let frame = |seq| {
            GatewayFrame::Error {
                seq,
                code,
                message,
                server,
                reference,
            }
            .encode()
        };
        self.outbox.push(frame).await.is_ok()
    }

    /// Answers a message for `server` that could not be carried: a JSON-RPC error
    /// response with the request's own id (pass `request_id` only for requests), an
    /// `error` frame otherwise.
    pub async fn refuse(
        &self,
        server: &str,
        request_id: Option<&RawValue>,
        reference: Option<&RawValue>,
        code: ErrorCode,
        message: &str,
    ) -> bool {
        let refusal = (code, message);
        self.refuse_answering(server, request_id, reference, refusal, None)
            .await
    }

    /// As [`Self::refuse`], for a request carried with serial `answers.1` (see
    /// [`Self::push_answer`]).
    pub async fn refuse_answering(
        &self,
        server: &str,
        request_id: Option<&RawValue>,
        reference: Option<&RawValue>,
        (code, message): (ErrorCode, &str),
        answers: Option<(&str, u64)>,
    ) -> bool {
        match request_id {
            Some(id) => {
                let response = jsonrpc::error_response(id, code, message, server);
                self.push_answer(server, &response, answers).await
            }
            None => {
                self.push_error(code, message, Some(server), reference)
                    .await
            }
        }
    }
}

/// The `session` frame for `server`, built once its seq is known.
fn session_frame<'a>(
    server: &'a str,
    state: SessionState,
    reason: Option<&'a str>,
) -> impl FnOnce(u64) -> String + 'a {
    move |seq| {
        GatewayFrame::Session {
            server,
            seq,
            state,
            reason,
        }
        .encode()
    }
}
