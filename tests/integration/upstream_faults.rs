//! Upstream failures a real server cannot produce on demand, from a fake Streamable
//! HTTP upstream: each becomes a JSON-RPC error with the request's own id and the right
//! `error.data.gateway` code, and a 404 on a live session becomes `session lost`.
//! Also checks the headers the 2026-07-28 revision requires.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Client, TestGateway, config};

/// A fake upstream; the first path segment picks its behaviour.
async fn fake_upstream() -> SocketAddr {
    let app = Router::new().route("/{mode}/mcp", post(fake_post).get(fake_get));
    crate::harness::serve(app).await
}

/// GET: only mode `gap` has a standalone stream. Its first stream carries one event and
/// ends; a replay after it is refused (400); a fresh stream carries a second event and
/// stays open.
async fn fake_get(Path(mode): Path<String>, headers: HeaderMap) -> Response {
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if mode != "gap" {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if headers.contains_key("last-event-id") {
        return (StatusCode::BAD_REQUEST, "unknown event id").into_response();
    }
    let note = |n: u32| json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": format!("n{n}")}});
    let first = OPENED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
    let body = if first {
        Body::from(format!("id: g1\ndata: {}\n\n", note(1)))
    } else {
        let event = Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
            "id: g2\ndata: {}\n\n",
            note(2)
        )));
        Body::from_stream(futures::stream::iter([event]).chain(futures::stream::pending()))
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .expect("response")
}

async fn fake_post(Path(mode): Path<String>, headers: HeaderMap, body: String) -> Response {
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = message["id"].clone();
    let sse = |events: String| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from(events))
            .expect("response")
    };
    match mode.as_str() {
        "status500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "garbage" => ([(header::CONTENT_TYPE, "application/json")], "<<<not json>>>").into_response(),
        "html" => ([(header::CONTENT_TYPE, "text/html")], "<h1>hi</h1>").into_response(),
        "cut" => {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}});
            sse(format!("event: message\ndata: {progress}\n\n"))
        }
        "cut_mid_event" => sse("event: message\ndata: {\"jsonrpc\":".into()),
        "stall" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        "expire" | "gap" if message["method"] == "initialize" => {
            let result = json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "fake", "version": "0"}}});
            ([(header::CONTENT_TYPE, "application/json"), (header::HeaderName::from_static("mcp-session-id"), "s-1")], result.to_string())
                .into_response()
        }
        "expire" if message.get("id").is_some() => {
            (StatusCode::NOT_FOUND, json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "Session not found"}}).to_string())
                .into_response()
        }
        "expire" | "gap" => StatusCode::ACCEPTED.into_response(),
        "echo_headers" => {
            let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let result = json!({
                "method": get("mcp-method"),
                "name": get("mcp-name"),
                "version": get("mcp-protocol-version"),
                "session": get("mcp-session-id"),
            });
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
            sse(format!("data: {reply}\n\n"))
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn gateway_with_fakes() -> TestGateway {
    let fake = fake_upstream().await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut servers = serde_json::Map::new();
    for mode in [
        "status500",
        "garbage",
        "html",
        "cut",
        "cut_mid_event",
        "stall",
        "expire",
        "echo_headers",
        "gap",
    ] {
        servers.insert(
            mode.into(),
            json!({"url": format!("http://{fake}/{mode}/mcp")}),
        );
    }
    servers.insert(
        "refused".into(),
        json!({"url": format!("http://127.0.0.1:{closed_port}/mcp")}),
    );
    TestGateway::start(&config(
        Value::Object(servers),
        json!({"requestTimeoutMs": 1500, "connectTimeoutMs": 1000}),
    ))
    .await
}

#[tokio::test]
async fn each_upstream_failure_becomes_a_jsonrpc_error_with_its_code() {
    let gateway = gateway_with_fakes().await;
    let mut client = Client::connect(gateway.addr).await;
    let cases = [
        ("refused", "server_unavailable", -32000),
        ("status500", "upstream_error", -32000),
        ("garbage", "upstream_error", -32000),
        ("html", "upstream_error", -32000),
        ("cut", "upstream_error", -32000),
        ("cut_mid_event", "upstream_error", -32000),
        ("stall", "timeout", -32001),
    ];
    for (server, code, jsonrpc_code) in cases {
        let id = json!(format!("req-{server}"));
        let reply = client
            .call(server, id.clone(), "tools/list", json!({}))
            .await;
        let error = &reply["message"]["error"];
        assert_eq!(reply["message"]["id"], id);
        assert_eq!(error["data"]["gateway"], code, "{server}: {reply}");
        assert_eq!(error["code"], jsonrpc_code, "{server}: {reply}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let status500 = client.call("status500", json!(1), "ping", json!({})).await;
    assert!(
        status500["message"]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("500")
    );
    // Progress that came before the cut still reached the client.
    let cut = client.take_buffered(|f| {
        f["server"] == "cut" && f["message"]["method"] == "notifications/progress"
    });
    assert_eq!(cut.len(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_notification_that_fails_upstream_gets_an_error_frame() {
    let gateway = gateway_with_fakes().await;
    let mut client = Client::connect(gateway.addr).await;
    client
        .send(json!({"type": "rpc", "server": "status500", "ref": "n1", "message": {"jsonrpc": "2.0", "method": "notifications/initialized"}}))
        .await;
    let error = client
        .wait_for("error frame", |f| f["type"] == "error")
        .await;
    assert_eq!(error["code"], "upstream_error");
    assert_eq!(error["server"], "status500");
    assert_eq!(error["ref"], "n1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_404_on_a_live_session_is_reported_as_lost() {
    let gateway = gateway_with_fakes().await;
    let mut client = Client::connect(gateway.addr).await;
    let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    client.call("expire", json!(1), "initialize", init).await;
    let open = client
        .wait_for("session open", |f| f["type"] == "session")
        .await;
    assert_eq!(open["state"], "open");
    let reply = client
        .call("expire", json!(2), "tools/list", json!({}))
        .await;
    assert_eq!(
        reply["message"]["error"]["data"]["gateway"], "session_lost",
        "{reply}"
    );
    let lost = client
        .wait_for("session lost", |f| f["type"] == "session")
        .await;
    assert_eq!(lost["state"], "lost");
    assert!(
        lost["seq"].as_u64() < reply["seq"].as_u64(),
        "lost is announced before the error"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn stateless_revision_messages_carry_the_required_headers() {
    let gateway = gateway_with_fakes().await;
    let mut client = Client::connect(gateway.addr).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}
    });
    let params = json!({"name": "echo", "arguments": {}, "_meta": meta});
    let reply = client
        .call("echo_headers", json!(5), "tools/call", params)
        .await;
    let seen = &reply["message"]["result"];
    assert_eq!(seen["method"], "tools/call");
    assert_eq!(seen["name"], "echo");
    assert_eq!(seen["version"], "2026-07-28");
    assert_eq!(seen["session"], Value::Null);
    let params = json!({"uri": "file:///a.txt", "_meta": meta});
    let reply = client
        .call("echo_headers", json!(6), "resources/read", params)
        .await;
    assert_eq!(reply["message"]["result"]["name"], "file:///a.txt");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_event_stream_that_cannot_be_replayed_is_reopened_and_the_gap_reported() {
    let gateway = gateway_with_fakes().await;
    let mut client = Client::connect(gateway.addr).await;
    let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    client.call("gap", json!(1), "initialize", init).await;
    let first = client
        .wait_for("n1", |f| f["message"]["params"]["data"] == "n1")
        .await;
    let gap = client
        .wait_for("the gap report", |f| f["type"] == "error")
        .await;
    assert_eq!(gap["code"], "upstream_error");
    assert_eq!(gap["server"], "gap");
    assert!(
        gap["message"].as_str().unwrap_or("").contains("missing"),
        "{gap}"
    );
    let second = client
        .wait_for("n2", |f| f["message"]["params"]["data"] == "n2")
        .await;
    assert!(
        first["seq"].as_u64() < gap["seq"].as_u64() && gap["seq"].as_u64() < second["seq"].as_u64()
    );
    gateway.shutdown().await;
}
