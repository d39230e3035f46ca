//! Serving the gateway's HTTP/1.1 connections, plain or TLS: the per-address cap on open
//! connections, hyper with a header-read timeout, WebSocket upgrades, and the graceful
//! stop (no new connections; open ones finish their request and close).
//!
//! A connection counts against its client address (IPv6: its /64) from its accept until
//! it closes, WebSockets included (`maxConnectionsPerIp`); one more is closed at once.
//! hyper's header-read timer (`headerTimeoutMs`) runs from the moment the connection
//! waits for a request head until the head is complete, so it bounds both a half-sent
//! request and a kept-alive connection idling between requests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::auth::{PendingPerIp, PendingSlot};
use crate::tls::PeerAddr;

/// Open connections counted per client address: the `maxPendingPerIp` counter, reused.
pub type ConnectionsPerIp = PendingPerIp;

/// Where accepted connections come from.
pub trait Accept: Send + 'static {
    /// An accepted connection's stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection, its peer, and its place among its address's connections.
    fn next(&mut self) -> impl Future<Output = (Self::Io, SocketAddr, PendingSlot)> + Send;
}

/// Plain TCP connections, each counted against its address at accept.
pub struct PlainAccept {
    listener: TcpListener,
    per_ip: std::sync::Arc<ConnectionsPerIp>,
}

impl PlainAccept {
    /// Accepts from `listener`, at most `per_ip`'s limit per address.
    pub fn new(listener: TcpListener, per_ip: std::sync::Arc<ConnectionsPerIp>) -> Self {
        Self { listener, per_ip }
    }
}

impl Accept for PlainAccept {
    type Io = TcpStream;

    async fn next(&mut self) -> (TcpStream, SocketAddr, PendingSlot) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    pause_after(&err).await;
                    continue;
                }
            };
            match self.per_ip.enter(peer.ip()) {
                Some(slot) => return (tcp, peer, slot),
                None => refuse(peer, self.per_ip.limit()),
            }
        }
    }
}

/// Logs a connection closed for `maxConnectionsPerIp` (dropping it closes it).
pub fn refuse(peer: SocketAddr, limit: usize) {
    tracing::debug!(%peer, limit, "connection closed: its address has maxConnectionsPerIp open");
}

/// After a failed accept: errors of one connection are skipped; others (out of file
/// descriptors, say) pause accepting for a second rather than spin.
pub async fn pause_after(err: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%err, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves `app` on every connection from `incoming` until `stop` is cancelled, then
/// waits for open HTTP exchanges to finish (upgraded WebSockets are the gateway's own).
pub async fn serve<A: Accept>(
    mut incoming: A,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    loop {
        let (io, peer, slot) = tokio::select! {
            _ = stop.cancelled() => break,
            next = incoming.next() => next,
        };
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            // A Router is always ready: no poll_ready needed.
            router.clone().call(request)
        });
        let io = TokioIo::new(Counted { io, _slot: slot });
        let connection = http.serve_connection(io, service).with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.cancelled() => {
                    // The request under way finishes; the connection then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(%peer, %err, "HTTP connection ended");
            }
        });
    }
    drop(incoming);
    connections.close();
    connections.wait().await;
}

/// A stream that holds its place among its address's connections until it is dropped
/// (after an upgrade, when the WebSocket closes).
struct Counted<T> {
    io: T,
    _slot: PendingSlot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
