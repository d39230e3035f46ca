//! Remote servers that speak only the legacy HTTP+SSE transport (MCP 2024-11-05).
//!
//! A [`LegacySession`] owns one such session: the long-lived `GET` event stream, whose
//! first `endpoint` event names the URL to POST messages to, and whose `message` events
//! carry every response and notification of the server, in order (no ids, no resume).
//! The session ends when that stream ends; there is no reconnection, since the
//! server forgets the session with it.
//!
//! The stream has no keep-alives (mcp-proxy sends none), so silence alone proves
//! nothing; but a half-open connection would leave every request waiting for its full
//! timeout. After `idle_timeout` of silence the reader therefore asks the server a
//! `ping` of its own (its answer never reaches the client); if a second period passes
//! without a byte, the stream is dead and the session ends.
//!
//! This module owns the stream's reader task, the POSTs, and the waiters of requests
//! in flight: each waiter resolves once its response has been delivered, or with
//! [`UpstreamError::StreamCut`] when the stream ends first (it never hangs). It knows
//! nothing of client sessions: messages leave through the caller's [`Deliver`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::{self, HeaderMap};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::http::{error_status, send_error};
use super::sse::{SseEvent, SseParser};
use super::{Endpoint, UpstreamError};
use crate::jsonrpc::{self, Head, Kind};
use crate::redact::Scrubber;

/// Called, in order, with the raw JSON text of every message the server sends on the
/// stream. Returns false when the client session is gone (the session then stops reading).
pub type Deliver = Arc<dyn Fn(String) -> BoxFuture<'static, bool> + Send + Sync>;

/// Resolves once the response to a request has been delivered, or with the reason the
/// stream ended before it.
pub type Answered = oneshot::Receiver<Result<Delivered, UpstreamError>>;

/// A response delivered to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// True when it is a JSON-RPC error response.
    pub is_error: bool,
}

/// The bounds of one legacy session.
#[derive(Debug, Clone, Copy)]
pub struct LegacyLimits {
    /// Bound on the GET's `endpoint` event and on each POST's reply headers.
    pub connect_timeout: Duration,
    /// The largest single message accepted.
    pub max_message_bytes: usize,
    /// Silence after which the stream is probed, and after a second one given up.
    pub idle_timeout: Duration,
}

/// One legacy HTTP+SSE session. Dropping it stops its reader (and so the GET stream).
pub struct LegacySession {
    client: reqwest::Client,
    /// Where messages are POSTed: the `endpoint` event, resolved against the GET url.
    post_url: reqwest::Url,
    headers: HeaderMap,
    /// The bound on a POST's reply headers (the `connect_timeout` of [`Self::open`]).
    post_timeout: Duration,
    shared: Arc<StreamState>,
    _stop: DropGuard,
}

impl std::fmt::Debug for LegacySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacySession")
            .field("post_url", &self.post_url.as_str())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// What the reader task and the session share.
#[derive(Default)]
struct StreamState {
    waiters: Mutex<Waiters>,
    /// Cancelled when the reader has stopped.
    done: CancellationToken,
    /// `message` events skipped because they were not JSON.
    invalid: AtomicU64,
}

/// How many given-up request ids are remembered, to drop their late responses.
const ABANDONED_KEPT: usize = 1024;

/// Requests awaiting their responses, by canonical id (`jsonrpc::id_key`).
///
/// Bounded by the caller's in-flight limit: an entry lives while its [`Answered`] is
/// held, entries whose receiver was dropped are pruned at every request POSTed, and all
/// are resolved when the stream ends.
#[derive(Default)]
struct Waiters {
    by_id: HashMap<String, oneshot::Sender<Result<Delivered, UpstreamError>>>,
    /// Ids of requests given up on (timed out, cancelled), newest last, at most
    /// [`ABANDONED_KEPT`]: their late responses must not reach the client a second time.
    abandoned: VecDeque<String>,
    /// Why the stream ended, once it has.
    ended: Option<String>,
}

impl StreamState {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> Option<UpstreamError> {
        self.lock().ended.clone().map(UpstreamError::StreamCut)
    }

    fn wait_for(&self, key: String) -> Result<Answered, UpstreamError> {
        let mut waiters = self.lock();
        if let Some(reason) = &waiters.ended {
            return Err(UpstreamError::StreamCut(reason.clone()));
        }
        let Waiters {
            by_id, abandoned, ..
        } = &mut *waiters;
        by_id.retain(|key, tx| {
            let open = !tx.is_closed();
            if !open {
                if abandoned.len() == ABANDONED_KEPT {
                    abandoned.pop_front();
                }
                abandoned.push_back(key.clone());
            }
            open
        });
        let (tx, rx) = oneshot::channel();
        if let Some(older) = waiters.by_id.insert(key, tx) {
            let reused = "a later request reused this id before it was answered";
            let _ = older.send(Err(UpstreamError::Protocol(reused.into())));
        }
        Ok(rx)
    }

    /// True when the response with `key` answers a request the caller gave up on; its
    /// record is then forgotten.
    fn given_up(&self, key: &str) -> bool {
        let mut waiters = self.lock();
        if waiters.by_id.get(key).is_some_and(|tx| tx.is_closed()) {
            waiters.by_id.remove(key);
            return true;
        }
        match waiters.abandoned.iter().position(|k| k == key) {
            Some(index) => {
                waiters.abandoned.remove(index);
                true
            }
            None => false,
        }
    }

    /// Remembers `key` as a request whose response must not be delivered (a probe).
    fn expect_unwanted(&self, key: String) {
        let mut waiters = self.lock();
        if waiters.abandoned.len() == ABANDONED_KEPT {
            waiters.abandoned.pop_front();
        }
        waiters.abandoned.push_back(key);
    }

    fn answered(&self, key: &str, delivered: Delivered) {
        if let Some(tx) = self.lock().by_id.remove(key) {
            let _ = tx.send(Ok(delivered));
        }
    }

    /// Ends the session (closed before any waiter hears of it): every waiter, and every
    /// later request, gets `StreamCut(reason)`.
    fn finish(&self, reason: String) {
        let waiting = {
            let mut waiters = self.lock();
            waiters.ended.get_or_insert(reason.clone());
            std::mem::take(&mut waiters.by_id)
        };
        self.done.cancel();
        for tx in waiting.into_values() {
            let _ = tx.send(Err(UpstreamError::StreamCut(reason.clone())));
        }
    }
}

impl LegacySession {
    /// GETs the SSE url (the endpoint's headers plus `Accept: text/event-stream`), waits
    /// up to `connect_timeout` for the `endpoint` event, and leaves the reader running in
    /// `tasks`. `cancel` (or dropping the session) stops the reader. The endpoint must
    /// have the GET url's origin.
    pub async fn open(
        client: &reqwest::Client,
        endpoint: &Endpoint,
        deliver: Deliver,
        limits: LegacyLimits,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, UpstreamError> {
        let LegacyLimits {
            connect_timeout,
            max_message_bytes,
            idle_timeout,
        } = limits;
        let stop = cancel.child_token();
        let guard = stop.clone().drop_guard();
        let shared = Arc::new(StreamState::default());
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let opening = async {
            let request = client
                .get(endpoint.url.clone())
                .headers(endpoint.headers.clone())
                .header(header::ACCEPT, "text/event-stream");
            let response = request
                .send()
                .await
                .map_err(|e| send_error(e, connect_timeout))?;
            if !response.status().is_success() {
                let secrets = Scrubber::new(&endpoint.url, &endpoint.headers);
                return Err(error_status(response, false, &secrets).await);
            }
            let content_type = response.headers().get(header::CONTENT_TYPE);
            let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
            if !content_type
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
            {
                let msg = format!("the GET answered {content_type:?}, not an event stream");
                return Err(UpstreamError::Protocol(msg));
            }
            let reader = Reader {
                parser: SseParser::new(max_message_bytes),
                shared: shared.clone(),
                deliver,
                stop: stop.clone(),
                endpoint: Some(endpoint_tx),
                prober: Prober {
                    client: client.clone(),
                    get_url: endpoint.url.clone(),
                    post_url: None,
                    headers: endpoint.headers.clone(),
                    timeout: connect_timeout,
                },
                idle_timeout,
            };
            // The reader's lines belong to the upstream session that opened it.
            let reader = reader.run(response.bytes_stream().boxed());
            tasks.spawn(tracing::Instrument::in_current_span(reader));
            endpoint_rx.await.map_err(|_| {
                let reason = shared.ended().map_or_else(String::new, |e| e.to_string());
                UpstreamError::Protocol(format!("no endpoint event: {reason}"))
            })
        };
        let post_url = tokio::select! {
            _ = cancel.cancelled() => Err(UpstreamError::SessionClosed),
            opened = tokio::time::timeout(connect_timeout, opening) => {
                opened.unwrap_or(Err(UpstreamError::Timeout(connect_timeout)))
            }
        }??;
        Ok(Self {
            client: client.clone(),
            post_url,
            headers: endpoint.headers.clone(),
            post_timeout: connect_timeout,
            shared,
            _stop: guard,
        })
    }

    /// POSTs one message. For a request, `request_id` is its canonical id
    /// (`jsonrpc::id_key`) and the receiver resolves once its response has been
    /// delivered. Non-2xx is [`UpstreamError::Status`], no connection
    /// [`UpstreamError::Connect`], an ended stream [`UpstreamError::StreamCut`].
    pub async fn post(
        &self,
        body: Bytes,
        request_id: Option<String>,
    ) -> Result<Option<Answered>, UpstreamError> {
        // Registered before the POST: the response may arrive before the 202.
        let answered = match request_id {
            Some(key) => Some(self.shared.wait_for(key)?),
            None => match self.shared.ended() {
                Some(err) => return Err(err),
                None => None,
            },
        };
        let request = self
            .client
            .post(self.post_url.clone())
            .headers(self.headers.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        let timeout = self.post_timeout;
        let exchange = async {
            let response = request.send().await.map_err(|e| send_error(e, timeout))?;
            if response.status().is_success() {
                Ok(())
            } else {
                let secrets = Scrubber::new(&self.post_url, &self.headers);
                Err(error_status(response, false, &secrets).await)
            }
        };
        // On failure the receiver is dropped here, and its entry pruned later.
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)))?;
        Ok(answered)
    }

    /// True once the GET stream has ended (the session is over).
    pub fn is_closed(&self) -> bool {
        self.shared.done.is_cancelled()
    }

    /// Resolves when the GET stream has ended.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await;
    }

    /// How many `message` events were skipped because they were not JSON.
    pub fn invalid_events(&self) -> u64 {
        self.shared.invalid.load(Ordering::Relaxed)
    }
}

/// Resolves the `endpoint` event against the GET url; it must keep the url's origin.
pub(crate) fn post_url(get_url: &reqwest::Url, data: &str) -> Result<reqwest::Url, UpstreamError> {
    let post_url = get_url
        .join(data.trim())
        .map_err(|e| UpstreamError::Protocol(format!("bad endpoint event: {e}")))?;
    if post_url.origin() != get_url.origin() {
        let msg = "the endpoint event names another origin";
        return Err(UpstreamError::Protocol(msg.into()));
    }
    Ok(post_url)
}

/// Asks the server a `ping` of the gateway's own, to tell a quiet stream from a dead one.
struct Prober {
    client: reqwest::Client,
    get_url: reqwest::Url,
    /// Known once the `endpoint` event has arrived.
    post_url: Option<reqwest::Url>,
    headers: HeaderMap,
    timeout: Duration,
}

impl Prober {
    /// Sends one probe; its answer is recognised by its id and never delivered. False
    /// when there is nowhere to send it yet.
    fn send(&self, shared: &StreamState) -> bool {
        let Some(url) = self.post_url.clone() else {
            return false;
        };
        let id = format!("mcpmux-liveness-{:016x}", rand::random::<u64>());
        // `jsonrpc::id_key` of a string id without escapes: the string, quoted.
        shared.expect_unwanted(format!("\"{id}\""));
        let body = format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"ping"}}"#);
        let request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        // Bounded by its timeout; its outcome does not matter, only the stream's life.
        tokio::spawn(tokio::time::timeout(self.timeout, request.send()));
        true
    }
}

/// The reader task: parses the GET stream, hands the endpoint to `open`, delivers
/// messages and resolves waiters, and notices a dead stream.
struct Reader {
    parser: SseParser,
    shared: Arc<StreamState>,
    deliver: Deliver,
    stop: CancellationToken,
    endpoint: Option<oneshot::Sender<Result<reqwest::Url, UpstreamError>>>,
    prober: Prober,
    idle_timeout: Duration,
}

impl Reader {
    async fn run(mut self, mut body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>) {
        let mut events = Vec::new();
        let mut probing = false;
        let reason = 'read: loop {
            let chunk = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break "the session was closed".to_owned(),
                chunk = tokio::time::timeout(self.idle_timeout, body.next()) => chunk,
            };
            let Ok(chunk) = chunk else {
                let silence = self.idle_timeout.as_millis();
                if probing {
                    break format!(
                        "the SSE stream sent nothing for {silence} ms, not even the answer to a ping"
                    );
                }
                probing = self.prober.send(&self.shared);
                continue;
            };
            probing = false;
            let fed = match chunk {
                None if self.parser.has_partial() => {
                    break "the stream ended inside an event".into();
                }
                None => break "the server closed the SSE stream".into(),
                Some(Err(err)) => break format!("the SSE stream broke: {err}"),
                Some(Ok(bytes)) => self.parser.feed(&bytes, &mut events),
            };
            for event in std::mem::take(&mut events) {
                if !self.handle(event).await {
                    break 'read "the client session is gone".to_owned();
                }
            }
            if let Err(err) = fed {
                break err.to_string();
            }
        };
        tracing::debug!(%reason, "legacy SSE stream ended");
        self.shared.finish(reason);
    }

    /// Handles one event; false when the session must stop reading.
    async fn handle(&mut self, event: SseEvent) -> bool {
        match event.event.as_ref() {
            "endpoint" => {
                if let Some(tx) = self.endpoint.take() {
                    let resolved = post_url(&self.prober.get_url, &event.data);
                    self.prober.post_url = resolved.as_ref().ok().cloned();
                    let _ = tx.send(resolved);
                }
                return true;
            }
            "message" if !event.data.trim().is_empty() => {}
            _ => return true,
        }
        let answers = match Head::parse(&event.data) {
            Ok(head) if head.kind() == Kind::Response => head.id.map(|id| {
                let is_error = head.error.is_some();
                (jsonrpc::id_key(id), Delivered { is_error })
            }),
            Ok(_) => None,
            Err(err) => {
                self.shared.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, "skipping a legacy SSE event that is not JSON-RPC");
                return true;
            }
        };
        if answers
            .as_ref()
            .is_some_and(|(key, _)| self.shared.given_up(key))
        {
            // The client already had its answer (a timeout) or asked for none (cancel).
            tracing::debug!("dropping a legacy response to a request given up on");
            return true;
        }
        let delivered = tokio::select! {
            _ = self.stop.cancelled() => false,
            delivered = (self.deliver)(event.data) => delivered,
        };
        if let (true, Some((key, response))) = (delivered, answers) {
            self.shared.answered(&key, response);
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A fake legacy server: the test writes the GET stream and reads the POSTs.
    struct Fake {
        stream: Mutex<Option<UnboundedReceiver<String>>>,
        posts: UnboundedSender<String>,
    }

    struct Harness {
        endpoint: Endpoint,
        events: UnboundedSender<String>,
        posts: UnboundedReceiver<String>,
        delivered: UnboundedReceiver<String>,
        deliver: Deliver,
    }

    async fn fake() -> Harness {
        let (events, stream) = unbounded_channel();
        let (posts_tx, posts) = unbounded_channel();
        let state = Arc::new(Fake {
            stream: Mutex::new(Some(stream)),
            posts: posts_tx,
        });
        let app = Router::new()
            .route("/sse", get(sse))
            .route("/messages", post(message))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (delivered_tx, delivered) = unbounded_channel();
        let deliver: Deliver = Arc::new(move |text| {
            let tx = delivered_tx.clone();
            Box::pin(async move { tx.send(text).is_ok() })
        });
        Harness {
            endpoint: Endpoint {
                url: format!("http://{addr}/sse").parse().unwrap(),
                headers: HeaderMap::new(),
                generation: 1,
                transport: crate::upstream::Transport::LegacySse,
            },
            events,
            posts,
            delivered,
            deliver,
        }
    }

    async fn sse(State(fake): State<Arc<Fake>>) -> axum::response::Response {
        let rx = fake.stream.lock().unwrap().take().expect("one GET");
        let body = futures::stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            Some((Ok::<_, Infallible>(Bytes::from(event)), rx))
        });
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap()
    }

    async fn message(
        State(fake): State<Arc<Fake>>,
        Query(query): Query<HashMap<String, String>>,
        body: String,
    ) -> (StatusCode, &'static str) {
        if query.get("sessionId").map(String::as_str) != Some("good") {
            return (StatusCode::BAD_REQUEST, "unknown session");
        }
        let _ = fake.posts.send(body);
        (StatusCode::ACCEPTED, "Accepted")
    }

    fn endpoint_event(data: &str) -> String {
        format!("event: endpoint\ndata: {data}\n\n")
    }

    fn message_event(data: &str) -> String {
        format!("event: message\ndata: {data}\n\n")
    }

    async fn open(
        h: &Harness,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<LegacySession, UpstreamError> {
        open_with(h, timeout, Duration::from_secs(60), cancel).await
    }

    async fn open_idle(h: &Harness, idle_timeout: Duration) -> LegacySession {
        open_with(h, WAIT, idle_timeout, CancellationToken::new())
            .await
            .unwrap()
    }

    async fn open_with(
        h: &Harness,
        connect_timeout: Duration,
        idle_timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<LegacySession, UpstreamError> {
        let limits = LegacyLimits {
            connect_timeout,
            max_message_bytes: 4096,
            idle_timeout,
        };
        let (client, tasks) = (reqwest::Client::new(), TaskTracker::new());
        LegacySession::open(
            &client,
            &h.endpoint,
            h.deliver.clone(),
            limits,
            cancel,
            &tasks,
        )
        .await
    }

    #[tokio::test]
    async fn a_quiet_stream_that_answers_its_probe_lives_and_the_answer_is_not_delivered() {
        let mut h = fake().await;
        h.events
            .send(endpoint_event("/messages?sessionId=good"))
            .unwrap();
        let session = open_idle(&h, Duration::from_millis(100)).await;
        let probe: serde_json::Value =
            serde_json::from_str(&h.posts.recv().await.expect("a probe")).unwrap();
        assert_eq!(probe["method"], "ping");
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": probe["id"], "result": {}});
        h.events.send(message_event(&answer.to_string())).unwrap();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        h.events.send(message_event(note)).unwrap();
        assert_eq!(
            h.delivered.recv().await.as_deref(),
            Some(note),
            "not the probe's answer"
        );
        assert!(!session.is_closed());
    }

    #[tokio::test]
    async fn a_stream_silent_through_its_probe_ends_the_session_and_fails_waiters() {
        let mut h = fake().await;
        h.events
            .send(endpoint_event("/messages?sessionId=good"))
            .unwrap();
        let session = open_idle(&h, Duration::from_millis(100)).await;
        let body = Bytes::from(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let rx = session.post(body, Some("1".into())).await.unwrap();
        assert!(h.posts.recv().await.is_some(), "the request");
        let probe = h.posts.recv().await.expect("a probe");
        assert!(probe.contains("\"ping\""), "{probe}");
        let failed = answered(rx.expect("a waiter")).await;
        assert!(
            matches!(&failed, Err(UpstreamError::StreamCut(why)) if why.contains("ping")),
            "{failed:?}"
        );
        tokio::time::timeout(WAIT, session.closed()).await.unwrap();
    }

    #[test]
    fn late_responses_to_requests_given_up_on_are_recognised() {
        let shared = StreamState::default();
        drop(shared.wait_for("1".into()).unwrap());
        assert!(shared.given_up("1"), "the receiver was dropped: given up");
        assert!(!shared.given_up("1"), "forgotten once recognised");
        drop(shared.wait_for("2".into()).unwrap());
        // Registering another request prunes "2"; it is still remembered.
        let _pending = shared.wait_for("3".into()).unwrap();
        assert!(shared.given_up("2"));
        assert!(!shared.given_up("3"), "still awaited");
    }

    async fn answered(rx: Answered) -> Result<Delivered, UpstreamError> {
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("resolves, not hangs")
            .expect("sender kept")
    }

    #[tokio::test]
    async fn delivers_in_order_and_resolves_the_waiter() {
        let mut h = fake().await;
        h.events
            .send(endpoint_event("/messages?sessionId=good"))
            .unwrap();
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        h.events.send(message_event(log)).unwrap();
        h.events.send(message_event("not json")).unwrap();
        let session = open(&h, WAIT, CancellationToken::new()).await.unwrap();
        let request = r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#;
        let rx = session
            .post(Bytes::from(request), Some("\"a\"".into()))
            .await
            .unwrap();
        assert_eq!(h.posts.recv().await.as_deref(), Some(request));
        // The same id, written with an escape: matched by value.
        let response = r#"{"jsonrpc":"2.0","id":"\u0061","result":{}}"#;
        h.events.send(message_event(response)).unwrap();
        answered(rx.expect("a waiter")).await.unwrap();
        assert_eq!(h.delivered.recv().await.as_deref(), Some(log));
        assert_eq!(
            h.delivered.try_recv().as_deref(),
            Ok(response),
            "delivered before resolving"
        );
        assert_eq!(session.invalid_events(), 1);
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert!(
            session
                .post(Bytes::from(note), None)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!session.is_closed());
    }

    #[tokio::test]
    async fn stream_end_fails_pending_waiters() {
        let h = fake().await;
        h.events
            .send(endpoint_event("messages?sessionId=good"))
            .unwrap();
        let session = open(&h, WAIT, CancellationToken::new()).await.unwrap();
        let body = Bytes::from(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#);
        let rx = session
            .post(body.clone(), Some("7".into()))
            .await
            .unwrap()
            .unwrap();
        drop(h.events);
        assert!(matches!(
            answered(rx).await,
            Err(UpstreamError::StreamCut(_))
        ));
        tokio::time::timeout(WAIT, session.closed()).await.unwrap();
        assert!(session.is_closed());
        let again = session.post(body, Some("8".into())).await;
        assert!(
            matches!(again, Err(UpstreamError::StreamCut(_))),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn rejected_post_is_a_status_error() {
        let h = fake().await;
        h.events
            .send(endpoint_event("/messages?sessionId=bad"))
            .unwrap();
        let session = open(&h, WAIT, CancellationToken::new()).await.unwrap();
        let posted = session.post(Bytes::from("{}"), Some("1".into())).await;
        match posted {
            Err(UpstreamError::Status { status: 400, body }) => assert_eq!(body, "unknown session"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn open_fails_cleanly_and_cancel_stops_the_reader() {
        let h = fake().await;
        let slow = open(&h, Duration::from_millis(200), CancellationToken::new()).await;
        assert!(
            matches!(slow, Err(UpstreamError::Timeout(_))),
            "no endpoint event"
        );

        let h = fake().await;
        h.events
            .send(endpoint_event("http://elsewhere.example/messages"))
            .unwrap();
        let foreign = open(&h, WAIT, CancellationToken::new()).await;
        assert!(
            matches!(foreign, Err(UpstreamError::Protocol(_))),
            "another origin"
        );

        let h = fake().await;
        h.events
            .send(endpoint_event("/messages?sessionId=good"))
            .unwrap();
        let cancel = CancellationToken::new();
        let session = open(&h, WAIT, cancel.clone()).await.unwrap();
        let rx = session
            .post(Bytes::from("{}"), Some("1".into()))
            .await
            .unwrap()
            .unwrap();
        cancel.cancel();
        assert!(matches!(
            answered(rx).await,
            Err(UpstreamError::StreamCut(_))
        ));
        assert!(session.is_closed());

        let mut h = fake().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        h.endpoint.url = format!("http://{}/sse", closed.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(closed);
        let refused = open(&h, WAIT, CancellationToken::new()).await;
        assert!(
            matches!(refused, Err(UpstreamError::Connect(_))),
            "{refused:?}"
        );

        let h = fake().await;
        h.events
            .send(format!("data: {}\n\n", "x".repeat(5000)))
            .unwrap();
        let huge = open(&h, WAIT, CancellationToken::new()).await;
        assert!(matches!(huge, Err(UpstreamError::Protocol(_))), "{huge:?}");
    }
}
