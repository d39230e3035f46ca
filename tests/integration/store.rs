//! The shared store: a gateway with `gateway.store.redis` pointing at a real
//! redis-server shows whether Redis answers (`mcpmux_store_up`), through an outage and
//! back; the binary logs each outage once, and never the Redis password; two running
//! gateways cannot share an instance name.

use mcpmux::Options;
use mcpmux::metrics::Metrics;
use serde_json::json;

use crate::binary::{Binary, Launch};
use crate::harness::{Client, FRAME_WAIT, TestGateway, config, everything};
use crate::metrics::{sample, until};
use crate::support::redis::RedisServer;

async fn gateway_on(redis: &RedisServer, instance: &str) -> (TestGateway, Metrics) {
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let settings = json!({"instance": instance, "store": {"redis": redis.url()}});
    let gateway = TestGateway::start_with(
        &config(json!({"everything": everything()}), settings),
        options,
    )
    .await;
    (gateway, metrics)
}

fn store_up(text: &str) -> Option<f64> {
    sample(text, "mcpmux_store_up", &[])
}

#[tokio::test]
async fn store_up_follows_redis_through_an_outage() {
    let mut redis = RedisServer::start_with_password("store-pass-0451");
    let (gateway, metrics) = gateway_on(&redis, "store-a").await;
    // Start-up waited for the first answer.
    assert_eq!(store_up(&metrics.render()), Some(1.0));
    let mut client = Client::connect(gateway.addr).await;
    client.ready("everything").await;

    redis.stop();
    until(&metrics, "mcpmux_store_up 0", |t| store_up(t) == Some(0.0)).await;
    // The gateway goes on serving.
    let mut other = Client::connect(gateway.addr).await;
    other.ready("everything").await;

    redis.start_again();
    let text = until(&metrics, "mcpmux_store_up 1", |t| store_up(t) == Some(1.0)).await;
    assert!(!text.contains("store-pass-0451"));
    client.close().await;
    other.close().await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn without_a_store_the_memory_store_is_up() {
    let metrics = Metrics::new();
    let options = Options {
        metrics: Some(metrics.clone()),
        ..Options::default()
    };
    let gateway = TestGateway::start_with(
        &config(json!({"everything": everything()}), json!({})),
        options,
    )
    .await;
    assert_eq!(store_up(&metrics.render()), Some(1.0));
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_binary_logs_each_outage_once_and_never_the_password() {
    const PASSWORD: &str = "outage-pass-7781";
    let mut redis = RedisServer::start_with_password(PASSWORD);
    let settings = json!({"instance": "logged", "store": {"redis": redis.url()}});
    let launch = Launch {
        log_filter: Some("info"),
        ..Launch::default()
    };
    let config = config(json!({"everything": everything()}), settings);
    let binary = Binary::launch(&config, launch);
    binary
        .log_line(&["mcpmux listening", "logged"], FRAME_WAIT)
        .await;
    binary
        .log_line(&["connected to the shared store"], FRAME_WAIT)
        .await;
    let shown = format!("redis://***@127.0.0.1:{}", redis.port());
    for outage in 1..=2 {
        redis.stop();
        let log = lines_of(&binary, "does not answer", outage).await;
        let warning = log.lines().rfind(|l| l.contains("does not answer"));
        assert!(
            warning.is_some_and(|w| w.contains("WARN") && w.contains(&shown)),
            "{log}"
        );
        redis.start_again();
        let log = lines_of(&binary, "answers again", outage).await;
        // One warning per outage, though the probe failed several times in each.
        assert_eq!(log.matches("does not answer").count(), outage, "{log}");
    }
    assert!(!binary.log().contains(PASSWORD));
}

/// Waits until the binary's log holds `count` lines containing `needle`; returns the log.
async fn lines_of(binary: &Binary, needle: &str, count: usize) -> String {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let log = binary.log();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} lines with {needle:?}:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_gateway_with_a_taken_instance_name_is_refused() {
    let redis = RedisServer::start();
    let (first, _) = gateway_on(&redis, "twin").await;
    let settings = json!({"instance": "twin", "store": {"redis": redis.url()}});
    let config = mcpmux::Config::parse(
        &config(json!({"everything": everything()}), settings.clone()).to_string(),
        "test config",
        &|_| None,
    )
    .expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = mcpmux::Gateway::start_with(config, listener, Options::default()).await;
    match refused {
        Err(err) => {
            let text = err.to_string();
            assert!(
                text.contains("instance name \"twin\"") && text.contains("gateway.instance"),
                "{text}"
            );
        }
        Ok(_) => panic!("a second gateway named twin started"),
    }

    // Once the first has left (its lease removed), the name is free at once.
    first.shutdown().await;
    let (again, _) = gateway_on(&redis, "twin").await;
    again.shutdown().await;
}

#[test]
fn check_config_shows_the_instance_and_the_store_without_its_password() {
    const PASSWORD: &str = "check-pass-3307";
    let settings = json!({
        "instance": "checked-1",
        "store": {"redis": format!("redis://:{PASSWORD}@127.0.0.1:6390/2")},
    });
    let dir = crate::binary::TempDir::new();
    let path = dir.0.join("mcpmux.json");
    let config = config(json!({"everything": everything()}), settings);
    std::fs::write(&path, config.to_string()).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcpmux"))
        .args(["check-config", path.to_str().expect("utf-8 path")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("check-config runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("instance: checked-1"), "{text}");
    assert!(
        text.contains("store: redis://***@127.0.0.1:6390/2"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}
