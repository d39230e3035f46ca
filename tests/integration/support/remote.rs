//! The real server-everything in Streamable HTTP mode, reachable from every gateway
//! instance a test starts (a remote server), and what it logs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::binary::TempDir;
use crate::harness::root;
use crate::support::redis::free_port;

/// The real server-everything in Streamable HTTP mode on a free loopback port, its
/// standard output (one line per session it initializes or deletes) kept in a file.
pub struct RemoteEverything {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl RemoteEverything {
    pub fn start() -> Self {
        let port = free_port();
        let dir = TempDir::new();
        let script =
            root().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        let stdout = std::fs::File::create(dir.0.join("stdout.log")).expect("log file");
        let mut child = Command::new("node")
            .arg(script)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        // It says so on standard error once it listens.
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        while !line.contains("listening on port") {
            line.clear();
            let read = stderr.read_line(&mut line).expect("a line");
            assert!(read > 0, "server-everything ended before listening");
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Self { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stdout.log")).unwrap_or_default()
    }

    /// How many sessions it has initialized.
    pub fn initialized(&self) -> usize {
        self.log().matches("Session initialized with ID").count()
    }

    /// How many sessions it was asked to delete.
    pub fn deleted(&self) -> usize {
        self.log()
            .matches("Received session termination request")
            .count()
    }
}

impl Drop for RemoteEverything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RemoteEverything {
    /// POSTs the notification `method` straight to the server, in upstream session
    /// `session_id` (as a client of it would, not through a gateway); returns the
    /// HTTP status.
    pub async fn notify(&self, session_id: &str, version: &str, method: &str) -> u16 {
        let message = json!({"jsonrpc": "2.0", "method": method});
        reqwest::Client::new()
            .post(self.url())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session_id)
            .header("mcp-protocol-version", version)
            .body(message.to_string())
            .send()
            .await
            .expect("server-everything answers")
            .status()
            .as_u16()
    }
}
