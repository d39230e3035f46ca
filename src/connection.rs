//! One WebSocket connection: the `hello` handshake, the frame reader, the writer task,
//! and the client session they serve.
//!
//! The connection task reads frames and owns the client session (its upstream sessions
//! by server name); a writer task owns the socket's sink and drains the session's
//! [`Outbox`]. Upstream exchanges run in their own tasks and reach the client only
//! through the outbox, so nothing here waits on an upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, broadcast, oneshot};
use tokio_util::task::TaskTracker;

use crate::gateway::Shared;
use crate::jsonrpc::{self, Head, Kind};
use crate::outbox::Outbox;
use crate::protocol::{
    self, ClientFrame, ClientInfo, ErrorCode, GatewayFrame, ServerEntry, SessionState, close_code,
    decode_client_frame,
};
use crate::registry::StatusChange;
use crate::upstream::session::{End, Link, UpstreamSession};

/// How long the writer may take to flush after the reader has finished.
const WRITER_FLUSH: Duration = Duration::from_secs(2);
/// How long the socket is read (and discarded) after the gateway closed it.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// How long a closing session waits for its exchanges to notice the end.
const TASKS_DRAIN: Duration = Duration::from_secs(2);

/// A reason to close the socket with a code.
type CloseReason = (u16, String);

/// Serves one upgraded WebSocket until it closes.
pub async fn serve(socket: WebSocket, shared: Arc<Shared>) {
    let (mut sink, mut stream) = socket.split();
    let hello = tokio::select! {
        _ = shared.shutdown.cancelled() => Err((close_code::GOING_AWAY, "mcpmux is shutting down".to_owned())),
        hello = tokio::time::timeout(shared.config.hello_timeout, read_hello(&mut stream)) => match hello {
            Err(_) => Err((
                close_code::HELLO_TIMEOUT,
                format!("no hello within {} ms", shared.config.hello_timeout.as_millis()),
            )),
            Ok(hello) => hello,
        },
    };
    let client = match hello {
        Ok(Some(client)) => client,
        Ok(None) => return,
        Err(reason) => {
            send_close(&mut sink, reason).await;
            return;
        }
    };
    let mut session = ClientSession::new(shared.clone());
    tracing::debug!(session = %session.id, client = ?client, "client session opened");
    let mut changes = shared.status_changes.subscribe();
    session.welcome();
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, session.link.outbox.clone(), close_rx));

    let close = loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                break Some((close_code::GOING_AWAY, "mcpmux is shutting down".to_owned()));
            }
            change = changes.recv() => match change {
                Ok(change) => session.on_status(change).await,
                Err(broadcast::error::RecvError::Lagged(_)) => session.resync_status().await,
                Err(broadcast::error::RecvError::Closed) => {}
            },
            message = stream.next() => match message {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(err)) => break too_big(&err, shared.config.max_frame_bytes),
                Some(Ok(Message::Text(text))) => {
                    if let Some(reason) = session.on_text(&text).await {
                        break Some(reason);
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let message = "binary frames are not part of mcpmux.v1; send each frame as JSON text";
                    session.error_frame(ErrorCode::BadFrame, message, None, None).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
        }
    };
    session.end_all(End::Detached).await;
    session.link.outbox.close();
    if let Some(reason) = close {
        let _ = close_tx.send(reason);
    }
    if tokio::time::timeout(WRITER_FLUSH, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    // Read on briefly after closing, so that a client still sending (a frame over the
    // limit, say) gets our close frame instead of a TCP reset.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while stream.next().await.is_some() {}
    })
    .await;
    session.link.tasks.close();
    let _ = tokio::time::timeout(TASKS_DRAIN, session.link.tasks.wait()).await;
    tracing::debug!(session = %session.id, "client session closed");
}

/// Waits for the first frame, which must be `hello`. `Ok(None)`: the client left.
async fn read_hello(
    stream: &mut SplitStream<WebSocket>,
) -> Result<Option<Option<ClientInfo>>, CloseReason> {
    let violation = |why: &str| (close_code::PROTOCOL_VIOLATION, why.to_owned());
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Ok(None),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Binary(_))) => {
                return Err(violation("the first frame must be a hello text frame"));
            }
            Some(Ok(Message::Text(text))) => {
                return match decode_client_frame(&text).frame {
                    Ok(ClientFrame::Hello { client }) => Ok(Some(client)),
                    Ok(_) => Err(violation("the first frame must be hello")),
                    Err(err) => Err(violation(&format!(
                        "the first frame must be hello: {}",
                        err.message
                    ))),
                };
            }
        }
    }
}

/// 1009 when the read failed because a message exceeded the limit; otherwise the
/// connection simply ends.
fn too_big(err: &axum::Error, limit: usize) -> Option<CloseReason> {
    // axum hides tungstenite's error type; its capacity errors say "too long".
    let text = err.to_string();
    tracing::debug!(%text, "WebSocket read failed");
    text.contains("too long").then(|| {
        (
            close_code::TOO_BIG,
            format!("frame larger than {limit} bytes"),
        )
    })
}

async fn send_close(sink: &mut SplitSink<WebSocket, Message>, (code, reason): CloseReason) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(truncate_reason(reason)),
    };
    let _ = tokio::time::timeout(WRITER_FLUSH, sink.send(Message::Close(Some(frame)))).await;
}

/// A close reason must fit in 123 bytes.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Drains the outbox into the socket; sends a close frame when asked to.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    mut close: oneshot::Receiver<CloseReason>,
) {
    loop {
        tokio::select! {
            biased;
            reason = &mut close => {
                if let Ok(reason) = reason {
                    send_close(&mut sink, reason).await;
                }
                return;
            }
            frame = outbox.next() => match frame {
                Some(frame) => {
                    if sink.send(Message::Text(Utf8Bytes::from(frame.text))).await.is_err() {
                        return;
                    }
                }
                None => {
                    if let Ok(reason) = close.await {
                        send_close(&mut sink, reason).await;
                    }
                    return;
                }
            },
        }
    }
}

/// One client's session: its outbound queue and its upstream sessions by server.
struct ClientSession {
    id: String,
    shared: Arc<Shared>,
    link: Link,
    upstreams: HashMap<String, Arc<UpstreamSession>>,
}

impl ClientSession {
    fn new(shared: Arc<Shared>) -> Self {
        let config = &shared.config;
        let link = Link {
            outbox: Arc::new(Outbox::new(config.outbound_queue_bytes)),
            http: shared.http.clone(),
            tasks: TaskTracker::new(),
            background: shared.background.clone(),
            inflight: Arc::new(Semaphore::new(config.max_inflight_requests)),
            request_timeout: config.request_timeout,
            ready_wait: config.connect_timeout,
        };
        let id: u128 = rand::rng().random();
        Self {
            id: format!("{id:032x}"),
            shared,
            link,
            upstreams: HashMap::new(),
        }
    }

    fn welcome(&self) {
        let servers = self
            .shared
            .servers
            .values()
            .map(|s| ServerEntry {
                name: &s.name,
                state: s.state(),
            })
            .collect();
        let welcome = GatewayFrame::Welcome {
            session: &self.id,
            protocol: protocol::SUBPROTOCOL,
            servers,
        };
        // The writer has not started; the outbox is open and empty.
        let _ = self.link.outbox.push_unsequenced(welcome.encode());
    }

    /// Handles one text frame; `Some` closes the connection.
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        let decoded = decode_client_frame(text);
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
            Ok(ClientFrame::Close { server }) => self.on_close(&server, reference).await,
            Ok(ClientFrame::Rpc { server, message }) => {
                self.on_rpc(&server, message, reference).await
            }
        }
        None
    }

    async fn on_rpc(&mut self, server: &str, message: &RawValue, reference: Option<&RawValue>) {
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
        let Some(target) = self.shared.servers.get(server).cloned() else {
            let why = format!("no server is named {server:?}; the welcome frame lists the servers");
            return match (head.kind(), head.id) {
                (Kind::Request, Some(id)) => {
                    let response =
                        jsonrpc::error_response(id, ErrorCode::UnknownServer, &why, server);
                    let _ = self
                        .link
                        .outbox
                        .push(|seq| protocol::rpc_frame(server, seq, &response))
                        .await;
                }
                _ => {
                    self.error_frame(ErrorCode::UnknownServer, &why, Some(server), reference)
                        .await
                }
            };
        };
        let initialize = head.kind() == Kind::Request
            && head.method() == "initialize"
            && head
                .params()
                .meta
                .and_then(|m| m.protocol_version)
                .is_none();
        let upstream = match self.upstreams.get(server) {
            Some(existing) if !initialize && !existing.is_ended() => existing.clone(),
            _ => {
                if let Some(previous) = self.upstreams.remove(server) {
                    previous.end(End::Replaced).await;
                }
                let fresh = UpstreamSession::new(target, self.link.clone(), initialize);
                self.upstreams.insert(server.to_owned(), fresh.clone());
                fresh
            }
        };
        upstream.carry(message, &head, reference).await;
    }

    async fn on_close(&mut self, server: &str, reference: Option<&RawValue>) {
        if !self.shared.servers.contains_key(server) {
            let why = format!("no server is named {server:?}; the welcome frame lists the servers");
            return self
                .error_frame(ErrorCode::UnknownServer, &why, Some(server), reference)
                .await;
        }
        if let Some(upstream) = self.upstreams.remove(server) {
            upstream.end(End::Closed).await;
        }
        self.session_frame(server, SessionState::Closed, None).await;
    }

    /// Forwards a status change, and ends upstream sessions on a replaced instance.
    async fn on_status(&mut self, change: StatusChange) {
        let name = &*change.server;
        let state = change.state;
        let _ = self
            .link
            .outbox
            .push(|seq| {
                GatewayFrame::Status {
                    server: name,
                    seq,
                    state,
                }
                .encode()
            })
            .await;
        let stale = self
            .upstreams
            .get(name)
            .and_then(|u| u.generation())
            .is_some_and(|generation| change.generation != Some(generation));
        if stale {
            if let Some(upstream) = self.upstreams.remove(name) {
                upstream.end(End::Lost("the server restarted".into())).await;
            }
        }
    }

    /// After falling behind the status broadcast: sends every server's current state.
    async fn resync_status(&mut self) {
        let changes: Vec<StatusChange> = self
            .shared
            .servers
            .values()
            .map(|s| {
                let status = s.status();
                StatusChange {
                    server: s.name.clone(),
                    state: status.state,
                    generation: status.endpoint.map(|e| e.generation),
                }
            })
            .collect();
        for change in changes {
            self.on_status(change).await;
        }
    }

    async fn end_all(&mut self, why: End) {
        for (_, upstream) in self.upstreams.drain() {
            upstream.end(why.clone()).await;
        }
    }

    async fn session_frame(&self, server: &str, state: SessionState, reason: Option<&str>) {
        let _ = self
            .link
            .outbox
            .push(|seq| {
                GatewayFrame::Session {
                    server,
                    seq,
                    state,
                    reason,
                }
                .encode()
            })
            .await;
    }

    async fn error_frame(
        &self,
        code: ErrorCode,
        message: &str,
        server: Option<&str>,
        reference: Option<&RawValue>,
    ) {
        let _ = self
            .link
            .outbox
            .push(|seq| {
                GatewayFrame::Error {
                    seq,
                    code,
                    message,
                    server,
                    reference,
                }
                .encode()
            })
            .await;
    }
}
