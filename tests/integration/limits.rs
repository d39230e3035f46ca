//! Limits that hold: the open-file limit is raised at start, so that it does not cap
//! the gateway far below `maxSessions`, while children keep the one mcpmux was given;
//! `maxSessions` counts every socket from its upgrade, hello or not; a request must send
//! its headers within `headerTimeoutMs`; and one address holds at most
//! `maxConnectionsPerIp` connections.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{Binary, Launch};
use crate::harness::{Client, FRAME_WAIT, TestGateway, config, everything};

/// Reads what the gateway sends until it closes the connection; fails the test if it
/// stays open past FRAME_WAIT.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(FRAME_WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"headerTimeoutMs": 300}),
    ))
    .await;
    let mut half = TcpStream::connect(gateway.addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .expect("write");
    let answer = read_until_closed(&mut half).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // A kept-alive connection idle after its request is closed the same way.
    let mut idle = TcpStream::connect(gateway.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Sockets still work.
    Client::connect(gateway.addr).await.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"maxConnectionsPerIp": 2}),
    ))
    .await;
    let addr = gateway.addr;
    // A WebSocket and an idle connection hold the address's two places.
    let client = Client::connect(addr).await;
    let idle = TcpStream::connect(addr).await.expect("connect");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    assert_eq!(read_until_closed(&mut third).await, "", "closed unanswered");
    // Once they close, their places are free again (as soon as the gateway has seen it).
    client.close().await;
    drop(idle);
    let answered = async {
        loop {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            let _ = tcp.write_all(request).await;
            if read_until_closed(&mut tcp)
                .await
                .starts_with("HTTP/1.1 200")
            {
                break;
            }
        }
    };
    assert!(tokio::time::timeout(FRAME_WAIT, answered).await.is_ok());
    gateway.shutdown().await;
}

/// (soft, hard) "Max open files" of `pid`, from /proc/PID/limits.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_at_start_and_kept_from_children() {
    const LOW: u64 = 256;
    let launch = Launch {
        log_filter: Some("info"),
        soft_open_files: Some(LOW),
        ..Launch::default()
    };
    let binary = Binary::launch(
        &config(json!({"everything": everything()}), json!({})),
        launch,
    );
    let (soft, hard) = open_file_limits(binary.child.id());
    assert!(
        hard > LOW,
        "the hard open-file limit ({hard}) must exceed {LOW} for this test to show anything"
    );
    assert_eq!(
        soft, hard,
        "mcpmux runs with its soft limit raised to the hard one"
    );
    let log = binary.log();
    assert!(
        log.contains(&format!(
            "open-file limit raised from {LOW} to {hard}: room for about "
        )),
        "{log}"
    );

    // The child it starts, the guard, gets the limit mcpmux was started with (node, under
    // it, raises its own soft limit as it starts).
    let mut client = Client::connect(binary.addr).await;
    client.ready("everything").await;
    let guard = binary
        .processes()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).nth(1) == Some(b"guard".as_slice())
        })
        .expect("the guard of the server's process group");
    assert_eq!(open_file_limits(guard), (LOW, hard));
}

/// Waits for the gateway to close `ws`; returns the close code.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<u16> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("closed in time");
        match message {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn max_sessions_counts_sockets_from_the_upgrade() {
    const MAX: usize = 3;
    const EXTRA: usize = 5;
    // Time enough for every upgrade below to be answered before the first hello is due.
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"maxSessions": MAX, "helloTimeoutMs": 3000}),
    ))
    .await;
    let addr = gateway.addr;
    let url = format!("ws://{addr}/ws");
    let attempts = (0..MAX + EXTRA).map(|_| tokio_tungstenite::connect_async(url.clone()));
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in futures::future::join_all(attempts).await {
        match attempt {
            Ok((ws, _)) => admitted.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(other) => panic!("unexpected handshake error: {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (MAX, EXTRA));
    // None of them said hello, and still they count.
    assert_eq!(Client::offer(addr, "mcpmux.v1").await, Err(503));

    // Each holds its place until the gateway closes it for want of a hello.
    for ws in &mut admitted {
        assert_eq!(close_code(ws).await, Some(4508));
    }
    let mut clients = Vec::new();
    for _ in 0..MAX {
        clients.push(Client::connect(addr).await);
    }
    assert_eq!(Client::offer(addr, "mcpmux.v1").await, Err(503));
    drop(clients);
    gateway.shutdown().await;
}
