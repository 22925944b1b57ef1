//! `history` and `subscribe` with `since`: the recovery guarantees of protocol
//! §5 (all missed events once and in order, or `recovered: false` and none),
//! including resubscribing while events keep arriving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::PublishRequest;

use crate::support::*;

#[tokio::test]
async fn history_returns_events_in_order_with_limit_and_since() {
    let server = TestServer::start().await;
    for i in 1..=5 {
        server.publish("workspace:acme", "tick", json!(i)).await;
    }
    let mut client = server.connect_user("u1", &["acme"]).await;
    let all = client
        .request(json!({"type": "history", "channel": "workspace:acme"}), 1)
        .await;
    assert_eq!(all["type"], "history");
    assert_eq!(all["offset"], 5);
    let offsets: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert_eq!(all["events"][0]["type"], "event");
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    let page = client
        .request(json!({"type": "history", "channel": "workspace:acme", "since": {"offset": 2, "epoch": epoch}, "limit": 2}), 2)
        .await;
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4]);
    let denied = client
        .request(json!({"type": "history", "channel": "workspace:globex"}), 3)
        .await;
    assert_eq!(denied["code"], "permission_denied");
}

#[tokio::test]
async fn history_limit_counts_the_events_the_reader_may_see() {
    let server = TestServer::start().await;
    for i in 1..=9 {
        let mut body = json!({"channel": "workspace:acme", "event": "tick", "data": i});
        if i == 7 || i == 9 {
            body["audience"] = json!({"users": ["u2"]});
        }
        assert_eq!(server.api("/api/publish", body).await.0, 200);
    }
    let mut client = server.connect_user("u1", &["acme"]).await;
    let offsets = |reply: &Value| -> Vec<u64> {
        reply["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect()
    };
    let newest = client
        .request(
            json!({"type": "history", "channel": "workspace:acme", "order": "newest", "limit": 2}),
            1,
        )
        .await;
    assert_eq!(offsets(&newest), [8, 6], "{newest}");
    let epoch = newest["epoch"].as_str().unwrap().to_owned();
    let page = client
        .request(json!({"type": "history", "channel": "workspace:acme", "since": {"offset": 5, "epoch": epoch}, "limit": 2}), 2)
        .await;
    assert_eq!(offsets(&page), [6, 8], "{page}");
    // `null` fields are absent ones: oldest first, no limit.
    let nulls = client
        .request(json!({"type": "history", "channel": "workspace:acme", "since": {"offset": 5, "epoch": epoch},
            "limit": null, "order": null}), 4)
        .await;
    assert_eq!(offsets(&nulls)[..2], [6, 8], "{nulls}");
    let u2 = server
        .connect_user("u2", &["acme"])
        .await
        .request(
            json!({"type": "history", "channel": "workspace:acme", "order": "newest", "limit": 2}),
            3,
        )
        .await;
    assert_eq!(offsets(&u2), [9, 8], "{u2}");
}

#[tokio::test]
async fn resubscribe_with_since_recovers_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe("workspace:acme").await;
    server.publish("workspace:acme", "seen", json!(1)).await;
    assert_eq!(client.expect("event").await["offset"], 1);
    drop(client);

    for i in 2..=4 {
        server.publish("workspace:acme", "missed", json!(i)).await;
    }
    let mut again = server.connect_user("u1", &["acme"]).await;
    let since = json!({"offset": 1, "epoch": first["epoch"]});
    let reply = again
        .request(
            json!({"type": "subscribe", "channel": "workspace:acme", "since": since}),
            7,
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 4);
    server.publish("workspace:acme", "live", json!(5)).await;
    let events = again.drain_events(Duration::from_millis(300)).await;
    let seen: Vec<(u64, &str)> = events
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [(2, "missed"), (3, "missed"), (4, "missed"), (5, "live")]
    );
}

#[tokio::test]
async fn wrong_epoch_or_trimmed_history_is_not_recovered() {
    let mut config = base_config();
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .unwrap();
    workspace.history_size = 3;
    config.namespaces.insert("workspace".into(), workspace);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe("workspace:acme").await;
    for i in 1..=6 {
        server.publish("workspace:acme", "e", json!(i)).await;
    }
    let mut other = server.connect_user("u1", &["acme"]).await;
    let wrong = other
        .request(json!({"type": "subscribe", "channel": "workspace:acme", "since": {"offset": 5, "epoch": "not-the-epoch"}}), 1)
        .await;
    assert_eq!(wrong["recovered"], false);
    let mut third = server.connect_user("u1", &["acme"]).await;
    let trimmed = third
        .request(json!({"type": "subscribe", "channel": "workspace:acme", "since": {"offset": 1, "epoch": first["epoch"]}}), 2)
        .await;
    assert_eq!(trimmed["recovered"], false, "events 2 and 3 were trimmed");
    for c in [&mut other, &mut third] {
        assert!(
            c.drain_events(Duration::from_millis(200)).await.is_empty(),
            "no partial replay"
        );
    }
}

const CH: &str = "workspace:acme";
/// How long to listen for events that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// The value of one `tidings_recoveries_total` series.
async fn recoveries(server: &TestServer, labels: &str) -> f64 {
    server
        .metric(&format!("tidings_recoveries_total{{{labels}}}"))
        .await
}

#[tokio::test]
async fn fifty_missed_events_are_replayed_once_in_order_before_live_ones() {
    const MISSED: u64 = 50;
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe(CH).await;
    server.publish(CH, "seen", json!(0)).await;
    assert_eq!(client.expect("event").await["offset"], 1);
    drop(client);

    for i in 1..=MISSED {
        server.publish(CH, "missed", json!(i)).await;
    }
    let mut again = server.connect_user("u1", &["acme"]).await;
    let reply = again.subscribe_since(CH, 1, &first["epoch"], 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], first["epoch"]);
    assert_eq!(reply["offset"], 1 + MISSED);
    // Live events published right away must queue up behind the replay.
    for i in 1..=3 {
        server.publish(CH, "live", json!(i)).await;
    }
    let events = again.events_through(1 + MISSED + 3, QUIET).await;
    let seen: Vec<(u64, &str, &Value)> = events
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["event"].as_str().unwrap(),
                &e["data"],
            )
        })
        .collect();
    let data: Vec<Value> = (1..=MISSED).chain(1..=3).map(|i| json!(i)).collect();
    let expected: Vec<(u64, &str, &Value)> = (2..=1 + MISSED + 3)
        .zip(data.iter())
        .map(|(offset, data)| {
            let name = if offset <= 1 + MISSED {
                "missed"
            } else {
                "live"
            };
            (offset, name, data)
        })
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(recoveries(&server, r#"result="recovered""#).await, 1.0);
}

#[tokio::test]
async fn wrong_epoch_or_offset_ahead_replays_nothing_but_live_events_flow() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe(CH).await;
    for i in 1..=3 {
        server.publish(CH, "seen", json!(i)).await;
    }
    assert_eq!(offsets(&client.events_through(3, QUIET).await), [1, 2, 3]);
    drop(client);
    server.publish(CH, "missed", json!(4)).await;
    server.publish(CH, "missed", json!(5)).await;

    // Same shape as a real epoch, but another one.
    let wrong_epoch = json!("0000000000");
    assert_ne!(first["epoch"], wrong_epoch);
    let mut wrong = server.connect_user("u1", &["acme"]).await;
    let reply = wrong.subscribe_since(CH, 3, &wrong_epoch, 1).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["epoch"], first["epoch"], "the channel's real epoch");
    assert_eq!(reply["offset"], 5);

    // The right epoch with an offset the channel never reached.
    let mut ahead = server.connect_user("u1", &["acme"]).await;
    let reply = ahead.subscribe_since(CH, 99, &first["epoch"], 1).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["offset"], 5);

    for c in [&mut wrong, &mut ahead] {
        let replayed = c.drain_events(QUIET).await;
        assert!(replayed.is_empty(), "no replay at all: {replayed:?}");
    }
    server.publish(CH, "live", json!(6)).await;
    for c in [&mut wrong, &mut ahead] {
        let events = c.events_through(6, QUIET).await;
        assert_eq!(offsets(&events), [6]);
        assert_eq!(events[0]["event"], "live");
    }
    let failed = |reason: &str| format!(r#"result="failed",reason="{reason}""#);
    assert_eq!(recoveries(&server, &failed("epoch_changed")).await, 1.0);
    assert_eq!(recoveries(&server, &failed("offset_ahead")).await, 1.0);
    assert_eq!(recoveries(&server, r#"result="recovered""#).await, 0.0);
}

#[tokio::test]
async fn a_gap_beyond_history_replays_nothing_and_a_gap_of_exactly_history_recovers() {
    const HISTORY: u64 = 5;
    let server = TestServer::with_config(config_with_workspace(|ws| {
        ws.history_size = HISTORY as usize
    }))
    .await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe(CH).await;
    let epoch = &first["epoch"];
    for i in 1..=3 {
        server.publish(CH, "seen", json!(i)).await;
    }
    assert_eq!(offsets(&client.events_through(3, QUIET).await), [1, 2, 3]);
    drop(client);

    // Exactly `HISTORY` missed (4..=8): history holds all of them.
    for i in 4..=3 + HISTORY {
        server.publish(CH, "missed", json!(i)).await;
    }
    let mut exact = server.connect_user("u1", &["acme"]).await;
    let reply = exact.subscribe_since(CH, 3, epoch, 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        offsets(&exact.events_through(8, QUIET).await),
        [4, 5, 6, 7, 8]
    );
    // One more missed (3..=8 from offset 2): event 3 left the ring.
    let mut one_over = server.connect_user("u1", &["acme"]).await;
    let reply = one_over.subscribe_since(CH, 2, epoch, 1).await;
    assert_eq!(reply["recovered"], false, "event 3 was trimmed: {reply}");
    let replayed = one_over.drain_events(QUIET).await;
    assert!(replayed.is_empty(), "no partial replay: {replayed:?}");
    drop((exact, one_over));

    // 20 missed with room for 5.
    for i in 9..=28 {
        server.publish(CH, "missed", json!(i)).await;
    }
    let mut far = server.connect_user("u1", &["acme"]).await;
    let reply = far.subscribe_since(CH, 8, epoch, 1).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["epoch"], *epoch);
    assert_eq!(reply["offset"], 28);
    let replayed = far.drain_events(QUIET).await;
    assert!(replayed.is_empty(), "no partial replay: {replayed:?}");
    server.publish(CH, "live", json!(29)).await;
    assert_eq!(offsets(&far.events_through(29, QUIET).await), [29]);
}

#[tokio::test]
async fn since_at_the_top_recovers_after_history_expired_within_position_ttl() {
    let mut config = config_with_workspace(|ws| ws.history_ttl = Duration::from_millis(300));
    config.engine.sweep_interval = Duration::from_millis(50);
    assert!(config.engine.position_ttl >= Duration::from_secs(60));
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let first = client.subscribe(CH).await;
    let epoch = &first["epoch"];
    for i in 1..=3 {
        server.publish(CH, "seen", json!(i)).await;
    }
    assert_eq!(offsets(&client.events_through(3, QUIET).await), [1, 2, 3]);
    client.ws.close(None).await.unwrap();
    drop(client);

    // Past the history TTL and a few sweeps.
    tokio::time::sleep(Duration::from_millis(300 + 200)).await;
    let mut back = server.connect_user("u1", &["acme"]).await;
    let history = back
        .request(json!({"type": "history", "channel": CH}), 9)
        .await;
    assert_eq!(history["type"], "history", "{history}");
    assert_eq!(history["events"], json!([]), "history expired: {history}");
    assert_eq!(history["offset"], 3, "the position is remembered");
    assert_eq!(history["epoch"], *epoch);
    if !on_redis() {
        // The Redis engine keeps positions in Redis, not per node.
        assert_eq!(server.metric("tidings_engine_channels").await, 1.0);
    }

    let reply = back.subscribe_since(CH, 3, epoch, 1).await;
    assert_eq!(reply["recovered"], true, "nothing was missed: {reply}");
    assert_eq!(reply["epoch"], *epoch);
    assert_eq!(reply["offset"], 3);
    // Behind the top, the expired events cannot be replayed.
    let mut behind = server.connect_user("u1", &["acme"]).await;
    let reply = behind.subscribe_since(CH, 2, epoch, 1).await;
    assert_eq!(reply["recovered"], false, "event 3 expired: {reply}");
    for c in [&mut back, &mut behind] {
        let replayed = c.drain_events(QUIET).await;
        assert!(replayed.is_empty(), "nothing to replay: {replayed:?}");
    }
    server.publish(CH, "live", json!(4)).await;
    assert_eq!(offsets(&back.events_through(4, QUIET).await), [4]);
}

#[tokio::test]
async fn replay_respects_the_audience_of_each_missed_event() {
    let server = TestServer::start().await;
    let mut u1 = server.connect_user("u1", &["acme"]).await;
    let mut u2 = server.connect_user("u2", &["acme"]).await;
    let epoch = u1.subscribe(CH).await["epoch"].clone();
    assert_eq!(u2.subscribe(CH).await["epoch"], epoch);
    server.publish(CH, "all", json!(1)).await;
    assert_eq!(offsets(&u1.events_through(1, QUIET).await), [1]);
    assert_eq!(offsets(&u2.events_through(1, QUIET).await), [1]);
    drop(u1);
    drop(u2);

    server
        .publish_to_users(CH, "for-u2", json!(2), &["u2"])
        .await;
    server.publish(CH, "all", json!(3)).await;
    server
        .publish_to_users(CH, "for-u2", json!(4), &["u2"])
        .await;
    server
        .publish_to_users(CH, "for-u1", json!(5), &["u1"])
        .await;

    let mut u1 = server.connect_user("u1", &["acme"]).await;
    let reply = u1.subscribe_since(CH, 1, &epoch, 1).await;
    assert_eq!(
        reply["recovered"], true,
        "filtered offsets are no gap: {reply}"
    );
    assert_eq!(reply["offset"], 5);
    let mut u2 = server.connect_user("u2", &["acme"]).await;
    let reply = u2.subscribe_since(CH, 1, &epoch, 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");

    server.publish(CH, "live", json!(6)).await;
    let names = |events: &[Value]| -> Vec<(u64, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["offset"].as_u64().unwrap(),
                    e["event"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let u1_events = u1.events_through(6, QUIET).await;
    assert_eq!(
        names(&u1_events),
        [(3, "all".into()), (5, "for-u1".into()), (6, "live".into())]
    );
    let u2_events = u2.events_through(6, QUIET).await;
    assert_eq!(
        names(&u2_events),
        [
            (2, "for-u2".into()),
            (3, "all".into()),
            (4, "for-u2".into()),
            (6, "live".into())
        ]
    );
}

/// Reads events for `window`, appending their offsets to `seen`.
async fn read_for(client: &mut Client, window: Duration, seen: &mut Vec<u64>) {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return;
        }
        match client.next(remaining).await {
            Some(v) if v["type"] == "event" => seen.push(v["offset"].as_u64().unwrap()),
            Some(v) => panic!("unexpected message: {v}"),
            None => return,
        }
    }
}

/// Sends `request` and reads until its reply, appending the offsets of the
/// events that come first to `seen`.
async fn request_recording(
    client: &mut Client,
    mut request: Value,
    id: u64,
    seen: &mut Vec<u64>,
) -> Value {
    request["id"] = json!(id);
    client.send(request.clone()).await;
    loop {
        match client.next(WAIT).await {
            Some(v) if v["id"] == json!(id) => return v,
            Some(v) if v["type"] == "event" => seen.push(v["offset"].as_u64().unwrap()),
            Some(v) => panic!("unexpected message: {v}"),
            None => panic!("no reply to {request}"),
        }
    }
}

/// Where `seen` first differs from 1, 2, 3, ….
fn first_break(seen: &[u64]) -> Option<String> {
    let at = seen.iter().zip(1..).position(|(&s, n)| s != n)?;
    let from = at.saturating_sub(3);
    Some(format!(
        "at index {at}: expected {}, saw {:?}",
        at + 1,
        &seen[from..(at + 4).min(seen.len())]
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_while_events_keep_coming_loses_and_doubles_nothing() {
    const CYCLES: u64 = 30;
    /// Most events published; history holds them all, so recovery always works.
    const MAX_EVENTS: u64 = 20_000;
    /// Events published between 1 ms pauses (several thousand a second).
    const BURST: u64 = 16;
    let config = config_with_workspace(|ws| ws.history_size = MAX_EVENTS as usize);
    let server = TestServer::with_config(config).await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let epoch = client.subscribe(CH).await["epoch"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = server.tidings.publisher();
    let publishing = tokio::spawn({
        let stop = stop.clone();
        async move {
            // A bound, not a pace: `stop` ends publishing once the cycles are done.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut last = 0;
            while !stop.load(Ordering::Relaxed)
                && last + BURST <= MAX_EVENTS
                && tokio::time::Instant::now() < deadline
            {
                for _ in 0..BURST {
                    let request = PublishRequest::json(CH, "tick", &(last + 1)).unwrap();
                    last = publisher.publish(request).await.unwrap().offset;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            last
        }
    });

    let mut seen = Vec::new();
    let mut replays = 0;
    for cycle in 0..CYCLES {
        let window = Duration::from_millis([0, 3, 10, 25, 40][cycle as usize % 5]);
        read_for(&mut client, window, &mut seen).await;
        match cycle % 3 {
            0 => {
                drop(client);
                client = server.connect_user("u1", &["acme"]).await;
            }
            1 => {
                let _ = client.ws.close(None).await;
                client = server.connect_user("u1", &["acme"]).await;
            }
            _ => {
                let reply = request_recording(
                    &mut client,
                    json!({"type": "unsubscribe", "channel": CH}),
                    cycle * 2,
                    &mut seen,
                )
                .await;
                assert_eq!(reply["type"], "unsubscribed", "{reply}");
            }
        }
        let since = seen.last().copied().unwrap_or(0);
        let subscribe =
            json!({"type": "subscribe", "channel": CH, "since": {"offset": since, "epoch": epoch}});
        let reply = request_recording(&mut client, subscribe, cycle * 2 + 1, &mut seen).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["recovered"], true, "cycle {cycle}: {reply}");
        assert_eq!(reply["epoch"], epoch);
        if reply["offset"].as_u64().unwrap() > since {
            replays += 1;
        }
        if let Some(problem) = first_break(&seen) {
            panic!("cycle {cycle}: {problem}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = publishing.await.unwrap();
    let quiet = Duration::from_millis(200);
    // The publisher may have been between bursts since the client's last event:
    // then nothing more is due, and anything that still arrives is a double.
    let rest = if seen.last().copied().unwrap_or(0) < last {
        client.events_through(last, quiet).await
    } else {
        client.drain_events(quiet).await
    };
    seen.extend(offsets(&rest));
    eprintln!(
        "{CYCLES} resubscribes, {replays} with a replay, {last} events published, {} received",
        seen.len()
    );
    if let Some(problem) = first_break(&seen) {
        panic!("{problem}");
    }
    assert_eq!(
        seen.len() as u64,
        last,
        "every offset 1..={last} exactly once"
    );
    // A busy machine publishes slowly (CI once saw 896 events in 10 s); what
    // matters is that events kept arriving while the client resubscribed.
    assert!(
        last >= BURST * CYCLES && replays >= CYCLES / 3,
        "publishing overlapped the resubscribes ({last} events, {replays} replays)"
    );
}
