//! Access rules inside a running gateway: status frames only for the servers a key may
//! use, resumes only with the session's own key, rate refusals for every kind of frame
//! and per server, the 4029 close after sustained flooding, the limit on sockets
//! that have not said hello, and the bound on a key's sessions held for resume.

use serde_json::{Value, json};

use crate::harness::{Client, Ended, Socket, TestGateway, config};

const ALL: &str = "all-servers-key-0123456789";
const ONE: &str = "one-server-key-0123456789";

fn hello(token: &str) -> Value {
    json!({"type": "hello", "client": {"name": "access-tests"}, "token": token})
}

/// Two remote servers that are never reached, and `gateway` settings.
fn remote_config(gateway: Value) -> Value {
    config(
        json!({
            "hidden": {"url": "http://127.0.0.1:9/mcp"},
            "visible": {"url": "http://127.0.0.1:9/mcp"},
        }),
        gateway,
    )
}

fn keys(rate_limit: Value) -> Value {
    json!({"apiKeys": [
        {"name": "all", "key": ALL, "servers": "*"},
        {"name": "one", "key": ONE, "servers": ["visible"], "rateLimit": rate_limit},
    ]})
}

async fn connect(gateway: &TestGateway, token: &str) -> Client {
    let (ws, _) = Client::open_with(gateway.addr, &[]).await.expect("upgrade");
    Client::greet(ws, hello(token)).await.expect("welcome")
}

/// Publishes `server` as down, then as it was: two status changes.
fn flip(gateway: &TestGateway, server: &str) {
    let servers = gateway.gateway().servers();
    let server = &servers[server];
    let before = server.status();
    server.update(|s| s.state = mcpmux::protocol::ServerState::Down);
    server.update(|s| *s = before);
}

#[tokio::test]
async fn status_frames_reach_only_clients_whose_key_may_use_the_server() {
    let limit = json!({"perSecond": 1000});
    let gateway = TestGateway::start(&remote_config(keys(limit))).await;
    let mut all = connect(&gateway, ALL).await;
    let mut one = connect(&gateway, ONE).await;
    assert_eq!(
        one.welcome["servers"],
        json!([{"name": "visible", "state": "ready"}])
    );

    flip(&gateway, "hidden");
    flip(&gateway, "visible");
    for server in ["hidden", "visible"] {
        for state in ["down", "ready"] {
            all.wait_for("status", |f| {
                f["type"] == "status" && f["server"] == server && f["state"] == state
            })
            .await;
        }
    }
    // Status changes reach each client in order: any frame about "hidden" would have
    // come before those about "visible".
    for state in ["down", "ready"] {
        one.wait_for("status", |f| {
            f["type"] == "status" && f["server"] == "visible" && f["state"] == state
        })
        .await;
    }
    let seen = one.take_buffered(|f| f["server"] == "hidden");
    assert!(seen.is_empty(), "{seen:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn only_the_key_that_opened_a_session_may_resume_it() {
    let gateway = TestGateway::start(&remote_config(keys(json!({"perSecond": 1000})))).await;
    let mut owner = connect(&gateway, ALL).await;
    let session = owner.session_id();
    let resume = |token: &str| json!({"type": "hello", "token": token, "resume": {"session": session, "last_seq": 0}});

    // Another key gets a fresh session; the owner's is left alone.
    let (ws, _) = Client::open_with(gateway.addr, &[]).await.expect("upgrade");
    let other = Client::greet(ws, resume(ONE)).await.expect("welcome");
    assert_eq!(other.welcome["resumed"], false);
    assert_ne!(other.session_id(), session);
    owner.send(json!({"type": "ping"})).await;
    owner.wait_for("pong", |f| f["type"] == "pong").await;

    // The same key takes the session: the owner's socket is closed with 4002.
    let (ws, _) = Client::open_with(gateway.addr, &[]).await.expect("upgrade");
    let _same = Client::greet(ws, resume(ALL)).await.expect("welcome");
    match owner.closed().await {
        Ended::Closed(code, _) => assert_eq!(code, 4002),
        Ended::Dropped => panic!("the owner's socket ended without a close frame"),
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn every_frame_over_the_rate_is_answered_rate_limited() {
    // One frame now, the next in 100 s.
    let limit = json!({"perSecond": 0.01, "burst": 1});
    let gateway = TestGateway::start(&remote_config(keys(limit))).await;
    let mut client = connect(&gateway, ONE).await;
    // The first frame is carried (the server is unreachable, so it fails upstream).
    let first = client
        .call("visible", json!(1), "tools/list", json!({}))
        .await;
    assert_eq!(
        first["message"]["error"]["data"]["gateway"],
        "server_unavailable"
    );

    // A notification: an error frame with retry_after_ms at the top level.
    let notify = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    client
        .send(json!({"type": "rpc", "server": "visible", "message": notify, "ref": "r-9"}))
        .await;
    let error = client.wait_for("error", |f| f["type"] == "error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert_eq!(error["server"], "visible");
    assert_eq!(error["ref"], "r-9");
    let retry = error["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=100_000).contains(&retry), "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("API key \"one\""),
        "{error}"
    );

    // A request: a JSON-RPC error with its own id.
    let refused = client
        .call("visible", json!("two"), "tools/list", json!({}))
        .await;
    let data = &refused["message"]["error"]["data"];
    assert_eq!(data["gateway"], "rate_limited", "{refused}");
    assert_eq!(data["server"], "visible");
    assert!(data["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1));
    // Frames naming other servers, hidden or missing, count too.
    let missing = client
        .call("nowhere", json!(3), "tools/list", json!({}))
        .await;
    assert_eq!(
        missing["message"]["error"]["data"]["gateway"],
        "rate_limited"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_server_limit_holds_back_only_that_server() {
    let limit = json!({"servers": {"visible": {"perSecond": 0.01, "burst": 1}}});
    let keys =
        json!({"apiKeys": [{"name": "one", "key": ONE, "servers": "*", "rateLimit": limit}]});
    let gateway = TestGateway::start(&remote_config(keys)).await;
    let mut client = connect(&gateway, ONE).await;
    let code = |frame: &Value| frame["message"]["error"]["data"]["gateway"].clone();
    let first = client
        .call("visible", json!(1), "tools/list", json!({}))
        .await;
    assert_eq!(code(&first), "server_unavailable");
    let second = client
        .call("visible", json!(2), "tools/list", json!({}))
        .await;
    assert_eq!(code(&second), "rate_limited");
    let message = second["message"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("for server \"visible\""), "{message}");
    for id in 3..8 {
        let other = client
            .call("hidden", json!(id), "tools/list", json!({}))
            .await;
        assert_eq!(code(&other), "server_unavailable", "{other}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_keeps_sending_while_limited_is_closed_4029() {
    let limit = json!({"perSecond": 1, "burst": 1});
    let gateway = TestGateway::start(&remote_config(keys(limit))).await;
    let mut client = connect(&gateway, ONE).await;
    // Ten frames a second against one: refused without pause until the gateway closes.
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    let notify = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let frame = json!({"type": "rpc", "server": "nowhere", "message": notify}).to_string();
    let mut refusals = 0;
    let ended = loop {
        assert!(refusals < 300, "still open after {refusals} refusals");
        tokio::select! {
            _ = ticks.tick() => client.try_send_text(&frame).await,
            ended = client.next_or_end() => match ended {
                Ok(frame) if frame["code"] == "rate_limited" => refusals += 1,
                Ok(_) => {}
                Err(ended) => break ended,
            },
        }
    };
    match ended {
        Ended::Closed(code, reason) => {
            assert_eq!(code, 4029, "{reason}");
            assert!(reason.contains("rate limited"), "{reason}");
        }
        Ended::Dropped => panic!("no close frame"),
    }
    // Ten seconds of refusals, less than a second apart.
    assert!(refusals >= 10, "closed after only {refusals} refusals");
    // The key may reconnect.
    connect(&gateway, ONE).await;
    gateway.shutdown().await;
}

/// Opens a socket with `key` in a header. Until the gateway has noticed that the key's
/// last socket dropped, that socket still counts (429): the upgrade is tried again.
async fn open_keyed(gateway: &TestGateway, key: &str) -> Result<Socket, (u16, String)> {
    let bearer = format!("Bearer {key}");
    loop {
        match Client::open_with(gateway.addr, &[("authorization", &bearer)]).await {
            Err((429, _)) => tokio::task::yield_now().await,
            other => return other.map(|(ws, _)| ws),
        }
    }
}

#[tokio::test]
async fn a_key_holds_at_most_max_connections_sessions_for_resume() {
    let gateway = TestGateway::start(&remote_config(json!({
        "maxSessions": 6,
        "apiKeys": [
            {"name": "all", "key": ALL, "servers": "*"},
            {"name": "one", "key": ONE, "servers": "*", "maxConnections": 1},
        ],
    })))
    .await;
    // Six sessions of one key, each dropped without a close frame: held for resume.
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let ws = open_keyed(&gateway, ONE).await.expect("upgrade");
        let client = Client::greet(ws, hello(ONE)).await.expect("welcome");
        sessions.push(client.session_id());
        drop(client);
    }
    // The key holds only its newest: its next socket and another key's get places.
    let ws = open_keyed(&gateway, ONE)
        .await
        .expect("a place among maxSessions for the key's next socket");
    let newest = sessions.last().expect("six sessions");
    let resume =
        json!({"type": "hello", "token": ONE, "resume": {"session": newest, "last_seq": 0}});
    let resumed = Client::greet(ws, resume).await.expect("welcome");
    assert_eq!(resumed.welcome["resumed"], true, "{}", resumed.welcome);
    let other = connect(&gateway, ALL).await;
    // The older ones ended.
    resumed.close().await;
    let ws = open_keyed(&gateway, ONE).await.expect("upgrade");
    let resume =
        json!({"type": "hello", "token": ONE, "resume": {"session": sessions[4], "last_seq": 0}});
    let fresh = Client::greet(ws, resume).await.expect("welcome");
    assert_eq!(fresh.welcome["resumed"], false, "{}", fresh.welcome);
    drop((fresh, other));
    gateway.shutdown().await;
}

#[tokio::test]
async fn sockets_that_have_not_said_hello_are_limited_per_address() {
    let gateway = TestGateway::start(&remote_config(json!({"maxPendingPerIp": 2}))).await;
    let open = || Client::open_with(gateway.addr, &[]);
    let (first, _): (Socket, _) = open().await.expect("first");
    let (_second, _) = open().await.expect("second");
    let (status, body) = open().await.expect_err("a third is refused");
    assert_eq!(status, 429);
    assert!(body.contains("maxPendingPerIp"), "{body}");
    // Once one has said hello, there is room again.
    let hello = json!({"type": "hello"});
    let _done = Client::greet(first, hello).await.expect("welcome");
    open().await.expect("room again");
    gateway.shutdown().await;
}

/// Every request a recording upstream received: method and headers.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap)>>>;

/// A Streamable HTTP upstream that records what it receives (what a real server cannot
/// show): it answers `initialize` and other requests with JSON, notifications with 202.
async fn recording_upstream() -> (std::net::SocketAddr, Received) {
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::IntoResponse;
    let received = Received::default();
    let record = received.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(move |method: Method, headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push((method.to_string(), headers));
                if method != Method::POST {
                    return StatusCode::METHOD_NOT_ALLOWED.into_response();
                }
                let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if message.get("id").is_none() {
                    return StatusCode::ACCEPTED.into_response();
                }
                let result = match message["method"].as_str() {
                    Some("initialize") => json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "recorder", "version": "1"}}),
                    _ => json!({"tools": []}),
                };
                let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
                (
                    [("content-type", "application/json"), ("mcp-session-id", "recorded-1")],
                    reply.to_string(),
                )
                    .into_response()
            }
        }),
    );
    let addr = crate::harness::serve(app).await;
    (addr, received)
}

#[tokio::test]
async fn a_clients_key_never_reaches_an_upstream() {
    let (upstream, received) = recording_upstream().await;
    let servers = json!({"recorder": {"url": format!("http://{upstream}/mcp"), "headers": {"X-Upstream": "configured"}}});
    let keys = json!({"apiKeys": [{"name": "all", "key": ALL, "servers": "*"}]});
    let gateway = TestGateway::start(&config(servers, keys)).await;
    let bearer = format!("Bearer {ALL}");
    let headers = [("authorization", bearer.as_str()), ("x-api-key", ALL)];
    let (ws, _) = Client::open_with(gateway.addr, &headers)
        .await
        .expect("upgrade");
    let mut client = Client::greet(ws, hello(ALL)).await.expect("welcome");
    client.initialize("recorder").await;
    let listed = client
        .call("recorder", json!(2), "tools/list", json!({}))
        .await;
    assert_eq!(listed["message"]["result"]["tools"], json!([]));
    gateway.shutdown().await;

    let received = received.lock().expect("lock").clone();
    let posts = received
        .iter()
        .filter(|(method, _)| method == "POST")
        .count();
    assert!(
        posts >= 3,
        "initialize, initialized and tools/list: {received:?}"
    );
    for (method, headers) in &received {
        assert_eq!(headers["x-upstream"], "configured", "{method}");
        assert!(
            !headers.contains_key("authorization"),
            "{method}: {headers:?}"
        );
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(ALL),
                "{method}: header {name} carries the client's key"
            );
        }
    }
}
