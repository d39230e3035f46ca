//! The log of the real binary: `--log-format json` writes one JSON object per line,
//! with the fields of the spans the event happened in; everything about a server names
//! it, the child's own output included.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::binary::{Binary, Launch};
use crate::harness::{Client, FRAME_WAIT, config, everything};

/// Every line of `log`, each of which must be a JSON object.
pub fn json_lines(log: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("a log line that is not a JSON object: {line:?} ({other:?})"),
        })
        .collect()
}

/// Waits until the binary's log has a line for which `found` holds; returns the lines.
pub async fn wait_for_line(
    binary: &Binary,
    what: &str,
    found: impl Fn(&Map<String, Value>) -> bool,
) -> Vec<Map<String, Value>> {
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let log = binary.log();
        // The last line may be half written.
        let complete = log.rsplit_once('\n').map_or("", |(done, _)| done);
        let lines = json_lines(complete);
        if lines.iter().any(&found) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {what} in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `entry` with its command run through `sh`, which first writes `line` (no `'` in it)
/// to standard error.
pub fn saying_first(entry: &Value, line: &str) -> Value {
    let command = entry["command"].as_str().expect("a stdio entry");
    let args: Vec<&str> = entry["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let script = format!("echo '{line}' >&2; exec \"$@\"");
    let mut all = vec!["-c", &script, "sh", command];
    all.extend(args);
    json!({"command": "sh", "args": all})
}

#[tokio::test]
async fn json_lines_carry_timestamp_level_message_and_span_fields() {
    let server = saying_first(&everything(), "hello from the stderr of the child");
    let binary = Binary::launch(
        &config(json!({"everything": server}), json!({})),
        Launch {
            log_filter: Some("debug,hyper=info,reqwest=info,h2=info"),
            args: &["--log-format", "json"],
            ..Launch::default()
        },
    );
    let mut client = Client::connect(binary.addr).await;
    let session = client.session_id();
    client.initialize("everything").await;
    let params = json!({"name": "echo", "arguments": {"message": "logged"}});
    client
        .call("everything", json!(2), "tools/call", params)
        .await;
    client.close().await;
    let lines = wait_for_line(&binary, "the end of the connection", |l| {
        l["message"] == "connection ended"
    })
    .await;

    for line in &lines {
        let timestamp = line["timestamp"].as_str().unwrap_or_default();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{line:?}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&line["level"].as_str().unwrap_or_default()),
            "{line:?}"
        );
        assert!(line["message"].is_string(), "{line:?}");
    }
    let find = |what: &str, pred: &dyn Fn(&Map<String, Value>) -> bool| {
        lines
            .iter()
            .find(|l| pred(l))
            .unwrap_or_else(|| panic!("no {what} line in {lines:#?}"))
            .clone()
    };
    let ready = find("ready", &|l| {
        l["message"] == "server status" && l["state"] == "Ready"
    });
    assert_eq!(ready["server"], "everything");
    let child = find("child", &|l| {
        l["message"] == "hello from the stderr of the child"
    });
    assert_eq!(child["server"], "everything", "{child:?}");
    assert_eq!(child["stream"], "stderr", "{child:?}");

    // The connection's span names its peer and session on each of its lines.
    // Its instance and the first 8 hex digits of the id.
    let dot = session.find('.').expect("<instance>.<hex>");
    let prefix = &session[..dot + 9];
    let attached = find("attached", &|l| l["message"] == "client attached");
    assert_eq!(attached["spans"], "connection");
    assert_eq!(attached["session"], prefix);
    assert!(
        attached["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{attached:?}"
    );
    let ended = find("ended", &|l| l["message"] == "connection ended");
    assert_eq!(ended["session"], prefix);
    assert_eq!(ended["level"], "DEBUG", "an ordinary disconnect");
    // The upstream session's span names the server, and the client session.
    let open = find("open", &|l| l["message"] == "upstream session open");
    assert_eq!(open["spans"], "upstream");
    assert_eq!(open["server"], "everything");
    assert_eq!(open["session"], prefix);
    // No line holds the whole session id, which would let a reader of the log resume it.
    assert!(
        lines
            .iter()
            .all(|l| !Value::Object(l.clone()).to_string().contains(&session))
    );
}

#[tokio::test]
async fn a_child_flooding_stderr_is_neither_blocked_nor_buffered() {
    // 200000 lines of about 500 bytes (100 MB) before the server even starts: if
    // mcpmux stopped reading, the child would block and never become ready; if it
    // kept every line, its memory would grow by far more than 100 MB.
    const LINES: u64 = 200_000;
    let line = format!("flood-{}", "x".repeat(500));
    let script = format!("yes {line} | head -n {LINES} >&2; exec \"$@\"");
    let everything = everything();
    let mut args = vec![
        json!("-c"),
        json!(script),
        json!("sh"),
        everything["command"].clone(),
    ];
    args.extend(everything["args"].as_array().expect("args").iter().cloned());
    let binary = Binary::launch(
        &config(json!({"flood": {"command": "sh", "args": args}}), json!({})),
        Launch {
            log_filter: Some("info"),
            args: &["--log-format", "json"],
            ..Launch::default()
        },
    );
    let mut client = Client::connect(binary.addr).await;
    client.initialize("flood").await;

    // Every line is in the log or counted as dropped (reported within a second).
    let deadline = Instant::now() + FRAME_WAIT;
    let (logged, dropped) = loop {
        let log = binary.log();
        let complete = log.rsplit_once('\n').map_or("", |(done, _)| done);
        let logged = complete.matches("\"message\":\"flood-").count() as u64;
        let dropped: u64 = json_lines(
            &complete
                .lines()
                .filter(|l| l.contains("\"dropped\":"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .iter()
        .filter_map(|l| l["dropped"].as_u64())
        .sum();
        if logged + dropped >= LINES {
            break (logged, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{logged} lines logged and {dropped} reported dropped of {LINES}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(logged + dropped, LINES, "each line once, logged or dropped");
    let peak_mib = binary.peak_rss_kib() / 1024;
    assert!(peak_mib < 64, "mcpmux peaked at {peak_mib} MiB");

    let log = binary.log();
    let lines = json_lines(log.rsplit_once('\n').map_or("", |(done, _)| done));
    let flooded = lines
        .iter()
        .find(|l| l["message"] == line.as_str())
        .expect("a line of the flood in the log");
    assert_eq!(flooded["server"], "flood");
    assert_eq!(flooded["stream"], "stderr");
    assert_eq!(flooded["level"], "INFO");
    for report in lines.iter().filter(|l| l.contains_key("dropped")) {
        assert_eq!(report["server"], "flood", "{report:?}");
        assert_eq!(report["level"], "WARN", "{report:?}");
    }
    // Still serving.
    let params = json!({"name": "echo", "arguments": {"message": "after the flood"}});
    let echo = client.call("flood", json!(2), "tools/call", params).await;
    assert!(echo["message"]["result"].is_object(), "{echo}");
    client.close().await;
}
