//! The in-memory engine: one node, history in a bounded ring per channel.
//!
//! Offsets are assigned and events delivered under the channel's lock, so each
//! channel's events reach the sink in offset order. Channels with no subscribers,
//! no unexpired history, no pending idempotency keys and no activity within
//! `position_ttl` are reclaimed by a sweep.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;

use super::{
    Broker, ChannelPosition, EngineError, EventSink, HistoryPage, HistoryPolicy, HistoryQuery,
    NewEvent, Placement, Publication, PublishOptions, PublishOutcome, UNCLAIMED_TTL,
};
use crate::config::MAX_DURATION;
use crate::protocol::ChannelName;

struct ChannelState {
    epoch: Arc<str>,
    top: u64,
    history: VecDeque<Arc<Publication>>,
    /// No event in `history` was received before this (the oldest's time or
    /// earlier; `None` when empty): lets `expire` skip the ring without
    /// reading its oldest event, which with many channels is a cache miss on
    /// every publish.
    oldest_at: Option<Instant>,
    policy: HistoryPolicy,
    idempotency: HashMap<String, (Instant, PublishOutcome)>,
    /// Last publish, or when the last subscriber of this node left; for a
    /// channel not `claimed`, its last read.
    last_active: Instant,
    /// Published to or subscribed at least once. A channel only ever read (a
    /// history request or poll on a name nobody uses) is not worth remembering
    /// for `position_ttl`: reads must not pin memory.
    claimed: bool,
    /// Set when the sweep removed this state from the map; holders must look again.
    reclaimed: bool,
}

impl ChannelState {
    fn new() -> Self {
        Self {
            epoch: Arc::from(new_epoch().as_str()),
            top: 0,
            history: VecDeque::new(),
            oldest_at: None,
            policy: HistoryPolicy {
                size: 0,
                ttl: Duration::ZERO,
            },
            idempotency: HashMap::new(),
            last_active: Instant::now(),
            claimed: false,
            reclaimed: false,
        }
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.policy.ttl;
        if self.oldest_at.is_some_and(|t| now.duration_since(t) < ttl) {
            return;
        }
        while let Some(front) = self.history.front() {
            if now.duration_since(front.received_at) >= ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
        self.oldest_at = self.history.front().map(|p| p.received_at);
        if self.history.is_empty() && self.history.capacity() > 0 {
            // VecDeque keeps its buffer on pop; a quiet channel should not.
            self.history = VecDeque::new();
        }
    }

    /// Drops expired idempotency keys: a pass over all of them, so only the
    /// periodic sweep calls it (per publish it made publishing O(keys), and a
    /// consumer's 24 h window keeps many). Lookups check the expiry themselves.
    fn expire_idempotency(&mut self, now: Instant) {
        self.idempotency.retain(|_, (expires, _)| *expires > now);
    }

    /// A read (a poll, a history request, a subscribe's position): a channel
    /// only ever read stays known while it is read, so a poller with
    /// `since` and `epoch` keeps its epoch between polls.
    fn read_now(&mut self) {
        if !self.claimed {
            self.last_active = Instant::now();
        }
    }

    fn position(&self) -> ChannelPosition {
        ChannelPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

fn new_epoch() -> String {
    // Short and unique enough: epochs only need to differ across resets.
    let id = ulid::Ulid::generate().to_string();
    id[id.len() - 10..].to_owned()
}

fn lock(state: &Mutex<ChannelState>) -> MutexGuard<'_, ChannelState> {
    // A panic while holding the lock cannot leave the ring inconsistent in a way
    // that matters more than stopping delivery, so keep going with the data.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many placements of one `publish_many` run before yielding to the runtime.
const PLACEMENTS_PER_YIELD: usize = 256;

/// The single-node engine.
pub struct MemoryBroker {
    channels: DashMap<ChannelName, Arc<Mutex<ChannelState>>>,
    sink: OnceLock<Arc<dyn EventSink>>,
    position_ttl: Duration,
}

impl MemoryBroker {
    /// An empty engine that forgets an idle channel's position after
    /// `position_ttl`. Call [`MemoryBroker::start_sweeper`] to reclaim idle channels.
    pub fn new(position_ttl: Duration) -> Self {
        Self {
            channels: DashMap::new(),
            sink: OnceLock::new(),
            position_ttl,
        }
    }

    /// Runs the reclaiming sweep every `interval` until the engine is dropped.
    pub fn start_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                // A sweep that panics (a bug, or the sink) must not end the
                // sweeper: history would never expire again.
                let swept = std::panic::catch_unwind(AssertUnwindSafe(|| engine.sweep()));
                if swept.is_err() {
                    tracing::error!(
                        "the memory engine's sweep panicked; sweeping again at the next tick"
                    );
                }
            }
        })
    }

    /// Expires history and reclaims idle channels once.
    pub fn sweep(&self) {
        let now = Instant::now();
        let sink = self.sink.get();
        let unclaimed_ttl = self.position_ttl.min(UNCLAIMED_TTL);
        self.channels.retain(|channel, state| {
            let mut st = lock(state);
            st.expire(now);
            st.expire_idempotency(now);
            let keep_for = if st.claimed {
                self.position_ttl
            } else {
                unclaimed_ttl
            };
            let idle = st.history.is_empty()
                && st.idempotency.is_empty()
                && now.duration_since(st.last_active) >= keep_for
                && !sink.is_some_and(|s| s.has_subscribers(channel));
            if idle {
                st.reclaimed = true;
            }
            !idle
        });
    }

    /// The channel's live state, created when absent.
    fn state(&self, channel: &ChannelName) -> Arc<Mutex<ChannelState>> {
        // A read lock for the usual case, the shard's write lock only to create.
        if let Some(state) = self.channels.get(channel) {
            return state.value().clone();
        }
        self.channels
            .entry(channel.clone())
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new())))
            .clone()
    }

    /// Runs `f` once on the channel's state under its lock, looking the state up
    /// again if the sweep reclaimed it between lookup and lock.
    fn with_state<R>(&self, channel: &ChannelName, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        loop {
            let state = self.state(channel);
            let mut st = lock(&state);
            if !st.reclaimed {
                return f(&mut st);
            }
        }
    }

    /// Places `event` in `channel`: the next offset, the history ring, the
    /// idempotency key, and delivery to the hub, all under the channel's lock.
    fn place(
        &self,
        channel: &ChannelName,
        event: NewEvent,
        options: &PublishOptions,
    ) -> PublishOutcome {
        let sink = self.sink.get();
        self.with_state(channel, |st| {
            let now = Instant::now();
            st.policy = options.history;
            st.expire(now);
            if let Some(key) = &options.idempotency_key {
                if let Some((_, first)) = st
                    .idempotency
                    .get(key)
                    .filter(|(expires, _)| *expires > now)
                {
                    return PublishOutcome {
                        duplicate: true,
                        ..first.clone()
                    };
                }
            }
            st.top += 1;
            st.last_active = now;
            st.claimed = true;
            let publication = Arc::new(Publication::new(
                channel.clone(),
                st.top,
                st.epoch.clone(),
                event,
            ));
            if options.history.size > 0 && !options.history.ttl.is_zero() {
                st.history.push_back(publication.clone());
                st.oldest_at.get_or_insert(publication.received_at);
                while st.history.len() > options.history.size {
                    st.history.pop_front();
                }
            }
            let outcome = PublishOutcome {
                offset: st.top,
                epoch: st.epoch.clone(),
                id: publication.id.to_string(),
                duplicate: false,
            };
            if let Some(key) = &options.idempotency_key {
                // Bounded as the configuration bounds it: an embedder's
                // window could otherwise overflow the clock reading.
                let window = options.idempotency_window.min(MAX_DURATION);
                st.idempotency
                    .insert(key.clone(), (now + window, outcome.clone()));
            }
            // Delivering under the lock keeps the channel's events in offset order.
            if let Some(sink) = sink {
                sink.deliver(&publication);
            }
            outcome
        })
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, sink: Arc<dyn EventSink>) {
        // Only the first sink counts; a hub attaches exactly once.
        let _ = self.sink.set(sink);
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        event: NewEvent,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        Ok(self.place(channel, event, options))
    }

    /// One channel at a time, without a future per channel (placing never
    /// waits here), yielding to the runtime between runs of
    /// `PLACEMENTS_PER_YIELD` so a broadcast to many channels does not hold
    /// up the connections it delivers to.
    async fn publish_many(
        &self,
        placements: Vec<Placement>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
        let mut outcomes = Vec::with_capacity(placements.len());
        for (i, placement) in placements.into_iter().enumerate() {
            if i > 0 && i % PLACEMENTS_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
            outcomes.push(self.place(&placement.channel, placement.event, &placement.options));
        }
        Ok(outcomes)
    }

    async fn publish_presence(
        &self,
        channel: &ChannelName,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        if let Some(sink) = self.sink.get() {
            sink.deliver_presence(channel, &text);
        }
        Ok(())
    }

    async fn subscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        // One node: every event already reaches the sink. A subscribed channel's
        // position is worth remembering after its subscribers leave.
        self.with_state(channel, |st| st.claimed = true);
        Ok(())
    }

    async fn unsubscribe_node(&self, channel: &ChannelName) -> Result<(), EngineError> {
        // The position must outlive the last subscriber by `position_ttl`, so a
        // client that drops off a quiet channel can still resume there.
        if let Some(state) = self.channels.get(channel).map(|s| s.value().clone()) {
            lock(&state).last_active = Instant::now();
        }
        Ok(())
    }

    async fn position(&self, channel: &ChannelName) -> Result<ChannelPosition, EngineError> {
        Ok(self.with_state(channel, |st| {
            st.read_now();
            st.position()
        }))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        Ok(self.with_state(channel, |st| {
            st.expire(Instant::now());
            st.read_now();
            let after = query.after.unwrap_or(0);
            let complete = after >= st.top
                || st
                    .history
                    .front()
                    .is_some_and(|first| first.offset <= after + 1);
            let limit = query.limit.unwrap_or(usize::MAX);
            let newer = st.history.iter().filter(|p| p.offset > after);
            let events = if query.newest_first {
                newer.rev().take(limit).cloned().collect()
            } else {
                newer.take(limit).cloned().collect()
            };
            HistoryPage {
                position: st.position(),
                events,
                complete,
            }
        }))
    }

    fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn event(n: u64) -> NewEvent {
        NewEvent {
            id: format!("e_{n}"),
            event: "x".into(),
            ts: "t".into(),
            data: RawValue::from_string(n.to_string()).unwrap(),
            meta: None,
            audience: None,
            exclude_client: None,
        }
    }

    fn options(size: usize, key: Option<&str>) -> PublishOptions {
        PublishOptions {
            history: HistoryPolicy {
                size,
                ttl: Duration::from_secs(60),
            },
            idempotency_key: key.map(str::to_owned),
            idempotency_window: Duration::from_secs(60),
        }
    }

    /// `expire` skips the ring while its oldest event is young; events must
    /// still leave at their own age, after size trims and across publishes.
    #[tokio::test]
    async fn history_events_expire_at_their_own_age() {
        let engine = MemoryBroker::new(Duration::from_secs(60));
        let ch = ChannelName::parse("workspace:a").unwrap();
        let mut opts = options(3, None);
        opts.history.ttl = Duration::from_millis(300);
        let offsets = |page: HistoryPage| page.events.iter().map(|p| p.offset).collect::<Vec<_>>();
        for n in 1..=5 {
            engine.publish(&ch, event(n), &opts).await.unwrap();
        }
        let all = engine.history(&ch, &HistoryQuery::default()).await.unwrap();
        assert_eq!(offsets(all), [3, 4, 5], "trimmed to the size");
        std::thread::sleep(Duration::from_millis(200));
        engine.publish(&ch, event(6), &opts).await.unwrap();
        std::thread::sleep(Duration::from_millis(150));
        // 3–5 are 350 ms old, 6 is 150 ms old.
        let page = engine.history(&ch, &HistoryQuery::default()).await.unwrap();
        assert_eq!(offsets(page), [6]);
        std::thread::sleep(Duration::from_millis(200));
        let page = engine.history(&ch, &HistoryQuery::default()).await.unwrap();
        assert!(offsets(page).is_empty());
        engine.publish(&ch, event(7), &opts).await.unwrap();
        let page = engine.history(&ch, &HistoryQuery::default()).await.unwrap();
        assert_eq!(offsets(page), [7]);
    }

    #[tokio::test]
    async fn offsets_are_consecutive_and_history_bounded() {
        let engine = MemoryBroker::new(Duration::from_secs(60));
        let ch = ChannelName::parse("workspace:a").unwrap();
        for n in 1..=10 {
            let out = engine
                .publish(&ch, event(n), &options(4, None))
                .await
                .unwrap();
            assert_eq!(out.offset, n);
        }
        let page = engine.history(&ch, &HistoryQuery::default()).await.unwrap();
        let offsets: Vec<u64> = page.events.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![7, 8, 9, 10]);
        assert!(!page.complete, "events 1..6 were trimmed");
        let tail = engine
            .history(
                &ch,
                &HistoryQuery {
                    after: Some(6),
                    ..HistoryQuery::default()
                },
            )
            .await
            .unwrap();
        assert!(tail.complete);
        assert_eq!(tail.events.len(), 4);
        let newest = engine
            .history(
                &ch,
                &HistoryQuery {
                    limit: Some(2),
                    newest_first: true,
                    ..HistoryQuery::default()
                },
            )
            .await
            .unwrap();
        let offsets: Vec<u64> = newest.events.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![10, 9]);
    }

    #[tokio::test]
    async fn a_channel_only_read_is_not_kept_for_position_ttl() {
        let engine = MemoryBroker::new(Duration::from_secs(3600));
        let read = ChannelName::parse("workspace:a:read").unwrap();
        let subscribed = ChannelName::parse("workspace:a:subscribed").unwrap();
        engine
            .history(&read, &HistoryQuery::default())
            .await
            .unwrap();
        engine.subscribe_node(&subscribed).await.unwrap();
        engine.unsubscribe_node(&subscribed).await.unwrap();
        assert_eq!(engine.channel_count(), 2);
        // Age both past the unclaimed TTL.
        for state in engine.channels.iter() {
            let mut st = lock(state.value());
            st.last_active = st.last_active.checked_sub(UNCLAIMED_TTL).unwrap();
        }
        engine.sweep();
        assert_eq!(engine.channel_count(), 1);
        assert!(engine.channels.contains_key(&subscribed));
    }

    #[tokio::test]
    async fn a_channel_only_read_stays_while_it_is_read() {
        let engine = MemoryBroker::new(Duration::from_secs(3600));
        let polled = ChannelName::parse("workspace:a:polled").unwrap();
        let first = engine.position(&polled).await.unwrap();
        for _ in 0..3 {
            // Nearly an unclaimed TTL passes between reads.
            for state in engine.channels.iter() {
                let mut st = lock(state.value());
                st.last_active = st
                    .last_active
                    .checked_sub(UNCLAIMED_TTL / 2 * 3 / 2)
                    .unwrap();
            }
            engine.sweep();
            let page = engine
                .history(&polled, &HistoryQuery::default())
                .await
                .unwrap();
            assert_eq!(page.position, first, "the poller keeps its epoch");
        }
        for state in engine.channels.iter() {
            let mut st = lock(state.value());
            st.last_active = st.last_active.checked_sub(UNCLAIMED_TTL).unwrap();
        }
        engine.sweep();
        assert_eq!(engine.channel_count(), 0, "unread for a minute: forgotten");
    }

    #[tokio::test]
    async fn a_quiet_channel_keeps_its_position_for_position_ttl() {
        let engine = MemoryBroker::new(Duration::from_secs(60));
        let ch = ChannelName::parse("workspace:a").unwrap();
        let mut opts = options(10, None);
        opts.history.ttl = Duration::from_millis(1);
        engine.publish(&ch, event(1), &opts).await.unwrap();
        let before = engine.position(&ch).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        engine.sweep();
        assert_eq!(engine.channel_count(), 1, "history expired, position kept");
        let page = engine
            .history(
                &ch,
                &HistoryQuery {
                    after: Some(1),
                    ..HistoryQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.position, before);
        assert!(page.complete, "nothing after offset 1 was missed");
    }

    #[tokio::test]
    async fn idempotency_key_publishes_once() {
        let engine = MemoryBroker::new(Duration::from_secs(60));
        let ch = ChannelName::parse("workspace:a").unwrap();
        let first = engine
            .publish(&ch, event(1), &options(10, Some("k")))
            .await
            .unwrap();
        let again = engine
            .publish(&ch, event(2), &options(10, Some("k")))
            .await
            .unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!((first.offset, &first.id), (again.offset, &again.id));
        assert_eq!(engine.position(&ch).await.unwrap().offset, 1);
    }

    /// An embedder may pass any window: the longest is the configuration's.
    #[tokio::test]
    async fn an_idempotency_window_of_any_length_is_remembered_without_overflow() {
        let engine = MemoryBroker::new(Duration::from_secs(60));
        let ch = ChannelName::parse("workspace:a").unwrap();
        let mut forever = options(10, Some("k"));
        forever.idempotency_window = Duration::MAX;
        let first = engine.publish(&ch, event(1), &forever).await.unwrap();
        let again = engine.publish(&ch, event(2), &forever).await.unwrap();
        assert!(!first.duplicate && again.duplicate);
    }

    #[tokio::test]
    async fn idle_channels_are_reclaimed_with_a_new_epoch() {
        let engine = MemoryBroker::new(Duration::ZERO);
        let ch = ChannelName::parse("workspace:a").unwrap();
        let mut opts = options(10, None);
        opts.history.ttl = Duration::from_millis(1);
        engine.publish(&ch, event(1), &opts).await.unwrap();
        let epoch = engine.position(&ch).await.unwrap().epoch;
        std::thread::sleep(Duration::from_millis(5));
        engine.sweep();
        assert_eq!(engine.channel_count(), 0);
        let pos = engine.position(&ch).await.unwrap();
        assert_eq!(pos.offset, 0);
        assert_ne!(pos.epoch, epoch);
    }
}
