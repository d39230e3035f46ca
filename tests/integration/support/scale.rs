//! What the scale-out suites share: gateways that share a real redis-server, the
//! stored fields of a client session, a tool call through a moved session, and an
//! instance's drain.

use serde_json::{Value, json};

use crate::binary::{Binary, Launch, kill};
use crate::harness::{Client, Ended, config, everything};
use crate::support::redis::RedisServer;
use crate::support::remote::RemoteEverything;

/// A gateway named `instance` sharing `redis`, serving the remote server-everything
/// as "remote" and a stdio one as "local".
pub fn gateway(instance: &str, redis: &RedisServer, remote: &RemoteEverything) -> Binary {
    gateway_with(instance, redis, remote, json!({}))
}

/// As [`gateway`], with more gateway settings.
pub fn gateway_with(
    instance: &str,
    redis: &RedisServer,
    remote: &RemoteEverything,
    settings: Value,
) -> Binary {
    let servers = json!({
        "remote": {"url": remote.url()},
        "local": everything(),
    });
    gateway_serving(instance, redis, servers, settings)
}

/// A gateway named `instance` sharing `redis`, serving `servers`, with more gateway
/// settings.
pub fn gateway_serving(
    instance: &str,
    redis: &RedisServer,
    servers: Value,
    settings: Value,
) -> Binary {
    let mut gateway = json!({"instance": instance, "store": {"redis": redis.url()}});
    if let (Some(base), Some(extra)) = (gateway.as_object_mut(), settings.as_object()) {
        base.extend(extra.clone());
    }
    Binary::launch(
        &config(servers, gateway),
        Launch {
            log_filter: Some("mcpmux=debug"),
            ..Launch::default()
        },
    )
}

/// One field of session `id`'s hash in Redis.
pub async fn session_field(redis: &RedisServer, id: &str, field: &str) -> Option<String> {
    let mut connection = redis.connection().await;
    redis::cmd("HGET")
        .arg(format!("mcpmux:session:{id}"))
        .arg(field)
        .query_async(&mut connection)
        .await
        .expect("HGET")
}

/// Sets one field of session `id`'s hash in Redis, as another instance would.
pub async fn set_session_field(redis: &RedisServer, id: &str, field: &str, value: &str) {
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("mcpmux:session:{id}"))
        .arg(field)
        .arg(value)
        .query_async(&mut connection)
        .await
        .expect("HSET");
}

/// Calls the `echo` tool of `server` with `message` and checks it answered with a
/// result; returns the response frame.
pub async fn echo(client: &mut Client, server: &str, id: Value, message: &str) -> Value {
    let echo = client
        .call(
            server,
            id,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": message}}),
        )
        .await;
    assert!(echo["message"]["result"].is_object(), "{echo}");
    echo
}

/// Drains `instance` (SIGTERM) and checks it exits cleanly.
pub fn stop(instance: &mut Binary) {
    kill(instance.child.id(), libc::SIGTERM);
    let status = instance.child.wait().expect("mcpmux exits");
    assert!(status.success(), "{status:?}");
}

/// Drains `instance` (SIGTERM), checks it closed `client`'s socket with 1001 (going
/// away), and that it exits cleanly.
pub async fn drain(instance: &mut Binary, client: &mut Client) {
    kill(instance.child.id(), libc::SIGTERM);
    match client.closed().await {
        Ended::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = instance.child.wait().expect("mcpmux exits");
    assert!(status.success(), "{status:?}");
}
