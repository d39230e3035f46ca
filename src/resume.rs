//! Resumable sessions: every client session is registered by id, as live (attached to
//! a socket) or detached (held for `resumeWindowMs` after its socket dropped).
//!
//! A detached session is owned by a holder task that keeps it working: upstream calls go
//! on, status changes are applied, and every frame produced is kept in the outbox
//! (bounded by `resumeMaxFrames`/`resumeMaxBytes`). A `hello` with `resume` asks the
//! holder for the session; the holder checks that every frame after `last_seq` is still
//! kept and hands it over, or refuses. There is never a partial replay: a refused
//! resume ends the old session (its upstream sessions are deleted) and the client gets a
//! fresh one. Only the API key that opened a session may resume it: each session is
//! registered with its key's name, and a resume with another key finds no session.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outbox::Unresumable;
use crate::session::ClientSession;

/// Why a resume was refused; the client gets a fresh session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No such session (never existed, or already ended).
    #[error("no session with that id is waiting to be resumed")]
    Unknown,
    /// The session is attached to another live socket; that one has been ended.
    #[error("the session was attached to another connection, which has been closed")]
    Live,
    /// The resume window passed, or the gateway is shutting down.
    #[error("the session expired")]
    Expired,
    /// Frames after `last_seq` are not all kept.
    #[error("{0}")]
    Incomplete(#[from] Unresumable),
}

/// A request to hand a detached session to a new socket.
struct Takeover {
    last_seq: u64,
    reply: oneshot::Sender<Result<ClientSession, Refusal>>,
}

enum Slot {
    /// Attached; cancelling the token makes its connection close and end it.
    Live(CancellationToken),
    /// Detached; its holder takes takeover requests here.
    Detached(mpsc::Sender<Takeover>),
}

/// The name of the API key that opened a session (`None` on a gateway without keys).
type Owner = Option<Arc<str>>;

/// Every client session of the gateway, by id, with the key that opened it.
#[derive(Default)]
pub struct Sessions {
    slots: DashMap<String, (Owner, Slot)>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.slots.len())
            .finish()
    }
}

impl Sessions {
    /// Registers `id`, opened by key `owner`, as attached; the token is cancelled if
    /// another socket claims it.
    pub fn attach(&self, id: &str, owner: Owner) -> CancellationToken {
        let evict = CancellationToken::new();
        self.slots
            .insert(id.to_owned(), (owner, Slot::Live(evict.clone())));
        evict
    }

    /// Forgets `id` (the session ended).
    pub fn forget(&self, id: &str) {
        self.slots.remove(id);
    }

    /// Number of sessions, attached or detached.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there is no session.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes session `id` for a new socket of key `owner` that has every frame up to
    /// `last_seq`. A session opened by another key is left alone, as if unknown.
    pub async fn take(
        &self,
        id: &str,
        last_seq: u64,
        owner: Option<&str>,
    ) -> Result<ClientSession, Refusal> {
        // The slot leaves the map before anything is awaited: no guard is held across
        // an await, and no two sockets can take the same session.
        let slot = self
            .slots
            .remove_if(id, |_, (opener, _)| opener.as_deref() == owner)
            .map(|(_, (_, slot))| slot);
        match slot {
            None => Err(Refusal::Unknown),
            Some(Slot::Live(evict)) => {
                evict.cancel();
                Err(Refusal::Live)
            }
            Some(Slot::Detached(holder)) => {
                let (reply, answer) = oneshot::channel();
                if holder.send(Takeover { last_seq, reply }).await.is_err() {
                    return Err(Refusal::Expired);
                }
                answer.await.unwrap_or(Err(Refusal::Expired))
            }
        }
    }

    /// Holds a session whose socket dropped, for `window`, in a task of its own. A
    /// session whose socket was evicted (another socket claimed it) is ended instead.
    pub fn hold(&self, session: ClientSession, evicted: &CancellationToken, window: Duration) {
        let tracker = session.shared().connections.clone();
        let (sender, takeovers) = mpsc::channel(1);
        // Decided under the slot's lock, so a concurrent takeover either finds the
        // session held or has already evicted it.
        let held = match self.slots.entry(session.id.clone()) {
            Entry::Occupied(mut slot) if !evicted.is_cancelled() => {
                slot.get_mut().1 = Slot::Detached(sender.clone());
                true
            }
            _ => false,
        };
        if held {
            tracker.spawn(run_holder(session, takeovers, sender, window));
        } else {
            tracker.spawn(session.finish(None));
        }
    }
}

async fn run_holder(
    mut session: ClientSession,
    mut takeovers: mpsc::Receiver<Takeover>,
    own: mpsc::Sender<Takeover>,
    window: Duration,
) {
    session.link.outbox.detach();
    tracing::debug!(session = %session.id, "client session detached; held for resume");
    let outbox = session.link.outbox.clone();
    let shutdown = session.shared().shutdown.clone();
    let expiry = tokio::time::sleep(window);
    tokio::pin!(expiry);
    let drain = loop {
        tokio::select! {
            _ = &mut expiry => break None,
            _ = outbox.wait_closed() => break None,
            _ = shutdown.cancelled() => break Some(session.shared().config.shutdown_grace),
            event = session.changes.recv() => session.on_status_event(event).await,
            takeover = takeovers.recv() => {
                let Some(Takeover { last_seq, reply }) = takeover else { break None };
                match session.link.outbox.attach(last_seq) {
                    Ok(()) => {
                        tracing::debug!(session = %session.id, last_seq, "client session resumed");
                        match reply.send(Ok(session)) {
                            Ok(()) => return,
                            // The new socket went away meanwhile: end the session.
                            Err(Ok(returned)) => {
                                returned.finish(None).await;
                                return;
                            }
                            Err(Err(_)) => return,
                        }
                    }
                    Err(why) => {
                        let _ = reply.send(Err(why.into()));
                        break None;
                    }
                }
            }
        }
    };
    // Forget the slot unless a takeover already took it out.
    session.shared().sessions.slots.remove_if(
        &session.id,
        |_, (_, slot)| matches!(slot, Slot::Detached(s) if s.same_channel(&own)),
    );
    tracing::debug!(session = %session.id, "held client session expired");
    session.finish(drain).await;
}
