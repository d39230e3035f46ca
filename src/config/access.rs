//! Who may use the gateway and how it is reached: the `gateway` keys `apiKeys`,
//! `allowedOrigins`, `allowedHosts`, `allowAnonymous` and `tls`.
//!
//! This module owns their public types, their raw serde structs and every rule and message
//! about them: key names, key material (`key` or `keySha256`, never shown again once read),
//! the servers a key may use, its rate limits and connection limit, and the TLS file paths
//! (relative to the configuration file's folder). The form of origins and host names is
//! the `origins` module's.
//! A key's value never appears in an error message or in `Debug` output.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::origins::{check_host_name, check_origin};
use super::raw::{Keys, Raw, join};
use super::validate::{MAX_NUMBER, Parser, is_server_name};
use super::{ConfigError, ServerConfig};

/// Fewest characters a `key` may have.
pub const MIN_KEY_CHARS: usize = 16;
/// Most characters a `key` may have (it travels in headers and in a subprotocol).
pub const MAX_KEY_CHARS: usize = 1024;
/// Highest `perSecond` and `burst` accepted.
const MAX_RATE: f64 = 1_000_000.0;
/// Lowest `perSecond` accepted (one frame in about 11.6 days).
pub const MIN_RATE: f64 = 1e-6;

/// Who may connect and from where.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AccessConfig {
    /// `apiKeys`: when not empty, every route but `/healthz` needs one of them.
    pub api_keys: Vec<ApiKeyConfig>,
    /// `allowedOrigins`, each normalized by [`normalize_origin`].
    pub allowed_origins: Vec<String>,
    /// `allowedHosts`: host names (lower case, no port) accepted in `Host` without keys.
    pub allowed_hosts: Vec<String>,
    /// `allowAnonymous`: serve without keys on an address other than loopback.
    pub allow_anonymous: bool,
}

/// One entry of `apiKeys`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKeyConfig {
    /// What logs and errors call the key (`[A-Za-z0-9_.-]{1,64}`, unique).
    pub name: String,
    /// The key, or its SHA-256.
    pub key: KeyMaterial,
    /// The servers the key may use.
    pub servers: ServerGrant,
    /// `rateLimit`, if any.
    pub rate_limit: Option<RateLimitConfig>,
    /// `maxConnections`: open sockets of this key at once, if limited.
    pub max_connections: Option<usize>,
}

/// How a key is configured. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `key`: the key itself.
    Plain(super::Secret),
    /// `keySha256`: the SHA-256 of the key.
    Sha256([u8; 32]),
}

impl KeyMaterial {
    /// The SHA-256 of the key, which is what the gateway compares.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Self::Plain(key) => sha256(key.expose().as_bytes()),
            Self::Sha256(digest) => *digest,
        }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("key ***"),
            Self::Sha256(_) => f.write_str("keySha256 ***"),
        }
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The servers a key may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerGrant {
    /// `"*"`: every configured server.
    All,
    /// These configured servers only.
    Only(BTreeSet<String>),
}

impl ServerGrant {
    /// True when the grant includes `server`.
    pub fn includes(&self, server: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(servers) => servers.contains(server),
        }
    }
}

/// `rateLimit` of a key.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// `perSecond`/`burst`: every `rpc` frame of the key, across its connections.
    pub overall: Option<Rate>,
    /// `servers`: `rpc` frames of the key for one server.
    pub servers: BTreeMap<String, Rate>,
}

/// A token bucket: refills `per_second` tokens a second, holds at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Frames a second, sustained (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Frames at once after a pause (default: `perSecond` rounded up, at least 1).
    pub burst: u32,
}

/// `tls`: serve `wss://` and `https://` with this certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// `cert`: PEM file of the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `key`: PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsConfig {
    /// Makes relative paths relative to `dir` (the configuration file's folder).
    pub fn relative_to(&mut self, dir: &Path) {
        for path in [&mut self.cert, &mut self.key] {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

/// The raw `gateway` keys this module reads.
#[derive(Default)]
pub(super) struct RawAccess {
    pub api_keys: Option<Vec<Value>>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allow_anonymous: Option<bool>,
    pub tls: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawApiKey {
    name: Option<String>,
    key: Option<String>,
    key_sha256: Option<String>,
    servers: Option<Value>,
    rate_limit: Option<Value>,
    max_connections: Option<u64>,
}

impl Raw for RawApiKey {
    const KEYS: Keys = &[
        "name",
        "key",
        "keySha256",
        "servers",
        "rateLimit",
        "maxConnections",
    ];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimit {
    per_second: Option<f64>,
    burst: Option<u64>,
    servers: Option<Map<String, Value>>,
}

impl Raw for RawRateLimit {
    const KEYS: Keys = &["perSecond", "burst", "servers"];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRate {
    per_second: Option<f64>,
    burst: Option<u64>,
}

impl Raw for RawRate {
    const KEYS: Keys = &["perSecond", "burst"];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

impl Raw for RawTls {
    const KEYS: Keys = &["cert", "key"];
}

type Res<T> = Result<T, ConfigError>;

impl Parser<'_> {
    /// Reads the access keys of the `gateway` section; `servers` are the configured ones.
    pub(super) fn access(
        &self,
        raw: RawAccess,
        servers: &BTreeMap<String, ServerConfig>,
    ) -> Res<(AccessConfig, Option<TlsConfig>)> {
        let mut access = AccessConfig {
            allow_anonymous: raw.allow_anonymous.unwrap_or(false),
            ..AccessConfig::default()
        };
        for (i, value) in raw.api_keys.unwrap_or_default().iter().enumerate() {
            let path = format!("gateway.apiKeys[{i}]");
            let key = self.api_key(value, &path, servers)?;
            self.check_unique(&access.api_keys, &key, &path)?;
            access.api_keys.push(key);
        }
        for (i, origin) in raw.allowed_origins.unwrap_or_default().iter().enumerate() {
            let path = format!("gateway.allowedOrigins[{i}]");
            let normalized = check_origin(origin).or_else(|msg| self.fail(&path, msg))?;
            if !access.allowed_origins.contains(&normalized) {
                access.allowed_origins.push(normalized);
            }
        }
        for (i, host) in raw.allowed_hosts.unwrap_or_default().iter().enumerate() {
            let path = format!("gateway.allowedHosts[{i}]");
            let normalized = check_host_name(host).or_else(|msg| self.fail(&path, msg))?;
            if !access.allowed_hosts.contains(&normalized) {
                access.allowed_hosts.push(normalized);
            }
        }
        let tls = match &raw.tls {
            None => None,
            Some(value) => Some(self.tls(value)?),
        };
        Ok((access, tls))
    }

    fn api_key(
        &self,
        value: &Value,
        path: &str,
        servers: &BTreeMap<String, ServerConfig>,
    ) -> Res<ApiKeyConfig> {
        let raw: RawApiKey = self.decode(value, path)?;
        let name = match raw.name {
            Some(name) if is_server_name(&name) => name,
            Some(_) => {
                let msg = "is not a valid key name; use 1 to 64 characters from A-Z a-z 0-9 _ . -";
                return self.fail(&join(path, "name"), msg);
            }
            None => return self.fail(path, "needs a \"name\" (what logs call this key)"),
        };
        let key = match (raw.key, raw.key_sha256) {
            (Some(_), Some(_)) => {
                let msg = "has both \"key\" and \"keySha256\"; keep one of them";
                return self.fail(path, msg);
            }
            (None, None) => {
                let msg = "needs \"key\" (the key, e.g. \"${MY_KEY}\") or \"keySha256\" \
                           (its SHA-256 in hex)";
                return self.fail(path, msg);
            }
            (Some(key), None) => {
                let key_path = join(path, "key");
                let key = self.expand(&key, &key_path)?;
                check_key(&key).or_else(|msg| self.fail(&key_path, msg))?;
                KeyMaterial::Plain(super::Secret::new(key))
            }
            (None, Some(hex)) => {
                let key_path = join(path, "keySha256");
                let hex = self.expand(&hex, &key_path)?;
                match parse_sha256(&hex) {
                    Some(digest) => KeyMaterial::Sha256(digest),
                    None => {
                        let msg = "must be 64 hexadecimal digits: the SHA-256 of the key \
                                   (e.g. from `printf %s \"$KEY\" | sha256sum`)";
                        return self.fail(&key_path, msg);
                    }
                }
            }
        };
        let servers_path = join(path, "servers");
        let grant = match &raw.servers {
            None => {
                let msg = "needs \"servers\": a list of the server names this key may use, \
                           or \"*\" for all";
                return self.fail(path, msg);
            }
            Some(value) => self.grant(value, &servers_path, servers)?,
        };
        let rate_limit = match &raw.rate_limit {
            None => None,
            Some(value) => Some(self.rate_limit(value, &join(path, "rateLimit"), &grant)?),
        };
        let max_connections = match raw.max_connections {
            None => None,
            Some(n) if (1..=MAX_NUMBER).contains(&n) => {
                Some(usize::try_from(n).unwrap_or(usize::MAX))
            }
            Some(n) => {
                let msg = format!(
                    "is {n}; use a whole number from 1 to {MAX_NUMBER}, or remove it for no limit"
                );
                return self.fail(&join(path, "maxConnections"), msg);
            }
        };
        Ok(ApiKeyConfig {
            name,
            key,
            servers: grant,
            rate_limit,
            max_connections,
        })
    }

    /// Fails when `key` repeats the name or the key of an earlier entry.
    fn check_unique(&self, earlier: &[ApiKeyConfig], key: &ApiKeyConfig, path: &str) -> Res<()> {
        if let Some(i) = earlier.iter().position(|k| k.name == key.name) {
            let msg =
                format!("repeats the name of gateway.apiKeys[{i}]; give each key its own name");
            return self.fail(&join(path, "name"), msg);
        }
        let digest = key.key.digest();
        if let Some(i) = earlier.iter().position(|k| k.key.digest() == digest) {
            let field = match key.key {
                KeyMaterial::Plain(_) => "key",
                KeyMaterial::Sha256(_) => "keySha256",
            };
            let msg = format!(
                "is the same key as gateway.apiKeys[{i}] (\"{}\"); give each consumer its own key",
                earlier[i].name
            );
            return self.fail(&join(path, field), msg);
        }
        Ok(())
    }

    fn grant(
        &self,
        value: &Value,
        path: &str,
        servers: &BTreeMap<String, ServerConfig>,
    ) -> Res<ServerGrant> {
        const HINT: &str = "must be \"*\" (every server) or a list of server names";
        let names = match value {
            Value::String(s) if s == "*" => return Ok(ServerGrant::All),
            Value::Array(names) => names,
            _ => return self.fail(path, HINT),
        };
        if names.is_empty() {
            return self.fail(
                path,
                "is empty; list the servers this key may use, or \"*\"",
            );
        }
        let mut granted = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            let name_path = format!("{path}[{i}]");
            let Some(name) = name.as_str() else {
                return self.fail(&name_path, HINT);
            };
            if !servers.contains_key(name) {
                let msg = format!(
                    "\"{name}\" is not a configured server; fix the name or add it to mcpServers"
                );
                return self.fail(&name_path, msg);
            }
            granted.insert(name.to_owned());
        }
        Ok(ServerGrant::Only(granted))
    }

    fn rate_limit(&self, value: &Value, path: &str, grant: &ServerGrant) -> Res<RateLimitConfig> {
        let raw: RawRateLimit = self.decode(value, path)?;
        let overall = self.rate(raw.per_second, raw.burst, path)?;
        let mut servers = BTreeMap::new();
        for (name, value) in raw.servers.unwrap_or_default() {
            let server_path = format!("{path}.servers.{name}");
            if !grant.includes(&name) {
                let msg = "names a server this key may not use; add it to the key's \"servers\" or remove it";
                return self.fail(&server_path, msg);
            }
            let raw: RawRate = self.decode(&value, &server_path)?;
            match self.rate(raw.per_second, raw.burst, &server_path)? {
                Some(rate) => servers.insert(name, rate),
                None => return self.fail(&server_path, "needs \"perSecond\""),
            };
        }
        if overall.is_none() && servers.is_empty() {
            let msg = "limits nothing; set \"perSecond\" (and \"burst\"), or per-server limits in \"servers\"";
            return self.fail(path, msg);
        }
        Ok(RateLimitConfig { overall, servers })
    }

    fn rate(&self, per_second: Option<f64>, burst: Option<u64>, path: &str) -> Res<Option<Rate>> {
        let per_second = match (per_second, burst) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return self.fail(
                    path,
                    "has \"burst\" without \"perSecond\"; add \"perSecond\"",
                );
            }
            (Some(p), _) if (MIN_RATE..=MAX_RATE).contains(&p) => p,
            (Some(p), _) => {
                let msg = format!("is {p}; use a number from {MIN_RATE} to {MAX_RATE}");
                return self.fail(&join(path, "perSecond"), msg);
            }
        };
        let burst = match burst {
            // Rounded up, and at least one frame.
            None => per_second.ceil().max(1.0) as u32,
            Some(b) if b >= 1 && b as f64 <= MAX_RATE => b as u32,
            Some(b) => {
                let msg = format!("is {b}; use a whole number from 1 to {MAX_RATE}");
                return self.fail(&join(path, "burst"), msg);
            }
        };
        Ok(Some(Rate { per_second, burst }))
    }

    fn tls(&self, value: &Value) -> Res<TlsConfig> {
        let raw: RawTls = self.decode(value, "gateway.tls")?;
        let file = |value: Option<String>, key: &str| match value {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => self.fail(
                &join("gateway.tls", key),
                "needs the path of a PEM file (relative to the configuration file's folder)",
            ),
        };
        Ok(TlsConfig {
            cert: file(raw.cert, "cert")?,
            key: file(raw.key, "key")?,
        })
    }
}

/// Why a key is not acceptable; never quotes it.
pub(super) fn check_key(key: &str) -> Result<(), String> {
    let chars = key.chars().count();
    if chars < MIN_KEY_CHARS {
        return Err(format!(
            "is too short ({chars} characters); use at least {MIN_KEY_CHARS} random characters, \
             e.g. from `openssl rand -hex 32`"
        ));
    }
    if chars > MAX_KEY_CHARS {
        return Err(format!(
            "is too long; use at most {MAX_KEY_CHARS} characters"
        ));
    }
    if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be visible ASCII without spaces (it is sent in HTTP headers)".into());
    }
    Ok(())
}

pub(super) fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn env(name: &str) -> Option<String> {
        match name {
            "DASH_KEY" => Some("dashboard-key-0123456789".into()),
            "OPS_SHA" => Some(hex(&sha256(b"ops-key-abcdefghijklmnop"))),
            _ => None,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn parse(gateway: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"{{"mcpServers": {{"everything": {{"command": "x"}}, "memory": {{"command": "y"}}}},
                "gateway": {gateway}}}"#
        );
        Config::parse(&text, "mcpmux.json", &env)
    }

    fn error(gateway: &str) -> String {
        parse(gateway).expect_err("an error").to_string()
    }

    #[test]
    fn the_issue_example_parses() {
        let config = parse(
            r#"{"apiKeys": [
                {"name": "dashboard", "key": "${DASH_KEY}", "servers": ["everything"],
                 "rateLimit": {"perSecond": 20, "burst": 40, "servers": {"everything": {"perSecond": 5, "burst": 10}}},
                 "maxConnections": 50},
                {"name": "ops", "keySha256": "${OPS_SHA}", "servers": "*"}
              ],
              "allowedOrigins": ["https://app.example.org", "http://localhost:5173"],
              "allowedHosts": ["mcp.example.org"]}"#,
        )
        .unwrap();
        let access = &config.gateway.access;
        let dashboard = &access.api_keys[0];
        assert_eq!(dashboard.name, "dashboard");
        assert_eq!(dashboard.key.digest(), sha256(b"dashboard-key-0123456789"));
        assert!(dashboard.servers.includes("everything") && !dashboard.servers.includes("memory"));
        let limit = dashboard.rate_limit.as_ref().unwrap();
        assert_eq!(
            limit.overall,
            Some(Rate {
                per_second: 20.0,
                burst: 40
            })
        );
        assert_eq!(
            limit.servers["everything"],
            Rate {
                per_second: 5.0,
                burst: 10
            }
        );
        assert_eq!(dashboard.max_connections, Some(50));
        let ops = &access.api_keys[1];
        assert_eq!(ops.key.digest(), sha256(b"ops-key-abcdefghijklmnop"));
        assert_eq!(ops.servers, ServerGrant::All);
        assert_eq!((ops.rate_limit.as_ref(), ops.max_connections), (None, None));
        assert_eq!(
            access.allowed_origins,
            ["https://app.example.org", "http://localhost:5173"]
        );
        assert_eq!(access.allowed_hosts, ["mcp.example.org"]);
        assert!(!access.allow_anonymous);
    }

    #[test]
    fn keys_never_show_in_debug_or_errors() {
        let config =
            parse(r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*"}]}"#).unwrap();
        let dump = format!("{config:?}");
        assert!(!dump.contains("dashboard-key"), "{dump}");
        let duplicate = error(
            r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*"},
                            {"name": "b", "key": "dashboard-key-0123456789", "servers": "*"}]}"#,
        );
        assert!(
            duplicate
                .contains("gateway.apiKeys[1].key: is the same key as gateway.apiKeys[0] (\"a\")"),
            "{duplicate}"
        );
        assert!(!duplicate.contains("dashboard-key"), "{duplicate}");
        let short = error(r#"{"apiKeys": [{"name": "a", "key": "tiny-secret", "servers": "*"}]}"#);
        assert!(
            short.contains("is too short (11 characters)") && !short.contains("tiny-secret"),
            "{short}"
        );
    }

    #[test]
    fn a_sha256_that_matches_a_plain_key_is_a_duplicate() {
        let sha = hex(&sha256(b"dashboard-key-0123456789"));
        let text = format!(
            r#"{{"apiKeys": [{{"name": "a", "key": "${{DASH_KEY}}", "servers": "*"}},
                             {{"name": "b", "keySha256": "{}", "servers": "*"}}]}}"#,
            sha.to_uppercase()
        );
        assert!(error(&text).contains("gateway.apiKeys[1].keySha256: is the same key as"));
    }

    #[test]
    fn every_rule_names_its_key() {
        let cases = [
            (
                r#"{"apiKeys": [{"key": "${DASH_KEY}", "servers": "*"}]}"#,
                "gateway.apiKeys[0]: needs a \"name\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a b", "key": "${DASH_KEY}", "servers": "*"}]}"#,
                "gateway.apiKeys[0].name: is not a valid key name",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "servers": "*"}]}"#,
                "gateway.apiKeys[0]: needs \"key\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "keySha256": "00", "servers": "*"}]}"#,
                "has both \"key\" and \"keySha256\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${NOPE}", "servers": "*"}]}"#,
                "gateway.apiKeys[0].key: environment variable NOPE is not set",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "with space 0123456789", "servers": "*"}]}"#,
                "must be visible ASCII",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "keySha256": "abc", "servers": "*"}]}"#,
                "gateway.apiKeys[0].keySha256: must be 64 hexadecimal digits",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}"}]}"#,
                "gateway.apiKeys[0]: needs \"servers\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "all"}]}"#,
                "gateway.apiKeys[0].servers: must be \"*\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": []}]}"#,
                "gateway.apiKeys[0].servers: is empty",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": ["nowhere"]}]}"#,
                "gateway.apiKeys[0].servers[0]: \"nowhere\" is not a configured server",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "maxConnections": 0}]}"#,
                "gateway.apiKeys[0].maxConnections: is 0",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {}}]}"#,
                "gateway.apiKeys[0].rateLimit: limits nothing",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"burst": 3}}]}"#,
                "has \"burst\" without \"perSecond\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"perSecond": 0}}]}"#,
                "gateway.apiKeys[0].rateLimit.perSecond: is 0",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"perSecond": 1e-30}}]}"#,
                "; use a number from 0.000001 to 1000000",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"perSecond": 1, "burst": 0}}]}"#,
                "gateway.apiKeys[0].rateLimit.burst: is 0",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": ["memory"], "rateLimit": {"servers": {"everything": {"perSecond": 1}}}}]}"#,
                "gateway.apiKeys[0].rateLimit.servers.everything: names a server this key may not use",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"servers": {"memory": {}}}}]}"#,
                "rateLimit.servers.memory: needs \"perSecond\"",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimits": 1}]}"#,
                "gateway.apiKeys[0].rateLimits: unknown key",
            ),
            (
                r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*"}, {"name": "a", "keySha256": "${OPS_SHA}", "servers": "*"}]}"#,
                "gateway.apiKeys[1].name: repeats the name of gateway.apiKeys[0]",
            ),
            (
                r#"{"allowedOrigins": ["null"]}"#,
                "gateway.allowedOrigins[0]: \"null\" is the origin",
            ),
            (
                r#"{"allowedOrigins": ["https://*.example.org"]}"#,
                "wildcards are not supported",
            ),
            (
                r#"{"allowedOrigins": ["https://app.example.org/"]}"#,
                "has more than an origin",
            ),
            (
                r#"{"allowedOrigins": ["app.example.org"]}"#,
                "is not an origin",
            ),
            (
                r#"{"allowedOrigins": ["https://app.example.org:99999"]}"#,
                "is not an origin",
            ),
            (
                r#"{"allowedHosts": ["mcp.example.org:443"]}"#,
                "gateway.allowedHosts[0]: \"mcp.example.org:443\" is not a host name",
            ),
            (
                r#"{"allowedHosts": ["https://mcp.example.org"]}"#,
                "is not a host name",
            ),
            (r#"{"allowedHosts": ["10.0.0.1"]}"#, "is an IP address"),
            (r#"{"allowedHosts": ["bad..name"]}"#, "is not a host name"),
            (
                r#"{"tls": {"cert": "c.pem"}}"#,
                "gateway.tls.key: needs the path of a PEM file",
            ),
            (
                r#"{"tls": {"cert": "", "key": "k.pem"}}"#,
                "gateway.tls.cert: needs the path",
            ),
            (
                r#"{"tls": {"cert": "c.pem", "key": "k.pem", "ca": "x"}}"#,
                "gateway.tls.ca: unknown key",
            ),
            (r#"{"allowAnonymous": "yes"}"#, "gateway.allowAnonymous"),
        ];
        for (gateway, needle) in cases {
            let message = error(gateway);
            assert!(
                message.contains(needle),
                "{gateway}\n{message:?} lacks {needle:?}"
            );
            assert!(message.starts_with("mcpmux.json: gateway"), "{message}");
        }
    }

    #[test]
    fn defaults_and_burst() {
        let config = parse("{}").unwrap();
        assert_eq!(config.gateway.access, AccessConfig::default());
        assert_eq!(config.gateway.tls, None);
        let config = parse(
            r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"perSecond": 2.5}}],
                "allowAnonymous": true}"#,
        )
        .unwrap();
        let limit = config.gateway.access.api_keys[0]
            .rate_limit
            .clone()
            .unwrap();
        assert_eq!(
            limit.overall,
            Some(Rate {
                per_second: 2.5,
                burst: 3
            })
        );
        assert!(config.gateway.access.allow_anonymous);
        let slow = parse(r#"{"apiKeys": [{"name": "a", "key": "${DASH_KEY}", "servers": "*", "rateLimit": {"perSecond": 0.1}}]}"#).unwrap();
        assert_eq!(
            slow.gateway.access.api_keys[0]
                .rate_limit
                .as_ref()
                .unwrap()
                .overall
                .unwrap()
                .burst,
            1
        );
    }

    #[test]
    fn allowed_origins_are_normalized_and_deduplicated() {
        let config =
            parse(r#"{"allowedOrigins": ["HTTP://LOCALHOST:80", "http://localhost"]}"#).unwrap();
        assert_eq!(config.gateway.access.allowed_origins, ["http://localhost"]);
    }

    #[test]
    fn tls_paths_are_kept_and_made_relative_to_the_file() {
        let config = parse(r#"{"tls": {"cert": "certs/c.pem", "key": "/abs/k.pem"}}"#).unwrap();
        let mut tls = config.gateway.tls.unwrap();
        tls.relative_to(Path::new("/etc/mcpmux"));
        assert_eq!(tls.cert, Path::new("/etc/mcpmux/certs/c.pem"));
        assert_eq!(tls.key, Path::new("/abs/k.pem"));
    }

    #[test]
    fn raw_key_lists_match_serde() {
        fn check<T: Raw>() {
            for key in T::KEYS {
                let one = Value::Object(Map::from_iter([(key.to_string(), Value::Null)]));
                assert!(serde_json::from_value::<T>(one).is_ok(), "{key}");
            }
        }
        check::<RawApiKey>();
        check::<RawRateLimit>();
        check::<RawRate>();
        check::<RawTls>();
    }
}
