//! Rate limits: a token bucket per API key (shared by all its connections) and per key and
//! server, built on `governor`; and the rule that closes a connection that goes on sending
//! while it is limited.
//!
//! The buckets read tokio's clock, so tests can pause and advance time.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{Rate, RateLimitConfig};

/// A streak of refusals is broken by a pause of at least this long between two of them.
pub const STREAK_PAUSE: Duration = Duration::from_secs(1);
/// A connection refused for rate without such a pause for this long is closed (4029).
pub const STREAK_LIMIT: Duration = Duration::from_secs(10);

/// governor's view of tokio's clock: the time since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
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

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Why a frame was refused: which limit, and when a frame would be accepted again.
#[derive(Debug, Clone, PartialEq)]
pub struct OverLimit {
    /// The server whose own limit refused it; `None` for the key's overall limit.
    pub server: Option<String>,
    /// The limit, for the message: frames a second and burst.
    pub rate: (f64, u32),
    /// Milliseconds until a frame would be accepted (at least 1).
    pub retry_after_ms: u64,
}

impl OverLimit {
    /// The sentence a client sees, naming the key by its `name` (never the key).
    pub fn message(&self, key: &str) -> String {
        let (per_second, burst) = self.rate;
        let scope = match &self.server {
            Some(server) => format!(" for server \"{server}\""),
            None => String::new(),
        };
        format!(
            "API key \"{key}\" is over its rate limit{scope} ({per_second} per second, burst {burst}); retry in {} ms",
            self.retry_after_ms
        )
    }
}

/// The buckets of one API key.
#[derive(Debug, Default)]
pub struct KeyLimits {
    /// The clock of every bucket here: their instants count from its origin.
    clock: TokioClock,
    overall: Option<(Rate, Bucket)>,
    servers: BTreeMap<String, (Rate, Bucket)>,
}

fn bucket(rate: Rate, clock: TokioClock) -> Bucket {
    // The configuration bounds perSecond to (0, 1e6], so the period is at least 1 µs.
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock)
}

impl KeyLimits {
    /// The buckets for a key's `rateLimit` (none: not limited).
    pub fn new(config: Option<&RateLimitConfig>) -> Self {
        let clock = TokioClock::default();
        let Some(config) = config else {
            return Self::default();
        };
        Self {
            clock,
            overall: config.overall.map(|rate| (rate, bucket(rate, clock))),
            servers: config
                .servers
                .iter()
                .map(|(name, rate)| (name.clone(), (*rate, bucket(*rate, clock))))
                .collect(),
        }
    }

    /// Takes a token for one frame to `server`: first from the key's bucket, then from the
    /// server's. A frame refused by the server's bucket has still used the key's token.
    pub fn check(&self, server: &str) -> Result<(), OverLimit> {
        if let Some((rate, bucket)) = &self.overall {
            self.take(bucket, *rate, None)?;
        }
        if let Some((rate, bucket)) = self.servers.get(server) {
            self.take(bucket, *rate, Some(server))?;
        }
        Ok(())
    }

    fn take(&self, bucket: &Bucket, rate: Rate, server: Option<&str>) -> Result<(), OverLimit> {
        bucket.check().map_err(|not_until| OverLimit {
            server: server.map(str::to_owned),
            rate: (rate.per_second, rate.burst),
            retry_after_ms: ceil_millis(not_until.wait_time_from(self.clock.now())),
        })
    }
}

fn ceil_millis(wait: Duration) -> u64 {
    let millis = wait.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

/// Refusals of one connection, for the 4029 rule: a connection is closed when it has been
/// refused for rate without a pause of at least [`STREAK_PAUSE`] between two refusals for
/// [`STREAK_LIMIT`] (from the first refusal of the streak to the current one).
#[derive(Debug, Default)]
pub struct Streak {
    /// First and latest refusal of the current streak.
    span: Option<(Instant, Instant)>,
}

impl Streak {
    /// Records a refusal at `now`; true when the connection must now be closed.
    pub fn refused(&mut self, now: Instant) -> bool {
        let first = match self.span {
            Some((first, last)) if now.saturating_duration_since(last) < STREAK_PAUSE => first,
            _ => now,
        };
        self.span = Some((first, now));
        now.saturating_duration_since(first) >= STREAK_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(overall: Option<(f64, u32)>, servers: &[(&str, f64, u32)]) -> KeyLimits {
        let rate = |(per_second, burst)| Rate { per_second, burst };
        KeyLimits::new(Some(&RateLimitConfig {
            overall: overall.map(rate),
            servers: servers
                .iter()
                .map(|&(name, p, b)| (name.to_owned(), rate((p, b))))
                .collect(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let key = limits(Some((2.0, 3)), &[]);
        for _ in 0..3 {
            assert_eq!(key.check("a"), Ok(()));
        }
        let refused = key.check("a").unwrap_err();
        assert_eq!(refused.server, None);
        assert_eq!(refused.rate, (2.0, 3));
        assert_eq!(refused.retry_after_ms, 500);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(key.check("a").unwrap_err().retry_after_ms, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(key.check("a"), Ok(()));
        assert!(key.check("a").is_err());
        // A long pause refills the burst, and no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..4).filter(|_| key.check("a").is_ok()).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_bucket_limits_only_its_server() {
        let key = limits(None, &[("slow", 1.0, 1)]);
        assert_eq!(key.check("slow"), Ok(()));
        let refused = key.check("slow").unwrap_err();
        assert_eq!(refused.server.as_deref(), Some("slow"));
        assert_eq!(refused.retry_after_ms, 1000);
        for _ in 0..100 {
            assert_eq!(key.check("fast"), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_bucket_counts_frames_to_every_server() {
        let key = limits(Some((1.0, 2)), &[("a", 100.0, 100)]);
        assert_eq!(key.check("a"), Ok(()));
        assert_eq!(key.check("b"), Ok(()));
        assert_eq!(key.check("a").unwrap_err().server, None);
        assert_eq!(key.check("b").unwrap_err().server, None);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rates_wait_seconds() {
        let key = limits(Some((0.5, 1)), &[]);
        assert_eq!(key.check("a"), Ok(()));
        assert_eq!(key.check("a").unwrap_err().retry_after_ms, 2000);
    }

    #[test]
    fn no_limit_never_refuses() {
        let key = KeyLimits::new(None);
        assert!((0..10_000).all(|_| key.check("a").is_ok()));
    }

    #[test]
    fn retry_after_is_rounded_up_to_a_whole_millisecond() {
        assert_eq!(ceil_millis(Duration::ZERO), 1);
        assert_eq!(ceil_millis(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ceil_millis(Duration::from_millis(7)), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_of_ten_seconds_without_a_one_second_pause_closes() {
        let mut streak = Streak::default();
        let start = Instant::now();
        // Refusals every 900 ms: the streak goes on.
        for step in 0..12u32 {
            let now = start + Duration::from_millis(900) * step;
            let close = streak.refused(now);
            assert_eq!(close, now - start >= STREAK_LIMIT, "at {:?}", now - start);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_of_one_second_starts_a_new_streak() {
        let mut streak = Streak::default();
        let start = Instant::now();
        for step in 0..10u32 {
            assert!(!streak.refused(start + Duration::from_millis(900) * step));
        }
        // 8.1 s into the streak, a pause of exactly 1 s: the next refusal starts afresh.
        let resumed = start + Duration::from_millis(8_100 + 1_000);
        assert!(!streak.refused(resumed));
        let later = resumed + Duration::from_millis(9_999);
        assert!(!streak.refused(later));
        // Refusals 0.5 s apart carry that streak to 10 s, and no sooner.
        let mut at = later;
        for _ in 0..19 {
            at += Duration::from_millis(500);
            assert!(!streak.refused(at));
        }
        assert!(streak.refused(at + Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_burst_never_closes() {
        let mut streak = Streak::default();
        let now = Instant::now();
        assert!((0..100_000).all(|_| !streak.refused(now)));
    }
}
