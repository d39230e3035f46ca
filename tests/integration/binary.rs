//! The real `mcpmux` binary, for tests of the process itself (signals, leftover
//! processes, memory, environment, logs). It runs with a unique marker in its
//! environment, which every stdio server entry asks to inherit (`inheritEnv`), so that
//! every process it starts carries it and a test can find (and at the end kill) all of
//! them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The mcpmux binary with a unique marker in its environment, which every process it
/// starts inherits, so the test can find all of them.
pub struct Binary {
    /// The mcpmux process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin API listens, when configured.
    pub admin: Option<SocketAddr>,
    marker: String,
    dir: TempDir,
}

/// How to launch the binary, beyond its configuration.
#[derive(Default)]
pub struct Launch<'a> {
    /// Variables added to its environment.
    pub env: &'a [(&'a str, &'a str)],
    /// Files written beside the configuration file: name and contents.
    pub files: &'a [(&'a str, &'a [u8])],
    /// `MCPMUX_LOG`; its standard error is then kept for [`Binary::log`].
    pub log_filter: Option<&'a str>,
    /// A soft open-file limit to start it with (through the shell's `ulimit -Sn`).
    pub soft_open_files: Option<u64>,
    /// Arguments added to its command line.
    pub args: &'a [&'a str],
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("mcpmux-test-{:x}", rand_u64()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Binary {
    /// Starts the binary with `config` on 127.0.0.1:0.
    pub fn start(config: &Value) -> Self {
        Self::launch(config, Launch::default())
    }

    /// Starts the binary with `config` on 127.0.0.1:0, as `launch` says.
    pub fn launch(config: &Value, launch: Launch<'_>) -> Self {
        let marker = format!("{:x}", rand_u64());
        let dir = TempDir::new();
        let path = dir.0.join("mcpmux.json");
        std::fs::write(&path, marked(config).to_string()).expect("write config");
        for (name, contents) in launch.files {
            std::fs::write(dir.0.join(name), contents).expect("write file");
        }
        let binary = env!("CARGO_BIN_EXE_mcpmux");
        let mut command = match launch.soft_open_files {
            None => Command::new(binary),
            Some(limit) => {
                // The shell execs mcpmux, which keeps its pid.
                let mut shell = Command::new("sh");
                let script = format!("ulimit -Sn {limit} && exec \"$0\" \"$@\"");
                shell.args(["-c", &script, binary]);
                shell
            }
        };
        command
            .args([
                "--config",
                path.to_str().expect("utf-8 path"),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(launch.args)
            .env("MCPMUX_TEST_MARK", &marker)
            .envs(launch.env.iter().copied());
        let stderr = match launch.log_filter {
            Some(filter) => {
                command.env("MCPMUX_LOG", filter);
                Stdio::from(std::fs::File::create(dir.0.join("stderr.log")).expect("log file"))
            }
            None => Stdio::null(),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("mcpmux starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("a line");
        // The start-up lines come in one write: whatever followed the first is buffered.
        let mut admin = None;
        while !reader.buffer().is_empty() {
            let mut next = String::new();
            reader.read_line(&mut next).expect("a line");
            if let Some(rest) = next.trim().strip_prefix("mcpmux admin API: http://") {
                admin = rest
                    .strip_suffix("/admin/servers")
                    .and_then(|a| a.parse().ok());
            }
        }
        let addr = line
            .trim()
            .strip_prefix("mcpmux listening on ")
            .and_then(|rest| rest.strip_prefix("ws://").or(rest.strip_prefix("wss://")))
            .and_then(|rest| rest.strip_suffix("/ws"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            addr,
            admin,
            marker,
            dir,
        }
    }

    /// The configuration file it runs with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.0.join("mcpmux.json")
    }

    /// Replaces its configuration file with `config` in one step (written beside it,
    /// then renamed over it), its stdio servers marked as at the start.
    pub fn write_config(&self, config: &Value) {
        let temporary = self.dir.0.join(".mcpmux.json.test");
        std::fs::write(&temporary, marked(config).to_string()).expect("write config");
        std::fs::rename(&temporary, self.config_path()).expect("rename config");
    }

    /// Waits until its log (with [`Launch::log_filter`]) holds a line containing every
    /// one of `needles`, and returns that line; fails after `within`.
    pub async fn log_line(&self, needles: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {within:?}; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it has written to standard error so far (with [`Launch::log_filter`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// Every live process carrying this binary's marker (mcpmux and its descendants).
    pub fn processes(&self) -> Vec<u32> {
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

    /// Waits until no process with the marker is left, failing after `within`.
    pub async fn wait_until_no_process_is_left(&mut self, within: Duration) {
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

/// `config` with every stdio server asking to inherit the marker.
fn marked(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(servers) = config["mcpServers"].as_object_mut() {
        for entry in servers.values_mut() {
            *entry = marked_entry(entry);
        }
    }
    config
}

/// A server entry that, if it is a stdio server, asks to inherit the marker, so that
/// its processes are found (and cleaned up) like those of the configuration's.
pub fn marked_entry(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if entry.get("command").is_some() {
        let mut inherit = entry["inheritEnv"].as_array().cloned().unwrap_or_default();
        if !inherit.contains(&Value::from("MCPMUX_TEST_MARK")) {
            inherit.push(Value::from("MCPMUX_TEST_MARK"));
        }
        entry["inheritEnv"] = Value::Array(inherit);
    }
    entry
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Binary {
    /// The resident set size of the mcpmux process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The largest resident set size the mcpmux process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("mcpmux is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}
