//! The configured servers as the rest of the gateway sees them: a name, a lifecycle
//! state, and (when ready) the endpoint of the current instance.
//!
//! A [`Server`] is written by its owner (the stdio supervisor, or nobody for a remote
//! server, which is always ready) and read by every client session. Each change is also
//! announced on a gateway-wide broadcast so that connections can send `status` frames.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use crate::protocol::ServerState;
use crate::upstream::{Endpoint, UpstreamError};

/// How many status changes a slow connection may fall behind before it resynchronises
/// from the current states (it then sends each server's current state once).
pub const STATUS_BROADCAST_CAPACITY: usize = 256;

/// A server's current status.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// The lifecycle state clients see.
    pub state: ServerState,
    /// The current instance, when ready.
    pub endpoint: Option<Arc<Endpoint>>,
    /// The process id of the mcp-proxy child, for stdio servers that are running.
    pub pid: Option<u32>,
    /// How many times the server has been restarted.
    pub restarts: u64,
    /// Why the last instance stopped or failed to start.
    pub last_error: Option<String>,
}

/// One status change, as broadcast to connections.
#[derive(Debug, Clone)]
pub struct StatusChange {
    /// The server's name.
    pub server: Arc<str>,
    /// Its new state.
    pub state: ServerState,
    /// The generation of its instance when ready, else `None`.
    pub generation: Option<u64>,
}

/// A configured server.
#[derive(Debug)]
pub struct Server {
    /// The configured name (validated `[A-Za-z0-9_.-]{1,64}`).
    pub name: Arc<str>,
    status: watch::Sender<ServerStatus>,
    changes: broadcast::Sender<StatusChange>,
    /// Raised when a reply suggests the stdio server behind mcp-proxy is gone, so the
    /// supervisor checks at once instead of at its next tick.
    suspect: Notify,
    /// Set once the server turned out to speak only the legacy HTTP+SSE transport.
    legacy_sse: AtomicBool,
}

impl Server {
    /// A server in `initial` state, announcing changes on `changes`.
    pub fn new(
        name: &str,
        initial: ServerStatus,
        changes: broadcast::Sender<StatusChange>,
    ) -> Self {
        Self {
            name: Arc::from(name),
            status: watch::Sender::new(initial),
            changes,
            suspect: Notify::new(),
            legacy_sse: AtomicBool::new(false),
        }
    }

    /// A snapshot of the current status.
    pub fn status(&self) -> ServerStatus {
        self.status.borrow().clone()
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.status.borrow().state
    }

    /// Publishes a new status and announces it when the state or instance changed.
    pub fn publish(&self, status: ServerStatus) {
        let change = StatusChange {
            server: self.name.clone(),
            state: status.state,
            generation: status.endpoint.as_ref().map(|e| e.generation),
        };
        let previous = self.status.send_replace(status);
        let changed = previous.state != change.state
            || previous.endpoint.as_ref().map(|e| e.generation) != change.generation;
        if changed {
            tracing::info!(server = %self.name, state = ?change.state, "server status");
            // No receivers (no connection yet) is fine.
            let _ = self.changes.send(change);
        }
    }

    /// Updates the status in place (for fields clients do not see).
    pub fn update(&self, edit: impl FnOnce(&mut ServerStatus)) {
        let mut status = self.status();
        edit(&mut status);
        self.publish(status);
    }

    /// The endpoint of the ready instance, waiting up to `wait` while the server is
    /// starting or restarting. A server that is down fails at once.
    pub async fn ready_endpoint(&self, wait: Duration) -> Result<Arc<Endpoint>, UpstreamError> {
        let mut rx = self.status.subscribe();
        let outcome = tokio::time::timeout(wait, async {
            let status = rx
                .wait_for(|s| {
                    s.state != ServerState::Starting && s.state != ServerState::Restarting
                })
                .await
                .map_err(|_| UpstreamError::Unavailable("down"))?;
            match (&status.state, &status.endpoint) {
                (ServerState::Ready, Some(endpoint)) => Ok(endpoint.clone()),
                _ => Err(UpstreamError::Unavailable("down")),
            }
        })
        .await;
        outcome.unwrap_or(Err(UpstreamError::Unavailable("not ready yet")))
    }

    /// True once the server was found to speak only the legacy HTTP+SSE transport.
    pub fn speaks_legacy_sse(&self) -> bool {
        self.legacy_sse.load(Ordering::Relaxed)
    }

    /// Remembers that the server speaks only the legacy HTTP+SSE transport.
    pub fn remember_legacy_sse(&self) {
        self.legacy_sse.store(true, Ordering::Relaxed);
    }

    /// Asks the supervisor to check the server now.
    pub fn suspect(&self) {
        self.suspect.notify_one();
    }

    /// Resolves when someone called [`Server::suspect`].
    pub async fn suspected(&self) {
        self.suspect.notified().await;
    }
}

/// Every configured server, by name (sorted, so `welcome` lists them in a stable order).
pub type Servers = BTreeMap<String, Arc<Server>>;
