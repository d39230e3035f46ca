//! One WebSocket connection: the `hello` handshake (new session or resume), the frame
//! reader, the writer task, heartbeats, and what happens to the session when the socket
//! ends.
//!
//! The connection task reads frames and owns the client session while the socket is
//! attached; a writer task owns the sink, drains the session's outbox (the frames ready
//! together in one write), pings on the heartbeat interval and gives each write
//! `writeTimeoutMs`. When the socket drops
//! without a close frame (or the client is too slow, or silent), the session is handed
//! to a holder for resume; when the client closes, breaks the protocol, or the gateway
//! shuts down, the session ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::oneshot;

use crate::auth::{Admission, ConnectionSlot, Eviction};
use crate::context::Place;
use crate::metrics::{Metrics, SocketClose};
use crate::outbox::Outbox;
use crate::protocol::{
    ClientFrame, ClientInfo, Resume, Token, close_code, decode_client_frame, session_id,
};
use crate::resume::{Claim, Claims, Handover, KeyName, Refusal, hand_over, take_from_store};
use crate::session::{ClientSession, CloseReason};
use crate::state::GatewayState;

/// The socket's read buffer, allocated for every connection, idle or not: small, since
/// idle connections are the many. A larger client frame grows it as needed.
pub const READ_BUFFER_BYTES: usize = 1024;
/// Frames are written to the socket once this many bytes are buffered, or when the
/// writer flushes (after each batch). The buffer keeps the capacity it reached (the
/// largest batch, or the largest frame) for the socket's life: keep it small.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// The most frames and bytes the writer feeds before one flush: frames that are ready
/// together leave in one write instead of one write each.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 16 * 1024;

/// How long the writer may take to send a close frame, or to stop after the reader.
const WRITER_FLUSH: Duration = Duration::from_secs(2);
/// How long the socket is read (and discarded) after the gateway closed it, waiting for
/// the client's close reply; a client that answers ends it sooner.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long a socket whose session is held waits for the key's evicted held sessions
/// to end (they end promptly; this only bounds it).
const EVICTION_WAIT: Duration = Duration::from_secs(10);

/// How the socket's life ended, which decides the session's fate.
enum SocketEnd {
    /// The gateway is shutting down: close 1001, drain, end the session.
    Shutdown,
    /// Another socket resumed this session: close 4002, hand the session over.
    Claimed(Claim),
    /// The client sent a close frame: end the session.
    ClientClosed,
    /// The session must end with this close: the client broke the protocol, or its key
    /// was revoked (4503).
    Violation(CloseReason),
    /// The client did not answer pings: close 4001, keep the session for resume.
    Silent,
    /// The socket dropped, or the writer gave up on a slow client: keep the session.
    Dropped,
}

/// Serves one upgraded WebSocket until it closes. `place` is its place among
/// `maxSessions`, which passes to the session the hello opens; `admission` says what
/// its key (if any was presented at the upgrade) may do; `routed` is the session its
/// upgrade URL named (`?session=`), which a resume in `hello` must name too.
///
/// The task lives as long as its socket, idle or not, so its state is what an idle
/// socket costs: the hello and the socket's end run in futures of their own (boxed,
/// freed once done), and only the loop's state stays in the task.
pub async fn serve(
    socket: WebSocket,
    state: Arc<GatewayState>,
    place: Place,
    admission: Admission,
    routed: Option<Box<str>>,
) {
    let context = state.context.clone();
    let _open = context.metrics.connection_opened();
    let (mut sink, mut stream) = socket.split();
    let attaching = attach(&state, &mut sink, &mut stream, place, admission, routed);
    let Some(Attached {
        mut session,
        resumed,
        connection,
        key,
    }) = Box::pin(attaching).await
    else {
        return;
    };
    let mut claims = state.sessions.register(&session.id, key);
    let outbox = session.link.outbox.clone();
    // Frames outside the sequence are written first: the welcome precedes any replay.
    let _ = outbox.push_unsequenced(session.welcome(resumed));
    let (close_tx, close_rx) = oneshot::channel();
    let writer_config = WriterConfig {
        attachment: outbox.attachment(),
        write_timeout: context.config.write_timeout,
        heartbeat: context.config.heartbeat,
        metrics: context.metrics.clone(),
    };
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone(), close_rx, writer_config));
    let silence_limit = context.config.heartbeat * 2;
    let mut heartbeat = tokio::time::interval(context.config.heartbeat);
    let mut last_heard = Instant::now();
    let mut writer_done = false;

    let ending = loop {
        tokio::select! {
            _ = context.shutdown.cancelled() => break SocketEnd::Shutdown,
            claim = claims.next() => break SocketEnd::Claimed(claim),
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break SocketEnd::Dropped;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silence_limit {
                    break SocketEnd::Silent;
                }
            }
            // The handlers' futures are boxed: held inline they would size this task's
            // state for its rare busy moments, and an idle socket would carry that.
            event = session.changes.recv() => {
                if let Some(reason) = Box::pin(session.on_status_event(event)).await {
                    break SocketEnd::Violation(reason);
                }
            }
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Close(_))) => break SocketEnd::ClientClosed,
                    None => break SocketEnd::Dropped,
                    Some(Err(err)) => match too_big(&err, context.config.max_frame_bytes) {
                        Some(reason) => break SocketEnd::Violation(reason),
                        None => break SocketEnd::Dropped,
                    },
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reason) = Box::pin(session.on_text(text)).await {
                            break SocketEnd::Violation(reason);
                        }
                        // Time spent handling the frame is not the client's silence.
                        last_heard = Instant::now();
                    }
                    Some(Ok(Message::Binary(_))) => Box::pin(session.on_binary()).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    };

    let end = SocketEnded {
        ending,
        writer,
        writer_done,
        close_tx,
        outbox,
        claims,
        connection,
    };
    Box::pin(detach(&state, session, end, stream)).await;
}

/// A socket's client session once its `hello` was accepted.
struct Attached {
    session: ClientSession,
    resumed: bool,
    /// The socket's place among its key's connections, held until it closes.
    connection: Option<ConnectionSlot>,
    /// The name of its key, if it has one.
    key: KeyName,
}

/// Reads `hello`, admits the socket's key and opens or resumes its client session;
/// `None` when the socket was refused (closed with the reason) or left.
async fn attach(
    state: &Arc<GatewayState>,
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    place: Place,
    admission: Admission,
    routed: Option<Box<str>>,
) -> Option<Attached> {
    let context = state.context.clone();
    let hello = tokio::select! {
        _ = context.shutdown.cancelled() => Err((close_code::GOING_AWAY, "mcpmux is shutting down".to_owned())),
        hello = tokio::time::timeout(context.config.hello_timeout, read_hello(stream, context.config.max_frame_bytes)) => match hello {
            Err(_) => Err((
                close_code::HELLO_TIMEOUT,
                format!("no hello within {} ms", context.config.hello_timeout.as_millis()),
            )),
            Ok(hello) => hello,
        },
    };
    let (client, resume, token) = match hello {
        Ok(Some(hello)) => hello,
        // The place is free before the socket closes.
        Ok(None) => {
            drop(place);
            return None;
        }
        Err(reason) => {
            drop(place);
            send_close(sink, reason).await;
            return None;
        }
    };
    if let Some(reason) = routed_elsewhere(routed.as_deref(), resume.as_ref()) {
        tracing::debug!(code = reason.0, reason = %reason.1, "hello refused");
        drop(place);
        send_close(sink, reason).await;
        return None;
    }
    // Subscribed before the key is judged, so that rules replaced meanwhile are seen.
    let changes = context.servers.subscribe();
    // The key: the one given at the upgrade, or the hello's token. The socket's place
    // among its key's connections is held until this function returns.
    let (grant, connection) = match admission
        .after_hello(token.as_ref().map(Token::expose))
        .await
    {
        Ok(admitted) => (admitted.grant, admitted.connection),
        Err(reason) => {
            tracing::debug!(code = reason.0, reason = %reason.1, "hello refused");
            drop(place);
            send_close(sink, reason).await;
            return None;
        }
    };
    let key = grant.key_name().cloned();
    let (session, resumed) = match resume {
        None => (
            ClientSession::new(context.clone(), place, grant, changes),
            false,
        ),
        Some(Resume { session, last_seq }) => {
            match state
                .sessions
                .take(&session, last_seq, key.as_deref())
                .await
            {
                // The resumed session holds its own place.
                Ok(session) => {
                    context.metrics.resume(true);
                    (session, true)
                }
                Err(Refusal::Unknown) => {
                    // Not held here: with a shared store, its owner may have stopped.
                    let claimant = (place, grant, changes);
                    match take_from_store(&context, claimant, &session, last_seq).await {
                        Ok(session) => {
                            context.metrics.resume(true);
                            (session, true)
                        }
                        Err((refusal, (place, grant, changes))) => {
                            context.metrics.resume(false);
                            tracing::debug!(%refusal, "resume refused; starting a fresh session");
                            let fresh = ClientSession::new(context.clone(), place, grant, changes);
                            (fresh, false)
                        }
                    }
                }
                Err(refusal) => {
                    context.metrics.resume(false);
                    match session_id::owner(&session) {
                        Some(owner) if owner != &*context.config.instance => {
                            tracing::debug!(%owner, "resume of a session another instance owns; starting a fresh session");
                        }
                        _ => tracing::debug!(%refusal, "resume refused; starting a fresh session"),
                    }
                    let fresh = ClientSession::new(context.clone(), place, grant, changes);
                    (fresh, false)
                }
            }
        }
    };
    let span = tracing::Span::current();
    span.record("session", session.log_id());
    if let Some(key) = key.as_deref() {
        span.record("key", key);
    }
    tracing::debug!(?client, resumed, "client attached");
    Some(Attached {
        session,
        resumed,
        connection,
        key,
    })
}

/// What the loop leaves for the socket's end.
struct SocketEnded {
    ending: SocketEnd,
    writer: tokio::task::JoinHandle<()>,
    /// The writer task ended by itself.
    writer_done: bool,
    close_tx: oneshot::Sender<CloseReason>,
    outbox: Arc<Outbox>,
    claims: Claims,
    connection: Option<ConnectionSlot>,
}

/// Closes the socket and decides the session's fate: held for resume, handed to the
/// socket that claimed it, or ended.
async fn detach(
    state: &Arc<GatewayState>,
    session: ClientSession,
    end: SocketEnded,
    mut stream: SplitStream<WebSocket>,
) {
    let context = &state.context;
    let SocketEnded {
        ending,
        mut writer,
        writer_done,
        close_tx,
        outbox,
        claims,
        connection,
    } = end;
    let close = match &ending {
        SocketEnd::Shutdown => Some((close_code::GOING_AWAY, "mcpmux is shutting down".to_owned())),
        SocketEnd::Claimed(_) => Some((
            close_code::SESSION_TAKEN_OVER,
            "another connection resumed this session".to_owned(),
        )),
        SocketEnd::Violation(reason) => Some(reason.clone()),
        SocketEnd::Silent => Some((
            close_code::HEARTBEAT_TIMEOUT,
            "no answer to pings".to_owned(),
        )),
        SocketEnd::ClientClosed | SocketEnd::Dropped => None,
    };
    // A writer that ended by itself (a failed or late write) counted its own end.
    let closed = socket_close(&ending);
    if !writer_done {
        context.metrics.socket_closed(closed);
    }
    // Sockets end all the time: an ordinary event, not news.
    tracing::debug!(end = ?closed, "connection ended");
    // The writer stops taking frames before the session changes hands: the outbox is
    // detached, and the writer, told to stop, checks that before taking another frame.
    outbox.detach();
    if let Some(reason) = close {
        let _ = close_tx.send(reason);
    } else {
        drop(close_tx);
    }
    // The session changes hands at once (a resume may already be on its way); the
    // writer finishes its close frame and the socket lingers meanwhile.
    let linger = !matches!(ending, SocketEnd::Dropped);
    let flush = async {
        if !writer_done
            && tokio::time::timeout(WRITER_FLUSH, &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    };
    let window = context.config.resume_window;
    // A key with maxConnections holds that many sessions at most: holding this one may
    // end the key's oldest, and the socket counts against its key until that one ended
    // (so a new socket of the key finds its place among maxSessions free).
    let own_key = connection.as_ref().map(|slot| slot.key().clone());
    let held = || own_key.as_ref().and_then(|key| key.hold_session()).unzip();
    let evicted = |evictions: Option<Vec<Eviction>>| async move {
        let ended = futures::future::join_all(evictions.into_iter().flatten().map(Eviction::ended));
        let _ = tokio::time::timeout(EVICTION_WAIT, ended).await;
    };
    match ending {
        SocketEnd::Silent | SocketEnd::Dropped => {
            let (slot, evictions) = held();
            state.sessions.hold(session, claims, window, slot);
            tokio::join!(flush, evicted(evictions));
        }
        SocketEnd::Claimed(claim) => match hand_over(session, claim) {
            Handover::Done => flush.await,
            Handover::Abandoned(session) => {
                // The new socket left before taking it: keep the session for resume.
                state.sessions.reinstate(&session.id, &claims);
                let (slot, evictions) = held();
                state.sessions.hold(session, claims, window, slot);
                tokio::join!(flush, evicted(evictions));
            }
            Handover::Refused(session) => {
                state.sessions.forget(&session.id, &claims);
                drop(claims);
                tokio::join!(Box::pin(session.finish(None)), flush);
            }
        },
        SocketEnd::Shutdown => {
            state.sessions.forget(&session.id, &claims);
            // A claim already queued is refused at once, not after the drain.
            drop(claims);
            let drain = Box::pin(session.finish(Some(context.config.shutdown_grace)));
            tokio::join!(drain, flush);
        }
        SocketEnd::ClientClosed | SocketEnd::Violation(_) => {
            state.sessions.forget(&session.id, &claims);
            drop(claims);
            tokio::join!(Box::pin(session.finish(None)), flush);
        }
    }
    // Read on briefly after closing, so that a client still sending (a frame over the
    // limit, say) gets our close frame instead of a TCP reset.
    if linger {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while stream.next().await.is_some() {}
        })
        .await;
    }
}

/// What `hello` brings: the client's name, a resume request, an API key.
type Hello = (Option<ClientInfo>, Option<Resume>, Option<Token>);

/// Waits for the first frame, which must be `hello`. `Ok(None)`: the client left.
async fn read_hello(
    stream: &mut SplitStream<WebSocket>,
    limit: usize,
) -> Result<Option<Hello>, CloseReason> {
    let violation = |why: &str| (close_code::PROTOCOL_VIOLATION, why.to_owned());
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(err)) => return too_big(&err, limit).map_or(Ok(None), Err),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Binary(_))) => {
                return Err(violation("the first frame must be a hello text frame"));
            }
            Some(Ok(Message::Text(text))) => {
                return match decode_client_frame(&text).frame {
                    Ok(ClientFrame::Hello {
                        client,
                        resume,
                        token,
                    }) => Ok(Some((client, resume, token))),
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

/// A 4500 close when the upgrade URL named one session and `hello` resumes another: the
/// load balancer routed the socket on a session the client does not mean (a client
/// bug). The named session is left alone; a `hello` without `resume` opens a fresh
/// session wherever it landed.
fn routed_elsewhere(routed: Option<&str>, resume: Option<&Resume>) -> Option<CloseReason> {
    let (routed, resume) = (routed?, resume?);
    (routed != resume.session).then(|| {
        (
            close_code::PROTOCOL_VIOLATION,
            "hello resumes another session than the upgrade URL's ?session=; send the same id in both"
                .to_owned(),
        )
    })
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

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        _ => 0,
    }
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

/// How a socket's end is counted.
fn socket_close(ending: &SocketEnd) -> SocketClose {
    match ending {
        SocketEnd::Shutdown => SocketClose::Shutdown,
        SocketEnd::Claimed(_) => SocketClose::TakenOver,
        SocketEnd::ClientClosed => SocketClose::Client,
        SocketEnd::Violation((close_code::RATE_LIMITED, _)) => SocketClose::RateLimited,
        SocketEnd::Violation(_) => SocketClose::Violation,
        SocketEnd::Silent => SocketClose::Heartbeat,
        SocketEnd::Dropped => SocketClose::Dropped,
    }
}

struct WriterConfig {
    /// The outbox attachment this writer serves.
    attachment: u64,
    write_timeout: Duration,
    heartbeat: Duration,
    /// Counts the writer's own ends (slow client, failed write).
    metrics: Metrics,
}

/// Drains the outbox into the socket and pings on the heartbeat interval. Returns when
/// asked to close (after sending the close frame), when the socket fails, or when a
/// write misses its deadline (after trying to send close 4000).
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    mut close: oneshot::Receiver<CloseReason>,
    config: WriterConfig,
) {
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + config.heartbeat,
        config.heartbeat,
    );
    loop {
        let first = tokio::select! {
            biased;
            reason = &mut close => {
                if let Ok(reason) = reason {
                    send_close(&mut sink, reason).await;
                }
                return;
            }
            _ = ping.tick() => Message::Ping(Default::default()),
            frame = outbox.next(config.attachment) => match frame {
                Some(frame) => Message::Text(frame.text),
                None => {
                    // Detached or closed: wait for the reader's verdict.
                    if let Ok(reason) = close.await {
                        send_close(&mut sink, reason).await;
                    }
                    return;
                }
            },
        };
        // Let the tasks that are ready run first (the upstream streams and exchanges of
        // this and other sessions): frames they produce in the same turn of the
        // scheduler then leave in this batch's one write, instead of one write each.
        tokio::task::yield_now().await;
        // The frames ready behind the first go with it, then one flush; the deadline
        // covers the batch. (Boxed: an idle writer then holds only its wait.)
        let batch = Box::pin(async {
            let mut bytes = message_len(&first);
            sink.feed(first).await?;
            for _ in 1..BATCH_FRAMES {
                if bytes >= BATCH_BYTES {
                    break;
                }
                let Some(frame) = outbox.try_next(config.attachment) else {
                    break;
                };
                bytes += frame.text.len();
                sink.feed(Message::Text(frame.text)).await?;
            }
            sink.flush().await
        });
        match tokio::time::timeout(config.write_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                config.metrics.socket_closed(SocketClose::Dropped);
                // Nobody will drain the outbox any more: producers must stop waiting.
                outbox.detach_attachment(config.attachment);
                return;
            }
            Err(_) => {
                outbox.detach_attachment(config.attachment);
                config.metrics.socket_closed(SocketClose::SlowConsumer);
                tracing::debug!("client too slow: a write missed its deadline");
                let reason = (
                    close_code::SLOW_CONSUMER,
                    "too slow to read its frames".to_owned(),
                );
                let frame = CloseFrame {
                    code: reason.0,
                    reason: Utf8Bytes::from(reason.1),
                };
                // The close frame queues behind the frame that missed its deadline: a
                // client that is slow but still reading gets it; one that reads nothing
                // cannot, and sees the connection end.
                let close = sink.send(Message::Close(Some(frame)));
                let _ = tokio::time::timeout(CLOSE_LINGER, close).await;
                return;
            }
        }
    }
}
