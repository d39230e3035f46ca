//! Limits that hold: the open-file limit is raised at start, so that it does not cap
//! the gateway far below `maxSessions`, while children keep the one mcpmux was given.

use serde_json::json;

use crate::binary::{Binary, Launch};
use crate::harness::{Client, config, everything};

/// (soft, hard) "Max open files" of `pid`, from /proc/PID/limits.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn a_low_soft_open_file_limit_is_raised_at_start_and_kept_from_children() {
    const LOW: u64 = 256;
    let launch = Launch {
        log_filter: Some("info".into()),
        soft_open_files: Some(LOW),
        ..Launch::default()
    };
    let binary = Binary::launch(
        &config(json!({"everything": everything()}), json!({})),
        launch,
    );
    let (soft, hard) = open_file_limits(binary.child.id());
    assert!(
        hard > LOW,
        "the hard open-file limit ({hard}) must exceed {LOW} for this test to show anything"
    );
    assert_eq!(
        soft, hard,
        "mcpmux runs with its soft limit raised to the hard one"
    );
    let log = binary.log();
    assert!(
        log.contains(&format!(
            "open-file limit raised from {LOW} to {hard}: room for about "
        )),
        "{log}"
    );

    // The child it starts, the guard, gets the limit mcpmux was started with (node, under
    // it, raises its own soft limit as it starts).
    let mut client = Client::connect(binary.addr).await;
    client.ready("everything").await;
    let guard = binary
        .processes()
        .into_iter()
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).nth(1) == Some(b"guard".as_slice())
        })
        .expect("the guard of the server's process group");
    assert_eq!(open_file_limits(guard), (LOW, hard));
}
