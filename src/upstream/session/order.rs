//! The order in which one upstream session's messages reach the server.
//!
//! Each message is carried by its own HTTP request, possibly on its own pooled
//! connection, so without care `notifications/initialized` sent just before a
//! `tools/call` may reach the server after it, and a `notifications/cancelled` may
//! overtake the request it cancels. The rule (protocol.md, section 7):
//!
//! - a **request** is sent once every earlier notification and response to the server
//!   has been accepted by it (its POST answered); requests may overlap one another;
//! - a **notification or response** is sent once every earlier notification and response
//!   has been accepted, and every earlier request has been written to its connection.
//!
//! Tickets are taken in the order the client sent the messages (by the connection's
//! reader, one at a time); each exchange waits for its turn, then reports progress on
//! its ticket. Dropping a ticket releases it, so an exchange that fails or is cancelled
//! never holds up the ones after it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

/// The tickets of one upstream session that later messages may still wait for.
#[derive(Debug, Default)]
struct Outstanding {
    next: u64,
    /// Notifications and responses not yet accepted by the server.
    unaccepted: BTreeSet<u64>,
    /// Requests not yet written to their connection.
    unwritten: BTreeSet<u64>,
}

/// Hands out tickets in the order messages arrive from the client.
#[derive(Debug, Clone, Default)]
pub(super) struct Sequencer {
    state: Arc<watch::Sender<Outstanding>>,
}

/// One message's place in the order.
#[derive(Debug)]
pub(super) struct Ticket {
    state: Arc<watch::Sender<Outstanding>>,
    number: u64,
    request: bool,
}

impl Sequencer {
    /// The next ticket, for a request or for anything else.
    pub(super) fn ticket(&self, request: bool) -> Ticket {
        let mut number = 0;
        self.state.send_modify(|o| {
            number = o.next;
            o.next += 1;
            if request {
                o.unwritten.insert(number);
            } else {
                o.unaccepted.insert(number);
            }
        });
        Ticket {
            state: self.state.clone(),
            number,
            request,
        }
    }
}

impl Ticket {
    /// Waits until the message may be sent.
    pub(super) async fn turn(&self) {
        let (number, request) = (self.number, self.request);
        let mut outstanding = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = outstanding
            .wait_for(|o| {
                o.unaccepted.range(..number).next().is_none()
                    && (request || o.unwritten.range(..number).next().is_none())
            })
            .await;
    }

    /// A closure that marks the request as written, for the HTTP body to call once it
    /// has been handed to the connection.
    pub(super) fn on_written(&self) -> impl FnOnce() + Send + Sync + 'static {
        let (state, number) = (self.state.clone(), self.number);
        move || {
            state.send_if_modified(|o| o.unwritten.remove(&number));
        }
    }

    /// The server accepted the message (or the exchange is over): nothing waits for it.
    pub(super) fn release(&self) {
        let number = self.number;
        self.state
            .send_if_modified(|o| o.unaccepted.remove(&number) | o.unwritten.remove(&number));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    /// True if `ticket.turn()` completes without waiting.
    async fn ready(ticket: &Ticket) -> bool {
        ticket.turn().now_or_never().is_some()
    }

    #[tokio::test]
    async fn requests_overlap_each_other() {
        let order = Sequencer::default();
        let first = order.ticket(true);
        let second = order.ticket(true);
        assert!(ready(&first).await);
        assert!(ready(&second).await);
    }

    #[tokio::test]
    async fn a_request_waits_for_an_earlier_notification_to_be_accepted() {
        let order = Sequencer::default();
        let initialized = order.ticket(false);
        let call = order.ticket(true);
        assert!(ready(&initialized).await);
        assert!(!ready(&call).await);
        initialized.release();
        assert!(ready(&call).await);
    }

    #[tokio::test]
    async fn a_notification_waits_for_an_earlier_request_to_be_written_only() {
        let order = Sequencer::default();
        let call = order.ticket(true);
        let cancelled = order.ticket(false);
        assert!(!ready(&cancelled).await);
        (call.on_written())();
        assert!(ready(&cancelled).await, "not for the request's answer");
        drop(call);
    }

    #[tokio::test]
    async fn notifications_go_one_after_another() {
        let order = Sequencer::default();
        let first = order.ticket(false);
        let second = order.ticket(false);
        let third = order.ticket(false);
        assert!(!ready(&second).await);
        drop(first);
        assert!(ready(&second).await);
        assert!(!ready(&third).await);
        second.release();
        assert!(ready(&third).await);
    }

    #[tokio::test]
    async fn a_dropped_ticket_never_holds_up_later_ones() {
        let order = Sequencer::default();
        let failed = order.ticket(true);
        let note = order.ticket(false);
        let mut waiter = tokio::spawn(async move { note.turn().await });
        assert!((&mut waiter).now_or_never().is_none());
        drop(failed);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("no panic");
    }

    #[tokio::test]
    async fn later_messages_do_not_hold_up_earlier_ones() {
        let order = Sequencer::default();
        let call = order.ticket(true);
        let _later = order.ticket(false);
        assert!(ready(&call).await);
    }
}
