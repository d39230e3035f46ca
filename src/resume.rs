//! Resumable sessions: every client session is registered by id, whoever owns it: the
//! connection task of the socket it is attached to, or a holder task that keeps it for
//! `resumeWindowMs` after its socket dropped.
//!
//! A `hello` with `resume` claims the session through the registry: the claim goes to
//! the session's owner, which checks that every frame after `last_seq` is still kept and
//! hands the session over, or refuses. An attached session is handed over too (its old
//! socket is closed with 4002): a client whose network changed usually reconnects before
//! the gateway notices that its old socket is dead. There is never a partial replay: a
//! refused resume ends the old session (its upstream sessions are deleted) and the
//! client gets a fresh one. Only the API key that opened a session may resume it: each
//! session is registered with its key's name, and a claim with another key finds no
//! session (and leaves it alone).
//!
//! With a shared session store (several instances, docs/scale-out.md), a claim for a
//! session this instance does not hold goes to the store ([`take_from_store`]): if
//! the session's owner is gone (its lease expired) or released it (a drain), this
//! instance takes it, with every frame after `last_seq` (all of them or none), adopts
//! its upstream sessions with remote servers and reports the others `lost`. A balancer
//! fails over at once when an instance dies, before its lease lapses: a claim that
//! finds the owner's lease alive asks again until the lease had time to lapse
//! ([`OWNER_WAIT`]). An owner still alive after that keeps its session: the claimant
//! gets a fresh one. A session this very process owns in the store is never taken
//! again (it is live here). A takeover is refused, as the local path refuses, when
//! frames the client missed may be absent (before the session's recorded gap, or not
//! contiguous) or exceed this instance's resume limits or what its budget has room
//! for. Only the first proves the session unresumable: it is forgotten; on any other
//! failure after the take (limits, budget, a store error) it is released again, so that
//! the client's next try, here or elsewhere, can take it.
//!
//! A detached session's holder keeps it working: upstream calls go on, status changes
//! are applied, and every frame produced is kept in the outbox (bounded by
//! `resumeMaxFrames`/`resumeMaxBytes`). A key with `maxConnections` has at most that
//! many sessions held: holding one more ends its oldest held session (see
//! [`ApiKey::hold_session`](crate::auth::ApiKey::hold_session)).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio_util::task::TaskTracker;

use crate::auth::{Grant, HeldSlot};
use crate::context::{Place, SessionContext};
use crate::outbox::Unresumable;
use crate::registry::Change;
use crate::session::ClientSession;
use crate::store::sessions::{Ownership, SessionStore, SessionStoreError};
use crate::store::{LEASE, LEASE_RENEW};

/// How long a claim waits for the session's owner to answer.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// How long a claim from the store waits for the lease of the session's owner to lapse
/// (a lease's life and one renewal more): an owner whose lease outlives it is alive.
const OWNER_WAIT: Duration = LEASE.saturating_add(LEASE_RENEW);
/// How often a claim from the store asks again while the owner's lease lives.
const OWNER_POLL: Duration = Duration::from_millis(250);

/// Why a resume was refused; the client gets a fresh session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No such session (never existed, already ended, or claimed by another socket
    /// at the same moment).
    #[error("no session with that id is waiting to be resumed")]
    Unknown,
    /// The resume window passed, or the gateway is shutting down.
    #[error("the session expired")]
    Expired,
    /// The session's owner did not answer within [`CLAIM_WAIT`].
    #[error("the session is busy; try again")]
    Busy,
    /// Frames after `last_seq` are not all kept.
    #[error("{0}")]
    Incomplete(#[from] Unresumable),
    /// Another instance, still alive, owns the session.
    #[error("the session is owned by another live instance")]
    OwnedElsewhere,
    /// The shared session store could not be asked.
    #[error("{0}")]
    Store(String),
    /// The frames to replay from the shared store exceed this instance's resume limits
    /// (`resumeMaxFrames`, `resumeMaxBytes`, or what `resumeBudgetBytes` has left).
    #[error("the frames to replay exceed this instance's resume limits")]
    TooLarge,
}

impl From<SessionStoreError> for Refusal {
    fn from(err: SessionStoreError) -> Self {
        Self::Store(err.to_string())
    }
}

/// What a claim from the store needs of the claiming socket: its place among
/// `maxSessions`, what its key may do, and the change broadcast it subscribed to. Given
/// back when the claim is refused, for a fresh session.
pub type Claimant = (Place, Grant, broadcast::Receiver<Change>);

/// Takes session `id` from the shared store for a socket that has every frame up to
/// `last_seq` (see the module header). On refusal the claimant's parts come back.
pub async fn take_from_store(
    context: &Arc<SessionContext>,
    claimant: Claimant,
    id: &str,
    last_seq: u64,
) -> Result<ClientSession, (Refusal, Claimant)> {
    let store = &context.session_store;
    if !store.shared() {
        return Err((Refusal::Unknown, claimant));
    }
    let key = claimant.1.key_name().cloned();
    // A killed owner's lease lives on for a while: ask again until it had time to lapse.
    let give_up = tokio::time::Instant::now() + OWNER_WAIT;
    loop {
        match store.take(id, key.as_deref()).await {
            Ok(Ownership::Taken) => break,
            Ok(Ownership::Unknown) => return Err((Refusal::Unknown, claimant)),
            // Live in this process (a claim on it is under way): never a second copy.
            Ok(Ownership::Here) => return Err((Refusal::Busy, claimant)),
            Ok(Ownership::Elsewhere(owner)) => {
                if tokio::time::Instant::now() >= give_up {
                    tracing::debug!(%owner, "resume of a session a live instance owns; leaving it alone");
                    return Err((Refusal::OwnedElsewhere, claimant));
                }
                tokio::select! {
                    _ = context.shutdown.cancelled() => return Err((Refusal::Expired, claimant)),
                    _ = tokio::time::sleep(OWNER_POLL) => {}
                }
            }
            Err(err) => {
                // TAKE may have run and only its answer failed: give back what this
                // process may now own.
                release_untaken(store.as_ref(), id).await;
                return Err((err.into(), claimant));
            }
        }
    }
    let (mut stored, frames) = match store.read(id, last_seq).await {
        Ok(Some(read)) => read,
        Ok(None) => return Err((Refusal::Expired, claimant)),
        Err(err) => {
            release_untaken(store.as_ref(), id).await;
            return Err((err.into(), claimant));
        }
    };
    // As the local path: more frames than this instance keeps, or than the gateway-wide
    // budget has room for, are refused, never cut.
    let frames = frames.filter(|frames| {
        let bytes = frames.iter().map(|f| f.text.len()).sum();
        context.resume_budget.admits(bytes)
    });
    let refusal = match &frames {
        None => Some(Refusal::TooLarge),
        Some(_) if last_seq > stored.last_seq => Some(Unresumable::Future(last_seq).into()),
        Some(frames) if !stored.replays_all(last_seq, frames) => {
            Some(Unresumable::Incomplete(last_seq).into())
        }
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        if matches!(refusal, Refusal::TooLarge) {
            // Too much for this instance's limits or what its budget has left now: the
            // session stays whole for a retry, here or elsewhere.
            release_untaken(store.as_ref(), id).await;
        } else if let Err(err) = store.forget(id).await {
            // Never a partial replay: frames the client missed are gone for good, so
            // the session ends here (its frames go; its upstream sessions are left to
            // their servers' idle timeouts).
            tracing::debug!(%err, "could not forget an unresumable session");
        }
        return Err((refusal, claimant));
    }
    let frames = frames.unwrap_or_default();
    let replayed = frames.len();
    let upstreams = stored.upstreams.clone();
    let requests = std::mem::take(&mut stored.requests);
    let mut session = ClientSession::from_store(
        context.clone(),
        claimant,
        id.to_owned(),
        last_seq,
        &stored,
        frames,
    );
    tracing::info!(session = %session.log_id(), last_seq, replayed, upstreams = upstreams.len(), lost_requests = requests.len(), "client session taken over from another instance");
    session.adopt_upstreams(upstreams).await;
    session.answer_lost_requests(requests);
    Ok(session)
}

/// Gives session `id` back (owner released) after a takeover that took it in the store
/// but did not build it here: otherwise this process would own a session it does not
/// run, and every claim (here: [`Ownership::Here`]; elsewhere: a live owner) would be
/// refused until it expires. Only this process's ownership is released.
async fn release_untaken(store: &dyn SessionStore, id: &str) {
    match store.release(id).await {
        Ok(()) | Err(SessionStoreError::NotOwner) => {}
        Err(err) => {
            tracing::warn!(%err, "could not give back a session whose takeover failed; it stays owned here, unresumable, until it expires")
        }
    }
}

/// A new socket's claim on a session: it has every frame up to `last_seq`.
pub struct Claim {
    last_seq: u64,
    reply: oneshot::Sender<Result<ClientSession, Refusal>>,
}

/// The name of the API key that opened a session (`None` on a gateway without keys).
pub type KeyName = Option<Arc<str>>;

/// The owner's end of a session's registration: claims arrive here.
pub struct Claims {
    mailbox: Arc<Mailbox>,
    /// The key that opened the session.
    key: KeyName,
}

impl Claims {
    /// The next claim; pending until one arrives (the owner's other events then decide).
    pub async fn next(&mut self) -> Claim {
        loop {
            // Registered before the check: a claim posted in between is not missed.
            let arrived = self.mailbox.arrived.notified();
            if let Some(claim) = self.mailbox.lock().claim.take() {
                return claim;
            }
            arrived.await;
        }
    }
}

impl Drop for Claims {
    /// A claim that finds the owner gone is refused at once, not left to time out.
    fn drop(&mut self) {
        let unanswered = {
            let mut letter = self.mailbox.lock();
            letter.closed = true;
            letter.claim.take()
        };
        drop(unanswered);
    }
}

/// Where a claim waits for the owner of a session. One claim at a time: the session's
/// slot leaves the registry while a claim is under way. Every socket has one, so it is
/// kept small (a channel would cost about 1 KiB per idle socket).
#[derive(Default)]
struct Mailbox {
    letter: std::sync::Mutex<Letter>,
    arrived: Notify,
}

#[derive(Default)]
struct Letter {
    claim: Option<Claim>,
    /// The owner dropped its end: claims are refused.
    closed: bool,
}

impl Mailbox {
    /// Leaves a claim for the owner; gives it back when the owner is gone.
    fn post(&self, claim: Claim) -> Result<(), Claim> {
        {
            let mut letter = self.lock();
            if letter.closed {
                return Err(claim);
            }
            letter.claim = Some(claim);
        }
        // Stores a permit if the owner is not waiting yet.
        self.arrived.notify_one();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Letter> {
        self.letter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What became of a session after a claim.
pub enum Handover {
    /// The claiming socket has it.
    Done,
    /// The claim was refused; the session must end.
    Refused(ClientSession),
    /// The claiming socket went away before taking it: the session is still ours.
    Abandoned(ClientSession),
}

/// Hands `session` to `claim` if every frame after the claim's `last_seq` is kept. The
/// caller has stopped writing to any old socket (the outbox is detached).
pub fn hand_over(session: ClientSession, claim: Claim) -> Handover {
    let Claim { last_seq, reply } = claim;
    match session.link.outbox.attach(last_seq) {
        Ok(()) => {
            tracing::debug!(session = %session.log_id(), last_seq, "client session handed over");
            match reply.send(Ok(session)) {
                Ok(()) => Handover::Done,
                Err(Ok(returned)) => {
                    returned.link.outbox.detach();
                    Handover::Abandoned(returned)
                }
                Err(Err(_)) => Handover::Done,
            }
        }
        Err(why) => {
            tracing::debug!(session = %session.log_id(), last_seq, %why, "resume refused");
            let _ = reply.send(Err(why.into()));
            Handover::Refused(session)
        }
    }
}

/// Every client session of the gateway, by id, with the key that opened it.
pub struct Sessions {
    slots: DashMap<String, (KeyName, Arc<Mailbox>)>,
    /// Where the holders of detached sessions run (the gateway's connection tracker, so
    /// that a shutdown waits for them).
    holders: TaskTracker,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.slots.len())
            .finish()
    }
}

impl Sessions {
    /// An empty registry whose holders run in `holders`.
    pub fn new(holders: TaskTracker) -> Self {
        Self {
            slots: DashMap::new(),
            holders,
        }
    }

    /// Registers session `id`, opened by `key` and owned by the caller, who serves the
    /// claims.
    pub fn register(&self, id: &str, key: KeyName) -> Claims {
        let mailbox = Arc::new(Mailbox::default());
        self.slots
            .insert(id.to_owned(), (key.clone(), mailbox.clone()));
        Claims { mailbox, key }
    }

    /// Registers `id` again after a claim that was abandoned took it out.
    pub fn reinstate(&self, id: &str, claims: &Claims) {
        let slot = (claims.key.clone(), claims.mailbox.clone());
        self.slots.insert(id.to_owned(), slot);
    }

    /// Forgets `id` (the session ended), unless a newer owner registered it meanwhile.
    pub fn forget(&self, id: &str, claims: &Claims) {
        self.slots
            .remove_if(id, |_, (_, mailbox)| Arc::ptr_eq(mailbox, &claims.mailbox));
    }

    /// Claims session `id` for a new socket of `key` that has every frame up to
    /// `last_seq`. A session opened by another key is left alone, as if unknown.
    pub async fn take(
        &self,
        id: &str,
        last_seq: u64,
        key: Option<&str>,
    ) -> Result<ClientSession, Refusal> {
        // The slot leaves the map before anything is awaited: no guard is held across
        // an await, and no two sockets can claim the same session.
        let slot = self
            .slots
            .remove_if(id, |_, (opener, _)| opener.as_deref() == key);
        let Some((_, (_, owner))) = slot else {
            return Err(Refusal::Unknown);
        };
        let (reply, answer) = oneshot::channel();
        let claim = async {
            owner
                .post(Claim { last_seq, reply })
                .map_err(|_| Refusal::Expired)?;
            answer.await.unwrap_or(Err(Refusal::Expired))
        };
        // An owner busy for longer (its socket's writes stalled) hands the session over
        // when it gets to it; the claimant has gone by then, so the owner keeps it held.
        tokio::time::timeout(CLAIM_WAIT, claim)
            .await
            .unwrap_or(Err(Refusal::Busy))
    }

    /// Holds a session whose socket dropped, for `window`, in a task of its own that
    /// serves its claims; `held` is its place among its key's held sessions, if the key
    /// limits them: the session ends when a newer one takes that place.
    pub fn hold(
        self: &Arc<Self>,
        session: ClientSession,
        claims: Claims,
        window: Duration,
        held: Option<HeldSlot>,
    ) {
        let registry = self.clone();
        let span = tracing::info_span!(parent: None, "held", session = %session.log_id());
        let holder = run_holder(registry, session, claims, window, held);
        self.holders
            .spawn(tracing::Instrument::instrument(holder, span));
    }
}

/// Resolves when `held` was evicted; never without a slot.
async fn evicted(held: Option<&HeldSlot>) {
    match held {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

async fn run_holder(
    registry: Arc<Sessions>,
    mut session: ClientSession,
    mut claims: Claims,
    window: Duration,
    held: Option<HeldSlot>,
) {
    session.link.outbox.detach();
    tracing::debug!(session = %session.log_id(), "client session detached; held for resume");
    let outbox = session.link.outbox.clone();
    let shutdown = session.context().shutdown.clone();
    let expiry = tokio::time::sleep(window);
    tokio::pin!(expiry);
    let drain = loop {
        tokio::select! {
            _ = &mut expiry => break None,
            _ = outbox.wait_closed() => break None,
            _ = evicted(held.as_ref()) => {
                tracing::debug!(session = %session.log_id(), "held client session ended: its key holds maxConnections newer ones");
                break None;
            }
            _ = shutdown.cancelled() => break Some(session.context().config.shutdown_grace),
            event = session.changes.recv() => {
                if session.on_status_event(event).await.is_some() {
                    // Its key was revoked: nobody may resume it.
                    break None;
                }
            }
            claim = claims.next() => match hand_over(session, claim) {
                Handover::Done => return,
                Handover::Refused(refused) => {
                    session = refused;
                    break None;
                }
                Handover::Abandoned(returned) => {
                    session = returned;
                    registry.reinstate(&session.id, &claims);
                }
            },
        }
    };
    registry.forget(&session.id, &claims);
    tracing::debug!(session = %session.log_id(), "held client session ended");
    session.finish(drain).await;
    // Only now is the session's place free: an eviction waits for this.
    drop(held);
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn claim() -> (Claim, oneshot::Receiver<Result<ClientSession, Refusal>>) {
        let (reply, answer) = oneshot::channel();
        (Claim { last_seq: 0, reply }, answer)
    }

    #[tokio::test]
    async fn a_claim_posted_before_the_owner_waits_is_delivered() {
        let registry = Sessions::new(TaskTracker::new());
        let mut claims = registry.register("s", None);
        let mailbox = registry.slots.get("s").map(|slot| slot.1.clone()).unwrap();
        let (posted, _answer) = claim();
        assert!(mailbox.post(posted).is_ok());
        let delivered = claims.next().now_or_never();
        assert!(delivered.is_some(), "the owner finds the claim at once");
        assert!(claims.next().now_or_never().is_none(), "and only once");
    }

    #[tokio::test]
    async fn a_waiting_owner_is_woken_by_a_claim() {
        let registry = Sessions::new(TaskTracker::new());
        let mut claims = registry.register("s", None);
        let mailbox = registry.slots.get("s").map(|slot| slot.1.clone()).unwrap();
        let owner = tokio::spawn(async move { claims.next().await.last_seq });
        tokio::task::yield_now().await;
        let (mut posted, _answer) = claim();
        posted.last_seq = 7;
        assert!(mailbox.post(posted).is_ok());
        let seq = tokio::time::timeout(Duration::from_secs(5), owner).await;
        assert_eq!(seq.expect("woken").expect("no panic"), 7);
    }

    #[tokio::test]
    async fn an_owner_gone_refuses_claims_queued_or_new() {
        let registry = Sessions::new(TaskTracker::new());
        let claims = registry.register("s", None);
        let mailbox = registry.slots.get("s").map(|slot| slot.1.clone()).unwrap();
        let (queued, answer) = claim();
        assert!(mailbox.post(queued).is_ok());
        drop(claims);
        assert!(answer.await.is_err(), "the queued claim's reply is dropped");
        let (late, _answer) = claim();
        assert!(mailbox.post(late).is_err(), "a new claim is given back");
    }

    #[tokio::test]
    async fn forget_leaves_a_newer_registration_alone() {
        let registry = Sessions::new(TaskTracker::new());
        let old = registry.register("s", None);
        let _new = registry.register("s", None);
        registry.forget("s", &old);
        assert!(registry.slots.contains_key("s"));
    }
}
