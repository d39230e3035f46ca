//! A strict Streamable HTTP upstream, as careful servers are: it rejects any request
//! that arrives before `notifications/initialized`, records the order in which each
//! session's messages arrive, counts the sessions it holds, and can answer `initialize`
//! slowly or keep a silent standalone stream. It checks that the gateway delivers a
//! session's messages in order, leaves no upstream session behind, and notices a
//! stream that went silent without closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Client, TestGateway, config};

#[derive(Default)]
struct Strict {
    /// Every live session: whether it was initialized, and the methods in arrival order.
    sessions: Mutex<HashMap<String, (bool, Vec<String>)>>,
    /// Initialize requests that arrived, and sessions created (answered).
    arrived: AtomicUsize,
    created: AtomicUsize,
    /// GET streams opened, with the Last-Event-ID each carried.
    gets: Mutex<Vec<Option<String>>>,
    /// Told of every change above.
    changed: tokio::sync::Notify,
}

impl Strict {
    fn live(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Waits until `done` holds, re-checking at every change.
    async fn until(&self, what: &str, done: impl Fn(&Strict) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .is_err()
        {
            panic!(
                "{what}: still {} live sessions, {} initializes arrived, {} created",
                self.live(),
                self.arrived.load(Ordering::SeqCst),
                self.created.load(Ordering::SeqCst)
            );
        }
    }
}

/// Modes (the first path segment): `plain`; `slow-init` answers initialize after
/// 400 ms; `silent-get` keeps a standalone stream that sends one event, then nothing.
async fn strict_upstream() -> (SocketAddr, Arc<Strict>) {
    let strict = Arc::new(Strict::default());
    let app = Router::new()
        .route(
            "/{mode}/mcp",
            post(strict_post).get(strict_get).delete(strict_delete),
        )
        .with_state(strict.clone());
    let addr = crate::harness::serve(app).await;
    (addr, strict)
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("mcp-session-id")?.to_str().ok()?;
    Some(value.to_owned())
}

fn json_reply(message: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        message.to_string(),
    )
        .into_response()
}

async fn strict_post(
    State(strict): State<Arc<Strict>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let method = message["method"].as_str().unwrap_or("").to_owned();
    let id = message["id"].clone();
    if method == "initialize" {
        strict.arrived.fetch_add(1, Ordering::SeqCst);
        strict.changed.notify_waiters();
        if mode == "slow-init" {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let n = strict.created.fetch_add(1, Ordering::SeqCst);
        let session = format!("s{n}");
        strict
            .sessions
            .lock()
            .unwrap()
            .insert(session.clone(), (false, vec![method]));
        strict.changed.notify_waiters();
        let result = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "strict", "version": "1"}});
        let mut reply = json_reply(json!({"jsonrpc": "2.0", "id": id, "result": result}));
        reply
            .headers_mut()
            .insert("mcp-session-id", session.parse().expect("header"));
        return reply;
    }
    let Some(session) = session_of(&headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if method == "notifications/initialized" {
        // A notification's way in can be slower than the next message's: only a
        // gateway that waits for the 202 keeps them in order.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let initialized = {
        let mut sessions = strict.sessions.lock().unwrap();
        let Some((initialized, order)) = sessions.get_mut(&session) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        order.push(method.clone());
        if method == "notifications/initialized" {
            *initialized = true;
        }
        *initialized
    };
    if id.is_null() {
        return StatusCode::ACCEPTED.into_response();
    }
    if !initialized {
        let error = json!({"code": -32600, "message": "request before notifications/initialized"});
        return json_reply(json!({"jsonrpc": "2.0", "id": id, "error": error}));
    }
    let result = json!({"content": [{"type": "text", "text": "ok"}]});
    json_reply(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

async fn strict_get(
    State(strict): State<Arc<Strict>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
) -> Response {
    if mode != "silent-get" {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let n = {
        let mut gets = strict.gets.lock().unwrap();
        gets.push(last);
        gets.len()
    };
    // One event, then silence on an open connection, as behind a NAT that dropped it.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": format!("stream {n}")}});
    let event = Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!(
        ": keepalive\n\nid: e{n}\ndata: {note}\n\n"
    )));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(
            futures::stream::iter([event]).chain(futures::stream::pending()),
        ))
        .expect("response")
}

async fn strict_delete(State(strict): State<Arc<Strict>>, headers: HeaderMap) -> StatusCode {
    let removed = session_of(&headers).and_then(|s| strict.sessions.lock().unwrap().remove(&s));
    strict.changed.notify_waiters();
    if removed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn gateway_for(addr: SocketAddr, mode: &str, gateway: Value) -> TestGateway {
    let servers = json!({"strict": {"url": format!("http://{addr}/{mode}/mcp")}});
    TestGateway::start(&config(servers, gateway)).await
}

fn initialize(id: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

#[tokio::test]
async fn a_sessions_messages_reach_a_strict_server_in_the_order_sent() {
    let (addr, strict) = strict_upstream().await;
    let gateway = gateway_for(addr, "plain", json!({})).await;
    let clients = (0..50).map(|n| {
        let gateway_addr = gateway.addr;
        tokio::spawn(async move {
            let mut client = Client::connect(gateway_addr).await;
            let init = client
                .call("strict", json!("init"), "initialize", initialize("init")["params"].clone())
                .await;
            assert!(init["message"]["result"].is_object(), "{init}");
            // Both in the same tick: the call must not overtake the notification.
            client
                .rpc("strict", json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
            let call = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "echo", "arguments": {}}});
            client.rpc("strict", call).await;
            let answer = client.response("strict", &json!(n)).await;
            assert_eq!(answer["message"]["result"]["content"][0]["text"], "ok", "{answer}");
        })
    });
    for client in futures::future::join_all(clients).await {
        client.expect("client task");
    }
    let orders: Vec<Vec<String>> = strict
        .sessions
        .lock()
        .unwrap()
        .values()
        .map(|(_, order)| order.clone())
        .collect();
    assert_eq!(orders.len(), 50);
    for order in orders {
        assert_eq!(
            order,
            ["initialize", "notifications/initialized", "tools/call"],
            "arrival order equals the order sent"
        );
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn no_upstream_session_is_left_behind_by_an_abandoned_initialize() {
    let (addr, strict) = strict_upstream().await;
    let gateway = gateway_for(addr, "slow-init", json!({})).await;

    // An initialize given up (close) before its reply: deleted once the reply comes.
    let mut client = Client::connect(gateway.addr).await;
    client.rpc("strict", initialize("a")).await;
    strict
        .until("the initialize arrived", |s| {
            s.arrived.load(Ordering::SeqCst) == 1
        })
        .await;
    client
        .send(json!({"type": "close", "server": "strict"}))
        .await;
    client.session_state("closed").await;
    strict
        .until("answered", |s| s.created.load(Ordering::SeqCst) == 1)
        .await;
    strict.until("deleted", |s| s.live() == 0).await;

    // A client looping initialize, each replacing the last before its reply, then
    // closing its socket: every session the upstream created is deleted.
    for i in 1..=5 {
        client.rpc("strict", initialize(&format!("loop-{i}"))).await;
        strict
            .until("the initialize arrived", |s| {
                s.arrived.load(Ordering::SeqCst) == i + 1
            })
            .await;
    }
    client.close().await;
    strict
        .until("all answered", |s| s.created.load(Ordering::SeqCst) == 6)
        .await;
    strict.until("all deleted", |s| s.live() == 0).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_standalone_stream_gone_silent_is_resumed_after_the_idle_timeout() {
    let (addr, strict) = strict_upstream().await;
    let gateway = gateway_for(addr, "silent-get", json!({"upstreamIdleTimeoutMs": 300})).await;
    let mut client = Client::connect(gateway.addr).await;
    client
        .call(
            "strict",
            json!("init"),
            "initialize",
            initialize("init")["params"].clone(),
        )
        .await;
    let log = |n: u32| move |f: &Value| f["message"]["params"]["data"] == format!("stream {n}");
    client.wait_for("the first stream's event", log(1)).await;
    // Silent past the deadline: resumed after the last event seen.
    client.wait_for("the resumed stream's event", log(2)).await;
    let gets = strict.gets.lock().unwrap().clone();
    assert_eq!(gets[0], None);
    assert_eq!(gets[1].as_deref(), Some("e1"), "resumed with Last-Event-ID");
    gateway.shutdown().await;
}
