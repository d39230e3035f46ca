//! The state of a running gateway that its connections and routes use: what sessions
//! share ([`SessionContext`]), the store shared with other instances, the resume registry, who may connect, the places among
//! `maxSessions`, and readiness. Owned by [`crate::gateway::Gateway`], lent to every
//! connection.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::context::SessionContext;
use crate::registry::Server;
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
    pub readiness: Arc<Readiness>,
}

/// Whether every server's first start attempt has ended (`/readyz`); once it has, it
/// stays so. Set by the starts themselves ([`Readiness::latch_after`]), not by a probe.
#[derive(Debug)]
pub struct Readiness {
    started: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            started: watch::Sender::new(false),
        }
    }
}

impl Readiness {
    /// True once every server's first start attempt had ended.
    pub fn started(&self) -> bool {
        *self.started.borrow()
    }

    /// Waits until every server's first start attempt has ended.
    pub async fn wait(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|started| *started).await;
    }

    /// Records, once each of `servers` has ended its first start attempt (ready or
    /// down, or was removed meanwhile), that the gateway has started; gives up when
    /// `shutdown` fires first.
    pub async fn latch_after(&self, servers: Vec<Arc<Server>>, shutdown: CancellationToken) {
        let starts = async {
            for server in servers {
                server.started_after(0).await;
            }
        };
        tokio::select! {
            _ = starts => {
                self.started.send_replace(true);
            }
            _ = shutdown.cancelled() => {}
        }
    }
}
