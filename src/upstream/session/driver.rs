//! The task that runs one upstream session's message exchanges.
//!
//! Each carried message is an exchange (a future that POSTs it and forwards its
//! replies). Spawning a task for each cost an allocation, a scheduling and a span per
//! message; instead one task per upstream session, started by its first message, polls
//! every exchange of the session in a [`FuturesUnordered`], and a message is handed to
//! it over a channel. Exchanges still overlap (the set polls whichever one was woken),
//! the order rules of [`super::order`] are untouched (tickets, not task order, decide
//! when a message goes), and the driver lives among the client session's tasks, so
//! exchanges outlive the socket for resume as before.
//!
//! The channel is unbounded in type only: every exchange in it holds a permit of the
//! client session's `maxInflightRequests` (requests) or carrying semaphore (other
//! messages) until it ends, so the exchanges queued and running are bounded by those.
//!
//! Once its session has ended, the driver stops taking exchanges (it closes its
//! channel), runs those it has to their end and stops; an exchange handed over after
//! that gets a task of its own, as one did before.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Mutex;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// One message's exchange, ready to be polled.
pub(super) type Exchange = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Hands a session's exchanges to its driver task.
#[derive(Debug, Default)]
pub(super) struct Driver {
    /// The running driver's queue; `None` until the first message.
    queue: Mutex<Option<mpsc::UnboundedSender<Exchange>>>,
}

impl Driver {
    /// Runs `exchange` in the session's driver task, starting the driver (among `tasks`,
    /// in `span`) if none runs yet. `ended` is the session's end: the driver stops once
    /// it is cancelled and its exchanges are over.
    pub(super) fn run(
        &self,
        exchange: Exchange,
        tasks: &TaskTracker,
        ended: &CancellationToken,
        span: &tracing::Span,
    ) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let exchange = match queue.as_ref() {
            Some(running) => match running.send(exchange) {
                Ok(()) => return,
                Err(mpsc::error::SendError(refused)) => refused,
            },
            None => exchange,
        };
        if ended.is_cancelled() {
            // The session is over and its driver stopped (or will): this one exchange
            // (which answers its message at once) runs on its own.
            tasks.spawn(guarded(exchange).instrument(span.clone()));
            return;
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        *queue = Some(sender);
        let driver = drive(receiver, exchange, ended.clone());
        tasks.spawn(driver.instrument(span.clone()));
    }
}

/// Polls `first` and every exchange that arrives on `queue` until the session has
/// ended (or its `Driver` is gone) and every exchange taken is over.
async fn drive(
    mut queue: mpsc::UnboundedReceiver<Exchange>,
    first: Exchange,
    ended: CancellationToken,
) {
    let mut running = FuturesUnordered::new();
    running.push(guarded(first));
    let (mut open, mut closing) = (true, false);
    loop {
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            next = queue.recv(), if open => match next {
                Some(exchange) => running.push(guarded(exchange)),
                // Closed and emptied: nothing more can arrive.
                None => open = false,
            },
            // Not once the queue is closed and emptied (its `Driver` gone): then the
            // running exchanges are all that is left, and the driver ends with them.
            _ = ended.cancelled(), if open && !closing => {
                // Later exchanges get tasks of their own; those already queued are
                // still received above.
                closing = true;
                queue.close();
            }
            else => return,
        }
    }
}

/// An exchange whose panic (a bug) ends it alone, not the driver and the other
/// exchanges with it, as when each had its own task.
fn guarded(exchange: Exchange) -> impl Future<Output = ()> + Send {
    AssertUnwindSafe(exchange).catch_unwind().map(|ended| {
        if ended.is_err() {
            tracing::error!("a message exchange panicked");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    fn counting(done: &Arc<AtomicUsize>, gate: Option<Arc<Notify>>) -> Exchange {
        let done = done.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            done.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// A driver, the tracker of its task, and the token that ends the session.
    fn driver() -> (Driver, TaskTracker, CancellationToken) {
        (
            Driver::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    async fn settle(tasks: &TaskTracker) {
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("every task ends");
    }

    #[tokio::test]
    async fn exchanges_overlap_in_one_task() {
        let (driver, tasks, ended) = driver();
        let (done, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let span = tracing::Span::none();
        driver.run(counting(&done, Some(gate.clone())), &tasks, &ended, &span);
        driver.run(counting(&done, None), &tasks, &ended, &span);
        tokio::time::timeout(Duration::from_secs(5), async {
            while done.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second runs while the first waits");
        assert_eq!(tasks.len(), 1, "one driver task");
        gate.notify_one();
        ended.cancel();
        settle(&tasks).await;
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_driver_whose_queue_is_gone_ends_with_its_exchanges() {
        let (tasks, ended) = (TaskTracker::new(), CancellationToken::new());
        let done = Arc::new(AtomicUsize::new(0));
        {
            let driver = Driver::default();
            let span = tracing::Span::none();
            driver.run(counting(&done, None), &tasks, &ended, &span);
        }
        // The session never ends, but nothing can reach the driver any more.
        settle(&tasks).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_exchange_always_ready_lets_the_others_run() {
        let (driver, tasks, ended) = driver();
        let span = tracing::Span::none();
        let quick = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (flood_stop, quick_seen) = (stop.clone(), quick.clone());
        // Never waits for anything but the budget, as a stream with its next event
        // always ready; it stops once the other exchange has run.
        driver.run(
            Box::pin(async move {
                while !flood_stop.is_cancelled() {
                    tokio::task::consume_budget().await;
                }
                assert_eq!(quick_seen.load(Ordering::SeqCst), 1);
            }),
            &tasks,
            &ended,
            &span,
        );
        let quick_done = quick.clone();
        driver.run(
            Box::pin(async move {
                quick_done.fetch_add(1, Ordering::SeqCst);
                stop.cancel();
            }),
            &tasks,
            &ended,
            &span,
        );
        ended.cancel();
        settle(&tasks).await;
        assert_eq!(quick.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn exchanges_handed_over_after_the_end_still_run() {
        let (driver, tasks, ended) = driver();
        let done = Arc::new(AtomicUsize::new(0));
        let span = tracing::Span::none();
        driver.run(counting(&done, None), &tasks, &ended, &span);
        ended.cancel();
        for _ in 0..10 {
            driver.run(counting(&done, None), &tasks, &ended, &span);
            tokio::task::yield_now().await;
        }
        settle(&tasks).await;
        assert_eq!(done.load(Ordering::SeqCst), 11, "none lost");
    }

    #[tokio::test]
    async fn a_panicking_exchange_ends_alone() {
        let (driver, tasks, ended) = driver();
        let (done, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let span = tracing::Span::none();
        driver.run(counting(&done, Some(gate.clone())), &tasks, &ended, &span);
        driver.run(Box::pin(async { panic!("a bug") }), &tasks, &ended, &span);
        tokio::task::yield_now().await;
        gate.notify_one();
        ended.cancel();
        settle(&tasks).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
