//! What a client session leaves in the store so that another instance can resume it:
//! its kept frames, the ids of its upstream sessions, and who owns it.
//!
//! [`SessionStore`] is the trait; [`MemorySessions`] (the default) stores nothing (a
//! session lives and is resumed only in the memory of its instance, as on a single
//! gateway), [`RedisSessions`] keeps, per client session:
//! - `mcpmux:frames:{id}`: a Redis Stream of its kept frames, each under the id
//!   `<seq>-1`, trimmed with every write to what the session's outbox still keeps (so
//!   never more than `resumeMaxFrames`/`resumeMaxBytes`);
//! - `mcpmux:session:{id}`: a hash with its owner (`<instance>/<lease token>` of the
//!   process that owns it, empty once released by a drain), the API key that opened it,
//!   the highest seq stored or given up on, the highest seq that may be missing from
//!   the stream (`gap`: frames given up on during an outage), the client frames read
//!   (`welcome.received`), and one field `up:{server}` per upstream session with its
//!   ids (JSON: `Mcp-Session-Id`, negotiated version, the standalone stream's last event
//!   id, and whether it can move to another instance), and one field
//!   `req:{server}\n{id key}` per request in flight to a movable upstream session
//!   (ids up to 256 bytes, see [`recordable_id`]), holding the request's id verbatim (so that the instance that takes the session
//!   over can answer it, see [`RequestLog`]).
//!
//! Both expire `resumeWindowMs` after their last write; the owner refreshes them while
//! the session lives, and rebuilds the hash whole (owner, key, every upstream session)
//! when Redis lost it. An instance is alive while its lease `mcpmux:instance:{name}`
//! holds its process's token (held and renewed by the store, [`super::LEASE`]); a dead
//! instance's lease expires (or a restarted process of the same name holds another
//! token), and its sessions may then be taken by another instance (an atomic Lua script
//! checks owner, lease name and token, and sets the new owner in one step).
//!
//! Ordering rule: a frame is in the store before the socket is given it (see
//! [`crate::outbox`]), so anything a client saw can be resumed elsewhere.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::{KEY_PREFIX, OWNER_SEPARATOR, RedisLink, Store, StoreError};
use crate::config::GatewayConfig;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    /// Redis failed or did not answer in time.
    #[error("the session store failed: {0}")]
    Store(#[from] StoreError),
    /// What the store holds is not what this gateway writes.
    #[error("the session store holds a malformed record: {0}")]
    Malformed(String),
    /// Another instance owns the session now (it took it over): this one writes no more
    /// of it.
    #[error("another instance owns the session now")]
    NotOwner,
    /// The session's record is gone from the store (Redis restarted empty, or evicted
    /// it): the next write must rebuild it whole.
    #[error("the session store lost the session's record")]
    Missing,
}

/// One kept frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptFrame {
    /// Its sequence number.
    pub seq: u64,
    /// Its JSON text, exactly as sent.
    pub text: Utf8Bytes,
}

/// The ids of one upstream session, enough for another instance to go on with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamIds {
    /// `Mcp-Session-Id`, if the server gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The negotiated protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The id of the last event of the standalone GET stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// False for sessions that cannot move: with a stdio server (its mcp-proxy child is
    /// local to the instance) or over the legacy HTTP+SSE transport (bound to its
    /// stream).
    pub movable: bool,
}

/// What the store holds about a session, read by the instance that takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSession {
    /// The API key that opened it (`None` on a gateway without keys).
    pub key: Option<String>,
    /// The highest seq stored (0: none yet).
    pub last_seq: u64,
    /// Client frames read after `hello`, as of the last write.
    pub received: u64,
    /// The highest seq that may be missing from the store (frames given up on while
    /// it did not answer; 0: none): a resume from before it is refused.
    pub gap: u64,
    /// Its upstream sessions, by server name.
    pub upstreams: Vec<(String, UpstreamIds)>,
    /// Requests in flight to movable upstream sessions when last written: the field
    /// each is stored under, its server's name and its id verbatim (JSON text, as the
    /// store gave it: to be checked before use).
    pub requests: Vec<StoredRequest>,
}

/// A request recorded in flight in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The field it is stored under (`req:{server}\n{id key}`).
    pub field: String,
    /// The server it was carried to.
    pub server: String,
    /// Its id, verbatim.
    pub id: String,
}

impl StoredSession {
    /// Whether `frames`, read after `last_seq`, replay exactly every frame the client
    /// missed: nothing may be missing after `last_seq` (no gap past it) and they are
    /// contiguous up to the highest seq stored. A resume is never partial.
    pub fn replays_all(&self, last_seq: u64, frames: &[KeptFrame]) -> bool {
        last_seq >= self.gap && contiguous(last_seq, self.last_seq, frames)
    }
}

/// A stored session and its frames after a seq, oldest first; `None` when they exceed
/// the reader's resume limits (`resumeMaxFrames`, `resumeMaxBytes`).
pub type ReadSession = (StoredSession, Option<Vec<KeptFrame>>);

/// The answer to a claim of ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The caller owns the session now.
    Taken,
    /// A live instance owns it (its name): leave it alone.
    Elsewhere(String),
    /// This very process owns it: it is live here (a claim on it is under way).
    Here,
    /// The store knows no such session.
    Unknown,
}

/// Changes of one client session waiting for the next write: the frames come from its
/// outbox, the rest from here.
#[derive(Debug, Default)]
pub struct Pending {
    /// Upstream sessions changed (`Some`) or ended (`None`), by server name.
    pub upstreams: HashMap<String, Option<UpstreamIds>>,
    /// The client acknowledged every frame up to this seq.
    pub acked: Option<u64>,
    /// Requests in flight recorded (`Some(id)`, verbatim) or ended (`None`), by field.
    pub requests: HashMap<String, Option<String>>,
    /// Every `req:` field stored is to be removed first (the record of requests
    /// overflowed while the store did not answer; `requests` then holds every request
    /// in flight).
    pub requests_reset: bool,
}

/// The most requests a session keeps waiting for a write whose end no frame stores
/// (cancelled ones); past it (a store that has not answered for long), they are
/// dropped and the record is rewritten whole with the next write. Ends that wait for
/// their answer's frame are bounded by the frames the outbox keeps.
const MAX_ENDED_REQUESTS: usize = 1024;

/// The longest request id recorded in flight, in bytes (as sent and canonical): a
/// request with a longer id is not recorded (it gets no `session_lost` after its
/// instance stops), so that a client cannot fill the shared store with ids up to
/// `maxFrameBytes`.
const MAX_RECORDED_ID_BYTES: usize = 256;

/// Whether a request with id `id` (verbatim) and canonical id `key` is short enough to
/// be recorded in flight (see [`MAX_RECORDED_ID_BYTES`]).
pub fn recordable_id(id: &str, key: &str) -> bool {
    id.len() <= MAX_RECORDED_ID_BYTES && key.len() <= MAX_RECORDED_ID_BYTES
}

/// A request recorded in flight and not ended.
#[derive(Debug)]
struct LiveRequest {
    /// Tells it from a later request that reused its id (per client session).
    serial: u64,
    /// Its id, verbatim.
    id: String,
    /// Its field may be in the store (its start, or an earlier request's under the
    /// same field, was taken for a write): its end must be written.
    stored: bool,
}

/// The requests in flight to movable upstream sessions, as a client session's store
/// writer sees them. A request is recorded when it is carried and removed when it ends;
/// its end is written only with the batch that stores its answer (the frame whose seq
/// it ended with), never before nor after it, and a request that starts and ends
/// between two writes costs the store nothing.
#[derive(Debug, Default)]
struct RequestLog {
    /// Recorded and not ended, by field. Bounded by `maxInflightRequests`, as requests
    /// in flight are.
    live: HashMap<String, LiveRequest>,
    /// Recorded since the last write, by field (their ids are in `live`).
    started: std::collections::HashSet<String>,
    /// Ended after their start was taken for a write, by field: the seq of the frame
    /// that answered them (0: none) and their id. Those with seq 0 are bounded by
    /// [`MAX_ENDED_REQUESTS`], the others by the outbox's kept frames.
    ended: HashMap<String, (u64, String)>,
    /// Ended requests overflowed: the next write rewrites the record whole.
    reset: bool,
}

/// The store field of a request to `server` whose canonical id is `key`.
pub fn request_field(server: &str, key: &str) -> String {
    format!("{REQUEST_FIELD}{server}\n{key}")
}

/// What a client session shares with the task that writes it to the store: the
/// upstream changes not yet written and the count of client frames read. Only sessions
/// of a gateway with a persistent store have one.
#[derive(Debug)]
pub struct SessionMirror {
    /// The client session's id.
    pub id: String,
    pending: Mutex<Pending>,
    received: AtomicU64,
    requests: Mutex<RequestLog>,
    /// Woken when something is pending.
    pub wake: Notify,
}

impl SessionMirror {
    /// A mirror of session `id`.
    pub fn new(id: String, received: u64) -> Arc<Self> {
        Arc::new(Self {
            id,
            pending: Mutex::default(),
            received: AtomicU64::new(received),
            requests: Mutex::default(),
            wake: Notify::new(),
        })
    }

    /// An upstream session with `server` changed its ids (or ended: `None`).
    pub fn upstream_changed(&self, server: &str, ids: Option<UpstreamIds>) {
        self.lock().upstreams.insert(server.to_owned(), ids);
        self.wake.notify_one();
    }

    /// The client acknowledged every frame up to `seq`.
    pub fn acked(&self, seq: u64) {
        let mut pending = self.lock();
        pending.acked = pending.acked.max(Some(seq));
        drop(pending);
        self.wake.notify_one();
    }

    /// The client session has read `count` client frames.
    pub fn set_received(&self, count: u64) {
        self.received.store(count, Ordering::Relaxed);
    }

    /// Client frames read so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Request `field` (serial `serial`, id `id` verbatim) was carried. The writer is
    /// woken: until the start is stored, a crash would leave the request unanswered
    /// (a writer that is busy takes it with its next write).
    pub fn request_started(&self, field: String, serial: u64, id: &str) {
        let mut log = self.lock_requests();
        // A reused id supersedes the earlier request's end; if that request's field
        // may be stored, this one's end must remove it.
        let ended = log.ended.remove(&field).is_some();
        let stored = ended || log.live.get(&field).is_some_and(|earlier| earlier.stored);
        log.started.insert(field.clone());
        let id = id.to_owned();
        log.live.insert(field, LiveRequest { serial, id, stored });
        drop(log);
        self.wake.notify_one();
    }

    /// Request `field` (serial `serial`) ended, answered by the frame `seq` (0: by
    /// none). Called before that frame is in the outbox, so that the writer, which
    /// takes ends after frames, finds the end with the answer. Nothing for a request
    /// not recorded (or already ended).
    pub fn request_ended(&self, field: &str, serial: u64, seq: u64) {
        let mut log = self.lock_requests();
        if log.live.get(field).is_none_or(|live| live.serial != serial) {
            return;
        }
        let Some(live) = log.live.remove(field) else {
            return;
        };
        if log.started.remove(field) && !live.stored {
            // Never taken for a write: nothing to undo.
            return;
        }
        self.end_field(&mut log, field, seq, live.id);
    }

    /// A stored request `field` was answered by the frame `seq` (after a takeover):
    /// its field goes with the write that stores that frame.
    pub fn request_forgotten(&self, field: &str, seq: u64, id: &str) {
        let mut log = self.lock_requests();
        self.end_field(&mut log, field, seq, id.to_owned());
    }

    fn end_field(&self, log: &mut RequestLog, field: &str, seq: u64, id: String) {
        let overflows = seq == 0
            && log.ended.len() >= MAX_ENDED_REQUESTS
            && !log.ended.contains_key(field)
            && {
                let cancelled = log.ended.values().filter(|(seq, _)| *seq == 0).count();
                cancelled >= MAX_ENDED_REQUESTS
            };
        if overflows {
            if !log.reset {
                tracing::warn!(
                    "too many cancelled requests wait for the session store; their record will be rewritten whole"
                );
            }
            // The rewrite leaves out every request not in flight; ends that wait for
            // their answer's frame stay, and are rewritten as in flight until it is
            // stored.
            log.reset = true;
            log.ended.retain(|_, (seq, _)| *seq != 0);
        } else {
            log.ended.insert(field.to_owned(), (seq, id));
        }
        self.wake.notify_one();
    }

    /// Takes what is pending, except requests (see [`Self::take_requests`]).
    pub fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    /// Moves into `pending` the requests started and those ended by a frame up to
    /// `handed` (the last frame handed to the store with this write or before). Call it
    /// after the batch's frames were taken from the outbox.
    pub fn take_requests(&self, pending: &mut Pending, handed: u64) {
        let mut log = self.lock_requests();
        if log.started.is_empty() && log.ended.is_empty() && !log.reset {
            return;
        }
        if log.reset {
            log.reset = false;
            log.started.clear();
            pending.requests_reset = true;
            let RequestLog { live, ended, .. } = &mut *log;
            // Ended ones whose answer is not stored yet are still in flight for the
            // store: written again, and removed with their answer.
            ended.retain(|_, (seq, _)| *seq > handed);
            for (field, request) in live.iter_mut() {
                request.stored = true;
                pending
                    .requests
                    .insert(field.clone(), Some(request.id.clone()));
            }
            for (field, (_, id)) in ended.iter() {
                pending.requests.insert(field.clone(), Some(id.clone()));
            }
            return;
        }
        for field in std::mem::take(&mut log.started) {
            if let Some(request) = log.live.get_mut(&field) {
                request.stored = true;
                pending.requests.insert(field, Some(request.id.clone()));
            }
        }
        log.ended.retain(|field, (seq, _)| {
            if *seq > handed {
                return true;
            }
            pending.requests.insert(field.clone(), None);
            false
        });
    }

    /// Has the next write record every request in flight anew (the store lost the
    /// session's record, which is being rebuilt).
    pub fn rewrite_requests(&self) {
        self.lock_requests().reset = true;
        self.wake.notify_one();
    }

    /// Puts back what a failed write took, under what changed since.
    pub fn restore(&self, failed: Pending) {
        let mut pending = self.lock();
        for (server, ids) in failed.upstreams {
            pending.upstreams.entry(server).or_insert(ids);
        }
        pending.acked = pending.acked.max(failed.acked);
        drop(pending);
        if failed.requests.is_empty() && !failed.requests_reset {
            return;
        }
        let mut log = self.lock_requests();
        if failed.requests_reset {
            log.reset = true;
            return;
        }
        for (field, change) in failed.requests {
            let newer = log.started.contains(&field) || log.ended.contains_key(&field);
            match change {
                // Written again if it is still in flight.
                Some(_) if !newer && log.live.contains_key(&field) => {
                    log.started.insert(field);
                }
                Some(_) => {}
                None if !newer => self.end_field(&mut log, &field, 0, String::new()),
                None => {}
            }
        }
    }

    fn lock_requests(&self) -> std::sync::MutexGuard<'_, RequestLog> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One write of a session: frames, upstream changes, the received count.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// Frames in seq order (possibly none).
    pub frames: &'a [KeptFrame],
    /// Upstream changes.
    pub pending: &'a Pending,
    /// Client frames read.
    pub received: u64,
    /// The API key that opened the session (to rebuild a lost record with).
    pub key: Option<&'a str>,
    /// The lowest seq the stream keeps ([`keep_from`]); 0 when it did not move since
    /// the last write (no trim is made).
    pub keep_from: u64,
    /// The highest seq given up on (never stored) since the last write: recorded as the
    /// session's gap (0: none).
    pub lost: u64,
    /// The highest seq handed to the store before this batch: if the record must be
    /// rebuilt, every frame up to it may be gone, and it becomes the gap.
    pub handed: u64,
    /// Every upstream session of the session, to rebuild a lost record with (sent only
    /// after the store answered [`SessionStoreError::Missing`]).
    pub rebuild: Option<&'a HashMap<String, UpstreamIds>>,
}

/// The lowest stream id a write keeps: what the outbox keeps, and nothing up to a gap
/// (a resume from there is refused anyway).
pub fn keep_from(oldest_kept: u64, lost: u64) -> u64 {
    oldest_kept.max(lost.saturating_add(1))
}

/// The highest seq handed to a Lua script as a number: `tonumber` reads a double, so
/// a larger one would be rounded (and a trim id built from it might be one Redis
/// refuses). Seqs count frames from 1, so only a hostile record comes near it.
pub const MAX_LUA_SEQ: u64 = (1 << 53) - 1;

/// `seq` clamped to what a Lua script reads exactly ([`MAX_LUA_SEQ`]).
pub fn lua_seq(seq: u64) -> u64 {
    seq.min(MAX_LUA_SEQ)
}

/// Where client sessions are kept for resume on another instance.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// True when sessions outlive their instance (the store is shared); false for the
    /// in-memory default, which then needs nothing written.
    fn shared(&self) -> bool;

    /// A receiver that changes each time the store answers again after an outage (none
    /// for a store that has no outages): a session that lost writes records its gap then.
    fn recoveries(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Records a new session, owned by this instance, opened by `key`.
    fn open<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>>;

    /// Writes a batch of session `id` (and refreshes its expiry), only while this
    /// process owns it; [`SessionStoreError::Missing`] when its record is gone and the
    /// batch does not carry what rebuilds it.
    fn append<'a>(
        &'a self,
        id: &'a str,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>>;

    /// Takes ownership of session `id` for a claimant with `key` if its owner is gone
    /// (its lease expired) or released it. A session opened by another key is unknown.
    fn take<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ownership, SessionStoreError>>;

    /// What is stored of session `id`, with its frames after `after`, oldest first,
    /// unless they exceed this instance's resume limits.
    fn read<'a>(
        &'a self,
        id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Option<ReadSession>, SessionStoreError>>;

    /// Gives session `id` up for another instance to take (a drain); its state stays.
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>>;

    /// Session `id` is over: everything stored of it goes.
    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>>;
}

/// The default: sessions live in the memory of their instance only, and nothing is
/// written anywhere.
#[derive(Debug, Default)]
pub struct MemorySessions;

fn nothing<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, SessionStoreError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl SessionStore for MemorySessions {
    fn shared(&self) -> bool {
        false
    }
    fn open<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        nothing(())
    }
    fn append<'a>(
        &'a self,
        _: &'a str,
        _: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        nothing(())
    }
    fn take<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ownership, SessionStoreError>> {
        // A session not in this instance's memory is unknown.
        nothing(Ownership::Unknown)
    }
    fn read<'a>(
        &'a self,
        _: &'a str,
        _: u64,
    ) -> BoxFuture<'a, Result<Option<ReadSession>, SessionStoreError>> {
        nothing(None)
    }
    fn release<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        nothing(())
    }
    fn forget<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        nothing(())
    }
}

/// Takes a session: KEYS[1] its hash; ARGV[1] this process's owner value
/// (`<instance>/<token>`), ARGV[2] the prefix of instance leases, ARGV[3] the expiry
/// (ms), ARGV[4] the claimant's key name (empty: none). The owner is alive while the
/// lease of its name holds its token (an owner without a token, written by an older
/// version, while the lease exists). Returns {0} unknown (or opened by another key),
/// {1, name} owned by a live instance, {2} taken, {3} owned by this very process.
const TAKE_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return {0} end
if (redis.call('HGET', KEYS[1], 'key') or '') ~= ARGV[4] then return {0} end
if owner == ARGV[1] then return {3} end
if owner ~= '' then
  local name, token = string.match(owner, '^([^/]*)/(.*)$')
  if not name then
    if redis.call('EXISTS', ARGV[2] .. owner) == 1 then return {1, owner} end
  elseif redis.call('GET', ARGV[2] .. name) == token then
    return {1, name}
  end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {2}
";

/// Appends a batch, only while this process owns the session: KEYS[1] its hash,
/// KEYS[2] its stream; ARGV[1] this process's owner value, ARGV[2] the expiry (ms),
/// ARGV[3] the key name that opened it, ARGV[4] `received`, ARGV[5] the lowest seq to
/// keep in the stream (0: no trim), ARGV[6] the highest seq given up on (0: none), ARGV[7] the
/// highest seq handed before this batch, ARGV[8] '1' when the pairs below are every
/// upstream session (the record may be rebuilt), ARGV[9] the number of frames n, then
/// n pairs (seq, frame), then pairs (upstream field, ids as JSON; or request field, the
/// request's id; empty: removed), the pair (`*req`, ``) first removing every request
/// field. A missing record is rebuilt whole (owner, key, gap, seq, upstream sessions) only
/// from a batch that carries every upstream session. Every write sets `seq` to the
/// highest of itself, the gap, the seq handed before the batch and the batch's last
/// frame: frames given up on were sent to the client, so a write that records only a
/// gap still tells a resume from the client's last seq that nothing after it is
/// missing. Numbers arrive below 2^53 ([`lua_seq`]): Lua reads them as doubles.
/// Returns 0 (not the owner), 1 (written) or 2 (the record is gone: nothing written).
const APPEND_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local gap = tonumber(ARGV[6])
if not owner then
  if ARGV[8] ~= '1' then return 2 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'key', ARGV[3], 'seq', ARGV[7])
  gap = math.max(gap, tonumber(ARGV[7]))
elseif owner ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[9])
local i = 10
for _ = 1, n do
  redis.call('XADD', KEYS[2], ARGV[i] .. '-1', 'f', ARGV[i + 1])
  i = i + 2
end
local top = math.max(tonumber(redis.call('HGET', KEYS[1], 'seq') or '0'), gap, tonumber(ARGV[7]))
if n > 0 then top = math.max(top, tonumber(ARGV[i - 2])) end
redis.call('HSET', KEYS[1], 'seq', string.format('%.0f', top))
while i < #ARGV do
  if ARGV[i] == '*req' then
    for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
      if string.sub(field, 1, 4) == 'req:' then redis.call('HDEL', KEYS[1], field) end
    end
  elseif ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
local keep = tonumber(ARGV[5])
if gap > 0 then
  if gap > tonumber(redis.call('HGET', KEYS[1], 'gap') or '0') then
    redis.call('HSET', KEYS[1], 'gap', string.format('%.0f', gap))
  end
  keep = math.max(keep, gap + 1)
end
if keep > 0 then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%.0f', keep) .. '-0')
end
redis.call('HSET', KEYS[1], 'received', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Reads a session for a takeover, bounded: KEYS[1] its hash, KEYS[2] its stream;
/// ARGV[1] the first stream id, ARGV[2] the most entries, ARGV[3] the most bytes of
/// frames. Returns {hash as field/value pairs, entries, 0}, or {hash, {}, 1} when the
/// frames exceed ARGV[3] bytes.
const READ_SCRIPT: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
local bytes = 0
local cap = tonumber(ARGV[3])
for _, entry in ipairs(entries) do
  local values = entry[2]
  bytes = bytes + #(values[#values] or '')
  if bytes > cap then return {fields, {}, 1} end
end
return {fields, entries, 0}
";

/// Releases a session (a drain), only while this process owns it: KEYS[1] its hash,
/// KEYS[2] its stream; ARGV[1] this process's owner value, ARGV[2] the expiry (ms).
/// Returns 0 (not the owner, or the record is gone) or 1.
const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Forgets a session, unless another process owns it: KEYS[1] its hash, KEYS[2] its
/// stream; ARGV[1] this process's owner value. Returns 0 (another owner) or 1.
const FORGET_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// The session store `store` calls for: Redis when configured, else memory only.
pub fn open(store: &Store, config: &GatewayConfig) -> Arc<dyn SessionStore> {
    match store.redis() {
        Some(link) => Arc::new(RedisSessions::new(
            link.clone(),
            store
                .owner()
                .unwrap_or_else(|| store.instance().to_string())
                .into(),
            config.resume_window,
            (config.resume_max_frames, config.resume_max_bytes),
        )),
        None => Arc::new(MemorySessions),
    }
}

/// Sessions kept in Redis, shared by every instance that uses the same Redis.
pub struct RedisSessions {
    link: RedisLink,
    /// `mcpmux:`, the prefix of every key.
    prefix: String,
    /// This process's owner value, `<instance>/<lease token>` ([`Store::owner`]).
    owner: Arc<str>,
    /// `resumeWindowMs`: the expiry of a session's keys after their last write.
    window_ms: u64,
    /// `resumeMaxFrames`, `resumeMaxBytes`: the most a takeover reads.
    max_frames: usize,
    max_bytes: usize,
    take: redis::Script,
    append: redis::Script,
    read: redis::Script,
    release: redis::Script,
    forget: redis::Script,
}

impl fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The owner value holds the lease token: only the instance name is shown.
        let instance = self.owner.split(OWNER_SEPARATOR).next().unwrap_or_default();
        f.debug_struct("RedisSessions")
            .field("instance", &instance)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// Sessions owned by `owner` (this process's owner value) in the Redis behind
    /// `link`; a takeover reads at most `limits` (frames, bytes).
    pub fn new(
        link: RedisLink,
        owner: Arc<str>,
        window: Duration,
        (max_frames, max_bytes): (usize, usize),
    ) -> Self {
        Self {
            link,
            prefix: KEY_PREFIX.to_owned(),
            owner,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            take: redis::Script::new(TAKE_SCRIPT),
            append: redis::Script::new(APPEND_SCRIPT),
            read: redis::Script::new(READ_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            forget: redis::Script::new(FORGET_SCRIPT),
        }
    }

    fn frames_key(&self, id: &str) -> String {
        format!("{}frames:{id}", self.prefix)
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn lease_prefix(&self) -> String {
        format!("{}instance:", self.prefix)
    }

    /// Fails at once while Redis is in an outage: a session write is not tried (nor
    /// waited for) per frame and per session; the link's probe sees the outage end.
    fn up(&self) -> Result<(), SessionStoreError> {
        match self.link.is_up() {
            true => Ok(()),
            false => Err(StoreError::Down.into()),
        }
    }

    /// One append (see [`SessionStore::append`]).
    async fn write(&self, id: &str, batch: Batch<'_>) -> Result<(), SessionStoreError> {
        self.up()?;
        let mut connection = self.link.connection();
        let mut invocation = self.append.key(self.session_key(id));
        invocation.key(self.frames_key(id));
        invocation
            .arg(&*self.owner)
            .arg(self.window_ms)
            .arg(batch.key.unwrap_or(""))
            .arg(batch.received)
            .arg(lua_seq(batch.keep_from))
            .arg(lua_seq(batch.lost))
            .arg(lua_seq(batch.handed))
            .arg(if batch.rebuild.is_some() { "1" } else { "0" })
            .arg(batch.frames.len());
        for frame in batch.frames {
            invocation.arg(frame.seq).arg(frame.text.as_bytes());
        }
        match batch.rebuild {
            // Every upstream session; the changes are in it already.
            Some(all) => {
                for (server, ids) in all {
                    invocation
                        .arg(format!("{UPSTREAM_FIELD}{server}"))
                        .arg(upstream_json(ids)?);
                }
                for (server, ids) in &batch.pending.upstreams {
                    if ids.is_none() {
                        invocation.arg(format!("{UPSTREAM_FIELD}{server}")).arg("");
                    }
                }
            }
            None => {
                for (server, ids) in &batch.pending.upstreams {
                    invocation.arg(format!("{UPSTREAM_FIELD}{server}"));
                    match ids {
                        Some(ids) => invocation.arg(upstream_json(ids)?),
                        None => invocation.arg(""),
                    };
                }
            }
        }
        if batch.pending.requests_reset {
            invocation.arg(RESET_REQUESTS).arg("");
        }
        for (field, id) in &batch.pending.requests {
            invocation.arg(field).arg(id.as_deref().unwrap_or(""));
        }
        let answer: i64 = self
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        match answer {
            2 => Err(SessionStoreError::Missing),
            answer => owned(answer),
        }
    }
}

const UPSTREAM_FIELD: &str = "up:";
const REQUEST_FIELD: &str = "req:";
/// The pair that first removes every request field, in an append.
const RESET_REQUESTS: &str = "*req";

fn malformed(err: impl fmt::Display) -> SessionStoreError {
    SessionStoreError::Malformed(err.to_string())
}

fn upstream_json(ids: &UpstreamIds) -> Result<String, SessionStoreError> {
    serde_json::to_string(ids).map_err(malformed)
}

impl SessionStore for RedisSessions {
    fn shared(&self) -> bool {
        true
    }

    fn recoveries(&self) -> Option<watch::Receiver<u64>> {
        Some(self.link.recoveries())
    }

    fn open<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            self.up()?;
            let mut connection = self.link.connection();
            let hash = self.session_key(id);
            let mut pipe = redis::pipe();
            pipe.hset(&hash, "owner", &*self.owner).ignore();
            pipe.hset(&hash, "key", key.unwrap_or("")).ignore();
            pipe.pexpire(&hash, self.window_ms as i64).ignore();
            self.link
                .call(pipe.query_async::<()>(&mut connection))
                .await
                .map_err(Into::into)
        })
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        batch: Batch<'a>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            let written = self.write(id, batch).await;
            if let Err(SessionStoreError::Store(_)) = &written {
                // Its frames went to the socket without the store: counted, not silent.
                self.link.fallback("sessions");
            }
            written
        })
    }

    fn take<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ownership, SessionStoreError>> {
        Box::pin(async move {
            let mut connection = self.link.connection();
            let mut invocation = self.take.key(self.session_key(id));
            invocation
                .arg(&*self.owner)
                .arg(self.lease_prefix())
                .arg(self.window_ms)
                .arg(key.unwrap_or(""));
            let answer: Vec<redis::Value> = self
                .link
                .call(invocation.invoke_async(&mut connection))
                .await?;
            let code: i64 = match answer.first() {
                Some(value) => redis::from_redis_value_ref(value).map_err(malformed)?,
                None => return Err(SessionStoreError::Malformed("empty answer".into())),
            };
            Ok(match code {
                0 => Ownership::Unknown,
                1 => {
                    let owner: String = match answer.get(1) {
                        Some(value) => redis::from_redis_value_ref(value).map_err(malformed)?,
                        None => String::new(),
                    };
                    Ownership::Elsewhere(owner)
                }
                3 => Ownership::Here,
                _ => Ownership::Taken,
            })
        })
    }

    fn read<'a>(
        &'a self,
        id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Option<ReadSession>, SessionStoreError>> {
        Box::pin(async move {
            let mut connection = self.link.connection();
            let mut invocation = self.read.key(self.session_key(id));
            invocation
                .key(self.frames_key(id))
                .arg(format!("{}-0", after.saturating_add(1)))
                // One more than the limit: more frames than it are refused, not cut.
                .arg(self.max_frames.saturating_add(1))
                .arg(self.max_bytes);
            type Entry = (String, Vec<Vec<u8>>);
            let (pairs, entries, over): (Vec<String>, Vec<Entry>, i64) = self
                .link
                .call(invocation.invoke_async(&mut connection))
                .await?;
            if pairs.is_empty() {
                return Ok(None);
            }
            let stored = stored_session(&pairs)?;
            if over != 0 || entries.len() > self.max_frames {
                return Ok(Some((stored, None)));
            }
            let mut frames = Vec::with_capacity(entries.len());
            for (entry_id, mut values) in entries {
                let seq = entry_id
                    .split_once('-')
                    .and_then(|(seq, _)| seq.parse().ok())
                    .ok_or_else(|| SessionStoreError::Malformed("a frame id".into()))?;
                // Fields and values alternate: `f`, the frame.
                let text = values
                    .pop()
                    .filter(|_| values.len() == 1)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| SessionStoreError::Malformed("a frame".into()))?;
                frames.push(KeptFrame {
                    seq,
                    text: Utf8Bytes::from(text),
                });
            }
            Ok(Some((stored, Some(frames))))
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            self.up()?;
            let mut connection = self.link.connection();
            let mut invocation = self.release.key(self.session_key(id));
            invocation
                .key(self.frames_key(id))
                .arg(&*self.owner)
                .arg(self.window_ms);
            owned(
                self.link
                    .call(invocation.invoke_async(&mut connection))
                    .await?,
            )
        })
    }

    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            self.up()?;
            let mut connection = self.link.connection();
            let mut invocation = self.forget.key(self.session_key(id));
            invocation.key(self.frames_key(id)).arg(&*self.owner);
            owned(
                self.link
                    .call(invocation.invoke_async(&mut connection))
                    .await?,
            )
        })
    }
}

/// A session's hash, as field/value pairs, read into what a takeover needs.
fn stored_session(pairs: &[String]) -> Result<StoredSession, SessionStoreError> {
    let mut stored = StoredSession::default();
    let number = |name: &str, value: &str| -> Result<u64, SessionStoreError> {
        value
            .parse()
            .map_err(|_| SessionStoreError::Malformed(format!("{name} is not a number")))
    };
    for pair in pairs.chunks(2) {
        let [field, value] = pair else {
            return Err(SessionStoreError::Malformed("an odd hash".into()));
        };
        match field.as_str() {
            "key" => stored.key = Some(value.clone()).filter(|k| !k.is_empty()),
            // The next seq follows it: the highest is refused as malformed.
            "seq" => {
                stored.last_seq = match number(field, value)? {
                    u64::MAX => {
                        return Err(SessionStoreError::Malformed("seq is out of range".into()));
                    }
                    seq => seq,
                }
            }
            "received" => stored.received = number(field, value)?,
            "gap" => stored.gap = number(field, value)?,
            _ => {
                if let Some(request) = field.strip_prefix(REQUEST_FIELD) {
                    let request = match request.split_once('\n') {
                        Some((server, _)) => StoredRequest {
                            field: field.clone(),
                            server: server.to_owned(),
                            id: value.clone(),
                        },
                        None => {
                            // Not what this gateway writes: the session still resumes;
                            // the empty id is malformed, so the field is deleted
                            // unanswered.
                            tracing::warn!(
                                "the session store holds a malformed request field; it is deleted"
                            );
                            StoredRequest {
                                field: field.clone(),
                                server: String::new(),
                                id: String::new(),
                            }
                        }
                    };
                    stored.requests.push(request);
                } else if let Some(server) = field.strip_prefix(UPSTREAM_FIELD) {
                    let ids: UpstreamIds = serde_json::from_str(value).map_err(malformed)?;
                    stored.upstreams.push((server.to_owned(), ids));
                }
            }
        }
    }
    stored.upstreams.sort_by(|a, b| a.0.cmp(&b.0));
    stored.requests.sort_by(|a, b| a.field.cmp(&b.field));
    Ok(stored)
}

/// The answer of a fenced script: 0 when another instance owns the session.
fn owned(answer: i64) -> Result<(), SessionStoreError> {
    match answer {
        0 => Err(SessionStoreError::NotOwner),
        _ => Ok(()),
    }
}

/// Whether `frames`, read after `last_seq` from a session whose highest stored seq is
/// `stored`, are exactly every frame after `last_seq`: a resume is never partial.
pub fn contiguous(last_seq: u64, stored: u64, frames: &[KeptFrame]) -> bool {
    if last_seq > stored {
        return false;
    }
    let expected = stored - last_seq;
    // Checked: both come from outside (the client, the store) and may be hostile.
    let Some(first) = last_seq.checked_add(1) else {
        return expected == 0 && frames.is_empty();
    };
    u64::try_from(frames.len()).is_ok_and(|n| n == expected)
        && frames
            .iter()
            .zip(first..)
            .all(|(frame, seq)| frame.seq == seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(seqs: &[u64]) -> Vec<KeptFrame> {
        seqs.iter()
            .map(|&seq| KeptFrame {
                seq,
                text: Utf8Bytes::from(format!("{{\"seq\":{seq}}}")),
            })
            .collect()
    }

    #[test]
    fn only_every_frame_after_last_seq_is_a_resume() {
        assert!(contiguous(3, 6, &frames(&[4, 5, 6])));
        assert!(contiguous(6, 6, &frames(&[])));
        // Hostile numbers from the store or the client answer, never overflow.
        assert!(contiguous(u64::MAX, u64::MAX, &frames(&[])));
        assert!(!contiguous(u64::MAX - 1, u64::MAX, &frames(&[])));
        assert!(contiguous(0, 0, &frames(&[])));
        // Trimmed at the front, a gap inside, missing at the end, a future last_seq.
        assert!(!contiguous(3, 6, &frames(&[5, 6])));
        assert!(!contiguous(3, 6, &frames(&[4, 6])));
        assert!(!contiguous(3, 6, &frames(&[4, 5])));
        assert!(!contiguous(7, 6, &frames(&[])));
    }

    #[test]
    fn a_resume_from_before_a_gap_is_refused() {
        let stored = StoredSession {
            last_seq: 9,
            gap: 6,
            ..StoredSession::default()
        };
        // Frames up to 6 may be missing from the store: only a client past them resumes.
        assert!(stored.replays_all(6, &frames(&[7, 8, 9])));
        assert!(stored.replays_all(9, &frames(&[])));
        assert!(!stored.replays_all(5, &frames(&[7, 8, 9])));
        assert!(!stored.replays_all(0, &frames(&[])));
    }

    #[test]
    fn the_stream_keeps_what_the_outbox_keeps_and_nothing_up_to_a_gap() {
        assert_eq!(keep_from(5, 0), 5);
        assert_eq!(keep_from(5, 7), 8);
        assert_eq!(keep_from(9, 7), 9);
        assert_eq!(keep_from(1, u64::MAX), u64::MAX);
    }

    #[test]
    fn seqs_handed_to_lua_stay_exact_doubles() {
        assert_eq!(lua_seq(7), 7);
        assert_eq!(lua_seq(MAX_LUA_SEQ), MAX_LUA_SEQ);
        assert_eq!(lua_seq(u64::MAX), MAX_LUA_SEQ);
        assert_eq!(lua_seq(keep_from(1, u64::MAX)), MAX_LUA_SEQ);
        // Every clamped value is a double exactly, and `%.0f` writes it back unchanged.
        assert_eq!(MAX_LUA_SEQ as f64 as u64, MAX_LUA_SEQ);
    }

    #[test]
    fn a_stored_hash_reads_into_a_session_and_hostile_values_are_refused() {
        let pairs = |p: &[(&str, &str)]| -> Vec<String> {
            p.iter()
                .flat_map(|(f, v)| [f.to_string(), v.to_string()])
                .collect()
        };
        let read = stored_session(&pairs(&[
            ("owner", "a/token"),
            ("key", "k"),
            ("seq", "12"),
            ("gap", "4"),
            ("received", "3"),
            ("up:b", r#"{"movable":false}"#),
            ("up:a", r#"{"session_id":"x","movable":true}"#),
        ]))
        .unwrap();
        assert_eq!(
            (read.key.as_deref(), read.last_seq, read.gap, read.received),
            (Some("k"), 12, 4, 3)
        );
        let servers: Vec<_> = read.upstreams.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(servers, ["a", "b"]);
        assert_eq!(stored_session(&pairs(&[("key", "")])).unwrap().key, None);
        for hostile in [
            ("seq", "18446744073709551615"),
            ("gap", "-1"),
            ("up:a", "{"),
        ] {
            assert!(stored_session(&pairs(&[hostile])).is_err(), "{hostile:?}");
        }
        assert!(stored_session(&["owner".to_string()]).is_err());
    }

    #[test]
    fn upstream_ids_round_trip_without_empty_fields() {
        let ids = UpstreamIds {
            session_id: Some("abc".into()),
            protocol_version: Some("2025-11-25".into()),
            last_event_id: None,
            movable: true,
        };
        let json = serde_json::to_string(&ids).unwrap();
        assert_eq!(
            json,
            r#"{"session_id":"abc","protocol_version":"2025-11-25","movable":true}"#
        );
        assert_eq!(serde_json::from_str::<UpstreamIds>(&json).unwrap(), ids);
    }

    #[test]
    fn a_failed_write_is_restored_under_newer_changes() {
        let mirror = SessionMirror::new("s".into(), 0);
        mirror.upstream_changed("a", Some(UpstreamIds::default()));
        let failed = mirror.take_pending();
        mirror.upstream_changed("a", None);
        mirror.restore(failed);
        assert_eq!(mirror.take_pending().upstreams.get("a"), Some(&None));
    }

    #[test]
    fn an_end_waits_for_the_frame_that_answers_it() {
        let mirror = SessionMirror::new("s".into(), 0);
        mirror.request_started("req:a\n1".into(), 3, "1");
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 0);
        assert_eq!(pending.requests.get("req:a\n1"), Some(&Some("1".into())));
        // Another request's end, or a later serial, is not this one's.
        mirror.request_ended("req:a\n1", 4, 9);
        mirror.request_ended("req:a\n1", 3, 9);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 8);
        assert!(pending.requests.is_empty());
        mirror.take_requests(&mut pending, 9);
        assert_eq!(pending.requests.get("req:a\n1"), Some(&None));
    }

    #[test]
    fn a_failed_write_of_requests_is_restored_unless_they_changed_since() {
        let mirror = SessionMirror::new("s".into(), 0);
        mirror.request_started("req:a\n1".into(), 0, "1");
        mirror.request_started("req:a\n2".into(), 1, "2");
        let mut failed = Pending::default();
        mirror.take_requests(&mut failed, 0);
        mirror.request_ended("req:a\n2", 1, 0);
        mirror.restore(failed);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 0);
        assert_eq!(pending.requests.get("req:a\n1"), Some(&Some("1".into())));
        assert_eq!(pending.requests.get("req:a\n2"), Some(&None));
    }

    #[test]
    fn too_many_cancelled_requests_rewrite_the_record_whole_but_keep_unstored_answers() {
        let mirror = SessionMirror::new("s".into(), 0);
        // Answered by frame 5, not stored yet: its record must stay until it is; the
        // others are cancelled while the store does not answer.
        let mut ends = vec![("req:a\nanswered".to_owned(), 5)];
        ends.extend((0..=MAX_ENDED_REQUESTS).map(|n| (format!("req:a\n{n}"), 0)));
        for (n, (field, _)) in ends.iter().enumerate() {
            mirror.request_started(field.clone(), n as u64, "1");
        }
        mirror.take_requests(&mut Pending::default(), 0);
        for (n, (field, seq)) in ends.iter().enumerate() {
            mirror.request_ended(field, n as u64, *seq);
        }
        mirror.request_started("req:a\nlive".into(), ends.len() as u64, "\"live\"");
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 0);
        assert!(pending.requests_reset);
        assert_eq!(pending.requests.len(), 2, "{:?}", pending.requests);
        assert_eq!(
            pending.requests.get("req:a\nlive"),
            Some(&Some("\"live\"".into()))
        );
        assert_eq!(
            pending.requests.get("req:a\nanswered"),
            Some(&Some("1".into()))
        );
        // Its end goes with the write that stores its answer.
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 5);
        assert!(!pending.requests_reset);
        assert_eq!(pending.requests.get("req:a\nanswered"), Some(&None));
        assert_eq!(pending.requests.len(), 1, "{:?}", pending.requests);
    }

    #[test]
    fn answers_waiting_for_their_frames_never_rewrite_the_record() {
        let mirror = SessionMirror::new("s".into(), 0);
        let mut written = Pending::default();
        for n in 0..=MAX_ENDED_REQUESTS as u64 {
            let field = format!("req:a\n{n}");
            mirror.request_started(field.clone(), n, &n.to_string());
            mirror.take_requests(&mut written, 0);
            mirror.request_ended(&field, n, n + 1);
        }
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, MAX_ENDED_REQUESTS as u64 + 1);
        assert!(!pending.requests_reset);
        assert_eq!(pending.requests.len(), MAX_ENDED_REQUESTS + 1);
        assert!(pending.requests.values().all(Option::is_none));
    }

    #[test]
    fn a_reused_id_removes_the_stored_record_of_the_request_before_it() {
        let mirror = SessionMirror::new("s".into(), 0);
        let field = "req:a\n1";
        // R1 is written, answered (its end waits for frame 4), then R2 reuses its id
        // before the next write and is answered by frame 6.
        mirror.request_started(field.into(), 1, "1");
        mirror.take_requests(&mut Pending::default(), 0);
        mirror.request_ended(field, 1, 4);
        mirror.request_started(field.into(), 2, "1");
        mirror.request_ended(field, 2, 6);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 6);
        assert_eq!(pending.requests.get(field), Some(&None));

        // The same for an id answered `session_lost` after a takeover.
        mirror.request_forgotten(field, 7, "1");
        mirror.request_started(field.into(), 3, "1");
        mirror.request_ended(field, 3, 8);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 8);
        assert_eq!(pending.requests.get(field), Some(&None));

        // And for a request that reuses the id of one still live and stored.
        mirror.request_started(field.into(), 4, "1");
        mirror.take_requests(&mut Pending::default(), 8);
        mirror.request_started(field.into(), 5, "1");
        mirror.request_ended(field, 5, 9);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 9);
        assert_eq!(pending.requests.get(field), Some(&None));

        // A request that starts and ends between two writes costs the store nothing.
        mirror.request_started(field.into(), 6, "1");
        mirror.request_ended(field, 6, 10);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 10);
        assert!(pending.requests.is_empty(), "{:?}", pending.requests);
    }

    #[test]
    fn serials_are_per_client_session_so_a_late_end_never_ends_a_newer_request() {
        let mirror = SessionMirror::new("s".into(), 0);
        let field = "req:a\n1";
        // Two upstream sessions with the same server, one after the other, both
        // numbering their requests from the client session's one counter.
        let (old, new) = (0, 1);
        mirror.request_started(field.into(), new, "1");
        mirror.take_requests(&mut Pending::default(), 0);
        // The old session's late error report.
        mirror.request_ended(field, old, 3);
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 3);
        assert!(pending.requests.is_empty(), "{:?}", pending.requests);
    }

    #[test]
    fn only_short_ids_are_recorded() {
        let most = format!("\"{}\"", "x".repeat(MAX_RECORDED_ID_BYTES - 2));
        let long = format!("\"{}\"", "x".repeat(MAX_RECORDED_ID_BYTES - 1));
        assert!(recordable_id("1", "1"));
        assert!(recordable_id(&most, &most));
        assert!(!recordable_id(&long, "\"x\""));
        assert!(!recordable_id("\"x\"", &long));
    }

    #[test]
    fn a_start_and_a_rebuild_wake_the_writer() {
        use futures::FutureExt;
        let mirror = SessionMirror::new("s".into(), 0);
        mirror.request_started("req:a\n1".into(), 0, "1");
        assert!(mirror.wake.notified().now_or_never().is_some());
        assert!(mirror.wake.notified().now_or_never().is_none());
        mirror.rewrite_requests();
        assert!(mirror.wake.notified().now_or_never().is_some());
    }

    #[test]
    fn a_garbled_request_field_is_read_to_be_deleted_and_the_session_resumes() {
        let pairs: Vec<String> = ["seq", "2", "req:garbled", "\"x\"", "req:a\n1", "1"]
            .map(String::from)
            .into();
        let read = stored_session(&pairs).unwrap();
        assert_eq!(read.last_seq, 2);
        let fields: Vec<_> = read.requests.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["req:a\n1", "req:garbled"]);
        // An empty id is malformed: the field is forgotten unanswered.
        assert_eq!(read.requests[1].id, "");
        assert!(serde_json::from_str::<&serde_json::value::RawValue>("").is_err());
    }
}
