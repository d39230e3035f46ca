//! Sessions that outlive their instance: two real `mcpmux` binaries share a real
//! redis-server; a remote server (the real server-everything over Streamable HTTP)
//! is reachable from both, and each runs its own stdio server-everything. A client's
//! instance is killed (SIGKILL) or drained (SIGTERM) after the client read part of a
//! stream of notifications; the client resumes on the other instance and gets every
//! frame after its `last_seq` once, in order, goes on in the SAME upstream session with
//! the remote server (the server saw one initialize, and no DELETE), and is told its
//! stdio upstream session was lost.

use std::time::Duration;

use serde_json::{Value, json};

use crate::binary::kill;
use crate::harness::Client;
use crate::support::nginx::{Instance, Nginx};
use crate::support::redis::RedisServer;
use crate::support::remote::RemoteEverything;
use crate::support::scale::{
    drain, echo, gateway, gateway_with, session_field, set_session_field, stop,
};

/// What the client had when its instance went away: its session, the seq it resumes
/// after, and the frames after it, which it must get again exactly.
struct Cut {
    session: String,
    last_seq: u64,
    missed: Vec<Value>,
}

/// Opens a session on `addr` with both servers, runs a stream of 20 progress
/// notifications from the remote server to its response, and keeps only the frames up
/// to the 5th notification as processed.
async fn stream_then_cut(addr: std::net::SocketAddr) -> (Client, Cut) {
    let mut client = Client::connect(addr).await;
    client.initialize("remote").await;
    client.initialize("local").await;
    let id = json!("stream");
    client
        .start_long_operation("remote", &id, 1, 20, "t1")
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = client.next().await;
        let done = crate::harness::is_response(&frame, "remote", &id);
        if frame.get("seq").is_some() {
            frames.push(frame);
        }
        if done {
            break;
        }
    }
    let progress: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f["message"]["method"] == "notifications/progress")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(progress.len(), 20, "{frames:?}");
    let cut_at = progress[4];
    let last_seq = frames[cut_at]["seq"].as_u64().expect("seq");
    let missed = frames.split_off(cut_at + 1);
    let session = client.session_id();
    (
        client,
        Cut {
            session,
            last_seq,
            missed,
        },
    )
}

/// Resumes `cut` at `url` (an instance other than the session's owner, or a balancer
/// in front of several) and checks what a moved session promises.
async fn resume_elsewhere(url: &str, cut: &Cut, remote: &RemoteEverything) {
    let hello =
        json!({"type": "hello", "resume": {"session": cut.session, "last_seq": cut.last_seq}});
    let mut client = Client::greet(Client::raw_url(url).await, hello)
        .await
        .unwrap_or_else(|e| panic!("no welcome: {e:?}"));
    assert_eq!(client.welcome["resumed"], true, "{}", client.welcome);
    assert_eq!(client.welcome["session"], cut.session.as_str());
    // Every missed frame, once, in order, with its original seq.
    for expected in &cut.missed {
        let frame = client.next().await;
        assert_eq!(&frame, expected);
    }
    // Then the stdio server's upstream session: lost with the instance.
    let lost = client.session_state("lost").await;
    assert_eq!(lost["server"], "local");
    assert_eq!(lost["reason"], "the instance that ran it stopped");
    let last = cut.missed.last().expect("missed frames")["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        lost["seq"].as_u64(),
        Some(last + 1),
        "seqs go on contiguously"
    );
    // The remote upstream session goes on, adopted by its id: no new initialize.
    let echo = echo(&mut client, "remote", json!("after"), "still here").await;
    assert!(
        echo["message"]["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("still here")),
        "{echo}"
    );
    assert_eq!(remote.initialized(), 1, "{}", remote.log());
    assert_eq!(remote.deleted(), 0, "{}", remote.log());
    assert!(
        client
            .take_buffered(|f| f["type"] == "session" && f["server"] == "remote")
            .is_empty()
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_instance_was_killed_resumes_on_another_with_every_frame() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let a = gateway("inst-a", &redis, &remote);
    let b = gateway("inst-b", &redis, &remote);
    let (client, cut) = stream_then_cut(a.addr).await;
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    // At once, as a balancer fails over: the dead owner's lease is still alive.
    resume_elsewhere(&format!("ws://{}/ws", b.addr), &cut, &remote).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_socket_queue_is_taken_over_whole() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    // The 15 missed frames alone are several times the queue's size.
    let small = json!({"outboundQueueBytes": 256});
    let a = gateway_with("inst-i", &redis, &remote, small.clone());
    let b = gateway_with("inst-j", &redis, &remote, small);
    let (client, cut) = stream_then_cut(a.addr).await;
    let replay: usize = cut.missed.iter().map(|f| f.to_string().len()).sum();
    assert!(replay > 256, "replay of {replay} bytes");
    kill(a.child.id(), libc::SIGKILL);
    drop(client);
    resume_elsewhere(&format!("ws://{}/ws", b.addr), &cut, &remote).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_hands_its_sessions_over() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let mut a = gateway("inst-c", &redis, &remote);
    let b = gateway("inst-d", &redis, &remote);
    let (mut client, cut) = stream_then_cut(a.addr).await;
    drain(&mut a, &mut client).await;
    // Released on the drain: no lease to wait for.
    resume_elsewhere(&format!("ws://{}/ws", b.addr), &cut, &remote).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_sent_to_another_instance_leaves_a_live_owner_alone() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let a = gateway("inst-e", &redis, &remote);
    let b = gateway("inst-f", &redis, &remote);
    let mut owner = Client::connect(a.addr).await;
    owner.initialize("remote").await;
    let session = owner.session_id();
    let elsewhere = Client::resume(b.addr, &session, 0).await;
    assert_eq!(elsewhere.welcome["resumed"], false);
    assert_ne!(elsewhere.welcome["session"], session.as_str());
    // The owner's session is untouched: it goes on working.
    echo(&mut owner, "remote", json!(2), "mine").await;
    let owner_now = session_field(&redis, &session, "owner")
        .await
        .expect("an owner");
    assert!(
        owner_now.starts_with("inst-e/"),
        "the store still names the live owner (its process): {owner_now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_a_killed_owners_session_resumes_on_the_other_instance() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let gateways = [
        gateway("inst-g", &redis, &remote),
        gateway("inst-h", &redis, &remote),
    ];
    let instances: Vec<Instance> = [("inst-g", &gateways[0]), ("inst-h", &gateways[1])]
        .iter()
        .map(|(name, g)| Instance::new(name, g.addr))
        .collect();
    let nginx = Nginx::start(&instances);
    let (client, cut) = stream_then_cut(nginx.addr).await;
    // The session id names its owner; nginx sent the new connection to one of them.
    let owner = cut
        .session
        .split_once('.')
        .expect("instance.hex")
        .0
        .to_owned();
    let killed = if owner == "inst-g" { 0 } else { 1 };
    assert!(["inst-g", "inst-h"].contains(&owner.as_str()), "{owner}");
    kill(gateways[killed].child.id(), libc::SIGKILL);
    drop(client);
    // The resume names its session in the URL: nginx tries the dead owner first, then
    // the other instance, which takes the session over.
    resume_elsewhere(&nginx.ws_url(Some(&cut.session)), &cut, &remote).await;
    let survivor = &gateways[1 - killed];
    survivor
        .log_line(
            &["client session taken over from another instance"],
            Duration::from_secs(5),
        )
        .await;
    // nginx logs the owner it routed by, never the session id.
    let log = nginx.access_log();
    let secret = cut.session.split_once('.').expect("instance.hex").1;
    assert!(!log.contains(secret), "{log}");
    assert!(log.contains(&format!("owner={owner}")), "{log}");
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_writes_nothing_more_of_a_session_another_took() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let mut a = gateway("inst-k", &redis, &remote);
    let mut client = Client::connect(a.addr).await;
    client.initialize("local").await;
    let session = client.session_id();
    let seq = session_field(&redis, &session, "seq").await;
    assert!(seq.is_some(), "the session's frames are stored");
    // Another instance takes the session over (as its take script would).
    set_session_field(&redis, &session, "owner", "inst-z").await;
    // Frames made on the former owner still reach its socket, but not the store.
    echo(&mut client, "local", json!("late"), "late").await;
    assert_eq!(session_field(&redis, &session, "seq").await, seq);
    // Nor does its drain release the session the other instance holds.
    stop(&mut a);
    assert_eq!(
        session_field(&redis, &session, "owner").await.as_deref(),
        Some("inst-z")
    );
    assert_eq!(session_field(&redis, &session, "seq").await, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stores_the_count_of_client_frames_read_last() {
    let redis = RedisServer::start();
    let remote = RemoteEverything::start();
    let mut a = gateway("inst-l", &redis, &remote);
    let (mut client, cut) = stream_then_cut(a.addr).await;
    // Stored with the stream's last frame: every client frame sent so far.
    let before: u64 = session_field(&redis, &cut.session, "received")
        .await
        .and_then(|v| v.parse().ok())
        .expect("received stored");
    // One more client frame, answered outside the sequence (nothing stored for it).
    client.send(json!({"type": "ping"})).await;
    client.wait_for("pong", |f| f["type"] == "pong").await;
    stop(&mut a);
    assert_eq!(
        session_field(&redis, &cut.session, "received").await,
        Some((before + 1).to_string())
    );
}
