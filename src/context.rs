//! What every client session shares with the others: the configuration, the servers and
//! their changes, the upstream HTTP client, the shutdown signal, the tracker of tasks
//! that may outlive a session, the metrics and the store shared with other instances; and a session's place among
//! `maxSessions`.
//!
//! A narrow handle: it knows nothing of sockets, routes or the resume registry, so that
//! sessions depend on it and not on the gateway that owns them.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::outbox::ResumeBudget;
use crate::registry::Registry;
use crate::store::Store;
use crate::store::sessions::SessionStore;
use crate::upstream::http::HttpClient;

/// The gateway-wide things a client session uses.
#[derive(Debug)]
pub struct SessionContext {
    /// Limits and timeouts.
    pub config: GatewayConfig,
    /// Every configured server, as it is now, and the broadcast of their changes.
    pub servers: Arc<Registry>,
    /// The HTTP client for every upstream exchange.
    pub http: HttpClient,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// Tasks that may outlive their session (upstream DELETEs, abandoned initializes).
    pub background: TaskTracker,
    /// Bytes of frames kept for resume by all sessions (`resumeBudgetBytes`).
    pub resume_budget: Arc<ResumeBudget>,
    /// Where the gateway's metrics are recorded.
    pub metrics: Metrics,
    /// Where client sessions are kept for resume on another instance (in memory only,
    /// unless a shared store is configured).
    pub session_store: Arc<dyn SessionStore>,
    /// What this instance shares with the others (in memory without a store).
    #[allow(dead_code)] // read by the shared limits and sessions
    pub(crate) store: Store,
}

/// A socket's place among `maxSessions`, taken when its upgrade is accepted: the socket
/// holds it until its `hello` is handled, then the session it opened (or resumed into)
/// holds one until it ends. So concurrent upgrades cannot overshoot the limit, and a
/// socket that never says hello counts until it is closed.
#[derive(Debug)]
pub struct Place {
    /// Held, never read: dropping it frees the place.
    _permit: OwnedSemaphorePermit,
}

impl Place {
    /// The place `permit` stands for.
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self { _permit: permit }
    }
}
