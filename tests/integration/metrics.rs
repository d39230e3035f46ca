//! Metrics: the values a gateway's registry shows match the traffic each test sent
//! through it (real server-everything behind real mcp-proxy, real WebSockets), and no
//! label ever carries what a client made up (server names, methods), a session id or a
//! key.

use std::time::Duration;

use mcpmux::Options;
use mcpmux::metrics::Metrics;
use serde_json::{Value, json};

use crate::harness::{Client, Ended, FRAME_WAIT, TestGateway, config, everything};
use crate::http_client::{Events, Http, json_answer};
use crate::legacy_sse::LegacyProxy;

/// The value of the sample `name{labels}` in `text` (all its labels given, any order).
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let mut found: Vec<(&str, &str)> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            let mut wanted = labels.to_vec();
            found.sort_unstable();
            wanted.sort_unstable();
            (found == wanted).then(|| value.parse().ok())?
        })
}

/// A gateway with a registry of its own, so that other tests' traffic cannot count.
async fn gateway(servers: Value, settings: Value) -> (TestGateway, Metrics) {
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let gateway = TestGateway::start_with(&config(servers, settings), options).await;
    (gateway, metrics)
}

/// Waits until the rendered metrics satisfy `done`.
pub(crate) async fn until(metrics: &Metrics, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let text = metrics.render();
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {FRAME_WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn requests_messages_and_sessions_match_the_traffic_sent() {
    let (gateway, metrics) = gateway(json!({"everything": everything()}), json!({})).await;
    let mut client = Client::connect(gateway.addr).await;
    let session = client.session_id();
    client.ready("everything").await;

    let init = request(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "metrics-test", "version": "1"}}),
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let mut sent = vec![init.clone(), initialized.clone()];
    client.rpc("everything", init).await;
    client.response("everything", &json!(1)).await;
    client.rpc("everything", initialized).await;

    let echo = |id, text: &str| {
        request(
            id,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": text}}),
        )
    };
    let mut calls = vec![
        request(2, "tools/list", json!({})),
        echo(3, "one"),
        echo(4, "two"),
        echo(5, "three"),
        request(
            6,
            "tools/call",
            json!({"name": "no-such-tool", "arguments": {}}),
        ),
        // Not a method of the specification: the server refuses it with a JSON-RPC
        // error, and the metrics call it `other`.
        request(7, "made/up-method", json!({})),
        request(8, "ping", json!({})),
    ];
    let mut answers = Vec::new();
    for message in calls.drain(..) {
        let id = message["id"].clone();
        sent.push(message.clone());
        client.rpc("everything", message).await;
        answers.push(client.response("everything", &id).await);
    }
    // A server that does not exist is answered, and never becomes a label.
    client
        .rpc("no-such-server", request(9, "tools/list", json!({})))
        .await;
    client.response("no-such-server", &json!(9)).await;

    let text = metrics.render();
    let requests = |method, outcome| {
        let labels = [
            ("server", "everything"),
            ("method", method),
            ("outcome", outcome),
        ];
        sample(&text, "mcpmux_requests_total", &labels).unwrap_or(0.0)
    };
    assert_eq!(requests("initialize", "ok"), 1.0, "{text}");
    assert_eq!(requests("tools/list", "ok"), 1.0);
    assert_eq!(requests("ping", "ok"), 1.0);
    assert_eq!(requests("other", "error"), 1.0, "{:?}", answers[5]);
    // An unknown tool is an error result or a JSON-RPC error, depending on the SDK.
    let unknown_tool_outcome = if answers[4]["message"].get("error").is_some() {
        "error"
    } else {
        "ok"
    };
    let calls_ok = if unknown_tool_outcome == "ok" {
        4.0
    } else {
        3.0
    };
    assert_eq!(requests("tools/call", "ok"), calls_ok, "{text}");
    assert_eq!(
        requests("tools/call", "ok") + requests("tools/call", "error"),
        4.0
    );
    let call = [("server", "everything"), ("method", "tools/call")];
    let latency = |name| sample(&text, name, &call).unwrap_or(0.0);
    assert_eq!(latency("mcpmux_request_duration_seconds_count"), 4.0);
    assert!(latency("mcpmux_request_duration_seconds_sum") > 0.0);
    let all = [
        ("server", "everything"),
        ("method", "tools/call"),
        ("le", "+Inf"),
    ];
    let bucket = sample(&text, "mcpmux_request_duration_seconds_bucket", &all);
    assert_eq!(bucket, Some(4.0));

    let up = [("server", "everything"), ("direction", "to_server")];
    let down = [("server", "everything"), ("direction", "to_client")];
    let sent_bytes: usize = sent.iter().map(|m| m.to_string().len()).sum();
    assert_eq!(sample(&text, "mcpmux_messages_total", &up), Some(9.0));
    let bytes = sample(&text, "mcpmux_message_bytes_total", &up);
    assert_eq!(bytes, Some(sent_bytes as f64));
    // Every response, and whatever the server sent besides (logs, list changes).
    let received = sample(&text, "mcpmux_messages_total", &down).unwrap_or(0.0);
    assert!(received >= 8.0, "{text}");
    let answer_bytes: usize = answers.iter().map(|a| a["message"].to_string().len()).sum();
    let received_bytes = sample(&text, "mcpmux_message_bytes_total", &down).unwrap_or(0.0);
    assert!(received_bytes >= answer_bytes as f64, "{text}");

    let sessions = [("server", "everything")];
    assert_eq!(
        sample(&text, "mcpmux_upstream_sessions", &sessions),
        Some(1.0)
    );
    let ready = [("server", "everything"), ("state", "ready")];
    assert_eq!(sample(&text, "mcpmux_server_state", &ready), Some(1.0));
    let starting = [("server", "everything"), ("state", "starting")];
    assert_eq!(sample(&text, "mcpmux_server_state", &starting), Some(0.0));
    let restarts = sample(&text, "mcpmux_server_restarts_total", &sessions);
    assert_eq!(restarts, Some(0.0));
    assert_eq!(
        sample(&text, "mcpmux_websocket_connections", &[]),
        Some(1.0)
    );

    for secret in [
        "no-such-server",
        "made/up-method",
        "no-such-tool",
        session.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }

    // Closing the upstream session and then the socket counts both down.
    client
        .send(json!({"type": "close", "server": "everything"}))
        .await;
    client.session_state("closed").await;
    let text = metrics.render();
    assert_eq!(
        sample(&text, "mcpmux_upstream_sessions", &sessions),
        Some(0.0)
    );
    client.close().await;
    let text = until(&metrics, "the socket counted closed", |text| {
        sample(text, "mcpmux_websocket_connections", &[]) == Some(0.0)
    })
    .await;
    let closes = sample(
        &text,
        "mcpmux_websocket_closes_total",
        &[("reason", "client")],
    );
    assert_eq!(closes, Some(1.0), "{text}");
    gateway.shutdown().await;
}

/// A server that is configured but never reached (nothing listens on port 9).
fn unreachable() -> Value {
    json!({"remote": {"url": "http://127.0.0.1:9/mcp"}})
}

#[tokio::test]
async fn resumes_granted_and_refused_and_dropped_sockets_are_counted() {
    let (gateway, metrics) = gateway(unreachable(), json!({})).await;
    let first = Client::connect(gateway.addr).await;
    let session = first.session_id();
    // Gone without a close frame: the session is held for resume.
    drop(first);
    until(&metrics, "the dropped socket", |text| {
        sample(
            text,
            "mcpmux_websocket_closes_total",
            &[("reason", "dropped")],
        ) == Some(1.0)
    })
    .await;
    let resumed = Client::resume(gateway.addr, &session, 0).await;
    assert_eq!(resumed.welcome["resumed"], true);
    let unknown = "0".repeat(32);
    let fresh = Client::resume(gateway.addr, &unknown, 0).await;
    assert_eq!(fresh.welcome["resumed"], false);

    let text = metrics.render();
    let resumes = |outcome| sample(&text, "mcpmux_resumes_total", &[("outcome", outcome)]);
    assert_eq!(resumes("granted"), Some(1.0), "{text}");
    assert_eq!(resumes("refused"), Some(1.0));
    assert_eq!(
        sample(&text, "mcpmux_websocket_connections", &[]),
        Some(2.0)
    );
    assert!(
        !text.contains(&session) && !text.contains(&unknown),
        "{text}"
    );
    resumed.close().await;
    fresh.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_counts_as_a_heartbeat_close() {
    let (gateway, metrics) = gateway(unreachable(), json!({"heartbeatMs": 100})).await;
    // A client that reads nothing answers no ping.
    let mut silent = Client::connect(gateway.addr).await;
    until(&metrics, "a heartbeat close", |text| {
        sample(
            text,
            "mcpmux_websocket_closes_total",
            &[("reason", "heartbeat")],
        ) == Some(1.0)
    })
    .await;
    match silent.closed().await {
        Ended::Closed(code, _) => assert_eq!(code, 4001),
        other => panic!("{other:?}"),
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_counts_as_a_slow_consumer() {
    let (gateway, metrics) = gateway(
        json!({"everything": everything()}),
        json!({"writeTimeoutMs": 1000}),
    )
    .await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    // About 12 MB of answers that the client never reads.
    let big = "x".repeat(2 << 20);
    for id in 0..6 {
        let params = json!({"name": "echo", "arguments": {"message": big}});
        client
            .rpc("everything", request(id, "tools/call", params))
            .await;
    }
    let text = until(&metrics, "a slow-consumer close", |text| {
        let slow = [("reason", "slow_consumer")];
        sample(text, "mcpmux_websocket_closes_total", &slow) == Some(1.0)
    })
    .await;
    let dropped = sample(
        &text,
        "mcpmux_websocket_closes_total",
        &[("reason", "dropped")],
    );
    assert_eq!(dropped, None, "counted once, as slow:\n{text}");
    drop(client);
    gateway.shutdown().await;
}

#[tokio::test]
async fn rate_limited_frames_are_counted_by_key_name_never_by_key() {
    let key = "metrics-test-key-0123456789";
    let settings = json!({"apiKeys": [{
        "name": "metered", "key": key, "servers": "*",
        "rateLimit": {"perSecond": 0.001, "burst": 1}
    }]});
    let (gateway, metrics) = gateway(unreachable(), settings).await;
    let hello =
        json!({"type": "hello", "client": {"name": "metrics-test", "version": "1"}, "token": key});
    let mut client = Client::greet(Client::raw(gateway.addr).await, hello)
        .await
        .expect("welcomed");
    // The burst lets the first through (to a server that cannot be reached); the
    // next are refused, whatever server they name.
    client.rpc("remote", request(1, "ping", json!({}))).await;
    client.response("remote", &json!(1)).await;
    for id in 2..4 {
        client.rpc("remote", request(id, "ping", json!({}))).await;
        let refused = client.response("remote", &json!(id)).await;
        assert_eq!(
            refused["message"]["error"]["data"]["gateway"], "rate_limited",
            "{refused}"
        );
    }
    client
        .rpc("no-such-server", request(4, "ping", json!({})))
        .await;
    client.response("no-such-server", &json!(4)).await;

    let text = metrics.render();
    let limited = sample(&text, "mcpmux_rate_limited_total", &[("key", "metered")]);
    assert_eq!(limited, Some(3.0), "{text}");
    let ping = |outcome| {
        let labels = [
            ("server", "remote"),
            ("method", "ping"),
            ("outcome", outcome),
        ];
        sample(&text, "mcpmux_requests_total", &labels)
    };
    assert_eq!(ping("rate_limited"), Some(2.0), "{text}");
    assert_eq!(ping("server_unavailable"), Some(1.0), "{text}");
    assert!(
        !text.contains(key) && !text.contains("no-such-server"),
        "{text}"
    );
    client.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn answers_over_the_legacy_transport_are_counted_by_outcome() {
    let proxy = LegacyProxy::start().await;
    let url = format!("http://127.0.0.1:{}/sse", proxy.port);
    let servers = json!({"legacy": {"url": url, "transport": "sse"}});
    let (gateway, metrics) = gateway(servers, json!({})).await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("legacy").await;
    client
        .call("legacy", json!(2), "tools/list", json!({}))
        .await;
    let refused = client
        .call("legacy", json!(3), "made/up-method", json!({}))
        .await;
    assert!(refused["message"]["error"].is_object(), "{refused}");

    let text = metrics.render();
    let requests = |method, outcome| {
        let labels = [
            ("server", "legacy"),
            ("method", method),
            ("outcome", outcome),
        ];
        sample(&text, "mcpmux_requests_total", &labels)
    };
    assert_eq!(requests("initialize", "ok"), Some(1.0), "{text}");
    assert_eq!(requests("tools/list", "ok"), Some(1.0));
    assert_eq!(requests("other", "error"), Some(1.0));
    let sessions = sample(&text, "mcpmux_upstream_sessions", &[("server", "legacy")]);
    assert_eq!(sessions, Some(1.0));
    let up = [("server", "legacy"), ("direction", "to_server")];
    assert_eq!(sample(&text, "mcpmux_messages_total", &up), Some(4.0));
    client.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn http_route_requests_are_counted_under_configured_names_only() {
    let (gateway, metrics) = gateway(json!({"everything": everything()}), json!({})).await;
    let mut client = Client::connect(gateway.addr).await;
    client.ready("everything").await;
    let http = Http::new(gateway.addr);
    let init = request(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "metrics-test", "version": "1"}}),
    );
    let response = http.post("/servers/everything/mcp", &[], &init).await;
    assert_eq!(response.status(), 200);
    let answer = Events::of(response).until(|m| m["id"] == 1).await;
    assert!(answer.json()["result"].is_object(), "{answer:?}");
    for name in ["no-such-server", "another-made-up-one"] {
        let response = http.post(&format!("/servers/{name}/mcp"), &[], &init).await;
        let (status, _, _) = json_answer(response).await;
        assert_eq!(status, 404);
    }

    let text = metrics.render();
    let routed = |server, outcome| {
        sample(
            &text,
            "mcpmux_http_requests_total",
            &[("server", server), ("outcome", outcome)],
        )
    };
    assert_eq!(routed("everything", "ok"), Some(1.0), "{text}");
    assert_eq!(routed("", "unknown_server"), Some(2.0), "{text}");
    assert!(
        !text.contains("made-up") && !text.contains("no-such"),
        "{text}"
    );
    client.close().await;
    gateway.shutdown().await;
}
