//! Fault injection: a client that stops reading is cut off with 4000 while the
//! gateway's memory stays bounded and another client goes on undisturbed; a
//! crash-looping stdio server is reported `down` next to a healthy one;
//! `notifications/cancelled` frees the cancelled request's slot; fake upstreams whose
//! body stalls, whose response stream is cut (and resumed, or not), or that accept TCP
//! and never speak HTTP; and a graceful shutdown that lets an in-flight call finish.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::binary::Binary;
use crate::harness::{
    Client, Ended, TestGateway, config, everything, is_response, progress_values, tool_text,
};

/// The TCP state (as in /proc/net/tcp: 1 is ESTABLISHED) of the gateway's end of the
/// connection from `client_port`; `None` once that socket is gone.
fn gateway_side_state(gateway_port: u16, client_port: u16) -> Option<u8> {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 3
                && port(fields[1]) == Some(gateway_port)
                && port(fields[2]) == Some(client_port)
            {
                return u8::from_str_radix(fields[3], 16).ok();
            }
        }
    }
    None
}

/// A WebSocket client on a socket whose local port the test knows.
type RawSocket = WebSocketStream<TcpStream>;

/// The next text frame of `ws`, as JSON.
async fn next_frame(ws: &mut RawSocket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("gateway frames are JSON");
        }
    }
}

/// The params of server-everything's `echo` tool.
fn echo_params(message: &str) -> Value {
    json!({"name": "echo", "arguments": {"message": message}})
}

/// An `echo` tools/call request.
fn echo(id: Value, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": echo_params(message)})
}

fn rpc_frame(server: &str, message: Value) -> String {
    json!({"type": "rpc", "server": server, "message": message}).to_string()
}

/// The `error.data.gateway` code of a response frame.
fn gateway_code(frame: &Value) -> &str {
    frame["message"]["error"]["data"]["gateway"]
        .as_str()
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------
// 1. Slow consumer
// ---------------------------------------------------------------------------------

/// Echo calls the stuck client sends, each with a 64 KiB message.
const STUCK_CALLS: usize = 300;
/// Growth of the gateway's RSS allowed while one client is stuck. protocol.md section 9
/// bounds a connection at outboundQueueBytes + resumeMaxBytes (9 MiB) plus, for each
/// request in flight, its request and one response in transit with their HTTP buffers:
/// here 300 × (64 KiB + 64 KiB + buffers), about 60 MiB. Measured: 72 to 76 MiB.
const RSS_GROWTH_LIMIT_KIB: u64 = 100 * 1024;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4000_and_costs_bounded_memory() {
    let binary = Binary::start(&config(
        json!({"everything": everything()}),
        json!({"writeTimeoutMs": 1000}),
    ));
    let mut fast = Client::connect(binary.addr).await;
    fast.initialize("everything").await;

    // The stuck client: connects on a socket whose port we know, initializes, and from
    // then on never reads.
    let tcp = TcpStream::connect(binary.addr).await.expect("connect");
    let client_port = tcp.local_addr().expect("local addr").port();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", binary.addr), tcp)
        .await
        .expect("WebSocket handshake");
    slow.send(Message::text(json!({"type": "hello"}).to_string()))
        .await
        .expect("hello");
    assert_eq!(next_frame(&mut slow).await["type"], "welcome");
    let init = json!({
        "jsonrpc": "2.0", "id": "init", "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "slow", "version": "1"}}
    });
    slow.send(Message::text(rpc_frame("everything", init)))
        .await
        .expect("initialize");
    let mut last_seq = 0;
    loop {
        let frame = next_frame(&mut slow).await;
        last_seq = frame["seq"].as_u64().unwrap_or(last_seq);
        if is_response(&frame, "everything", &json!("init")) {
            break;
        }
    }
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    slow.send(Message::text(rpc_frame("everything", initialized)))
        .await
        .expect("initialized");

    let rss_before = binary.rss_kib();
    let big = "x".repeat(64 * 1024);
    let mut sent = 0;
    for i in 0..STUCK_CALLS {
        let frame = rpc_frame("everything", echo(json!(format!("big-{i}")), &big));
        match tokio::time::timeout(Duration::from_secs(5), slow.send(Message::text(frame))).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    eprintln!("slow consumer: sent {sent} echo calls of 64 KiB without reading");
    assert!(sent >= STUCK_CALLS / 2, "only {sent} calls could be sent");

    // Meanwhile: another client's calls all succeed; and the gateway ends the stuck
    // socket (its end of the TCP connection leaves ESTABLISHED).
    let gateway_port = binary.addr.port();
    let fast_calls = async {
        let started = Instant::now();
        for i in 0..50 {
            let text = format!("fast-{i}");
            let id = json!(text.clone());
            fast.rpc("everything", echo(id.clone(), &text)).await;
            let reply = fast.response("everything", &id).await;
            assert_eq!(tool_text(&reply), format!("Echo: {text}"), "{reply}");
        }
        started.elapsed()
    };
    let cut_off = async {
        let started = Instant::now();
        let mut peak = 0;
        loop {
            peak = peak.max(binary.rss_kib());
            let state = gateway_side_state(gateway_port, client_port);
            if state != Some(1) {
                return (started.elapsed(), state, peak);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the stuck client was not cut off within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (fast_took, (cut_after, state, peak)) = tokio::join!(fast_calls, cut_off);
    eprintln!(
        "slow consumer: 50 calls of the other client took {fast_took:?}; the stuck socket \
         was cut off {cut_after:?} after the last send (gateway side now in TCP state {state:?})"
    );

    // After the fact: what the socket holds is frames in seq order, then close 4000 or,
    // since this client read nothing while the gateway tried to send the close, the end
    // of the connection (TCP cannot deliver a close to a reader that does not read).
    let mut frames = 0u64;
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Err(_) => break format!("nothing more within 10 s after {frames} frames"),
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if let Some(seq) = frame["seq"].as_u64() {
                    assert_eq!(seq, last_seq + 1, "frames arrive in seq order, no gap");
                    last_seq = seq;
                }
                frames += 1;
            }
            Ok(Some(Ok(Message::Close(Some(close))))) => {
                break format!(
                    "close {} {:?}",
                    u16::from(close.code),
                    close.reason.as_str()
                );
            }
            Ok(Some(Ok(Message::Close(None)))) => break "close without a code".to_owned(),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => break format!("socket error after {frames} frames: {err}"),
            Ok(None) => break format!("end of stream after {frames} frames"),
        }
    };
    eprintln!("slow consumer: read {frames} frames afterwards, then: {ending}");
    let rss_after = binary.rss_kib();
    let peak = peak.max(rss_after);
    let growth = peak.saturating_sub(rss_before);
    eprintln!(
        "slow consumer: gateway RSS before {rss_before} KiB, peak {peak} KiB, at the end \
         {rss_after} KiB; growth {growth} KiB at peak, {} KiB at the end (limit {RSS_GROWTH_LIMIT_KIB} KiB)",
        rss_after.saturating_sub(rss_before),
    );
    let closed = ending.starts_with("close 4000 ")
        || ending.starts_with("end of stream")
        || ending.starts_with("socket error");
    assert!(
        closed,
        "expected close 4000 or the end of the connection after the frames, got: {ending}"
    );
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "RSS growth under {RSS_GROWTH_LIMIT_KIB} KiB, got {growth} KiB ({rss_before} KiB to {peak} KiB)"
    );
}

// ---------------------------------------------------------------------------------
// 2. A crash-looping stdio server
// ---------------------------------------------------------------------------------

fn is_status(frame: &Value, server: &str, state: &str) -> bool {
    frame["type"] == "status" && frame["server"] == server && frame["state"] == state
}

#[tokio::test]
async fn a_crash_looping_server_is_down_while_its_neighbour_keeps_answering() {
    let crasher = json!({"command": "node", "args": ["-e", "process.exit(1)"]});
    let gateway = TestGateway::start(&config(
        json!({"everything": everything(), "crasher": crasher}),
        json!({"restartBackoffMaxMs": 1000}),
    ))
    .await;
    let restarts = |name: &str| gateway.gateway().servers()[name].status().restarts;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    client
        .wait_for("crasher down", |f| is_status(f, "crasher", "down"))
        .await;
    let first = restarts("crasher");
    assert!(first >= 1, "down comes after a failed start: {first}");

    let reply = client
        .call("crasher", json!("to-crasher"), "tools/list", json!({}))
        .await;
    assert_eq!(reply["message"]["id"], "to-crasher");
    assert_eq!(gateway_code(&reply), "server_unavailable", "{reply}");
    assert_eq!(reply["message"]["error"]["data"]["server"], "crasher");
    assert_eq!(reply["message"]["error"]["code"], -32000);

    // Two more crashes, with `everything` answering before, between and after them.
    for round in 0..3 {
        let text = format!("round-{round}");
        let reply = client
            .call(
                "everything",
                json!(text.clone()),
                "tools/call",
                echo_params(&text),
            )
            .await;
        assert_eq!(tool_text(&reply), format!("Echo: {text}"), "{reply}");
        if round < 2 {
            client
                .wait_for("crasher down again", |f| is_status(f, "crasher", "down"))
                .await;
        }
    }
    let later = restarts("crasher");
    assert!(later >= first + 2, "restarts climb: {first} then {later}");
    assert_eq!(restarts("everything"), 0, "the neighbour never restarted");

    // /status over HTTP says the same.
    let body = reqwest::get(format!("http://{}/status", gateway.addr))
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("a body");
    let status: Value = serde_json::from_str(&body).expect("JSON");
    let servers = status["servers"].as_array().expect("servers");
    let crasher = servers
        .iter()
        .find(|s| s["name"] == "crasher")
        .expect("crasher listed");
    assert!(crasher["restarts"].as_u64() >= Some(later), "{status}");
    assert!(
        crasher["state"] == "down" || crasher["state"] == "restarting",
        "{status}"
    );
    assert!(crasher["lastError"].is_string(), "{status}");
    let neighbour = servers
        .iter()
        .find(|s| s["name"] == "everything")
        .expect("everything listed");
    assert_eq!(neighbour["state"], "ready", "{status}");

    // A new connection is served, and works with the healthy server.
    let mut newcomer = Client::connect(gateway.addr).await;
    let listed = newcomer.welcome["servers"].clone();
    assert!(
        listed.as_array().is_some_and(|s| s
            .iter()
            .any(|e| e["name"] == "everything" && e["state"] == "ready")),
        "{listed}"
    );
    newcomer.initialize("everything").await;
    let reply = newcomer
        .call("everything", json!("new"), "tools/call", echo_params("new"))
        .await;
    assert_eq!(tool_text(&reply), "Echo: new");
    let reply = newcomer
        .call("crasher", json!("new-to-crasher"), "ping", json!({}))
        .await;
    assert_eq!(gateway_code(&reply), "server_unavailable", "{reply}");
    eprintln!("crash loop: crasher restarts {first} then {later}");
    gateway.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 3. notifications/cancelled
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_cancelled_request_gets_no_response_and_frees_its_slot() {
    let gateway = TestGateway::start(&config(
        json!({"everything": everything()}),
        json!({"maxInflightRequests": 1}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;

    let x = json!("long-x");
    let long = json!({
        "jsonrpc": "2.0", "id": x, "method": "tools/call",
        "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 30, "steps": 30},
            "_meta": {"progressToken": "long-x"}
        }
    });
    // The initialize exchange gives its slot back when its stream ends, which may be a
    // moment after its result reached us: try again then.
    let mut admitted = false;
    for _ in 0..20 {
        client.rpc("everything", long.clone()).await;
        let first = client
            .wait_for("progress or response of X", |f| {
                is_response(f, "everything", &x)
                    || f["message"]["params"]["progressToken"] == "long-x"
            })
            .await;
        if is_response(&first, "everything", &x) {
            assert_eq!(gateway_code(&first), "too_many_requests", "{first}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        admitted = true;
        break;
    }
    assert!(admitted, "the long operation was never admitted");

    // While X is in flight, the only slot is taken.
    let blocked = client
        .call(
            "everything",
            json!("blocked"),
            "tools/call",
            echo_params("blocked"),
        )
        .await;
    assert_eq!(gateway_code(&blocked), "too_many_requests", "{blocked}");
    assert_eq!(blocked["message"]["error"]["code"], -32000);

    client
        .rpc(
            "everything",
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": x, "reason": "test"}}),
        )
        .await;
    // The next request gets the slot. (The slot is given back once the cancellation was
    // carried upstream, so an immediate request may still find it taken: retry briefly.)
    let mut attempts = 0;
    let after = loop {
        attempts += 1;
        let id = json!(format!("after-{attempts}"));
        let reply = client
            .call("everything", id, "tools/call", echo_params("after"))
            .await;
        if gateway_code(&reply) != "too_many_requests" || attempts >= 40 {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("cancel: the request after the cancellation succeeded on attempt {attempts}");
    assert_eq!(tool_text(&after), "Echo: after", "{after}");

    // X is never answered: not by then, nor a progress interval later.
    client.send(json!({"type": "ping"})).await;
    client.wait_for("pong", |f| f["type"] == "pong").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.send(json!({"type": "ping"})).await;
    client.wait_for("pong", |f| f["type"] == "pong").await;
    let answers = client.take_buffered(|f| is_response(f, "everything", &x));
    assert!(
        answers.is_empty(),
        "a response for the cancelled request: {answers:?}"
    );
    gateway.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 4. Fake upstreams: a stalled body, a cut stream resumed or not
// ---------------------------------------------------------------------------------

/// What a fake upstream does, and what it saw.
struct Fake {
    mode: &'static str,
    /// The id and progress token of the tools/call it answered with a cut stream.
    call: Mutex<Option<(Value, Value)>>,
    /// `Last-Event-ID` and `Mcp-Session-Id` of every GET.
    gets: Mutex<Vec<(Option<String>, Option<String>)>>,
    /// Set when a tools/call arrived.
    posted: Notify,
    /// Set when the delayed response event was pulled from the body (mode `slow`).
    pulled: AtomicBool,
}

async fn fake_upstream(mode: &'static str) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        mode,
        call: Mutex::new(None),
        gets: Mutex::new(Vec::new()),
        posted: Notify::new(),
        pulled: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/mcp", post(fake_post).get(fake_get))
        .with_state(fake.clone());
    let addr = crate::harness::serve(app).await;
    (format!("http://{addr}/mcp"), fake)
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .expect("response")
}

fn progress(token: &Value, progress: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": progress, "total": 2}})
}

async fn fake_post(State(fake): State<Arc<Fake>>, body: String) -> Response {
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = message["id"].clone();
    let method = message["method"].as_str().unwrap_or("");
    if method == "initialize" {
        let result = json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "fake", "version": "0"}}});
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("mcp-session-id"), "s-1"),
            ],
            result.to_string(),
        )
            .into_response();
    }
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    if method != "tools/call" {
        return (StatusCode::BAD_REQUEST, "the fake answers tools/call only").into_response();
    }
    fake.posted.notify_one();
    match fake.mode {
        // Headers now, then a body that never comes.
        "stall_body" => sse_response(Body::from_stream(futures::stream::pending::<
            Result<Bytes, Infallible>,
        >())),
        // One progress event with an id, then the stream ends with no response.
        "resume" | "refuse_resume" => {
            let token = message["params"]["_meta"]["progressToken"].clone();
            let first = progress(&token, 1);
            *fake.call.lock().expect("lock") = Some((id, token));
            sse_response(Body::from(format!(
                "id: e1\nevent: message\ndata: {first}\n\n"
            )))
        }
        // The response after 500 ms, noting when the gateway pulled it.
        "slow" => {
            let event = format!(
                "event: message\ndata: {}\n\n",
                json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "late"}]}})
            );
            let body = futures::stream::unfold(Some(event), move |event| {
                let fake = fake.clone();
                async move {
                    let event = event?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    fake.pulled.store(true, Ordering::SeqCst);
                    Some((Ok::<Bytes, Infallible>(Bytes::from(event)), None))
                }
            });
            sse_response(Body::from_stream(body))
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn fake_get(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let last_event_id = get("last-event-id");
    fake.gets
        .lock()
        .expect("lock")
        .push((last_event_id.clone(), get("mcp-session-id")));
    let Some(last_event_id) = last_event_id else {
        // No standalone stream.
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let call = fake.call.lock().expect("lock").clone();
    match (fake.mode, last_event_id.as_str(), call) {
        ("resume", "e1", Some((id, token))) => {
            let second = progress(&token, 2);
            let response = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "resumed"}]}});
            sse_response(Body::from(format!(
                "id: e2\nevent: message\ndata: {second}\n\nid: e3\nevent: message\ndata: {response}\n\n"
            )))
        }
        _ => (StatusCode::BAD_REQUEST, "unknown Last-Event-ID").into_response(),
    }
}

/// A tools/call request for the fake, asking for progress under `token`.
fn with_progress(id: &str, token: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "work", "arguments": {}, "_meta": {"progressToken": token}}
    })
}

#[tokio::test]
async fn a_body_that_stalls_after_its_headers_times_out_within_the_request_timeout() {
    let (url, _fake) = fake_upstream("stall_body").await;
    let gateway = TestGateway::start(&config(
        json!({"stall": {"url": url}}),
        json!({"requestTimeoutMs": 800}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    let started = Instant::now();
    let reply = client
        .call(
            "stall",
            json!("s-1"),
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    let took = started.elapsed();
    eprintln!("stalled body: answered after {took:?}: {reply}");
    assert_eq!(gateway_code(&reply), "timeout", "{reply}");
    assert_eq!(reply["message"]["error"]["code"], -32001);
    assert_eq!(reply["message"]["id"], "s-1");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(3000),
        "timeout after {took:?}, for requestTimeoutMs 800"
    );
    gateway.shutdown().await;
}

/// A gateway whose server `cut` is the fake upstream in `mode`, and a client that has
/// initialized it.
async fn initialized_on_fake(mode: &'static str) -> (TestGateway, Client, Arc<Fake>) {
    let (url, fake) = fake_upstream(mode).await;
    let gateway = TestGateway::start(&config(
        json!({"cut": {"url": url}}),
        json!({"requestTimeoutMs": 5000}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("cut").await;
    (gateway, client, fake)
}

#[tokio::test]
async fn a_cut_response_stream_is_resumed_and_each_event_arrives_once() {
    let (gateway, mut client, fake) = initialized_on_fake("resume").await;
    client.rpc("cut", with_progress("c-1", "p-cut")).await;
    let reply = client.response("cut", &json!("c-1")).await;
    assert_eq!(tool_text(&reply), "resumed", "{reply}");
    client.send(json!({"type": "ping"})).await;
    client.wait_for("pong", |f| f["type"] == "pong").await;

    let seen = client.take_buffered(|f| f["server"] == "cut" && f["type"] == "rpc");
    assert_eq!(progress_values(&seen, "p-cut"), vec![1, 2], "{seen:?}");
    let progress_seqs: Vec<u64> = seen
        .iter()
        .filter(|f| f["message"]["method"] == "notifications/progress")
        .filter_map(|f| f["seq"].as_u64())
        .collect();
    assert!(
        progress_seqs
            .iter()
            .all(|s| Some(*s) < reply["seq"].as_u64()),
        "progress before the result"
    );
    let again = seen
        .iter()
        .filter(|f| is_response(f, "cut", &json!("c-1")))
        .count();
    assert_eq!(again, 0, "the response arrived once: {seen:?}");

    let gets = fake.gets.lock().expect("lock").clone();
    let resumes: Vec<_> = gets.iter().filter(|(last, _)| last.is_some()).collect();
    assert_eq!(
        resumes,
        vec![&(Some("e1".to_owned()), Some("s-1".to_owned()))],
        "one resume after e1, on the session: {gets:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_cut_response_stream_whose_resume_is_refused_fails_with_upstream_error() {
    let (gateway, mut client, fake) = initialized_on_fake("refuse_resume").await;
    client.rpc("cut", with_progress("c-2", "p-refused")).await;
    let reply = client.response("cut", &json!("c-2")).await;
    assert_eq!(gateway_code(&reply), "upstream_error", "{reply}");
    assert_eq!(reply["message"]["error"]["code"], -32000);
    let seen = client.take_buffered(|f| f["server"] == "cut" && f["type"] == "rpc");
    assert_eq!(progress_values(&seen, "p-refused"), vec![1], "{seen:?}");
    let gets = fake.gets.lock().expect("lock").clone();
    assert!(
        gets.iter().any(|(last, _)| last.as_deref() == Some("e1")),
        "a resume was tried: {gets:?}"
    );
    gateway.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 5. Graceful shutdown drains in-flight calls
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_lets_an_inflight_call_finish_upstream() {
    let (url, fake) = fake_upstream("slow").await;
    let gateway = TestGateway::start(&config(
        json!({"slow": {"url": url}}),
        json!({"shutdownGraceMs": 3000}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    client
        .rpc(
            "slow",
            json!({"jsonrpc": "2.0", "id": "drain", "method": "tools/call", "params": {"name": "work", "arguments": {}}}),
        )
        .await;
    tokio::time::timeout(Duration::from_secs(10), fake.posted.notified())
        .await
        .expect("the call reached the upstream");
    assert!(!fake.pulled.load(Ordering::SeqCst));

    let started = Instant::now();
    let (_, ended) = tokio::join!(gateway.shutdown(), client.closed());
    let took = started.elapsed();
    eprintln!("shutdown: took {took:?}; client saw {ended:?}");
    match ended {
        Ended::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(
        fake.pulled.load(Ordering::SeqCst),
        "the in-flight call's response was never pulled from the upstream"
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

// ---------------------------------------------------------------------------------
// 6. An upstream that accepts TCP and never speaks HTTP
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_times_out_after_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let holder = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        })
    };
    let gateway = TestGateway::start(&config(
        json!({"mute": {"url": format!("http://{addr}/mcp")}}),
        json!({"connectTimeoutMs": 500}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    let started = Instant::now();
    let reply = client
        .call("mute", json!("m-1"), "tools/list", json!({}))
        .await;
    let took = started.elapsed();
    eprintln!("mute upstream: answered after {took:?}: {reply}");
    assert_eq!(gateway_code(&reply), "timeout", "{reply}");
    assert_eq!(reply["message"]["error"]["code"], -32001);
    assert_eq!(reply["message"]["error"]["data"]["server"], "mute");
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the TCP connection was made"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(3000),
        "timeout after {took:?}, for connectTimeoutMs 500"
    );
    gateway.shutdown().await;
    holder.abort();
}
