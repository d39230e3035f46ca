//! Carrying MCP traffic to real servers: tagging, id independence, concurrency,
//! progress, logs, and isolation between sockets.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::harness::{Client, is_response, shared_gateway, tool_text};

#[tokio::test]
async fn welcome_lists_every_server_and_ping_is_answered() {
    let mut client = Client::connect(shared_gateway()).await;
    let welcome = &client.welcome;
    assert_eq!(welcome["protocol"], "mcpmux.v1");
    // `<instance>.<32 hex digits>`; an instance without a name draws 8 characters.
    let session = welcome["session"].as_str().expect("session");
    let (instance, random) = session.split_once('.').expect("<instance>.<hex>");
    assert!(
        instance.len() == 8
            && instance
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{session}"
    );
    assert!(
        random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "{session}"
    );
    let names: Vec<&str> = welcome["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["everything", "memory"]);
    client.send(json!({"type": "ping"})).await;
    let pong = client.wait_for("pong", |f| f["type"] == "pong").await;
    assert_eq!(pong, json!({"type": "pong"}), "pong carries no seq");
}

#[tokio::test]
async fn the_same_id_sent_to_two_servers_gets_each_servers_own_answer() {
    let mut client = Client::connect(shared_gateway()).await;
    client.initialize("everything").await;
    client.initialize("memory").await;
    let id = json!(7);
    for server in ["everything", "memory"] {
        client
            .rpc(
                server,
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
            )
            .await;
    }
    let everything = client.response("everything", &id).await;
    let memory = client.response("memory", &id).await;
    let tool_names = |frame: &Value| -> HashSet<String> {
        frame["message"]["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(tool_names(&everything).contains("echo"), "{everything}");
    assert!(tool_names(&memory).contains("create_entities"), "{memory}");
    assert!(!tool_names(&memory).contains("echo"));
}

#[tokio::test]
async fn five_hundred_concurrent_calls_come_back_correctly_tagged() {
    let mut client = Client::connect(shared_gateway()).await;
    client.initialize("everything").await;
    client.initialize("memory").await;
    const CALLS: usize = 500;
    for i in 0..CALLS {
        if i % 2 == 0 {
            let params = json!({"name": "echo", "arguments": {"message": format!("m{i}")}});
            client
                .rpc("everything", json!({"jsonrpc": "2.0", "id": format!("e{i}"), "method": "tools/call", "params": params}))
                .await;
        } else {
            let params = json!({"name": "search_nodes", "arguments": {"query": format!("q{i}")}});
            client
                .rpc(
                    "memory",
                    json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}),
                )
                .await;
        }
    }
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    while seen.len() < CALLS {
        let frame = client.next().await;
        if frame["type"] != "rpc" || frame["message"].get("method").is_some() {
            continue;
        }
        let seq = frame["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq increases");
        last_seq = seq;
        let message = &frame["message"];
        assert!(message.get("error").is_none(), "{frame}");
        match &message["id"] {
            Value::String(id) => {
                assert_eq!(frame["server"], "everything", "{frame}");
                let i = id.trim_start_matches('e');
                assert_eq!(tool_text(&frame), format!("Echo: m{i}"));
                assert!(seen.insert(id.clone()), "one answer per id");
            }
            Value::Number(n) => {
                assert_eq!(frame["server"], "memory", "{frame}");
                assert!(n.as_u64().is_some_and(|n| n % 2 == 1));
                assert!(seen.insert(n.to_string()), "one answer per id");
            }
            other => panic!("unexpected id {other}"),
        }
    }
}

#[tokio::test]
async fn progress_arrives_before_its_result() {
    let mut client = Client::connect(shared_gateway()).await;
    client.initialize("everything").await;
    let id = json!("long-1");
    client
        .start_long_operation("everything", &id, 1, 4, "tok-1")
        .await;
    let result = client.response("everything", &id).await;
    assert!(
        tool_text(&result).contains("Long running operation completed"),
        "{result}"
    );
    let progress = client.take_buffered(|f| {
        f["message"]["method"] == "notifications/progress"
            && f["message"]["params"]["progressToken"] == "tok-1"
    });
    // mcp-proxy usually drops the last progress notification before a result.
    assert!(
        progress.len() >= 2,
        "progress before the result: {progress:?}"
    );
    for frame in &progress {
        assert_eq!(frame["server"], "everything");
        assert!(frame["seq"].as_u64() < result["seq"].as_u64());
    }
}

#[tokio::test]
async fn log_notifications_from_the_get_stream_arrive_tagged() {
    let mut client = Client::connect(shared_gateway()).await;
    client.initialize("everything").await;
    let params = json!({"name": "toggle-simulated-logging", "arguments": {}});
    let reply = client
        .call("everything", json!(1), "tools/call", params.clone())
        .await;
    assert!(tool_text(&reply).contains("logging"), "{reply}");
    let log = client
        .wait_for("a log notification", |f| {
            f["message"]["method"] == "notifications/message"
        })
        .await;
    assert_eq!(log["server"], "everything");
    assert!(log["message"]["params"]["level"].is_string(), "{log}");
    client
        .call("everything", json!(2), "tools/call", params)
        .await;
}

#[tokio::test]
async fn two_sockets_see_neither_each_others_answers_nor_subscriptions() {
    let addr = shared_gateway();
    let mut alice = Client::connect(addr).await;
    let mut bob = Client::connect(addr).await;
    alice.initialize("everything").await;
    bob.initialize("everything").await;
    let uri = "demo://resource/dynamic/text/1";
    let subscribed = alice
        .call(
            "everything",
            json!(10),
            "resources/subscribe",
            json!({"uri": uri}),
        )
        .await;
    assert!(subscribed["message"].get("error").is_none(), "{subscribed}");
    let toggle = json!({"name": "toggle-subscriber-updates", "arguments": {}});
    alice
        .call("everything", json!(11), "tools/call", toggle.clone())
        .await;
    let update = alice
        .wait_for("a resource update", |f| {
            f["message"]["method"] == "notifications/resources/updated"
        })
        .await;
    assert_eq!(update["message"]["params"]["uri"], uri);
    alice
        .call("everything", json!(12), "tools/call", toggle)
        .await;

    // Bob asks something so that everything Alice caused has had time to reach him.
    bob.call("everything", json!(99), "ping", json!({})).await;
    let leaked = bob.take_buffered(|f| {
        f["message"]["method"] == "notifications/resources/updated"
            || ["10", "11", "12"].iter().any(|id| {
                let id: Value = serde_json::from_str(id).unwrap_or(json!(id));
                is_response(f, "everything", &id)
            })
    });
    assert!(leaked.is_empty(), "bob saw alice's traffic: {leaked:?}");
}
