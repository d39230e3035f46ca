//! Upstream sessions that move between instances, at their edges: two real `mcpmux`
//! binaries share a real redis-server, and the real server-everything runs as a remote
//! server (Streamable HTTP, with its event store) reachable from both. The owner of a
//! client session is killed (SIGKILL); the session is resumed on the other instance.
//!
//! - Notifications the server sends on its standalone stream (here: its `roots/list`
//!   requests, which it sends on that stream only) reach the resumed client once, in
//!   order: those it had seen are not repeated, those sent while no instance listened
//!   are replayed from the last event the client was given.
//! - An adopted stream with no event id to resume after is reported as a gap.
//! - Adopted upstream sessions count against `maxUpstreamSessions` on the instance
//!   that takes the session.
//! - A request in flight to the remote server when its instance is killed is answered
//!   once, by the instance that takes the session: a `session_lost` error with its id.
//!   One in flight when its instance is drained is let finish first: its answer is
//!   among the replayed frames, and the client gets it exactly once, though the server
//!   sends it again when the other instance reopens the standalone stream (its event
//!   store replays every stream's events after a `Last-Event-ID`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::binary::{Binary, kill};
use crate::harness::{Client, FRAME_WAIT, is_response};
use crate::metrics::sample;
use crate::support::redis::RedisServer;
use crate::support::remote::RemoteEverything;
use crate::support::scale::{
    drain, echo, gateway, gateway_serving, session_field, set_session_field,
};

/// The stored `up:{server}` record of client session `id` (null when absent).
async fn upstream_record(redis: &RedisServer, id: &str, server: &str) -> Value {
    session_field(redis, id, &format!("up:{server}"))
        .await
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or(Value::Null)
}

/// Initializes `server` as a client that has roots (server-everything then asks for
/// them on its standalone stream, and again on each `notifications/roots/list_changed`).
async fn initialize_with_roots(client: &mut Client, server: &str) {
    client.ready(server).await;
    let params = json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {"roots": {"listChanged": true}},
        "clientInfo": {"name": "mcpmux-tests", "version": "1"}
    });
    let response = client
        .call(server, json!("init"), "initialize", params)
        .await;
    assert!(response["message"]["result"].is_object(), "{response}");
    client
        .rpc(
            server,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
}

fn is_roots_request(frame: &Value) -> bool {
    frame["type"] == "rpc" && frame["message"]["method"] == "roots/list"
}

/// The id of the next `roots/list` request the server sent.
async fn next_roots_request(client: &mut Client) -> Value {
    let frame = client.wait_for("roots/list", is_roots_request).await;
    assert_eq!(frame["server"], "remote", "{frame}");
    frame["message"]["id"].clone()
}

/// A round trip through the session's sequence: the gateway answers a request to a
/// server it does not have with a sequenced frame, which reaches the client only after
/// everything recorded before it is in the store. Returns the answer's seq.
async fn through_the_store(client: &mut Client, id: &str) -> u64 {
    let answer = client.call("nowhere", json!(id), "ping", json!({})).await;
    assert_eq!(
        answer["message"]["error"]["data"]["gateway"], "unknown_server",
        "{answer}"
    );
    answer["seq"].as_u64().expect("seq")
}

const ADMIN_KEY: &str = "scale-faults-admin-key-0123456789";

/// Waits until `instance` has dropped a response from `server` that answered no request
/// in flight (`mcpmux_messages_total{direction="dropped"}`, on its admin listener).
async fn until_dropped(instance: &Binary, server: &str) {
    let admin = instance.admin.expect("the admin API listens");
    let labels = [("server", server), ("direction", "dropped")];
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let text = reqwest::Client::new()
            .get(format!("http://{admin}/metrics"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        if sample(&text, "mcpmux_messages_total", &labels).is_some_and(|n| n >= 1.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped response within {FRAME_WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_stream_notifications_reach_the_resumed_client_once_in_order() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let servers = json!({"remote": {"url": remote.url()}});
    let a = gateway_serving("inst-sa", &redis, servers.clone(), json!({}));
    let b = gateway_serving("inst-sb", &redis, servers, json!({}));
    let mut client = Client::connect(a.addr).await;
    initialize_with_roots(&mut client, "remote").await;
    // The server asks once initialized, then once per change: each on its standalone
    // stream, each with the next request id.
    let mut seen = vec![next_roots_request(&mut client).await];
    for _ in 0..2 {
        client
            .rpc(
                "remote",
                json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
            )
            .await;
        seen.push(next_roots_request(&mut client).await);
    }
    let last_seq = through_the_store(&mut client, "flush-a").await;
    let session = client.session_id();
    let record = upstream_record(&redis, &session, "remote").await;
    assert!(record["last_event_id"].is_string(), "{record}");
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    // While no instance listens, the server sends two more on the stream it keeps.
    let upstream_id = record["session_id"].as_str().expect("session id");
    let version = record["protocol_version"].as_str().expect("version");
    for _ in 0..2 {
        let status = remote
            .notify(upstream_id, version, "notifications/roots/list_changed")
            .await;
        assert_eq!(status, 202);
    }
    let mut client = Client::resume(b.addr, &session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    let after = [
        next_roots_request(&mut client).await,
        next_roots_request(&mut client).await,
    ];
    let next = |id: &Value| json!(id.as_i64().expect("numeric id") + 1);
    assert_eq!(after[0], next(seen.last().expect("seen")), "seen {seen:?}");
    assert_eq!(after[1], next(&after[0]));
    // Nothing else came meanwhile: no event the client had seen, no gap reported.
    through_the_store(&mut client, "flush-b").await;
    let others = client.take_buffered(|f| is_roots_request(f) || f["type"] == "error");
    assert!(others.is_empty(), "{others:?}");
    // And the session goes on with the server's same upstream session.
    echo(&mut client, "remote", json!("echo"), "moved").await;
    assert_eq!(remote.initialized(), 1, "{}", remote.log());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_stream_with_no_event_id_to_resume_after_reports_the_gap() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let a = gateway("inst-sc", &redis, &remote);
    let b = gateway("inst-sd", &redis, &remote);
    let mut client = Client::connect(a.addr).await;
    client.initialize("remote").await;
    let last_seq = through_the_store(&mut client, "flush").await;
    let session = client.session_id();
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    // As a server that gives its events no ids would have left it.
    let mut record = upstream_record(&redis, &session, "remote").await;
    let ids = record.as_object_mut().expect("a record");
    ids.remove("last_event_id");
    set_session_field(&redis, &session, "up:remote", &record.to_string()).await;
    let mut client = Client::resume(b.addr, &session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    let gap = client.wait_for("the gap", |f| f["type"] == "error").await;
    assert_eq!(gap["code"], "upstream_error", "{gap}");
    assert_eq!(gap["server"], "remote", "{gap}");
    let message = gap["message"].as_str().expect("message");
    assert!(message.contains("may be missing"), "{message}");
    // The upstream session itself was adopted.
    echo(&mut client, "remote", json!("echo"), "moved").await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_upstream_sessions_count_against_max_upstream_sessions() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let servers = json!({"remote": {"url": remote.url()}, "second": {"url": remote.url()}});
    let a = gateway_serving("inst-se", &redis, servers.clone(), json!({}));
    let b = gateway_serving(
        "inst-sf",
        &redis,
        servers,
        json!({"maxUpstreamSessions": 1}),
    );
    let mut client = Client::connect(a.addr).await;
    client.initialize("remote").await;
    client.initialize("second").await;
    let last_seq = through_the_store(&mut client, "flush").await;
    let session = client.session_id();
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    let mut client = Client::resume(b.addr, &session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    // In the order of the names: "remote" is adopted, "second" is one too many.
    let lost = client.session_state("lost").await;
    assert_eq!(lost["server"], "second", "{lost}");
    assert_eq!(lost["seq"].as_u64(), Some(last_seq + 1), "{lost}");
    let reason = lost["reason"].as_str().expect("reason");
    assert!(reason.contains("maxUpstreamSessions"), "{reason}");
    echo(&mut client, "remote", json!("echo"), "adopted").await;
    // The upstream session nobody adopted is deleted, not left to expire.
    for _ in 0..100 {
        if remote.deleted() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(remote.deleted(), 1, "{}", remote.log());
    assert_eq!(remote.initialized(), 2, "{}", remote.log());
    // A new session with the server past the limit is refused as on any connection.
    let refused = client
        .call(
            "second",
            json!("again"),
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await;
    assert_eq!(
        refused["message"]["error"]["data"]["gateway"], "too_many_sessions",
        "{refused}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_on_a_killed_instance_is_answered_session_lost_once() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let servers = json!({"remote": {"url": remote.url()}});
    let a = gateway_serving("inst-sg", &redis, servers.clone(), json!({}));
    let b = gateway_serving("inst-sh", &redis, servers, json!({}));
    let mut client = Client::connect(a.addr).await;
    client.initialize("remote").await;
    // Six seconds, a progress notification each: still running when its instance dies.
    let id = json!("slow");
    let started = Instant::now();
    client
        .start_long_operation("remote", &id, 6, 6, "slow")
        .await;
    let progress = client
        .wait_for("progress", |f| {
            f["message"]["method"] == "notifications/progress"
        })
        .await;
    assert_eq!(progress["server"], "remote", "{progress}");
    let last_seq = through_the_store(&mut client, "flush-a").await;
    let session = client.session_id();
    // The server said `notifications/tools/list_changed` on its standalone stream once
    // initialized: the stream has an event to resume after.
    let record = upstream_record(&redis, &session, "remote").await;
    assert!(record["last_event_id"].is_string(), "{record}");
    let field = "req:remote\n\"slow\"";
    assert_eq!(
        session_field(&redis, &session, field).await.as_deref(),
        Some("\"slow\""),
        "the request is recorded in flight"
    );
    // An answered request leaves no record.
    assert_eq!(
        session_field(&redis, &session, "req:remote\n\"flush-a\"").await,
        None
    );
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    let mut client = Client::resume(b.addr, &session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    let answer = client.response("remote", &id).await;
    let error = &answer["message"]["error"];
    assert_eq!(error["data"]["gateway"], "session_lost", "{answer}");
    assert_eq!(error["data"]["server"], "remote", "{answer}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("may or may not have run"), "{message}");
    // Past the operation's end, nothing else answers it, and its record is gone.
    let ended = started + Duration::from_secs(7);
    tokio::time::sleep_until(ended.into()).await;
    through_the_store(&mut client, "flush-b").await;
    let again = client.take_buffered(|f| is_response(f, "remote", &id));
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(session_field(&redis, &session, field).await, None);
    // The session goes on with the same upstream session.
    echo(&mut client, "remote", json!("echo"), "after").await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_a_request_in_flight_finish_before_it_hands_the_session_over() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let servers = json!({"remote": {"url": remote.url()}});
    // A grace well past the operation, however slow the machine.
    let grace = json!({"shutdownGraceMs": 30000});
    let mut a = gateway_serving("inst-si", &redis, servers.clone(), grace);
    let admin = json!({"admin": {"listen": "127.0.0.1:0", "key": ADMIN_KEY}});
    let b = gateway_serving("inst-sj", &redis, servers, admin);
    let mut client = Client::connect(a.addr).await;
    client.initialize("remote").await;
    // Three seconds: within the drain's grace.
    let id = json!("slow");
    client
        .start_long_operation("remote", &id, 3, 3, "slow")
        .await;
    client
        .wait_for("progress", |f| {
            f["message"]["method"] == "notifications/progress"
        })
        .await;
    let last_seq = through_the_store(&mut client, "flush-a").await;
    let session = client.session_id();
    // The server said `notifications/tools/list_changed` on its standalone stream once
    // initialized: the stream has an event to resume after.
    let record = upstream_record(&redis, &session, "remote").await;
    assert!(record["last_event_id"].is_string(), "{record}");
    let field = "req:remote\n\"slow\"";
    assert!(session_field(&redis, &session, field).await.is_some());
    drain(&mut a, &mut client).await;
    // Answered during the drain: the record went with the answer.
    assert_eq!(session_field(&redis, &session, field).await, None);
    let mut client = Client::resume(b.addr, &session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    let answer = client.response("remote", &id).await;
    assert!(answer["message"]["result"].is_object(), "{answer}");
    // B reopens the standalone stream after its last event, and the server's event store
    // replays every event after it, from all streams: the answer too. Once B has dropped
    // that one, every frame it sent is in before `flush-b`'s answer.
    until_dropped(&b, "remote").await;
    through_the_store(&mut client, "flush-b").await;
    let again = client.take_buffered(|f| is_response(f, "remote", &id));
    assert!(again.is_empty(), "{again:?}");
    client.close().await;
}
