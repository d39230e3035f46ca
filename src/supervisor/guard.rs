//! The guard: the `mcpmux` binary re-executed (`mcpmux guard -- COMMAND...`) as the
//! leader of a child's process group, so that nothing of the group can outlive mcpmux.
//!
//! mcpmux starts each mcp-proxy under a guard, in a new process group, with the
//! parent-death signal set to SIGTERM. The guard runs the command in the same group and
//! waits. On SIGTERM (mcpmux stopping the server, or mcpmux itself dying, even by
//! SIGKILL) it sends SIGTERM to the whole group, waits up to the grace period, then
//! SIGKILLs the group, itself included. When the command exits by itself, the guard
//! stops what is left of the group the same way and exits with the command's status.
//! So a stdio server that ignores both SIGTERM and the end of its stdin still ends.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use super::process::{group_members, signal_own_group};

/// How often the group is checked while it is being stopped.
const POLL: Duration = Duration::from_millis(20);

/// The guard's subcommand name, as the supervisor passes it.
pub const SUBCOMMAND: &str = "guard";

/// Runs `program args` under the guard; returns the exit code to exit with.
pub fn run(program: &str, args: &[String], grace: Duration) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mcpmux guard: cannot start: {err}");
            return 1;
        }
    };
    runtime.block_on(guard(program, args, grace))
}

async fn guard(program: &str, args: &[String], grace: Duration) -> i32 {
    // The handler is installed before the command starts, so no SIGTERM is missed.
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(err) => {
            eprintln!("mcpmux guard: cannot watch SIGTERM: {err}");
            return 1;
        }
    };
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("mcpmux guard: cannot run {program}: {err}");
            return 127;
        }
    };
    let status = tokio::select! {
        status = child.wait() => status.ok(),
        _ = terminate.recv() => None,
    };
    stop_group(&mut child, grace).await;
    status.map_or(143, exit_code)
}

/// SIGTERM to the group (the guard ignores its own), a wait of up to `grace` for the
/// others to end, then SIGKILL to the group, the guard included.
async fn stop_group(child: &mut tokio::process::Child, grace: Duration) {
    let own = std::process::id();
    let _ = signal_own_group(libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        let _ = child.try_wait();
        if group_members(own).iter().all(|pid| *pid == own) {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    let _ = signal_own_group(libc::SIGKILL);
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
