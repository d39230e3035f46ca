//! The gateway-wide budget of frames kept for resume (`resumeBudgetBytes`): a client
//! that never acks cannot make the gateway keep more than the budget; its oldest
//! written frames go, and a resume from before them gets a fresh session.

use serde_json::json;

use crate::harness::{Client, TestGateway, config};

#[tokio::test]
async fn a_client_that_never_acks_is_held_to_the_gateway_wide_budget() {
    const BUDGET: usize = 8192;
    // A remote server that is never contacted: the frames here are the gateway's own.
    let gateway = TestGateway::start(&config(
        json!({"remote": {"url": "http://127.0.0.1:9/mcp"}}),
        json!({"resumeBudgetBytes": BUDGET}),
    ))
    .await;
    let mut client = Client::connect(gateway.addr).await;
    let session = client.session_id();
    // Twenty error frames of about 1 KiB each (they echo the frame's `ref`): 20 KiB,
    // far within resumeMaxBytes (8 MiB) but more than twice the budget.
    let padding = "p".repeat(1000);
    for i in 0..20 {
        client
            .send(json!({"type": "launch", "ref": format!("{i}:{padding}")}))
            .await;
    }
    let mut seqs = Vec::new();
    for _ in 0..20 {
        let frame = client.wait_for("error", |f| f["type"] == "error").await;
        seqs.push(frame["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    // One more frame, queued once all twenty were written: its push finds them
    // reclaimable.
    client.send(json!({"type": "launch"})).await;
    client.wait_for("error", |f| f["type"] == "error").await;
    let used = gateway.gateway().resume_bytes_kept();
    assert!(
        used <= BUDGET,
        "{used} bytes kept, over the budget of {BUDGET}"
    );
    assert!(used > 0, "the newest frames are still kept");

    // The client drops; the frames after seq 1 are gone, so resuming from there is
    // refused with a fresh session, never a partial replay.
    drop(client);
    let refused = Client::resume(gateway.addr, &session, 1).await;
    assert_eq!(refused.welcome["resumed"], false, "{}", refused.welcome);
    assert_ne!(refused.welcome["session"], session.as_str());
    drop(refused);
    gateway.shutdown().await;
}
