//! What a client session leaves in the store so that another instance can resume it:
//! its kept frames, the ids of its upstream sessions, and who owns it.
//!
//! [`SessionStore`] is the trait; [`MemorySessions`] (the default) stores nothing (a
//! session lives and is resumed only in the memory of its instance, as on a single
//! gateway), [`RedisSessions`] keeps, per client session:
//! - `mcpmux:frames:{id}`: a Redis Stream of its kept frames, each under the id
//!   `<seq>-1`, capped at about `resumeMaxFrames` entries, trimmed on `ack`;
//! - `mcpmux:session:{id}`: a hash with its owner (an instance name, empty once released
//!   by a drain), the API key that opened it, the highest seq stored, the client frames
//!   read (`welcome.received`), and one field `up:{server}` per upstream session with its
//!   ids (JSON: `Mcp-Session-Id`, negotiated version, the standalone stream's last event
//!   id, and whether it can move to another instance), and one field
//!   `req:{server}\n{id key}` per request in flight to a movable upstream session,
//!   holding the request's id verbatim (so that the instance that takes the session
//!   over can answer it, see [`RequestLog`]).
//!
//! Both expire `resumeWindowMs` after their last write; the owner refreshes them while
//! the session lives. An instance is alive while its lease `mcpmux:instance:{name}`
//! exists (held and renewed by the store, [`super::LEASE`]); a dead instance's lease
//! expires, and its sessions may then be taken by another instance (an atomic Lua
//! script checks owner and lease and sets the new owner in one step).
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
use tokio::sync::Notify;

use super::{KEY_PREFIX, RedisLink, Store, StoreError};
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

/// A stored session and its frames after a seq, oldest first.
pub type ReadSession = (StoredSession, Vec<KeptFrame>);

/// The answer to a claim of ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The caller owns the session now.
    Taken,
    /// A live instance owns it: leave it alone.
    Elsewhere(String),
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

/// The most ended requests a session keeps waiting for a write; past it (a store that
/// has not answered for long), the record is rewritten whole with the next write.
const MAX_ENDED_REQUESTS: usize = 1024;

/// The requests in flight to movable upstream sessions, as a client session's store
/// writer sees them. A request is recorded when it is carried and removed when it ends;
/// its end is written only with the batch that stores its answer (the frame whose seq
/// it ended with), never before nor after it, and a request that starts and ends
/// between two writes costs the store nothing.
#[derive(Debug, Default)]
struct RequestLog {
    /// Recorded and not ended: serial (tells a request from a later one that reused its
    /// id) and id. Bounded by `maxInflightRequests`, as requests in flight are.
    live: HashMap<String, (u64, String)>,
    /// Recorded since the last write, by field (their ids are in `live`).
    started: std::collections::HashSet<String>,
    /// Ended after their start was taken for a write, by field: the seq of the frame
    /// that answered them (0: none) and their id. Bounded by [`MAX_ENDED_REQUESTS`].
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

    /// Request `field` (serial `serial`, id `id` verbatim) was carried.
    pub fn request_started(&self, field: String, serial: u64, id: &str) {
        let mut log = self.lock_requests();
        // A reused id supersedes the earlier request's end.
        log.ended.remove(&field);
        log.started.insert(field.clone());
        log.live.insert(field, (serial, id.to_owned()));
        drop(log);
        self.wake.notify_one();
    }

    /// Request `field` (serial `serial`) ended, answered by the frame `seq` (0: by
    /// none). Called before that frame is in the outbox, so that the writer, which
    /// takes ends after frames, finds the end with the answer. Nothing for a request
    /// not recorded (or already ended).
    pub fn request_ended(&self, field: &str, serial: u64, seq: u64) {
        let mut log = self.lock_requests();
        if log.live.get(field).is_none_or(|(live, _)| *live != serial) {
            return;
        }
        let Some((_, id)) = log.live.remove(field) else {
            return;
        };
        if log.started.remove(field) {
            // Never taken for a write: nothing to undo.
            return;
        }
        self.end_field(&mut log, field, seq, id);
    }

    /// A stored request `field` was answered by the frame `seq` (after a takeover):
    /// its field goes with the write that stores that frame.
    pub fn request_forgotten(&self, field: &str, seq: u64, id: &str) {
        let mut log = self.lock_requests();
        self.end_field(&mut log, field, seq, id.to_owned());
    }

    fn end_field(&self, log: &mut RequestLog, field: &str, seq: u64, id: String) {
        if log.ended.len() >= MAX_ENDED_REQUESTS && !log.ended.contains_key(field) {
            if !log.reset {
                tracing::warn!(
                    "too many ended requests wait for the session store; their record will be rewritten whole"
                );
            }
            log.reset = true;
            log.ended.clear();
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
            let unanswered = ended.iter().map(|(field, (_, id))| (field, id));
            for (field, id) in live.iter().map(|(f, (_, id))| (f, id)).chain(unanswered) {
                pending.requests.insert(field.clone(), Some(id.clone()));
            }
            return;
        }
        for field in std::mem::take(&mut log.started) {
            if let Some((_, id)) = log.live.get(&field) {
                pending.requests.insert(field, Some(id.clone()));
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
#[derive(Debug)]
pub struct Batch<'a> {
    /// Frames in seq order (possibly none).
    pub frames: &'a [KeptFrame],
    /// Upstream changes.
    pub pending: &'a Pending,
    /// Client frames read.
    pub received: u64,
}

/// Where client sessions are kept for resume on another instance.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// True when sessions outlive their instance (the store is shared); false for the
    /// in-memory default, which then needs nothing written.
    fn shared(&self) -> bool;

    /// Records a new session, owned by this instance, opened by `key`.
    fn open<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>>;

    /// Writes a batch of session `id` (and refreshes its expiry).
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

    /// What is stored of session `id`, with its frames after `after`, oldest first.
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

/// Takes a session: KEYS[1] its hash; ARGV[1] this instance, ARGV[2] the prefix of
/// instance leases, ARGV[3] the expiry (ms), ARGV[4] the claimant's key name (empty:
/// none). Returns {0} unknown (or opened by another key), {1, owner} owned by a live
/// instance, {2} taken.
const TAKE_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return {0} end
if (redis.call('HGET', KEYS[1], 'key') or '') ~= ARGV[4] then return {0} end
if owner ~= '' and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return {1, owner}
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {2}
";

/// Appends a batch, only while this instance owns the session: KEYS[1] its hash,
/// KEYS[2] its stream; ARGV[1] this instance, ARGV[2] the expiry (ms), ARGV[3] the
/// stream's approximate cap, ARGV[4] `received`, ARGV[5] the lowest id to keep (empty:
/// no trim), ARGV[6] the number of frames n, then n pairs (seq, frame), then pairs
/// (upstream or request field, ids as JSON or a request's id; empty: removed); the
/// pair (`*req`, ``) first removes every request field. Returns 0 (not the owner) or 1.
const APPEND_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[i] .. '-1', 'f', ARGV[i + 1])
  i = i + 2
end
if n > 0 then redis.call('HSET', KEYS[1], 'seq', ARGV[i - 2]) end
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
if ARGV[5] ~= '' then redis.call('XTRIM', KEYS[2], 'MINID', ARGV[5]) end
redis.call('HSET', KEYS[1], 'received', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Releases a session (a drain), only while this instance owns it: KEYS[1] its hash,
/// KEYS[2] its stream; ARGV[1] this instance, ARGV[2] the expiry (ms). Returns 0 (not
/// the owner) or 1.
const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Forgets a session, unless another instance owns it: KEYS[1] its hash, KEYS[2] its
/// stream; ARGV[1] this instance. Returns 0 (another owner) or 1.
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
            store.instance().clone(),
            config.resume_window,
            config.resume_max_frames,
        )),
        None => Arc::new(MemorySessions),
    }
}

/// Sessions kept in Redis, shared by every instance that uses the same Redis.
pub struct RedisSessions {
    link: RedisLink,
    /// `mcpmux:`, the prefix of every key.
    prefix: String,
    /// This instance's name (`gateway.instance`).
    instance: Arc<str>,
    /// `resumeWindowMs`: the expiry of a session's keys after their last write.
    window_ms: u64,
    /// `resumeMaxFrames`: the approximate cap of a session's stream.
    max_frames: usize,
    take: redis::Script,
    append: redis::Script,
    release: redis::Script,
    forget: redis::Script,
}

impl fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessions")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    /// Sessions of instance `instance` in the Redis behind `link`.
    pub fn new(link: RedisLink, instance: Arc<str>, window: Duration, max_frames: usize) -> Self {
        Self {
            link,
            prefix: KEY_PREFIX.to_owned(),
            instance,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            max_frames: max_frames.max(1),
            take: redis::Script::new(TAKE_SCRIPT),
            append: redis::Script::new(APPEND_SCRIPT),
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
}

const UPSTREAM_FIELD: &str = "up:";
const REQUEST_FIELD: &str = "req:";
/// The pair that first removes every request field, in an append.
const RESET_REQUESTS: &str = "*req";

fn malformed(err: impl fmt::Display) -> SessionStoreError {
    SessionStoreError::Malformed(err.to_string())
}

impl SessionStore for RedisSessions {
    fn shared(&self) -> bool {
        true
    }

    fn open<'a>(
        &'a self,
        id: &'a str,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            let mut connection = self.link.connection();
            let hash = self.session_key(id);
            let mut pipe = redis::pipe();
            pipe.hset(&hash, "owner", &*self.instance).ignore();
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
            let mut connection = self.link.connection();
            let mut invocation = self.append.key(self.session_key(id));
            invocation.key(self.frames_key(id));
            invocation
                .arg(&*self.instance)
                .arg(self.window_ms)
                .arg(self.max_frames)
                .arg(batch.received);
            match batch.pending.acked {
                Some(acked) => invocation.arg(format!("{}-0", acked.saturating_add(1))),
                None => invocation.arg(""),
            };
            invocation.arg(batch.frames.len());
            for frame in batch.frames {
                invocation.arg(frame.seq).arg(frame.text.as_bytes());
            }
            for (server, ids) in &batch.pending.upstreams {
                invocation.arg(format!("{UPSTREAM_FIELD}{server}"));
                match ids {
                    Some(ids) => {
                        let json = serde_json::to_string(ids)
                            .map_err(|e| SessionStoreError::Malformed(e.to_string()))?;
                        invocation.arg(json);
                    }
                    None => {
                        invocation.arg("");
                    }
                }
            }
            if batch.pending.requests_reset {
                invocation.arg(RESET_REQUESTS).arg("");
            }
            for (field, id) in &batch.pending.requests {
                invocation.arg(field).arg(id.as_deref().unwrap_or(""));
            }
            owned(
                self.link
                    .call(invocation.invoke_async(&mut connection))
                    .await?,
            )
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
                .arg(&*self.instance)
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
            let mut pipe = redis::pipe();
            pipe.hgetall(self.session_key(id));
            pipe.cmd("XRANGE")
                .arg(self.frames_key(id))
                .arg(format!("{}-0", after.saturating_add(1)))
                .arg("+");
            type Entry = (String, Vec<Vec<u8>>);
            let (fields, entries): (HashMap<String, String>, Vec<Entry>) =
                self.link.call(pipe.query_async(&mut connection)).await?;
            if fields.is_empty() {
                return Ok(None);
            }
            let number = |name: &str| -> Result<u64, SessionStoreError> {
                fields.get(name).map_or(Ok(0), |v| {
                    v.parse().map_err(|_| {
                        SessionStoreError::Malformed(format!("{name} is not a number"))
                    })
                })
            };
            let mut upstreams = Vec::new();
            let mut requests = Vec::new();
            for (field, value) in &fields {
                if let Some(request) = field.strip_prefix(REQUEST_FIELD) {
                    let (server, _) = request
                        .split_once('\n')
                        .ok_or_else(|| malformed("a request field"))?;
                    requests.push(StoredRequest {
                        field: field.clone(),
                        server: server.to_owned(),
                        id: value.clone(),
                    });
                } else if let Some(server) = field.strip_prefix(UPSTREAM_FIELD) {
                    let ids: UpstreamIds = serde_json::from_str(value)
                        .map_err(|e| SessionStoreError::Malformed(e.to_string()))?;
                    upstreams.push((server.to_owned(), ids));
                }
            }
            upstreams.sort_by(|a, b| a.0.cmp(&b.0));
            requests.sort_by(|a, b| a.field.cmp(&b.field));
            let stored = StoredSession {
                key: fields.get("key").filter(|k| !k.is_empty()).cloned(),
                // The next seq follows it: the highest is refused as malformed.
                last_seq: number("seq").and_then(|seq| match seq {
                    u64::MAX => Err(SessionStoreError::Malformed("seq is out of range".into())),
                    seq => Ok(seq),
                })?,
                received: number("received")?,
                upstreams,
                requests,
            };
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
            Ok(Some((stored, frames)))
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        Box::pin(async move {
            let mut connection = self.link.connection();
            let mut invocation = self.release.key(self.session_key(id));
            invocation
                .key(self.frames_key(id))
                .arg(&*self.instance)
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
            let mut connection = self.link.connection();
            let mut invocation = self.forget.key(self.session_key(id));
            invocation.key(self.frames_key(id)).arg(&*self.instance);
            owned(
                self.link
                    .call(invocation.invoke_async(&mut connection))
                    .await?,
            )
        })
    }
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
    fn too_many_ended_requests_rewrite_the_record_whole() {
        let mirror = SessionMirror::new("s".into(), 0);
        let mut written = Pending::default();
        for n in 0..=MAX_ENDED_REQUESTS as u64 {
            let field = format!("req:a\n{n}");
            mirror.request_started(field.clone(), n, &n.to_string());
            mirror.take_requests(&mut written, 0);
            mirror.request_ended(&field, n, n + 1);
        }
        mirror.request_started("req:a\nlive".into(), 0, "\"live\"");
        let mut pending = Pending::default();
        mirror.take_requests(&mut pending, 0);
        assert!(pending.requests_reset);
        assert_eq!(pending.requests.len(), 1, "{:?}", pending.requests);
        assert_eq!(
            pending.requests.get("req:a\nlive"),
            Some(&Some("\"live\"".into()))
        );
    }
}
