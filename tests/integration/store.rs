//! The shared store: a gateway with `gateway.store.redis` pointing at a real
//! redis-server shows whether Redis answers (`mcpmux_store_up`), through an outage and
//! back, and never shows the Redis password.

use mcpmux::Options;
use mcpmux::metrics::Metrics;
use serde_json::json;

use crate::harness::{Client, TestGateway, config, everything};
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
