//! Supervision and process lifetime: a killed stdio server is noticed and recovered;
//! SIGTERM closes clients with 1001 and leaves no process; SIGKILL leaves none either.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcpmux::supervisor::process::group_members;
use serde_json::{Value, json};

use crate::harness::{Client, Ended, TestGateway, config, everything, memory};

#[tokio::test]
async fn killing_the_stdio_server_fails_in_flight_calls_and_recovers() {
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    let pid = gateway.gateway().shared().servers["everything"]
        .status()
        .pid
        .expect("pid");
    let params = json!({
        "name": "trigger-long-running-operation",
        "arguments": {"duration": 60, "steps": 60},
        "_meta": {"progressToken": "slow"}
    });
    let id = json!("slow");
    client
        .rpc(
            "everything",
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}),
        )
        .await;
    client
        .wait_for("first progress", |f| {
            f["message"]["method"] == "notifications/progress"
        })
        .await;

    let followers: Vec<u32> = group_members(pid)
        .into_iter()
        .filter(|p| *p != pid)
        .collect();
    assert!(
        !followers.is_empty(),
        "the stdio server runs in mcp-proxy's group"
    );
    let killed_at = Instant::now();
    for follower in followers {
        kill(follower, libc::SIGKILL);
    }
    let reply = client.response("everything", &id).await;
    assert!(reply["message"]["error"].is_object(), "{reply}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "error within seconds"
    );

    let restarting = client
        .wait_for("status restarting", |f| {
            f["type"] == "status" && f["state"] == "restarting"
        })
        .await;
    let lost = client
        .wait_for("session lost", |f| {
            f["type"] == "session" && f["state"] == "lost"
        })
        .await;
    let ready = client
        .wait_for("status ready", |f| {
            f["type"] == "status" && f["state"] == "ready"
        })
        .await;
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
    let status = gateway.gateway().shared().servers["everything"].status();
    assert_eq!(status.restarts, 1);
    assert_ne!(status.pid, Some(pid));
    gateway.shutdown().await;
}

fn kill(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The mcpmux binary with a unique marker in its environment, which every process it
/// starts inherits, so the test can find all of them.
struct Binary {
    child: Child,
    addr: SocketAddr,
    marker: String,
    _config: TempFile,
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Binary {
    fn start(config: &Value) -> Self {
        let marker = format!("{:x}", rand_u64());
        let path = std::env::temp_dir().join(format!("mcpmux-test-{marker}.json"));
        std::fs::write(&path, config.to_string()).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpmux"))
            .args([
                "--config",
                path.to_str().expect("utf-8 path"),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("MCPMUX_TEST_MARK", &marker)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mcpmux starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("a line");
        let addr = line
            .trim()
            .strip_prefix("mcpmux listening on ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            marker,
            _config: TempFile(path),
        }
    }

    /// Every live process carrying this binary's marker (mcpmux and its descendants).
    fn processes(&self) -> Vec<u32> {
        let needle = format!("MCPMUX_TEST_MARK={}", self.marker);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                !zombie
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
            })
            .collect()
    }

    async fn wait_until_no_process_is_left(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let _ = self.child.try_wait();
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "processes left behind: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill(pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
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
