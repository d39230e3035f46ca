//! Just enough JSON-RPC: a look at a message's `id` and `method` (everything else stays
//! raw), id comparison, and the error responses the gateway writes itself.
//!
//! The look is one pass over the message: the few members of `params` that routing
//! needs are picked out while `params` is skipped, never by parsing it a second time, and
//! values of unexpected types there are ignored rather than refused.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    /// What routing needs of `params`, picked out in the same pass.
    #[serde(default, borrow, deserialize_with = "lenient_params")]
    params: ParamsHead<'a>,
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
        self.params.clone()
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
#[derive(Debug, Default, Clone, Deserialize)]
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
#[derive(Debug, Default, Clone, Deserialize)]
pub struct MetaHead<'a> {
    /// The 2026-07-28 revision's per-message protocol version.
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default, borrow)]
    pub protocol_version: Option<Cow<'a, str>>,
}

/// Reads `params` in the head's pass: by-name params give the members routing needs
/// (each ignored when of another type than expected); anything else gives none.
fn lenient_params<'de, D: Deserializer<'de>>(d: D) -> Result<ParamsHead<'de>, D::Error> {
    d.deserialize_any(ParamsVisitor)
}

/// The members of `params` (and of `_meta`) the gateway reads.
enum Member {
    Meta,
    Name,
    Uri,
    RequestId,
    ProtocolVersion,
    MetaProtocolVersion,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MemberVisitor;
        impl Visitor<'_> for MemberVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "_meta" => Member::Meta,
                    "name" => Member::Name,
                    "uri" => Member::Uri,
                    "requestId" => Member::RequestId,
                    "protocolVersion" => Member::ProtocolVersion,
                    META_PROTOCOL_VERSION => Member::MetaProtocolVersion,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_str(MemberVisitor)
    }
}

/// Skips whatever value comes: the visits of a value that routing does not use.
macro_rules! skip_other_values {
    ($value:ty) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<$value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

struct ParamsVisitor;

impl<'de> Visitor<'de> for ParamsVisitor {
    type Value = ParamsHead<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON-RPC params")
    }
    skip_other_values!(ParamsHead<'de>);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut params = ParamsHead::default();
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Meta => params.meta = map.next_value::<LenientMeta<'de>>()?.0,
                Member::Name => params.name = map.next_value::<LenientStr<'de>>()?.0,
                Member::Uri => params.uri = map.next_value::<LenientStr<'de>>()?.0,
                Member::RequestId => params.request_id = Some(map.next_value()?),
                Member::ProtocolVersion => {
                    params.protocol_version = map.next_value::<LenientStr<'de>>()?.0;
                }
                Member::MetaProtocolVersion | Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(params)
    }
}

/// `_meta`, or nothing when it is not an object.
#[derive(Default)]
struct LenientMeta<'a>(Option<MetaHead<'a>>);

impl<'de> Deserialize<'de> for LenientMeta<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MetaVisitor;
        impl<'de> Visitor<'de> for MetaVisitor {
            type Value = LenientMeta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("_meta")
            }
            skip_other_values!(LenientMeta<'de>);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut meta = MetaHead::default();
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::MetaProtocolVersion => {
                            meta.protocol_version = map.next_value::<LenientStr<'de>>()?.0;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(LenientMeta(Some(meta)))
            }
        }
        d.deserialize_any(MetaVisitor)
    }
}

/// A string, borrowed when it has no escapes; nothing when the value is not a string.
#[derive(Default)]
struct LenientStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(StrVisitor)
    }
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
    // The common ids are already canonical as written: a plain integer, or a string
    // without escapes. Only other ids are parsed.
    let raw = id.get();
    let bytes = raw.as_bytes();
    let plain_integer = matches!(bytes, [b'1'..=b'9', rest @ ..] if rest.len() < 15 && rest.iter().all(u8::is_ascii_digit))
        || raw == "0";
    let plain_string = bytes.len() >= 2
        && bytes[0] == b'"'
        && bytes[bytes.len() - 1] == b'"'
        && !bytes[1..bytes.len() - 1]
            .iter()
            .any(|&b| b == b'\\' || b == b'"' || b < 0x20 || b == 0x7f);
    if plain_integer || plain_string {
        return raw.to_owned();
    }
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
    fn canonical_ids_of_the_fast_path_match_the_parsed_ones() {
        let slow = |raw: &str| {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            value.to_string()
        };
        for raw in ["0", "7", "123456789012345", r#""abc""#, r#""é ü""#, r#""""#] {
            let id: &RawValue = serde_json::from_str(raw).unwrap();
            assert_eq!(id_key(id), slow(raw), "{raw}");
        }
        for raw in [
            "-1",
            "1.5",
            "1e3",
            r#""a\u0041""#,
            "12345678901234567890",
            "null",
        ] {
            let id: &RawValue = serde_json::from_str(raw).unwrap();
            assert!(!id_key(id).is_empty(), "{raw}");
        }
    }

    #[test]
    fn params_of_unexpected_shapes_are_ignored_not_refused() {
        let cases = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5,"_meta":[],"uri":{"a":[1]}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":3}}}"#,
        ];
        for text in cases {
            let head = Head::parse(text).expect(text);
            assert_eq!(head.kind(), Kind::Request);
            let params = head.params();
            assert!(params.name.is_none() && params.uri.is_none(), "{text}");
            assert!(
                params.meta.and_then(|m| m.protocol_version).is_none(),
                "{text}"
            );
        }
        let text = r#"{"params":{"requestId":"x\u0041","name":"a\u0042","other":{"name":1}},"method":"notifications/cancelled","jsonrpc":"2.0"}"#;
        let params = Head::parse(text).unwrap().params();
        assert_eq!(params.request_id.unwrap().get(), r#""x\u0041""#);
        assert_eq!(params.name.as_deref(), Some("aB"));
        assert!(Head::parse(r#"{"id":1,"method":"x","params":{"a":}}"#).is_err());
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
