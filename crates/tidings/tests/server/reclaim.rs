//! Reclaiming idle channels: the engine forgets a channel once it has no
//! subscribers, no unexpired history and was quiet for `engine.position_ttl`;
//! its memory is reused, and a reclaimed channel starts a new epoch.
//!
//! Most of these are the in-memory engine's sweep; with the Redis engine, positions
//! and history are Redis keys with TTLs (tested in `cluster`), so the suite
//! skips them when it runs on Redis.

use std::time::{Duration, Instant};

use serde_json::json;
use tidings::config::NamespaceConfig;
use tidings::PublishRequest;

use crate::support::*;

const CH: &str = "workspace:acme";
const QUIET: Duration = Duration::from_millis(300);
const MIB: f64 = 1024.0 * 1024.0;

#[tokio::test]
async fn a_reclaimed_channel_starts_a_new_epoch_and_old_positions_are_not_recovered() {
    if on_redis() {
        return;
    }
    let mut config = config_with_workspace(|ws| ws.history_ttl = Duration::from_millis(200));
    config.engine.position_ttl = Duration::from_millis(300);
    config.engine.sweep_interval = Duration::from_millis(50);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let epoch = client.subscribe(CH).await["epoch"].clone();
    server.publish(CH, "seen", json!(1)).await;
    server.publish(CH, "seen", json!(2)).await;
    assert_eq!(offsets(&client.events_through(2, QUIET).await), [1, 2]);
    client.ws.close(None).await.unwrap();
    drop(client);

    server
        .wait_for_metric("tidings_engine_channels", WAIT, |n| n == 0.0)
        .await;
    let mut back = server.connect_user("u1", &["acme"]).await;
    let reply = back.subscribe_since(CH, 2, &epoch, 1).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(
        reply["epoch"], epoch,
        "a reclaimed channel gets a new epoch"
    );
    assert_eq!(reply["offset"], 0, "offsets start again at 1");
    assert!(back.drain_events(QUIET).await.is_empty());
    server.publish(CH, "again", json!(1)).await;
    let events = back.events_through(1, QUIET).await;
    assert_eq!(offsets(&events), [1]);
    assert_eq!(events[0]["event"], "again");
    let epoch_changed = r#"tidings_recoveries_total{result="failed",reason="epoch_changed"}"#;
    assert_eq!(server.metric(epoch_changed).await, 1.0);
}

#[tokio::test]
async fn a_channel_is_kept_while_subscribed_and_for_position_ttl_after() {
    if on_redis() {
        return;
    }
    const POSITION_TTL: Duration = Duration::from_millis(1000);
    let mut config = config_with_workspace(|ws| ws.history_ttl = Duration::from_millis(100));
    config.engine.position_ttl = POSITION_TTL;
    config.engine.sweep_interval = Duration::from_millis(50);
    let server = TestServer::with_config(config).await;
    let mut first = server.connect_user("u1", &["acme"]).await;
    let epoch = first.subscribe(CH).await["epoch"].clone();
    server.publish(CH, "seen", json!(1)).await;
    assert_eq!(offsets(&first.events_through(1, QUIET).await), [1]);

    // History expired and the last publish is older than position_ttl, but the
    // channel has a subscriber.
    tokio::time::sleep(POSITION_TTL + Duration::from_millis(300)).await;
    assert_eq!(server.metric("tidings_engine_channels").await, 1.0);
    let mut second = server.connect_user("u1", &["acme"]).await;
    let reply = second.subscribe_since(CH, 1, &epoch, 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);

    let closing = Instant::now();
    for mut c in [first, second] {
        c.ws.close(None).await.unwrap();
    }
    server
        .wait_for_metric("tidings_channels", WAIT, |n| n == 0.0)
        .await;
    // position_ttl counts from the last subscriber leaving.
    tokio::time::sleep(POSITION_TTL / 3).await;
    assert_eq!(
        server.metric("tidings_engine_channels").await,
        1.0,
        "reclaimed {:?} after the subscribers closed",
        closing.elapsed()
    );
    server
        .wait_for_metric("tidings_engine_channels", WAIT, |n| n == 0.0)
        .await;
    assert!(closing.elapsed() >= POSITION_TTL, "{:?}", closing.elapsed());
}

/// Publishes one event to each of `count` fresh channels (`load:{round}:{i}`),
/// from a few concurrent tasks.
async fn touch_channels(server: &TestServer, round: u32, count: u32) {
    const TASKS: u32 = 4;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let publisher = server.tidings.publisher();
            tokio::spawn(async move {
                for i in (t..count).step_by(TASKS as usize) {
                    let request = PublishRequest::json(format!("load:{round}:{i}"), "touch", &i);
                    publisher.publish(request.unwrap()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_idle_channels_are_reclaimed_and_their_memory_reused() {
    if on_redis() {
        return;
    }
    const CHANNELS: u32 = 100_000;
    // Long enough that every channel still holds its event when the last one
    // is touched (publishing 100k takes about a second in a debug build, and
    // was seen to take 4.7 s on a machine busy with other builds).
    const HISTORY_TTL: Duration = Duration::from_secs(8);
    let mut config = base_config();
    let load = NamespaceConfig {
        history_ttl: HISTORY_TTL,
        ..NamespaceConfig::default()
    };
    config.namespaces.insert("load".into(), load);
    config.engine.position_ttl = Duration::from_millis(500);
    config.engine.sweep_interval = Duration::from_millis(200);
    let server = TestServer::with_config(config).await;
    let started = Instant::now();

    let mut after = Vec::new();
    let mut peaks = Vec::new();
    for round in 1..=2 {
        let before = rss_bytes();
        let t = Instant::now();
        touch_channels(&server, round, CHANNELS).await;
        let published = t.elapsed();
        let peak = rss_bytes();
        let held = server.metric("tidings_engine_channels").await;
        assert!(
            held >= f64::from(CHANNELS) * 0.95,
            "round {round}: {held} channels held right after touching {CHANNELS} in {published:?}"
        );
        let t = Instant::now();
        server
            .wait_for_metric("tidings_engine_channels", Duration::from_secs(30), |n| {
                n == 0.0
            })
            .await;
        let reclaimed = t.elapsed();
        let rss = rss_bytes();
        eprintln!(
            "round {round}: published to {CHANNELS} channels in {published:?} ({held} held), \
             all reclaimed {reclaimed:?} later; RSS {:.1} MiB before, {:.1} MiB at the peak, \
             {:.1} MiB after",
            before as f64 / MIB,
            peak as f64 / MIB,
            rss as f64 / MIB
        );
        if round == 1 {
            let per_channel = peak.saturating_sub(before) / u64::from(CHANNELS);
            eprintln!("approx bytes per channel with one event: {per_channel}");
        }
        peaks.push(peak);
        after.push(rss);
    }
    assert_eq!(server.metric("tidings_channels").await, 0.0);
    let growth = after[1] as f64 / after[0] as f64;
    eprintln!(
        "RSS after round 2 / after round 1: {growth:.3}; peaks {:.1} / {:.1} MiB; {:?} in all",
        peaks[0] as f64 / MIB,
        peaks[1] as f64 / MIB,
        started.elapsed()
    );
    assert!(
        growth <= 1.25,
        "memory grew from {:.1} MiB to {:.1} MiB across two rounds of {CHANNELS} reclaimed channels",
        after[0] as f64 / MIB,
        after[1] as f64 / MIB
    );
}

/// On either engine, a quiet channel's position outlives its last subscriber
/// by `position_ttl`, however long ago it was published to.
#[tokio::test]
async fn a_quiet_channel_is_resumable_for_position_ttl_after_its_last_subscriber_left() {
    const POSITION_TTL: Duration = Duration::from_millis(2000);
    let channel = "workspace:acme:quiet";
    let mut config = config_with_workspace(|ws| ws.history_ttl = Duration::from_millis(200));
    config.engine.position_ttl = POSITION_TTL;
    config.engine.sweep_interval = Duration::from_millis(50);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let epoch = client.subscribe(channel).await["epoch"].clone();
    server.publish(channel, "seen", json!(1)).await;
    assert_eq!(offsets(&client.events_through(1, QUIET).await), [1]);
    // Most of position_ttl passes after the publish, then the subscriber
    // leaves; then more than position_ttl has passed since the publish, but
    // not since the leave.
    tokio::time::sleep(POSITION_TTL * 3 / 4).await;
    client.ws.close(None).await.unwrap();
    drop(client);
    server
        .wait_for_metric("tidings_channels", WAIT, |n| n == 0.0)
        .await;
    tokio::time::sleep(POSITION_TTL / 2).await;
    let mut back = server.connect_user("u1", &["acme"]).await;
    let reply = back.subscribe_since(channel, 1, &epoch, 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);
}
