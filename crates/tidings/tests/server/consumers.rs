//! Consumers as the server shows them: `/health`.

use std::time::Duration;

use serde_json::Value;
use tidings::consumers::{ConsumerConfig, ConsumerSet};
use tidings::Tidings;

use crate::support::*;

/// `/health` lists each consumer with whether its source answers: a consumer
/// whose Redis is gone makes the node `degraded` (still 200), as an
/// unreachable engine does.
#[tokio::test]
async fn health_lists_the_consumers_and_is_degraded_while_a_source_is_down() {
    let redis = RedisServer::start().await;
    let nothing_there = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = base_config();
    config.consumers = vec![
        ConsumerConfig {
            name: "bus".into(),
            redis_url: Some(redis.url()),
            streams: vec!["app-events".into()],
            block: Duration::from_millis(100),
            ..Default::default()
        },
        ConsumerConfig {
            name: "gone".into(),
            redis_url: Some(format!("redis://127.0.0.1:{nothing_there}/0")),
            streams: vec!["app-events".into()],
            block: Duration::from_millis(100),
            ..Default::default()
        },
    ];
    let tidings = Tidings::new(config).expect("valid test config");
    let consumers = ConsumerSet::start(&tidings);
    let server = TestServer::with_tidings(tidings).await;
    let source_up = |health: &Value, name: &str| {
        health["consumers"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == name))
            .map(|c| c["source_up"].clone())
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let health = loop {
        let (status, health) = server.api_get("/health").await;
        assert_eq!(status, 200);
        let checked = source_up(&health, "bus") == Some(Value::Bool(true))
            && source_up(&health, "gone") == Some(Value::Bool(false));
        if checked {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never both checked: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["engine"]["available"], true, "{health}");
    let bus = &health["consumers"][0];
    assert_eq!(
        (&bus["kind"], &bus["lag"]),
        (&Value::from("redis_stream"), &Value::from(0))
    );
    consumers.stop(WAIT).await;
}

/// Without consumers, `/health` has no `consumers` field.
#[tokio::test]
async fn health_without_consumers_is_as_before() {
    let server = TestServer::start().await;
    let (_, health) = server.api_get("/health").await;
    assert!(health.get("consumers").is_none(), "{health}");
    assert_eq!(health["status"], "ok");
}
