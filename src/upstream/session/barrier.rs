//! The initialize barrier of one upstream session, and what `initialize` established:
//! the upstream session id and the negotiated protocol version.
//!
//! While an `initialize` is on its way, later messages wait for its reply headers, so
//! that they carry the new session id. The id itself is recorded here until the session
//! ends, and handed out exactly once to be deleted upstream: also when the reply of an
//! `initialize` arrives after its session was already given up (closed, replaced or
//! detached), so no upstream session is left behind.

use std::sync::Mutex;

use tokio::sync::watch;

use crate::upstream::UpstreamError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No initialize carried: messages go without a session id.
    Fresh,
    /// An initialize is on its way; other messages wait for its reply headers.
    Initializing,
    /// Initialized (with or without a session id: some servers use none).
    Open,
}

#[derive(Debug, Default)]
struct Established {
    /// `Mcp-Session-Id` from the initialize reply.
    session_id: Option<String>,
    /// The protocol version the initialize result negotiated.
    protocol_version: Option<String>,
    /// The session ended: an id arriving now must be deleted by whoever received it.
    ended: bool,
}

/// The initialize barrier and the upstream session id.
#[derive(Debug)]
pub(super) struct Barrier {
    phase: watch::Sender<Phase>,
    established: Mutex<Established>,
}

impl Barrier {
    /// A barrier that is up from the start when the first message is an `initialize`.
    pub(super) fn new(initializing: bool) -> Self {
        let phase = if initializing {
            Phase::Initializing
        } else {
            Phase::Fresh
        };
        Self {
            phase: watch::Sender::new(phase),
            established: Mutex::new(Established::default()),
        }
    }

    /// Takes the barrier down without a session: the initialize failed or was refused.
    pub(super) fn lower(&self) {
        self.phase
            .send_if_modified(|p| std::mem::replace(p, Phase::Fresh) == Phase::Initializing);
    }

    /// The initialize was answered: later messages go, with `session_id` if given.
    /// False when the session already ended: the caller must delete `session_id`.
    pub(super) fn open(&self, session_id: Option<&str>) -> bool {
        let adopted = {
            let mut established = self.lock();
            if !established.ended {
                established.session_id = session_id.map(str::to_owned);
            }
            !established.ended
        };
        self.phase.send_replace(Phase::Open);
        adopted
    }

    /// Remembers the negotiated protocol version, sent on later requests.
    pub(super) fn set_protocol_version(&self, version: Option<String>) {
        self.lock().protocol_version = version;
    }

    /// The upstream session id, once initialize has given one.
    pub(super) fn session_id(&self) -> Option<String> {
        self.lock().session_id.clone()
    }

    /// The session id and protocol version for a request.
    pub(super) fn headers(&self) -> (Option<String>, Option<String>) {
        let established = self.lock();
        (
            established.session_id.clone(),
            established.protocol_version.clone(),
        )
    }

    /// Waits until no initialize is on its way, then gives [`Self::headers`].
    pub(super) async fn wait_past_initialize(
        &self,
    ) -> Result<(Option<String>, Option<String>), UpstreamError> {
        let mut phase = self.phase.subscribe();
        phase
            .wait_for(|p| *p != Phase::Initializing)
            .await
            .map_err(|_| UpstreamError::SessionClosed)?;
        Ok(self.headers())
    }

    /// The session ended: returns the id to delete upstream, once. An id that arrives
    /// later is refused by [`Self::open`].
    pub(super) fn end(&self) -> Option<String> {
        let mut established = self.lock();
        established.ended = true;
        established.session_id.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Established> {
        self.established.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn messages_wait_for_the_initialize_reply_and_get_its_session_id() {
        let barrier = std::sync::Arc::new(Barrier::new(true));
        let mut waiting = tokio::spawn({
            let barrier = barrier.clone();
            async move { barrier.wait_past_initialize().await }
        });
        tokio::task::yield_now().await;
        assert!((&mut waiting).now_or_never().is_none());
        barrier.set_protocol_version(Some("2025-11-25".into()));
        assert!(barrier.open(Some("abc")));
        let (id, version) = waiting.await.unwrap().unwrap();
        assert_eq!(id.as_deref(), Some("abc"));
        assert_eq!(version.as_deref(), Some("2025-11-25"));
    }

    #[tokio::test]
    async fn a_failed_initialize_lets_messages_go_without_a_session() {
        let barrier = Barrier::new(true);
        barrier.lower();
        let (id, _) = barrier.wait_past_initialize().await.unwrap();
        assert_eq!(id, None);
    }

    #[test]
    fn the_id_is_handed_out_for_deletion_exactly_once() {
        let barrier = Barrier::new(true);
        assert!(barrier.open(Some("abc")));
        assert_eq!(barrier.end().as_deref(), Some("abc"));
        assert_eq!(barrier.end(), None);
    }

    #[test]
    fn an_id_arriving_after_the_end_is_refused_for_the_caller_to_delete() {
        let barrier = Barrier::new(true);
        assert_eq!(barrier.end(), None);
        assert!(!barrier.open(Some("late")));
        assert_eq!(barrier.session_id(), None);
        assert_eq!(barrier.end(), None);
    }
}
