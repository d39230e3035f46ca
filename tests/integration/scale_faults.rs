//! Upstream sessions that move between instances, at their edges: two real `mcpmux`
//! binaries share a real redis-server, and the real server-everything runs as a remote
//! server (Streamable HTTP) reachable from both. The owner of a client session is
//! killed (SIGKILL); the session is resumed on the other instance.
//!
//! - Adopted upstream sessions count against `maxUpstreamSessions` on the instance
//!   that takes the session.

use serde_json::json;

use crate::binary::kill;
use crate::harness::Client;
use crate::scale_sessions::gateway_serving;
use crate::support::redis::RedisServer;
use crate::support::remote::RemoteEverything;

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
    let echo = client
        .call(
            "remote",
            json!("echo"),
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "adopted"}}),
        )
        .await;
    assert!(echo["message"]["result"].is_object(), "{echo}");
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
