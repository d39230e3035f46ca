//! A real `redis-server` on a free loopback port, for the tests of instances sharing a
//! store: no persistence, its files in a temp dir, killed on drop. `stop` and `start`
//! (or `restart`) make an outage on the same port; `pause` and `resume` a hung server.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::binary::TempDir;

/// How long redis-server may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// A running (or stopped) redis-server.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port, without a password.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts redis-server on a free loopback port, with `requirepass`.
    pub fn start_with_password(password: &str) -> Self {
        Self::launch(Some(password.to_string()))
    }

    fn launch(password: Option<String>) -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            password,
            dir: TempDir::new(),
            child: None,
        };
        server.run();
        server
    }

    /// `redis://[:password@]127.0.0.1:PORT`, for `gateway.store.redis`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new connection, for a test to look at what the gateways wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Kills it (SIGKILL: an outage, not a shutdown) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server dies of SIGKILL all the same.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGSTOP: its sockets stay open and nothing is answered (a hung
    /// Redis, not a dead one).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Starts it again on the same port, empty (nothing is persisted).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        self.run();
    }

    /// `stop`, then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts redis-server and returns once it accepts connections.
    fn run(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir.0);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (apt package redis-server; scripts/setup --test installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads its log to the end (so it never blocks on a full pipe), saying when it
        // is ready.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        self.child = Some(child);
        if ready_rx.recv_timeout(READY_WAIT).is_err() {
            self.stop();
            panic!("redis-server on port {} did not become ready", self.port);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
