//! The `gateway` key `admin`: the admin API's own listener and its key.
//!
//! `{"listen": "127.0.0.1:7301", "key": "${ADMIN_KEY}"}` (or `keySha256`). The listener
//! defaults to loopback, and a key is always required: the admin API changes what the
//! gateway serves.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::Value;

use super::access::{KeyMaterial, check_key, parse_sha256};
use super::raw::{Keys, Raw, join};
use super::validate::Parser;
use super::{ConfigError, Secret};

/// Where the admin API listens when `admin.listen` is not set.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7301);

/// `gateway.admin`: the admin API (and `/metrics`) on a listener of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// `listen` (default 127.0.0.1:7301; port 0 picks a free port).
    pub listen: SocketAddr,
    /// `key` or `keySha256`: what every admin request must present.
    pub key: KeyMaterial,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAdmin {
    listen: Option<String>,
    key: Option<String>,
    key_sha256: Option<String>,
}

impl Raw for RawAdmin {
    const KEYS: Keys = &["listen", "key", "keySha256"];
}

impl Parser<'_> {
    /// Reads `gateway.admin`.
    pub(super) fn admin(&self, value: &Value) -> Result<AdminConfig, ConfigError> {
        const PATH: &str = "gateway.admin";
        let raw: RawAdmin = self.decode(value, PATH)?;
        let listen = match raw.listen {
            None => DEFAULT_ADMIN_LISTEN,
            Some(text) => match text.parse() {
                Ok(addr) => addr,
                Err(_) => {
                    let msg = format!(
                        "\"{text}\" is not an \"ip:port\" address; write e.g. \"127.0.0.1:7301\""
                    );
                    return self.fail(&join(PATH, "listen"), msg);
                }
            },
        };
        let key = match (raw.key, raw.key_sha256) {
            (Some(_), Some(_)) => {
                return self.fail(PATH, "has both \"key\" and \"keySha256\"; keep one of them");
            }
            (None, None) => {
                let msg = "needs \"key\" (e.g. \"${ADMIN_KEY}\") or \"keySha256\": the admin \
                           API always takes a key";
                return self.fail(PATH, msg);
            }
            (Some(key), None) => {
                let path = join(PATH, "key");
                let key = self.expand(&key, &path)?;
                check_key(&key).or_else(|msg| self.fail(&path, msg))?;
                KeyMaterial::Plain(Secret::new(key))
            }
            (None, Some(hex)) => {
                let path = join(PATH, "keySha256");
                let hex = self.expand(&hex, &path)?;
                match parse_sha256(&hex) {
                    Some(digest) => KeyMaterial::Sha256(digest),
                    None => {
                        let msg = "must be 64 hexadecimal digits: the SHA-256 of the key";
                        return self.fail(&path, msg);
                    }
                }
            }
        };
        Ok(AdminConfig { listen, key })
    }
}
