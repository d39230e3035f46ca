//! The fast upstream: a minimal Streamable HTTP MCP server written so that the upstream
//! is never what a benchmark measures. Run by `mcpmux-bench upstream` in its own process
//! (so its CPU time is counted apart), on 127.0.0.1:0.
//!
//! - `POST /mcp`: `initialize` opens a session (the id in `Mcp-Session-Id`; its
//!   `clientInfo.name` names the session's group); `tools/call` `echo` answers
//!   `Echo: <message>`, or with `arguments.bytes` a text of that many bytes; other
//!   requests get an empty result; notifications and responses get 202. Replies are
//!   `application/json`, looked at only as far as `id`, `method` and `params` go.
//! - `GET /mcp`: the session's standalone event stream (bounded: a stream whose reader
//!   is slow makes its sender wait).
//! - `DELETE /mcp`: ends the session and its stream.
//! - `POST /blast` `{"group", "per_stream", "rate", "pad"}`: sends `per_stream` log
//!   notifications on every stream of the group, at `rate` per second in all (0: as
//!   fast as the streams take them); each carries its send time (`t`, µs since the Unix
//!   epoch) and `pad` bytes of padding. Answers when all were sent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Events a stream holds before its sender waits.
const STREAM_QUEUE: usize = 64;

#[derive(Default)]
struct Upstream {
    sessions: Mutex<HashMap<String, Session>>,
    /// A text of 1 MiB + 64 KiB, sliced for `arguments.bytes`.
    filler: String,
}

struct Session {
    group: String,
    stream: Option<mpsc::Sender<Bytes>>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct InitializeParams<'a> {
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(rename = "clientInfo", default)]
    client_info: Option<ClientInfo>,
}

#[derive(Deserialize, Default)]
struct ClientInfo {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct CallParams<'a> {
    #[serde(borrow, default)]
    arguments: Option<Arguments<'a>>,
}

#[derive(Deserialize, Default)]
struct Arguments<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    bytes: Option<usize>,
}

#[derive(Deserialize)]
struct Blast {
    group: String,
    per_stream: u64,
    #[serde(default)]
    rate: f64,
    /// Bytes of padding in each notification.
    #[serde(default)]
    pad: usize,
}

/// Serves until the process is ended; prints `upstream listening on ADDR` first.
pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let state = Arc::new(Upstream {
            sessions: Mutex::default(),
            filler: "x".repeat((1 << 20) + (64 << 10)),
        });
        let app = Router::new()
            .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
            .route("/blast", post(blast))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("upstream listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn result(id: &RawValue, result: &str) -> String {
    let mut out = String::with_capacity(result.len() + id.get().len() + 40);
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(id.get());
    out.push_str(r#","result":"#);
    out.push_str(result);
    out.push('}');
    out
}

async fn post_mcp(State(state): State<Arc<Upstream>>, body: Bytes) -> Response {
    let Ok(head) = std::str::from_utf8(&body).map(serde_json::from_str::<Head<'_>>) else {
        return (StatusCode::BAD_REQUEST, "not UTF-8").into_response();
    };
    let head = match head {
        Ok(head) => head,
        Err(err) => return (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    };
    let (Some(method), Some(id)) = (head.method.as_deref(), head.id) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let params = head.params.map_or("{}", RawValue::get);
    match method {
        "initialize" => {
            let params: InitializeParams<'_> = serde_json::from_str(params).unwrap_or_default();
            let version = params.protocol_version.as_deref().unwrap_or("2025-06-18");
            let session = format!("{:032x}", rand::random::<u128>());
            let group = params.client_info.map(|c| c.name).unwrap_or_default();
            lock(&state).insert(
                session.clone(),
                Session {
                    group,
                    stream: None,
                },
            );
            let body = result(
                id,
                &format!(
                    r#"{{"protocolVersion":{},"capabilities":{{"tools":{{}},"logging":{{}}}},"serverInfo":{{"name":"mcpmux-bench-upstream","version":"1"}}}}"#,
                    serde_json::to_string(version).unwrap_or_default()
                ),
            );
            let mut response = json(body);
            if let Ok(value) = session.parse() {
                response.headers_mut().insert("mcp-session-id", value);
            }
            response
        }
        "tools/call" => {
            let call: CallParams<'_> = serde_json::from_str(params).unwrap_or_default();
            let arguments = call.arguments.unwrap_or_default();
            let text: Cow<'_, str> = match arguments.bytes {
                Some(n) => Cow::Borrowed(&state.filler[..n.min(state.filler.len())]),
                None => Cow::Owned(format!(
                    "Echo: {}",
                    arguments.message.as_deref().unwrap_or("")
                )),
            };
            let text = serde_json::to_string(&text).unwrap_or_default();
            let mut content = String::with_capacity(text.len() + 40);
            content.push_str(r#"{"content":[{"type":"text","text":"#);
            content.push_str(&text);
            content.push_str("}]}");
            json(result(id, &content))
        }
        "tools/list" => json(result(
            id,
            r#"{"tools":[{"name":"echo","description":"Echoes its message, or answers arguments.bytes bytes","inputSchema":{"type":"object"}}]}"#,
        )),
        _ => json(result(id, "{}")),
    }
}

fn lock(state: &Upstream) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
    state.sessions.lock().unwrap_or_else(|p| p.into_inner())
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn get_mcp(State(state): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    let Some(id) = session_id(&headers) else {
        return (StatusCode::BAD_REQUEST, "no session").into_response();
    };
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    match lock(&state).get_mut(&id) {
        Some(session) => session.stream = Some(tx),
        None => return (StatusCode::NOT_FOUND, "no such session").into_response(),
    }
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn delete_mcp(State(state): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    match session_id(&headers).and_then(|id| lock(&state).remove(&id)) {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    }
}

async fn blast(State(state): State<Arc<Upstream>>, body: Bytes) -> Response {
    let Ok(blast) = serde_json::from_slice::<Blast>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {group, per_stream, rate}",
        )
            .into_response();
    };
    let streams: Vec<mpsc::Sender<Bytes>> = lock(&state)
        .values()
        .filter(|s| s.group == blast.group)
        .filter_map(|s| s.stream.clone())
        .collect();
    let count = streams.len();
    // Each stream gets an equal share of the rate, its sends spread over the interval.
    let interval =
        (blast.rate > 0.0 && count > 0).then(|| Duration::from_secs_f64(count as f64 / blast.rate));
    let start = tokio::time::Instant::now();
    let pad: Arc<str> = "x".repeat(blast.pad).into();
    let mut tasks = Vec::with_capacity(count);
    for (index, stream) in streams.into_iter().enumerate() {
        let per_stream = blast.per_stream;
        let pad = pad.clone();
        let offset = interval.map(|i| i.mul_f64(index as f64 / count as f64));
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            for i in 0..per_stream {
                if let (Some(interval), Some(offset)) = (interval, offset) {
                    let due = start + offset + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(due).await;
                }
                let event = format!(
                    "id: {i}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"logger\":\"bench\",\"data\":{{\"t\":{},\"i\":{i},\"pad\":\"{pad}\"}}}}}}\n\n",
                    unix_micros()
                );
                if stream.send(Bytes::from(event)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap_or(0);
    }
    json(format!(
        r#"{{"streams":{count},"sent":{sent},"elapsed_ms":{}}}"#,
        start.elapsed().as_millis()
    ))
}

/// Microseconds since the Unix epoch: the clock both ends of a fan-out share.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
