//! The processes a benchmark runs (mcpmux, the fast upstream, mcp-proxy, supergateway),
//! each on 127.0.0.1 and ended when dropped, and what `/proc` says about them: CPU time
//! and resident memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, ended (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Child,
    /// Files to remove when it ends (its configuration).
    leftovers: Vec<PathBuf>,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds it has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Its resident memory, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid()).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Every child leads its own process group: end the whole group (mcp-proxy's and
        // supergateway's stdio servers with it).
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        for file in &self.leftovers {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// User + system CPU seconds of a process (all its threads), from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it):
/// the idle scenario holds ten thousand sockets on each side.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// Reads the child's standard output until a line starting with `prefix`; returns the rest.
fn wait_for_line(child: &mut Child, prefix: &str, what: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !sent {
                        if let Some(rest) = line.trim().strip_prefix(&prefix) {
                            let _ = tx.send(rest.to_owned());
                            sent = true;
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{what} did not say where it listens"))
}

/// The mcpmux binary next to this one (same build), unless given.
pub fn default_mcpmux() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("mcpmux")))
        .unwrap_or_else(|| PathBuf::from("mcpmux"))
}

/// Starts mcpmux with `config` (JSON) on 127.0.0.1:0; returns it and its address.
pub fn start_mcpmux(
    binary: &Path,
    config: &serde_json::Value,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let path = std::env::temp_dir().join(format!("mcpmux-bench-{:x}.json", rand::random::<u64>()));
    std::fs::write(&path, config.to_string())?;
    let child = Command::new(binary)
        .args([
            "--config",
            &path.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("MCPMUX_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut proc = Proc {
        child,
        leftovers: vec![path],
    };
    let rest = wait_for_line(&mut proc.child, "mcpmux listening on ws://", "mcpmux");
    let addr = rest?
        .strip_suffix("/ws")
        .and_then(|a| a.parse().ok())
        .context("unexpected mcpmux listening line")?;
    Ok((proc, addr))
}

/// Starts the fast upstream (this binary's `upstream` subcommand) on 127.0.0.1:0.
pub fn start_upstream() -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("upstream")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let mut proc = Proc {
        child,
        leftovers: Vec::new(),
    };
    let rest = wait_for_line(
        &mut proc.child,
        "upstream listening on ",
        "the fast upstream",
    );
    let addr = rest?
        .parse()
        .context("unexpected upstream listening line")?;
    Ok((proc, addr))
}

/// redis-server on a free loopback port, without persistence; returns it and its URL.
pub fn start_redis() -> anyhow::Result<(Proc, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .context("cannot start redis-server (scripts/setup installs it)")?;
    let mut proc = Proc {
        child,
        leftovers: Vec::new(),
    };
    let stdout = proc.child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("Ready to accept connections") {
                let _ = tx.send(());
            }
            line.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("redis-server did not get ready")?;
    Ok((proc, format!("redis://127.0.0.1:{port}")))
}

/// mcp-proxy in front of server-everything (stdio), as mcpmux runs it: returns the
/// process, its `/mcp` URL and its API key.
pub async fn start_mcp_proxy(root: &Path) -> anyhow::Result<(Proc, String, String)> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let key = format!("{:032x}", rand::random::<u128>());
    let child = Command::new("node")
        .arg(root.join("node_modules/mcp-proxy/dist/bin/mcp-proxy.mjs"))
        .args([
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--apiKey",
            &key,
            "--",
        ])
        .arg("node")
        .arg(root.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
        .arg("stdio")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start mcp-proxy (node)")?;
    let proc = Proc {
        child,
        leftovers: Vec::new(),
    };
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/ping"), "mcp-proxy").await?;
    Ok((proc, format!("{base}/mcp"), key))
}

/// supergateway's WebSocket mode over server-everything (stdio), made to listen on
/// 127.0.0.1:0 by a preload script that reports the port it got.
pub async fn start_supergateway(root: &Path) -> anyhow::Result<(Proc, SocketAddr)> {
    let preload =
        std::env::temp_dir().join(format!("mcpmux-bench-loopback-{}.mjs", std::process::id()));
    std::fs::write(&preload, include_str!("loopback.mjs"))?;
    let server = root.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let child = Command::new("node")
        .arg("--import")
        .arg(&preload)
        .arg(root.join("node_modules/supergateway/dist/index.js"))
        .args([
            "--outputTransport",
            "ws",
            "--logLevel",
            "none",
            "--port",
            "0",
            "--stdio",
        ])
        .arg(format!("node {} stdio", server.display()))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start supergateway (node)")?;
    let mut proc = Proc {
        child,
        leftovers: vec![preload],
    };
    let rest = wait_for_line(&mut proc.child, "bench-loopback-port ", "supergateway");
    let port: u16 = rest?.parse().context("unexpected supergateway port line")?;
    Ok((proc, SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn wait_ready(url: &str, what: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not become ready within 60 s")
}
