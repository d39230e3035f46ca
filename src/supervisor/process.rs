//! Child processes that cannot outlive mcpmux.
//!
//! This module owns every `fork`/`exec` mcpmux performs and the signalling of what it started.
//! Each child started through [`GroupChild::spawn`]:
//!
//! - leads its own process group (pgid == pid), so the child and everything it starts
//!   (mcp-proxy, the MCP server under it, ...) is signalled at once with `kill(-pgid, sig)`;
//! - gets the open-file limit mcpmux was started with, not the one it raised for itself
//!   ([`crate::open_files`]);
//! - has `PR_SET_PDEATHSIG = SIGTERM`, so when mcpmux dies, even by SIGKILL, the child is told to
//!   terminate; a child whose parent already died between `fork` and `prctl` exits at once;
//! - is forked on one dedicated spawner thread that never exits. The parent-death signal fires
//!   when the *thread* that forked the child exits, not the process: a child forked on a tokio
//!   blocking-pool thread or a worker of a runtime that is later dropped would be SIGTERMed when
//!   that thread retires.
//!
//! [`GroupChild::stop`] ends the whole group (SIGTERM, grace period, SIGKILL) and reaps the
//! leader; dropping a [`GroupChild`] that was not stopped SIGKILLs its group without waiting.

use std::ffi::OsString;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often [`GroupChild::stop`] re-reads the group while waiting for it to empty.
const POLL: Duration = Duration::from_millis(20);
/// How long [`GroupChild::stop`] waits for the group to vanish after SIGKILL.
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The OS refused to start `program` (not found, not executable, bad cwd, ...).
    #[error("failed to spawn `{program}`: {source}")]
    Spawn {
        /// The program as given in [`ChildSpec::program`].
        program: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// The spawner thread could not be started or is no longer answering.
    #[error("the process spawner thread is gone")]
    SpawnerGone,
    /// [`GroupChild::spawn`] was called outside a tokio runtime.
    #[error("GroupChild::spawn must be called from within a tokio runtime")]
    NoRuntime,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ChildSpec {
    /// Program name (looked up in `PATH`) or path.
    pub program: String,
    /// Arguments, not including the program itself.
    pub args: Vec<String>,
    /// The child's whole environment: nothing of mcpmux's environment is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; `None` inherits mcpmux's.
    pub cwd: Option<PathBuf>,
}

/// A running child that is the leader of its own process group.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    /// The leader could not be waited for (reaped elsewhere); only the group is tracked.
    leader_lost: bool,
    /// Leader reaped and group empty: nothing left that is ours to signal.
    finished: bool,
}

struct SpawnRequest {
    spec: ChildSpec,
    handle: Handle,
    reply: oneshot::Sender<Result<GroupChild, ProcessError>>,
}

/// The channel to the spawner thread, started on first use.
fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("mcpmux-spawner".into())
                .spawn(move || spawner_loop(rx));
            match thread {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the process spawner thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Body of the spawner thread. It must never exit: its children's parent-death signal is tied
/// to it. A panic while spawning is caught so that it cannot take the thread down.
fn spawner_loop(rx: mpsc::Receiver<SpawnRequest>) {
    while let Ok(SpawnRequest {
        spec,
        handle,
        reply,
    }) = rx.recv()
    {
        let program = spec.program.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _guard = handle.enter();
            spawn_here(spec)
        }))
        .unwrap_or_else(|_| {
            Err(ProcessError::Spawn {
                program,
                source: io::Error::other("panic while spawning"),
            })
        });
        // If the caller gave up, the child is dropped here, which kills its group.
        let _ = reply.send(result);
    }
    // The sender lives in a static, so this is not reached; never let the thread end anyway.
    loop {
        std::thread::park();
    }
}

/// Forks and execs `spec` on the current (spawner) thread.
#[allow(unsafe_code)]
fn spawn_here(spec: ChildSpec) -> Result<GroupChild, ProcessError> {
    let parent = std::process::id() as libc::pid_t; // captured before the fork
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let open_files = crate::open_files::limit_for_children();
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit, setrlimit); it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            match open_files {
                Some(limit) => restore_open_file_limit(limit),
                None => Ok(()),
            }
        });
    }
    let spawn_error = |source| ProcessError::Spawn {
        program: spec.program.clone(),
        source,
    };
    let child = cmd.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_error(io::Error::other("child has no pid")))?;
    tracing::debug!(pid, program = %spec.program, "spawned process group");
    Ok(GroupChild {
        child,
        pid,
        status: None,
        leader_lost: false,
        finished: false,
    })
}

/// Runs in the child between fork and exec: SIGTERM on parent death, and exit if the parent is
/// already gone (it died before the `prctl` took effect).
#[allow(unsafe_code)]
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes only integers and is async-signal-safe.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid and _exit have no preconditions and are async-signal-safe.
    unsafe {
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Runs in the child between fork and exec: gives it back mcpmux's original open-file limit.
#[allow(unsafe_code)]
fn restore_open_file_limit(limit: libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit reads the valid `limit` and is async-signal-safe.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl GroupChild {
    /// Spawns on the dedicated spawner thread. stdin: null; stdout and stderr: piped (caller
    /// reads them). Must be called from within a tokio runtime, which then drives the child.
    pub async fn spawn(spec: ChildSpec) -> Result<GroupChild, ProcessError> {
        let handle = Handle::try_current().map_err(|_| ProcessError::NoRuntime)?;
        let (reply, answer) = oneshot::channel();
        let request = SpawnRequest {
            spec,
            handle,
            reply,
        };
        let spawner = spawner().ok_or(ProcessError::SpawnerGone)?;
        spawner
            .send(request)
            .map_err(|_| ProcessError::SpawnerGone)?;
        answer.await.map_err(|_| ProcessError::SpawnerGone)?
    }

    /// The leader's pid, which is also the process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The leader's stdout, the first time it is asked for.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The leader's stderr, the first time it is asked for.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for the leader to exit (cancel-safe). Followers may still be running afterwards.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM to the whole group, wait up to `grace` for the leader to exit AND for the group to
    /// be empty, then SIGKILL the group; reaps the leader. Idempotent; never panics if already
    /// dead. Returns the leader's exit status if it could be reaped.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.finished && !self.is_gone() {
            self.signal(libc::SIGTERM);
            if !self.settle(grace, None).await {
                tracing::debug!(
                    pid = self.pid,
                    ?grace,
                    "process group outlived its grace period; SIGKILL"
                );
                self.signal(libc::SIGKILL);
                if !self.leader_reaped() {
                    let _ = self.child.start_kill(); // in case the leader left its group
                }
                if !self.settle(KILL_SETTLE, Some(libc::SIGKILL)).await {
                    tracing::warn!(pid = self.pid, members = ?group_members(self.pid), "process group still alive after SIGKILL");
                }
            }
        }
        self.finished = self.is_gone();
        self.status
    }

    /// Number of live (not zombie) processes in the group other than the leader.
    pub fn followers(&self) -> usize {
        group_members(self.pid)
            .into_iter()
            .filter(|&pid| pid != self.pid)
            .count()
    }

    fn leader_reaped(&self) -> bool {
        self.status.is_some() || self.leader_lost
    }

    /// Reaps the leader if it has exited, then reports whether it is reaped and the group empty.
    fn is_gone(&mut self) -> bool {
        if !self.leader_reaped() {
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) => return false,
                Err(e) => {
                    tracing::debug!(pid = self.pid, error = %e, "cannot wait for group leader");
                    self.leader_lost = true;
                }
            }
        }
        group_members(self.pid).is_empty()
    }

    /// Polls until [`Self::is_gone`] or `limit` passes, re-sending `resend` on every tick.
    async fn settle(&mut self, limit: Duration, resend: Option<i32>) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_gone() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if let Some(sig) = resend {
                self.signal(sig);
            }
            let tick = POLL.min(deadline - now);
            if self.leader_reaped() {
                tokio::time::sleep(tick).await;
            } else if let Ok(Ok(status)) = tokio::time::timeout(tick, self.child.wait()).await {
                self.status = Some(status);
            }
        }
    }

    fn signal(&self, sig: i32) {
        if let Err(e) = signal_group(self.pid, sig) {
            tracing::warn!(pgid = self.pid, sig, error = %e, "cannot signal process group");
        }
    }
}

impl Drop for GroupChild {
    /// SIGKILLs the group unless it was stopped or is known to be gone (best effort, no waiting).
    fn drop(&mut self) {
        if self.finished || (self.leader_reaped() && group_members(self.pid).is_empty()) {
            return;
        }
        tracing::debug!(
            pgid = self.pid,
            "GroupChild dropped without stop; SIGKILL to its group"
        );
        if let Err(e) = signal_group(self.pid, libc::SIGKILL) {
            tracing::debug!(pgid = self.pid, error = %e, "cannot SIGKILL process group");
        }
    }
}

/// Live (non-zombie) pids whose process group is `pgid`, read from /proc. Processes vanishing
/// mid-scan are skipped; an unknown or bogus `pgid` gives an empty list.
pub fn group_members(pgid: u32) -> Vec<u32> {
    if pgid == 0 {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        let (state, pgrp) = parse_stat(&stat)?;
        (pgrp == pgid && !matches!(state, b'Z' | b'X' | b'x')).then_some(pid)
    })
    .collect()
}

/// (state, pgrp) from the contents of /proc/PID/stat. `comm` may contain spaces, ')' and
/// non-UTF-8 bytes, so the fields are read after the LAST ')'.
fn parse_stat(stat: &[u8]) -> Option<(u8, u32)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Sends `sig` to the whole group; ESRCH is not an error. Refuses pgid 0 and 1 (which `kill`
/// would take as "my own group" and "every process") and mcpmux's own group.
#[allow(unsafe_code)]
pub fn signal_group(pgid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let own = unsafe { libc::getpgrp() };
    let target = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&p| p > 1 && p != own)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal process group {pgid}"),
            )
        })?;
    // SAFETY: kill has no memory-safety preconditions; `-target` (target > 1) names exactly one
    // process group.
    if unsafe { libc::kill(-target, sig) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(()),
        _ => Err(err),
    }
}

/// Sends `sig` to the caller's own process group, itself included (for a guard that
/// leads the group it supervises); ESRCH is not an error.
#[allow(unsafe_code)]
pub fn signal_own_group(sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions; pid 0 names the caller's group.
    if unsafe { libc::kill(0, sig) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(()),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    const HELPER_ENV: &str = "MCPMUX_PDEATHSIG_HELPER";
    const PID_MARKER: &str = "MCPMUX_HELPER_SLEEP_PID=";

    fn sh(script: &str) -> ChildSpec {
        ChildSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..ChildSpec::default()
        }
    }

    fn stat_of(pid: u32) -> Option<(u8, u32)> {
        parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
    }

    /// The process exists and is not a zombie.
    fn alive(pid: u32) -> bool {
        stat_of(pid).is_some_and(|(state, _)| !matches!(state, b'Z' | b'X' | b'x'))
    }

    async fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn child_leads_its_group_and_stop_empties_it() {
        let mut child = GroupChild::spawn(sh("sleep 30 & sleep 30 & wait"))
            .await
            .unwrap();
        let pid = child.pid();
        assert_eq!(
            stat_of(pid).map(|(_, pgrp)| pgrp),
            Some(pid),
            "pid must be its own pgid"
        );
        assert!(poll_until(Duration::from_secs(2), || child.followers() == 2).await);
        let members = group_members(pid);
        assert_eq!(members.len(), 3, "{members:?}");
        let started = Instant::now();
        let status = child
            .stop(Duration::from_secs(5))
            .await
            .expect("leader reaped");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "SIGTERM alone should do"
        );
        assert!(group_members(pid).is_empty());
        assert!(members.iter().all(|&p| !alive(p)));
        // Idempotent.
        assert_eq!(child.stop(Duration::from_secs(1)).await, Some(status));
        assert_eq!(child.followers(), 0);
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        let mut child =
            GroupChild::spawn(sh("trap '' TERM; echo ready; while :; do sleep 0.1; done"))
                .await
                .unwrap();
        let mut out = BufReader::new(child.take_stdout().unwrap()).lines();
        assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
        let pid = child.pid();
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let status = child.stop(grace).await.expect("leader reaped");
        let took = started.elapsed();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(took >= grace, "{took:?}");
        assert!(took < grace + Duration::from_secs(1), "{took:?}");
        assert!(group_members(pid).is_empty());
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let spec = ChildSpec {
            program: "/nonexistent/mcpmux-no-such-program".into(),
            ..ChildSpec::default()
        };
        match GroupChild::spawn(spec).await {
            Err(err @ ProcessError::Spawn { .. }) => {
                let ProcessError::Spawn { program, source } = &err else {
                    unreachable!()
                };
                assert_eq!(program, "/nonexistent/mcpmux-no-such-program");
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
                assert!(err.to_string().contains("mcpmux-no-such-program"));
            }
            other => panic!("expected Spawn error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn env_cwd_pipes_and_wait() {
        let mut spec = sh("echo \"$MCPMUX_T\"; pwd; echo oops >&2; exit 3");
        spec.env.push(("MCPMUX_T".into(), "hello world".into()));
        spec.cwd = Some("/".into());
        let mut child = GroupChild::spawn(spec).await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        child
            .take_stdout()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        child
            .take_stderr()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert!(child.take_stdout().is_none());
        assert_eq!(out, "hello world\n/\n");
        assert_eq!(err, "oops\n");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(child.wait().await.unwrap(), status);
        assert_eq!(child.stop(Duration::from_millis(100)).await, Some(status));
    }

    #[tokio::test]
    async fn the_child_gets_only_the_environment_of_its_spec() {
        let mut spec = sh("exec env");
        spec.env.push(("MCPMUX_ONLY".into(), "1".into()));
        let mut child = GroupChild::spawn(spec).await.unwrap();
        let mut out = String::new();
        child
            .take_stdout()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|v| v.0)
            .collect();
        // The shell adds its working directory; nothing of this process is passed on.
        assert!(
            names.iter().all(|n| ["MCPMUX_ONLY", "PWD"].contains(n)),
            "{names:?}"
        );
        assert!(names.contains(&"MCPMUX_ONLY"), "{names:?}");
        assert!(
            std::env::var_os("PATH").is_some(),
            "this test process has a PATH"
        );
        child.stop(Duration::from_secs(1)).await;
    }

    #[test]
    fn spawn_from_retired_blocking_thread_does_not_kill_child() {
        // Idle blocking threads retire after 10 ms, so the thread that asked for the spawn is
        // gone long before the check below.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_keep_alive(Duration::from_millis(10))
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        rt.block_on(async move {
            let (child, asker) = tokio::task::spawn_blocking(move || {
                let child = handle.block_on(GroupChild::spawn(sh("exec sleep 30")));
                (child, std::thread::current().id())
            })
            .await
            .unwrap();
            let mut child = child.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // A fresh blocking task runs on a new thread: the asking one has retired.
            let now = tokio::task::spawn_blocking(|| std::thread::current().id())
                .await
                .unwrap();
            assert_ne!(
                now, asker,
                "blocking thread did not retire; test proves nothing"
            );
            assert!(
                alive(child.pid()),
                "child died with the blocking thread that spawned it"
            );
            assert_eq!(child.followers(), 0);
            let status = child.stop(Duration::from_secs(2)).await.expect("reaped");
            assert_eq!(status.signal(), Some(libc::SIGTERM));
        });
    }

    #[test]
    fn child_survives_spawning_thread_and_runtime() {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let child = rt.block_on(GroupChild::spawn(sh("exec sleep 30"))).unwrap();
            let pid = child.pid();
            tx.send(child).unwrap();
            drop(rt);
            pid
        });
        let pid = thread
            .join()
            .unwrap_or_else(|_| panic!("spawning thread panicked"));
        let child = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        assert!(
            alive(pid),
            "child died with the thread/runtime that asked for it"
        );
        drop(child); // SIGKILLs the group; nothing drives the dead runtime's reaper
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn drop_kills_the_group() {
        let child = GroupChild::spawn(sh("sleep 30 & sleep 30 & wait"))
            .await
            .unwrap();
        let pid = child.pid();
        assert!(poll_until(Duration::from_secs(2), || child.followers() == 2).await);
        let members = group_members(pid);
        drop(child);
        assert!(poll_until(Duration::from_secs(2), || group_members(pid).is_empty()).await);
        assert!(members.iter().all(|&p| !alive(p)));
    }

    #[test]
    fn group_members_ignores_zombies_and_bogus_groups() {
        use std::os::unix::process::CommandExt;
        let mut zombie = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = zombie.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while stat_of(pid).map(|(s, _)| s) != Some(b'Z') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            stat_of(pid),
            Some((b'Z', pid)),
            "child should be an unreaped zombie"
        );
        assert!(group_members(pid).is_empty());
        zombie.wait().unwrap();

        // A reaped pid names no group: ESRCH, which is fine.
        assert!(signal_group(pid, 0).is_ok());
        for bogus in [0, pid, 4_000_000_000, u32::MAX] {
            assert!(group_members(bogus).is_empty(), "{bogus}");
        }
        // 0 ("my group"), 1 ("everyone"), out-of-range and our own group are refused.
        let own_pgrp = stat_of(std::process::id()).unwrap().1;
        for refused in [0, 1, u32::MAX, own_pgrp] {
            let err = signal_group(refused, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{refused}");
        }
    }

    #[test]
    fn parse_stat_handles_hostile_comm() {
        assert_eq!(parse_stat(b"42 (a) b (c) R 1 77 77 0 -1"), Some((b'R', 77)));
        assert_eq!(parse_stat(b"42 (x y\xff)) S 1 9 9"), Some((b'S', 9)));
        assert_eq!(parse_stat(b"42 (sh) Z 1 5"), Some((b'Z', 5)));
        assert_eq!(parse_stat(b"42 (sh"), None);
        assert_eq!(parse_stat(b"42 (sh) S 1"), None);
        assert_eq!(parse_stat(b""), None);
    }

    /// Re-run of this test binary by `pdeathsig_kills_child_when_mcpmux_is_sigkilled`: spawns
    /// `sleep 60`, prints its pid and waits to be killed.
    #[test]
    #[ignore = "helper; runs only when re-executed by pdeathsig_kills_child_when_mcpmux_is_sigkilled"]
    fn pdeathsig_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let child = rt
            .block_on(GroupChild::spawn(ChildSpec {
                program: "sleep".into(),
                args: vec!["60".into()],
                ..ChildSpec::default()
            }))
            .unwrap();
        println!("{PID_MARKER}{}", child.pid());
        std::thread::sleep(Duration::from_secs(60));
    }

    #[tokio::test]
    async fn pdeathsig_kills_child_when_mcpmux_is_sigkilled() {
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, m)| m);
        let helper_name = format!("{module}::pdeathsig_helper");
        let mut helper = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &helper_name,
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
        let sleep_pid: u32 = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // libtest prints "test NAME ... " on the same line first.
                if let Some((_, pid)) = line.split_once(PID_MARKER) {
                    return pid.trim().parse().unwrap();
                }
            }
            panic!("helper exited without printing the pid");
        })
        .await
        .expect("helper printed the pid");
        assert!(alive(sleep_pid));
        // The sleep is in its own group, so killing the helper does not signal it directly.
        assert_eq!(stat_of(sleep_pid).map(|(_, pgrp)| pgrp), Some(sleep_pid));
        helper.start_kill().unwrap();
        assert_eq!(helper.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        let gone = poll_until(Duration::from_secs(2), || !alive(sleep_pid)).await;
        if !gone {
            let _ = signal_group(sleep_pid, libc::SIGKILL);
        }
        assert!(gone, "sleep {sleep_pid} outlived its SIGKILLed parent");
    }
}
