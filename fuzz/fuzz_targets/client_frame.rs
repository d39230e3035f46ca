//! Fuzzes `protocol::decode_client_frame` on arbitrary text, then looks at the carried
//! message the way the gateway does (`jsonrpc::Head`, `id_key`, `negotiated_version`).
//!
//! Invariants checked (besides "never panics"):
//! - text that is not one JSON object decodes to `Err` with code `bad_frame`, no `ref`;
//! - a decoded frame (`Ok`) means the text is a JSON object;
//! - `Rpc.message` is a slice of the input, starts with `{` and is valid JSON;
//! - `ref`, when present, is a slice of the input and valid JSON;
//! - the decoder only produces `bad_frame`, `unknown_type` and `batch`; `batch` names the
//!   server; each code's `as_str` is its serde name;
//! - when the text also parses as a `serde_json::Value`, the decoded fields agree with it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpmux::jsonrpc::{Head, Kind, id_key, negotiated_version};
use mcpmux::protocol::{ClientFrame, ErrorCode, decode_client_frame};
use serde_json::Value;
use serde_json::value::RawValue;

/// `part` lies inside `whole` (same allocation, not a copy).
fn is_slice_of(part: &str, whole: &str) -> bool {
    let start = whole.as_ptr() as usize;
    let end = start + whole.len();
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= end
}

/// One complete JSON value (no depth limit: `&RawValue` only skips).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<&RawValue>(text).is_ok()
}

fn is_json_object(text: &str) -> bool {
    is_json(text) && text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

fn look_at_message(message: &str) {
    if let Ok(head) = Head::parse(message) {
        let kind = head.kind();
        assert_eq!(kind == Kind::Request, head.method.is_some() && head.id.is_some());
        if let Some(id) = head.id {
            assert!(is_slice_of(id.get(), message), "id is not borrowed");
            let key = id_key(id);
            // The key of an id is stable: keying its own key gives the same key. Not for
            // floats: serde_json (without `float_roundtrip`) may parse a long number to a
            // neighbouring f64, so `1888800088880721968972192` keys as
            // `1.8888000888807216e+24`, which keys as `1.8888000888807218e+24`.
            if !key.contains(['.', 'e', 'E']) {
                if let Ok(again) = serde_json::from_str::<&RawValue>(&key) {
                    assert_eq!(id_key(again), key, "id_key is not idempotent");
                }
            }
        }
        let _ = head.method();
        let params = head.params();
        if let Some(request_id) = params.request_id {
            let _ = id_key(request_id);
        }
        let _ = params.meta.and_then(|m| m.protocol_version);
        let _ = head.says_stdio_server_gone();
    }
    let _ = negotiated_version(message);
}

fn check(text: &str) {
    let decoded = decode_client_frame(text);

    if let Some(reference) = decoded.reference {
        assert!(is_slice_of(reference.get(), text), "ref is not a slice of the input");
        assert!(is_json(reference.get()), "ref is not valid JSON");
    }

    let object = is_json_object(text);
    if !object {
        let err = decoded.frame.as_ref().expect_err("non-object decoded to a frame");
        assert_eq!(err.code, ErrorCode::BadFrame, "non-object: {err:?}");
        assert!(decoded.reference.is_none(), "non-object has a ref");
    }

    // The text as a tree, when serde_json can build one (depth <= 128).
    let tree = serde_json::from_str::<Value>(text).ok();

    match &decoded.frame {
        Ok(frame) => {
            assert!(object, "a frame was decoded from a non-object");
            let kind = tree.as_ref().map(|t| t["type"].as_str().map(str::to_owned));
            match frame {
                ClientFrame::Hello { .. } => {
                    if let Some(kind) = kind {
                        assert_eq!(kind.as_deref(), Some("hello"));
                    }
                }
                ClientFrame::Ping => {
                    if let Some(kind) = kind {
                        assert_eq!(kind.as_deref(), Some("ping"));
                    }
                }
                ClientFrame::Close { server } => {
                    if let Some(tree) = &tree {
                        assert_eq!(tree["type"], "close");
                        assert_eq!(tree["server"].as_str(), Some(server.as_ref()));
                    }
                }
                ClientFrame::Rpc { server, message } => {
                    let message = message.get();
                    assert!(is_slice_of(message, text), "message is not a slice of the input");
                    assert!(message.starts_with('{'), "message does not start with {{");
                    assert!(is_json_object(message), "message is not a JSON object");
                    if let Some(tree) = &tree {
                        assert_eq!(tree["type"], "rpc");
                        assert_eq!(tree["server"].as_str(), Some(server.as_ref()));
                        let carried: Value = serde_json::from_str(message).unwrap();
                        assert_eq!(tree["message"], carried);
                    }
                    look_at_message(message);
                }
            }
        }
        Err(err) => {
            assert!(
                matches!(
                    err.code,
                    ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::Batch
                ),
                "decoder produced {:?}",
                err.code
            );
            let wire = serde_json::to_string(&err.code).unwrap();
            assert_eq!(wire, format!("\"{}\"", err.code.as_str()));
            assert!(!err.message.is_empty());
            if err.code == ErrorCode::Batch {
                assert!(err.server.is_some(), "batch error without server");
            }
            if err.code == ErrorCode::UnknownType {
                if let Some(tree) = &tree {
                    let kind = tree["type"].as_str().expect("unknown_type without a string type");
                    assert!(!matches!(kind, "hello" | "rpc" | "close" | "ping"));
                }
            }
        }
    }

    // The gateway also looks at arbitrary text as a message (upstream replies).
    look_at_message(text);
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8; other bytes never reach the decoder.
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});
