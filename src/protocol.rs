//! The `mcpmux.v1` WebSocket protocol: decoding client frames and encoding gateway frames.
//!
//! `protocol.md` is the normative description; this module is its code. Decoding borrows
//! from the received text: a carried JSON-RPC message stays a `&RawValue` slice of the
//! frame and is never rebuilt, so ids and every other byte reach the upstream as sent.
//! Encoding writes upstream messages into the `rpc` frame verbatim.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// The subprotocol name a client may offer in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "mcpmux.v1";

/// WebSocket close codes the gateway uses (`protocol.md`, "Close codes").
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The client did not keep up with its frames; its session is kept for resume.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The client answered no ping for two heartbeat intervals; its session is kept.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// Another connection asked to resume this connection's session; the session ended.
    pub const SESSION_TAKEN_OVER: u16 = 4002;
    /// The gateway is shutting down; reconnect later.
    pub const GOING_AWAY: u16 = 1001;
    /// Over a limit: the key's `maxConnections` (key in `hello`), or rate limited without
    /// pause for too long; reconnect later.
    pub const RATE_LIMITED: u16 = 4029;
    /// No valid API key in `hello`, or one that differs from the upgrade's.
    pub const UNAUTHORIZED: u16 = 4501;
    /// The API key the connection presented was removed from the configuration (or the
    /// gateway, which took no keys, now does).
    pub const KEY_REVOKED: u16 = 4503;
    /// A frame was larger than the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// The first frame was not `hello`, or a second `hello` arrived.
    pub const PROTOCOL_VIOLATION: u16 = 4500;
    /// No `hello` arrived in time.
    pub const HELLO_TIMEOUT: u16 = 4508;
}

/// Client session ids (`protocol.md`, section 3, `welcome`): `<instance>.<32 hex
/// digits>`, naming the gateway instance that owns the session so that a load balancer
/// can send a resume there (`GET /ws?session=ID`). Clients treat ids as opaque.
pub mod session_id {
    /// Hex digits of an id shown in logs after its instance: the whole id lets its
    /// holder resume the session, so logs show only its start.
    const LOGGED_HEX: usize = 8;

    /// A new session id for `instance` (a `gateway.instance`), from 128 random bits.
    pub fn new(instance: &str, random: u128) -> String {
        format!("{instance}.{random:032x}")
    }

    /// The instance that owns session `id`, when `id` has the gateway's form.
    pub fn owner(id: &str) -> Option<&str> {
        let (instance, random) = id.split_once('.')?;
        let instance_ok = (1..=32).contains(&instance.len())
            && instance
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let random_ok = random.len() == 32
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (instance_ok && random_ok).then_some(instance)
    }

    /// What logs show of session `id`: its instance and the first 8 hex digits.
    pub fn logged(id: &str) -> &str {
        let end = id.find('.').map_or(0, |dot| dot + 1) + LOGGED_HEX;
        match id.get(..end) {
            Some(start) => start,
            None if id.len() <= end => id,
            // Not the gateway's form: nothing of it.
            None => "",
        }
    }

    /// The first `session` parameter of an upgrade URL's query, as sent (ids need no
    /// percent-encoding, and a load balancer routes on the raw value too).
    pub fn from_query(query: &str) -> Option<&str> {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("session="))
    }
}

/// Machine-readable error codes, used in `error` frames and in `error.data.gateway` of
/// JSON-RPC error responses the gateway makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, binary, or a field missing or of the wrong type.
    BadFrame,
    /// `type` names no frame this protocol has.
    UnknownType,
    /// `server` names no configured server.
    UnknownServer,
    /// The carried message is a JSON-RPC batch (an array).
    Batch,
    /// The server is not ready (starting, restarting, down) or refused the connection.
    ServerUnavailable,
    /// The upstream answered with an error status, garbage, or cut its stream.
    UpstreamError,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream session is gone (expired or the server restarted); initialize again.
    SessionLost,
    /// The upstream session was ended by the client (`close`, a new `initialize`).
    SessionClosed,
    /// Too many requests of this connection are in flight.
    TooManyRequests,
    /// The connection holds `maxUpstreamSessions` upstream sessions already.
    TooManySessions,
    /// The API key is over its rate limit; retry after `retry_after_ms`.
    RateLimited,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: [ErrorCode; 12] = [
        Self::BadFrame,
        Self::UnknownType,
        Self::UnknownServer,
        Self::Batch,
        Self::ServerUnavailable,
        Self::UpstreamError,
        Self::Timeout,
        Self::SessionLost,
        Self::SessionClosed,
        Self::TooManyRequests,
        Self::TooManySessions,
        Self::RateLimited,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownType => "unknown_type",
            Self::UnknownServer => "unknown_server",
            Self::Batch => "batch",
            Self::ServerUnavailable => "server_unavailable",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::SessionLost => "session_lost",
            Self::SessionClosed => "session_closed",
            Self::TooManyRequests => "too_many_requests",
            Self::TooManySessions => "too_many_sessions",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The JSON-RPC `error.code` used when this becomes a JSON-RPC error response:
    /// -32001 for timeouts (the MCP SDKs' RequestTimeout), -32000 otherwise.
    pub fn jsonrpc_code(self) -> i64 {
        match self {
            Self::Timeout => -32001,
            _ => -32000,
        }
    }
}

/// `client` of a `hello` frame.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's name, for logs.
    pub name: String,
    /// The client's version, for logs.
    #[serde(default)]
    pub version: Option<String>,
}

/// `resume` of a `hello` frame: the session to resume and the last seq the client has.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Resume {
    /// The `session` of the earlier `welcome`.
    pub session: String,
    /// The last seq the client received (0 if none).
    pub last_seq: u64,
}

/// `token` of a `hello` frame: an API key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The key, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// A decoded client frame. Borrowed from the received text.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Opens the session (or resumes one); must be the first frame and is allowed once.
    Hello {
        client: Option<ClientInfo>,
        resume: Option<Resume>,
        token: Option<Token>,
    },
    /// Carries one JSON-RPC message (an object, as sent) to `server`.
    Rpc {
        server: Cow<'a, str>,
        message: &'a RawValue,
    },
    /// Ends this session's upstream session with `server`.
    Close { server: Cow<'a, str> },
    /// Application-level ping, answered by `pong`.
    Ping,
    /// The client has every frame up to `seq`; the gateway need not keep them.
    Ack { seq: u64 },
}

/// Why a frame could not be decoded: becomes an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The wire code.
    pub code: ErrorCode,
    /// A sentence saying what was wrong.
    pub message: String,
    /// The server the frame named, when it named one.
    pub server: Option<String>,
}

impl FrameError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadFrame,
            message: message.into(),
            server: None,
        }
    }
}

/// A decoded frame plus its `ref`, which every error frame about it echoes.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The frame, or why it is not one.
    pub frame: Result<ClientFrame<'a>, FrameError>,
    /// The client's `ref`, verbatim (any JSON value, `null` included).
    pub reference: Option<&'a RawValue>,
}

/// Every field a client frame may have, each kept raw so that a wrong type is reported
/// by name. Unknown fields are ignored (forward compatibility).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    server: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    client: Option<&'a RawValue>,
    #[serde(rename = "ref", default, borrow, deserialize_with = "present")]
    reference: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    resume: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
}

/// Keeps a field that is present with the value `null` distinct from an absent one.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Decodes one text frame. Never panics; every failure is a [`FrameError`].
///
/// ```
/// use mcpmux::protocol::{ClientFrame, ErrorCode, decode_client_frame};
///
/// let text = r#"{"type":"rpc","server":"everything","message":{"jsonrpc":"2.0","id":1.0,"method":"ping"}}"#;
/// match decode_client_frame(text).frame {
///     // The message is a slice of the frame, byte for byte: the id stays `1.0`.
///     Ok(ClientFrame::Rpc { server, message }) => {
///         assert_eq!(server, "everything");
///         assert_eq!(message.get(), r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#);
///     }
///     other => panic!("{other:?}"),
/// }
///
/// let batch = decode_client_frame(r#"{"type":"rpc","server":"a","message":[],"ref":7}"#);
/// assert_eq!(batch.frame.unwrap_err().code, ErrorCode::Batch);
/// assert_eq!(batch.reference.unwrap().get(), "7");
/// ```
pub fn decode_client_frame(text: &str) -> Decoded<'_> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let what = if serde_json::from_str::<&RawValue>(text).is_ok() {
            "a frame must be a JSON object"
        } else {
            "a frame must be one JSON object in one text message; this is not valid JSON"
        };
        return Decoded {
            frame: Err(FrameError::bad(what)),
            reference: None,
        };
    }
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(err) => {
            return Decoded {
                frame: Err(FrameError::bad(format!("not a valid frame: {err}"))),
                reference: None,
            };
        }
    };
    Decoded {
        frame: decode_envelope(&envelope),
        reference: envelope.reference,
    }
}

fn decode_envelope<'a>(envelope: &Envelope<'a>) -> Result<ClientFrame<'a>, FrameError> {
    let kind = match envelope.kind {
        None => return Err(FrameError::bad("missing field `type`")),
        Some(raw) => string_field(raw, "type")?,
    };
    match kind.as_ref() {
        "hello" => {
            let client = match envelope.client {
                None => None,
                Some(raw) => Some(object::<ClientInfo>(raw).map_err(|_| {
                    FrameError::bad(
                        "`client` must be an object {\"name\": string, \"version\"?: string}",
                    )
                })?),
            };
            let resume = match envelope.resume {
                None => None,
                Some(raw) => Some(object::<Resume>(raw).map_err(|_| {
                    FrameError::bad(
                        "`resume` must be an object {\"session\": string, \"last_seq\": integer >= 0}",
                    )
                })?),
            };
            let token = match envelope.token {
                None => None,
                Some(raw) => Some(Token(
                    serde_json::from_str::<String>(raw.get())
                        .map_err(|_| FrameError::bad("`token` must be a string (an API key)"))?,
                )),
            };
            Ok(ClientFrame::Hello {
                client,
                resume,
                token,
            })
        }
        "rpc" => {
            let server = required_server(envelope)?;
            let Some(message) = envelope.message else {
                return Err(with_server(
                    FrameError::bad("missing field `message`"),
                    &server,
                ));
            };
            match message.get().as_bytes().first() {
                Some(b'{') => Ok(ClientFrame::Rpc { server, message }),
                Some(b'[') => Err(FrameError {
                    code: ErrorCode::Batch,
                    message: "JSON-RPC batches are not supported (removed from MCP in 2025-06-18); send each message in its own rpc frame".into(),
                    server: Some(server.into_owned()),
                }),
                _ => Err(with_server(
                    FrameError::bad("`message` must be a JSON-RPC message object"),
                    &server,
                )),
            }
        }
        "close" => Ok(ClientFrame::Close {
            server: required_server(envelope)?,
        }),
        "ping" => Ok(ClientFrame::Ping),
        "ack" => match envelope
            .seq
            .map(|raw| serde_json::from_str::<u64>(raw.get()))
        {
            Some(Ok(seq)) => Ok(ClientFrame::Ack { seq }),
            Some(Err(_)) => Err(FrameError::bad("field `seq` must be an integer >= 0")),
            None => Err(FrameError::bad("missing field `seq`")),
        },
        other => Err(FrameError {
            code: ErrorCode::UnknownType,
            message: format!(
                "unknown frame type {other:?}; expected hello, rpc, close, ping or ack"
            ),
            server: None,
        }),
    }
}

/// Reads a struct from a JSON object only (serde would also read one from an array).
fn object<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, ()> {
    if !raw.get().starts_with('{') {
        return Err(());
    }
    serde_json::from_str(raw.get()).map_err(|_| ())
}

fn required_server<'a>(envelope: &Envelope<'a>) -> Result<Cow<'a, str>, FrameError> {
    match envelope.server {
        None => Err(FrameError::bad("missing field `server`")),
        Some(raw) => string_field(raw, "server"),
    }
}

fn string_field<'a>(raw: &'a RawValue, name: &str) -> Result<Cow<'a, str>, FrameError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| FrameError::bad(format!("field `{name}` must be a string")))
}

fn with_server(mut error: FrameError, server: &str) -> FrameError {
    error.server = Some(server.to_owned());
    error
}

/// A server's lifecycle state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// The first start is under way.
    Starting,
    /// Accepting traffic.
    Ready,
    /// It stopped and a new instance is being started.
    Restarting,
    /// Not available: waiting out a restart backoff, or stopped.
    Down,
    /// Taken out of the configuration: no further frame names it.
    Removed,
}

/// The state of one client's upstream session with one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The upstream accepted `initialize` and gave it a session.
    Open,
    /// The upstream session is gone (expired, or the server restarted).
    Lost,
    /// Ended by the client.
    Closed,
}

/// One entry of `welcome.servers`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerEntry<'a> {
    /// The configured name.
    pub name: &'a str,
    /// Its current state.
    pub state: ServerState,
}

/// A gateway frame other than `rpc` (which [`rpc_frame`] writes without a serde pass).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayFrame<'a> {
    /// First gateway frame of a session.
    Welcome {
        session: &'a str,
        protocol: &'static str,
        resumed: bool,
        resume_window_ms: u64,
        heartbeat_ms: u64,
        /// Client frames of this session the gateway has read (section 8).
        received: u64,
        servers: Vec<ServerEntry<'a>>,
    },
    /// A server's lifecycle changed.
    Status {
        server: &'a str,
        seq: u64,
        state: ServerState,
    },
    /// This client's upstream session with `server` changed.
    Session {
        server: &'a str,
        seq: u64,
        state: SessionState,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// A frame that could not be carried.
    Error {
        seq: u64,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        server: Option<&'a str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// Answer to `ping`; carries no seq.
    Pong,
    /// An `error` frame `rate_limited`: a frame refused for the key's rate.
    #[serde(rename = "error")]
    RateLimited {
        seq: u64,
        code: ErrorCode,
        message: &'a str,
        server: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        retry_after_ms: u64,
    },
}

impl GatewayFrame<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every field is a plain string, number or
        // already-valid raw JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The bytes of an `rpc` frame besides its server name, message and seq digits.
const RPC_FRAME_OVERHEAD: usize = r#"{"type":"rpc","server":"","seq":,"message":}"#.len();

/// Writes an `rpc` frame around an upstream message that is already valid JSON, copying
/// it once and touching none of its bytes. The frame is allocated at its exact length,
/// so a kept frame costs what `resumeMaxBytes` counts for it.
pub fn rpc_frame(server: &str, seq: u64, message: &str) -> String {
    let plain = server
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    let quoted;
    let server = if plain {
        server
    } else {
        // Names are validated to [A-Za-z0-9_.-] at configuration time, but escape anyway
        // so the frame is valid JSON whatever reaches here.
        quoted = serde_json::to_string(server).unwrap_or_default();
        quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or("")
    };
    let mut out =
        String::with_capacity(RPC_FRAME_OVERHEAD + server.len() + decimal_len(seq) + message.len());
    out.push_str(r#"{"type":"rpc","server":""#);
    out.push_str(server);
    out.push_str(r#"","seq":"#);
    // Writing to a String cannot fail.
    let _ = write!(out, "{seq}");
    out.push_str(r#","message":"#);
    out.push_str(message);
    out.push('}');
    out
}

/// The JSON-RPC error response to request `id` refused for the key's rate:
/// `error.data` has `gateway: "rate_limited"`, `server` and `retry_after_ms`.
pub fn rate_limited_response(
    id: &RawValue,
    message: &str,
    server: &str,
    retry_after_ms: u64,
) -> String {
    let code = ErrorCode::RateLimited;
    let body = serde_json::json!({
        "code": code.jsonrpc_code(),
        "message": message,
        "data": { "gateway": code.as_str(), "server": server, "retry_after_ms": retry_after_ms },
    });
    format!(r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#, id.get(), body)
}

/// The number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_instance() {
        let id = session_id::new("gw-1", 0x5f0c_8a61_d2e9_4b7f_9a3c_1e0d_8b6a_4f21);
        assert_eq!(id, "gw-1.5f0c8a61d2e94b7f9a3c1e0d8b6a4f21");
        assert_eq!(session_id::owner(&id), Some("gw-1"));
        assert_eq!(session_id::logged(&id), "gw-1.5f0c8a61");
        let small = session_id::new("a", 1);
        assert_eq!(small, "a.00000000000000000000000000000001");
        assert_eq!(session_id::owner(&small), Some("a"));
    }

    #[test]
    fn ids_of_another_form_name_no_owner() {
        for id in [
            "5f0c8a61d2e94b7f9a3c1e0d8b6a4f21",
            ".5f0c8a61d2e94b7f9a3c1e0d8b6a4f21",
            "GW.5f0c8a61d2e94b7f9a3c1e0d8b6a4f21",
            "gw.5F0C8A61D2E94B7F9A3C1E0D8B6A4F21",
            "gw.5f0c8a61",
            "gw.5f0c8a61d2e94b7f9a3c1e0d8b6a4f21.x",
            "abcdefghijklmnopqrstuvwxyz0123456.5f0c8a61d2e94b7f9a3c1e0d8b6a4f21",
            "",
        ] {
            assert_eq!(session_id::owner(id), None, "{id}");
        }
        // Logs never show more than the start, whatever the form.
        assert_eq!(
            session_id::logged("5f0c8a61d2e94b7f9a3c1e0d8b6a4f21"),
            "5f0c8a61"
        );
        assert_eq!(session_id::logged("short"), "short");
        assert_eq!(session_id::logged("é.é"), "é.é");
        assert_eq!(session_id::logged("a.bééééééé"), "");
    }

    #[test]
    fn the_url_session_is_the_first_session_parameter() {
        assert_eq!(session_id::from_query("session=a.1"), Some("a.1"));
        assert_eq!(
            session_id::from_query("x=1&session=a.1&session=b.2"),
            Some("a.1")
        );
        assert_eq!(session_id::from_query("sessions=a&xsession=b"), None);
        assert_eq!(session_id::from_query("session="), Some(""));
        assert_eq!(session_id::from_query(""), None);
    }

    fn code_of(text: &str) -> ErrorCode {
        decode_client_frame(text).frame.unwrap_err().code
    }

    #[test]
    fn rpc_message_is_borrowed_verbatim() {
        let text =
            r#"{"type":"rpc","server":"a","message":{"jsonrpc":"2.0","id":1.50,"method":"x"}}"#;
        match decode_client_frame(text).frame.unwrap() {
            ClientFrame::Rpc { server, message } => {
                assert_eq!(server, "a");
                assert_eq!(message.get(), r#"{"jsonrpc":"2.0","id":1.50,"method":"x"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_have_their_codes() {
        assert_eq!(code_of("not json"), ErrorCode::BadFrame);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadFrame);
        assert_eq!(code_of("42"), ErrorCode::BadFrame);
        assert_eq!(code_of("{}"), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"type":"nope"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code_of(r#"{"type":"rpc","message":{}}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"rpc","server":1,"message":{}}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"rpc","server":"a"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"rpc","server":"a","message":"x"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code_of(r#"{"type":"rpc","server":"a","message":[{}]}"#),
            ErrorCode::Batch
        );
        assert_eq!(
            code_of(r#"{"type":"hello","client":3}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(code_of(r#"{"type":"close"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code_of(r#"{"type":"ping","type":"ping"}"#),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn ref_is_echoed_even_when_the_frame_is_bad() {
        let decoded = decode_client_frame(r#"{"type":"rpc","ref":{"k":[1]},"server":2}"#);
        assert_eq!(decoded.reference.unwrap().get(), r#"{"k":[1]}"#);
        let decoded = decode_client_frame(r#"{"type":"x","ref":null}"#);
        assert_eq!(decoded.reference.unwrap().get(), "null");
    }

    #[test]
    fn escaped_strings_decode() {
        match decode_client_frame(r#"{"type":"close","server":"a\u002db"}"#)
            .frame
            .unwrap()
        {
            ClientFrame::Close { server } => assert_eq!(server, "a-b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_seq_edges() {
        let seq = |t: &str| match decode_client_frame(t).frame {
            Ok(ClientFrame::Ack { seq }) => Some(seq),
            _ => None,
        };
        assert_eq!(seq(r#"{"type":"ack","seq":7}"#), Some(7));
        assert_eq!(seq(r#"{"type":"ack","seq":-0}"#), None);
        assert_eq!(seq(r#"{"type":"ack","seq":1.0}"#), None);
        assert_eq!(seq(r#"{"type":"ack","seq":-1}"#), None);
    }

    #[test]
    fn hello_token_is_read_and_never_shown() {
        let text = r#"{"type":"hello","token":"secret-key-0123456789"}"#;
        let frame = decode_client_frame(text).frame.unwrap();
        assert!(!format!("{frame:?}").contains("secret-key"));
        match frame {
            ClientFrame::Hello { token, .. } => {
                assert_eq!(token.unwrap().expose(), "secret-key-0123456789")
            }
            other => panic!("{other:?}"),
        }
        let bad = decode_client_frame(r#"{"type":"hello","token":42}"#);
        assert_eq!(bad.frame.unwrap_err().code, ErrorCode::BadFrame);
    }

    #[test]
    fn rate_limited_answers_carry_retry_after() {
        let frame = GatewayFrame::RateLimited {
            seq: 3,
            code: ErrorCode::RateLimited,
            message: "slow down",
            server: "a",
            reference: None,
            retry_after_ms: 250,
        }
        .encode();
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "rate_limited");
        assert_eq!(value["retry_after_ms"], 250);
        let id = RawValue::from_string("7".into()).unwrap();
        let response = rate_limited_response(&id, "slow down", "a", 250);
        let value: serde_json::Value = serde_json::from_str(&response).unwrap();
        assert_eq!(value["id"], 7);
        assert_eq!(value["error"]["code"], -32000);
        assert_eq!(value["error"]["data"]["gateway"], "rate_limited");
        assert_eq!(value["error"]["data"]["retry_after_ms"], 250);
        assert_eq!(value["error"]["data"]["server"], "a");
    }

    #[test]
    fn rpc_frames_are_allocated_at_their_exact_length() {
        let message = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        for seq in [0, 7, 10, 9_999, 10_000, 123_456_789, u64::MAX] {
            for server in ["a", "everything", "odd\"name"] {
                let frame = rpc_frame(server, seq, message);
                assert_eq!(
                    frame.capacity(),
                    frame.len(),
                    "seq {seq}, server {server:?}"
                );
                let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
                assert_eq!(value["seq"], seq);
                assert_eq!(value["server"], server);
            }
        }
    }

    #[test]
    fn rpc_frame_is_valid_json() {
        let text = rpc_frame("srv", 7, r#"{"jsonrpc":"2.0","id":"x","result":{}}"#);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["seq"], 7);
        assert_eq!(value["server"], "srv");
        assert_eq!(value["message"]["id"], "x");
    }
}
