//! Rate limits: a token bucket per API key (shared by all its connections, and by every
//! instance with a shared store) and per key and server, kept in the store
//! (`crate::store::limits`); what a refusal tells the client; and the rule that closes a
//! connection that goes on sending while it is limited.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimitConfig;
use crate::store::Store;
use crate::store::limits::{Bucket, Buckets, KeyBuckets};

/// A streak of refusals is broken by a pause of at least this long between two of them.
pub const STREAK_PAUSE: Duration = Duration::from_secs(1);
/// A connection refused for rate without such a pause for this long is closed (4029).
pub const STREAK_LIMIT: Duration = Duration::from_secs(10);

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

/// The buckets of one API key, with its rates for the messages.
#[derive(Debug)]
pub struct KeyLimits {
    config: Option<RateLimitConfig>,
    buckets: KeyBuckets,
}

impl KeyLimits {
    /// The buckets for the key `name`'s `rateLimit` (none: not limited), in `store`.
    pub(crate) fn new(name: &str, config: Option<&RateLimitConfig>, store: &Store) -> Self {
        Self {
            config: config.cloned(),
            buckets: store.buckets(name, config),
        }
    }

    /// Takes a token for one frame to `server`: first from the key's bucket, then from the
    /// server's. A frame refused by the server's bucket has still used the key's token.
    pub async fn check(&self, server: &str) -> Result<(), OverLimit> {
        let Err(refused) = self.buckets.take(server).await else {
            return Ok(());
        };
        let config = self.config.as_ref();
        let (server, rate) = match refused.bucket {
            Bucket::Key => (None, config.and_then(|c| c.overall)),
            Bucket::Server => (
                Some(server.to_owned()),
                config.and_then(|c| c.servers.get(server).copied()),
            ),
        };
        let rate = rate.map_or((0.0, 0), |r| (r.per_second, r.burst));
        Err(OverLimit {
            server,
            rate,
            retry_after_ms: ceil_millis(refused.retry_after),
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

    use crate::config::Rate;

    fn limits(overall: Option<(f64, u32)>, servers: &[(&str, f64, u32)]) -> KeyLimits {
        let rate = |(per_second, burst)| Rate { per_second, burst };
        let config = RateLimitConfig {
            overall: overall.map(rate),
            servers: servers
                .iter()
                .map(|&(name, p, b)| (name.to_owned(), rate((p, b))))
                .collect(),
        };
        KeyLimits::new("k", Some(&config), &Store::memory("test".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let key = limits(Some((2.0, 3)), &[]);
        for _ in 0..3 {
            assert_eq!(key.check("a").await, Ok(()));
        }
        let refused = key.check("a").await.unwrap_err();
        assert_eq!(refused.server, None);
        assert_eq!(refused.rate, (2.0, 3));
        assert_eq!(refused.retry_after_ms, 500);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(key.check("a").await.unwrap_err().retry_after_ms, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(key.check("a").await, Ok(()));
        assert!(key.check("a").await.is_err());
        // A long pause refills the burst, and no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut taken = 0;
        for _ in 0..4 {
            taken += usize::from(key.check("a").await.is_ok());
        }
        assert_eq!(taken, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_bucket_limits_only_its_server() {
        let key = limits(None, &[("slow", 1.0, 1)]);
        assert_eq!(key.check("slow").await, Ok(()));
        let refused = key.check("slow").await.unwrap_err();
        assert_eq!(refused.server.as_deref(), Some("slow"));
        assert_eq!(refused.retry_after_ms, 1000);
        for _ in 0..100 {
            assert_eq!(key.check("fast").await, Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_bucket_counts_frames_to_every_server() {
        let key = limits(Some((1.0, 2)), &[("a", 100.0, 100)]);
        assert_eq!(key.check("a").await, Ok(()));
        assert_eq!(key.check("b").await, Ok(()));
        assert_eq!(key.check("a").await.unwrap_err().server, None);
        assert_eq!(key.check("b").await.unwrap_err().server, None);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rates_wait_seconds() {
        let key = limits(Some((0.5, 1)), &[]);
        assert_eq!(key.check("a").await, Ok(()));
        assert_eq!(key.check("a").await.unwrap_err().retry_after_ms, 2000);
    }

    #[tokio::test]
    async fn no_limit_never_refuses() {
        let key = KeyLimits::new("k", None, &Store::memory("test".into()));
        for _ in 0..10_000 {
            assert!(key.check("a").await.is_ok());
        }
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
