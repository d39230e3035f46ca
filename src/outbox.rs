//! The outbound frames of one client session: numbered (`seq`), bounded, and kept for
//! replay until the client acknowledges them.
//!
//! Every producer (upstream streams, status changes, the reader's error answers) pushes
//! through [`Outbox::push`]; the socket's writer takes frames with [`Outbox::next`] (and
//! [`Outbox::try_next`] for the frames ready behind it), which advances a cursor but
//! keeps the frame. `seq` is assigned under the same lock that appends, so seq order is
//! queue order; the frame itself is built outside the lock, in the slot reserved for it.
//!
//! Limits:
//! - **Unsent bytes** (`outboundQueueBytes`): while a socket is attached and this many
//!   bytes wait to be written, producers wait, in turn (each frame written wakes one
//!   waiting producer, which wakes the next while room remains). An upstream stream is
//!   then read no faster than the client drains it; nothing is dropped. A frame larger
//!   than the limit still passes when nothing else is waiting. A frame counts once it is
//!   built; nothing is awaited between its slot's reservation and that, so at most one
//!   frame per runtime thread can be in between.
//! - **Kept frames** (`resumeMaxFrames`, `resumeMaxBytes`): frames already written are
//!   kept for a resume until acknowledged (`ack`, or `last_seq` in a resume), the oldest
//!   going first when over the limits (a resume from before them is then refused).
//!   While no socket is attached producers do not wait; if the frames not yet written
//!   alone exceed the limits, the outbox **overflows**: it closes, and the session can no
//!   longer be resumed.
//! - **Gateway-wide budget** (`resumeBudgetBytes`, [`ResumeBudget`]): every kept frame
//!   of every session counts. When the total passes the budget, attached sessions drop
//!   their oldest frames already written, in turn, until it is 1/8 under the budget;
//!   only if that is not enough does a detached session that produces more overflow.
//!
//! Frames outside the sequence (`pong`) are written first and never kept; a `pong`
//! requested while another is still queued is not queued twice.
//!
//! With a shared session store ([`Outbox::mirrored`]), a frame is given to the writer
//! only once it is in the store ([`Outbox::unstored`] hands frames to the task that
//! writes them, [`Outbox::mark_stored`] lets the writer have them): whatever a client
//! saw can be resumed on another instance. Without one, the writer never checks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::store::sessions::KeptFrame;

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

/// The gateway-wide budget of bytes kept for resume (`resumeBudgetBytes`), shared by
/// every outbox made with [`Outbox::with_budget`].
#[derive(Debug)]
pub struct ResumeBudget {
    limit: usize,
    /// Bytes of every kept frame of every registered outbox.
    used: AtomicUsize,
    /// Every registered outbox, by registration number.
    outboxes: Mutex<HashMap<u64, Weak<Outbox>>>,
    next_id: AtomicU64,
    /// Held by the one task reclaiming at a time; the number is where the next sweep
    /// starts, so that sessions take turns.
    reclaiming: Mutex<usize>,
}

impl ResumeBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            outboxes: Mutex::default(),
            next_id: AtomicU64::new(0),
            reclaiming: Mutex::new(0),
        })
    }

    /// Bytes kept now, gateway-wide.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Whether `bytes` more fit in the budget, after reclaiming written frames of
    /// attached sessions as a frame over it would: for the frames of a session taken
    /// from the shared store, refused when they do not fit.
    pub fn admits(&self, bytes: usize) -> bool {
        let fits = |budget: &Self| budget.used().saturating_add(bytes) <= budget.limit;
        if !fits(self) {
            self.reclaim();
        }
        fits(self)
    }

    /// Attached sessions drop their oldest written frames, in turn, until the total is
    /// 1/8 under the budget. One task reclaims at a time; others go on.
    fn reclaim(&self) {
        let Ok(mut start) = self.reclaiming.try_lock() else {
            return;
        };
        let target = self.limit - self.limit / 8;
        let outboxes: Vec<Arc<Outbox>> = {
            let registered = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
            registered.values().filter_map(Weak::upgrade).collect()
        };
        let count = outboxes.len();
        for turn in 0..count {
            if self.used() <= target {
                break;
            }
            let outbox = &outboxes[(*start + turn) % count];
            let excess = self.used().saturating_sub(target);
            outbox.drop_written(excess);
        }
        *start = start.wrapping_add(1);
    }
}

/// An outbox's place in a [`ResumeBudget`].
#[derive(Debug)]
struct Membership {
    budget: Arc<ResumeBudget>,
    id: u64,
}

/// A bounded, sequenced frame queue with many producers and one writer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Woken when a frame is queued or the outbox closes (the writer waits on it).
    readable: Notify,
    /// Woken, one producer at a time, when there is room; all at once when the socket
    /// detaches or the outbox closes.
    writable: Notify,
    /// Woken when the outbox closes (by overflow or by its owner).
    closed: Notify,
    limits: Limits,
    budget: Option<Membership>,
    /// Frames go to a shared store before the writer may have them.
    mirrored: bool,
    /// Woken when a frame is ready for the store (mirrored outboxes only).
    storable: Notify,
}

#[derive(Debug)]
struct State {
    /// Kept frames, oldest first: written but unacknowledged, then unwritten. `None`
    /// while a producer builds the frame of that seq.
    frames: VecDeque<(u64, Option<Utf8Bytes>)>,
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
    /// A producer failed while building its frame: its slot stays empty, and the writer
    /// stops there.
    broken: bool,
    /// Mirrored outboxes: the highest seq in the store (the writer stops after it) and
    /// the next seq to hand to the store.
    stored: u64,
    to_store: u64,
}

/// What the writer finds at the cursor.
enum Next {
    Frame(Outgoing),
    /// Nothing yet: wait.
    Wait,
    /// Nothing more will come.
    End,
}

impl Outbox {
    /// An empty, attached outbox whose first frame gets seq 1, outside any budget.
    pub fn new(limits: Limits) -> Self {
        Self::build(limits, None, false)
    }

    /// An outbox whose frames go to a shared store before the writer may have them,
    /// counting against `budget`.
    pub fn mirrored(limits: Limits, budget: &Arc<ResumeBudget>) -> Arc<Self> {
        Self::registered(limits, budget, true)
    }

    /// An outbox whose kept frames count against `budget`.
    pub fn with_budget(limits: Limits, budget: &Arc<ResumeBudget>) -> Arc<Self> {
        Self::registered(limits, budget, false)
    }

    fn registered(limits: Limits, budget: &Arc<ResumeBudget>, mirrored: bool) -> Arc<Self> {
        let id = budget.next_id.fetch_add(1, Ordering::Relaxed);
        let membership = Membership {
            budget: budget.clone(),
            id,
        };
        let outbox = Arc::new(Self::build(limits, Some(membership), mirrored));
        budget
            .outboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::downgrade(&outbox));
        outbox
    }

    fn build(limits: Limits, budget: Option<Membership>, mirrored: bool) -> Self {
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
                broken: false,
                stored: 0,
                to_store: 1,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            closed: Notify::new(),
            limits: Limits {
                queue_bytes: limits.queue_bytes.max(1),
                keep_frames: limits.keep_frames.max(1),
                keep_bytes: limits.keep_bytes.max(1),
            },
            budget,
            mirrored,
            storable: Notify::new(),
        }
    }

    /// Queues the frame `build(seq)` writes, waiting while an attached socket's queue is
    /// full. The seq and the frame's place are taken under the lock; the frame is built
    /// outside it.
    pub async fn push(&self, build: impl FnOnce(u64) -> String) -> Result<u64, Closed> {
        // With room, the slot is taken at once; only a producer that finds the queue full
        // registers to be woken (registering and unregistering costs two more locks).
        let seq = match self.reserve(true) {
            Some(reserved) => reserved?,
            None => loop {
                let notified = self.writable.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(reserved) = self.reserve(true) {
                    break reserved?;
                }
                notified.await;
            },
        };
        // Nothing is awaited from here until the frame is in its slot.
        self.build_into(seq, build)
    }

    /// Queues the frame `build(seq)` writes without waiting for room: for the few frames
    /// a session taken over from the store queues before its socket's writer runs (the
    /// replay alone may fill the queue). Still bounded by what the outbox keeps.
    pub fn push_now(&self, build: impl FnOnce(u64) -> String) -> Result<u64, Closed> {
        // Without the room check a reservation is always made (`None` never comes).
        let seq = self.reserve(false).unwrap_or(Err(Closed))?;
        self.build_into(seq, build)
    }

    /// Builds the frame of the reserved slot `seq` and puts it there; a build that
    /// panics breaks the outbox (see [`Reserved`]).
    fn build_into(&self, seq: u64, build: impl FnOnce(u64) -> String) -> Result<u64, Closed> {
        let mut slot = Reserved {
            outbox: self,
            seq,
            filled: false,
        };
        let text = Utf8Bytes::from(build(seq));
        slot.filled = true;
        self.fill(seq, text)
    }

    /// Reserves the next seq's slot if there is room (or `room` is not asked for): `None`
    /// when the producer must wait.
    fn reserve(&self, room: bool) -> Option<Result<u64, Closed>> {
        let mut state = self.lock();
        if state.closed {
            return Some(Err(Closed));
        }
        if room && !state.detached && state.unsent_bytes >= self.limits.queue_bytes {
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.frames.push_back((seq, None));
        Some(Ok(seq))
    }

    /// Puts a built frame in its reserved slot and counts it.
    fn fill(&self, seq: u64, text: Utf8Bytes) -> Result<u64, Closed> {
        let mut state = self.lock();
        let front = state.frames.front().map_or(seq, |(front, _)| *front);
        let index = seq.checked_sub(front).and_then(|i| usize::try_from(i).ok());
        let Some(slot) = index.and_then(|i| state.frames.get_mut(i)) else {
            // The outbox overflowed, or a resume from past this seq dropped the slot.
            return if state.closed { Err(Closed) } else { Ok(seq) };
        };
        let len = text.len();
        slot.1 = Some(text);
        state.unsent_bytes += len;
        self.keep(&mut state, len);
        let overflowed = self.trim(&mut state);
        let room = !state.detached && state.unsent_bytes < self.limits.queue_bytes;
        let detached = state.detached;
        drop(state);
        if overflowed {
            self.wake_all();
            return Err(Closed);
        }
        if self.mirrored {
            self.storable.notify_one();
        } else {
            self.readable.notify_one();
        }
        if room {
            // Pass the turn on: the next waiting producer may fit too.
            self.writable.notify_one();
        }
        if let Some(membership) = &self.budget {
            if membership.budget.over() {
                membership.budget.reclaim();
                if detached && membership.budget.over() && self.overflow_if_detached() {
                    return Err(Closed);
                }
            }
        }
        Ok(seq)
    }

    /// Counts `len` more kept bytes, here and in the budget.
    fn keep(&self, state: &mut State, len: usize) {
        state.kept_bytes += len;
        if let Some(membership) = &self.budget {
            membership.budget.used.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Forgets the oldest kept frame, which must be written (or the outbox be detached).
    fn pop_front(&self, state: &mut State) {
        if let Some((_, text)) = state.frames.pop_front() {
            let len = text.map_or(0, |t| t.len());
            state.kept_bytes -= len;
            if let Some(membership) = &self.budget {
                membership.budget.used.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }

    /// Drops written frames over the keep limits; true if unwritten frames alone exceed
    /// them (the outbox then overflows and closes).
    fn trim(&self, state: &mut State) -> bool {
        let over = |s: &State| {
            s.frames.len() > self.limits.keep_frames || s.kept_bytes > self.limits.keep_bytes
        };
        while over(state)
            && state
                .frames
                .front()
                .is_some_and(|(seq, _)| *seq < state.cursor)
        {
            self.pop_front(state);
        }
        if over(state) && state.detached {
            self.overflow(state);
            return true;
        }
        false
    }

    /// The session can no longer be resumed: close, and free every kept frame.
    fn overflow(&self, state: &mut State) {
        state.overflowed = true;
        state.closed = true;
        while !state.frames.is_empty() {
            self.pop_front(state);
        }
        state.unsent_bytes = 0;
    }

    /// Over the gateway-wide budget with nothing left to reclaim: a detached session
    /// that produces more overflows.
    fn overflow_if_detached(&self) -> bool {
        let mut state = self.lock();
        if !state.detached || state.closed {
            return false;
        }
        self.overflow(&mut state);
        drop(state);
        self.wake_all();
        true
    }

    /// For the budget: drops up to `excess` bytes of written frames, oldest first, if a
    /// socket is attached.
    fn drop_written(&self, excess: usize) {
        let mut state = self.lock();
        if state.detached {
            return;
        }
        let mut dropped = 0;
        while dropped < excess {
            match state.frames.front() {
                Some((seq, Some(text))) if *seq < state.cursor => dropped += text.len(),
                _ => break,
            }
            self.pop_front(&mut state);
        }
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
            match self.take(attachment) {
                Next::Frame(frame) => return Some(frame),
                Next::End => return None,
                Next::Wait => {}
            }
            notified.await;
        }
    }

    /// The next frame to write for `attachment` if one is ready now (the writer batches
    /// them).
    pub fn try_next(&self, attachment: u64) -> Option<Outgoing> {
        match self.take(attachment) {
            Next::Frame(frame) => Some(frame),
            Next::Wait | Next::End => None,
        }
    }

    fn take(&self, attachment: u64) -> Next {
        let mut state = self.lock();
        if state.attachment != attachment {
            return Next::End;
        }
        if let Some(text) = state.control.pop_front() {
            return Next::Frame(Outgoing { seq: None, text });
        }
        if state.detached {
            return Next::End;
        }
        // Kept frames have consecutive seqs, so the cursor's frame is found by index.
        let cursor = state.cursor;
        if self.mirrored && cursor > state.stored {
            // Not in the store yet: the store's writer wakes us.
            return if state.closed && state.stored + 1 >= state.next_seq {
                Next::End
            } else {
                Next::Wait
            };
        }
        let slot = state.frames.front().and_then(|(front, _)| {
            let index = usize::try_from(cursor.checked_sub(*front)?).ok()?;
            state.frames.get(index).map(|(_, text)| text.clone())
        });
        match slot {
            Some(Some(text)) => {
                state.cursor += 1;
                state.unsent_bytes -= text.len();
                drop(state);
                // One waiting producer's turn; it passes the turn on while room remains.
                self.writable.notify_one();
                Next::Frame(Outgoing {
                    seq: Some(cursor),
                    text,
                })
            }
            // Being built: it comes, unless its producer failed.
            Some(None) if !state.broken => Next::Wait,
            Some(None) => Next::End,
            None if state.closed => Next::End,
            None => Next::Wait,
        }
    }

    /// The client has every frame up to `seq`: they need not be kept.
    pub fn ack(&self, seq: u64) {
        let mut state = self.lock();
        while state
            .frames
            .front()
            .is_some_and(|(front, _)| *front <= seq && *front < state.cursor)
        {
            self.pop_front(&mut state);
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
            self.pop_front(&mut state);
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

    /// Mirrored outboxes: up to `max` built frames not yet handed to the store, in seq
    /// order, of at most `max_bytes` together (a larger frame goes alone; none when the
    /// next is still being built), and the oldest seq the outbox keeps (what the store
    /// need keep no older than).
    pub fn unstored(&self, max: usize, max_bytes: usize) -> (Vec<KeptFrame>, u64) {
        let mut state = self.lock();
        let Some(front) = state.frames.front().map(|(seq, _)| *seq) else {
            return (Vec::new(), state.next_seq);
        };
        let start = state.to_store.max(front);
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let first = usize::try_from(start - front).unwrap_or(usize::MAX);
        for (seq, text) in state.frames.iter().skip(first).take(max) {
            match text {
                Some(text) => {
                    bytes = bytes.saturating_add(text.len());
                    if bytes > max_bytes && !batch.is_empty() {
                        break;
                    }
                    batch.push(KeptFrame {
                        seq: *seq,
                        text: text.clone(),
                    });
                }
                None => break,
            }
        }
        if let Some(last) = batch.last() {
            state.to_store = last.seq + 1;
        }
        (batch, front)
    }

    /// The highest seq given to a frame so far (0: none), built or still being built.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Mirrored outboxes: every frame up to this seq has been handed to the store (by
    /// [`Outbox::unstored`]).
    pub fn handed_through(&self) -> u64 {
        self.lock().to_store - 1
    }

    /// Mirrored outboxes: frames up to `seq` were written to the store (or given up on
    /// while it is unreachable): the writer may have them.
    pub fn mark_stored(&self, seq: u64) {
        let mut state = self.lock();
        state.stored = state.stored.max(seq);
        drop(state);
        self.readable.notify_one();
    }

    /// Mirrored outboxes: resolves when a frame may be ready for the store.
    pub async fn storable(&self) {
        self.storable.notified().await;
    }

    /// True while built frames wait to be handed to the store.
    pub fn has_unstored(&self) -> bool {
        let state = self.lock();
        let front = state.frames.front().map_or(state.next_seq, |(seq, _)| *seq);
        let start = state.to_store.max(front);
        state
            .frames
            .get(usize::try_from(start - front).unwrap_or(usize::MAX))
            .is_some_and(|(_, text)| text.is_some())
    }

    /// A fresh outbox takes over a session resumed from the store: `frames` (every frame
    /// after `last_seq`, already stored) are written next, and new frames follow
    /// `stored`.
    pub fn restore(&self, last_seq: u64, stored: u64, frames: Vec<KeptFrame>) {
        let mut state = self.lock();
        for frame in frames {
            let len = frame.text.len();
            state.frames.push_back((frame.seq, Some(frame.text)));
            state.unsent_bytes += len;
            self.keep(&mut state, len);
        }
        state.cursor = last_seq + 1;
        state.next_seq = stored + 1;
        state.stored = stored;
        state.to_store = stored + 1;
        drop(state);
        self.readable.notify_one();
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
        self.storable.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update under this lock is a few plain assignments that cannot panic
        // half-way, so a poisoned lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(membership) = &self.budget {
            let kept = self.lock().kept_bytes;
            membership.budget.used.fetch_sub(kept, Ordering::Relaxed);
            membership
                .budget
                .outboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&membership.id);
        }
    }
}

/// A slot reserved for a frame being built; if the build fails (panics), the outbox is
/// broken: its writer stops at the empty slot and producers get [`Closed`].
struct Reserved<'a> {
    outbox: &'a Outbox,
    seq: u64,
    filled: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.filled {
            let mut state = self.outbox.lock();
            state.broken = true;
            state.closed = true;
            drop(state);
            tracing::error!(
                seq = self.seq,
                "a frame could not be built; the session ends"
            );
            self.outbox.wake_all();
        }
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
    async fn a_mirrored_outbox_gives_the_writer_only_stored_frames() {
        let budget = ResumeBudget::new(1 << 20);
        let outbox = Outbox::mirrored(limits(1024, 100, 100_000), &budget);
        for i in 1..=3 {
            outbox.push(|_| format!("f{i}")).await.unwrap();
        }
        assert_eq!(outbox.try_next(outbox.attachment()), None);
        let (batch, oldest) = outbox.unstored(2, 1024);
        assert_eq!(batch.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(oldest, 1);
        assert!(outbox.has_unstored());
        outbox.mark_stored(2);
        assert_eq!(texts(&outbox, 2).await[1], (Some(2), "f2".to_owned()));
        assert_eq!(outbox.try_next(outbox.attachment()), None);
        assert_eq!(outbox.unstored(10, 1024).0[0].seq, 3);
        assert!(!outbox.has_unstored());
        outbox.mark_stored(3);
        assert_eq!(texts(&outbox, 1).await[0].0, Some(3));
    }

    #[tokio::test]
    async fn a_restored_outbox_replays_the_stored_frames_then_numbers_on() {
        let budget = ResumeBudget::new(1 << 20);
        let outbox = Outbox::mirrored(limits(1024, 100, 100_000), &budget);
        let stored = (5..=7)
            .map(|seq| KeptFrame {
                seq,
                text: Utf8Bytes::from(format!("f{seq}")),
            })
            .collect();
        outbox.restore(4, 7, stored);
        let seqs: Vec<_> = texts(&outbox, 3)
            .await
            .iter()
            .map(|(s, _)| s.unwrap())
            .collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert_eq!(outbox.push(|_| "f8".into()).await.unwrap(), 8);
        assert_eq!(outbox.unstored(10, 1024).0[0].seq, 8);
    }

    #[tokio::test]
    async fn a_store_batch_is_bounded_in_bytes_but_takes_a_larger_frame_alone() {
        let budget = ResumeBudget::new(1 << 20);
        let outbox = Outbox::mirrored(limits(1 << 16, 100, 100_000), &budget);
        for len in [4, 4, 10, 4] {
            outbox.push(|_| "x".repeat(len)).await.unwrap();
        }
        let seqs = |batch: Vec<KeptFrame>| batch.iter().map(|f| f.seq).collect::<Vec<_>>();
        assert_eq!(seqs(outbox.unstored(64, 8).0), [1, 2]);
        assert_eq!(seqs(outbox.unstored(64, 8).0), [3]);
        let (last, oldest) = outbox.unstored(64, 8);
        assert_eq!((seqs(last), oldest), (vec![4], 1));
        // Acked frames are no longer kept: the store keeps nothing older either.
        outbox.mark_stored(4);
        texts(&outbox, 4).await;
        outbox.ack(2);
        assert_eq!(outbox.unstored(64, 8).1, 3);
    }

    #[test]
    fn the_budget_admits_a_restore_only_when_it_fits() {
        let budget = ResumeBudget::new(100);
        assert!(budget.admits(100));
        assert!(!budget.admits(101));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiting_producers_all_get_through_in_seq_order() {
        let outbox = Arc::new(Outbox::new(limits(64, 10_000, 1 << 20)));
        let producers: Vec<_> = (0..50u32)
            .map(|p| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for i in 0..20u32 {
                        outbox.push(|_| format!("{p:04}:{i:04}")).await.unwrap();
                    }
                })
            })
            .collect();
        let mut last = vec![None; 50];
        for expected_seq in 1..=1000u64 {
            let frame = outbox.next(outbox.attachment()).await.unwrap();
            assert_eq!(frame.seq, Some(expected_seq), "no gap, no reordering");
            let (p, i) = frame.text.as_str().split_once(':').unwrap();
            let (p, i): (usize, u32) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                last[p].map_or(0, |l: u32| l + 1),
                i,
                "each producer's order kept"
            );
            last[p] = Some(i);
            assert!(
                outbox.unsent_bytes() <= 64 + 2 * 9,
                "bounded while producers wait"
            );
        }
        for producer in producers {
            producer.await.unwrap();
        }
    }

    fn written(outbox: &Outbox, frames: usize, len: usize) {
        for _ in 0..frames {
            outbox_push_now(outbox, len);
            outbox
                .try_next(outbox.attachment())
                .expect("a frame to write");
        }
    }

    fn outbox_push_now(outbox: &Outbox, len: usize) {
        let pushed = futures::FutureExt::now_or_never(outbox.push(|_| "x".repeat(len)));
        assert!(matches!(pushed, Some(Ok(_))), "{pushed:?}");
    }

    #[test]
    fn over_the_budget_attached_sessions_drop_their_oldest_written_frames_first() {
        let budget = ResumeBudget::new(100);
        let wide = limits(1 << 20, 10_000, 1 << 20);
        let reader = Outbox::with_budget(wide, &budget);
        written(&reader, 10, 10);
        assert_eq!(budget.used(), 100);
        let away = Outbox::with_budget(wide, &budget);
        away.detach();
        for _ in 0..3 {
            outbox_push_now(&away, 10);
        }
        // At 110 > 100 the attached session's oldest written frames went, down to 7/8.
        assert_eq!(reader.kept_bytes(), 70);
        assert_eq!(budget.used(), 100);
        assert_eq!(
            away.kept_bytes(),
            30,
            "the detached session keeps all of its frames"
        );
        assert_eq!(reader.attach(0), Err(Unresumable::Incomplete(0)));
        assert_eq!(away.attach(0), Ok(()));
    }

    #[test]
    fn a_detached_session_overflows_when_nothing_written_is_left_to_drop() {
        let budget = ResumeBudget::new(50);
        let wide = limits(1 << 20, 10_000, 1 << 20);
        let reader = Outbox::with_budget(wide, &budget);
        written(&reader, 2, 10);
        let away = Outbox::with_budget(wide, &budget);
        away.detach();
        for _ in 0..4 {
            outbox_push_now(&away, 10);
        }
        assert_eq!(reader.kept_bytes(), 0, "written frames went first");
        assert_eq!(away.kept_bytes(), 40);
        outbox_push_now(&away, 10);
        let over = futures::FutureExt::now_or_never(away.push(|_| "x".repeat(10)));
        assert_eq!(over, Some(Err(Closed)));
        assert_eq!(away.attach(0), Err(Unresumable::Overflowed));
        assert_eq!(
            budget.used(),
            0,
            "an overflowed session frees its frames at once"
        );
    }

    #[test]
    fn unwritten_frames_of_attached_sessions_are_never_dropped_for_the_budget() {
        let budget = ResumeBudget::new(10);
        let outbox = Outbox::with_budget(limits(1 << 20, 10_000, 1 << 20), &budget);
        for _ in 0..5 {
            outbox_push_now(&outbox, 10);
        }
        assert_eq!(outbox.kept_bytes(), 50);
        for seq in 1..=5 {
            assert_eq!(outbox.try_next(outbox.attachment()).unwrap().seq, Some(seq));
        }
        outbox_push_now(&outbox, 10);
        assert!(budget.used() <= 10, "{}", budget.used());
        drop(outbox);
        assert_eq!(budget.used(), 0, "a dropped outbox gives its bytes back");
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
