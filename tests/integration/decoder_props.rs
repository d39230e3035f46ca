//! Property tests of the client-frame decoder (`protocol::decode_client_frame`) against
//! `protocol.md` (sections 3 and 6), plus the `jsonrpc` look at a carried message.
//!
//! - any text: the decoder never panics, a non-object is `bad_frame`, and whatever it
//!   borrows (`message`, `ref`) is a slice of the text and valid JSON;
//! - generated frames (every field absent, of the right type or of another JSON type,
//!   fields in any order, unknown fields, any whitespace and string escapes): the result
//!   is what the protocol document says, and `ref` is echoed byte for byte;
//! - a valid `rpc` frame carries its message byte for byte (the gateway never rewrites a
//!   JSON-RPC message), and `Head` sees its `id` verbatim and its `method`.
//!
//! Pure functions only (no gateway): each property runs 256 cases in well under a second.

use mcpmux::jsonrpc::{Head, Kind, id_key};
use mcpmux::protocol::{ClientFrame, Decoded, ErrorCode, decode_client_frame};
use proptest::prelude::*;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------
// A JSON generator that keeps the exact text: values are rendered with random whitespace,
// string escapes and number spellings, so "verbatim" is tested on unusual bytes.

#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// A number, as its text (`1.50`, `-0`, `1e3`, ...).
    Num(String),
    Str(String),
    Arr(Vec<J>),
    /// Keys are unique.
    Obj(Vec<(String, J)>),
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| f.to_string()),
        Just("1.50".to_owned()),
        Just("-0".to_owned()),
        Just("1e3".to_owned()),
        Just("2E-7".to_owned()),
        Just("123456789012345678901234567890".to_owned()),
    ]
}

fn string() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z_./-]{0,12}",
        any::<String>(),
        Just("\"\\/\u{0}\u{1f}\u{7f}\u{2028}é😀".to_owned()),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        string().prop_map(J::Str),
    ]
    .boxed()
}

fn unique(entries: Vec<(String, J)>) -> Vec<(String, J)> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

fn json() -> BoxedStrategy<J> {
    scalar()
        .prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((string(), inner), 0..5).prop_map(|e| J::Obj(unique(e))),
            ]
        })
        .boxed()
}

fn object() -> BoxedStrategy<J> {
    prop::collection::vec((string(), json()), 0..5)
        .prop_map(|e| J::Obj(unique(e)))
        .boxed()
}

/// Formatting choices, drawn from a seed (a tiny xorshift generator).
struct Style(u64);

impl Style {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
    fn ws(&mut self) -> &'static str {
        ["", "", "", " ", "\n", "\t ", "\r\n  "][(self.next() % 7) as usize]
    }
}

fn render(j: &J, style: &mut Style) -> String {
    let mut out = String::new();
    write_json(j, style, &mut out);
    out
}

fn write_json(j: &J, style: &mut Style, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => write_string(s, style, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(style.ws());
                write_json(item, style, out);
                out.push_str(style.ws());
            }
            out.push(']');
        }
        J::Obj(entries) => {
            let entries: Vec<(&str, &J)> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
            write_object(&entries, style, out);
        }
    }
}

fn write_object(entries: &[(&str, &J)], style: &mut Style, out: &mut String) {
    let rendered: Vec<(&str, String)> = entries
        .iter()
        .map(|(k, v)| (*k, render(v, style)))
        .collect();
    write_object_raw(&rendered, style, out);
}

/// An object whose values are already JSON text.
fn write_object_raw(entries: &[(&str, String)], style: &mut Style, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(style.ws());
        write_string(key, style, out);
        out.push_str(style.ws());
        out.push(':');
        out.push_str(style.ws());
        out.push_str(value);
        out.push_str(style.ws());
    }
    out.push('}');
}

fn write_string(s: &str, style: &mut Style, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || style.chance(8) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            '/' if style.chance(2) => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// Invariants that hold for any text.

/// `part` lies inside `whole` (borrowed, not copied).
fn is_slice_of(part: &str, whole: &str) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= start + whole.len()
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<&RawValue>(text).is_ok()
}

fn is_json_object(text: &str) -> bool {
    is_json(text)
        && text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
}

fn check_invariants(text: &str, decoded: &Decoded<'_>) -> Result<(), TestCaseError> {
    if let Some(reference) = decoded.reference {
        prop_assert!(
            is_slice_of(reference.get(), text),
            "ref is not a slice of the text"
        );
        prop_assert!(is_json(reference.get()), "ref is not valid JSON");
    }
    match &decoded.frame {
        Ok(frame) => {
            prop_assert!(is_json_object(text), "decoded a frame from a non-object");
            if let ClientFrame::Rpc { message, .. } = frame {
                let message = message.get();
                prop_assert!(
                    is_slice_of(message, text),
                    "message is not a slice of the text"
                );
                prop_assert!(
                    message.starts_with('{'),
                    "message does not start with an open brace"
                );
                prop_assert!(is_json_object(message));
                // Looking at it never panics.
                if let Ok(head) = Head::parse(message) {
                    let _ = (head.kind(), head.params(), head.says_stdio_server_gone());
                    if let Some(id) = head.id {
                        let _ = id_key(id);
                    }
                }
            }
        }
        Err(err) => {
            if !is_json_object(text) {
                prop_assert_eq!(err.code, ErrorCode::BadFrame);
                prop_assert!(decoded.reference.is_none());
            }
            prop_assert!(
                matches!(
                    err.code,
                    ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::Batch
                ),
                "the decoder produced {:?}",
                err.code
            );
        }
    }
    Ok(())
}

/// Text near the protocol: mutations of frames, JSON-ish noise, and anything.
fn any_text() -> impl Strategy<Value = String> {
    let frame_like = (
        frame(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        "[{}\\[\\]\":,a-z0-9 ]{0,4}",
    )
        .prop_map(|(f, seed, at, len, insert)| {
            let text = f.text;
            let cut = |n: u64| {
                let mut i = (n as usize) % (text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let (a, b) = (cut(at), cut(at.wrapping_add(len % 8)));
            let _ = seed;
            format!("{}{}{}", &text[..a], insert, &text[b..])
        });
    prop_oneof![
        any::<String>(),
        "[ {}\\[\\]\":,.0-9a-z\\\\-]{0,40}",
        frame().prop_map(|f| f.text),
        frame_like,
        (json(), any::<u64>()).prop_map(|(j, seed)| render(&j, &mut Style(seed | 1))),
    ]
}

// ---------------------------------------------------------------------------------------
// Generated frames and the document's oracle.

#[derive(Debug, Clone)]
enum TypeField {
    Known(&'static str),
    /// A string that names no frame type.
    Other(String),
    /// Not a string.
    Wrong(J),
}

#[derive(Debug, Clone)]
struct Fields {
    kind: Option<TypeField>,
    server: Option<J>,
    message: Option<J>,
    client: Option<J>,
    reference: Option<J>,
    /// `seq` of `ack`.
    seq: Option<J>,
    extra: Vec<(String, J)>,
}

#[derive(Debug, Clone)]
struct Frame {
    fields: Fields,
    text: String,
    /// The rendered `ref`, when present.
    ref_text: Option<String>,
    /// The rendered `message`, when present.
    message_text: Option<String>,
}

fn type_field() -> impl Strategy<Value = TypeField> {
    prop_oneof![
        4 => prop::sample::select(vec!["hello", "rpc", "close", "ping", "ack"]).prop_map(TypeField::Known),
        1 => prop_oneof![
            Just("Rpc".to_owned()),
            Just("rpc ".to_owned()),
            Just(String::new()),
            Just("launch".to_owned()),
            "[a-z]{1,8}",
        ]
        .prop_filter("not a frame type", |s| !matches!(s.as_str(), "hello" | "rpc" | "close" | "ping" | "ack"))
        .prop_map(TypeField::Other),
        1 => json().prop_filter("not a string", |j| !matches!(j, J::Str(_))).prop_map(TypeField::Wrong),
    ]
}

fn server_field() -> impl Strategy<Value = J> {
    prop_oneof![3 => string().prop_map(J::Str), 1 => json()]
}

fn message_field() -> impl Strategy<Value = J> {
    prop_oneof![
        3 => object(),
        1 => prop::collection::vec(json(), 0..3).prop_map(J::Arr),
        1 => scalar(),
    ]
}

/// `client` of `hello`: valid ones and every way of being wrong.
fn client_field() -> impl Strategy<Value = J> {
    let version = prop_oneof![
        Just(None),
        string().prop_map(|s| Some(J::Str(s))),
        scalar()
            .prop_filter("not null", |j| !matches!(j, J::Null))
            .prop_map(Some),
    ];
    let name = prop_oneof![3 => string().prop_map(J::Str), 1 => scalar()];
    prop_oneof![
        3 => (prop::option::of(name), version).prop_map(|(name, version)| {
            let mut entries = Vec::new();
            entries.extend(name.map(|n| ("name".to_owned(), n)));
            entries.extend(version.map(|v| ("version".to_owned(), v)));
            J::Obj(entries)
        }),
        1 => scalar(),
    ]
}

fn extra_fields() -> impl Strategy<Value = Vec<(String, J)>> {
    prop::collection::vec(("[a-z]{1,6}".prop_map(|k| format!("x_{k}")), json()), 0..3)
        .prop_map(unique)
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        prop::option::weighted(0.9, type_field()),
        prop::option::weighted(0.8, server_field()),
        prop::option::weighted(0.8, message_field()),
        prop::option::weighted(0.4, client_field()),
        prop::option::weighted(0.5, json()),
        prop::option::weighted(
            0.5,
            prop_oneof![2 => number().prop_map(J::Num), 1 => json()],
        ),
        extra_fields(),
    )
        .prop_map(
            |(kind, server, message, client, reference, seq, extra)| Fields {
                kind,
                server,
                message,
                client,
                reference,
                seq,
                extra,
            },
        )
}

fn frame() -> BoxedStrategy<Frame> {
    (fields(), any::<u64>(), any::<u64>())
        .prop_map(|(fields, seed, order)| build(fields, seed, order))
        .boxed()
}

fn build(fields: Fields, seed: u64, order: u64) -> Frame {
    let mut style = Style(seed | 1);
    let mut entries: Vec<(&str, String)> = Vec::new();
    if let Some(kind) = &fields.kind {
        let text = match kind {
            TypeField::Known(name) => render(&J::Str((*name).to_owned()), &mut style),
            TypeField::Other(name) => render(&J::Str(name.clone()), &mut style),
            TypeField::Wrong(j) => render(j, &mut style),
        };
        entries.push(("type", text));
    }
    let mut ref_text = None;
    let mut message_text = None;
    for (key, value) in [
        ("server", &fields.server),
        ("message", &fields.message),
        ("client", &fields.client),
        ("ref", &fields.reference),
        ("seq", &fields.seq),
    ] {
        if let Some(value) = value {
            let text = render(value, &mut style);
            match key {
                "ref" => ref_text = Some(text.clone()),
                "message" => message_text = Some(text.clone()),
                _ => {}
            }
            entries.push((key, text));
        }
    }
    for (key, value) in &fields.extra {
        entries.push((key, render(value, &mut style)));
    }
    // Any order of fields.
    let mut rng = Style(order | 1);
    for i in (1..entries.len()).rev() {
        entries.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut text = style.ws().to_owned();
    write_object_raw(&entries, &mut style, &mut text);
    text.push_str(style.ws());
    Frame {
        fields,
        text,
        ref_text,
        message_text,
    }
}

/// What `protocol.md` says the decoder gives.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Hello,
    Rpc {
        server: String,
    },
    Close {
        server: String,
    },
    Ping,
    Ack(u64),
    /// An error frame with this code, naming this server (rpc frames name theirs once
    /// `server` is known to be a string).
    Error(ErrorCode, Option<String>),
}

fn oracle(fields: &Fields) -> Expected {
    use Expected::Error;
    let bad = Error(ErrorCode::BadFrame, None);
    let kind = match &fields.kind {
        None | Some(TypeField::Wrong(_)) => return bad,
        Some(TypeField::Other(_)) => return Error(ErrorCode::UnknownType, None),
        Some(TypeField::Known(kind)) => *kind,
    };
    let server = match &fields.server {
        Some(J::Str(s)) => Some(s.clone()),
        _ => None,
    };
    match kind {
        // `client`: optional, an object {"name": string, "version"?: string}.
        "hello" => match &fields.client {
            None => Expected::Hello,
            Some(J::Obj(entries)) => {
                let name_ok = entries
                    .iter()
                    .any(|(k, v)| k == "name" && matches!(v, J::Str(_)));
                let version_ok = entries
                    .iter()
                    .all(|(k, v)| k != "version" || matches!(v, J::Str(_)));
                if name_ok && version_ok {
                    Expected::Hello
                } else {
                    bad
                }
            }
            Some(_) => bad,
        },
        "rpc" => {
            let Some(server) = server else { return bad };
            match &fields.message {
                Some(J::Obj(_)) => Expected::Rpc { server },
                Some(J::Arr(_)) => Error(ErrorCode::Batch, Some(server)),
                _ => Error(ErrorCode::BadFrame, Some(server)),
            }
        }
        "close" => match server {
            Some(server) => Expected::Close { server },
            None => bad,
        },
        "ping" => Expected::Ping,
        // `seq`: required, an integer >= 0 (within u64; no fraction or exponent).
        "ack" => match &fields.seq {
            Some(J::Num(text)) => text.parse::<u64>().map(Expected::Ack).unwrap_or(bad),
            _ => bad,
        },
        _ => unreachable!(),
    }
}

fn observed(decoded: &Decoded<'_>) -> Expected {
    match &decoded.frame {
        Ok(ClientFrame::Hello { .. }) => Expected::Hello,
        Ok(ClientFrame::Rpc { server, .. }) => Expected::Rpc {
            server: server.to_string(),
        },
        Ok(ClientFrame::Close { server }) => Expected::Close {
            server: server.to_string(),
        },
        Ok(ClientFrame::Ping) => Expected::Ping,
        Ok(ClientFrame::Ack { seq }) => Expected::Ack(*seq),
        Err(err) => Expected::Error(err.code, err.server.clone()),
    }
}

// ---------------------------------------------------------------------------------------
// Valid rpc frames around generated JSON-RPC messages.

fn jsonrpc_message() -> impl Strategy<Value = (Vec<(String, J)>, Option<J>, Option<String>)> {
    let id = prop_oneof![
        number().prop_map(J::Num),
        string().prop_map(J::Str),
        Just(J::Null),
        json(),
    ];
    (
        prop::option::of(id),
        prop::option::of(prop_oneof!["[a-z]{1,8}/[a-z_]{1,8}", string()]),
        prop::option::of(object()),
        prop::option::of(json()),
        extra_fields(),
    )
        .prop_filter("a request, notification or response", |(id, method, ..)| {
            id.is_some() || method.is_some()
        })
        .prop_map(|(id, method, params, result, extra)| {
            let mut entries = vec![("jsonrpc".to_owned(), J::Str("2.0".to_owned()))];
            entries.extend(id.clone().map(|id| ("id".to_owned(), id)));
            entries.extend(method.clone().map(|m| ("method".to_owned(), J::Str(m))));
            entries.extend(params.map(|p| ("params".to_owned(), p)));
            entries.extend(result.map(|r| ("result".to_owned(), r)));
            entries.extend(extra);
            (entries, id, method)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Any text: no panic, and the invariants of the decoder's result.
    #[test]
    fn any_text_decodes_without_panic(text in any_text()) {
        let decoded = decode_client_frame(&text);
        check_invariants(&text, &decoded)?;
    }

    /// (b) Generated frames get exactly the result protocol.md gives, and `ref` verbatim.
    #[test]
    fn generated_frames_follow_the_document(frame in frame()) {
        let decoded = decode_client_frame(&frame.text);
        check_invariants(&frame.text, &decoded)?;
        let expected = oracle(&frame.fields);
        prop_assert_eq!(observed(&decoded), expected, "frame: {}", frame.text);
        prop_assert_eq!(decoded.reference.map(RawValue::get), frame.ref_text.as_deref());
        if let Ok(ClientFrame::Rpc { message, .. }) = &decoded.frame {
            prop_assert_eq!(Some(message.get()), frame.message_text.as_deref());
        }
    }

    /// (c) A valid rpc frame carries its JSON-RPC message byte for byte; `Head` sees the
    /// id verbatim and the method and kind the message has.
    #[test]
    fn rpc_message_is_carried_verbatim(
        (entries, id, method) in jsonrpc_message(),
        server in string(),
        reference in prop::option::of(json()),
        seed in any::<u64>(),
        order in any::<u64>(),
    ) {
        let mut style = Style(seed | 1);
        let mut message_text = String::new();
        let entries: Vec<(&str, &J)> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        write_object(&entries, &mut style, &mut message_text);
        let id_text = id.as_ref().map(|_| {
            // The id's bytes, as rendered inside the message.
            let head = Head::parse(&message_text).expect("a generated message parses");
            head.id.expect("the id is there").get().to_owned()
        });
        let fields = Fields {
            kind: Some(TypeField::Known("rpc")),
            server: Some(J::Str(server.clone())),
            message: None,
            client: None,
            reference,
            seq: None,
            extra: Vec::new(),
        };
        let mut frame = build(fields, seed.rotate_left(17), order);
        // Put the message in as text, after a random field.
        let at = frame.text.rfind('}').expect("an object");
        let insert = format!(",{}\"message\"{}:{}{}{}", style.ws(), style.ws(), style.ws(), message_text, style.ws());
        frame.text.insert_str(at, &insert);

        let decoded = decode_client_frame(&frame.text);
        check_invariants(&frame.text, &decoded)?;
        match &decoded.frame {
            Ok(ClientFrame::Rpc { server: got, message }) => {
                prop_assert_eq!(got.as_ref(), server.as_str());
                prop_assert_eq!(message.get(), message_text.as_str());
                let head = Head::parse(message.get()).expect("head");
                prop_assert_eq!(head.id.map(RawValue::get), id_text.as_deref());
                prop_assert_eq!(head.method.as_deref(), method.as_deref());
                let kind = match (&method, &id) {
                    (Some(_), Some(_)) => Kind::Request,
                    (Some(_), None) => Kind::Notification,
                    (None, Some(_)) => Kind::Response,
                    (None, None) => Kind::Invalid,
                };
                prop_assert_eq!(head.kind(), kind);
                if let Some(id) = head.id {
                    // A server that parses and re-serialises the id must match it.
                    let value: serde_json::Value = serde_json::from_str(id.get()).unwrap();
                    let reserialised = serde_json::value::to_raw_value(&value).unwrap();
                    prop_assert_eq!(id_key(id), id_key(&reserialised));
                }
            }
            other => prop_assert!(false, "not an rpc frame: {:?} for {}", other, frame.text),
        }
    }
}

/// `protocol.md` section 2: `client` and `resume` are objects. A JSON array is not one,
/// even one that serde could read as the struct's fields in order.
#[test]
fn hello_client_and_resume_must_be_objects() {
    for text in [
        r#"{"type":"hello","client":["dashboard","2.1.0"]}"#,
        r#"{"type":"hello","resume":["0123",4]}"#,
    ] {
        let decoded = decode_client_frame(text);
        assert_eq!(
            decoded.frame.unwrap_err().code,
            ErrorCode::BadFrame,
            "{text}"
        );
    }
}

/// `protocol.md` section 3: a field the gateway knows, repeated inside one frame, is a
/// `bad_frame` error; repeated unknown fields are ignored like any unknown field.
#[test]
fn repeated_known_fields_are_bad_frames() {
    let decoded = decode_client_frame(r#"{"type":"ping","x":1,"x":2}"#);
    assert!(
        matches!(decoded.frame, Ok(ClientFrame::Ping)),
        "{:?}",
        decoded.frame
    );
    for text in [
        r#"{"type":"ping","type":"ping"}"#,
        r#"{"type":"ping","t\u0079pe":"ping"}"#,
        r#"{"type":"ping","ref":1,"ref":1}"#,
    ] {
        let decoded = decode_client_frame(text);
        assert_eq!(
            decoded.frame.as_ref().map(|_| ()).map_err(|e| e.code),
            Err(ErrorCode::BadFrame),
            "{text}"
        );
    }
}
