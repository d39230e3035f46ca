//! How long a relayed answer may flow: until the gateway shuts down, and no longer than
//! the access and the server instance it was opened under.
//!
//! An event stream (a `GET` stream, a `POST`'s answer stream, a legacy SSE stream) ends
//! when its caller's key is removed or may no longer use the server, when the server is
//! removed, and when the instance it flows from goes away (the server's entry changed, or
//! it restarted, went down or is restarting): the upstream session it belonged to is gone
//! with that instance. Every change of the registry's broadcast (a status or the access
//! rules) checks the stream again, except a status change of another server; falling
//! behind the broadcast checks it too. What ended the grant says what the client is
//! told ([`Grant::lost`]): `unknown_server` when the server or the access to it is gone,
//! `session_lost` when its instance is.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Access, Caller};
use crate::protocol::{ErrorCode, ServerState};
use crate::registry::{Change, Registry, Server};

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
    /// Resolves once the grant no longer holds, with why (see [`Grant::check`]).
    /// Subscribes at once, before checking, so that no change between the check and the
    /// wait goes unseen. A status change of another server does not wake it.
    pub fn lost(self) -> impl Future<Output = ErrorCode> + Send + 'static {
        let mut changes = self.registry.subscribe();
        async move {
            loop {
                if let Err(why) = self.check() {
                    return why;
                }
                loop {
                    match changes.recv().await {
                        Ok(Change::Status(change)) if change.server != self.server.name => {}
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return ErrorCode::ServerUnavailable,
                    }
                }
            }
        }
    }

    /// `Ok` while the server is the same, its instance the same and ready, and the
    /// caller may still use it; otherwise what the client is told: `unknown_server`
    /// (the server was removed, or the caller may no longer use it) or `session_lost`
    /// (its entry changed, or its instance went away).
    pub fn check(&self) -> Result<(), ErrorCode> {
        let name = &*self.server.name;
        let Some(current) = self.registry.get(name) else {
            return Err(ErrorCode::UnknownServer);
        };
        if !self.caller_may_use(name) {
            return Err(ErrorCode::UnknownServer);
        }
        let status = self.server.status();
        let same_instance = Arc::ptr_eq(&current, &self.server)
            && status.state == ServerState::Ready
            && status
                .endpoint
                .is_some_and(|e| e.generation == self.generation);
        match same_instance {
            true => Ok(()),
            false => Err(ErrorCode::SessionLost),
        }
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
