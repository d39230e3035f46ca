//! A remote server that speaks only the legacy HTTP+SSE transport (MCP 2024-11-05): a
//! real mcp-proxy run with `--server sse` in front of the real server-everything,
//! configured as `"transport": "sse"`. Requests, progress, and the end of the session
//! when the server goes away.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Client, TestGateway, config, root, tool_text};

/// A standalone mcp-proxy serving `/sse` and `/messages` (or `/mcp`), stopped (with its stdio
/// server, which shares its process group) when dropped.
pub struct LegacyProxy {
    child: Child,
    /// Where it listens.
    pub port: u16,
}

impl LegacyProxy {
    /// Starts mcp-proxy on a free port and waits until `/ping` answers.
    pub async fn start() -> Self {
        Self::serving("sse").await
    }

    /// Starts mcp-proxy serving only the transport `server` (`sse` or `stream`: then
    /// `/mcp`), on a free port, and waits until `/ping` answers.
    pub async fn serving(server: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let modules = root().join("node_modules");
        let child = Command::new("node")
            .arg(modules.join("mcp-proxy/dist/bin/mcp-proxy.mjs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--server", server, "--", "node"])
            .arg(modules.join("@modelcontextprotocol/server-everything/dist/index.js"))
            .arg("stdio")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("mcp-proxy starts (run `npm ci` first)");
        let mut proxy = Self { child, port };
        let ping = format!("http://127.0.0.1:{port}/ping");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(&ping).send().await {
                if response.status().is_success() {
                    return proxy;
                }
            }
            let exited = proxy.child.try_wait().expect("try_wait");
            assert!(exited.is_none(), "mcp-proxy exited: {exited:?}");
            assert!(Instant::now() < deadline, "mcp-proxy never answered /ping");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process group: TERM, then KILL if it lingers.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on our own child's process group; no memory is involved.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for LegacyProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_legacy_sse_server_is_carried_end_to_end() {
    let mut proxy = LegacyProxy::start().await;
    let url = format!("http://127.0.0.1:{}/sse", proxy.port);
    let servers = json!({"legacy": {"url": url, "transport": "sse"}});
    let gateway = TestGateway::start(&config(servers, json!({}))).await;
    let mut client = Client::connect(gateway.addr).await;

    let init = client.initialize("legacy").await;
    assert_eq!(init["server"], "legacy");
    assert!(
        init["message"]["result"]["serverInfo"].is_object(),
        "{init}"
    );

    let params = json!({"name": "echo", "arguments": {"message": "hi"}});
    let echo = client.call("legacy", json!(2), "tools/call", params).await;
    assert_eq!(tool_text(&echo), "Echo: hi", "{echo}");

    let id = json!("long");
    client
        .start_long_operation("legacy", &id, 1, 3, "legacy-tok")
        .await;
    let result = client.response("legacy", &id).await;
    assert!(
        tool_text(&result).contains("Long running operation completed"),
        "{result}"
    );
    let progress = client.take_buffered(|f| {
        f["message"]["method"] == "notifications/progress"
            && f["message"]["params"]["progressToken"] == "legacy-tok"
    });
    assert!(!progress.is_empty(), "progress before the result");
    for frame in &progress {
        assert_eq!(frame["server"], "legacy");
        assert!(frame["seq"].as_u64() < result["seq"].as_u64(), "{frame}");
    }

    // The server goes away: its stream ends, and so does the upstream session.
    proxy.stop();
    let lost = client
        .wait_for("session lost", |f| {
            f["type"] == "session" && f["server"] == "legacy" && f["state"] == "lost"
        })
        .await;
    assert!(lost["reason"].is_string(), "{lost}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_legacy_server_is_detected_when_initialize_is_refused() {
    let _proxy = LegacyProxy::start().await;
    // No transport configured: Streamable HTTP first, then the specification's fallback.
    let url = format!("http://127.0.0.1:{}/sse", _proxy.port);
    let gateway = TestGateway::start(&config(json!({"detected": {"url": url}}), json!({}))).await;
    for round in 0..2 {
        // The second client finds the server already known as legacy.
        let mut client = Client::connect(gateway.addr).await;
        let init = client.initialize("detected").await;
        assert!(
            init["message"]["result"]["serverInfo"].is_object(),
            "{init}"
        );
        let params = json!({"name": "echo", "arguments": {"message": format!("round {round}")}});
        let echo = client
            .call("detected", json!(2), "tools/call", params)
            .await;
        assert_eq!(tool_text(&echo), format!("Echo: round {round}"), "{echo}");
    }
    gateway.shutdown().await;
}
