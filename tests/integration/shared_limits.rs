//! Limits shared by instances through a real redis-server: two gateways in this process,
//! each with the real server-everything behind real mcp-proxy, one key's rate and
//! `maxConnections` holding across both; and each instance falling back on its own
//! limits while Redis is stopped, then sharing again once it is back.

use std::time::Instant;

use futures::future::join_all;
use mcpmux::Options;
use mcpmux::metrics::Metrics;
use serde_json::{Value, json};

use crate::harness::{Client, Ended, TestGateway, config, everything};
use crate::metrics::{sample, until};
use crate::support::redis::RedisServer;

const KEY: &str = "shared-limits-key-0123456789";

/// A gateway named `instance` sharing `redis`, with the one key `shared` (`key` holds
/// its other settings), recording into a registry of its own.
async fn instance(redis: &RedisServer, name: &str, key: Value) -> (TestGateway, Metrics) {
    let mut entry = json!({"name": "shared", "key": KEY, "servers": "*"});
    entry
        .as_object_mut()
        .unwrap()
        .extend(key.as_object().unwrap().clone());
    let settings = json!({
        "instance": name,
        "store": {"redis": redis.url()},
        "apiKeys": [entry],
    });
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let config = config(json!({"everything": everything()}), settings);
    let gateway = TestGateway::start_with(&config, options).await;
    (gateway, metrics)
}

async fn connect(gateway: &TestGateway) -> Client {
    let (ws, _) = Client::open_with(gateway.addr, &[]).await.expect("upgrade");
    let hello = json!({"type": "hello", "client": {"name": "shared-limits"}, "token": KEY});
    let mut client = Client::greet(ws, hello).await.expect("welcome");
    client.ready("everything").await;
    client
}

/// Sends `ping` number `id` and tells whether the limiter let it through to the server
/// or refused it (`rate_limited`). Through an initialized session the server answers
/// it; without one, the server refuses it (HTTP 400 for a missing session id), which
/// still shows that the gateway carried it.
async fn ping(client: &mut Client, id: u64, initialized: bool) -> bool {
    let answer = client
        .call("everything", json!(id), "ping", json!({}))
        .await;
    let message = &answer["message"];
    match message["error"]["data"]["gateway"].as_str() {
        Some("rate_limited") => false,
        _ if initialized => {
            assert_eq!(message["result"], json!({}), "{answer}");
            true
        }
        gateway => {
            let answered = message["result"].is_object() || gateway == Some("upstream_error");
            assert!(answered, "{answer}");
            true
        }
    }
}

fn fallbacks(metrics: &Metrics, part: &str) -> f64 {
    sample(
        &metrics.render(),
        "mcpmux_store_fallback_total",
        &[("part", part)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn ten_connections_over_two_instances_share_one_rate() {
    const PER_SECOND: f64 = 5.0;
    const BURST: u32 = 20;
    let redis = RedisServer::start();
    let key = json!({"rateLimit": {"perSecond": PER_SECOND, "burst": BURST}});
    let (a, metrics_a) = instance(&redis, "rate-a", key.clone()).await;
    let (b, metrics_b) = instance(&redis, "rate-b", key).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut client = connect(if i % 2 == 0 { &a } else { &b }).await;
        // Each client's MCP session: two frames, 20 in all, within the burst.
        client.initialize("everything").await;
        clients.push(client);
    }

    // Every client pings as fast as it is answered for 3 s. Whatever the bucket held
    // at the start (at most its burst), the key may be granted no more than
    // burst + rate * elapsed pings in all.
    let start = Instant::now();
    let window = std::time::Duration::from_secs(3);
    let runs = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            let mut id = 0;
            while start.elapsed() < window {
                id += 1;
                if ping(&mut client, id, true).await {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
            (i % 2, accepted, refused, client)
        });
    let results = join_all(runs).await;
    let elapsed = start.elapsed().as_secs_f64();
    let accepted: u64 = results.iter().map(|r| r.1).sum();
    let refused_on = |instance: usize| -> u64 {
        results
            .iter()
            .filter(|r| r.0 == instance)
            .map(|r| r.2)
            .sum()
    };
    let bound = f64::from(BURST) + PER_SECOND * elapsed;
    assert!(
        (accepted as f64) <= bound,
        "{accepted} pings accepted in {elapsed:.2} s; the shared bucket allows {bound:.1}"
    );
    // The bucket was about empty after the sessions' first frames, and the clients ask
    // for far more than it gives: it must give about rate * elapsed (0.7 of it leaves
    // room for the time a round trip takes at the edges of the window).
    let floor = 0.7 * PER_SECOND * elapsed;
    assert!(
        (accepted as f64) >= floor,
        "{accepted} pings accepted in {elapsed:.2} s; the shared bucket refills at least {floor:.1}"
    );
    assert!(
        refused_on(0) > 0 && refused_on(1) > 0,
        "both instances refuse"
    );
    // Redis answered throughout: no decision was made in memory.
    assert_eq!(fallbacks(&metrics_a, "rate"), 0.0);
    assert_eq!(fallbacks(&metrics_b, "rate"), 0.0);
    for (_, _, _, client) in results {
        client.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn max_connections_holds_across_instances() {
    let redis = RedisServer::start();
    let key = json!({"maxConnections": 3});
    let (a, _) = instance(&redis, "conns-a", key.clone()).await;
    let (b, _) = instance(&redis, "conns-b", key).await;
    let first = connect(&a).await;
    let _second = connect(&a).await;
    let _third = connect(&b).await;

    // A fourth, on either instance: refused at the upgrade (key in the header) or
    // after hello (key in the token).
    let header = [("x-api-key", KEY)];
    let refused = Client::open_with(b.addr, &header).await.err();
    let (status, body) = refused.expect("a fourth socket is refused");
    assert_eq!(status, 429);
    assert!(body.contains("maxConnections"), "{body}");
    let (ws, _) = Client::open_with(a.addr, &[]).await.expect("upgrade");
    let hello = json!({"type": "hello", "token": KEY});
    match Client::greet(ws, hello).await {
        Err(Ended::Closed(code, reason)) => {
            assert_eq!(code, 4029);
            assert!(reason.contains("maxConnections"), "{reason}");
        }
        Err(other) => panic!("expected close 4029, got {other:?}"),
        Ok(_) => panic!("a fourth socket was welcomed"),
    }

    // One closes on A: its release reaches Redis right after the socket ends, well
    // within a renewal period (which would also correct the count), and B admits one
    // more.
    let mut redis_view = redis.connection().await;
    let field = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("HGET")
                .arg("mcpmux:conns:shared")
                .arg("conns-a")
                .query_async::<Option<u64>>(&mut conn)
                .await
                .expect("HGET")
        }
    };
    assert_eq!(field(&mut redis_view).await, Some(2));
    first.close().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while field(&mut redis_view).await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close was not released in Redis"
        );
        tokio::task::yield_now().await;
    }
    let (ws, _) = Client::open_with(b.addr, &header)
        .await
        .expect("the freed place is given");
    let fourth = Client::greet(ws, json!({"type": "hello"}))
        .await
        .expect("welcome");
    fourth.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn each_instance_falls_back_on_its_own_limits_while_redis_is_stopped() {
    // Two pings now, the next in 100 s: what is accepted counts the buckets exactly.
    let mut redis = RedisServer::start();
    let key = json!({"rateLimit": {"perSecond": 0.01, "burst": 2}});
    let (a, metrics_a) = instance(&redis, "fallback-a", key.clone()).await;
    let (b, metrics_b) = instance(&redis, "fallback-b", key).await;
    let mut on_a = connect(&a).await;
    let mut on_b = connect(&b).await;
    let mut id = 0;
    let mut pings = async |client: &mut Client, n: usize| {
        let mut accepted = 0;
        for _ in 0..n {
            id += 1;
            accepted += usize::from(ping(client, id, false).await);
        }
        accepted
    };

    // Shared: the two tokens go to A, none is left for B.
    assert_eq!(pings(&mut on_a, 3).await, 2);
    assert_eq!(pings(&mut on_b, 1).await, 0);

    // Redis stopped: each instance decides alone, with a full bucket of its own.
    redis.stop();
    let down = |t: &str| sample(t, "mcpmux_store_up", &[]) == Some(0.0);
    until(&metrics_a, "mcpmux_store_up 0 on a", down).await;
    until(&metrics_b, "mcpmux_store_up 0 on b", down).await;
    assert_eq!(pings(&mut on_a, 3).await, 2);
    assert_eq!(pings(&mut on_b, 3).await, 2);
    assert_eq!(fallbacks(&metrics_a, "rate"), 3.0);
    assert_eq!(fallbacks(&metrics_b, "rate"), 3.0);

    // Redis back (empty, nothing was persisted): one shared bucket again.
    redis.start_again();
    let up = |t: &str| sample(t, "mcpmux_store_up", &[]) == Some(1.0);
    until(&metrics_a, "mcpmux_store_up 1 on a", up).await;
    until(&metrics_b, "mcpmux_store_up 1 on b", up).await;
    assert_eq!(pings(&mut on_b, 1).await, 1);
    assert_eq!(pings(&mut on_a, 3).await, 1);
    assert_eq!(pings(&mut on_b, 1).await, 0);
    assert_eq!(fallbacks(&metrics_a, "rate"), 3.0, "shared again");

    on_a.close().await;
    on_b.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_hung_redis_delays_frames_and_upgrades_but_answers_them() {
    let redis = RedisServer::start();
    let key = json!({"rateLimit": {"perSecond": 1000, "burst": 1000}, "maxConnections": 10});
    let (gateway, metrics) = instance(&redis, "hung", key).await;
    let mut client = connect(&gateway).await;
    let header = [("x-api-key", KEY)];

    // SIGSTOP: Redis keeps its sockets and answers nothing. Each decision waits for
    // it at most the call timeout, then is made in memory.
    redis.pause();
    assert!(ping(&mut client, 1, false).await, "a frame is carried");
    let (ws, _) = Client::open_with(gateway.addr, &header)
        .await
        .expect("an upgrade is answered");
    let other = Client::greet(ws, json!({"type": "hello"}))
        .await
        .expect("welcome");
    let down = |t: &str| sample(t, "mcpmux_store_up", &[]) == Some(0.0);
    until(&metrics, "mcpmux_store_up 0", down).await;
    // Known down: decided in memory at once.
    assert!(ping(&mut client, 2, false).await);
    assert!(fallbacks(&metrics, "rate") >= 2.0);
    assert!(fallbacks(&metrics, "connections") >= 1.0);

    redis.resume();
    let up = |t: &str| sample(t, "mcpmux_store_up", &[]) == Some(1.0);
    until(&metrics, "mcpmux_store_up 1", up).await;
    let rate_fallbacks = fallbacks(&metrics, "rate");
    assert!(ping(&mut client, 3, false).await);
    assert_eq!(fallbacks(&metrics, "rate"), rate_fallbacks, "shared again");
    other.close().await;
    client.close().await;
    gateway.shutdown().await;
}
