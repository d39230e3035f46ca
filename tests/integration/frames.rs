//! Every malformed frame gets its documented answer, and the connection (and the
//! gateway) keeps serving.

use std::time::Duration;

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Client, Ended, TestGateway, config, shared_gateway};

/// (frame text, expected error code, expected ref)
fn bad_frames() -> Vec<(String, &'static str, Value)> {
    vec![
        ("this is not json".into(), "bad_frame", Value::Null),
        ("{\"type\":".into(), "bad_frame", Value::Null),
        ("[1,2,3]".into(), "bad_frame", Value::Null),
        ("\"hello\"".into(), "bad_frame", Value::Null),
        ("{}".into(), "bad_frame", Value::Null),
        (r#"{"type":5,"ref":"a"}"#.into(), "bad_frame", json!("a")),
        (r#"{"type":"launch","ref":{"n":1}}"#.into(), "unknown_type", json!({"n":1})),
        (r#"{"type":"rpc","ref":2,"message":{}}"#.into(), "bad_frame", json!(2)),
        (r#"{"type":"rpc","server":["x"],"message":{}}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"rpc","server":"everything","ref":3}"#.into(), "bad_frame", json!(3)),
        (r#"{"type":"rpc","server":"everything","message":"ping"}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"rpc","server":"everything","message":{"jsonrpc":"2.0"}}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"rpc","server":"everything","message":{"jsonrpc":"2.0","id":1,"method":7}}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"rpc","server":"everything","ref":"b","message":[{"jsonrpc":"2.0","id":1,"method":"ping"}]}"#.into(), "batch", json!("b")),
        (r#"{"type":"rpc","server":"nope","ref":"n","message":{"jsonrpc":"2.0","method":"notifications/initialized"}}"#.into(), "unknown_server", json!("n")),
        (r#"{"type":"close","server":"nope"}"#.into(), "unknown_server", Value::Null),
        (r#"{"type":"close"}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"hello","type":"ping"}"#.into(), "bad_frame", Value::Null),
    ]
}

#[tokio::test]
async fn every_malformed_frame_gets_its_error_and_the_socket_stays_open() {
    let mut client = Client::connect(shared_gateway()).await;
    let mut last_seq = 0;
    for (text, code, reference) in bad_frames() {
        client.send_text(&text).await;
        let error = client
            .wait_for("an error frame", |f| f["type"] == "error")
            .await;
        assert_eq!(error["code"], code, "frame {text} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(
            error.get("ref").cloned().unwrap_or(Value::Null),
            reference,
            "{text}"
        );
        let seq = error["seq"].as_u64().expect("error frames carry seq");
        assert!(seq > last_seq);
        last_seq = seq;
    }
    client.send_binary(vec![0, 159, 146, 150]).await;
    let error = client
        .wait_for("an error frame", |f| f["type"] == "error")
        .await;
    assert_eq!(error["code"], "bad_frame");
    client.send(json!({"type": "ping"})).await;
    client.wait_for("pong", |f| f["type"] == "pong").await;
}

#[tokio::test]
async fn a_request_to_an_unknown_server_settles_with_a_jsonrpc_error() {
    let mut client = Client::connect(shared_gateway()).await;
    let id = json!({"any": ["json", 1]});
    let reply = client
        .call("nope", id.clone(), "tools/list", json!({}))
        .await;
    assert_eq!(reply["server"], "nope");
    assert_eq!(reply["message"]["id"], id);
    assert_eq!(
        reply["message"]["error"]["data"]["gateway"],
        "unknown_server"
    );
    assert_eq!(reply["message"]["error"]["code"], -32000);
}

#[tokio::test]
async fn close_answers_with_a_closed_session_frame() {
    let mut client = Client::connect(shared_gateway()).await;
    client
        .send(json!({"type": "close", "server": "memory"}))
        .await;
    let frame = client
        .wait_for("session frame", |f| f["type"] == "session")
        .await;
    assert_eq!(frame["server"], "memory");
    assert_eq!(frame["state"], "closed");
}

#[tokio::test]
async fn the_first_frame_must_be_hello() {
    let mut ws = Client::raw(shared_gateway()).await;
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    assert_close(ws, 4500).await;
    let mut ws = Client::raw(shared_gateway()).await;
    ws.send(Message::text("nonsense")).await.expect("send");
    assert_close(ws, 4500).await;
}

#[tokio::test]
async fn a_second_hello_is_a_protocol_violation() {
    let mut client = Client::connect(shared_gateway()).await;
    client.send(json!({"type": "hello"})).await;
    match client.closed().await {
        Ended::Closed(code, reason) => {
            assert_eq!(code, 4500);
            assert!(reason.contains("hello"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let mut client = Client::connect(shared_gateway()).await;
    // Far larger than socket buffers: the gateway refuses it while it is still arriving.
    let huge = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(4 * 1024 * 1024 + 10)
    );
    client.try_send_text(&huge).await;
    match client.closed().await {
        Ended::Closed(code, _) => assert_eq!(code, 1009),
        other => panic!("{other:?}"),
    }
    // The gateway still serves others.
    let mut other = Client::connect(shared_gateway()).await;
    other.send(json!({"type": "ping"})).await;
    other.wait_for("pong", |f| f["type"] == "pong").await;
}

#[tokio::test]
async fn subprotocol_offers_are_checked() {
    let addr = shared_gateway();
    assert_eq!(
        Client::offer(addr, "mcpmux.v1").await,
        Ok(Some("mcpmux.v1".into()))
    );
    assert_eq!(
        Client::offer(addr, "chat, mcpmux.v1").await,
        Ok(Some("mcpmux.v1".into()))
    );
    assert_eq!(Client::offer(addr, "chat").await, Err(400));
}

#[tokio::test]
async fn sockets_beyond_max_sessions_are_refused_with_503() {
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"maxSessions": 1}),
    ))
    .await;
    let first = Client::connect(gateway.addr).await;
    assert_eq!(Client::offer(gateway.addr, "mcpmux.v1").await, Err(503));
    drop(first);
    gateway.shutdown().await;
}

#[tokio::test]
async fn no_hello_in_time_closes_with_4508() {
    // A gateway with only a remote server (nothing to start) and a short hello timeout.
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"helloTimeoutMs": 200}),
    ))
    .await;
    let ws = Client::raw(gateway.addr).await;
    assert_close(ws, 4508).await;
    gateway.shutdown().await;
}

async fn assert_close(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    code: u16,
) {
    use futures::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("closes in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), code, "{}", frame.reason);
                return;
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without code {code}")
            }
            Some(Ok(_)) => {}
        }
    }
}
