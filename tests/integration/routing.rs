//! Resume routing through a stock load balancer: real nginx, configured as the
//! deployment guide says, in front of several real gateways without a store. New
//! connections spread over the instances; a resume that names its session in the
//! upgrade URL lands on the instance that owns it, every time; a resume whose owner is
//! gone reaches another instance and gets a fresh session.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::root;
use crate::harness::{Client, Ended, TestGateway, config, everything, progress_values};
use crate::support::nginx::{Instance, Nginx, render, template};

/// A server entry no test uses (a gateway needs one).
fn idle_server() -> Value {
    json!({"idle": {"url": "http://127.0.0.1:9/mcp"}})
}

/// Gateways named `names`, each with `servers`, and nginx in front of them.
async fn fleet(names: &[&str], servers: &Value) -> (Vec<TestGateway>, Nginx) {
    let mut gateways = Vec::new();
    let mut instances = Vec::new();
    for name in names {
        let gateway = TestGateway::start(&config(servers.clone(), json!({"instance": name}))).await;
        instances.push(Instance::new(name, gateway.addr));
        gateways.push(gateway);
    }
    let nginx = Nginx::start(&instances);
    (gateways, nginx)
}

/// The instance a session id names, checking the id's whole form.
fn owner(session: &str) -> &str {
    let (instance, random) = session.split_once('.').expect("<instance>.<hex>");
    assert!(
        random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
        "{session}"
    );
    instance
}

/// Opens a session through nginx (no `?session=`).
async fn connect(nginx: &Nginx) -> Client {
    let hello = json!({"type": "hello", "client": {"name": "routing-tests"}});
    Client::greet(Client::raw_url(&nginx.ws_url(None)).await, hello)
        .await
        .unwrap_or_else(|e| panic!("no welcome: {e:?}\n{}", nginx.error_log()))
}

/// Resumes `session` after `last_seq` through nginx, naming it in the URL as the
/// clients do.
async fn resume(nginx: &Nginx, session: &str, last_seq: u64) -> Client {
    let hello = json!({"type": "hello", "resume": {"session": session, "last_seq": last_seq}});
    Client::greet(Client::raw_url(&nginx.ws_url(Some(session))).await, hello)
        .await
        .unwrap_or_else(|e| panic!("no welcome: {e:?}\n{}", nginx.error_log()))
}

/// Makes the gateway send one sequenced frame (an `error` for an unknown frame type)
/// and returns its seq.
async fn one_frame(client: &mut Client) -> u64 {
    client.send(json!({"type": "launch"})).await;
    let error = client.wait_for("error", |f| f["type"] == "error").await;
    error["seq"].as_u64().expect("seq")
}

#[tokio::test]
async fn new_connections_spread_over_every_instance() {
    let names = ["gw-a", "gw-b", "gw-c"];
    let (gateways, nginx) = fleet(&names, &idle_server()).await;
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    let mut clients = Vec::new();
    for _ in 0..9 {
        let client = connect(&nginx).await;
        *per_instance
            .entry(owner(&client.session_id()).to_owned())
            .or_default() += 1;
        clients.push(client);
    }
    let seen: Vec<&str> = per_instance.keys().map(String::as_str).collect();
    assert_eq!(seen, names, "sessions per instance: {per_instance:?}");
    for client in clients {
        client.close().await;
    }
    for gateway in gateways {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn every_resume_through_nginx_lands_on_its_owner() {
    let (gateways, nginx) = fleet(&["gw-a", "gw-b", "gw-c"], &idle_server()).await;
    // Sessions on every instance (round robin), each resumed over and over: a resume
    // that reached any other instance would get `resumed: false`.
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let mut client = connect(&nginx).await;
        let seen = one_frame(&mut client).await;
        sessions.push((client.session_id(), seen, client));
    }
    let owners: std::collections::BTreeSet<String> = sessions
        .iter()
        .map(|(id, ..)| owner(id).to_owned())
        .collect();
    assert_eq!(owners.len(), 3, "sessions on every instance: {owners:?}");
    // Round robin alone would put some resumes on their owner by chance, never two
    // resumes of one session in a row: each session is resumed twice per round.
    for round in 0..6 {
        let mut next = Vec::new();
        for (id, mut seen, mut client) in sessions {
            for _ in 0..2 {
                // A frame the client will not have read when its socket drops.
                let missed = one_frame(&mut client).await;
                assert_eq!(missed, seen + 1);
                drop(client);
                client = resume(&nginx, &id, seen).await;
                assert_eq!(
                    client.welcome["resumed"], true,
                    "round {round}, {id}: {}",
                    client.welcome
                );
                assert_eq!(client.welcome["session"], id.as_str());
                // Exactly the frame after `seen`, then nothing else of the past.
                let replayed = client.wait_for("error", |f| f["type"] == "error").await;
                assert_eq!(replayed["seq"], missed, "{replayed}");
                seen = one_frame(&mut client).await;
                assert_eq!(seen, missed + 1, "no frame replayed twice");
            }
            next.push((id, seen, client));
        }
        sessions = next;
    }
    for (_, _, client) in sessions {
        client.close().await;
    }
    for gateway in gateways {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_call_resumed_through_nginx_completes_on_its_owner() {
    let servers = json!({"everything": everything()});
    let (gateways, nginx) = fleet(&["gw-a", "gw-b"], &servers).await;
    let mut client = connect(&nginx).await;
    let session = client.session_id();
    client.initialize("everything").await;
    let id = json!("through-nginx");
    client
        .start_long_operation("everything", &id, 2, 40, "nginx-40")
        .await;
    let mut before = Vec::new();
    while progress_values(&before, "nginx-40").len() < 5 {
        before.push(client.next().await);
    }
    let last_seq = before.last().and_then(|f| f["seq"].as_u64()).expect("seq");
    drop(client);

    let mut resumed = resume(&nginx, &session, last_seq).await;
    assert_eq!(resumed.welcome["resumed"], true, "{}", resumed.welcome);
    let mut after = Vec::new();
    loop {
        let frame = resumed.next().await;
        let done = crate::harness::is_response(&frame, "everything", &id);
        after.push(frame);
        if done {
            break;
        }
    }
    let seqs: Vec<u64> = after.iter().filter_map(|f| f["seq"].as_u64()).collect();
    let expected: Vec<u64> = (last_seq + 1..=last_seq + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every frame after last_seq, in order");
    let mut progress = progress_values(&before, "nginx-40");
    progress.extend(progress_values(&after, "nginx-40"));
    // Each once, in order (mcp-proxy may drop the last one before the result).
    let counted: Vec<u64> = (1..=progress.len() as u64).collect();
    assert_eq!(progress, counted, "each once, in order");
    assert!(progress.len() >= 39, "{progress:?}");
    resumed.close().await;
    for gateway in gateways {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_resume_whose_owner_is_gone_gets_a_fresh_session_elsewhere() {
    let (mut gateways, nginx) = fleet(&["gw-a", "gw-b", "gw-c"], &idle_server()).await;
    // Sessions of gw-b, opened on it directly; their sockets drop, so they are held.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(gateways[1].addr).await;
        assert_eq!(owner(&client.session_id()), "gw-b");
        let seq = one_frame(&mut client).await;
        held.push((client.session_id(), seq));
    }
    let gone = gateways.remove(1);
    let gone_addr = gone.addr;
    gone.shutdown().await;
    for (id, seq) in held {
        let mut landed = resume(&nginx, &id, seq).await;
        assert_eq!(landed.welcome["resumed"], false, "{}", landed.welcome);
        let fresh = landed.session_id();
        assert_ne!(fresh, id);
        assert!(
            ["gw-a", "gw-c"].contains(&owner(&fresh)),
            "a fresh session on a live instance: {fresh}"
        );
        // The fresh session works.
        one_frame(&mut landed).await;
        landed.close().await;
    }
    // nginx tried the owner first, and went on to another instance.
    let log = nginx.error_log();
    assert!(
        log.contains("connect() failed") && log.contains(&gone_addr.to_string()),
        "{log}"
    );
    for gateway in gateways {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_hello_that_resumes_another_session_than_the_url_names_is_refused() {
    let gateway = TestGateway::start(&config(idle_server(), json!({"instance": "solo"}))).await;
    let mut client = Client::connect(gateway.addr).await;
    let session = client.session_id();
    let seq = one_frame(&mut client).await;
    drop(client);

    let elsewhere = "solo.0123456789abcdef0123456789abcdef";
    let url = format!("ws://{}/ws?session={elsewhere}", gateway.addr);
    let hello = json!({"type": "hello", "resume": {"session": session, "last_seq": seq}});
    match Client::greet(Client::raw_url(&url).await, hello).await {
        Err(Ended::Closed(code, reason)) => {
            assert_eq!(code, 4500);
            assert!(reason.contains("?session="), "{reason}");
        }
        Ok(client) => panic!("welcomed: {}", client.welcome),
        Err(other) => panic!("{other:?}"),
    }
    // The session the hello named was left alone: it resumes, with the same id in both.
    let url = format!("ws://{}/ws?session={session}&client=tests", gateway.addr);
    let hello = json!({"type": "hello", "resume": {"session": session, "last_seq": seq}});
    let resumed = Client::greet(Client::raw_url(&url).await, hello)
        .await
        .expect("welcome");
    assert_eq!(resumed.welcome["resumed"], true, "{}", resumed.welcome);
    // A URL that names a session, with a hello that resumes none: a fresh session.
    let url = format!("ws://{}/ws?session={session}", gateway.addr);
    let fresh = Client::greet(Client::raw_url(&url).await, json!({"type": "hello"}))
        .await
        .expect("welcome");
    assert_eq!(fresh.welcome["resumed"], false);
    assert_ne!(fresh.session_id(), session);
    resumed.close().await;
    fresh.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_resume_of_another_instances_session_gets_a_fresh_one() {
    let gateway = TestGateway::start(&config(idle_server(), json!({"instance": "here"}))).await;
    let theirs = "there.0123456789abcdef0123456789abcdef";
    let url = format!("ws://{}/ws?session={theirs}", gateway.addr);
    let hello = json!({"type": "hello", "resume": {"session": theirs, "last_seq": 0}});
    let client = Client::greet(Client::raw_url(&url).await, hello)
        .await
        .expect("welcome");
    assert_eq!(client.welcome["resumed"], false);
    assert_eq!(owner(&client.session_id()), "here");
    client.close().await;
    gateway.shutdown().await;
}

#[test]
fn the_guide_shows_the_tested_nginx_configuration_rendered() {
    let guide = std::fs::read_to_string(root().join("docs/deployment.md")).expect("guide");
    let marker = "<!-- rendered from docs/deploy/nginx.conf.template -->\n```nginx\n";
    let start = guide.find(marker).expect("the rendered block") + marker.len();
    let shown = &guide[start..start + guide[start..].find("```").expect("block end")];
    let instances = [
        Instance::new("mcpmux-0", "10.0.0.10:7300".parse().unwrap()),
        Instance::new("mcpmux-1", "10.0.0.11:7300".parse().unwrap()),
    ];
    assert_eq!(shown, render(&template(), "80", &instances));
}
