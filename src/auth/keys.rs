//! API keys at run time: each configured key with its servers, its rate buckets and its
//! count of open connections; and the key ring that recognizes a presented key.
//!
//! A presented key is hashed with SHA-256 and compared with every configured key's digest
//! in constant time, going through all of them whatever matches, so neither the time taken
//! nor which entry matched tells anything about the keys. Only a key's `name` is ever
//! shown (logs, errors, `Debug`).
//!
//! A key with `maxConnections` also bounds its sessions held for resume: at most
//! `maxConnections` of them at once. Holding one more ends the key's oldest held session,
//! so that a key cannot keep places among `maxSessions` by dropping its sockets.
//!
//! When the configuration is reloaded, a key with the same name and the same key is the
//! same key ([`KeyRing::after`]): it keeps its count of open connections, and its rate
//! buckets unless its `rateLimit` changed. Any other key is a new one.
//!
//! The buckets and the count live in the store (`crate::store::limits`): in memory, or
//! shared with the other instances through Redis, where they are found by the key's
//! name (so there a key under a name keeps that name's count and buckets).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::RateLimitConfig;

use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::rate::{KeyLimits, OverLimit};
use crate::config::{ApiKeyConfig, ServerGrant, sha256};
use crate::store::Store;
use crate::store::limits::{ConnectionCount, Counter};

/// One configured API key.
pub struct ApiKey {
    /// The configured name: what logs and metrics show.
    pub name: Arc<str>,
    digest: [u8; 32],
    servers: ServerGrant,
    /// `rateLimit` as configured, to tell whether a reload changed it.
    rate: Option<RateLimitConfig>,
    limits: Arc<KeyLimits>,
    /// `maxConnections`, if limited.
    max_connections: Option<usize>,
    /// Open sockets presenting this key, from the moment it was accepted until they close;
    /// shared with the same key after a reload.
    open: ConnectionCount,
    /// This key's sessions held for resume, oldest first; at most `maxConnections`.
    held: Mutex<VecDeque<HeldEntry>>,
    /// Numbers the held sessions, to find each one's entry.
    held_count: AtomicU64,
}

/// One held session in its key's queue.
struct HeldEntry {
    number: u64,
    /// Cancelled to end the held session.
    evict: CancellationToken,
    /// Closed when the holder of the session has ended it.
    ended: oneshot::Receiver<()>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// The key as configured, its limits kept in `store`.
    pub(crate) fn new(config: &ApiKeyConfig, store: &Store) -> Self {
        let name: Arc<str> = Arc::from(config.name.as_str());
        Self {
            limits: Arc::new(KeyLimits::new(&name, config.rate_limit.as_ref(), store)),
            open: store.connection_count(&name),
            name,
            digest: config.key.digest(),
            servers: config.servers.clone(),
            rate: config.rate_limit.clone(),
            max_connections: config.max_connections,
            held: Mutex::new(VecDeque::new()),
            held_count: AtomicU64::new(0),
        }
    }

    /// The key as configured now, continuing `previous` (the same key before a reload):
    /// its open connections, and its buckets if its rate limit is unchanged.
    fn continuing(config: &ApiKeyConfig, previous: &ApiKey, store: &Store) -> Self {
        let mut key = Self::new(config, store);
        key.open = previous.open.clone();
        if key.rate == previous.rate {
            key.limits = previous.limits.clone();
        }
        key
    }

    /// True when `other` is this key: the same name and the same key.
    pub fn is_same_key(&self, other: &ApiKey) -> bool {
        self.name == other.name && bool::from(self.digest.ct_eq(&other.digest))
    }

    /// True when this key may use `server`.
    pub fn may_use(&self, server: &str) -> bool {
        self.servers.includes(server)
    }

    /// Takes a token for one `rpc` frame to `server`.
    pub async fn check_rate(&self, server: &str) -> Result<(), OverLimit> {
        self.limits.check(server).await
    }

    /// `maxConnections`, if limited.
    pub fn max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// Counts one more open socket of this key, unless it has `maxConnections` already
    /// (with a shared store: on all instances together).
    pub async fn open_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        if !self.open.open(self.max_connections).await {
            return None;
        }
        Some(ConnectionSlot { key: self.clone() })
    }

    /// Open sockets of this key on this instance.
    pub fn open_connections(&self) -> usize {
        self.open.local()
    }

    /// Counts one more session of this key held for resume. `None` when the key has no
    /// `maxConnections` (its held sessions are not limited). When the key holds
    /// `maxConnections` sessions already, the oldest are told to end: the returned
    /// evictions say when they have.
    pub fn hold_session(self: &Arc<Self>) -> Option<(HeldSlot, Vec<Eviction>)> {
        let limit = self.max_connections?.max(1);
        let number = self.held_count.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        let (ended_tx, ended) = oneshot::channel();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut evictions = Vec::new();
        while held.len() >= limit {
            let Some(oldest) = held.pop_front() else {
                break;
            };
            oldest.evict.cancel();
            evictions.push(Eviction {
                ended: oldest.ended,
            });
        }
        held.push_back(HeldEntry {
            number,
            evict: evict.clone(),
            ended,
        });
        let slot = HeldSlot {
            key: self.clone(),
            number,
            evict,
            _ended: ended_tx,
        };
        Some((slot, evictions))
    }

    /// Sessions of this key held for resume.
    pub fn held_sessions(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A session of a key held for resume. Dropping it (when the session is resumed or
/// ends) frees its place among the key's held sessions.
#[derive(Debug)]
pub struct HeldSlot {
    key: Arc<ApiKey>,
    number: u64,
    evict: CancellationToken,
    /// Dropped with the slot, after the holder ended the session: tells an eviction.
    _ended: oneshot::Sender<()>,
}

impl HeldSlot {
    /// Resolves when a newer held session of the key took this one's place: the held
    /// session must end.
    pub async fn evicted(&self) {
        self.evict.cancelled().await;
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut held = self.key.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|entry| entry.number != self.number);
    }
}

/// A held session told to end because its key holds too many.
#[derive(Debug)]
pub struct Eviction {
    ended: oneshot::Receiver<()>,
}

impl Eviction {
    /// Resolves once the session's holder has ended it (and freed its place).
    pub async fn ended(self) {
        let _ = self.ended.await;
    }
}

/// One open socket of a key; dropping it (when the socket closes) frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    key: Arc<ApiKey>,
}

impl ConnectionSlot {
    /// The key this socket presented.
    pub fn key(&self) -> &Arc<ApiKey> {
        &self.key
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.key.open.close();
    }
}

/// Every configured key.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<Arc<ApiKey>>,
}

impl KeyRing {
    /// The ring of `apiKeys` (empty: the gateway takes no keys), their limits in `store`.
    pub(crate) fn new(configs: &[ApiKeyConfig], store: &Store) -> Self {
        Self {
            keys: configs
                .iter()
                .map(|c| Arc::new(ApiKey::new(c, store)))
                .collect(),
        }
    }

    /// The ring of `configs` after a reload from `previous`: a key that is the same
    /// (name and key) continues its counts ([`ApiKey`]).
    pub(crate) fn after(configs: &[ApiKeyConfig], previous: &KeyRing, store: &Store) -> Self {
        let keys = configs
            .iter()
            .map(|config| {
                let fresh = ApiKey::new(config, store);
                let key = match previous.same(&fresh) {
                    Some(old) => ApiKey::continuing(config, &old, store),
                    None => fresh,
                };
                Arc::new(key)
            })
            .collect();
        Self { keys }
    }

    /// This ring's entry for `key` (a key of this ring or of an earlier one): the one
    /// with the same name and key; `None` when it was removed or changed.
    pub fn same(&self, key: &ApiKey) -> Option<Arc<ApiKey>> {
        self.keys.iter().find(|k| k.is_same_key(key)).cloned()
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured key equal to `presented`, compared in constant time.
    pub fn find(&self, presented: &[u8]) -> Option<Arc<ApiKey>> {
        let digest = sha256(presented);
        let mut matched = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, key) in self.keys.iter().enumerate() {
            let equal = key.digest.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), equal);
            matched |= equal;
        }
        let found = bool::from(matched);
        found
            .then(|| usize::try_from(index).ok())
            .flatten()
            .and_then(|i| self.keys.get(i).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyMaterial, Rate, RateLimitConfig, Secret};

    fn store() -> Store {
        Store::memory("test".into())
    }

    fn config(name: &str, key: KeyMaterial, servers: ServerGrant) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            key,
            servers,
            rate_limit: None,
            max_connections: None,
        }
    }

    fn ring() -> KeyRing {
        KeyRing::new(
            &[
                config(
                    "dashboard",
                    KeyMaterial::Plain(Secret::new("dashboard-key-0123456789")),
                    ServerGrant::Only(["everything".to_owned()].into()),
                ),
                config(
                    "ops",
                    KeyMaterial::Sha256(sha256(b"ops-key-abcdefghijklmnop")),
                    ServerGrant::All,
                ),
            ],
            &store(),
        )
    }

    #[test]
    fn finds_plain_and_hashed_keys_and_nothing_else() {
        let ring = ring();
        assert_eq!(
            &*ring.find(b"dashboard-key-0123456789").unwrap().name,
            "dashboard"
        );
        assert_eq!(
            &*ring.find(b"ops-key-abcdefghijklmnop").unwrap().name,
            "ops"
        );
        for wrong in [
            &b""[..],
            b"dashboard-key-012345678",
            b"dashboard-key-0123456789 ",
            b"OPS-KEY-ABCDEFGHIJKLMNOP",
        ] {
            assert!(ring.find(wrong).is_none());
        }
        // The digest itself is not a key.
        assert!(ring.find(&sha256(b"ops-key-abcdefghijklmnop")).is_none());
        assert!(KeyRing::default().find(b"anything").is_none());
    }

    #[test]
    fn servers_follow_the_grant() {
        let ring = ring();
        let dashboard = ring.find(b"dashboard-key-0123456789").unwrap();
        assert!(dashboard.may_use("everything") && !dashboard.may_use("memory"));
        let ops = ring.find(b"ops-key-abcdefghijklmnop").unwrap();
        assert!(ops.may_use("memory"));
    }

    #[test]
    fn debug_shows_the_name_only() {
        let ring = ring();
        let dump = format!("{ring:?}");
        assert!(
            dump.contains("dashboard") && !dump.contains("0123456789"),
            "{dump}"
        );
        assert!(!dump.contains("digest"), "{dump}");
    }

    #[tokio::test]
    async fn connections_are_counted_until_their_slots_drop() {
        let mut limited = config(
            "a",
            KeyMaterial::Plain(Secret::new("aaaaaaaaaaaaaaaaaaaa")),
            ServerGrant::All,
        );
        limited.max_connections = Some(2);
        let key = Arc::new(ApiKey::new(&limited, &store()));
        let first = key.open_connection().await.unwrap();
        let second = key.open_connection().await.unwrap();
        assert!(key.open_connection().await.is_none());
        assert_eq!(key.open_connections(), 2);
        drop(first);
        let third = key.open_connection().await.unwrap();
        assert_eq!(third.key().name, key.name);
        drop((second, third));
        assert_eq!(key.open_connections(), 0);
    }

    #[tokio::test]
    async fn a_key_holds_at_most_max_connections_sessions_the_oldest_goes() {
        let mut limited = config(
            "a",
            KeyMaterial::Plain(Secret::new("aaaaaaaaaaaaaaaaaaaa")),
            ServerGrant::All,
        );
        limited.max_connections = Some(2);
        let key = Arc::new(ApiKey::new(&limited, &store()));
        let (first, none) = key.hold_session().unwrap();
        let (second, none_either) = key.hold_session().unwrap();
        assert!(none.is_empty() && none_either.is_empty());
        let (third, mut evicted) = key.hold_session().unwrap();
        assert_eq!((evicted.len(), key.held_sessions()), (1, 2));
        // The oldest was told to end; its eviction resolves once its slot is dropped.
        first.evicted().await;
        drop(first);
        evicted.pop().unwrap().ended().await;
        drop(second);
        assert_eq!(key.held_sessions(), 1);
        drop(third);
        assert_eq!(key.held_sessions(), 0);
        // A key without maxConnections does not count its held sessions.
        limited.max_connections = None;
        assert!(
            Arc::new(ApiKey::new(&limited, &store()))
                .hold_session()
                .is_none()
        );
    }

    /// Key `name` (secret `aaaa…`, every server) at one message a second, burst 1.
    fn one_per_second(name: &str) -> ApiKeyConfig {
        let mut limited = config(
            name,
            KeyMaterial::Plain(Secret::new("aaaaaaaaaaaaaaaaaaaa")),
            ServerGrant::All,
        );
        limited.rate_limit = Some(RateLimitConfig {
            overall: Some(Rate {
                per_second: 1.0,
                burst: 1,
            }),
            servers: Default::default(),
        });
        limited
    }

    #[tokio::test(start_paused = true)]
    async fn a_reloaded_key_keeps_its_counts_unless_it_changed() {
        let limited = one_per_second("a");
        let before = KeyRing::new(std::slice::from_ref(&limited), &store());
        let key = before.find(b"aaaaaaaaaaaaaaaaaaaa").unwrap();
        let slot = key.open_connection().await.unwrap();
        assert!(key.check_rate("x").await.is_ok());

        // Same name and key, other servers: the same key, counts and bucket kept.
        let mut narrowed = limited.clone();
        narrowed.servers = ServerGrant::Only(["x".to_owned()].into());
        let after = KeyRing::after(std::slice::from_ref(&narrowed), &before, &store());
        let same = after.same(&key).expect("still configured");
        assert!(!same.may_use("y") && same.may_use("x"));
        assert_eq!(same.open_connections(), 1);
        assert!(same.check_rate("x").await.is_err(), "the bucket went on");
        drop(slot);
        assert_eq!(same.open_connections(), 0);

        // A new rate: a fresh bucket.
        let mut faster = narrowed.clone();
        faster.rate_limit = None;
        let after = KeyRing::after(&[faster], &after, &store());
        assert!(after.same(&key).unwrap().check_rate("x").await.is_ok());

        // Another key under the same name, or the key under another name: not the same.
        let mut rekeyed = narrowed.clone();
        rekeyed.key = KeyMaterial::Plain(Secret::new("bbbbbbbbbbbbbbbbbbbb"));
        let mut renamed = narrowed.clone();
        renamed.name = "b".into();
        let after = KeyRing::after(&[rekeyed, renamed], &before, &store());
        assert!(after.same(&key).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_are_per_key() {
        let limited = one_per_second("a");
        let key = ApiKey::new(&limited, &store());
        assert!(key.check_rate("x").await.is_ok());
        assert!(key.check_rate("x").await.is_err());
    }
}
