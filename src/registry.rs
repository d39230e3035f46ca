//! The configured servers as the rest of the gateway sees them: a name, a lifecycle
//! state, and (when ready) the endpoint of the current instance; and the [`Registry`]
//! of every server by name, which changes while the gateway runs.
//!
//! A [`Server`] is written by its owner (the stdio supervisor of its current
//! configuration, or the fleet for a remote server) and read by every client session.
//! Each change is announced on a gateway-wide broadcast, in the order the changes were
//! made, so that connections can send `status` frames. Ownership passes with
//! [`Server::take_over`]: a supervisor that was replaced can no longer change the
//! status, so a stale `ready` never follows a newer `restarting`. `removed` is final.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, watch};

use crate::protocol::ServerState;
use crate::upstream::{Endpoint, UpstreamError};

/// How many changes a slow connection may fall behind before it resynchronises from
/// the current states and access rules (it then sends each server's current state once).
pub const CHANGE_BROADCAST_CAPACITY: usize = 256;

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
    /// Start attempts that have ended, ready or failed: `/readyz` and the admin API wait
    /// on it.
    pub starts: u64,
    /// When the current instance became ready.
    pub ready_since: Option<Instant>,
}

impl ServerStatus {
    /// The status of a server that has not started yet, in `state`.
    pub fn new(state: ServerState) -> Self {
        Self {
            state,
            endpoint: None,
            pid: None,
            restarts: 0,
            last_error: None,
            starts: 0,
            ready_since: None,
        }
    }

    /// Milliseconds since the current instance became ready; `None` unless ready.
    pub fn uptime_ms(&self) -> Option<u64> {
        let since = self
            .ready_since
            .filter(|_| self.state == ServerState::Ready)?;
        Some(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
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

/// What connections are told about, in the order it happened.
#[derive(Debug, Clone)]
pub enum Change {
    /// A server's state or instance changed (or it was added, or removed).
    Status(StatusChange),
    /// The access rules (API keys and what they may use) were replaced: every session
    /// checks its key again.
    Access,
}

/// A status and who may change it.
#[derive(Debug)]
struct Record {
    status: ServerStatus,
    /// The current owner; [`Server::update_as`] from any other is ignored.
    owner: u64,
}

/// A configured server.
#[derive(Debug)]
pub struct Server {
    /// The configured name (validated `[A-Za-z0-9_.-]{1,64}`).
    pub name: Arc<str>,
    record: watch::Sender<Record>,
    changes: broadcast::Sender<Change>,
    /// Raised when a reply suggests the stdio server behind mcp-proxy is gone, so the
    /// supervisor checks at once instead of at its next tick.
    suspect: Notify,
    /// Set once the server turned out to speak only the legacy HTTP+SSE transport.
    legacy_sse: AtomicBool,
    /// Set while its configured entry is a remote server over Streamable HTTP, which
    /// every instance reaches alike (see [`Server::reachable_anywhere`]).
    reachable_anywhere: AtomicBool,
    /// The last instance generation handed out.
    generations: AtomicU64,
}

impl Server {
    /// A server in `initial` state, announcing changes on `changes`.
    pub fn new(name: &str, initial: ServerStatus, changes: broadcast::Sender<Change>) -> Self {
        Self {
            name: Arc::from(name),
            record: watch::Sender::new(Record {
                status: initial,
                owner: 0,
            }),
            changes,
            suspect: Notify::new(),
            legacy_sse: AtomicBool::new(false),
            reachable_anywhere: AtomicBool::new(false),
            generations: AtomicU64::new(0),
        }
    }

    /// A snapshot of the current status.
    pub fn status(&self) -> ServerStatus {
        self.record.borrow().status.clone()
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.record.borrow().status.state
    }

    /// True once the server was removed from the configuration (which is final).
    pub fn is_removed(&self) -> bool {
        self.state() == ServerState::Removed
    }

    /// The generation for a new instance: every instance of the server gets a new one,
    /// so that sessions on an older instance are known to be lost.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Edits the status, whoever owns it (for the gateway itself: its shutdown). Does
    /// nothing once the server was removed.
    pub fn update(&self, edit: impl FnOnce(&mut ServerStatus)) {
        self.modify(|record| {
            edit(&mut record.status);
            true
        });
    }

    /// Edits the status if `owner` still owns the server; false (and nothing changed)
    /// once another took it over or it was removed.
    pub fn update_as(&self, owner: u64, edit: impl FnOnce(&mut ServerStatus)) -> bool {
        self.modify(|record| {
            if record.owner != owner {
                return false;
            }
            edit(&mut record.status);
            true
        })
    }

    /// Takes the server over for a new owner, editing its status in the same step;
    /// returns the new owner's token and the status after the edit. The previous
    /// owner's later updates are ignored.
    pub fn take_over(&self, edit: impl FnOnce(&mut ServerStatus)) -> (u64, ServerStatus) {
        let mut taken = None;
        self.modify(|record| {
            record.owner += 1;
            edit(&mut record.status);
            taken = Some((record.owner, record.status.clone()));
            true
        });
        taken.unwrap_or_else(|| (u64::MAX, self.status()))
    }

    /// Marks the server removed from the configuration: announced once, and final.
    fn remove(&self) {
        self.modify(|record| {
            record.owner += 1;
            let status = &mut record.status;
            status.state = ServerState::Removed;
            status.endpoint = None;
            status.pid = None;
            true
        });
    }

    /// Applies `edit` to the record under the status lock (unless the server was
    /// removed), and announces a change of state or instance. The announcement is made
    /// under the same lock, so connections see changes in the order they were made.
    fn modify(&self, edit: impl FnOnce(&mut Record) -> bool) -> bool {
        let changes = &self.changes;
        let name = &self.name;
        let mut applied = false;
        self.record.send_if_modified(|record| {
            let before = (
                record.status.state,
                record.status.endpoint.as_ref().map(|e| e.generation),
            );
            if before.0 == ServerState::Removed || !edit(record) {
                return false;
            }
            applied = true;
            let status = &mut record.status;
            let after = (status.state, status.endpoint.as_ref().map(|e| e.generation));
            if after != before {
                status.ready_since = (after.0 == ServerState::Ready).then(Instant::now);
                tracing::info!(server = %name, state = ?after.0, "server status");
                // No receivers (no connection yet) is fine.
                let _ = changes.send(Change::Status(StatusChange {
                    server: name.clone(),
                    state: after.0,
                    generation: after.1,
                }));
            }
            true
        });
        applied
    }

    /// The endpoint of the ready instance, waiting up to `wait` while the server is
    /// starting or restarting. A server that is down fails at once; one that was removed
    /// is answered as unknown.
    pub async fn ready_endpoint(&self, wait: Duration) -> Result<Arc<Endpoint>, UpstreamError> {
        let mut rx = self.record.subscribe();
        let outcome = tokio::time::timeout(wait, async {
            let record = rx
                .wait_for(|r| {
                    !matches!(
                        r.status.state,
                        ServerState::Starting | ServerState::Restarting
                    )
                })
                .await
                .map_err(|_| UpstreamError::Unavailable("down"))?;
            match (&record.status.state, &record.status.endpoint) {
                (ServerState::Ready, Some(endpoint)) => Ok(endpoint.clone()),
                (ServerState::Removed, _) => {
                    Err(UpstreamError::UnknownServer(self.name.to_string()))
                }
                _ => Err(UpstreamError::Unavailable("down")),
            }
        })
        .await;
        outcome.unwrap_or(Err(UpstreamError::Unavailable("not ready yet")))
    }

    /// Waits until more than `starts` start attempts have ended (or the server was
    /// removed), and returns the status then.
    pub async fn started_after(&self, starts: u64) -> ServerStatus {
        let mut rx = self.record.subscribe();
        let waited = rx
            .wait_for(|r| r.status.starts > starts || r.status.state == ServerState::Removed)
            .await
            .map(|r| r.status.clone());
        waited.unwrap_or_else(|_| self.status())
    }

    /// True once the server was found to speak only the legacy HTTP+SSE transport.
    pub fn speaks_legacy_sse(&self) -> bool {
        self.legacy_sse.load(Ordering::Relaxed)
    }

    /// Remembers that the server speaks only the legacy HTTP+SSE transport.
    pub fn remember_legacy_sse(&self) {
        self.legacy_sse.store(true, Ordering::Relaxed);
    }

    /// Forgets what was learned about the server's transport (its entry changed).
    pub fn forget_transport(&self) {
        self.legacy_sse.store(false, Ordering::Relaxed);
    }

    /// True while the configured entry is a remote server over Streamable HTTP: every
    /// instance reaches it alike, so its upstream sessions may move between instances.
    /// False for a stdio server (its mcp-proxy child is local to this instance) and for
    /// a remote server configured for the legacy HTTP+SSE transport (bound to its
    /// stream). Known from the entry, before any child starts.
    pub fn reachable_anywhere(&self) -> bool {
        self.reachable_anywhere.load(Ordering::Relaxed)
    }

    /// Records what the configured entry says (see [`Server::reachable_anywhere`]).
    pub fn set_reachable_anywhere(&self, reachable: bool) {
        self.reachable_anywhere.store(reachable, Ordering::Relaxed);
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

/// Every server, by name (sorted, so `welcome` lists them in a stable order).
pub type Servers = BTreeMap<String, Arc<Server>>;

/// Every configured server by name, as it is now: servers are added and removed while
/// the gateway runs. Readers take a snapshot (an `Arc`, no lock held); writers replace
/// the map as a whole. Also the broadcast of every [`Change`].
#[derive(Debug)]
pub struct Registry {
    servers: RwLock<Arc<Servers>>,
    changes: broadcast::Sender<Change>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BROADCAST_CAPACITY);
        Self {
            servers: RwLock::new(Arc::new(Servers::new())),
            changes,
        }
    }

    /// The servers now.
    pub fn snapshot(&self) -> Arc<Servers> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server named `name`, if it exists now.
    pub fn get(&self, name: &str) -> Option<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells every session that the access rules were replaced.
    pub fn announce_access(&self) {
        let _ = self.changes.send(Change::Access);
    }

    /// Adds a server named `name` in `initial` state and announces it. A server of that
    /// name that still exists is removed first.
    pub fn add(&self, name: &str, initial: ServerStatus) -> Arc<Server> {
        let server = Arc::new(Server::new(name, initial, self.changes.clone()));
        let previous = self.edit(|servers| servers.insert(name.to_owned(), server.clone()));
        if let Some(previous) = previous {
            previous.remove();
        }
        let status = server.status();
        let _ = self.changes.send(Change::Status(StatusChange {
            server: server.name.clone(),
            state: status.state,
            generation: status.endpoint.as_ref().map(|e| e.generation),
        }));
        server
    }

    /// Takes the server named `name` out and marks it removed (announced once); frames
    /// naming it are answered as for a server that never existed from now on.
    pub fn remove(&self, name: &str) -> Option<Arc<Server>> {
        let removed = self.edit(|servers| servers.remove(name))?;
        removed.remove();
        Some(removed)
    }

    fn edit<T>(&self, change: impl FnOnce(&mut Servers) -> T) -> T {
        let mut current = self.servers.write().unwrap_or_else(|p| p.into_inner());
        let mut servers = Servers::clone(&current);
        let out = change(&mut servers);
        *current = Arc::new(servers);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(rx: &mut broadcast::Receiver<Change>) -> Vec<(String, ServerState)> {
        let mut seen = Vec::new();
        while let Ok(change) = rx.try_recv() {
            if let Change::Status(change) = change {
                seen.push((change.server.to_string(), change.state));
            }
        }
        seen
    }

    #[test]
    fn a_replaced_owner_can_no_longer_change_the_status() {
        let registry = Registry::new();
        let mut rx = registry.subscribe();
        let server = registry.add("a", ServerStatus::new(ServerState::Starting));
        let (first, _) = server.take_over(|_| {});
        assert!(server.update_as(first, |s| s.state = ServerState::Ready));
        let (second, status) = server.take_over(|s| {
            s.state = ServerState::Restarting;
            s.restarts += 1;
        });
        assert_eq!(status.restarts, 1);
        assert!(!server.update_as(first, |s| s.state = ServerState::Ready));
        assert_eq!(server.state(), ServerState::Restarting);
        assert!(server.update_as(second, |s| s.state = ServerState::Ready));
        use ServerState::*;
        let expected = [Starting, Ready, Restarting, Ready].map(|s| ("a".to_owned(), s));
        assert_eq!(statuses(&mut rx), expected);
    }

    #[test]
    fn removed_is_final_and_announced_once() {
        let registry = Registry::new();
        let server = registry.add("a", ServerStatus::new(ServerState::Starting));
        let mut rx = registry.subscribe();
        let removed = registry.remove("a").expect("it was there");
        assert!(Arc::ptr_eq(&removed, &server));
        assert!(registry.get("a").is_none() && registry.snapshot().is_empty());
        server.update(|s| s.state = ServerState::Down);
        assert!(!server.update_as(0, |s| s.state = ServerState::Ready));
        assert!(server.is_removed());
        assert_eq!(statuses(&mut rx), [("a".to_owned(), ServerState::Removed)]);
        assert!(registry.remove("a").is_none());
    }

    #[test]
    fn adding_a_name_again_removes_the_old_server() {
        let registry = Registry::new();
        let old = registry.add("a", ServerStatus::new(ServerState::Starting));
        let new = registry.add("a", ServerStatus::new(ServerState::Starting));
        assert!(old.is_removed() && !new.is_removed());
        assert!(Arc::ptr_eq(&registry.get("a").expect("a"), &new));
    }

    #[tokio::test]
    async fn waiting_for_a_start_ends_with_the_attempt_or_the_removal() {
        let registry = Registry::new();
        let server = registry.add("a", ServerStatus::new(ServerState::Starting));
        let waiter = {
            let server = server.clone();
            tokio::spawn(async move { server.started_after(0).await })
        };
        server.update(|s| {
            s.state = ServerState::Down;
            s.starts += 1;
        });
        assert_eq!(waiter.await.expect("joined").state, ServerState::Down);
        let waiter = {
            let server = server.clone();
            tokio::spawn(async move { server.started_after(1).await })
        };
        registry.remove("a");
        assert_eq!(waiter.await.expect("joined").state, ServerState::Removed);
        let unknown = server.ready_endpoint(Duration::from_secs(1)).await;
        assert!(matches!(unknown, Err(UpstreamError::UnknownServer(_))));
    }
}
