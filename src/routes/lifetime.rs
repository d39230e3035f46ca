//! How long a relayed answer may flow: until the gateway shuts down, and no longer than
//! the access and the server instance it was opened under.
//!
//! An event stream (a `GET` stream, a `POST`'s answer stream, a legacy SSE stream) ends
//! when its caller's key is removed or may no longer use the server, when the server is
//! removed, and when the instance it flows from goes away (the server's entry changed, or
//! it restarted, went down or is restarting): the upstream session it belonged to is gone
//! with that instance. Every change of the registry's broadcast (a status or the access
//! rules) checks the stream again; falling behind the broadcast checks it too.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Access, Caller};
use crate::protocol::ServerState;
use crate::registry::{Registry, Server};

/// What a relayed answer was opened under.
pub struct Grant {
    /// The server's registry, whose broadcast announces every change.
    pub registry: Arc<Registry>,
    /// The access rules in force.
    pub access: Arc<Access>,
    /// Who opened it.
    pub caller: Caller,
    /// The server it flows from.
    pub server: Arc<Server>,
    /// The generation of the instance it flows from.
    pub generation: u64,
}

impl Grant {
    /// Resolves once the grant no longer holds. Subscribes at once, before checking, so
    /// that no change between the check and the wait goes unseen.
    pub fn lost(self) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.registry.subscribe();
        async move {
            loop {
                if !self.holds() {
                    return;
                }
                match changes.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }

    /// True while the server is the same, its instance the same and ready, and the
    /// caller may still use it.
    fn holds(&self) -> bool {
        let name = &*self.server.name;
        let current = self
            .registry
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(&s, &self.server));
        let status = self.server.status();
        let same_instance = status.state == ServerState::Ready
            && status
                .endpoint
                .is_some_and(|e| e.generation == self.generation);
        current && same_instance && self.caller_may_use(name)
    }

    /// The caller's key as the rules in force know it (removed or changed: gone) may
    /// use `name`; a caller without a key, while the gateway still takes none.
    fn caller_may_use(&self, name: &str) -> bool {
        match &self.caller {
            Caller::Key(key) => self
                .access
                .keys()
                .same(key)
                .is_some_and(|key| key.may_use(name)),
            Caller::Anonymous => !self.access.takes_keys(),
            Caller::Unverified => false,
        }
    }
}
