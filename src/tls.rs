//! TLS for `wss://` and `https://`: the certificate chain and key of `gateway.tls`, and a
//! listener that hands the HTTP server finished TLS streams.
//!
//! Handshakes run in tasks of their own (at most [`MAX_HANDSHAKES`] at once, at most
//! [`MAX_HANDSHAKES_PER_IP`] from one address, each within [`HANDSHAKE_TIMEOUT`] and its
//! first bytes within [`FIRST_BYTES_TIMEOUT`]), so a client that stalls its handshakes
//! holds up nobody else, and idle connections from one place cannot fill the slots.
//! Each connection counts against its address (`maxConnectionsPerIp`) from its TCP
//! accept. Both listeners, plain and TLS, report the client's address as a [`PeerAddr`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::{PendingPerIp, PendingSlot};
use crate::config::TlsConfig;
use crate::serve::{Accept, ConnectionsPerIp, pause_after, refuse};

/// Handshakes under way at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes under way at once from one client address (IPv6: one /64); one more
/// connection from it is closed at once.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;
/// The time a client has to send the first bytes of its handshake.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(3);
/// The time a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const READY_QUEUE: usize = 64;

/// Why TLS could not be set up. Names the file; never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("gateway.tls: cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM object of the kind needed.
    #[error("gateway.tls: {} holds no {what} in PEM form", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refused the certificate or key.
    #[error("gateway.tls: the certificate and key are not usable: {0}")]
    Rejected(#[from] rustls::Error),
}

/// The client's address, as the HTTP handlers see it over either listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the certificate chain and key of `config` into a TLS acceptor (HTTP/1.1).
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs_pem = read(&config.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certs_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: config.cert.clone(),
            what: "certificate",
        });
    }
    let key_pem = read(&config.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Missing {
        path: config.key.clone(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<Handshaken>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

/// A connection whose handshake is done, with its place among its address's
/// connections.
type Handshaken = (TlsStream<TcpStream>, SocketAddr, PendingSlot);

impl TlsListener {
    /// Accepts on `listener` and runs each handshake with `acceptor`; each connection
    /// counts against its address in `per_ip` from its TCP accept.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        per_ip: Arc<ConnectionsPerIp>,
    ) -> Self {
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let acceptor_task = tokio::spawn(accept_loop(listener, acceptor, per_ip, sender));
        Self {
            ready,
            acceptor_task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl Accept for TlsListener {
    type Io = TlsStream<TcpStream>;

    async fn next(&mut self) -> Handshaken {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The acceptor task ended (it does not, short of a panic): accept nothing.
            None => std::future::pending().await,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    per_ip: Arc<ConnectionsPerIp>,
    ready: mpsc::Sender<Handshaken>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let handshakes_per_ip = PendingPerIp::new(MAX_HANDSHAKES_PER_IP);
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                pause_after(&err).await;
                continue;
            }
        };
        let Some(slot) = per_ip.enter(peer.ip()) else {
            refuse(peer, per_ip.limit());
            continue;
        };
        let Some(under_way) = handshakes_per_ip.enter(peer.ip()) else {
            tracing::debug!(%peer, "connection closed: its address has {MAX_HANDSHAKES_PER_IP} TLS handshakes under way");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = async {
                // A client that sends nothing gives its slot back soon.
                match tokio::time::timeout(FIRST_BYTES_TIMEOUT, tcp.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return Ok(Err(err)),
                    Err(elapsed) => return Err(elapsed),
                }
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            };
            let handshake = handshake.await;
            drop((permit, under_way));
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer, slot)).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("mcpmux-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let config = TlsConfig {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(
            err.starts_with("gateway.tls: cannot read /nonexistent/cert.pem"),
            "{err}"
        );
        let empty = temp("empty.pem", "no PEM here\n");
        let config = TlsConfig {
            cert: empty.clone(),
            key: empty.clone(),
        };
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(err.contains("holds no certificate in PEM form"), "{err}");
        let _ = std::fs::remove_file(empty);
    }
}
