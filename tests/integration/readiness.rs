//! `/readyz` on the main listener, against the real server-everything behind the real
//! mcp-proxy: it turns 200 once the first starts have ended, set by the starts and not
//! by a probe (a server added later and still starting does not take it back), and it
//! answers 503 while the gateway drains on shutdown, the listener still up while a slow
//! call finishes, new WebSockets and MCP-route requests refused with 503.

use reqwest::Method;
use serde_json::{Value, json};

use crate::admin::never_ready;
use crate::binary::TempDir;
use crate::harness::{Client, TestGateway, config, everything};
use crate::http_client::{Events, Http, json_answer};
use crate::http_routes::{long_operation, open_session};

async fn probe(http: &Http, path: &str) -> (u16, Value) {
    let (status, _, body) = json_answer(http.send(Method::GET, path, &[], None).await).await;
    (status, body)
}

#[tokio::test]
async fn readyz_is_latched_by_the_first_starts_not_by_a_probe() {
    let dir = TempDir::new();
    let path = dir.0.join("mcpmux.json");
    let gateway_section = json!({"watchConfig": false, "startTimeoutMs": 60000});
    let write = |servers: Value| {
        let text = config(servers, gateway_section.clone()).to_string();
        std::fs::write(&path, text).expect("write config");
    };
    write(json!({"everything": everything()}));
    let gateway = TestGateway::start_from_file(&path).await;
    // No probe yet: the first start itself latches readiness.
    gateway.gateway().first_starts_ended().await;
    write(json!({"everything": everything(), "late": never_ready()}));
    gateway.gateway().reload().await;
    let late = gateway.gateway().servers()["late"].clone();
    assert_eq!(
        late.status().starts,
        0,
        "the added server is still starting"
    );

    let http = Http::new(gateway.addr);
    let (status, body) = probe(&http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    let late_state = body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "late")
        .map(|s| s["state"].clone());
    assert_eq!(late_state, Some(json!("starting")), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn readyz_answers_503_while_a_shutdown_drains_a_slow_call() {
    let gateway = TestGateway::start(&config(
        json!({"everything": everything()}),
        json!({"shutdownGraceMs": 20000}),
    ))
    .await;
    let http = Http::new(gateway.addr);
    let path = "/servers/everything/mcp";
    let session = open_session(&http, path, &[]).await;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let call = http
        .post(path, &headers, &long_operation("slow", 3, 3))
        .await;
    assert_eq!(call.status(), 200);
    let mut call = Events::of(call);
    let first = call.next().await.json();
    assert_eq!(first["method"], "notifications/progress", "{first}");
    let (status, _) = probe(&http, "/readyz").await;
    assert_eq!(status, 200);

    let addr = gateway.addr;
    let shutdown = tokio::spawn(gateway.shutdown());
    // The spawned shutdown starts draining before the gateway reads this probe.
    let (status, body) = probe(&http, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (&body["ready"], &body["draining"]),
        (&json!(false), &json!(true))
    );
    let healthz = http.send(Method::GET, "/healthz", &[], None).await;
    assert_eq!(healthz.status(), 200);
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let (status, _, body) = json_answer(http.post(path, &headers, &list).await).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["id"], 9);
    assert_eq!(body["error"]["data"]["gateway"], "server_unavailable");
    assert_eq!(Client::offer(addr, "mcpmux.v1").await, Err(503));

    // The call in flight still finishes, then the gateway stops.
    let result = call.until(|m| m["id"] == "slow").await.json();
    assert!(result["result"].is_object(), "{result}");
    shutdown.await.expect("shutdown completes");
}
