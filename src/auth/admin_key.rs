//! The admin API's key (`gateway.admin.key`): presented as `Authorization: Bearer KEY`
//! or `X-API-Key: KEY`, compared in constant time with the configured key's SHA-256,
//! and replaced at once when the configuration is reloaded.

use std::sync::RwLock;

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use super::presented::presented_key;
use crate::config::{KeyMaterial, sha256};

/// The key every admin request must present.
#[derive(Debug)]
pub struct AdminKey {
    /// `None` once `gateway.admin` was removed: no key is accepted.
    digest: RwLock<Option<[u8; 32]>>,
}

impl AdminKey {
    /// The configured key.
    pub fn new(key: &KeyMaterial) -> Self {
        Self {
            digest: RwLock::new(Some(key.digest())),
        }
    }

    /// Puts `key` in force from the next request on.
    pub fn replace(&self, key: &KeyMaterial) {
        *self.digest.write().unwrap_or_else(|p| p.into_inner()) = Some(key.digest());
    }

    /// Accepts no key from the next request on (`gateway.admin` was removed).
    pub fn revoke(&self) {
        *self.digest.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// True when `headers` present the key (and no other).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Ok(Some(presented)) = presented_key(headers, false) else {
            return false;
        };
        let Some(digest) = *self.digest.read().unwrap_or_else(|p| p.into_inner()) else {
            return false;
        };
        bool::from(sha256(presented.bytes()).ct_eq(&digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn the_key_is_taken_in_either_header_and_replaced_at_once() {
        let key = AdminKey::new(&KeyMaterial::Plain(Secret::new("admin-key-0123456789")));
        assert!(key.admits(&headers("authorization", "Bearer admin-key-0123456789")));
        assert!(key.admits(&headers("x-api-key", "admin-key-0123456789")));
        assert!(!key.admits(&headers("x-api-key", "admin-key-012345678")));
        assert!(!key.admits(&HeaderMap::new()));
        key.replace(&KeyMaterial::Sha256(sha256(b"another-admin-key-0000")));
        assert!(!key.admits(&headers("x-api-key", "admin-key-0123456789")));
        assert!(key.admits(&headers("x-api-key", "another-admin-key-0000")));
        key.revoke();
        assert!(!key.admits(&headers("x-api-key", "another-admin-key-0000")));
    }
}
