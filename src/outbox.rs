//! The outbound queue of one client session: numbers gateway frames (`seq`) and bounds
//! them by bytes.
//!
//! Every producer (upstream streams, status changes, the frame reader's error answers)
//! pushes through [`Outbox::push`]; one writer task drains it into the WebSocket. `seq`
//! is assigned under the same lock that appends, so seq order is queue order. When the
//! queued frames reach the byte limit, producers wait: an upstream stream is then read
//! no faster than the client drains it, and nothing is dropped. A single frame larger
//! than the limit is still admitted when the queue is empty, so no frame can wedge it.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// One frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its sequence number; `None` for frames outside the sequence (`pong`).
    pub seq: Option<u64>,
    /// The frame's JSON text.
    pub text: String,
}

/// The outbox was closed: the session is over and the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client session is closed")]
pub struct Closed;

/// A byte-bounded, sequenced frame queue with many producers and one consumer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Woken when a frame is queued or the outbox closes (the writer waits on it).
    readable: Notify,
    /// Woken when frames leave the queue or the outbox closes (producers wait on it).
    writable: Notify,
    /// The byte limit of queued frames.
    capacity_bytes: usize,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    closed: bool,
}

impl Outbox {
    /// An empty outbox whose first sequenced frame gets seq 1.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                next_seq: 1,
                queue: VecDeque::new(),
                queued_bytes: 0,
                closed: false,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            capacity_bytes: capacity_bytes.max(1),
        }
    }

    /// Queues the frame `build(seq)` writes, waiting while the queue is full.
    pub async fn push(&self, build: impl FnOnce(u64) -> String) -> Result<u64, Closed> {
        let mut build = Some(build);
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Closed);
                }
                if state.queued_bytes < self.capacity_bytes || state.queue.is_empty() {
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    if let Some(build) = build.take() {
                        let text = build(seq);
                        state.queued_bytes += text.len();
                        state.queue.push_back(Outgoing {
                            seq: Some(seq),
                            text,
                        });
                    }
                    drop(state);
                    self.readable.notify_one();
                    return Ok(seq);
                }
            }
            notified.await;
        }
    }

    /// Queues a frame outside the sequence (`pong`), without waiting for room: such
    /// frames are small and answer the client's own frames, which it reads from us.
    pub fn push_unsequenced(&self, text: String) -> Result<(), Closed> {
        let mut state = self.lock();
        if state.closed {
            return Err(Closed);
        }
        state.queued_bytes += text.len();
        state.queue.push_back(Outgoing { seq: None, text });
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// Takes the next frame, waiting for one; `None` once closed and empty.
    pub async fn next(&self) -> Option<Outgoing> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(frame) = state.queue.pop_front() {
                    state.queued_bytes -= frame.text.len();
                    drop(state);
                    self.writable.notify_waiters();
                    return Some(frame);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Closes the outbox: producers get [`Closed`]; the writer drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update
        // is a few plain assignments), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn seq_follows_queue_order() {
        let outbox = Outbox::new(1024);
        for i in 0..3 {
            outbox.push(|seq| format!("{i}:{seq}")).await.unwrap();
        }
        outbox.push_unsequenced("pong".into()).unwrap();
        let mut texts = Vec::new();
        for _ in 0..4 {
            texts.push(outbox.next().await.unwrap());
        }
        assert_eq!(texts[0].text, "0:1");
        assert_eq!(texts[2].seq, Some(3));
        assert_eq!(texts[3].seq, None);
    }

    #[tokio::test]
    async fn producers_wait_for_room_and_nothing_is_dropped() {
        let outbox = Arc::new(Outbox::new(10));
        let producer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    outbox.push(|_| format!("{i:08}")).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(outbox.queued_bytes() <= 16, "bounded while nobody reads");
        for i in 0..100u32 {
            assert_eq!(outbox.next().await.unwrap().text, format!("{i:08}"));
        }
        producer.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversized_frame_passes_an_empty_queue() {
        let outbox = Outbox::new(4);
        outbox.push(|_| "x".repeat(100)).await.unwrap();
        assert_eq!(outbox.next().await.unwrap().text.len(), 100);
    }

    #[tokio::test]
    async fn close_wakes_everyone() {
        let outbox = Arc::new(Outbox::new(1));
        outbox.push(|_| "full".into()).await.unwrap();
        let blocked = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(|_| "more".into()).await })
        };
        tokio::task::yield_now().await;
        outbox.close();
        assert_eq!(blocked.await.unwrap(), Err(Closed));
        assert_eq!(outbox.next().await.unwrap().text, "full");
        assert!(outbox.next().await.is_none());
    }
}
