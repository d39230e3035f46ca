//! The MCP routes over HTTP against fake upstreams, for what a real server cannot show on
//! demand: which headers cross the proxy each way, answers that flow event by event,
//! every upstream failure as 502, 503 or 504 with the request's id, a stream cut in the
//! middle, a remote legacy SSE server whose message url stays with the gateway.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use mcpmux::Options;
use mcpmux::metrics::Metrics;

use crate::binary::{Binary, Launch, TempDir};
use crate::harness::{Client, TestGateway, config};
use crate::http_client::{End, Events, Http, json_answer};
use crate::metrics::{sample, until};

const OPS: &str = "ops-key-0123456789abcdefghij";
/// The header each remote entry configures: mcpmux's credential for the upstream.
const UPSTREAM_SECRET: &str = "upstream-secret-0123456789";

/// A fake upstream: what it was sent, and the handles tests pull.
#[derive(Default)]
struct Fake {
    /// Every request: its path and query, headers and body.
    seen: Mutex<Vec<(String, HeaderMap, String)>>,
    /// Lets the `gated` and `cut` answers go on past their first event.
    release: Notify,
    /// The open legacy stream's sender.
    legacy: Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl Fake {
    fn record(&self, uri: &axum::http::Uri, headers: &HeaderMap, body: &str) {
        let mut seen = self.seen.lock().unwrap();
        seen.push((uri.to_string(), headers.clone(), body.to_owned()));
    }

    fn last(&self) -> (String, HeaderMap, String) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn start_fake() -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/{mode}/mcp", post(fake_mcp).get(fake_mcp).delete(fake_mcp))
        .route("/legacy/sse", get(legacy_stream))
        .route("/legacy/messages", post(legacy_message))
        .route("/elsewhere/sse", get(foreign_endpoint))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fake)
}

fn event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .expect("response")
}

async fn fake_mcp(
    State(fake): State<Arc<Fake>>,
    Path(mode): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    fake.record(&uri, &headers, &body);
    let id = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["id"].clone();
    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
        "params": {"progressToken": "t", "progress": 1}});
    let result = json!({"jsonrpc": "2.0", "id": id, "result": {}});
    match mode.as_str() {
        "echo" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header("mcp-session-id", "s-1")
            .header("mcp-method", "tools/call")
            .header("mcp-param-region", "eu")
            .header(header::SET_COOKIE, "upstream=1")
            .header(header::WWW_AUTHENTICATE, "Bearer realm=upstream")
            .body(Body::from(result.to_string()))
            .expect("response"),
        "gated" => {
            let first = futures::stream::iter([Ok::<_, std::io::Error>(event(&progress))]);
            let rest = futures::stream::once(async move {
                fake.release.notified().await;
                Ok(event(&result))
            });
            event_stream(Body::from_stream(first.chain(rest)))
        }
        "cut" => {
            let first = futures::stream::iter([Ok(event(&progress))]);
            let broken = futures::stream::once(async move {
                fake.release.notified().await;
                Err(std::io::Error::other("cut"))
            });
            event_stream(Body::from_stream(first.chain(broken)))
        }
        "status500" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("boom; you sent {UPSTREAM_SECRET}"),
        )
            .into_response(),
        "html" => ([(header::CONTENT_TYPE, "text/html")], "<h1>login</h1>").into_response(),
        "redirect" => (
            StatusCode::TEMPORARY_REDIRECT,
            [(
                header::LOCATION,
                "http://127.0.0.1:1/mcp?token=hidden-place",
            )],
            "moved to http://127.0.0.1:1/mcp?token=hidden-place",
        )
            .into_response(),
        "unauthorized" => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer resource_metadata=\"http://x\"",
            )],
            "who are you",
        )
            .into_response(),
        "gone" => {
            let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001,
                "message": format!("Session not found (you sent {UPSTREAM_SECRET})")}});
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        "stall" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        // The first half of a JSON answer; the rest never comes.
        "half" => {
            let half = Bytes::from(r#"{"jsonrpc":"2.0","id":"#);
            let body = futures::stream::iter([Ok::<_, std::io::Error>(half)])
                .chain(futures::stream::pending());
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(body))
                .expect("response")
        }
        "error" => {
            let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "no such tool"}});
            (
                [(header::CONTENT_TYPE, "application/json")],
                error.to_string(),
            )
                .into_response()
        }
        "event-error" => {
            let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "no such tool"}});
            let events = [Ok::<_, std::io::Error>(event(&progress)), Ok(event(&error))];
            event_stream(Body::from_stream(futures::stream::iter(events)))
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A legacy SSE stream: its endpoint event, then whatever the message handler sends.
async fn legacy_stream(State(fake): State<Arc<Fake>>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    *fake.legacy.lock().unwrap() = Some(tx);
    let endpoint = Bytes::from_static(b"event: endpoint\ndata: /legacy/messages?sid=42\n\n");
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::io::Error>(bytes), rx))
    });
    event_stream(Body::from_stream(
        futures::stream::iter([Ok(endpoint)]).chain(rest),
    ))
}

/// A legacy message: recorded, accepted, and a request answered on the stream.
async fn legacy_message(
    State(fake): State<Arc<Fake>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    fake.record(&uri, &headers, &body);
    let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let sender = fake.legacy.lock().unwrap().clone();
    if let (Some(tx), false) = (sender, message["id"].is_null()) {
        let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": {"legacy": true}});
        let _ = tx.send(event(&answer)).await;
    }
    StatusCode::ACCEPTED
}

/// A legacy stream whose endpoint event names another origin.
async fn foreign_endpoint() -> Response {
    let body = "event: endpoint\ndata: http://127.0.0.2:9/messages\n\n";
    event_stream(Body::from_stream(
        futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))])
            .chain(futures::stream::pending()),
    ))
}

/// A configuration with a remote server per fake mode, the legacy fakes, and a stdio
/// server that keeps crashing.
fn fakes_config(addr: SocketAddr) -> Value {
    let remote = |mode: &str| json!({"url": format!("http://{addr}/{mode}/mcp"), "headers": {"X-Upstream-Key": UPSTREAM_SECRET}});
    let mut servers = serde_json::Map::new();
    for mode in [
        "echo",
        "gated",
        "cut",
        "status500",
        "html",
        "redirect",
        "unauthorized",
        "gone",
        "stall",
        "half",
        "error",
        "event-error",
    ] {
        servers.insert(mode.into(), remote(mode));
    }
    servers.insert("refused".into(), json!({"url": "http://127.0.0.1:1/mcp"}));
    servers.insert(
        "legacy".into(),
        json!({"url": format!("http://{addr}/legacy/sse"), "transport": "sse",
               "headers": {"X-Upstream-Key": UPSTREAM_SECRET}}),
    );
    servers.insert(
        "elsewhere".into(),
        json!({"url": format!("http://{addr}/elsewhere/sse"), "transport": "sse"}),
    );
    servers.insert(
        "crasher".into(),
        json!({"command": "node", "args": ["-e", "process.exit(1)"]}),
    );
    config(
        Value::Object(servers),
        json!({
            "apiKeys": [{"name": "ops", "key": OPS, "servers": "*"}],
            "allowedOrigins": ["http://app.example"],
            "connectTimeoutMs": 1000,
            "restartBackoffMaxMs": 1000,
        }),
    )
}

async fn gateway_with_fakes() -> (TestGateway, Arc<Fake>) {
    let (addr, fake) = start_fake().await;
    (TestGateway::start(&fakes_config(addr)).await, fake)
}

fn call(id: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}}})
}

#[tokio::test]
async fn headers_cross_the_proxy_by_allow_list() {
    let (gateway, fake) = gateway_with_fakes().await;
    let http = Http::new(gateway.addr);
    let bearer = format!("Bearer {OPS}");
    let sent = [
        ("authorization", bearer.as_str()),
        ("x-api-key", OPS),
        ("cookie", "client=1"),
        ("origin", "http://app.example"),
        ("mcp-session-id", "s-1"),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("mcp-param-region", "eu"),
        ("last-event-id", "e-1"),
    ];
    for (path, extra) in [
        ("/servers/echo/mcp", None),
        ("/mcp", Some(("x-mcp-server", "echo"))),
    ] {
        let mut headers = sent.to_vec();
        headers.extend(extra);
        let response = http.post(path, &headers, &call("c-1")).await;
        assert_eq!(response.status(), 200, "{path}");
        let answer = response.headers().clone();
        let (_, upstream, body) = fake.last();
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            call("c-1"),
            "byte for byte"
        );
        assert_eq!(
            upstream["x-upstream-key"], UPSTREAM_SECRET,
            "the entry's own header"
        );
        for gone in [
            "authorization",
            "x-api-key",
            "cookie",
            "origin",
            "x-mcp-server",
        ] {
            assert!(
                !upstream.contains_key(gone),
                "{gone} reached the upstream via {path}"
            );
        }
        for (name, value) in &sent[4..] {
            assert_eq!(upstream[*name], *value, "{name} via {path}");
        }
        assert_eq!(answer["mcp-session-id"], "s-1");
        assert_eq!(answer["mcp-method"], "tools/call");
        assert_eq!(answer["mcp-param-region"], "eu");
        assert!(!answer.contains_key("set-cookie") && !answer.contains_key("www-authenticate"));
        let exposed = answer["access-control-expose-headers"].to_str().unwrap();
        assert!(
            exposed.contains("Mcp-Session-Id") && exposed.contains("mcp-param-region"),
            "{exposed}"
        );
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn answers_flow_event_by_event() {
    let (gateway, fake) = gateway_with_fakes().await;
    let http = Http::new(gateway.addr);
    let response = http
        .post("/servers/gated/mcp", &[("x-api-key", OPS)], &call("g-1"))
        .await;
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut events = Events::of(response);
    // The upstream sends its second event only once the first reached the client.
    let first = events.next().await.json();
    assert_eq!(first["method"], "notifications/progress");
    fake.release.notify_one();
    assert_eq!(events.next().await.json()["id"], "g-1");
    assert_eq!(events.next_or_end().await.unwrap_err(), End::Clean);

    // A stream the upstream cuts is cut for the client too, never ended cleanly.
    let response = http
        .post("/servers/cut/mcp", &[("x-api-key", OPS)], &call("x-1"))
        .await;
    let mut events = Events::of(response);
    assert_eq!(
        events.next().await.json()["method"],
        "notifications/progress"
    );
    fake.release.notify_one();
    assert_eq!(events.next_or_end().await.unwrap_err(), End::Broken);
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_502_503_504_with_the_request_id() {
    let (gateway, _fake) = gateway_with_fakes().await;
    let http = Http::new(gateway.addr);
    let key = [("x-api-key", OPS)];
    let cases = [
        ("status500", 502, "upstream_error", "HTTP 500"),
        ("html", 502, "upstream_error", "text/html"),
        (
            "redirect",
            502,
            "upstream_error",
            "redirects are not followed",
        ),
        ("unauthorized", 502, "upstream_error", "credentials"),
        ("refused", 503, "server_unavailable", "connect"),
        ("stall", 504, "timeout", "did not answer"),
    ];
    for (server, status, code, says) in cases {
        let id = format!("to-{server}");
        let response = http
            .post(&format!("/servers/{server}/mcp"), &key, &call(&id))
            .await;
        assert!(
            !response.headers().contains_key("www-authenticate"),
            "{server}"
        );
        let (got, _, body) = json_answer(response).await;
        assert_eq!(got, status, "{server}: {body}");
        assert_eq!(body["id"], id.as_str(), "{server}");
        assert_eq!(body["error"]["data"]["gateway"], code, "{server}");
        assert_eq!(body["error"]["data"]["server"], server);
        let expected_code = if code == "timeout" { -32001 } else { -32000 };
        assert_eq!(body["error"]["code"], expected_code, "{server}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{server}: {message}");
        for secret in [UPSTREAM_SECRET, "hidden-place"] {
            assert!(!body.to_string().contains(secret), "{server}: {body}");
        }
    }
    // Without an id (a GET), the error body says null.
    let (status, _, body) = json_answer(
        http.send(Method::GET, "/servers/refused/mcp", &key, None)
            .await,
    )
    .await;
    assert_eq!((status, &body["id"]), (503, &Value::Null));

    // The upstream's own refusal (an unknown session) reaches the client as it is, but
    // with mcpmux's credential for it masked.
    let (status, _, body) =
        json_answer(http.post("/servers/gone/mcp", &key, &call("g")).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], -32001);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("***") && !message.contains(UPSTREAM_SECRET),
        "{message}"
    );

    // A stdio server that is down: 503 at once.
    let hello = json!({"type": "hello", "token": OPS});
    let mut client = Client::greet(Client::raw(gateway.addr).await, hello)
        .await
        .expect("welcome");
    client
        .wait_for("crasher down", |f| {
            f["type"] == "status" && f["server"] == "crasher" && f["state"] == "down"
        })
        .await;
    let (status, _, body) = json_answer(
        http.post("/servers/crasher/mcp", &key, &call("down-1"))
            .await,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["id"], "down-1");
    assert_eq!(body["error"]["data"]["gateway"], "server_unavailable");
    client.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_remote_legacy_server_gets_messages_through_the_gateway() {
    let (gateway, fake) = gateway_with_fakes().await;
    let http = Http::new(gateway.addr);
    let key = [("x-api-key", OPS)];
    let stream = http
        .send(Method::GET, "/servers/legacy/sse", &key, None)
        .await;
    assert_eq!(stream.status(), 200);
    let mut events = Events::of(stream);
    let endpoint = events.next().await;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    assert!(
        endpoint.data.starts_with("messages?session=") && !endpoint.data.contains("sid"),
        "the upstream's own message url stays with the gateway: {}",
        endpoint.data
    );
    let messages = format!("/servers/legacy/{}", endpoint.data);
    let response = http.post(&messages, &key, &call("l-1")).await;
    assert_eq!(response.status(), 202);
    let (uri, upstream, body) = fake.last();
    assert_eq!(uri, "/legacy/messages?sid=42");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), call("l-1"));
    assert_eq!(upstream["x-upstream-key"], UPSTREAM_SECRET);
    assert!(!upstream.contains_key("x-api-key"));
    let answer = events.until(|m| m["id"] == "l-1").await.json();
    assert_eq!(answer["result"]["legacy"], true);

    // Its Streamable HTTP route says where to go instead.
    let (status, _, body) =
        json_answer(http.post("/servers/legacy/mcp", &key, &call("l-2")).await).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/servers/legacy/sse")
    );

    // An endpoint event that names another origin is not followed.
    let (status, _, body) = json_answer(
        http.send(Method::GET, "/servers/elsewhere/sse", &key, None)
            .await,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another origin")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn route_logs_never_show_a_key_at_trace_level() {
    let (addr, _fake) = start_fake().await;
    let binary = Binary::launch(
        &fakes_config(addr),
        Launch {
            log_filter: Some("trace"),
            ..Launch::default()
        },
    );
    let http = Http::new(binary.addr);
    let bearer = format!("Bearer {OPS}");
    let key = [("authorization", bearer.as_str())];
    let wrong = "wrong-key-0123456789abcdefgh";
    assert_eq!(
        http.post("/servers/echo/mcp", &key, &call("1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        http.post("/servers/status500/mcp", &key, &call("2"))
            .await
            .status(),
        502
    );
    assert_eq!(
        http.post("/servers/gone/mcp", &key, &call("3"))
            .await
            .status(),
        404
    );
    assert_eq!(
        http.post("/servers/unauthorized/mcp", &key, &call("4"))
            .await
            .status(),
        502
    );
    let wrong_key = [("x-api-key", wrong)];
    assert_eq!(
        http.post("/servers/echo/mcp", &wrong_key, &call("5"))
            .await
            .status(),
        401
    );
    let mut events = Events::of(
        http.send(Method::GET, "/servers/legacy/sse", &key, None)
            .await,
    );
    let messages = format!("/servers/legacy/{}", events.next().await.data);
    assert_eq!(http.post(&messages, &key, &call("6")).await.status(), 202);
    events.until(|m| m["id"] == "6").await;

    let log = binary.log();
    assert!(log.contains("MCP route request"), "a trace log was written");
    use base64::Engine as _;
    for secret in [OPS, UPSTREAM_SECRET, wrong] {
        for form in [
            secret.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(secret),
        ] {
            assert!(!log.contains(&form), "the log shows a secret (as {form:?})");
        }
    }
}

/// A gateway on the fakes read from a file in `dir`, counting in a registry of its own.
async fn gateway_from_file(dir: &TempDir, addr: SocketAddr) -> (TestGateway, Metrics) {
    let path = dir.0.join("mcpmux.json");
    std::fs::write(&path, fakes_config(addr).to_string()).expect("write config");
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let gateway = TestGateway::start_from_file_with(&path, options).await;
    (gateway, metrics)
}

#[tokio::test]
async fn answers_cut_by_a_change_end_with_the_error_for_their_request() {
    let (addr, _fake) = start_fake().await;
    let dir = TempDir::new();
    let (gateway, metrics) = gateway_from_file(&dir, addr).await;
    let http = Http::new(gateway.addr);
    let key = [("x-api-key", OPS)];
    let gated = http.post("/servers/gated/mcp", &key, &call("g-1")).await;
    let mut gated = Events::of(gated);
    assert_eq!(
        gated.next().await.json()["method"],
        "notifications/progress"
    );
    let half = http.post("/servers/half/mcp", &key, &call("h-1")).await;
    assert_eq!(half.status(), 200);
    let mut half = half.bytes_stream();
    let first = half.next().await.expect("a chunk").expect("bytes");
    assert!(first.starts_with(b"{"), "{first:?}");

    // gated removed, half's entry changed: both answers are cut.
    let mut changed = fakes_config(addr);
    let servers = changed["mcpServers"].as_object_mut().expect("servers");
    servers.remove("gated");
    servers["half"]["headers"]["X-Changed"] = json!("1");
    std::fs::write(dir.0.join("mcpmux.json"), changed.to_string()).expect("write config");
    gateway.gateway().reload().await;

    let last = gated.next().await.json();
    assert_eq!(last["id"], "g-1", "{last}");
    assert_eq!(last["error"]["data"]["gateway"], "unknown_server", "{last}");
    assert_eq!(last["error"]["data"]["server"], "gated", "{last}");
    assert_eq!(gated.next_or_end().await.unwrap_err(), End::Clean);
    // A JSON answer cut half-way never looks whole.
    let rest = half.next().await.expect("the end of the body");
    assert!(rest.is_err(), "{rest:?}");
    until(&metrics, "the cut request counted", |text| {
        sample(
            text,
            "mcpmux_requests_total",
            &[
                ("server", "half"),
                ("method", "tools/call"),
                ("outcome", "session_lost"),
            ],
        ) == Some(1.0)
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn json_rpc_errors_of_the_server_count_as_error() {
    let (addr, _fake) = start_fake().await;
    let dir = TempDir::new();
    let (gateway, metrics) = gateway_from_file(&dir, addr).await;
    let http = Http::new(gateway.addr);
    let key = [("x-api-key", OPS)];
    let (status, _, body) =
        json_answer(http.post("/servers/error/mcp", &key, &call("e-1")).await).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (200, &json!(-32602)),
        "{body}"
    );
    let mut events = Events::of(
        http.post("/servers/event-error/mcp", &key, &call("e-2"))
            .await,
    );
    events.until(|m| m["id"] == "e-2").await;
    let (status, _, _) =
        json_answer(http.post("/servers/echo/mcp", &key, &call("e-3")).await).await;
    assert_eq!(status, 200);
    let count = |text: &str, server: &str, outcome: &str| {
        sample(
            text,
            "mcpmux_requests_total",
            &[
                ("server", server),
                ("method", "tools/call"),
                ("outcome", outcome),
            ],
        )
    };
    let text = until(&metrics, "three requests counted", |text| {
        count(text, "echo", "ok").is_some()
            && count(text, "error", "error").is_some()
            && count(text, "event-error", "error").is_some()
    })
    .await;
    assert_eq!(count(&text, "error", "ok"), None);
    assert_eq!(count(&text, "event-error", "ok"), None);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_path_name_that_is_not_utf8_is_400_not_the_header_server() {
    let (gateway, _fake) = gateway_with_fakes().await;
    let http = Http::new(gateway.addr);
    let headers = [("x-api-key", OPS), ("x-mcp-server", "echo")];
    let (status, _, body) =
        json_answer(http.post("/servers/%FF/mcp", &headers, &call("p-1")).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["data"]["gateway"], "bad_frame", "{body}");
    let (status, _, body) = json_answer(http.post("/mcp", &headers, &call("p-2")).await).await;
    assert_eq!((status, &body["id"]), (200, &json!("p-2")), "{body}");
    gateway.shutdown().await;
}
