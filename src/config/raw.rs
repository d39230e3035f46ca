//! The raw layer of config parsing: text to a JSON tree, and JSON objects to raw serde structs.
//!
//! The tree is like `serde_json::Value`, but a repeated object key is an error (serde_json keeps
//! the last one silently), reported with its key path and, via serde_json, line and column.
//! The raw structs are what serde decodes, before validation: every field is optional so that
//! missing keys get mcpmux's own messages, and `KEYS` lists the accepted keys for "unknown key"
//! messages. When decoding fails, `decode` names the key at fault as a dotted path.
//!
//! The numeric `gateway` keys are listed once, in `gateway_numbers!`'s invocation: it declares
//! their raw fields and key names and copies them into `GatewayConfig`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{ConfigError, GatewayConfig};

pub(super) type Keys = &'static [&'static str];

/// A raw struct: decoded with serde, with the list of keys it accepts.
pub(super) trait Raw: DeserializeOwned {
    const KEYS: Keys;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    pub mcp_servers: Option<Map<String, Value>>,
    pub gateway: Option<Value>,
}

impl Raw for RawConfig {
    const KEYS: Keys = &["mcpServers", "gateway"];
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    #[serde(rename = "inheritEnv")]
    pub inherit_env: Option<Vec<String>>,
    pub cwd: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub transport: Option<String>,
}

impl Raw for RawServer {
    const KEYS: Keys = &[
        "command",
        "args",
        "env",
        "inheritEnv",
        "cwd",
        "type",
        "url",
        "headers",
        "transport",
    ];
}

/// Declares `RawGateway` from the list of numeric keys (each: the field, the same in `RawGateway`
/// and `GatewayConfig`; its JSON key; the conversion from the JSON number), with its `KEYS` and
/// `RawGateway::numbers`.
macro_rules! gateway_numbers {
    ($($field:ident: $key:literal => $conv:path,)*) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawGateway {
            pub listen: Option<String>,
            #[serde(rename = "mcpProxy")]
            pub mcp_proxy: Option<Vec<String>>,
            #[serde(rename = "apiKeys")]
            pub api_keys: Option<Vec<Value>>,
            #[serde(rename = "allowedOrigins")]
            pub allowed_origins: Option<Vec<String>>,
            #[serde(rename = "allowedHosts")]
            pub allowed_hosts: Option<Vec<String>>,
            #[serde(rename = "allowAnonymous")]
            pub allow_anonymous: Option<bool>,
            pub tls: Option<Value>,
            pub admin: Option<Value>,
            #[serde(rename = "watchConfig")]
            pub watch_config: Option<bool>,
            pub instance: Option<String>,
            pub store: Option<Value>,
            $(
                #[serde(rename = $key)]
                $field: Option<u64>,
            )*
        }

        impl Raw for RawGateway {
            const KEYS: Keys = &[
                "listen", "mcpProxy", $($key,)*
                "apiKeys", "allowedOrigins", "allowedHosts", "allowAnonymous", "tls", "admin",
                "watchConfig", "instance", "store",
            ];
        }

        impl RawGateway {
            /// Copies each numeric key that is set into `g`, once `check(key, n)` accepts it.
            pub fn numbers<E>(
                &self,
                g: &mut GatewayConfig,
                mut check: impl FnMut(&'static str, u64) -> Result<(), E>,
            ) -> Result<(), E> {
                $(
                    if let Some(n) = self.$field {
                        check($key, n)?;
                        g.$field = $conv(n);
                    }
                )*
                Ok(())
            }
        }

        /// The numeric keys whose values differ between `a` and `b`.
        pub(super) fn changed_numbers(a: &GatewayConfig, b: &GatewayConfig) -> Vec<&'static str> {
            let mut changed = Vec::new();
            $(
                if a.$field != b.$field {
                    changed.push($key);
                }
            )*
            changed
        }
    };
}

gateway_numbers! {
    hello_timeout: "helloTimeoutMs" => Duration::from_millis,
    request_timeout: "requestTimeoutMs" => Duration::from_millis,
    connect_timeout: "connectTimeoutMs" => Duration::from_millis,
    start_timeout: "startTimeoutMs" => Duration::from_millis,
    stop_grace: "stopGraceMs" => Duration::from_millis,
    restart_backoff_min: "restartBackoffMinMs" => Duration::from_millis,
    restart_backoff_max: "restartBackoffMaxMs" => Duration::from_millis,
    max_frame_bytes: "maxFrameBytes" => to_usize,
    outbound_queue_bytes: "outboundQueueBytes" => to_usize,
    max_inflight_requests: "maxInflightRequests" => to_usize,
    max_upstream_message_bytes: "maxUpstreamMessageBytes" => to_usize,
    resume_window: "resumeWindowMs" => Duration::from_millis,
    resume_max_frames: "resumeMaxFrames" => to_usize,
    resume_max_bytes: "resumeMaxBytes" => to_usize,
    write_timeout: "writeTimeoutMs" => Duration::from_millis,
    heartbeat: "heartbeatMs" => Duration::from_millis,
    max_upstream_sessions: "maxUpstreamSessions" => to_usize,
    shutdown_grace: "shutdownGraceMs" => Duration::from_millis,
    max_sessions: "maxSessions" => to_usize,
    upstream_idle_timeout: "upstreamIdleTimeoutMs" => Duration::from_millis,
    max_pending_per_ip: "maxPendingPerIp" => to_usize,
    resume_budget_bytes: "resumeBudgetBytes" => to_usize,
    max_connections_per_ip: "maxConnectionsPerIp" => to_usize,
    header_timeout: "headerTimeoutMs" => Duration::from_millis,
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A value at fault: its dotted key path (empty for the root) and what is wrong.
pub(super) struct Fault {
    pub path: String,
    pub message: String,
}

/// `path.key`, or `key` at the root.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads the config text (a leading UTF-8 byte order mark is skipped) into a JSON tree.
pub(super) fn read_tree(text: &str, source_name: &str) -> Result<Value, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut de = serde_json::Deserializer::from_str(text);
    let tree = Tree { path: "" }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    tree.map_err(|e| syntax(e, source_name))
}

/// A syntax error with its position, and a hint instead of serde_json's " at line L column C".
fn syntax(e: serde_json::Error, source_name: &str) -> ConfigError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let mut message = full.strip_suffix(&format!(" at line {line} column {column}"));
    let mut message = message.get_or_insert(&full).to_string();
    if e.is_syntax() {
        message.push_str("; fix the JSON syntax (comments and trailing commas are not allowed)");
    } else if e.is_eof() {
        message.push_str("; the JSON is incomplete");
    }
    ConfigError::Syntax {
        source_name: source_name.to_string(),
        line,
        column,
        message,
    }
}

/// Decodes an object into a raw struct, naming the offending key when it fails.
pub(super) fn decode<T: Raw>(value: &Value, path: &str) -> Result<T, Fault> {
    let fault = |path: String, message: String| Err(Fault { path, message });
    let Value::Object(map) = value else {
        let message = format!("expected an object, found {}", kind_of(value));
        return fault(path.to_string(), message);
    };
    if let Some(key) = map.keys().find(|k| !T::KEYS.contains(&k.as_str())) {
        let allowed = T::KEYS.join(", ");
        let msg = format!("unknown key; remove it or fix its spelling (allowed here: {allowed})");
        return fault(join(path, key), msg);
    }
    let err = match T::deserialize(value) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    // Find the key at fault: every raw field is optional, so each key decodes on its own.
    for (key, v) in map {
        let single = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
        if let Err(e) = T::deserialize(&single) {
            return fault(join(path, key), e.to_string());
        }
    }
    fault(path.to_string(), err.to_string())
}

/// "a string", "an array", ...: what was found, for "expected ..., found ..." messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads any JSON value, failing on a repeated object key; `path` is where the value stands.
struct Tree<'p> {
    path: &'p str,
}

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        let mut i = 0usize;
        loop {
            let path = format!("{}[{i}]", self.path);
            match seq.next_element_seed(Tree { path: &path })? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(self.path, &key);
            if out.contains_key(&key) {
                let msg = if self.path == "mcpServers" {
                    format!("{path}: duplicate server name; rename or remove one of the entries")
                } else {
                    format!("{path}: duplicate key; remove one of them")
                };
                return Err(serde::de::Error::custom(msg));
            }
            let value = map.next_value_seed(Tree { path: &path })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}
