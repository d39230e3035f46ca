//! Resume routing: session ids name the instance that owns them, and a resuming
//! client names its session in the upgrade URL (`/ws?session=ID`) for load balancers.

use serde_json::{Value, json};

use crate::harness::{Client, Ended, TestGateway, config};

/// A server entry no test uses (a gateway needs one).
fn idle_server() -> Value {
    json!({"idle": {"url": "http://127.0.0.1:9/mcp"}})
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

/// Makes the gateway send one sequenced frame (an `error` for an unknown frame type)
/// and returns its seq.
async fn one_frame(client: &mut Client) -> u64 {
    client.send(json!({"type": "launch"})).await;
    let error = client.wait_for("error", |f| f["type"] == "error").await;
    error["seq"].as_u64().expect("seq")
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
