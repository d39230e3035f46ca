//! Supervision and process lifetime: a killed stdio server is noticed and recovered;
//! SIGTERM closes clients with 1001 and leaves no process; SIGKILL leaves none either.

use std::time::{Duration, Instant};

use mcpmux::supervisor::process::group_members;
use serde_json::json;

use crate::binary::{Binary, kill};
use crate::harness::{Client, Ended, TestGateway, config, everything, memory};

/// SIGKILLs the MCP server under `server`'s mcp-proxy (every process of its group but
/// the leader), leaving mcp-proxy itself running, as happens when a server crashes.
/// Returns the leader's pid.
fn kill_stdio_server(gateway: &TestGateway, server: &str) -> u32 {
    let pid = gateway.gateway().servers()[server]
        .status()
        .pid
        .expect("pid");
    let followers: Vec<u32> = group_members(pid)
        .into_iter()
        .filter(|p| *p != pid)
        .collect();
    assert!(
        !followers.is_empty(),
        "the stdio server runs in mcp-proxy's group"
    );
    for follower in followers {
        kill(follower, libc::SIGKILL);
    }
    pid
}

#[tokio::test]
async fn killing_the_stdio_server_fails_in_flight_calls_and_recovers() {
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    let id = json!("slow");
    client
        .start_long_operation("everything", &id, 60, 60, "slow")
        .await;
    client
        .wait_for("first progress", |f| {
            f["message"]["method"] == "notifications/progress"
        })
        .await;

    let pid = kill_stdio_server(&gateway, "everything");
    let killed_at = Instant::now();
    let reply = client.response("everything", &id).await;
    assert!(reply["message"]["error"].is_object(), "{reply}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "error within seconds"
    );

    let restarting = client.status("restarting").await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "noticed within 5 s"
    );
    let lost = client.session_state("lost").await;
    let ready = client.status("ready").await;
    assert!(restarting["seq"].as_u64() < ready["seq"].as_u64());
    assert_eq!(lost["server"], "everything");
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "recovered in {:?}",
        killed_at.elapsed()
    );

    client.initialize("everything").await;
    let params = json!({"name": "echo", "arguments": {"message": "again"}});
    let echo = client
        .call("everything", json!("after"), "tools/call", params)
        .await;
    assert_eq!(crate::harness::tool_text(&echo), "Echo: again");
    let status = gateway.gateway().servers()["everything"].status();
    assert_eq!(status.restarts, 1);
    assert_ne!(status.pid, Some(pid));
    gateway.shutdown().await;
}

async fn started_with_two_servers() -> (Binary, Client) {
    let binary = Binary::start(&config(
        json!({"everything": everything(), "memory": memory()}),
        json!({}),
    ));
    let mut client = Client::connect(binary.addr).await;
    client.initialize("everything").await;
    client.initialize("memory").await;
    assert!(
        binary.processes().len() >= 5,
        "mcpmux, two mcp-proxy, two servers"
    );
    (binary, client)
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_leaves_no_process() {
    let (mut binary, mut client) = started_with_two_servers().await;
    let sent_at = Instant::now();
    kill(binary.child.id(), libc::SIGTERM);
    match client.closed().await {
        Ended::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    binary
        .wait_until_no_process_is_left(Duration::from_secs(10))
        .await;
    assert!(sent_at.elapsed() < Duration::from_secs(10));
    let status = binary.child.wait().expect("exit status");
    assert!(status.success(), "graceful exit: {status}");
}

#[tokio::test]
async fn sigkill_of_mcpmux_leaves_no_process() {
    let (mut binary, _client) = started_with_two_servers().await;
    kill(binary.child.id(), libc::SIGKILL);
    binary
        .wait_until_no_process_is_left(Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn an_idle_stdio_server_that_dies_is_noticed_within_five_seconds() {
    // No call in flight: no error reply can give the death away, only the process watch.
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    kill_stdio_server(&gateway, "everything");
    let killed_at = Instant::now();
    client.status("restarting").await;
    let noticed = killed_at.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    client.session_state("lost").await;
    client.status("ready").await;
    gateway.shutdown().await;
}

/// A minimal stdio MCP server that ignores SIGTERM, SIGINT, SIGHUP and the end of its
/// stdin: the worst case for "no process outlives mcpmux".
fn stubborn_server() -> serde_json::Value {
    let script = r#"
        for (const s of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(s, () => {});
        process.stdin.on("end", () => {});
        setInterval(() => {}, 1000);
        let buf = "";
        process.stdin.on("data", (d) => {
            buf += d;
            let i;
            while ((i = buf.indexOf("\n")) >= 0) {
                const line = buf.slice(0, i);
                buf = buf.slice(i + 1);
                let m;
                try { m = JSON.parse(line); } catch { continue; }
                if (m.id === undefined || !m.method) continue;
                const result = m.method === "initialize"
                    ? { protocolVersion: m.params.protocolVersion, capabilities: {}, serverInfo: { name: "stubborn", version: "1" } }
                    : {};
                process.stdout.write(JSON.stringify({ jsonrpc: "2.0", id: m.id, result }) + "\n");
            }
        });
    "#;
    json!({"command": "node", "args": ["-e", script]})
}

#[tokio::test]
async fn sigkill_leaves_no_process_even_when_a_server_ignores_sigterm_and_eof() {
    let mut binary = Binary::start(&config(
        json!({"stubborn": stubborn_server()}),
        json!({"stopGraceMs": 1000}),
    ));
    let mut client = Client::connect(binary.addr).await;
    client.initialize("stubborn").await;
    assert!(
        binary.processes().len() >= 4,
        "mcpmux, its guard, mcp-proxy, the server"
    );
    kill(binary.child.id(), libc::SIGKILL);
    binary
        .wait_until_no_process_is_left(Duration::from_secs(10))
        .await;
}
