//! Rate limits and connection counts, per API key: in this instance's memory, or shared
//! by every instance through Redis.
//!
//! Each has a trait ([`Buckets`], [`Counter`]) with two implementations, so that they
//! cannot drift: the memory one is what a single instance does, and the Redis one falls
//! back on it for each decision Redis does not answer in time.
//!
//! - **Rate**: one GCRA bucket per key and one per key and server, with `governor`'s
//!   semantics (a burst of `burst` frames, then one every `1/perSecond` s). In Redis a
//!   bucket is one key holding its theoretical arrival time in microseconds of Redis's
//!   own clock (`TIME`), so that instances with skewed clocks agree; one Lua script
//!   takes a token from the key's bucket and then the server's, atomically, in one round
//!   trip (`EVALSHA`, loaded again on `NOSCRIPT`).
//! - **Connections** (`maxConnections`): each instance keeps its own count per key, and
//!   writes it into the Redis hash `mcpmux:conns:<key name>` (field: the instance name)
//!   under a lease (`mcpmux:lease:<instance>`, 15 s, renewed every 5 s). A Lua script
//!   admits a connection when the live instances' counts sum to less than the limit,
//!   dropping the fields of instances whose lease expired. The renewal writes the
//!   instance's exact counts again, so that the hash converges within one renewal after
//!   an outage, a Redis restart or a lost release.
//!
//! While Redis does not answer (`RedisLink::is_up`), every decision is made in memory,
//! per instance, and counted in `mcpmux_store_fallback_total`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RedisLink, StoreError};
use crate::config::{Rate, RateLimitConfig};
use crate::metrics::Metrics;

/// How often an instance writes its exact counts again.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a key's hash of counts lives after its last write: longer than a renewal
/// period, so a live instance's field never expires; a hash nobody writes (every
/// instance gone) is removed after it.
const COUNTS_TTL: Duration = Duration::from_secs(60);

/// Which bucket refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    /// The key's bucket, for every server.
    Key,
    /// The key's bucket for the server named.
    Server,
}

/// A token refused: by which bucket, and when one would be given again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) bucket: Bucket,
    pub(crate) retry_after: Duration,
}

/// The rate buckets of one API key.
pub(crate) trait Buckets {
    /// Takes a token for one frame to `server`: from the key's bucket, then from the
    /// server's. A frame refused by the server's bucket has still used the key's token.
    fn take(&self, server: &str) -> impl Future<Output = Result<(), Refused>> + Send;
}

/// A key's count of open connections.
pub(crate) trait Counter {
    /// Counts one more connection, unless the key has `max` open already (`None`:
    /// never refuses, and asks no one).
    fn open(&self, max: Option<usize>) -> impl Future<Output = bool> + Send;
    /// Counts one connection fewer.
    fn close(&self);
    /// This instance's connections of the key.
    fn local(&self) -> usize;
}

// ---------------------------------------------------------------------------------------
// Rate: memory.

/// governor's view of tokio's clock: the time since the clock was made (so tests can
/// pause and advance time).
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Governor = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The longest refill period: one frame per 1e6 s (`perSecond` 1e-6).
const MAX_PERIOD: Duration = Duration::from_secs(1_000_000);

/// The refill period of `rate`, from 1 µs to 1e6 s (the configuration bounds perSecond
/// to [1e-6, 1e6]; any other value is clamped there, never a panic).
fn period(rate: Rate) -> Duration {
    Duration::try_from_secs_f64(1.0 / rate.per_second)
        .unwrap_or(MAX_PERIOD)
        .clamp(Duration::from_micros(1), MAX_PERIOD)
}

fn governor(rate: Rate, clock: TokioClock) -> Governor {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period(rate))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock)
}

/// A key's buckets in this instance's memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryBuckets {
    clock: TokioClock,
    overall: Option<Governor>,
    servers: BTreeMap<String, Governor>,
}

impl MemoryBuckets {
    /// The buckets of a key's `rateLimit` (none: never refuses).
    pub(crate) fn new(config: Option<&RateLimitConfig>) -> Self {
        let clock = TokioClock::default();
        let Some(config) = config else {
            return Self::default();
        };
        Self {
            clock,
            overall: config.overall.map(|rate| governor(rate, clock)),
            servers: config
                .servers
                .iter()
                .map(|(name, rate)| (name.clone(), governor(*rate, clock)))
                .collect(),
        }
    }

    fn take_now(&self, server: &str) -> Result<(), Refused> {
        if let Some(bucket) = &self.overall {
            self.take_one(bucket, Bucket::Key)?;
        }
        if let Some(bucket) = self.servers.get(server) {
            self.take_one(bucket, Bucket::Server)?;
        }
        Ok(())
    }

    fn take_one(&self, bucket: &Governor, which: Bucket) -> Result<(), Refused> {
        bucket.check().map_err(|not_until| Refused {
            bucket: which,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    fn is_unlimited(&self) -> bool {
        self.overall.is_none() && self.servers.is_empty()
    }
}

impl Buckets for MemoryBuckets {
    fn take(&self, server: &str) -> impl Future<Output = Result<(), Refused>> + Send {
        std::future::ready(self.take_now(server))
    }
}

// ---------------------------------------------------------------------------------------
// Rate: Redis.

/// Takes a token from each bucket in KEYS in turn (ARGV: each one's interval in µs and
/// burst), stopping at the first that refuses. Returns `{0, 0}`, or `{i, µs}`: bucket i
/// refused, a token in that many µs. A bucket holds its theoretical arrival time (µs of
/// Redis's clock) and expires once it is full again.
const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local stored = redis.call('GET', key)
  local tat = now
  -- Never further ahead than a full bucket: a clock stepped back refuses no longer.
  if stored then tat = math.min(math.max(tonumber(stored), now), now + interval * burst) end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return {i, string.format('%.0f', math.ceil(allow_at - now))}
  end
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', key, string.format('%.3f', new_tat), 'PX', string.format('%.0f', ttl_ms))
end
return {0, '0'}
";

/// A key's buckets in Redis, and the memory buckets it decides with while Redis does
/// not answer.
#[derive(Debug)]
pub(crate) struct RedisBuckets {
    link: RedisLink,
    script: Arc<redis::Script>,
    metrics: Metrics,
    /// The key's bucket: its Redis key and its rate.
    overall: Option<(String, Rate)>,
    /// Each limited server's bucket.
    servers: BTreeMap<String, (String, Rate)>,
    fallback: MemoryBuckets,
}

impl RedisBuckets {
    async fn take_shared(&self, server: &str) -> Result<Result<(), Refused>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        let mut which = Vec::with_capacity(2);
        let buckets = [
            (self.overall.as_ref(), Bucket::Key),
            (self.servers.get(server), Bucket::Server),
        ];
        for (bucket, kind) in buckets {
            let Some((key, rate)) = bucket else { continue };
            let interval_us = (1e6 / rate.per_second).clamp(1.0, 1e12);
            invocation.key(key).arg(interval_us).arg(rate.burst.max(1));
            which.push(kind);
        }
        if which.is_empty() {
            return Ok(Ok(()));
        }
        let mut connection = self.link.connection();
        let (refused_at, retry_us): (usize, u64) = self
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        Ok(match refused_at.checked_sub(1).and_then(|i| which.get(i)) {
            None => Ok(()),
            Some(&bucket) => Err(Refused {
                bucket,
                retry_after: Duration::from_micros(retry_us),
            }),
        })
    }
}

impl Buckets for RedisBuckets {
    async fn take(&self, server: &str) -> Result<(), Refused> {
        if self.overall.is_none() && !self.servers.contains_key(server) {
            // No bucket for this server: nothing to decide, nothing to fall back on.
            return Ok(());
        }
        if self.link.is_up() {
            if let Ok(verdict) = self.take_shared(server).await {
                return verdict;
            }
        }
        self.metrics.store_fallback("rate");
        self.fallback.take_now(server)
    }
}

/// A key's buckets, in memory or in Redis.
#[derive(Debug)]
pub(crate) enum KeyBuckets {
    Memory(MemoryBuckets),
    Redis(RedisBuckets),
}

impl Buckets for KeyBuckets {
    async fn take(&self, server: &str) -> Result<(), Refused> {
        match self {
            Self::Memory(buckets) => buckets.take_now(server),
            // Boxed: the futures of a store without Redis stay small.
            Self::Redis(buckets) => Box::pin(buckets.take(server)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections: memory.

/// A key's open connections on this instance.
#[derive(Debug, Default)]
pub(crate) struct MemoryCount {
    open: AtomicUsize,
}

impl MemoryCount {
    fn open_now(&self, max: usize) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok()
    }
}

impl Counter for MemoryCount {
    fn open(&self, max: Option<usize>) -> impl Future<Output = bool> + Send {
        std::future::ready(self.open_now(max.unwrap_or(usize::MAX)))
    }

    fn close(&self) {
        // Never below zero, whatever the order of calls.
        let _ = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    fn local(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------------------
// Connections: Redis.

/// Admits one connection of a key (KEYS[1], its hash of counts) for instance ARGV[1]
/// when the live instances' counts sum to less than ARGV[2]. An instance is live when
/// its lease (ARGV[3] .. name) exists; the fields of the others are dropped. Renews the
/// hash's life (ARGV[4] ms). Returns 1 (admitted) or 0.
const OPEN_SCRIPT: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local instance = fields[i]
  if instance == ARGV[1] or redis.call('EXISTS', ARGV[3] .. instance) == 1 then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], instance)
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Counts one connection fewer for instance ARGV[1] in KEYS[1], never below zero.
const CLOSE_SCRIPT: &str = r"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
";

/// This instance's connections of one key name, as Redis should count them.
#[derive(Debug, Default)]
struct InstanceCount {
    /// Open here.
    open: MemoryCount,
    /// Closed here, and not yet released in Redis: a renewal writes `open +
    /// unreleased`, since each of these will still decrement the hash.
    unreleased: AtomicUsize,
}

impl InstanceCount {
    /// What Redis should hold for this instance once every release in flight landed.
    fn in_redis(&self) -> usize {
        self.open.local() + self.unreleased.load(Ordering::Acquire)
    }
}

/// A connection counted here whose admission is not decided yet: dropped (the
/// opening future was cancelled), it counts the connection out again.
struct Opening<'a> {
    count: &'a InstanceCount,
    decided: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.count.open.close();
        }
    }
}

/// A key's connections: this instance's count (shared by every entry of the key's
/// name, across reloads) and the shared hash in Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisCount {
    shared: Arc<SharedCounts>,
    /// `mcpmux:conns:<key name>`.
    hash: Arc<str>,
    local: Arc<InstanceCount>,
}

impl RedisCount {
    async fn open_shared(&self, max: usize) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let mut connection = shared.link.connection();
        let mut invocation = shared.open_script.prepare_invoke();
        invocation
            .key(&*self.hash)
            .arg(&*shared.instance)
            .arg(max)
            .arg(shared.lease_prefix.as_str())
            .arg(COUNTS_TTL.as_millis() as u64);
        let admitted: u8 = shared
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        Ok(admitted == 1)
    }

    async fn open_limited(&self, max: usize) -> bool {
        if self.shared.closed.is_cancelled() {
            return false;
        }
        // A renewal waits for this decision: it never writes a count that misses it.
        let _writing = self.shared.writing.read().await;
        // Counted here first; counted out again if this future is dropped before the
        // decision (a hash that counted it meanwhile is corrected by the next renewal).
        if !self.local.open.open_now(max) {
            return false;
        }
        let mut opening = Opening {
            count: &self.local,
            decided: false,
        };
        if self.shared.link.is_up() {
            match self.open_shared(max).await {
                Ok(true) => {
                    opening.decided = true;
                    return true;
                }
                Ok(false) => return false,
                Err(_) => {}
            }
        }
        opening.decided = true;
        self.shared.metrics.store_fallback("connections");
        true
    }
}

impl Counter for RedisCount {
    async fn open(&self, max: Option<usize>) -> bool {
        match max {
            Some(max) => self.open_limited(max).await,
            // Not limited: nothing to ask Redis; the renewal writes it for the others.
            None => self.local.open.open_now(usize::MAX),
        }
    }

    fn close(&self) {
        // Free here at once; the hash is released in the background.
        if self.local.open.local() == 0 {
            return;
        }
        self.local.unreleased.fetch_add(1, Ordering::AcqRel);
        self.local.open.close();
        let this = self.clone();
        let release = async move {
            {
                let _writing = this.shared.writing.read().await;
                let link = &this.shared.link;
                if link.is_up() && !this.shared.closed.is_cancelled() {
                    let mut connection = link.connection();
                    let mut invocation = this.shared.close_script.prepare_invoke();
                    invocation.key(&*this.hash).arg(&*this.shared.instance);
                    // Not answered: the next renewal writes the exact count.
                    let _ = link
                        .call(invocation.invoke_async::<i64>(&mut connection))
                        .await;
                }
                this.local.unreleased.fetch_sub(1, Ordering::AcqRel);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release);
            }
            Err(_) => {
                self.local.unreleased.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn local(&self) -> usize {
        self.local.open.local()
    }
}

/// A key's connection count, in memory or in Redis. Cheap to clone: clones count the
/// same connections.
#[derive(Debug, Clone)]
pub(crate) enum ConnectionCount {
    Memory(Arc<MemoryCount>),
    Redis(RedisCount),
}

impl Counter for ConnectionCount {
    async fn open(&self, max: Option<usize>) -> bool {
        match self {
            Self::Memory(count) => count.open_now(max.unwrap_or(usize::MAX)),
            // Boxed: the futures of a store without Redis stay small.
            Self::Redis(count) => Box::pin(count.open(max)).await,
        }
    }

    fn close(&self) {
        match self {
            Self::Memory(count) => count.close(),
            Self::Redis(count) => count.close(),
        }
    }

    fn local(&self) -> usize {
        match self {
            Self::Memory(count) => count.local(),
            Self::Redis(count) => count.local(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the Redis store keeps for the limits.

/// The limits' part of a Redis store: the scripts, this instance's counts by key name,
/// and the task that writes them.
#[derive(Debug)]
pub(crate) struct SharedLimits {
    take_script: Arc<redis::Script>,
    counts: Arc<SharedCounts>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct SharedCounts {
    link: RedisLink,
    metrics: Metrics,
    instance: Arc<str>,
    /// `mcpmux:instance:`, the prefix of the instances' leases (`super::Lease`).
    lease_prefix: String,
    open_script: redis::Script,
    close_script: redis::Script,
    /// This instance's count of each key name: bounded by the names configured (an
    /// entry no key uses and that counts nothing is dropped once a renewal removed its
    /// field).
    by_name: Mutex<HashMap<Arc<str>, Arc<InstanceCount>>>,
    /// Held (shared) by each admission and release while it is in Redis, and
    /// (exclusive) by a renewal: a renewal's exact counts never overwrite an increment
    /// or a decrement it did not see.
    writing: tokio::sync::RwLock<()>,
    /// Cancelled when the store closes: ends the renewal, refuses new connections.
    closed: CancellationToken,
}

impl SharedLimits {
    /// The limits of `instance` on `link`; [`SharedLimits::start`] starts writing them.
    pub(crate) fn new(link: RedisLink, metrics: Metrics, instance: Arc<str>) -> Self {
        let counts = Arc::new(SharedCounts {
            lease_prefix: link.key("instance:"),
            link,
            metrics,
            instance,
            open_script: redis::Script::new(OPEN_SCRIPT),
            close_script: redis::Script::new(CLOSE_SCRIPT),
            by_name: Mutex::new(HashMap::new()),
            writing: tokio::sync::RwLock::new(()),
            closed: CancellationToken::new(),
        });
        Self {
            take_script: Arc::new(redis::Script::new(TAKE_SCRIPT)),
            counts,
            task: Mutex::new(None),
        }
    }

    /// Writes this instance's counts once (before the gateway accepts connections:
    /// what a previous process of this name left is replaced), then every
    /// [`RENEW_EVERY`] and whenever Redis answers again after an outage.
    pub(crate) async fn start(&self) {
        let recoveries = self.counts.link.recoveries();
        if self.counts.link.is_up() {
            let _ = write_counts(&self.counts).await;
        }
        let task = tokio::spawn(renew(
            Arc::downgrade(&self.counts),
            self.counts.closed.clone(),
            recoveries,
        ));
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// The buckets of the key `name` with `config` (none: never refuses).
    pub(crate) fn buckets(&self, name: &str, config: Option<&RateLimitConfig>) -> KeyBuckets {
        let fallback = MemoryBuckets::new(config);
        let Some(config) = config.filter(|_| !fallback.is_unlimited()) else {
            return KeyBuckets::Memory(fallback);
        };
        let link = &self.counts.link;
        KeyBuckets::Redis(RedisBuckets {
            link: link.clone(),
            script: self.take_script.clone(),
            metrics: self.counts.metrics.clone(),
            overall: config
                .overall
                .map(|rate| (link.key(&format!("rate:{name}")), rate)),
            servers: config
                .servers
                .iter()
                .map(|(server, rate)| {
                    let key = link.key(&format!("rate:{name}:{server}"));
                    (server.clone(), (key, *rate))
                })
                .collect(),
            fallback,
        })
    }

    /// The connection count of the key `name`: every entry of that name shares it.
    pub(crate) fn count(&self, name: &Arc<str>) -> ConnectionCount {
        let local = self
            .counts
            .by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.clone())
            .or_default()
            .clone();
        ConnectionCount::Redis(RedisCount {
            shared: self.counts.clone(),
            hash: Arc::from(self.counts.link.key(&format!("conns:{name}"))),
            local,
        })
    }

    /// Stops counting in Redis: refuses new connections, ends the renewal and waits
    /// for it and for every admission and release in flight. Returns the hashes this
    /// instance may have a field in, for the store to remove them with its lease.
    pub(crate) async fn close(&self) -> Vec<String> {
        let counts = &self.counts;
        counts.closed.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let _writing = counts.writing.write().await;
        let names: Vec<Arc<str>> = counts
            .by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names
            .iter()
            .map(|name| counts.link.key(&format!("conns:{name}")))
            .collect()
    }
}

/// Writes this instance's exact counts every [`RENEW_EVERY`], and at once when Redis
/// answers again after an outage, until the store closes or is dropped.
async fn renew(
    counts: Weak<SharedCounts>,
    closed: CancellationToken,
    mut recoveries: tokio::sync::watch::Receiver<u64>,
) {
    let mut interval = tokio::time::interval(RENEW_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: start() has just written them.
    interval.tick().await;
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            _ = interval.tick() => {}
            changed = recoveries.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let Some(counts) = counts.upgrade() else {
            return;
        };
        if counts.link.is_up() {
            let _ = write_counts(&counts).await;
        }
    }
}

/// One pipeline: each key's count of this instance (a zero removes the field), while
/// no admission or release is in Redis. An entry that counts nothing and that no key
/// uses is dropped once its field is removed.
async fn write_counts(counts: &SharedCounts) -> Result<(), StoreError> {
    let _writing = counts.writing.write().await;
    let snapshot: Vec<(Arc<str>, usize)> = counts
        .by_name
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(name, count)| (name.clone(), count.in_redis()))
        .collect();
    let instance = &*counts.instance;
    let mut pipe = redis::pipe();
    for (name, open) in &snapshot {
        let hash = counts.link.key(&format!("conns:{name}"));
        if *open == 0 {
            pipe.cmd("HDEL").arg(&hash).arg(instance).ignore();
        } else {
            pipe.cmd("HSET")
                .arg(&hash)
                .arg(instance)
                .arg(*open)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&hash)
                .arg(COUNTS_TTL.as_millis() as u64)
                .ignore();
        }
    }
    if snapshot.is_empty() {
        return Ok(());
    }
    let mut connection = counts.link.connection();
    counts
        .link
        .call(pipe.query_async::<()>(&mut connection))
        .await?;
    counts
        .by_name
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|_, count| Arc::strong_count(count) > 1 || count.in_redis() > 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admission cancelled while Redis decides (the client went away during the
    /// upgrade) leaves the key's count as it was.
    #[tokio::test]
    async fn a_cancelled_admission_counts_nothing() {
        // A Redis that accepts connections and never answers (a fault).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let link = RedisLink::open(&format!("redis://{addr}"), Metrics::new()).unwrap();
        link.mark_ok();
        let limits = SharedLimits::new(link, Metrics::new(), Arc::from("a"));
        let count = limits.count(&Arc::from("key"));
        let mut opening = Box::pin(count.open(Some(3)));
        assert!(futures::poll!(&mut opening).is_pending());
        assert_eq!(count.local(), 1, "counted while Redis decides");
        drop(opening);
        assert_eq!(count.local(), 0, "the cancelled admission is counted out");
        holder.abort();
    }

    #[tokio::test]
    async fn a_memory_count_stops_at_its_limit_and_never_goes_below_zero() {
        let count = MemoryCount::default();
        assert!(count.open(Some(2)).await && count.open(Some(2)).await);
        assert!(!count.open(Some(2)).await);
        count.close();
        assert!(count.open(Some(2)).await);
        for _ in 0..5 {
            count.close();
        }
        assert_eq!(count.local(), 0);
    }
}
