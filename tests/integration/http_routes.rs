//! The MCP routes over HTTP against the real server-everything and server-memory behind
//! the real mcp-proxy: Streamable HTTP through `/servers/NAME/mcp` and through `/mcp`
//! with `X-MCP-Server`, the legacy SSE transport, a broken stream resumed with
//! `Last-Event-ID`, and the keys, Origins and rate limits of the WebSocket.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestGateway, config, everything, memory};
use crate::http_client::{End, Events, Http, json_answer};

const DASHBOARD: &str = "dashboard-key-0123456789abcdef";
const OPS: &str = "ops-key-0123456789abcdefghij";
const LIMITED: &str = "limited-key-0123456789abcdef";
const FLOOD: &str = "flood-key-0123456789abcdefgh";

pub(crate) fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "http-routes-test", "version": "1"}}})
}

pub(crate) fn initialized() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

pub(crate) fn long_operation(id: &str, steps: u64, duration: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation",
        "arguments": {"duration": duration, "steps": steps},
        "_meta": {"progressToken": id}}})
}

fn is_progress(message: &Value) -> bool {
    message["method"] == "notifications/progress"
}

/// Opens an MCP session on `path` (with `extra` headers): initialize, then initialized.
/// Returns the session id.
pub(crate) async fn open_session(http: &Http, path: &str, extra: &[(&str, &str)]) -> String {
    let response = http.post(path, extra, &initialize(1)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let result = Events::of(response).until(|m| m["id"] == 1).await.json();
    assert_eq!(
        result["result"]["protocolVersion"], "2025-11-25",
        "{result}"
    );
    let mut headers = vec![
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    headers.extend_from_slice(extra);
    let accepted = http.post(path, &headers, &initialized()).await;
    assert_eq!(accepted.status(), 202);
    session
}

#[tokio::test]
async fn streamable_http_carries_sessions_through_both_routes() {
    let gateway = TestGateway::start(&config(
        json!({"everything": everything(), "memory": memory()}),
        json!({}),
    ))
    .await;
    let http = Http::new(gateway.addr);
    let session = open_session(&http, "/servers/everything/mcp", &[]).await;
    let by_header = [
        ("x-mcp-server", "everything"),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];

    // The standalone stream, through the header route.
    let mut stream_headers = by_header.to_vec();
    stream_headers.push(("accept", "text/event-stream"));
    let standalone = http.send(Method::GET, "/mcp", &stream_headers, None).await;
    assert_eq!(standalone.status(), 200);
    assert_eq!(standalone.headers()["x-accel-buffering"], "no");
    let mut standalone = Events::of(standalone);

    // A call with progress, on the same session through the other route: every progress
    // notification arrives before the result, on the call's own stream.
    let call = http
        .post("/mcp", &by_header, &long_operation("op-1", 4, 1))
        .await;
    assert_eq!(call.status(), 200);
    let mut events = Events::of(call);
    let mut progress = Vec::new();
    let result = loop {
        let message = events.next().await.json();
        if is_progress(&message) {
            assert_eq!(message["params"]["progressToken"], "op-1");
            progress.push(message["params"]["progress"].as_u64().unwrap());
        } else {
            break message;
        }
    };
    assert_eq!(result["id"], "op-1", "{result}");
    assert!(!progress.is_empty(), "progress arrived before the result");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(events.next_or_end().await.unwrap_err(), End::Clean);

    // The header picks the server: memory answers on /mcp with its own name.
    let memory_session = open_session(&http, "/mcp", &[("x-mcp-server", "memory")]).await;
    let tools = http
        .post(
            "/mcp",
            &[
                ("x-mcp-server", "memory"),
                ("mcp-session-id", &memory_session),
            ],
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )
        .await;
    let tools = Events::of(tools).until(|m| m["id"] == 2).await.json();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"create_entities"), "{names:?}");

    // DELETE ends the session: its standalone stream ends cleanly, and the server's own
    // 404 for the session reaches the client as it is.
    let deleted = http
        .send(
            Method::DELETE,
            "/servers/everything/mcp",
            &by_header[1..],
            None,
        )
        .await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(standalone.next_or_end().await.unwrap_err(), End::Clean);
    let (status, _, gone) = json_answer(
        http.post(
            "/servers/everything/mcp",
            &by_header[1..],
            &long_operation("late", 1, 1),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "{gone}");
    assert!(
        gone["error"]["data"]["gateway"].is_null(),
        "the server's own answer: {gone}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_broken_call_stream_is_resumed_with_last_event_id() {
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let http = Http::new(gateway.addr);
    let path = "/servers/everything/mcp";
    let session = open_session(&http, path, &[]).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = http
        .post(path, &headers, &long_operation("op-r", 6, 3))
        .await;
    let mut events = Events::of(call);
    let first = events.until(is_progress).await;
    let last_seen = first.id.clone().expect("events carry ids");
    drop(events); // the client's connection breaks mid-call

    let mut resumed_headers = headers.to_vec();
    resumed_headers.push(("last-event-id", &last_seen));
    resumed_headers.push(("accept", "text/event-stream"));
    // Sent at once: the gateway waits while the server still holds the broken stream.
    let resumed = http.send(Method::GET, path, &resumed_headers, None).await;
    assert_eq!(resumed.status(), 200);
    let mut resumed = Events::of(resumed);
    let mut replayed = Vec::new();
    let result = loop {
        let event = resumed.next().await;
        assert_ne!(
            event.id, first.id,
            "nothing before Last-Event-ID comes again"
        );
        let message = event.json();
        if is_progress(&message) {
            replayed.push(message["params"]["progress"].as_u64().unwrap());
        } else {
            break message;
        }
    };
    assert_eq!(result["id"], "op-r", "{result}");
    let first_progress = first.json()["params"]["progress"].as_u64().unwrap();
    assert!(replayed.iter().all(|p| *p > first_progress), "{replayed:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_legacy_sse_transport_reaches_a_stdio_server() {
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let http = Http::new(gateway.addr);
    let stream = http
        .send(
            Method::GET,
            "/servers/everything/sse",
            &[("accept", "text/event-stream")],
            None,
        )
        .await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["x-accel-buffering"], "no");
    let mut events = Events::of(stream);
    let endpoint = events.next().await;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let token = endpoint
        .data
        .strip_prefix("messages?session=")
        .unwrap_or_else(|| panic!("a relative message url of the gateway: {}", endpoint.data));
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    let messages = format!("/servers/everything/{}", endpoint.data);

    let mut init = initialize(1);
    init["params"]["protocolVersion"] = json!("2024-11-05");
    assert_eq!(http.post(&messages, &[], &init).await.status(), 202);
    let reply = events.until(|m| m["id"] == 1).await.json();
    assert_eq!(
        reply["result"]["serverInfo"]["name"],
        "mcp-servers/everything"
    );
    assert_eq!(
        http.post(&messages, &[], &initialized()).await.status(),
        202
    );
    let echo = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "over sse"}}});
    assert_eq!(http.post(&messages, &[], &echo).await.status(), 202);
    let reply = events.until(|m| m["id"] == 2).await.json();
    assert_eq!(reply["result"]["content"][0]["text"], "Echo: over sse");

    // A token the gateway never announced, and the right one on another server's path.
    let (status, _, body) = json_answer(
        http.post("/servers/everything/messages?session=00", &[], &echo)
            .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["id"], 2);
    assert_eq!(body["error"]["data"]["gateway"], "session_lost");
    let elsewhere = format!("/servers/nowhere/{}", endpoint.data);
    let (status, _, body) = json_answer(http.post(&elsewhere, &[], &echo).await).await;
    assert_eq!(
        (status, &body["error"]["data"]["gateway"]),
        (404, &json!("unknown_server"))
    );

    gateway.shutdown().await;
}

fn keyed_config() -> Value {
    config(
        json!({"everything": everything(), "memory": memory()}),
        json!({
            "apiKeys": [
                {"name": "dashboard", "key": DASHBOARD, "servers": ["everything"]},
                {"name": "ops", "key": OPS, "servers": "*"},
                {"name": "limited", "key": LIMITED, "servers": "*", "maxConnections": 1},
                {"name": "flood", "key": FLOOD, "servers": ["everything"],
                 "rateLimit": {"perSecond": 0.001, "burst": 2}},
            ],
            "allowedOrigins": ["http://app.example"],
        }),
    )
}

#[tokio::test]
async fn the_http_routes_keep_the_keys_origins_and_limits_of_the_websocket() {
    let gateway = TestGateway::start(&keyed_config()).await;
    let http = Http::new(gateway.addr);
    let list = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
    let path = "/servers/everything/mcp";

    // No key, a wrong key: 401 before anything else.
    assert_eq!(http.post(path, &[], &list(1)).await.status(), 401);
    let wrong = [("x-api-key", "wrong-key-0123456789abcdef")];
    assert_eq!(http.post(path, &wrong, &list(1)).await.status(), 401);

    // A server the key may not use is answered as one that does not exist.
    let dashboard = ("authorization", "Bearer dashboard-key-0123456789abcdef");
    let (status, _, hidden) = json_answer(
        http.post("/servers/memory/mcp", &[dashboard], &list(5))
            .await,
    )
    .await;
    let (_, _, missing) = json_answer(
        http.post("/servers/nowhere/mcp", &[dashboard], &list(5))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(hidden["id"], 5);
    assert_eq!(
        hidden["error"]["data"],
        json!({"gateway": "unknown_server", "server": "memory"})
    );
    assert_eq!(
        hidden["error"]["message"]
            .as_str()
            .unwrap()
            .replace("memory", "X"),
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .replace("nowhere", "X")
    );
    let by_header = [dashboard, ("x-mcp-server", "memory")];
    let (status, _, body) = json_answer(http.post("/mcp", &by_header, &list(6)).await).await;
    assert_eq!((status, &body["id"]), (404, &json!(6)));
    for path in ["/servers/memory/sse", "/servers/memory/mcp"] {
        let response = http.send(Method::GET, path, &[dashboard], None).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    // The header route needs its header; batches are not carried.
    let (status, _, body) = json_answer(http.post("/mcp", &[dashboard], &list(7)).await).await;
    assert_eq!(
        (status, &body["error"]["data"]["gateway"]),
        (400, &json!("bad_frame"))
    );
    let (status, _, body) =
        json_answer(http.post(path, &[dashboard], &json!([list(8)])).await).await;
    assert_eq!(
        (status, &body["error"]["data"]["gateway"]),
        (400, &json!("batch"))
    );

    // Origins: a foreign page is refused; an allowed one may read the session id.
    let foreign = [dashboard, ("origin", "http://evil.example")];
    assert_eq!(
        http.post(path, &foreign, &initialize(1)).await.status(),
        403
    );
    let page = [dashboard, ("origin", "http://app.example")];
    let response = http.post(path, &page, &initialize(1)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("Mcp-Session-Id"), "{exposed}");
    let preflight = http
        .send(
            Method::OPTIONS,
            "/mcp",
            &[
                ("origin", "http://app.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, mcp-session-id, x-mcp-server, authorization",
                ),
            ],
            None,
        )
        .await;
    assert_eq!(preflight.status(), 204);
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        allowed.contains("mcp-session-id") && allowed.contains("x-mcp-server"),
        "{allowed}"
    );

    // The key's rate limit counts every POSTed message; past it, 429 with the id.
    let flood = [("x-api-key", FLOOD)];
    for id in 1..=2 {
        let response = http.post(path, &flood, &initialize(id)).await;
        assert_eq!(response.status(), 200, "within the burst");
    }
    let response = http.post(path, &flood, &initialize(3)).await;
    let retry_after = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = json_answer(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["id"], 3);
    assert_eq!(body["error"]["data"]["gateway"], "rate_limited");
    assert!(body["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(retry_after.parse::<u64>().unwrap() > 0);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"flood\"")
    );

    // An event stream counts against the key's maxConnections, as a socket does.
    let limited = [("x-api-key", LIMITED)];
    let open = http
        .send(Method::GET, "/servers/everything/sse", &limited, None)
        .await;
    assert_eq!(open.status(), 200);
    let mut open = Events::of(open);
    assert_eq!(open.next().await.event.as_deref(), Some("endpoint"));
    let (status, _, body) = json_answer(
        http.send(Method::GET, "/servers/memory/sse", &limited, None)
            .await,
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["data"]["gateway"], "too_many_sessions");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxConnections")
    );

    // A legacy session belongs to the key that opened it.
    let ops = [("x-api-key", OPS)];
    let mut theirs = Events::of(
        http.send(Method::GET, "/servers/everything/sse", &ops, None)
            .await,
    );
    let endpoint = theirs.next().await;
    let messages = format!("/servers/everything/{}", endpoint.data);
    let (status, _, body) = json_answer(http.post(&messages, &[dashboard], &list(9)).await).await;
    assert_eq!(
        (status, &body["error"]["data"]["gateway"]),
        (404, &json!("session_lost"))
    );
    assert_eq!(http.post(&messages, &ops, &list(9)).await.status(), 202);
    drop(open);
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let http = Http::new(gateway.addr);
    let stream = http
        .send(Method::GET, "/servers/everything/sse", &[], None)
        .await;
    let mut events = Events::of(stream);
    assert_eq!(events.next().await.event.as_deref(), Some("endpoint"));
    let shutdown = tokio::spawn(gateway.shutdown());
    while events.next_or_end().await.is_ok() {}
    shutdown.await.expect("shutdown completes");
}
