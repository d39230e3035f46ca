//! The load a benchmark puts on a gateway or an upstream: closed-loop calls with a fixed
//! number in flight (over an mcpmux WebSocket, a plain JSON-RPC WebSocket, or Streamable
//! HTTP straight to the upstream), event-stream readers for fan-out, and idle sockets.
//!
//! Every loop is bounded: calls are sent until the measurement window ends, then the
//! ones in flight are awaited (at most [`DRAIN`]); readers stop after the count they
//! expect or [`DRAIN`] without an event.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use mcpmux::upstream::sse::SseParser;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::upstream::unix_micros;

/// The longest wait for any one answer or event before a run is declared stuck.
pub const DRAIN: Duration = Duration::from_secs(30);

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Builds the text of request `id` (a JSON-RPC message).
pub type MakeRequest = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// When calls count: those completing inside `[start, end]`. A loop that got no answer
/// inside it (a slow call on a loaded machine, in a short smoke window) counts its first
/// answer after it, and the window is then taken to end there: a figure is never made of
/// no calls at all.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Calls completing before this are warm-up.
    pub start: Instant,
    /// No call is sent after this; calls completing after it do not count.
    pub end: Instant,
}

impl Window {
    /// A window opening after `warmup` from now and lasting `length`.
    pub fn after(warmup: Duration, length: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + length,
        }
    }

    /// Its length in seconds, up to `late` if a call counted after `end`.
    pub fn seconds(&self, late: Option<Instant>) -> f64 {
        (late.map_or(self.end, |late| late.max(self.end)) - self.start).as_secs_f64()
    }
}

/// What a closed loop of calls measured inside its window.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls answered inside the window.
    pub calls: u64,
    /// Bytes of the answers counted (frames or HTTP bodies).
    pub bytes: u64,
    /// Answers that were JSON-RPC errors (inside or outside the window).
    pub errors: u64,
    /// Every answer, warm-up and drain included (what CPU time is divided by).
    pub answered: u64,
    /// Round-trip time of each counted call, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When the latest call counted after the window's end completed, if one did.
    pub late: Option<Instant>,
}

impl CallStats {
    /// Adds another loop's figures.
    pub fn merge(&mut self, other: CallStats) {
        self.calls += other.calls;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.answered += other.answered;
        self.latencies_us.extend(other.latencies_us);
        self.late = self.late.max(other.late);
    }

    fn record(&mut self, window: &Window, sent: Instant, bytes: usize, error: bool) {
        let now = Instant::now();
        self.answered += 1;
        if error {
            self.errors += 1;
        }
        let late = now > window.end;
        if now >= window.start && (!late || self.calls == 0) {
            if late {
                self.late = Some(now);
            }
            self.calls += 1;
            self.bytes += bytes as u64;
            let micros = (now - sent).as_micros();
            self.latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
}

/// The numeric value after the first `"id":` in `text`: how the load tells answers apart
/// without parsing them (ids are plain integers, and no payload contains `"id":`).
pub fn peek_id(text: &str) -> Option<u64> {
    let at = text.find("\"id\":")? + 5;
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// True when the JSON-RPC message in `text` is an error response (checked near its
/// start and end only, where the `error`/`result` member sits).
fn is_error(text: &str) -> bool {
    let head = &text[..floor(text, text.len().min(200))];
    head.contains("\"error\":") && !head.contains("\"result\":")
}

fn floor(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A client WebSocket with small buffers (the bench holds thousands of them).
pub async fn ws_connect(url: &str) -> anyhow::Result<Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("cannot open {url}"))?;
    Ok(ws)
}

/// Reads the next text message (skipping pings), with the [`DRAIN`] bound.
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(DRAIN, ws.next()).await {
            Err(_) => bail!("no frame within {DRAIN:?}"),
            Ok(None) => bail!("the socket ended"),
            Ok(Some(Err(err))) => bail!("the socket failed: {err}"),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(frame)))) => bail!("the socket was closed: {frame:?}"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Opens an mcpmux socket and says hello; returns it after the welcome.
pub async fn mcpmux_connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    let mut ws = ws_connect(&format!("ws://{addr}/ws")).await?;
    ws.send(Message::text(
        r#"{"type":"hello","client":{"name":"mcpmux-bench","version":"1"}}"#,
    ))
    .await?;
    let welcome = next_text(&mut ws).await?;
    if !welcome.contains("\"welcome\"") {
        bail!("expected welcome, got {welcome}");
    }
    Ok(ws)
}

/// Wraps a JSON-RPC message in an mcpmux `rpc` frame for `server`.
pub fn rpc_frame(server: &str, message: &str) -> String {
    format!(r#"{{"type":"rpc","server":"{server}","message":{message}}}"#)
}

/// The `initialize` request, naming the client `group` (the fast upstream groups
/// sessions by it).
pub fn initialize_request(id: u64, group: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"{group}","version":"1"}}}}}}"#
    )
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// An echo `tools/call` request: `Echo: hi`, or a result of `bytes` bytes.
pub fn echo_request(bytes: Option<usize>) -> MakeRequest {
    Arc::new(move |id| match bytes {
        None => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hi"}}}}}}"#
        ),
        Some(n) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hi","bytes":{n}}}}}}}"#
        ),
    })
}

/// Initializes an MCP session over a socket: `server` names the mcpmux server, `None`
/// for a plain JSON-RPC socket (supergateway).
pub async fn ws_initialize(ws: &mut Ws, server: Option<&str>, group: &str) -> anyhow::Result<()> {
    let wrap = |m: &str| server.map_or_else(|| m.to_owned(), |s| rpc_frame(s, m));
    ws.send(Message::text(wrap(&initialize_request(1, group))))
        .await?;
    loop {
        let text = next_text(ws).await?;
        if peek_id(&text) == Some(1) {
            if is_error(&text) {
                bail!("initialize failed: {text}");
            }
            break;
        }
    }
    ws.send(Message::text(wrap(INITIALIZED))).await?;
    Ok(())
}

/// Ids of measured calls start here, above the ids of set-up requests.
const FIRST_CALL_ID: u64 = 1_000;

/// Keeps `inflight` calls going over one socket until the window ends, then awaits the
/// ones in flight. `server`: wrap each call in an mcpmux `rpc` frame for it.
pub async fn ws_closed_loop(
    ws: &mut Ws,
    server: Option<&str>,
    inflight: usize,
    make: &MakeRequest,
    window: Window,
    next_id: &mut u64,
) -> anyhow::Result<CallStats> {
    let mut stats = CallStats::default();
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(inflight * 2);
    *next_id = (*next_id).max(FIRST_CALL_ID);
    let frame = |id: u64| {
        let message = make(id);
        server.map_or(message.clone(), |s| rpc_frame(s, &message))
    };
    for _ in 0..inflight {
        let id = *next_id;
        *next_id += 1;
        pending.insert(id, Instant::now());
        ws.feed(Message::text(frame(id))).await?;
    }
    ws.flush().await?;
    while !pending.is_empty() {
        let text = next_text(ws).await?;
        let Some(id) = peek_id(&text) else { continue };
        let Some(sent) = pending.remove(&id) else {
            continue;
        };
        stats.record(&window, sent, text.len(), is_error(&text));
        if Instant::now() < window.end {
            let id = *next_id;
            *next_id += 1;
            pending.insert(id, Instant::now());
            ws.send(Message::text(frame(id))).await?;
        }
    }
    Ok(stats)
}

/// A Streamable HTTP session straight on an upstream.
#[derive(Clone)]
pub struct HttpSession {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
}

/// An HTTP client sized for many concurrent calls and streams.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default()
}

impl HttpSession {
    /// Initializes a session at `url` (with `api_key` for mcp-proxy), naming the client `group`.
    pub async fn initialize(
        client: &reqwest::Client,
        url: &str,
        api_key: Option<&str>,
        group: &str,
    ) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(key) = api_key {
            headers.insert("x-api-key", key.parse()?);
        }
        let mut session = Self {
            client: client.clone(),
            url: url.to_owned(),
            headers,
        };
        let response = session.post(initialize_request(1, group)).await?;
        if !response.status().is_success() {
            bail!("initialize answered {}", response.status());
        }
        let id = response
            .headers()
            .get("mcp-session-id")
            .cloned()
            .context("initialize gave no session id")?;
        let body = response.text().await?;
        if peek_id(&body) != Some(1) || is_error(&body) {
            bail!("initialize failed: {body}");
        }
        session.headers.insert("mcp-session-id", id);
        session.headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-11-25"),
        );
        session.post(INITIALIZED.to_owned()).await?;
        Ok(session)
    }

    async fn post(&self, body: String) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
    }

    /// Keeps `inflight` calls going on this session until the window ends.
    pub async fn closed_loop(
        &self,
        inflight: usize,
        make: &MakeRequest,
        window: Window,
        first_id: u64,
    ) -> anyhow::Result<CallStats> {
        let mut tasks = Vec::with_capacity(inflight);
        for lane in 0..inflight as u64 {
            let (session, make) = (self.clone(), make.clone());
            tasks.push(tokio::spawn(async move {
                let mut stats = CallStats::default();
                let mut id = first_id.max(FIRST_CALL_ID) + lane;
                while Instant::now() < window.end {
                    let sent = Instant::now();
                    let body = tokio::time::timeout(DRAIN, async {
                        session
                            .post(make(id))
                            .await?
                            .error_for_status()?
                            .text()
                            .await
                    })
                    .await
                    .context("no answer within the drain bound")??;
                    if peek_id(&body) != Some(id) {
                        bail!(
                            "unexpected answer to call {id}: {}",
                            &body[..floor(&body, body.len().min(200))]
                        );
                    }
                    stats.record(&window, sent, body.len(), is_error(&body));
                    id += inflight as u64;
                }
                anyhow::Ok(stats)
            }));
        }
        let mut stats = CallStats::default();
        for task in tasks {
            stats.merge(task.await??);
        }
        Ok(stats)
    }

    /// Opens the standalone event stream.
    pub async fn event_stream(&self) -> anyhow::Result<HttpEvents> {
        let mut headers = self.headers.clone();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.remove(header::CONTENT_TYPE);
        let response = self
            .client
            .get(&self.url)
            .headers(headers)
            .send()
            .await?
            .error_for_status()?;
        Ok(HttpEvents {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(16 << 20),
        })
    }
}

/// A standalone event stream read straight from the upstream.
pub struct HttpEvents {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
}

/// What the readers of a fan-out saw.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Notifications received.
    pub received: u64,
    /// Delivery latency of each (upstream send time to client receipt), in µs.
    pub latencies_us: Vec<u32>,
    /// When the last one arrived.
    pub last: Option<Instant>,
}

impl Delivery {
    /// Adds another reader's figures.
    pub fn merge(&mut self, other: Delivery) {
        self.received += other.received;
        self.latencies_us.extend(other.latencies_us);
        self.last = self.last.max(other.last);
    }

    fn note(&mut self, text: &str) {
        if let Some(sent) = peek_time(text) {
            self.received += 1;
            let latency = unix_micros().saturating_sub(sent);
            self.latencies_us
                .push(u32::try_from(latency).unwrap_or(u32::MAX));
            self.last = Some(Instant::now());
        }
    }
}

/// The send time a fan-out notification carries (`"t":MICROS`).
fn peek_time(text: &str) -> Option<u64> {
    let at = text.find("\"t\":")? + 4;
    let end = text[at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |e| at + e);
    text[at..end].parse().ok()
}

/// Reads `expect` notifications from an mcpmux socket.
pub async fn ws_read_notifications(ws: &mut Ws, expect: u64) -> anyhow::Result<Delivery> {
    let mut delivery = Delivery::default();
    while delivery.received < expect {
        let text = next_text(ws).await?;
        delivery.note(&text);
    }
    Ok(delivery)
}

impl HttpEvents {
    /// Reads `expect` notifications.
    pub async fn read_notifications(&mut self, expect: u64) -> anyhow::Result<Delivery> {
        let mut delivery = Delivery::default();
        let mut events = Vec::new();
        while delivery.received < expect {
            let chunk = match tokio::time::timeout(DRAIN, self.body.next()).await {
                Err(_) => bail!("no event within {DRAIN:?}"),
                Ok(None) => bail!("the event stream ended"),
                Ok(Some(chunk)) => chunk?,
            };
            self.parser.feed(&chunk, &mut events)?;
            for event in events.drain(..) {
                delivery.note(&event.data);
            }
        }
        Ok(delivery)
    }
}
