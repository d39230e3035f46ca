//! The open-file limit (`RLIMIT_NOFILE`) and the clients it leaves room for.
//!
//! Every client socket and every upstream connection is a file descriptor, so the soft
//! limit, often 1024, bounds the gateway well below `maxSessions`. The binary raises the
//! soft limit to the hard limit at start ([`raise_to_hard_limit`]) and logs the client
//! capacity that results ([`client_capacity`]): the limit, less a reserve, divided by
//! what one client costs.
//!
//! Children get the limit mcpmux was started with ([`limit_for_children`]), not the
//! raised one: programs that use `select()` fail with descriptors above 1024, so only a
//! program that knows it can take more should raise its own.

use std::io;
use std::sync::OnceLock;

/// The limit mcpmux was started with, once it has been raised.
static STARTED_WITH: OnceLock<libc::rlimit> = OnceLock::new();

/// Descriptors kept for everything that is not a client: the listener, the runtime,
/// standard streams, logs, readiness probes.
pub const RESERVED: u64 = 64;
/// Descriptors each stdio server costs mcpmux besides its clients' connections: its
/// child's stdout and stderr pipes, and headroom for its probes.
pub const PER_STDIO_SERVER: u64 = 4;

/// The soft limit before and after [`raise_to_hard_limit`], and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit mcpmux was started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to).
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (to the kernel's `nr_open` when the
/// hard limit is unlimited).
pub fn raise_to_hard_limit() -> io::Result<OpenFileLimit> {
    let (before, hard) = get()?;
    let target = if hard == libc::RLIM_INFINITY {
        nr_open().unwrap_or(1 << 20)
    } else {
        hard
    };
    if before < target {
        set(target, hard)?;
        let _ = STARTED_WITH.set(libc::rlimit {
            rlim_cur: before,
            rlim_max: hard,
        });
    }
    let (soft, hard) = get()?;
    Ok(OpenFileLimit { before, soft, hard })
}

/// The limit a child should be given back, if mcpmux raised its own: the one mcpmux was
/// started with. To be set between fork and exec (setrlimit is async-signal-safe).
pub fn limit_for_children() -> Option<libc::rlimit> {
    STARTED_WITH.get().copied()
}

/// About how many clients `limit` descriptors hold, with `stdio_servers` supervised
/// children and `servers` servers in all. A client costs its socket and, for each server
/// it uses, a standalone GET stream and a call in flight (HTTP/1.1: one connection
/// each); that is the cost counted, as if every client used every server.
pub fn client_capacity(limit: u64, servers: usize, stdio_servers: usize) -> u64 {
    let servers = u64::try_from(servers).unwrap_or(u64::MAX);
    let stdio_servers = u64::try_from(stdio_servers).unwrap_or(u64::MAX);
    let reserve = RESERVED.saturating_add(PER_STDIO_SERVER.saturating_mul(stdio_servers));
    let per_client = 1u64.saturating_add(servers.saturating_mul(2));
    limit.saturating_sub(reserve) / per_client
}

#[allow(unsafe_code)]
fn get() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

#[allow(unsafe_code)]
fn set(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the valid `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's ceiling for any process's open-file limit.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_counts_a_socket_and_two_connections_per_server() {
        // 1024 - 64 - 4 = 956 descriptors; 3 per client.
        assert_eq!(client_capacity(1024, 1, 1), 318);
        // Remote servers cost no pipes.
        assert_eq!(client_capacity(1024, 1, 0), 320);
        assert_eq!(client_capacity(1_048_576, 2, 2), 209_700);
        assert_eq!(client_capacity(10, 3, 3), 0);
        assert_eq!(client_capacity(u64::MAX, usize::MAX, usize::MAX), 0);
    }

    #[test]
    fn raising_twice_changes_nothing_more() {
        // The test process may raise its own limit: it only ever grows to the hard one.
        let first = raise_to_hard_limit().expect("getrlimit works");
        assert!(first.soft >= first.before);
        let second = raise_to_hard_limit().expect("getrlimit works");
        assert_eq!((second.before, second.soft), (first.soft, first.soft));
    }
}
