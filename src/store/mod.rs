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
//! Every Redis call is bounded ([`CALL_TIMEOUT`]); while Redis does not answer, the
//! parts decide in memory, and a background probe (a `PING` every 500 ms) sees both an
//! outage and its end without waiting for traffic.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

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

/// Why the store could not be opened or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `gateway.store.redis` could not be used (the URL is never shown: it may hold a
    /// password).
    #[error("cannot use gateway.store.redis: {0}")]
    Url(String),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the call timeout.
    #[error("redis did not answer within {} ms", CALL_TIMEOUT.as_millis())]
    Timeout,
}

/// The shared store: a cheap handle, in memory unless Redis is configured.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    redis: Option<RedisLink>,
    /// The limits' part of a Redis store.
    limits: Option<Arc<SharedLimits>>,
    instance: Arc<str>,
}

impl Store {
    /// A store in this instance's memory only.
    pub(crate) fn memory(instance: Arc<str>) -> Self {
        Self {
            redis: None,
            limits: None,
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
        Ok(Self {
            redis: Some(link),
            limits: Some(Arc::new(limits)),
            instance,
        })
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

    /// Leaves the fleet on shutdown: this instance's connection counts stop counting at
    /// once, not when its lease would have expired.
    pub(crate) async fn close(&self) {
        if let Some(limits) = &self.limits {
            limits.close().await;
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
    /// Notified when Redis answers again after an outage.
    recovered: Notify,
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
        let client = redis::Client::open(url)
            .map_err(|_| StoreError::Url("not a valid redis:// URL".into()))?;
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
            recovered: Notify::new(),
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

    /// Runs one Redis call within [`CALL_TIMEOUT`], recording its outcome: a failure
    /// starts an outage, a success ends one.
    pub(crate) async fn call<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::Redis(err)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => self.mark_ok(),
            Err(err) => self.mark_failed(err),
        }
        result
    }

    /// Records that Redis did not answer: the first failure of an outage logs a warning
    /// and sets `mcpmux_store_up` to 0.
    pub(crate) fn mark_failed(&self, err: &StoreError) {
        let first = self.inner.first.swap(false, Ordering::AcqRel);
        if self.inner.up.swap(false, Ordering::AcqRel) || first {
            self.inner.metrics.store_up(false);
            tracing::warn!(
                redis = %self.inner.shown,
                %err,
                "the shared store does not answer: rate limits and connection counts are \
                 kept in this instance's memory until it does"
            );
        }
    }

    /// Records that Redis answered: the end of an outage is logged and sets
    /// `mcpmux_store_up` to 1.
    pub(crate) fn mark_ok(&self) {
        let first = self.inner.first.swap(false, Ordering::AcqRel);
        if !self.inner.up.swap(true, Ordering::AcqRel) {
            self.inner.metrics.store_up(true);
            self.inner.recovered.notify_waiters();
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

    /// Resolves the next time Redis answers again after an outage (or first answers).
    pub(crate) async fn recovered(&self) {
        self.inner.recovered.notified().await;
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
