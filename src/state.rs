//! The state of a running gateway that its connections and routes use: what sessions
//! share ([`SessionContext`]), the store shared with other instances, the resume registry, who may connect, the places among
//! `maxSessions`, and readiness. Owned by [`crate::gateway::Gateway`], lent to every
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::context::SessionContext;
use crate::resume::Sessions;
use crate::store::Store;

/// What every connection of the gateway uses. Cheap to clone through its `Arc`.
#[derive(Debug)]
pub struct GatewayState {
    /// What client sessions share.
    pub context: Arc<SessionContext>,
    /// What this instance shares with the others (the same handle as `context.store`).
    pub(crate) store: Store,
    /// Every client session, attached or held for resume.
    pub sessions: Arc<Sessions>,
    /// One task per WebSocket connection (and per session held for resume), and one token
    /// per exchange in flight on the MCP routes: a shutdown waits for them all.
    pub connections: TaskTracker,
    /// Who may connect: origins, API keys, limits.
    pub access: Arc<Access>,
    /// `maxSessions` places, one taken by each socket from its upgrade.
    pub places: Arc<Semaphore>,
    /// Whether every server's first start has ended (`/readyz`).
    pub readiness: Readiness,
}

/// Whether every server's first start attempt has ended (`/readyz`); once it has, it
/// stays so.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
}

impl Readiness {
    /// True once every server's first start attempt had ended.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Records that every server's first start attempt has ended.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }
}
