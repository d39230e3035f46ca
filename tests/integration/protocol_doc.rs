//! `protocol.md` cannot drift from the code: its client examples must decode, its
//! gateway examples must match the frame definitions, and its transcripts are replayed
//! against a live gateway with the real server-everything.

use mcpmux::protocol::ErrorCode;
use serde_json::{Map, Value, json};

use crate::harness::{Client, TestGateway, config, everything, root};

/// The fenced blocks of protocol.md with the given info string.
fn blocks(info: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("protocol.md")).expect("protocol.md");
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().strip_prefix("```") == Some(info) => {
                current = Some(String::new())
            }
            Some(block) if line.trim_start() == "```" => {
                found.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    found
}

#[test]
fn client_examples_decode() {
    let examples = blocks("json client");
    assert!(examples.len() >= 4, "protocol.md shows every client frame");
    for example in examples {
        let decoded = mcpmux::protocol::decode_client_frame(example.trim());
        assert!(decoded.frame.is_ok(), "{example}: {:?}", decoded.frame);
    }
}

/// A frame's fields: each name with a check of its value.
type Fields = Vec<(&'static str, fn(&Value) -> bool)>;

/// Required and optional fields of each gateway frame type.
fn schema(kind: &str) -> Option<(Fields, Fields)> {
    let string: fn(&Value) -> bool = Value::is_string;
    let seq: fn(&Value) -> bool = |v| v.as_u64().is_some_and(|n| n > 0);
    let object: fn(&Value) -> bool = Value::is_object;
    let any: fn(&Value) -> bool = |_| true;
    let server_state: fn(&Value) -> bool = |v| {
        matches!(
            v.as_str(),
            Some("starting" | "ready" | "restarting" | "down" | "removed")
        )
    };
    let code: fn(&Value) -> bool = |v| {
        v.as_str()
            .is_some_and(|c| ErrorCode::ALL.iter().any(|code| code.as_str() == c))
    };
    Some(match kind {
        "welcome" => (
            vec![
                ("session", string),
                ("protocol", |v: &Value| v == "mcpmux.v1"),
                ("resumed", Value::is_boolean),
                ("resume_window_ms", seq),
                ("heartbeat_ms", seq),
                ("received", Value::is_u64),
                ("servers", |v: &Value| {
                    v.as_array().is_some_and(|a| {
                        a.iter().all(|s| {
                            s["name"].is_string()
                                && matches!(
                                    s["state"].as_str(),
                                    Some("starting" | "ready" | "restarting" | "down")
                                )
                        })
                    })
                }),
            ],
            vec![],
        ),
        "rpc" => (
            vec![("server", string), ("seq", seq), ("message", object)],
            vec![],
        ),
        "status" => (
            vec![("server", string), ("seq", seq), ("state", server_state)],
            vec![],
        ),
        "session" => (
            vec![
                ("server", string),
                ("seq", seq),
                ("state", |v: &Value| {
                    matches!(v.as_str(), Some("open" | "lost" | "closed"))
                }),
            ],
            vec![("reason", string)],
        ),
        "error" => (
            vec![("seq", seq), ("code", code), ("message", string)],
            vec![
                ("server", string),
                ("ref", any),
                ("retry_after_ms", |v: &Value| v.as_u64().is_some()),
            ],
        ),
        "pong" => (vec![], vec![]),
        _ => return None,
    })
}

fn check_gateway_frame(frame: &Value) -> Result<(), String> {
    let object = frame.as_object().ok_or("not an object")?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or("no type")?;
    let (required, optional) = schema(kind).ok_or(format!("unknown type {kind}"))?;
    for (name, check) in &required {
        let value = object.get(*name).ok_or(format!("{kind}: missing {name}"))?;
        if !check(value) {
            return Err(format!("{kind}: bad {name}: {value}"));
        }
    }
    for (name, value) in object {
        if name == "type" || required.iter().any(|(n, _)| n == name) {
            continue;
        }
        let (_, check) = optional
            .iter()
            .find(|(n, _)| n == name)
            .ok_or(format!("{kind}: undocumented field {name}"))?;
        if !check(value) {
            return Err(format!("{kind}: bad {name}: {value}"));
        }
    }
    Ok(())
}

#[test]
fn gateway_examples_match_the_frame_definitions() {
    let examples = blocks("json gateway");
    assert!(examples.len() >= 6, "protocol.md shows every gateway frame");
    for example in examples {
        let frame: Value =
            serde_json::from_str(&example).unwrap_or_else(|e| panic!("{example}: {e}"));
        check_gateway_frame(&frame).unwrap_or_else(|e| panic!("{example}: {e}"));
    }
}

/// Does `actual` match `expected`, where "..." matches anything and a `"...": "..."`
/// member allows more members?
fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "..." => Ok(()),
        (Value::Object(e), Value::Object(a)) => match_objects(e, a, path),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (e, a))| matches(e, a, &format!("{path}[{i}]"))),
        _ if expected == actual => Ok(()),
        _ => Err(format!("at {path}: expected {expected}, got {actual}")),
    }
}

fn match_objects(
    expected: &Map<String, Value>,
    actual: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let open = expected.get("...") == Some(&json!("..."));
    for (key, value) in expected {
        if key == "..." {
            continue;
        }
        let actual_value = actual.get(key).ok_or(format!("at {path}: missing {key}"))?;
        matches(value, actual_value, &format!("{path}.{key}"))?;
    }
    if !open {
        if let Some(extra) = actual.keys().find(|k| !expected.contains_key(*k)) {
            return Err(format!("at {path}: unexpected member {extra}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn transcripts_replay_against_a_live_gateway() {
    let transcripts = blocks("transcript");
    assert!(!transcripts.is_empty());
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    // The transcript starts with the server ready.
    Client::connect(gateway.addr)
        .await
        .ready("everything")
        .await;
    for transcript in transcripts {
        let mut ws = Client::raw(gateway.addr).await;
        for line in transcript.lines().filter(|l| !l.trim().is_empty()) {
            let (direction, frame) = line.split_at(1);
            let frame: Value =
                serde_json::from_str(frame.trim()).unwrap_or_else(|e| panic!("{line}: {e}"));
            match direction {
                ">" => {
                    use futures::SinkExt;
                    let message = tokio_tungstenite::tungstenite::Message::text(frame.to_string());
                    ws.send(message).await.expect("send");
                }
                "<" => {
                    let actual = next_text(&mut ws).await;
                    check_gateway_frame(&actual).unwrap_or_else(|e| panic!("{actual}: {e}"));
                    matches(&frame, &actual, "frame")
                        .unwrap_or_else(|e| panic!("{line}\n got {actual}\n {e}"));
                }
                _ => panic!("transcript lines start with > or <: {line}"),
            }
        }
    }
    gateway.shutdown().await;
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    use futures::StreamExt;
    loop {
        let message = tokio::time::timeout(crate::harness::FRAME_WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

#[test]
fn every_error_code_is_documented() {
    let text = std::fs::read_to_string(root().join("protocol.md")).expect("protocol.md");
    for code in ErrorCode::ALL {
        let row = format!("| `{}` |", code.as_str());
        assert!(text.contains(&row), "protocol.md's error table lacks {row}");
    }
}

#[test]
fn the_matcher_itself_is_strict() {
    assert!(matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), "x").is_err());
    assert!(
        matches(
            &json!({"a": 1, "...": "..."}),
            &json!({"a": 1, "b": 2}),
            "x"
        )
        .is_ok()
    );
    assert!(matches(&json!({"a": "..."}), &json!({"a": [1]}), "x").is_ok());
    assert!(matches(&json!([1, 2]), &json!([1]), "x").is_err());
    assert!(check_gateway_frame(&json!({"type": "pong", "seq": 1})).is_err());
}

/// One `http request` block: method, path, headers and body.
fn http_request(block: &str) -> (reqwest::Method, String, Vec<(String, String)>, String) {
    let (head, body) = block.split_once("\n\n").unwrap_or((block, ""));
    let mut lines = head.lines();
    let start = lines.next().expect("a request line");
    let mut parts = start.split(' ');
    let method = parts.next().expect("method").parse().expect("a method");
    let path = parts.next().expect("a path").to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("Name: value");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    (method, path, headers, body.trim().to_owned())
}

/// Checks a response against an `http response` block: its status, every header it
/// lists (`...` matches any value; a media type matches with parameters), and its JSON
/// body if it shows one.
async fn check_http_response(block: &str, response: reqwest::Response) -> Result<(), String> {
    let (head, body) = block.split_once("\n\n").unwrap_or((block, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("HTTP/1.1 STATUS REASON");
    if response.status().as_u16() != status {
        return Err(format!("status {} instead of {status}", response.status()));
    }
    for line in lines {
        let (name, expected) = line.split_once(':').expect("Name: value");
        let expected = expected.trim();
        let actual = response
            .headers()
            .get(name.trim())
            .ok_or(format!("no {name} header"))?
            .to_str()
            .unwrap_or_default();
        let media_type =
            name.eq_ignore_ascii_case("content-type") && actual.split(';').next() == Some(expected);
        if expected != "..." && actual != expected && !media_type {
            return Err(format!("{name}: {actual:?} instead of {expected:?}"));
        }
    }
    if !body.trim().is_empty() {
        let expected: Value = serde_json::from_str(body.trim()).expect("a JSON body");
        let text = response.text().await.map_err(|e| e.to_string())?;
        let actual: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        matches(&expected, &actual, "body")?;
    }
    Ok(())
}

#[tokio::test]
async fn http_exchanges_replay_against_a_live_gateway() {
    let requests = blocks("http request");
    let responses = blocks("http response");
    assert!(requests.len() >= 3 && requests.len() == responses.len());
    let gateway = TestGateway::start(&config(json!({"everything": everything()}), json!({}))).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for (request, expected) in requests.iter().zip(&responses) {
        let (method, path, headers, body) = http_request(request);
        let mut sent = http.request(method, format!("http://{}{path}", gateway.addr));
        for (name, value) in headers {
            sent = sent.header(name, value);
        }
        let response = tokio::time::timeout(crate::harness::FRAME_WAIT, sent.body(body).send())
            .await
            .expect("an answer in time")
            .expect("HTTP");
        check_http_response(expected, response)
            .await
            .unwrap_or_else(|e| panic!("{request}\n{e}"));
    }
    gateway.shutdown().await;
}

#[test]
fn http_error_examples_are_gateway_errors() {
    let examples = blocks("json http");
    assert!(!examples.is_empty());
    for example in examples {
        let body: Value =
            serde_json::from_str(&example).unwrap_or_else(|e| panic!("{example}: {e}"));
        let code = body["error"]["data"]["gateway"]
            .as_str()
            .unwrap_or_default();
        let known = ErrorCode::ALL.iter().find(|c| c.as_str() == code);
        let known = known.unwrap_or_else(|| panic!("{example}: unknown code {code:?}"));
        assert_eq!(body["error"]["code"], known.jsonrpc_code(), "{example}");
        assert_eq!(body["jsonrpc"], "2.0");
        assert!(body.get("id").is_some() && body["error"]["message"].is_string());
    }
}
