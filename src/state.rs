//! The state of a running gateway that its connections use: what sessions share
//! ([`SessionContext`]), the resume registry, who may connect, and the places among
//! `maxSessions`. Owned by [`crate::gateway::Gateway`], lent to every connection.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::context::SessionContext;
use crate::resume::Sessions;

/// What every connection of the gateway uses. Cheap to clone through its `Arc`.
#[derive(Debug)]
pub struct GatewayState {
    /// What client sessions share.
    pub context: Arc<SessionContext>,
    /// Every client session, attached or held for resume.
    pub sessions: Arc<Sessions>,
    /// One task per WebSocket connection (and per session held for resume), and one token
    /// per exchange in flight on the MCP routes: a shutdown waits for them all.
    pub connections: TaskTracker,
    /// Who may connect: origins, API keys, limits.
    pub access: Arc<Access>,
    /// `maxSessions` places, one taken by each socket from its upgrade.
    pub places: Arc<Semaphore>,
}
