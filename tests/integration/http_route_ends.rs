//! Event streams on the MCP routes over HTTP end with the access and the server instance
//! they were opened under (protocol.md, section 12.1): a key removed from the file or
//! no longer allowed the server, a server removed, a server whose entry changed. Each
//! against the real server-everything and server-memory behind the real mcp-proxy, the
//! file changed and reloaded while the streams flow; and a remote server (a standalone
//! mcp-proxy) that stays up while its entry changes, so that the gateway alone ends them.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use crate::binary::TempDir;
use crate::harness::{TestGateway, config, everything, memory};
use crate::http_client::{Events, Http, json_answer};
use crate::http_routes::{long_operation, open_session};
use crate::legacy_sse::LegacyProxy;

const DASHBOARD: &str = "dashboard-key-0123456789abcdef";
const OPS: &str = "ops-key-0123456789abcdefghij";

fn write(path: &Path, servers: Value, keys: Option<Value>) {
    let mut gateway = json!({"watchConfig": false});
    if let Some(keys) = keys {
        gateway["apiKeys"] = keys;
    }
    std::fs::write(path, config(servers, gateway).to_string()).expect("write config");
}

fn file(dir: &TempDir) -> PathBuf {
    dir.0.join("mcpmux.json")
}

/// Opens a session on `path` and its standalone GET stream.
async fn standalone(http: &Http, path: &str, extra: &[(&str, &str)]) -> (String, Events) {
    let session = open_session(http, path, extra).await;
    let mut headers = vec![
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
        ("accept", "text/event-stream"),
    ];
    headers.extend_from_slice(extra);
    let stream = http.send(Method::GET, path, &headers, None).await;
    assert_eq!(stream.status(), 200);
    (session, Events::of(stream))
}

/// Reads `events` to its end; the stream must end (the read panics after FRAME_WAIT
/// without an event or an end).
async fn ends(events: &mut Events, what: &str) {
    while let Ok(event) = events.next_or_end().await {
        assert!(
            event.event.as_deref() != Some("endpoint"),
            "{what}: only one endpoint event"
        );
    }
}

#[tokio::test]
async fn streams_end_when_their_key_is_removed_or_loses_the_server() {
    let dir = TempDir::new();
    let path = file(&dir);
    let servers = json!({"everything": everything(), "memory": memory()});
    let keys = json!([
        {"name": "dashboard", "key": DASHBOARD, "servers": ["everything"]},
        {"name": "ops", "key": OPS, "servers": "*"},
    ]);
    write(&path, servers.clone(), Some(keys));
    let gateway = TestGateway::start_from_file(&path).await;
    let http = Http::new(gateway.addr);
    let dashboard = ("x-api-key", DASHBOARD);
    let ops = ("x-api-key", OPS);

    // The dashboard key: a GET stream, a call's answer stream, a legacy SSE stream.
    let (session, mut get_stream) =
        standalone(&http, "/servers/everything/mcp", &[dashboard]).await;
    let call_headers = [
        dashboard,
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = http
        .post(
            "/servers/everything/mcp",
            &call_headers,
            &long_operation("long", 60, 60),
        )
        .await;
    assert_eq!(call.status(), 200);
    let mut call = Events::of(call);
    let first = call.next().await.json();
    assert_eq!(first["method"], "notifications/progress", "{first}");
    let legacy = http
        .send(Method::GET, "/servers/everything/sse", &[dashboard], None)
        .await;
    assert_eq!(legacy.status(), 200);
    let mut legacy = Events::of(legacy);
    let endpoint = legacy.next().await;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    // The ops key, on memory through the header route.
    let (ops_session, mut memory_stream) =
        standalone(&http, "/mcp", &[ops, ("x-mcp-server", "memory")]).await;

    // dashboard removed; ops keeps everything only.
    let keys = json!([{"name": "ops", "key": OPS, "servers": ["everything"]}]);
    write(&path, servers, Some(keys));
    gateway.gateway().reload().await;

    ends(&mut get_stream, "dashboard's GET stream").await;
    ends(&mut call, "dashboard's call stream").await;
    ends(&mut legacy, "dashboard's legacy stream").await;
    ends(&mut memory_stream, "ops's stream on memory").await;

    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    let refused = http
        .post("/servers/everything/mcp", &call_headers, &list)
        .await;
    assert_eq!(refused.status(), 401);
    let (status, _, body) = json_answer(
        http.post(
            "/mcp",
            &[
                ops,
                ("x-mcp-server", "memory"),
                ("mcp-session-id", &ops_session),
            ],
            &list,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["data"]["gateway"], "unknown_server", "{body}");
    assert_eq!(body["id"], 7);
    gateway.shutdown().await;
}

#[tokio::test]
async fn streams_end_when_their_server_is_removed_or_changed() {
    let dir = TempDir::new();
    let path = file(&dir);
    write(
        &path,
        json!({"everything": everything(), "memory": memory()}),
        None,
    );
    let gateway = TestGateway::start_from_file(&path).await;
    let http = Http::new(gateway.addr);
    let (_, mut memory_stream) = standalone(&http, "/servers/memory/mcp", &[]).await;
    let (session, mut everything_stream) = standalone(&http, "/servers/everything/mcp", &[]).await;
    let legacy = http
        .send(Method::GET, "/servers/everything/sse", &[], None)
        .await;
    let mut legacy = Events::of(legacy);
    assert_eq!(legacy.next().await.event.as_deref(), Some("endpoint"));

    // memory removed; everything's entry changed (restarted with it).
    let mut changed = everything();
    changed["env"] = json!({"MCPMUX_TEST_CHANGED": "1"});
    write(&path, json!({"everything": changed}), None);
    gateway.gateway().reload().await;

    ends(&mut memory_stream, "the stream of a removed server").await;
    ends(&mut everything_stream, "the stream of a changed server").await;
    ends(&mut legacy, "the legacy stream of a changed server").await;

    let list = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"});
    let (status, _, body) = json_answer(http.post("/servers/memory/mcp", &[], &list).await).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["data"]["gateway"], "unknown_server", "{body}");
    // The session lived on the instance that is gone: the new one does not know it.
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, _, body) =
        json_answer(http.post("/servers/everything/mcp", &headers, &list).await).await;
    assert_eq!(status, 404, "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn answers_of_a_remote_server_that_stays_up_end_when_its_entry_changes() {
    let proxy = LegacyProxy::serving("stream").await;
    let url = format!("http://127.0.0.1:{}/mcp", proxy.port);
    let dir = TempDir::new();
    let path = file(&dir);
    write(
        &path,
        json!({"far": {"url": url}, "memory": memory()}),
        None,
    );
    let gateway = TestGateway::start_from_file(&path).await;
    let http = Http::new(gateway.addr);
    let (session, mut stream) = standalone(&http, "/servers/far/mcp", &[]).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = http
        .post(
            "/servers/far/mcp",
            &headers,
            &long_operation("far-1", 60, 60),
        )
        .await;
    assert_eq!(call.status(), 200);
    let mut call = Events::of(call);
    assert_eq!(call.next().await.json()["method"], "notifications/progress");

    // Its entry changed; the remote server itself is untouched and keeps running.
    let changed = json!({"url": url, "headers": {"X-Changed": "1"}});
    write(&path, json!({"far": changed, "memory": memory()}), None);
    gateway.gateway().reload().await;
    ends(&mut stream, "the GET stream of a changed remote server").await;
    let last = call.until(|m| m["id"] == "far-1").await.json();
    assert_eq!(last["error"]["data"]["gateway"], "session_lost", "{last}");
    ends(&mut call, "the call stream after its error").await;
    // The session is the remote server's: it goes on through the changed entry.
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let answer = http.post("/servers/far/mcp", &headers, &list).await;
    assert_eq!(answer.status(), 200);
    let tools = Events::of(answer).until(|m| m["id"] == 9).await.json();
    assert!(tools["result"]["tools"].is_array(), "{tools}");

    // Removed: the next stream ends with it, and the server is unknown.
    let (_, mut stream) = standalone(&http, "/servers/far/mcp", &[]).await;
    write(&path, json!({"memory": memory()}), None);
    gateway.gateway().reload().await;
    ends(&mut stream, "the GET stream of a removed remote server").await;
    let (status, _, body) = json_answer(http.post("/servers/far/mcp", &headers, &list).await).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["data"]["gateway"], "unknown_server", "{body}");
    drop(proxy);
    gateway.shutdown().await;
}
