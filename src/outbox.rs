//! The outbound frames of one client session: numbered (`seq`), bounded, and kept for
//! replay until the client acknowledges them.
//!
//! Every producer (upstream streams, status changes, the reader's error answers) pushes
//! through [`Outbox::push`]; the socket's writer takes frames with [`Outbox::next`],
//! which advances a cursor but keeps the frame. `seq` is assigned under the same lock that
//! appends, so seq order is queue order.
//!
//! Limits:
//! - **Unsent bytes** (`outboundQueueBytes`): while a socket is attached and this many
//!   bytes wait to be written, producers wait. An upstream stream is then read no faster
//!   than the client drains it; nothing is dropped. A frame larger than the limit still
//!   passes when nothing else is waiting.
//! - **Kept frames** (`resumeMaxFrames`, `resumeMaxBytes`): frames already written are
//!   kept for a resume until acknowledged (`ack`, or `last_seq` in a resume), the oldest
//!   going first when over the limits (a resume from before them is then refused).
//!   While no socket is attached producers do not wait; if the frames not yet written
//!   alone exceed the limits, the outbox **overflows**: it closes, and the session can no
//!   longer be resumed.
//!
//! Frames outside the sequence (`pong`) are written first and never kept; a `pong`
//! requested while another is still queued is not queued twice.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// One frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its sequence number; `None` for frames outside the sequence.
    pub seq: Option<u64>,
    /// The frame's JSON text (cheap to clone).
    pub text: Utf8Bytes,
}

/// The outbox was closed: the session is over and the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client session is closed")]
pub struct Closed;

/// Why a resume from a given seq is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unresumable {
    /// Frames after `last_seq` are no longer kept.
    #[error("frames after seq {0} are no longer kept")]
    Incomplete(u64),
    /// `last_seq` is beyond the last frame sent.
    #[error("seq {0} was never sent")]
    Future(u64),
    /// The session's frames overflowed while it was detached.
    #[error("frames overflowed the resume limits while the client was away")]
    Overflowed,
}

/// The outbox's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unsent bytes at which producers wait (while attached).
    pub queue_bytes: usize,
    /// Frames kept for resume.
    pub keep_frames: usize,
    /// Bytes kept for resume.
    pub keep_bytes: usize,
}

/// A bounded, sequenced frame queue with many producers and one writer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Woken when a frame is queued or the outbox closes (the writer waits on it).
    readable: Notify,
    /// Woken when frames are written, the socket detaches, or the outbox closes.
    writable: Notify,
    /// Woken when the outbox closes (by overflow or by its owner).
    closed: Notify,
    limits: Limits,
}

#[derive(Debug)]
struct State {
    /// Kept frames, oldest first: written but unacknowledged, then unwritten.
    frames: VecDeque<(u64, Utf8Bytes)>,
    /// Bytes of all kept frames.
    kept_bytes: usize,
    /// Seq of the next frame to write.
    cursor: u64,
    /// Bytes of frames at or after the cursor.
    unsent_bytes: usize,
    /// Seq the next pushed frame gets.
    next_seq: u64,
    /// Frames outside the sequence, written before any other.
    control: VecDeque<Utf8Bytes>,
    /// No socket is attached: producers do not wait.
    detached: bool,
    /// Counts attachments: a writer serves only the attachment it was started for, so
    /// the writer of a socket the session has left can no longer take or stop anything.
    attachment: u64,
    closed: bool,
    overflowed: bool,
}

impl Outbox {
    /// An empty, attached outbox whose first frame gets seq 1.
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                kept_bytes: 0,
                cursor: 1,
                unsent_bytes: 0,
                next_seq: 1,
                control: VecDeque::new(),
                detached: false,
                attachment: 1,
                closed: false,
                overflowed: false,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            closed: Notify::new(),
            limits: Limits {
                queue_bytes: limits.queue_bytes.max(1),
                keep_frames: limits.keep_frames.max(1),
                keep_bytes: limits.keep_bytes.max(1),
            },
        }
    }

    /// Queues the frame `build(seq)` writes, waiting while an attached socket's queue is full.
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
                let room = state.detached
                    || state.unsent_bytes < self.limits.queue_bytes
                    || state.unsent_bytes == 0;
                if room {
                    let seq = state.next_seq;
                    let text = Utf8Bytes::from(build.take().map(|b| b(seq)).unwrap_or_default());
                    state.next_seq += 1;
                    state.kept_bytes += text.len();
                    state.unsent_bytes += text.len();
                    state.frames.push_back((seq, text));
                    let overflowed = self.trim(&mut state);
                    drop(state);
                    if overflowed {
                        self.wake_all();
                        return Err(Closed);
                    }
                    self.readable.notify_one();
                    return Ok(seq);
                }
            }
            notified.await;
        }
    }

    /// Drops written frames over the keep limits; true if unwritten frames alone exceed
    /// them (the outbox then overflows and closes).
    fn trim(&self, state: &mut State) -> bool {
        let over = |s: &State| {
            s.frames.len() > self.limits.keep_frames || s.kept_bytes > self.limits.keep_bytes
        };
        while over(state) {
            match state.frames.front() {
                Some((seq, _)) if *seq < state.cursor => {
                    if let Some((_, text)) = state.frames.pop_front() {
                        state.kept_bytes -= text.len();
                    }
                }
                _ => break,
            }
        }
        if over(state) && state.detached {
            state.overflowed = true;
            state.closed = true;
            return true;
        }
        false
    }

    /// Queues a frame outside the sequence (`pong`, `welcome`) without waiting; an
    /// identical frame already queued is not queued again. While no socket is attached
    /// there is no one to answer, and nothing is queued.
    pub fn push_unsequenced(&self, text: impl Into<Utf8Bytes>) -> Result<(), Closed> {
        let text = text.into();
        let mut state = self.lock();
        if state.closed {
            return Err(Closed);
        }
        if state.detached {
            return Ok(());
        }
        if !state.control.contains(&text) {
            state.control.push_back(text);
        }
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// The current attachment, for the writer of the socket now attached.
    pub fn attachment(&self) -> u64 {
        self.lock().attachment
    }

    /// The next frame to write for `attachment`, waiting for one; `None` once closed,
    /// detached, or attached to another socket, and nothing more is to be written.
    pub async fn next(&self, attachment: u64) -> Option<Outgoing> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.attachment != attachment {
                    return None;
                }
                if let Some(text) = state.control.pop_front() {
                    return Some(Outgoing { seq: None, text });
                }
                if state.detached {
                    return None;
                }
                // Kept frames have consecutive seqs, so the cursor's frame is found by index.
                let cursor = state.cursor;
                let next = state.frames.front().and_then(|(front, _)| {
                    let index = usize::try_from(cursor.checked_sub(*front)?).ok()?;
                    state.frames.get(index).map(|(_, text)| text.clone())
                });
                if let Some(text) = next {
                    state.cursor += 1;
                    state.unsent_bytes -= text.len();
                    drop(state);
                    self.writable.notify_waiters();
                    return Some(Outgoing {
                        seq: Some(cursor),
                        text,
                    });
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The client has every frame up to `seq`: they need not be kept.
    pub fn ack(&self, seq: u64) {
        let mut state = self.lock();
        while let Some((front, _)) = state.frames.front() {
            if *front > seq || *front >= state.cursor {
                break;
            }
            if let Some((_, text)) = state.frames.pop_front() {
                state.kept_bytes -= text.len();
            }
        }
    }

    /// The socket is gone: producers stop waiting, and frames are kept for a resume.
    pub fn detach(&self) {
        let mut state = self.lock();
        state.detached = true;
        state.control.clear();
        drop(state);
        self.wake_all();
    }

    /// The writer of `attachment` lost its socket: as [`Self::detach`], unless the
    /// session has moved to another socket meanwhile.
    pub fn detach_attachment(&self, attachment: u64) {
        if self.lock().attachment == attachment {
            self.detach();
        }
    }

    /// A new socket resumes after `last_seq`: frames after it will be written again.
    pub fn attach(&self, last_seq: u64) -> Result<(), Unresumable> {
        let mut state = self.lock();
        if state.overflowed {
            return Err(Unresumable::Overflowed);
        }
        if last_seq >= state.next_seq {
            return Err(Unresumable::Future(last_seq));
        }
        let oldest = state.frames.front().map_or(state.next_seq, |(seq, _)| *seq);
        if last_seq + 1 < oldest {
            return Err(Unresumable::Incomplete(last_seq));
        }
        while state
            .frames
            .front()
            .is_some_and(|(seq, _)| *seq <= last_seq)
        {
            if let Some((_, text)) = state.frames.pop_front() {
                state.kept_bytes -= text.len();
            }
        }
        state.cursor = last_seq + 1;
        state.unsent_bytes = state.kept_bytes;
        state.control.clear();
        state.detached = false;
        state.attachment += 1;
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// Closes the outbox: producers get [`Closed`]; the writer drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake_all();
    }

    /// True once closed (by its owner or by overflow).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the outbox is closed.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Bytes waiting to be written.
    pub fn unsent_bytes(&self) -> usize {
        self.lock().unsent_bytes
    }

    /// Bytes kept (written and unwritten).
    pub fn kept_bytes(&self) -> usize {
        self.lock().kept_bytes
    }

    fn wake_all(&self) {
        self.readable.notify_waiters();
        self.writable.notify_waiters();
        self.closed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update under this lock is a few plain assignments that cannot panic
        // half-way, so a poisoned lock still holds consistent state.
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

    fn limits(queue_bytes: usize, keep_frames: usize, keep_bytes: usize) -> Limits {
        Limits {
            queue_bytes,
            keep_frames,
            keep_bytes,
        }
    }

    async fn texts(outbox: &Outbox, n: usize) -> Vec<(Option<u64>, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let frame = outbox.next(outbox.attachment()).await.expect("a frame");
            out.push((frame.seq, frame.text.as_str().to_owned()));
        }
        out
    }

    #[tokio::test]
    async fn seq_follows_queue_order_and_pongs_go_first_once() {
        let outbox = Outbox::new(limits(1024, 100, 4096));
        for i in 0..3 {
            outbox.push(|seq| format!("{i}:{seq}")).await.unwrap();
        }
        outbox.push_unsequenced("pong").unwrap();
        outbox.push_unsequenced("pong").unwrap();
        let got = texts(&outbox, 4).await;
        assert_eq!(got[0], (None, "pong".into()));
        assert_eq!(got[1], (Some(1), "0:1".into()));
        assert_eq!(got[3], (Some(3), "2:3".into()));
        outbox.close();
        assert!(
            outbox.next(outbox.attachment()).await.is_none(),
            "the second pong was coalesced"
        );
    }

    #[tokio::test]
    async fn attached_producers_wait_for_room_and_nothing_is_dropped() {
        let outbox = Arc::new(Outbox::new(limits(10, 1000, 100_000)));
        let producer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    outbox.push(|_| format!("{i:08}")).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(outbox.unsent_bytes() <= 16, "bounded while nobody reads");
        for i in 0..100u32 {
            assert_eq!(
                outbox
                    .next(outbox.attachment())
                    .await
                    .unwrap()
                    .text
                    .as_str(),
                format!("{i:08}")
            );
        }
        producer.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversized_frame_passes_an_empty_queue() {
        let outbox = Outbox::new(limits(4, 10, 1000));
        outbox.push(|_| "x".repeat(100)).await.unwrap();
        assert_eq!(
            outbox.next(outbox.attachment()).await.unwrap().text.len(),
            100
        );
    }

    #[tokio::test]
    async fn resume_replays_exactly_what_followed_last_seq() {
        let outbox = Outbox::new(limits(1024, 100, 100_000));
        for i in 1..=5 {
            outbox.push(|_| format!("f{i}")).await.unwrap();
        }
        texts(&outbox, 4).await; // written up to seq 4; the client saw up to 2
        outbox.detach();
        assert!(
            outbox.next(outbox.attachment()).await.is_none(),
            "a detached writer stops"
        );
        outbox.push(|_| "f6".into()).await.unwrap(); // produced while away
        outbox.attach(2).unwrap();
        let got = texts(&outbox, 4).await;
        let seqs: Vec<_> = got.iter().map(|(s, _)| s.unwrap()).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
        assert_eq!(got[3].1, "f6");
    }

    #[tokio::test]
    async fn acked_and_trimmed_frames_cannot_be_resumed_from() {
        let outbox = Outbox::new(limits(1024, 3, 100_000));
        for i in 1..=6 {
            outbox.push(|_| format!("f{i}")).await.unwrap();
            outbox.next(outbox.attachment()).await.unwrap();
        }
        // Only seqs 4..=6 are kept.
        assert_eq!(outbox.attach(1), Err(Unresumable::Incomplete(1)));
        assert_eq!(outbox.attach(9), Err(Unresumable::Future(9)));
        outbox.ack(5);
        assert_eq!(outbox.kept_bytes(), 2);
        outbox.attach(5).unwrap();
        outbox.attach(6).unwrap();
    }

    #[tokio::test]
    async fn a_detached_outbox_overflows_instead_of_growing() {
        let outbox = Outbox::new(limits(1024, 3, 100_000));
        outbox.detach();
        for i in 1..=3 {
            outbox.push(|_| format!("f{i}")).await.unwrap();
        }
        assert_eq!(outbox.push(|_| "f4".into()).await, Err(Closed));
        assert!(outbox.is_closed());
        outbox.wait_closed().await;
        assert_eq!(outbox.attach(0), Err(Unresumable::Overflowed));
    }

    #[tokio::test]
    async fn close_wakes_waiting_producers() {
        let outbox = Arc::new(Outbox::new(limits(1, 10, 1000)));
        outbox.push(|_| "full".into()).await.unwrap();
        let blocked = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(|_| "more".into()).await })
        };
        tokio::task::yield_now().await;
        outbox.close();
        assert_eq!(blocked.await.unwrap(), Err(Closed));
        assert_eq!(
            outbox
                .next(outbox.attachment())
                .await
                .unwrap()
                .text
                .as_str(),
            "full"
        );
        assert!(outbox.next(outbox.attachment()).await.is_none());
    }
}
