//! The store that instances of a fleet share (docs/scale-out.md): in this instance's
//! memory by default, Redis when `gateway.store.redis` is set.
//!
//! A [`Store`] is a cheap handle. Each part of the shared state has its own module with
//! a trait and two implementations, one in memory and one on Redis, so that they cannot
//! drift: [`limits`] (rate buckets and connection counts), [`sessions`] (kept frames,
//! upstream session ids and ownership of client sessions). The Redis parts use the
//! [`RedisLink`]: one pooled, reconnecting connection, the key prefix `mcpmux:`, and
//! the outage tracking every part reports to, so that an outage is logged once and
//! shown by `mcpmux_store_up`.
//!
//! Every Redis call is bounded ([`CALL_TIMEOUT`]); while Redis cannot be reached, the
//! parts decide in memory, and a background probe (a `PING` every 500 ms) sees both an
//! outage and its end without waiting for traffic. An error answer is no outage: that
//! decision alone is made in memory.
//!
//! The store also holds this instance's lease, `mcpmux:instance:<name>` (a random token
//! of the process, [`LEASE`], renewed every [`LEASE_RENEW`] by one task): both parts
//! count an instance alive while it exists, and a second live process claiming the
//! same name is refused at start ([`Store::join`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) mod limits;
pub(crate) mod sessions;

use limits::{ConnectionCount, KeyBuckets, MemoryBuckets, MemoryCount, SharedLimits};

use crate::config::{GatewayConfig, RateLimitConfig};
use crate::metrics::Metrics;
use crate::redact;

/// The longest a Redis call may take before the caller decides without it.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// How often Redis is asked whether it answers.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The prefix of every key mcpmux writes in Redis.
pub(crate) const KEY_PREFIX: &str = "mcpmux:";
/// How long an instance counts as alive after its last renewal of its lease
/// (`mcpmux:instance:<name>`): its sessions may be taken and its connections stop
/// counting that long after it died.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
/// How often a live instance renews its lease.
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(1);
/// The fewest seconds between two logs of Redis answering with an error.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why the store could not be opened or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `gateway.store.redis` could not be used (the URL is never shown: it may hold a
    /// password).
    #[error("cannot use gateway.store.redis: not a valid redis:// URL")]
    Url,
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the call timeout.
    #[error("redis did not answer within {} ms", CALL_TIMEOUT.as_millis())]
    Timeout,
    /// Redis is in an outage: the call was not tried (the probe sees its end).
    #[error("redis does not answer; not asked")]
    Down,
    /// Another running gateway holds this instance name in the shared store.
    #[error(
        "another running gateway uses the instance name \"{0}\" with this store; give each instance its own gateway.instance"
    )]
    InstanceTaken(Arc<str>),
}

impl StoreError {
    /// Whether this error means Redis cannot be reached (an outage), rather than an
    /// answer that was an error.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            Self::Timeout | Self::Down => true,
            Self::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
            }
            Self::Url | Self::InstanceTaken(_) => false,
        }
    }
}

/// The shared store: a cheap handle, in memory unless Redis is configured.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    redis: Option<RedisLink>,
    /// The limits' part of a Redis store.
    limits: Option<Arc<SharedLimits>>,
    /// This instance's lease in a Redis store.
    lease: Option<Arc<Lease>>,
    instance: Arc<str>,
}

impl Store {
    /// A store in this instance's memory only.
    pub(crate) fn memory(instance: Arc<str>) -> Self {
        Self {
            redis: None,
            limits: None,
            lease: None,
            instance,
        }
    }

    /// The store `config` asks for. Connecting to Redis happens in the background: an
    /// unreachable Redis is an outage (logged, and decided around), not an error.
    pub(crate) fn open(config: &GatewayConfig, metrics: &Metrics) -> Result<Self, StoreError> {
        let instance = config.instance.clone();
        let Some(url) = &config.store.redis else {
            metrics.store_up(true);
            return Ok(Self::memory(instance));
        };
        let link = RedisLink::open(url.expose(), metrics.clone())?;
        let limits = SharedLimits::new(link.clone(), metrics.clone(), instance.clone());
        let lease = Lease::new(link.clone(), &instance);
        Ok(Self {
            redis: Some(link),
            limits: Some(Arc::new(limits)),
            lease: Some(Arc::new(lease)),
            instance,
        })
    }

    /// Joins the fleet, before the gateway accepts anything: claims this instance's
    /// name (refused while another live process holds it; one that died is waited
    /// for, at most one [`LEASE`]), writes its counts, and starts renewing both. With
    /// Redis unreachable, the gateway starts anyway: the renewal claims the name once
    /// Redis answers.
    pub(crate) async fn join(&self) -> Result<(), StoreError> {
        let (Some(lease), Some(limits)) = (&self.lease, &self.limits) else {
            return Ok(());
        };
        let deadline = Instant::now() + LEASE + LEASE_RENEW;
        loop {
            match lease.claim().await {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    tokio::time::sleep(LEASE_RENEW / 4).await;
                }
                Ok(false) => return Err(StoreError::InstanceTaken(self.instance.clone())),
                // Not answered: an outage to serve through.
                Err(_) => break,
            }
        }
        limits.start().await;
        lease.start();
        Ok(())
    }

    /// The rate buckets of the API key `name` with `config` (none: never refuses).
    pub(crate) fn buckets(&self, name: &str, config: Option<&RateLimitConfig>) -> KeyBuckets {
        match &self.limits {
            Some(shared) => shared.buckets(name, config),
            None => KeyBuckets::Memory(MemoryBuckets::new(config)),
        }
    }

    /// A count of the open connections of the API key `name`. In memory, a new one for
    /// each key (a key that continues after a reload keeps its own); in Redis, every key
    /// of that name shares one.
    pub(crate) fn connection_count(&self, name: &Arc<str>) -> ConnectionCount {
        match &self.limits {
            Some(shared) => shared.count(name),
            None => ConnectionCount::Memory(Arc::new(MemoryCount::default())),
        }
    }

    /// Leaves the fleet on shutdown: the renewals end (and are awaited), connections
    /// are no longer counted in Redis, and the lease and this instance's counts go in
    /// one step, so the other instances stop counting them at once.
    pub(crate) async fn close(&self) {
        let (Some(lease), Some(limits)) = (&self.lease, &self.limits) else {
            return;
        };
        lease.stop().await;
        let hashes = limits.close().await;
        let link = &lease.link;
        if link.is_up() {
            let mut invocation = lease.leave_script.key(&lease.key);
            for hash in &hashes {
                invocation.key(hash);
            }
            invocation.arg(&lease.token).arg(&*self.instance);
            let mut connection = link.connection();
            let _ = link
                .call(invocation.invoke_async::<()>(&mut connection))
                .await;
        }
    }

    /// The Redis link, when the store is Redis.
    pub(crate) fn redis(&self) -> Option<&RedisLink> {
        self.redis.as_ref()
    }

    /// This instance's name (`gateway.instance`).
    pub(crate) fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// This process's owner value in a Redis store, `<instance>/<lease token>`: what
    /// the sessions it owns hold as their owner, so that another process of the same
    /// name (a restart) is told apart from this one.
    pub(crate) fn owner(&self) -> Option<String> {
        let lease = self.lease.as_ref()?;
        Some(format!("{}{OWNER_SEPARATOR}{}", self.instance, lease.token))
    }
}

/// Separates the instance name from the lease token in a session's owner value (a
/// character neither an instance name nor a token holds).
pub(crate) const OWNER_SEPARATOR: char = '/';

/// Claims KEYS[1] (an instance's lease) for the token ARGV[1] for ARGV[2] ms, when it
/// is free or already this process's. Returns 1 (held) or 0 (another process holds it).
const CLAIM_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Gives up KEYS[1] (the lease, if token ARGV[1] holds it) and removes the field
/// ARGV[2] (the instance) from each hash of counts in KEYS[2..], in one step.
const LEAVE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[2]) end
return 0
";

/// This instance's lease, `mcpmux:instance:<name>`, holding a token of this process:
/// what every part (sessions, connection counts) checks to know an instance is alive.
#[derive(Debug)]
struct Lease {
    link: RedisLink,
    key: String,
    token: String,
    claim_script: redis::Script,
    leave_script: redis::Script,
    stopped: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Lease {
    fn new(link: RedisLink, instance: &str) -> Self {
        let token: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..16)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        };
        Self {
            key: link.key(&format!("instance:{instance}")),
            link,
            token,
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            leave_script: redis::Script::new(LEAVE_SCRIPT),
            stopped: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    /// Claims or renews the lease: false when another process holds it.
    async fn claim(&self) -> Result<bool, StoreError> {
        let mut invocation = self.claim_script.key(&self.key);
        invocation
            .arg(&self.token)
            .arg(u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX));
        let mut connection = self.link.connection();
        let held: u8 = self
            .link
            .call(invocation.invoke_async(&mut connection))
            .await?;
        Ok(held == 1)
    }

    /// Starts the renewal, every [`LEASE_RENEW`] until [`Lease::stop`].
    fn start(self: &Arc<Self>) {
        let lease = Arc::downgrade(self);
        let stopped = self.stopped.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(LEASE_RENEW);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    _ = interval.tick() => {}
                }
                let Some(lease) = lease.upgrade() else { return };
                if let Ok(false) = lease.claim().await {
                    tracing::error!(
                        "another running gateway uses this instance name with the same store: \
                         sessions and connection counts of the two are mixed up; give each \
                         instance its own gateway.instance"
                    );
                }
            }
        });
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Ends the renewal and waits for it.
    async fn stop(&self) {
        self.stopped.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

/// The connection to Redis that every part shares, and whether Redis answers.
#[derive(Clone)]
pub(crate) struct RedisLink {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    connection: ConnectionManager,
    /// The URL without its password, for logs.
    shown: String,
    /// False from a failed call until Redis answers again.
    up: AtomicBool,
    /// True until the first answer or failure: start-up is not a recovery.
    first: AtomicBool,
    /// Counts the calls that found Redis unreachable: a call that succeeds ends an
    /// outage only if none failed since it was issued.
    failures: AtomicU64,
    /// Counts the times Redis answered again after an outage (or first answered).
    recoveries: watch::Sender<u64>,
    /// When an error answer was last logged.
    error_logged: Mutex<Option<Instant>>,
    metrics: Metrics,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("url", &self.inner.shown)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    fn open(url: &str, metrics: Metrics) -> Result<Self, StoreError> {
        let shown = redact::url(url);
        let client = redis::Client::open(url).map_err(|_| StoreError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(CALL_TIMEOUT);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        metrics.store_up(false);
        let inner = Arc::new(LinkInner {
            connection,
            shown,
            up: AtomicBool::new(false),
            first: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            recoveries: watch::Sender::new(0),
            error_logged: Mutex::new(None),
            metrics,
        });
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// A handle on the pooled connection (cheap; reconnects by itself).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.inner.connection.clone()
    }

    /// `mcpmux:<rest>`: every key mcpmux writes.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{KEY_PREFIX}{rest}")
    }

    /// Whether Redis answered the last call. While it is false, the parts decide in
    /// memory without calling Redis; the probe sets it again.
    pub(crate) fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Runs one Redis call within [`CALL_TIMEOUT`], recording its outcome: not reaching
    /// Redis starts an outage; an answer ends one, unless a call issued later found
    /// Redis unreachable; an error answer is logged (at most every 10 s) and is no
    /// outage.
    pub(crate) async fn call<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let failures = self.inner.failures.load(Ordering::Acquire);
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::Redis(err)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => {
                if self.inner.failures.load(Ordering::Acquire) == failures {
                    self.mark_ok();
                }
            }
            Err(err) if err.is_outage() => self.mark_failed(err),
            Err(err) => self.log_error(err),
        }
        result
    }

    /// Logs an error answer, at most once every [`ERROR_LOG_EVERY`].
    fn log_error(&self, err: &StoreError) {
        let mut logged = self
            .inner
            .error_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.is_some_and(|at| at.elapsed() < ERROR_LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
        tracing::warn!(
            redis = %self.inner.shown,
            %err,
            "the shared store answered with an error: this decision was made in this \
             instance's memory"
        );
    }

    /// Records that Redis did not answer: the first failure of an outage logs a warning
    /// and sets `mcpmux_store_up` to 0.
    pub(crate) fn mark_failed(&self, err: &StoreError) {
        self.inner.failures.fetch_add(1, Ordering::AcqRel);
        let first = self.inner.first.swap(false, Ordering::AcqRel);
        if self.inner.up.swap(false, Ordering::AcqRel) || first {
            self.inner.metrics.store_up(false);
            tracing::warn!(
                redis = %self.inner.shown,
                %err,
                "the shared store does not answer: rate limits and connection counts are \
                 kept in this instance's memory until it does, and client sessions can be \
                 resumed only on their own instance"
            );
        }
    }

    /// Records that Redis answered: the end of an outage is logged and sets
    /// `mcpmux_store_up` to 1.
    pub(crate) fn mark_ok(&self) {
        let first = self.inner.first.swap(false, Ordering::AcqRel);
        if !self.inner.up.swap(true, Ordering::AcqRel) {
            self.inner.metrics.store_up(true);
            self.inner.recoveries.send_modify(|n| *n += 1);
            if first {
                tracing::info!(redis = %self.inner.shown, "connected to the shared store");
            } else {
                tracing::info!(
                    redis = %self.inner.shown,
                    "the shared store answers again: limits are shared again"
                );
            }
        }
    }

    /// Counts a decision of `part` made in memory because Redis did not answer (or
    /// answered with an error): `mcpmux_store_fallback_total{part}`.
    pub(crate) fn fallback(&self, part: &'static str) {
        self.inner.metrics.store_fallback(part);
    }

    /// A receiver that changes each time Redis answers again after an outage (or first
    /// answers): no recovery is missed between two looks.
    pub(crate) fn recoveries(&self) -> watch::Receiver<u64> {
        self.inner.recoveries.subscribe()
    }

    /// Asks Redis for a `PING`, recording the outcome; true when it answered.
    pub(crate) async fn ping(&self) -> bool {
        let mut connection = self.connection();
        let ping = redis::cmd("PING");
        self.call(ping.query_async::<String>(&mut connection))
            .await
            .is_ok()
    }
}

/// Pings Redis every [`PROBE_INTERVAL`] until the link is dropped: an outage is seen
/// (and `mcpmux_store_up` right) even without traffic, and its end is seen at once.
async fn probe(inner: Weak<LinkInner>) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        RedisLink { inner }.ping().await;
    }
}
