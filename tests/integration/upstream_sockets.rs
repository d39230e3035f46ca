//! The gateway's upstream TCP connections carry keepalive, so that a peer that vanished
//! without closing (a NAT or load balancer that dropped the flow) is noticed. Read from
//! the socket itself: the gateway runs in this process, so its sockets are ours.

use std::sync::Arc;
use std::time::Duration;

use mcpmux::upstream::http::{TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_PROBES};
use serde_json::json;
use tokio::sync::Notify;

use crate::harness::{Client, TestGateway, config};

/// The inode of the socket from 127.0.0.1:`local` to 127.0.0.1:`remote`, from
/// /proc/net/tcp.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let address = |port: u16| format!("0100007F:{port:04X}");
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == address(local) && fields[2] == address(remote))
            .then(|| fields[9].parse().ok())?
    })
}

/// This process's descriptor of the socket with `inode`.
fn descriptor_of(inode: u64) -> Option<i32> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        (target.to_str() == Some(wanted.as_str()))
            .then(|| entry.file_name().to_str()?.parse().ok())?
    })
}

/// An integer socket option of `fd`.
fn socket_option(fd: i32, level: i32, name: i32) -> i32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given; a descriptor
    // that is not a socket only makes getsockopt fail.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    assert_eq!(
        rc,
        0,
        "getsockopt({fd}, {level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    value
}

#[tokio::test]
async fn upstream_connections_carry_tcp_keepalive() {
    // An upstream that accepts, reads, and never answers: the connection stays open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let accepted = Arc::new(Notify::new());
    let peer = Arc::new(std::sync::Mutex::new(None));
    let holder = {
        let (accepted, peer) = (accepted.clone(), peer.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, from)) = listener.accept().await {
                *peer.lock().expect("lock") = Some(from.port());
                accepted.notify_one();
                held.push(socket);
            }
        })
    };
    let gateway = TestGateway::start(&config(
        json!({"mute": {"url": format!("http://{upstream}/mcp")}}),
        json!({"shutdownGraceMs": 100}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    client
        .rpc(
            "mute",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    tokio::time::timeout(Duration::from_secs(20), accepted.notified())
        .await
        .expect("the gateway connects upstream");
    let local = peer.lock().expect("lock").expect("peer port");

    let inode = socket_inode(local, upstream.port()).expect("the connection in /proc/net/tcp");
    let fd = descriptor_of(inode).expect("the gateway's socket is in this process");
    assert_eq!(socket_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    let tcp = |name| socket_option(fd, libc::IPPROTO_TCP, name);
    let seconds = |d: Duration| i32::try_from(d.as_secs()).expect("seconds");
    assert_eq!(tcp(libc::TCP_KEEPIDLE), seconds(TCP_KEEPALIVE_IDLE));
    assert_eq!(tcp(libc::TCP_KEEPINTVL), seconds(TCP_KEEPALIVE_INTERVAL));
    assert_eq!(
        tcp(libc::TCP_KEEPCNT),
        i32::try_from(TCP_KEEPALIVE_PROBES).expect("count")
    );
    gateway.shutdown().await;
    holder.abort();
}
