//! The session store under faults, against a real redis-server: gateways in this
//! process share it, and the test reads and edits what they wrote.
//!
//! - A session's owner is its process (`<instance>/<lease token>`): a previous process
//!   of the same name is taken over from, the process itself never takes its own.
//! - A record Redis lost (evicted, or Redis restarted empty), or never got (the
//!   session opened during an outage), is rebuilt whole by the next write, and
//!   resumable elsewhere.
//! - Frames given up on during an outage are counted and leave a gap, recorded when
//!   Redis answers again: a resume from before it is refused elsewhere, granted on the
//!   owner.
//! - The stream keeps no more than the outbox; a takeover reads no more than the
//!   reader's resume limits and budget.
//! - An outage is warned once, by the store's link, not once per session.

use std::collections::HashMap;

use mcpmux::Options;
use mcpmux::metrics::Metrics;
use serde_json::{Value, json};

use crate::binary::{Binary, Launch};
use crate::harness::{Client, FRAME_WAIT, TestGateway, config, everything};
use crate::metrics::{sample, until};
use crate::support::redis::RedisServer;

async fn gateway_on(redis: &RedisServer, instance: &str, extra: Value) -> (TestGateway, Metrics) {
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let mut settings = json!({"instance": instance, "store": {"redis": redis.url()}});
    if let (Some(base), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    let gateway = TestGateway::start_with(
        &config(json!({"everything": everything()}), settings),
        options,
    )
    .await;
    (gateway, metrics)
}

/// An echo call; returns the seq of its response.
async fn echo(client: &mut Client, message: &str) -> u64 {
    let params = json!({"name": "echo", "arguments": {"message": message}});
    let response = client
        .call("everything", json!(message), "tools/call", params)
        .await;
    response["seq"].as_u64().expect("seq")
}

/// A client of `addr` with an upstream session with everything; returns it and the seq
/// of the initialize response.
async fn initialized(addr: std::net::SocketAddr) -> (Client, u64) {
    let mut client = Client::connect(addr).await;
    let response = client.initialize("everything").await;
    let seq = response["seq"].as_u64().expect("seq");
    (client, seq)
}

async fn hash(redis: &RedisServer, id: &str) -> HashMap<String, String> {
    let mut connection = redis.connection().await;
    redis::cmd("HGETALL")
        .arg(format!("mcpmux:session:{id}"))
        .query_async(&mut connection)
        .await
        .expect("HGETALL")
}

async fn lease(redis: &RedisServer, instance: &str) -> Option<String> {
    let mut connection = redis.connection().await;
    redis::cmd("GET")
        .arg(format!("mcpmux:instance:{instance}"))
        .query_async(&mut connection)
        .await
        .expect("GET")
}

/// Waits until `instance` holds its lease again (it renews it every second); returns
/// its token.
async fn lease_until(redis: &RedisServer, instance: &str) -> String {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        if let Some(token) = lease(redis, instance).await {
            return token;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lease of {instance}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The seqs in a session's stream, oldest first.
async fn stream_seqs(redis: &RedisServer, id: &str) -> Vec<u64> {
    let mut connection = redis.connection().await;
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("mcpmux:frames:{id}"))
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    entries
        .iter()
        .map(|(entry, _)| {
            entry
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("id")
        })
        .collect()
}

async fn redis_do(redis: &RedisServer, command: &[&str]) {
    let mut connection = redis.connection().await;
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    let () = cmd
        .query_async(&mut connection)
        .await
        .expect("redis command");
}

/// Waits until session `id`'s hash satisfies `done`; returns it.
async fn hash_until(
    redis: &RedisServer,
    id: &str,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let fields = hash(redis, id).await;
        if done(&fields) {
            return fields;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {FRAME_WAIT:?}: {fields:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn number(fields: &HashMap<String, String>, field: &str) -> u64 {
    fields
        .get(field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Waits until session `id`'s hash records every frame up to `seq`; returns it.
async fn stored_through(
    redis: &RedisServer,
    id: &str,
    what: &str,
    seq: u64,
) -> HashMap<String, String> {
    hash_until(redis, id, what, |f| number(f, "seq") >= seq).await
}

/// Resumes `session` after `last_seq` on `addr`, and checks it was granted.
async fn resume_granted(addr: std::net::SocketAddr, session: &str, last_seq: u64) -> Client {
    let client = Client::resume(addr, session, last_seq).await;
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    client
}

/// Resumes `session` after `last_seq` on `addr`, and checks it was refused (the client
/// has a new session).
async fn resume_refused(addr: std::net::SocketAddr, session: &str, last_seq: u64) -> Client {
    let client = Client::resume(addr, session, last_seq).await;
    assert_eq!(client.welcome["resumed"], false, "{}", client.welcome);
    client
}

/// Checks that a rebuilt record kept the owner, key and upstream session of `before`.
fn assert_rebuilt_whole(rebuilt: &HashMap<String, String>, before: &HashMap<String, String>) {
    for field in ["owner", "key", "up:everything"] {
        assert_eq!(
            rebuilt.get(field),
            before.get(field),
            "{field}: {rebuilt:?}"
        );
    }
}

fn store_up(text: &str) -> Option<f64> {
    sample(text, "mcpmux_store_up", &[])
}

/// Waits until the store's link reports Redis up (`1`) or down (`0`).
async fn until_store_up(metrics: &Metrics, up: f64) {
    until(metrics, &format!("mcpmux_store_up {up}"), |t| {
        store_up(t) == Some(up)
    })
    .await;
}

/// A session whose frames Redis missed: stored through its initialize, then three
/// echo answers sent while Redis hung (they reach the client only, and the store gives
/// them up).
struct Outage {
    owner: TestGateway,
    metrics: Metrics,
    client: Client,
    id: String,
    initialized_seq: u64,
    /// The seqs of the answers sent during the hang.
    during: Vec<u64>,
}

async fn answers_while_redis_hangs(redis: &RedisServer, instance: &str) -> Outage {
    let (owner, metrics) = gateway_on(redis, instance, json!({})).await;
    let (mut client, initialized_seq) = initialized(owner.addr).await;
    let id = client.session_id();
    stored_through(redis, &id, "the initialize response", initialized_seq).await;
    redis.pause();
    until_store_up(&metrics, 0.0).await;
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(echo(&mut client, &format!("during-{i}")).await);
    }
    Outage {
        owner,
        metrics,
        client,
        id,
        initialized_seq,
        during,
    }
}

#[tokio::test]
async fn the_owner_is_the_process_not_just_its_name() {
    let redis = RedisServer::start();
    let (a, _) = gateway_on(&redis, "fa", json!({})).await;
    let (b, _) = gateway_on(&redis, "fb", json!({})).await;
    let (mut client, initialized_seq) = initialized(a.addr).await;
    let id = client.session_id();
    let token = lease(&redis, "fa").await.expect("fa's lease");
    let fields = stored_through(&redis, &id, "the initialize response", initialized_seq).await;
    assert_eq!(fields["owner"], format!("fa/{token}"));

    // A session this very process owns is never taken by it again (a resume that
    // finds no session held here, while a claim on it is under way).
    let own = format!("fa.{:032x}", 0x5e1f_u128);
    let key = format!("mcpmux:session:{own}");
    let owner = format!("fa/{token}");
    redis_do(
        &redis,
        &["HSET", &key, "owner", &owner, "key", "", "seq", "0"],
    )
    .await;
    let refused = resume_refused(a.addr, &own, 0).await;
    assert_eq!(hash(&redis, &own).await["owner"], owner);

    // A previous process of the same name owned it: this process writes nothing more
    // of it, and another instance takes it over although the lease of "fa" lives (it
    // holds another process's token).
    let key = format!("mcpmux:session:{id}");
    redis_do(&redis, &["HSET", &key, "owner", "fa/previousprocess"]).await;
    // The owner is checked in the script that writes: nothing lands after this.
    let stored = number(&hash(&redis, &id).await, "seq");
    echo(&mut client, "unstored").await;
    assert_eq!(
        stream_seqs(&redis, &id).await.last().copied(),
        Some(stored),
        "a process that does not own the session wrote to it"
    );
    assert_eq!(hash(&redis, &id).await["owner"], "fa/previousprocess");
    let mut moved = resume_granted(b.addr, &id, stored).await;
    let token_b = lease(&redis, "fb").await.expect("fb's lease");
    assert_eq!(hash(&redis, &id).await["owner"], format!("fb/{token_b}"));
    moved.session_state("lost").await;

    moved.close().await;
    client.close().await;
    refused.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_record_redis_lost_is_rebuilt_whole_and_resumable_elsewhere() {
    let mut redis = RedisServer::start();
    let (a, metrics) = gateway_on(&redis, "ra", json!({})).await;
    let (mut client, initialized_seq) = initialized(a.addr).await;
    let id = client.session_id();
    let before = hash_until(&redis, &id, "the upstream session", |f| {
        f.contains_key("up:everything") && number(f, "seq") >= initialized_seq
    })
    .await;
    let key = format!("mcpmux:session:{id}");

    // Evicted: the next write rebuilds it, owner, key and upstream sessions included;
    // frames before that write may be gone, so a resume from before it is refused.
    redis_do(&redis, &["DEL", &key]).await;
    let seq = echo(&mut client, "after-eviction").await;
    let rebuilt = stored_through(&redis, &id, "the rebuilt record", seq).await;
    assert_rebuilt_whole(&rebuilt, &before);
    assert!(number(&rebuilt, "gap") >= initialized_seq, "{rebuilt:?}");

    // Redis restarted empty: the same.
    redis.restart();
    // The lease is claimed again once the link works.
    lease_until(&redis, "ra").await;
    until_store_up(&metrics, 1.0).await;
    let last = echo(&mut client, "after-restart").await;
    let rebuilt = stored_through(&redis, &id, "the record after a restart", last).await;
    assert_rebuilt_whole(&rebuilt, &before);
    assert_eq!(stream_seqs(&redis, &id).await.last().copied(), Some(last));

    // Drained, then resumed on another instance: the stdio upstream session it rebuilt
    // is reported lost there.
    a.shutdown().await;
    let (b, _) = gateway_on(&redis, "rb", json!({})).await;
    let mut moved = resume_granted(b.addr, &id, last).await;
    let lost = moved.session_state("lost").await;
    assert_eq!(lost["server"], "everything");
    assert_eq!(lost["seq"].as_u64(), Some(last + 1));
    moved.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_gap_left_by_an_outage_refuses_a_resume_elsewhere_not_on_the_owner() {
    let redis = RedisServer::start();
    let Outage {
        owner: a,
        metrics,
        client,
        id,
        initialized_seq,
        during,
    } = answers_while_redis_hangs(&redis, "ga").await;
    let last = *during.last().expect("frames");
    // Each batch given up on for the store is counted, not silent.
    let given_up = sample(
        &metrics.render(),
        "mcpmux_store_fallback_total",
        &[("part", "sessions")],
    );
    assert!(given_up.is_some_and(|n| n >= 3.0), "{given_up:?}");
    redis.resume();
    until_store_up(&metrics, 1.0).await;
    // The gap is recorded once Redis answers, without another frame.
    hash_until(&redis, &id, "the gap", |f| number(f, "gap") >= last).await;

    // The owner still has the frames: a resume from before the gap is granted there.
    let mut again = resume_granted(a.addr, &id, initialized_seq).await;
    let mut replayed = Vec::new();
    while replayed.last() != Some(&last) {
        if let Some(seq) = again.next().await["seq"].as_u64() {
            replayed.push(seq);
        }
    }
    assert!(
        during.iter().all(|seq| replayed.contains(seq)),
        "{replayed:?}"
    );

    // Elsewhere, it is refused: the frames of the outage are not in the store.
    a.shutdown().await;
    let (b, _) = gateway_on(&redis, "gb", json!({})).await;
    let fresh = resume_refused(b.addr, &id, initialized_seq).await;
    assert_ne!(fresh.session_id(), id);
    fresh.close().await;
    drop(client);
    drop(again);
    b.shutdown().await;
}

#[tokio::test]
async fn the_stream_keeps_no_more_than_the_outbox() {
    let redis = RedisServer::start();
    let (a, _) = gateway_on(&redis, "ta", json!({"resumeMaxFrames": 4})).await;
    let (mut client, _) = initialized(a.addr).await;
    let id = client.session_id();
    let mut last = 0;
    for i in 0..8 {
        last = echo(&mut client, &format!("m{i}")).await;
    }
    stored_through(&redis, &id, "the last response", last).await;
    let seqs = stream_seqs(&redis, &id).await;
    assert!(seqs.len() <= 4, "{seqs:?}");
    assert_eq!(seqs.last().copied(), Some(last), "{seqs:?}");
    client.close().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_takeover_reads_no_more_than_the_limits_and_budget_of_its_instance() {
    let redis = RedisServer::start();
    let (a, _) = gateway_on(&redis, "la", json!({})).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (mut client, first) = initialized(a.addr).await;
        let mut last = first;
        for i in 0..5 {
            last = echo(&mut client, &format!("m{i}")).await;
        }
        let id = client.session_id();
        stored_through(&redis, &id, "the last response", last).await;
        sessions.push((client, id, first));
    }
    a.shutdown().await;

    // Too many frames for the reader's resumeMaxFrames.
    let (few, _) = gateway_on(&redis, "lb", json!({"resumeMaxFrames": 3})).await;
    let (_, id, first) = &sessions[0];
    let refused = resume_refused(few.addr, id, *first - 1).await;
    refused.close().await;
    few.shutdown().await;

    // More bytes than its budget has room for.
    let (poor, _) = gateway_on(&redis, "lc", json!({"resumeBudgetBytes": 200})).await;
    let (_, id, first) = &sessions[1];
    let refused = resume_refused(poor.addr, id, *first - 1).await;
    refused.close().await;
    poor.shutdown().await;

    // Within them, the same resume is granted.
    let (rich, _) = gateway_on(&redis, "ld", json!({})).await;
    let (_, id, first) = &sessions[2];
    let mut granted = resume_granted(rich.addr, id, *first - 1).await;
    let frame = granted.next().await;
    assert_eq!(frame["seq"].as_u64(), Some(*first), "{frame}");
    granted.close().await;
    rich.shutdown().await;
}

#[tokio::test]
async fn an_outage_is_warned_once_whatever_the_sessions_write() {
    let mut redis = RedisServer::start();
    let settings = json!({"instance": "wa", "store": {"redis": redis.url()}});
    let launch = Launch {
        log_filter: Some("info"),
        ..Launch::default()
    };
    let binary = Binary::launch(
        &config(json!({"everything": everything()}), settings),
        launch,
    );
    binary
        .log_line(&["connected to the shared store"], FRAME_WAIT)
        .await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(initialized(binary.addr).await.0);
    }
    redis.stop();
    binary.log_line(&["does not answer"], FRAME_WAIT).await;
    // Every session writes frames during the outage, and ends during it.
    for (i, client) in clients.iter_mut().enumerate() {
        for j in 0..3 {
            echo(client, &format!("during-{i}-{j}")).await;
        }
    }
    clients.pop().expect("a client").close().await;
    redis.start_again();
    binary.log_line(&["answers again"], FRAME_WAIT).await;
    echo(&mut clients[0], "after").await;
    let log = binary.log();
    // From the connection to the store on (the start-up may warn of other things).
    let warnings: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("connected to the shared store"))
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("does not answer"), "{log}");
}

#[tokio::test]
async fn a_session_opened_during_an_outage_is_recorded_once_redis_answers() {
    let mut redis = RedisServer::start();
    let (a, metrics) = gateway_on(&redis, "oa", json!({})).await;
    redis.stop();
    until_store_up(&metrics, 0.0).await;
    let (mut client, initialized_seq) = initialized(a.addr).await;
    let id = client.session_id();
    redis.start_again();
    until_store_up(&metrics, 1.0).await;
    // Its first write records it whole; what it sent before may be missing: a gap.
    let last = echo(&mut client, "after").await;
    let fields = stored_through(&redis, &id, "the recorded session", last).await;
    let token = lease_until(&redis, "oa").await;
    assert_eq!(fields["owner"], format!("oa/{token}"));
    assert!(fields.contains_key("up:everything"), "{fields:?}");
    assert!(number(&fields, "gap") >= initialized_seq, "{fields:?}");
    client.close().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_gap_recorded_alone_still_lets_the_client_resume_elsewhere_from_its_last_frame() {
    let redis = RedisServer::start();
    let Outage {
        owner: a,
        metrics,
        client,
        id,
        during,
        ..
    } = answers_while_redis_hangs(&redis, "ha").await;
    let last = *during.last().expect("frames");
    redis.resume();
    until(&metrics, "mcpmux_store_up 1", |t| store_up(t) == Some(1.0)).await;
    // The write that records the gap carries no frame: the stored seq follows it all
    // the same, so a resume from the client's last frame finds nothing missing.
    let fields = hash_until(&redis, &id, "the gap", |f| number(f, "gap") >= last).await;
    assert!(number(&fields, "seq") >= last, "{fields:?}");

    // A drain hands the session over; the client resumes elsewhere from its last frame.
    a.shutdown().await;
    let (b, _) = gateway_on(&redis, "hb", json!({})).await;
    let mut again = resume_granted(b.addr, &id, last).await;
    assert_eq!(again.session_id(), id);
    // The session goes on: a new call is answered after the resume point.
    let after = echo(&mut again, "after").await;
    assert!(after > last, "{after} after {last}");
    drop(client);
    again.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_takeover_refused_for_a_full_budget_leaves_the_session_for_another_try() {
    let redis = RedisServer::start();
    let (a, _) = gateway_on(&redis, "ia", json!({})).await;
    let (mut client, first) = initialized(a.addr).await;
    let mut last = first;
    for i in 0..5 {
        last = echo(&mut client, &format!("m{i}")).await;
    }
    let id = client.session_id();
    stored_through(&redis, &id, "the last response", last).await;
    a.shutdown().await;

    // No room in this instance's budget now: refused, and the session is given back.
    let (poor, _) = gateway_on(&redis, "ib", json!({"resumeBudgetBytes": 200})).await;
    let refused = resume_refused(poor.addr, &id, first - 1).await;
    let fields = hash(&redis, &id).await;
    assert_eq!(
        fields.get("owner").map(String::as_str),
        Some(""),
        "{fields:?}"
    );
    refused.close().await;
    poor.shutdown().await;

    // Tried again elsewhere, it is granted whole.
    let (rich, _) = gateway_on(&redis, "ic", json!({})).await;
    let mut granted = resume_granted(rich.addr, &id, first - 1).await;
    let frame = granted.next().await;
    assert_eq!(frame["seq"].as_u64(), Some(first), "{frame}");
    drop(client);
    granted.close().await;
    rich.shutdown().await;
}

#[tokio::test]
async fn a_takeover_whose_read_fails_gives_the_session_back_for_a_retry() {
    let redis = RedisServer::start();
    let (a, _) = gateway_on(&redis, "ja", json!({})).await;
    let (mut client, _) = initialized(a.addr).await;
    let last = echo(&mut client, "before").await;
    let id = client.session_id();
    stored_through(&redis, &id, "the last response", last).await;
    a.shutdown().await;
    let stored = number(&hash(&redis, &id).await, "seq");

    // The stream is not one: the takeover's read fails after the take.
    let frames = format!("mcpmux:frames:{id}");
    redis_do(&redis, &["DEL", &frames]).await;
    redis_do(&redis, &["SET", &frames, "not a stream"]).await;
    let (b, _) = gateway_on(&redis, "jb", json!({})).await;
    let refused = resume_refused(b.addr, &id, stored).await;
    let fields = hash(&redis, &id).await;
    assert_eq!(
        fields.get("owner").map(String::as_str),
        Some(""),
        "{fields:?}"
    );
    refused.close().await;

    // Once the store reads again, a retry on the same instance takes it.
    redis_do(&redis, &["DEL", &frames]).await;
    let again = resume_granted(b.addr, &id, stored).await;
    assert_eq!(again.session_id(), id);
    drop(client);
    again.close().await;
    b.shutdown().await;
}
