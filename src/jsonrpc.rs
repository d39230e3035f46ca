//! Just enough JSON-RPC: a look at a message's `id` and `method` (everything else stays
//! raw), id comparison, and the error responses the gateway writes itself.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::protocol::ErrorCode;

/// The `_meta` key that marks a message of the 2026-07-28 (stateless) revision.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// What kind of JSON-RPC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id`, no `method` (a result or an error).
    Response,
    /// Neither: not a JSON-RPC message the gateway can route.
    Invalid,
}

/// The fields of a message the gateway looks at; the rest is skipped unparsed.
#[derive(Debug, Deserialize)]
pub struct Head<'a> {
    /// `id`, verbatim; `Some("null")` when present as null.
    #[serde(default, borrow, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    /// `method`, if any.
    #[serde(default, borrow)]
    pub method: Option<Cow<'a, str>>,
    /// `params`, raw; looked into only for the few methods that need it.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
    /// `error`, raw; looked into only to notice a dead stdio server.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Head<'a> {
    /// Reads the head of a message, which must be a JSON object (an array, which serde
    /// would read as a tuple of fields, is refused). Validates the whole text.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        if !text.trim_start().starts_with('{') {
            return Err(serde::de::Error::custom(
                "a JSON-RPC message must be a JSON object",
            ));
        }
        serde_json::from_str(text)
    }

    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match (&self.method, self.id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) => Kind::Response,
            (None, None) => Kind::Invalid,
        }
    }

    /// The method name, or "" for responses.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// The parts of `params` that routing needs (2026-07-28 marker, names, request ids).
    pub fn params(&self) -> ParamsHead<'a> {
        self.params
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }

    /// True when this is an error response that mcp-proxy writes when its stdio server
    /// is gone (-32603 "Connection closed" / "Not connected").
    pub fn says_stdio_server_gone(&self) -> bool {
        #[derive(Deserialize)]
        struct ErrorHead<'b> {
            code: i64,
            #[serde(borrow)]
            message: Cow<'b, str>,
        }
        self.error
            .and_then(|raw| serde_json::from_str::<ErrorHead<'_>>(raw.get()).ok())
            .is_some_and(|e| {
                e.code == -32603
                    && matches!(e.message.as_ref(), "Connection closed" | "Not connected")
            })
    }
}

/// The parts of `params` the gateway may need.
#[derive(Debug, Default, Deserialize)]
pub struct ParamsHead<'a> {
    /// `_meta`, for the 2026-07-28 protocol version marker.
    #[serde(rename = "_meta", default, borrow)]
    pub meta: Option<MetaHead<'a>>,
    /// `name` (tools/call, prompts/get).
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    /// `uri` (resources/read).
    #[serde(default, borrow)]
    pub uri: Option<Cow<'a, str>>,
    /// `requestId` (notifications/cancelled).
    #[serde(rename = "requestId", default, borrow)]
    pub request_id: Option<&'a RawValue>,
    /// `protocolVersion` (initialize request and result).
    #[serde(rename = "protocolVersion", default, borrow)]
    pub protocol_version: Option<Cow<'a, str>>,
}

/// `_meta` as far as the gateway cares.
#[derive(Debug, Default, Deserialize)]
pub struct MetaHead<'a> {
    /// The 2026-07-28 revision's per-message protocol version.
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default, borrow)]
    pub protocol_version: Option<Cow<'a, str>>,
}

/// Reads `result.protocolVersion` of an initialize response.
pub fn negotiated_version(message: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Outer<'b> {
        #[serde(borrow)]
        result: Option<ParamsHead<'b>>,
    }
    let outer: Outer<'_> = serde_json::from_str(message).ok()?;
    outer.result?.protocol_version.map(Cow::into_owned)
}

/// A canonical form of an id, so that ids compare by value: string escapes are
/// resolved, and a number with an integral value (`1.0`, `1e3`) reads as that integer,
/// as a server that re-serialises ids would write it.
pub fn id_key(id: &RawValue) -> String {
    match serde_json::from_str::<serde_json::Value>(id.get()) {
        Ok(serde_json::Value::Number(n)) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Ok(value) => value.to_string(),
        Err(_) => id.get().to_owned(),
    }
}

/// A JSON-RPC error response written by the gateway for request `id`.
pub fn error_response(id: &RawValue, code: ErrorCode, message: &str, server: &str) -> String {
    let body = serde_json::json!({
        "code": code.jsonrpc_code(),
        "message": message,
        "data": { "gateway": code.as_str(), "server": server },
    });
    format!(r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#, id.get(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |t: &str| Head::parse(t).unwrap().kind();
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":1,"method":"a"}"#),
            Kind::Request
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"a"}"#),
            Kind::Notification
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"x","result":{}}"#),
            Kind::Response
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":null,"method":"a"}"#),
            Kind::Request
        );
        assert_eq!(kind(r#"{"jsonrpc":"2.0"}"#), Kind::Invalid);
    }

    #[test]
    fn ids_compare_by_value() {
        let a: &RawValue = serde_json::from_str("\"\\u0041\"").unwrap();
        let b: &RawValue = serde_json::from_str("\"A\"").unwrap();
        assert_eq!(id_key(a), id_key(b));
        let one: &RawValue = serde_json::from_str("1").unwrap();
        assert_ne!(id_key(one), id_key(b));
        for same in ["1.0", "1e0", "10e-1"] {
            let other: &RawValue = serde_json::from_str(same).unwrap();
            assert_eq!(id_key(one), id_key(other), "{same}");
        }
        let half: &RawValue = serde_json::from_str("0.5").unwrap();
        assert_ne!(id_key(one), id_key(half));
    }

    #[test]
    fn error_response_keeps_the_id() {
        let id: &RawValue = serde_json::from_str(r#"{"odd":[1]}"#).unwrap();
        let text = error_response(id, ErrorCode::Timeout, "too slow", "s");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], serde_json::json!({"odd":[1]}));
        assert_eq!(v["error"]["code"], -32001);
        assert_eq!(v["error"]["data"]["gateway"], "timeout");
    }

    #[test]
    fn stateless_marker_and_names() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let params = Head::parse(text).unwrap().params();
        assert_eq!(
            params.meta.unwrap().protocol_version.as_deref(),
            Some("2026-07-28")
        );
        assert_eq!(params.name.as_deref(), Some("echo"));
    }

    #[test]
    fn dead_stdio_server_replies_are_recognised() {
        let text = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Not connected"}}"#;
        assert!(Head::parse(text).unwrap().says_stdio_server_gone());
        let text = r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"other"}}"#;
        assert!(!Head::parse(text).unwrap().says_stdio_server_gone());
    }
}
