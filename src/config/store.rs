//! The `gateway` keys of a fleet of instances: `instance`, this instance's name, and
//! `store`, where the instances share rate limits, connection counts and sessions.
//!
//! `{"instance": "eu-1", "store": {"redis": "redis://:${REDIS_PASSWORD}@10.0.0.5:6379/0"}}`.
//! The Redis URL may carry a password: it is a [`Secret`], and no message quotes it.

use std::sync::{Arc, OnceLock};

use rand::Rng;
use redis::IntoConnectionInfo;
use serde::Deserialize;
use serde_json::Value;

use super::raw::{Keys, Raw};
use super::validate::Parser;
use super::{ConfigError, Secret};

/// The longest instance name.
const MAX_INSTANCE_LEN: usize = 32;
/// Length of the random name of an instance that has none configured.
const RANDOM_INSTANCE_LEN: usize = 8;

/// `gateway.store`: the store instances share; empty (the default) keeps everything in
/// this instance's memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreConfig {
    /// `redis`: a `redis://[:password@]host:port[/db]` URL, `${NAME}` expanded.
    pub redis: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    redis: Option<String>,
}

impl Raw for RawStore {
    const KEYS: Keys = &["redis"];
}

/// The name of an instance whose configuration sets none: 8 random characters from
/// `[a-z0-9]`, drawn once per process, so that re-reading the configuration keeps it.
/// Two gateways in one process that share a store must each set `instance`.
pub fn default_instance() -> Arc<str> {
    static NAME: OnceLock<Arc<str>> = OnceLock::new();
    NAME.get_or_init(|| {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let name: String = (0..RANDOM_INSTANCE_LEN)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        Arc::from(name)
    })
    .clone()
}

/// Whether `name` may name an instance: 1 to 32 characters from `a-z 0-9 -`.
pub(super) fn is_instance_name(name: &str) -> bool {
    (1..=MAX_INSTANCE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Parser<'_> {
    /// `gateway.instance`.
    pub(super) fn instance(&self, name: &str) -> Result<Arc<str>, ConfigError> {
        // `${VAR}`: one file for every instance, each naming itself from its environment
        // (a StatefulSet pod's name, say).
        let name = self.expand(name, "gateway.instance")?;
        if !is_instance_name(&name) {
            let msg = "is not a valid instance name; use 1 to 32 characters from a-z 0-9 - \
                       (it is part of every session id)";
            return self.fail("gateway.instance", msg);
        }
        Ok(Arc::from(name.as_str()))
    }

    /// `gateway.store`.
    pub(super) fn store(&self, value: &Value) -> Result<StoreConfig, ConfigError> {
        let raw: RawStore = self.decode(value, "gateway.store")?;
        let Some(url) = raw.redis else {
            return Ok(StoreConfig::default());
        };
        let path = "gateway.store.redis";
        let url = self.expand(&url, path)?;
        if let Err(msg) = check_redis_url(&url) {
            return self.fail(path, msg);
        }
        Ok(StoreConfig {
            redis: Some(Secret::new(url)),
        })
    }
}

/// `redis://` with a host, as the Redis client reads it. The messages never quote the
/// URL: it may hold a password.
fn check_redis_url(url: &str) -> Result<(), String> {
    const HINT: &str =
        "write a URL such as \"redis://127.0.0.1:6379\" or \"redis://:PASSWORD@host:6379/0\"";
    let scheme_ok = url
        .get(.."redis://".len())
        .is_some_and(|s| s.eq_ignore_ascii_case("redis://"));
    if !scheme_ok {
        return Err(format!("is not a redis:// URL; {HINT}"));
    }
    let authority = url["redis://".len()..]
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(format!("has no host; {HINT}"));
    }
    if url.into_connection_info().is_err() {
        return Err(format!(
            "is not a valid Redis URL (host, port or database number); {HINT}"
        ));
    }
    Ok(())
}
