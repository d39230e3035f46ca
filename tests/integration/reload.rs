//! Servers and keys changed while clients are connected: the configuration file
//! watched and re-read (and SIGHUP), added, changed and removed servers under live
//! traffic, an invalid file rejected while the old configuration keeps serving, and
//! revoked keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::binary::{Binary, Launch, TempDir, kill};
use crate::harness::{Client, Ended, TestGateway, config, everything, memory, tool_text};

const CLIENTS: usize = 50;
/// The longest a test waits for every client to see a change.
const PHASE_WAIT: Duration = Duration::from_secs(90);

fn echo_params(text: &str) -> Value {
    json!({"name": "echo", "arguments": {"message": text}})
}

fn gateway_code(frame: &Value) -> &str {
    frame["message"]["error"]["data"]["gateway"]
        .as_str()
        .unwrap_or("")
}

fn is_status(frame: &Value, server: &str, state: &str) -> bool {
    frame["type"] == "status" && frame["server"] == server && frame["state"] == state
}

/// A status frame for `server` that a client saw, and when.
type Seen = (usize, String, Instant);

/// Calls `echo` on `everything` without pause until `stop`, checking every answer and
/// that nothing else about `everything` (no error, no status, no session frame)
/// arrives; reports every status frame for `watched`.
async fn traffic(
    index: usize,
    mut client: Client,
    watched: &'static str,
    seen: mpsc::UnboundedSender<Seen>,
    stop: CancellationToken,
) -> (Client, u64) {
    let mut calls = 0u64;
    while !stop.is_cancelled() {
        let text = format!("client {index}, call {calls}");
        let reply = client
            .call("everything", json!(calls), "tools/call", echo_params(&text))
            .await;
        assert_eq!(tool_text(&reply), format!("Echo: {text}"), "{reply}");
        calls += 1;
        let now = Instant::now();
        for frame in client.take_buffered(|f| f["type"] == "status" && f["server"] == watched) {
            let state = frame["state"].as_str().unwrap_or_default().to_owned();
            let _ = seen.send((index, state, now));
        }
        let strays = client.take_buffered(|f| {
            f["type"] == "error"
                || (f["server"] == "everything" && f["type"] != "rpc")
                || (f["server"] == "everything" && f["message"]["method"].is_null())
        });
        assert!(strays.is_empty(), "client {index}: {strays:?}");
    }
    (client, calls)
}

/// Waits until every client has seen `last` for the watched server; returns the states
/// each saw, with when.
async fn every_client_sees(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    last: &str,
) -> HashMap<usize, Vec<(String, Instant)>> {
    let mut states: HashMap<usize, Vec<(String, Instant)>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + PHASE_WAIT;
    while (0..CLIENTS).any(|i| {
        states
            .get(&i)
            .and_then(|s| s.last())
            .is_none_or(|s| s.0 != last)
    }) {
        let (index, state, at) = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("not every client saw {last} within {PHASE_WAIT:?}: {states:?}")
            })
            .expect("traffic runs");
        states.entry(index).or_default().push((state, at));
    }
    states
}

/// The states each client saw, which must be `expected` for every one; returns the
/// longest time from `since` to a client's first state.
fn check_sequences(
    states: &HashMap<usize, Vec<(String, Instant)>>,
    expected: &[&str],
    since: Instant,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for (index, seen) in states {
        let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, expected, "client {index}");
        slowest = slowest.max(seen[0].1.saturating_duration_since(since));
    }
    slowest
}

#[tokio::test]
async fn fifty_clients_see_a_server_added_changed_and_removed_while_their_calls_go_on() {
    let only_everything = config(json!({"everything": everything()}), json!({}));
    let binary = Binary::start(&only_everything);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let mut client = Client::connect(binary.addr).await;
        client.initialize("everything").await;
        // What initialize brought (`session` open) is not traffic's business.
        client.take_buffered(|_| true);
        let run = traffic(index, client, "memory", seen_tx.clone(), stop.clone());
        tasks.push(tokio::spawn(run));
    }
    let mut probe = Client::connect(binary.addr).await;

    // Added: starting, then ready, for every client.
    let written = Instant::now();
    let with_memory = json!({"everything": everything(), "memory": memory()});
    binary.write_config(&config(with_memory, json!({})));
    let added = every_client_sees(&mut seen, "ready").await;
    let slowest_add = check_sequences(&added, &["starting", "ready"], written);
    probe.initialize("memory").await;
    let graph = probe
        .call(
            "memory",
            json!("graph"),
            "tools/call",
            json!({"name": "read_graph", "arguments": {}}),
        )
        .await;
    assert!(graph["message"]["result"].is_object(), "{graph}");
    let newcomer = Client::connect(binary.addr).await;
    let listed = &newcomer.welcome["servers"];
    assert!(
        listed
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["name"] == "memory")),
        "{listed}"
    );
    newcomer.close().await;

    // Changed: restarting, then ready; the probe's session on it is lost.
    let written = Instant::now();
    let mut changed = memory();
    changed["env"] = json!({"MCPMUX_TEST_CHANGED": "1"});
    let with_changed = json!({"everything": everything(), "memory": changed});
    binary.write_config(&config(with_changed, json!({})));
    let restarted = every_client_sees(&mut seen, "ready").await;
    let slowest_change = check_sequences(&restarted, &["restarting", "ready"], written);
    probe.session_state("lost").await;

    // Removed: removed, and nothing more.
    let written = Instant::now();
    binary.write_config(&only_everything);
    let removed = every_client_sees(&mut seen, "removed").await;
    let slowest_remove = check_sequences(&removed, &["removed"], written);
    probe
        .wait_for("memory removed", |f| is_status(f, "memory", "removed"))
        .await;
    let gone = probe
        .call("memory", json!("gone"), "tools/list", json!({}))
        .await;
    assert_eq!(gateway_code(&gone), "unknown_server", "{gone}");

    stop.cancel();
    let mut total = 0;
    for task in tasks {
        let (client, calls) = task.await.expect("traffic task");
        assert!(calls > 0);
        total += calls;
        client.close().await;
    }
    drop(seen_tx);
    assert!(seen.recv().await.is_none(), "no status frame after removed");
    eprintln!(
        "{CLIENTS} clients, {total} calls without an error; first status frame after the file \
         changed, slowest client: added {slowest_add:?}, changed {slowest_change:?}, removed \
         {slowest_remove:?}"
    );
}

/// A configuration file in a folder of its own, with `servers`.
fn file_with(dir: &TempDir, servers: Value) -> std::path::PathBuf {
    let path = dir.0.join("mcpmux.json");
    let text = config(servers, json!({"watchConfig": false})).to_string();
    std::fs::write(&path, text).expect("write config");
    path
}

/// A gateway on `everything` and `extra` read from a file in `dir`, and a client of both
/// with a long call to `extra` in flight (its first progress seen). Returns the servers
/// (to write back) and the call's id.
async fn extra_busy(dir: &TempDir) -> (TestGateway, Client, Value, Value) {
    let both = json!({"everything": everything(), "extra": everything()});
    let path = file_with(dir, both.clone());
    let gateway = TestGateway::start_from_file(&path).await;
    let mut client = Client::connect(gateway.addr).await;
    client.initialize("everything").await;
    client.initialize("extra").await;
    let long = json!("long");
    client
        .start_long_operation("extra", &long, 60, 60, "long")
        .await;
    client
        .wait_for("first progress", |f| {
            f["server"] == "extra" && f["message"]["method"] == "notifications/progress"
        })
        .await;
    (gateway, client, both, long)
}

#[tokio::test]
async fn a_removed_server_answers_its_calls_in_flight_as_unknown_then_says_removed() {
    let dir = TempDir::new();
    let (gateway, mut client, both, long) = extra_busy(&dir).await;

    file_with(&dir, json!({"everything": everything()}));
    gateway.gateway().reload().await;
    let answer = client.response("extra", &long).await;
    assert_eq!(gateway_code(&answer), "unknown_server", "{answer}");
    let never = client
        .call("nowhere", json!(0), "tools/list", json!({}))
        .await;
    let message = |frame: &Value| {
        frame["message"]["error"]["message"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        message(&answer),
        message(&never).map(|m| m.replace("nowhere", "extra")),
        "the same answer as for a server never configured"
    );
    let removed = client
        .wait_for("extra removed", |f| is_status(f, "extra", "removed"))
        .await;
    assert!(
        answer["seq"].as_u64() < removed["seq"].as_u64(),
        "answers first"
    );
    assert!(!gateway.gateway().servers().contains_key("extra"));

    // Later frames are answered as for a server never configured.
    let later = client
        .call("extra", json!("later"), "tools/list", json!({}))
        .await;
    assert_eq!(gateway_code(&later), "unknown_server", "{later}");
    client
        .send(json!({"type": "close", "server": "extra"}))
        .await;
    let refused = client
        .wait_for("error frame", |f| f["type"] == "error")
        .await;
    assert_eq!(refused["code"], "unknown_server", "{refused}");
    // The other server was not touched.
    let echo = client
        .call(
            "everything",
            json!("still"),
            "tools/call",
            echo_params("still"),
        )
        .await;
    assert_eq!(tool_text(&echo), "Echo: still");
    let after = removed["seq"].as_u64();
    let about_extra = client.take_buffered(|f| {
        f["server"] == "extra" && f["message"]["method"].is_null() && f["seq"].as_u64() > after
    });
    assert!(
        about_extra.is_empty(),
        "nothing after removed: {about_extra:?}"
    );
    let sessions = client.take_buffered(|f| f["type"] == "session" && f["seq"].as_u64() > after);
    assert!(sessions.is_empty(), "{sessions:?}");

    // Added again under the same name: it starts over.
    file_with(&dir, both);
    gateway.gateway().reload().await;
    client
        .wait_for("extra starting", |f| is_status(f, "extra", "starting"))
        .await;
    client.initialize("extra").await;
    let echo = client
        .call("extra", json!("again"), "tools/call", echo_params("again"))
        .await;
    assert_eq!(tool_text(&echo), "Echo: again");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_server_removed_and_added_again_at_once_says_removed_before_starting() {
    let dir = TempDir::new();
    // A call in flight: `removed` waits for its answer.
    let (gateway, mut client, both, long) = extra_busy(&dir).await;
    client.take_buffered(|f| f["type"] == "status");
    file_with(&dir, json!({"everything": everything()}));
    gateway.gateway().reload().await;
    file_with(&dir, both);
    gateway.gateway().reload().await;
    client
        .wait_for("extra ready again", |f| is_status(f, "extra", "ready"))
        .await;
    let states: Vec<Value> = client
        .take_buffered(|f| f["type"] == "status" && f["server"] == "extra")
        .into_iter()
        .map(|f| f["state"].clone())
        .collect();
    assert_eq!(
        states,
        ["removed", "starting"],
        "in the order they happened"
    );
    let answer = client.response("extra", &long).await;
    assert_eq!(gateway_code(&answer), "unknown_server", "{answer}");
    gateway.shutdown().await;
}

const ADMIN_KEY: &str = "admin-key-for-the-tests-0123";

fn admin_section() -> Value {
    json!({"admin": {"listen": "127.0.0.1:0", "key": "${MCPMUX_TEST_ADMIN_KEY}"}})
}

#[tokio::test]
async fn an_invalid_file_is_rejected_and_the_old_configuration_keeps_serving() {
    let servers = json!({"everything": everything()});
    let binary = Binary::launch(
        &config(servers.clone(), admin_section()),
        Launch {
            env: &[("MCPMUX_TEST_ADMIN_KEY", ADMIN_KEY)],
            log_filter: Some("info"),
            ..Launch::default()
        },
    );
    let mut client = Client::connect(binary.addr).await;
    client.initialize("everything").await;

    // Half a file, as an editor that writes in place might leave it.
    std::fs::write(binary.config_path(), r#"{"mcpServers": {"everything": "#).expect("write");
    let line = binary
        .log_line(
            &[
                "rejected",
                "the running configuration stays",
                "mcpmux.json: line 1",
            ],
            Duration::from_secs(20),
        )
        .await;
    assert!(line.contains("ERROR"), "{line}");
    let echo = client
        .call("everything", json!(1), "tools/call", echo_params("still"))
        .await;
    assert_eq!(tool_text(&echo), "Echo: still");
    let newcomer = Client::connect(binary.addr).await;
    assert_eq!(
        newcomer.welcome["servers"],
        json!([{"name": "everything", "state": "ready"}])
    );

    // A key that is not one: the line names it, and nothing changes.
    let mut misspelt = servers.clone();
    misspelt["memory"] = json!({"comand": "node"});
    binary.write_config(&config(misspelt, admin_section()));
    let line = binary
        .log_line(
            &["mcpServers.memory.comand", "unknown key"],
            Duration::from_secs(20),
        )
        .await;
    assert!(line.contains("the running configuration stays"), "{line}");
    let admin = binary.admin.expect("the admin API listens");
    let http = reqwest::Client::new();
    let reload = http
        .post(format!("http://{admin}/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("POST /admin/reload");
    assert_eq!(reload.status(), 400);
    let body: Value = serde_json::from_str(&reload.text().await.expect("a body")).expect("JSON");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("mcpServers.memory.comand"), "{body}");
    let echo = client
        .call(
            "everything",
            json!(2),
            "tools/call",
            echo_params("and still"),
        )
        .await;
    assert_eq!(tool_text(&echo), "Echo: and still");
    let strays = client.take_buffered(|f| f["type"] == "status" || f["type"] == "error");
    assert!(strays.is_empty(), "{strays:?}");

    // Fixed, it applies.
    let mut fixed = servers;
    fixed["memory"] = memory();
    binary.write_config(&config(fixed, admin_section()));
    client
        .wait_for("memory ready", |f| is_status(f, "memory", "ready"))
        .await;
}

#[tokio::test]
async fn sighup_rereads_the_file() {
    let unwatched = json!({"watchConfig": false});
    let binary = Binary::launch(
        &config(json!({"everything": everything()}), unwatched),
        Launch {
            log_filter: Some("info"),
            ..Launch::default()
        },
    );
    let mut client = Client::connect(binary.addr).await;
    let with_memory = json!({"everything": everything(), "memory": memory()});
    let slower_hello = json!({"watchConfig": false, "helloTimeoutMs": 20000});
    binary.write_config(&config(with_memory, slower_hello));
    kill(binary.child.id(), libc::SIGHUP);
    client
        .wait_for("memory starting", |f| is_status(f, "memory", "starting"))
        .await;
    client
        .wait_for("memory ready", |f| is_status(f, "memory", "ready"))
        .await;
    let line = binary
        .log_line(
            &["configuration applied", "added memory"],
            Duration::from_secs(20),
        )
        .await;
    assert!(line.contains("reloading the configuration"), "{line}");
    binary
        .log_line(
            &[
                "gateway.helloTimeoutMs changed",
                "takes effect when mcpmux restarts",
            ],
            Duration::from_secs(20),
        )
        .await;
    client.initialize("memory").await;
}

const DASHBOARD: &str = "dashboard-key-0123456789";
const OPS: &str = "ops-key-abcdefghijklmnop";
const TEMP: &str = "temporary-key-0123456789";

fn keyed(dashboard_servers: Value, with_temp: bool) -> Value {
    let mut keys = vec![
        json!({"name": "dashboard", "key": DASHBOARD, "servers": dashboard_servers}),
        json!({"name": "ops", "key": OPS, "servers": "*"}),
    ];
    if with_temp {
        keys.push(json!({"name": "temp", "key": TEMP, "servers": ["everything"]}));
    }
    config(
        json!({"everything": everything(), "memory": memory()}),
        json!({"apiKeys": keys}),
    )
}

async fn connect_with(addr: std::net::SocketAddr, key: &str) -> Client {
    let hello = json!({"type": "hello", "token": key});
    Client::greet(Client::raw(addr).await, hello)
        .await
        .expect("welcome")
}

#[tokio::test]
async fn a_revoked_key_is_closed_with_4503_and_a_narrowed_key_loses_only_its_servers() {
    let binary = Binary::start(&keyed(json!(["everything", "memory"]), true));
    let mut temp = connect_with(binary.addr, TEMP).await;
    temp.initialize("everything").await;
    let mut dashboard = connect_with(binary.addr, DASHBOARD).await;
    dashboard.initialize("everything").await;
    dashboard.initialize("memory").await;
    let mut ops = connect_with(binary.addr, OPS).await;
    ops.initialize("memory").await;
    ops.take_buffered(|_| true);

    binary.write_config(&keyed(json!(["everything"]), false));
    match temp.closed().await {
        Ended::Closed(code, reason) => {
            assert_eq!(code, 4503, "{reason}");
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("expected 4503, got {other:?}"),
    }
    dashboard
        .wait_for("memory removed", |f| is_status(f, "memory", "removed"))
        .await;
    let refused = dashboard
        .call("memory", json!("m"), "tools/list", json!({}))
        .await;
    assert_eq!(gateway_code(&refused), "unknown_server", "{refused}");
    let echo = dashboard
        .call("everything", json!("e"), "tools/call", echo_params("kept"))
        .await;
    assert_eq!(tool_text(&echo), "Echo: kept");
    // A key that lost nothing sees nothing of it.
    let graph = ops
        .call(
            "memory",
            json!("g"),
            "tools/call",
            json!({"name": "read_graph", "arguments": {}}),
        )
        .await;
    assert!(graph["message"]["result"].is_object(), "{graph}");
    let strays = ops.take_buffered(|f| f["type"] == "status" || f["type"] == "session");
    assert!(strays.is_empty(), "{strays:?}");
    // The revoked key opens nothing any more.
    let bearer = format!("Bearer {TEMP}");
    let refused = Client::open_with(binary.addr, &[("authorization", &bearer)]).await;
    assert_eq!(refused.err().map(|e| e.0), Some(401));

    // A server given back is shown again, in its current state.
    binary.write_config(&keyed(json!(["everything", "memory"]), false));
    dashboard
        .wait_for("memory shown again", |f| is_status(f, "memory", "ready"))
        .await;
    dashboard.initialize("memory").await;
}
