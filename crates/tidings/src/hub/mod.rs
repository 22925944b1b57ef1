//! The hub: which local connection is on which channel, and fan-out.
//!
//! The engine hands each event to [`Hub`] (through [`EventSink`]) once; the hub
//! encodes it once and queues the same bytes on every subscriber that may see it.
//! It never blocks on a connection: a full queue closes that connection (4002).

pub mod connection;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};

pub use connection::{
    Applied, CloseRequest, Connection, ConnectionQueue, Control, ControlRequest, Outbound,
    PushOutcome, QueueLimits,
};

use crate::engine::cluster::ControlHandler;
use crate::engine::{Broker, EngineError, EventSink, Publication};
use crate::metrics::Metrics;
use crate::protocol::{ChannelName, CloseCode};
use axum::extract::ws::Utf8Bytes;

const INTEREST_LOCK_SHARDS: usize = 64;

/// The `reason` of the `unsubscribed` push that asks a client to subscribe
/// again with `since` (the engine lost the channel's continuity).
pub const RESUBSCRIBE_REASON: &str = "resubscribe";

/// The `reason` of the `unsubscribed` push for a channel a refreshed token no
/// longer lets the connection subscribe to.
pub const REVOKED_REASON: &str = "permission_denied";

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The user has `max_connections_per_user` connections already.
    #[error("too many connections for this user")]
    PerUserLimit,
    /// The node has `max_connections` connections already.
    #[error("too many connections on this node")]
    NodeLimit,
}

/// Connection-count limits enforced at registration.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Per user.
    pub per_user: usize,
    /// Per node; 0 = unlimited.
    pub total: usize,
}

/// One connection on one channel.
struct Subscriber {
    connection: Arc<Connection>,
    /// Whether it may see the channel's presence (and so gets its pushes).
    sees_presence: bool,
}

/// One channel's local subscribers by connection key. A channel with a single
/// subscriber (a user's own channel, a document open in one tab) keeps it
/// inline: a hash map would allocate four slots and control bytes for it.
enum SubscriberSet {
    One(u64, Subscriber),
    Many(HashMap<u64, Subscriber>),
}

impl Default for SubscriberSet {
    fn default() -> Self {
        Self::Many(HashMap::new())
    }
}

impl SubscriberSet {
    fn insert(&mut self, key: u64, subscriber: Subscriber) {
        match self {
            Self::Many(map) if map.is_empty() => *self = Self::One(key, subscriber),
            Self::Many(map) => {
                map.insert(key, subscriber);
            }
            Self::One(one, existing) if *one == key => *existing = subscriber,
            Self::One(..) => {
                if let Self::One(one, existing) = std::mem::take(self) {
                    *self = Self::Many(HashMap::from([(one, existing), (key, subscriber)]));
                }
            }
        }
    }

    fn remove(&mut self, key: u64) -> Option<Subscriber> {
        match self {
            Self::One(one, _) if *one == key => match std::mem::take(self) {
                Self::One(_, subscriber) => Some(subscriber),
                Self::Many(_) => None,
            },
            Self::One(..) => None,
            Self::Many(map) => map.remove(&key),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::One(..) => false,
            Self::Many(map) => map.is_empty(),
        }
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Subscriber> {
        match self {
            Self::One(one, subscriber) if *one == key => Some(subscriber),
            Self::One(..) => None,
            Self::Many(map) => map.get_mut(&key),
        }
    }

    fn contains(&self, key: u64) -> bool {
        match self {
            Self::One(one, _) => *one == key,
            Self::Many(map) => map.contains_key(&key),
        }
    }

    fn values(&self) -> impl Iterator<Item = &Subscriber> {
        let (one, many) = match self {
            Self::One(_, subscriber) => (Some(subscriber), None),
            Self::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn into_values(self) -> impl Iterator<Item = Subscriber> {
        let (one, many) = match self {
            Self::One(_, subscriber) => (Some(subscriber), None),
            Self::Many(map) => (None, Some(map.into_values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// How long after a failed node subscribe or unsubscribe the node tries to
/// unsubscribe (again).
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// Local subscribers and fan-out.
pub struct Hub {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    limits: ConnectionLimits,
    subscribers: DashMap<ChannelName, SubscriberSet>,
    connections: DashMap<u64, Arc<Connection>>,
    users: DashMap<Arc<str>, Vec<Arc<Connection>>>,
    // Serialises "first subscriber here / last one gone" per channel so the
    // broker's node-level subscribe and unsubscribe cannot overtake each other.
    interest_locks: Box<[tokio::sync::Mutex<()>]>,
    interest_hasher: RandomState,
    /// Channels a background task is unsubscribing the node from.
    releasing: DashSet<ChannelName>,
    next_key: AtomicU64,
    /// Set by [`Hub::close_all`]: a connection that registers afterwards is
    /// asked to close at once, and sockets still authenticating close too.
    closing: tokio::sync::watch::Sender<Option<CloseCode>>,
    /// WebSockets upgraded but not registered yet (authenticating, or being
    /// refused): the shutdown drain waits for their Close as well.
    opening: AtomicUsize,
}

/// Counts a WebSocket as opening until dropped (see [`Hub::opening`]).
pub struct OpeningSocket(Arc<Hub>);

impl Drop for OpeningSocket {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::Relaxed);
    }
}

struct HubSink(Weak<Hub>);

impl EventSink for HubSink {
    fn deliver(&self, publication: &Arc<Publication>) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(publication);
        }
    }

    fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.0
            .upgrade()
            .is_some_and(|hub| hub.subscribers.contains_key(channel))
    }

    fn deliver_presence(&self, channel: &ChannelName, text: &Utf8Bytes) {
        if let Some(hub) = self.0.upgrade() {
            hub.push_presence(channel, text);
        }
    }

    fn resubscribe(&self, channel: &ChannelName) {
        if let Some(hub) = self.0.upgrade() {
            hub.resubscribe_channel(channel);
        }
    }
}

/// The hub as the cluster's control handler: API actions arriving from any node.
pub struct HubControl(pub Weak<Hub>);

#[async_trait::async_trait]
impl ControlHandler for HubControl {
    fn disconnect_user(&self, user: &str, code: CloseCode, reason: Option<String>) -> usize {
        self.0
            .upgrade()
            .map_or(0, |hub| hub.disconnect_user(user, code, reason))
    }

    async fn unsubscribe_user(&self, user: &str, channel: &ChannelName, reason: &str) -> usize {
        match self.0.upgrade() {
            Some(hub) => hub.unsubscribe_user(user, channel, reason).await,
            None => 0,
        }
    }

    fn connection_count(&self) -> usize {
        self.0.upgrade().map_or(0, |hub| hub.connection_count())
    }
}

impl Hub {
    /// A hub fed by `broker`. Attaches itself as the broker's sink.
    pub fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        limits: ConnectionLimits,
    ) -> Arc<Self> {
        let hub = Arc::new(Self {
            broker: broker.clone(),
            metrics,
            limits,
            subscribers: DashMap::new(),
            connections: DashMap::new(),
            users: DashMap::new(),
            interest_locks: (0..INTEREST_LOCK_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            interest_hasher: RandomState::new(),
            releasing: DashSet::new(),
            next_key: AtomicU64::new(1),
            closing: tokio::sync::watch::Sender::new(None),
            opening: AtomicUsize::new(0),
        });
        broker.attach(Arc::new(HubSink(Arc::downgrade(&hub))));
        hub
    }

    /// A fresh internal connection key.
    pub fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection, enforcing the per-user and per-node limits.
    pub fn register(&self, connection: &Arc<Connection>) -> Result<(), RegisterError> {
        if self.limits.total > 0 && self.connections.len() >= self.limits.total {
            return Err(RegisterError::NodeLimit);
        }
        let mut entry = self.users.entry(connection.user.clone()).or_default();
        if entry.len() >= self.limits.per_user {
            return Err(RegisterError::PerUserLimit);
        }
        entry.push(connection.clone());
        drop(entry);
        self.connections.insert(connection.key, connection.clone());
        self.metrics.connection_opened();
        // After the insert: `close_all` sets `closing` before it looks at the
        // connections, so one of the two sees this connection.
        if let Some(code) = *self.closing.borrow() {
            connection.request_close(code, None);
        }
        Ok(())
    }

    /// Removes a connection and all its subscriptions.
    pub async fn unregister(
        self: &Arc<Self>,
        connection: &Arc<Connection>,
        channels: impl IntoIterator<Item = ChannelName>,
    ) {
        for channel in channels {
            self.remove_subscription(&channel, connection).await;
        }
        if self.connections.remove(&connection.key).is_some() {
            self.metrics.connection_closed();
        }
        self.users.remove_if_mut(&connection.user, |_, list| {
            list.retain(|c| c.key != connection.key);
            list.is_empty()
        });
    }

    fn interest_lock(&self, channel: &ChannelName) -> &tokio::sync::Mutex<()> {
        let shard = self.interest_hasher.hash_one(channel) as usize % self.interest_locks.len();
        &self.interest_locks[shard]
    }

    /// Adds `connection` to `channel`'s subscribers; from now on it receives the
    /// channel's events (and its presence pushes when `sees_presence`).
    ///
    /// Safe to cancel (a client that goes away mid-subscribe drops the
    /// request's future): the connection is added only once it is complete,
    /// and a node subscription cut short is undone.
    pub async fn add_subscription(
        self: &Arc<Self>,
        channel: &ChannelName,
        connection: &Arc<Connection>,
        sees_presence: bool,
    ) -> Result<(), EngineError> {
        let _guard = self.interest_lock(channel).lock().await;
        if !self.subscribers.contains_key(channel) {
            // Left followed by the broker with no subscriber here, a channel
            // would be kept alive (and, on Redis, its events buffered) forever.
            let undo = UndoNodeSubscribe {
                hub: Arc::downgrade(self),
                channel: Some(channel.clone()),
            };
            let subscribed = self.broker.subscribe_node(channel).await;
            undo.disarm();
            if let Err(err) = subscribed {
                // A subscribe that failed may still take effect (a command
                // that timed out reaches Redis once it answers again).
                self.release_node_subscription(channel.clone(), RELEASE_RETRY);
                return Err(err);
            }
        }
        self.subscribers.entry(channel.clone()).or_default().insert(
            connection.key,
            Subscriber {
                connection: connection.clone(),
                sees_presence,
            },
        );
        self.metrics.subscription_added();
        Ok(())
    }

    /// Removes `connection` from `channel`; returns whether it was there.
    pub async fn remove_subscription(
        self: &Arc<Self>,
        channel: &ChannelName,
        connection: &Connection,
    ) -> bool {
        let _guard = self.interest_lock(channel).lock().await;
        let mut removed = false;
        let mut now_empty = false;
        self.subscribers.remove_if_mut(channel, |_, subs| {
            removed = subs.remove(connection.key).is_some();
            now_empty = subs.is_empty();
            now_empty
        });
        if removed {
            self.metrics.subscription_removed();
        }
        if now_empty {
            if let Err(err) = self.broker.unsubscribe_node(channel).await {
                tracing::debug!(%channel, error = %err, "broker unsubscribe failed; tried again in the background");
                self.release_node_subscription(channel.clone(), RELEASE_RETRY);
            }
        }
        removed
    }

    /// Fans one event out to local subscribers: encoded once, queued on each.
    pub fn deliver(&self, publication: &Arc<Publication>) {
        let Some(subs) = self.subscribers.get(&publication.channel) else {
            return;
        };
        publication.encoded();
        let mut delivered = 0u64;
        for subscriber in subs.values() {
            match subscriber.connection.push(publication) {
                PushOutcome::Queued => delivered += 1,
                // Counted here, when the queue overflows: a reader that stopped
                // may never let its transport write the close.
                PushOutcome::Overflow => self.metrics.slow_consumer_closed(),
                PushOutcome::Filtered | PushOutcome::Closed => {}
            }
        }
        drop(subs);
        self.metrics.events_fanned_out(delivered);
    }

    /// Sends a presence push, encoded once, to the channel's local subscribers
    /// that may see presence.
    pub fn push_presence(&self, channel: &ChannelName, text: &Utf8Bytes) {
        let Some(subs) = self.subscribers.get(channel) else {
            return;
        };
        for subscriber in subs.values().filter(|s| s.sees_presence) {
            let pushed = subscriber
                .connection
                .push_presence(channel.clone(), text.clone());
            if pushed == PushOutcome::Overflow {
                self.metrics.slow_consumer_closed();
            }
        }
    }

    /// Ends every local subscription of `channel` with an `unsubscribed` push
    /// whose reason is `resubscribe`: the engine lost the channel's continuity,
    /// and each client recovers (or learns it must reload) by subscribing again.
    pub fn resubscribe_channel(self: &Arc<Self>, channel: &ChannelName) {
        let Some((_, subs)) = self.subscribers.remove(channel) else {
            return;
        };
        for subscriber in subs.into_values() {
            self.metrics.subscription_removed();
            subscriber
                .connection
                .push_unsubscribed(channel.clone(), RESUBSCRIBE_REASON.to_owned());
        }
        // The broker still follows the channel; let it go unless a client is
        // already back.
        self.release_node_subscription(channel.clone(), Duration::ZERO);
    }

    /// Unsubscribes the node from `channel` in the background, `after` from
    /// now, unless a client is on it by then (the interest lock orders this
    /// against new subscribes). An unsubscribe that fails (the engine is
    /// unreachable) is tried again, 1 s later and then up to 30 s apart,
    /// until it succeeds or a client is back: a channel left followed with
    /// nobody on it would stay so until the node stops (on Redis, a pub/sub
    /// subscription that its client library also renews on every
    /// reconnect). One task per channel: a channel already being released is
    /// left to that task (which leaves the set under the interest lock, so a
    /// request made under the lock is never dropped by one that is exiting).
    fn release_node_subscription(self: &Arc<Self>, channel: ChannelName, after: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.releasing.insert(channel.clone()) {
            return;
        }
        let hub = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut pause = RELEASE_RETRY;
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            loop {
                let Some(hub) = hub.upgrade() else { return };
                {
                    let _guard = hub.interest_lock(&channel).lock().await;
                    let done = hub.subscribers.contains_key(&channel)
                        || match hub.broker.unsubscribe_node(&channel).await {
                            Ok(()) => true,
                            Err(err) => {
                                tracing::debug!(%channel, error = %err, "broker unsubscribe failed; tried again later");
                                false
                            }
                        };
                    if done {
                        hub.releasing.remove(&channel);
                        return;
                    }
                }
                drop(hub);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// The live connection `client_id` of `user`, if there is one.
    pub fn connection_of(&self, user: &str, client_id: &str) -> Option<Arc<Connection>> {
        self.users
            .get(user)?
            .iter()
            .find(|c| &*c.client_id == client_id)
            .cloned()
    }

    /// Asks every connection of `user` to close with `code`; returns how many.
    pub fn disconnect_user(&self, user: &str, code: CloseCode, reason: Option<String>) -> usize {
        let connections: Vec<Arc<Connection>> = self
            .users
            .get(user)
            .map(|list| list.clone())
            .unwrap_or_default();
        for connection in &connections {
            connection.request_close(code, reason.clone());
        }
        connections.len()
    }

    /// Removes every connection of `user` from `channel`, telling each with an
    /// `unsubscribed` push; returns how many were removed.
    pub async fn unsubscribe_user(
        self: &Arc<Self>,
        user: &str,
        channel: &ChannelName,
        reason: &str,
    ) -> usize {
        let connections: Vec<Arc<Connection>> = self
            .users
            .get(user)
            .map(|list| list.clone())
            .unwrap_or_default();
        let mut count = 0;
        for connection in connections {
            if self.remove_subscription(channel, &connection).await {
                connection.push_unsubscribed(channel.clone(), reason.to_owned());
                count += 1;
            }
        }
        count
    }

    /// Asks every connection to close with `code` (shutdown), and those that
    /// register later or are still authenticating ([`Hub::closing`]).
    pub fn close_all(&self, code: CloseCode) {
        self.closing.send_replace(Some(code));
        for entry in self.connections.iter() {
            entry.value().request_close(code, None);
        }
    }

    /// Resolves with the code of [`Hub::close_all`] once it is called: for a
    /// socket that is not a registered connection yet.
    pub async fn closing(&self) -> CloseCode {
        let mut closing = self.closing.subscribe();
        let code = match closing.wait_for(Option::is_some).await {
            Ok(code) => *code,
            // The sender lives as long as the hub, which `&self` keeps alive.
            Err(_) => None,
        };
        code.unwrap_or(CloseCode::Restarting)
    }

    /// Counts a WebSocket that is not registered yet until the guard is dropped.
    pub fn opening(self: &Arc<Self>) -> OpeningSocket {
        self.opening.fetch_add(1, Ordering::Relaxed);
        OpeningSocket(self.clone())
    }

    /// Whether connection `key` gets `channel`'s presence pushes from now
    /// on (a refreshed token changed what it may see).
    pub fn set_sees_presence(&self, channel: &ChannelName, key: u64, sees_presence: bool) {
        if let Some(mut subs) = self.subscribers.get_mut(channel) {
            if let Some(subscriber) = subs.get_mut(key) {
                subscriber.sees_presence = sees_presence;
            }
        }
    }

    /// Whether the connection `key` is subscribed to `channel` here.
    pub fn is_subscribed(&self, channel: &ChannelName, key: u64) -> bool {
        self.subscribers
            .get(channel)
            .is_some_and(|subs| subs.contains(key))
    }

    /// Connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Connections plus WebSockets still authenticating: what a shutdown
    /// drain waits for.
    pub fn open_sockets(&self) -> usize {
        self.connections.len() + self.opening.load(Ordering::Relaxed)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.subscribers.len()
    }

    /// The broker feeding this hub.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }
}

/// Undoes a node subscription whose future was dropped before it completed:
/// unsubscribes the node from the channel unless a subscriber arrived since.
struct UndoNodeSubscribe {
    hub: std::sync::Weak<Hub>,
    channel: Option<ChannelName>,
}

impl UndoNodeSubscribe {
    fn disarm(mut self) {
        self.channel = None;
    }
}

impl Drop for UndoNodeSubscribe {
    fn drop(&mut self) {
        if let (Some(channel), Some(hub)) = (self.channel.take(), self.hub.upgrade()) {
            hub.release_node_subscription(channel, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(key: u64) -> Subscriber {
        let limits = QueueLimits {
            messages: 1,
            bytes: 1,
        };
        let (connection, _queue) =
            Connection::new(key, Arc::from("c"), Arc::from("u"), Arc::from([]), limits);
        Subscriber {
            connection,
            sees_presence: false,
        }
    }

    fn keys(set: &SubscriberSet) -> Vec<u64> {
        let mut keys: Vec<u64> = set.values().map(|s| s.connection.key).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_subscriber_set_holds_one_inline_and_many_in_a_map() {
        let mut set = SubscriberSet::default();
        assert!(set.is_empty());
        set.insert(1, subscriber(1));
        assert!(matches!(set, SubscriberSet::One(1, _)));
        set.insert(1, subscriber(1));
        assert_eq!(keys(&set), [1]);
        set.insert(2, subscriber(2));
        set.insert(3, subscriber(3));
        assert_eq!(keys(&set), [1, 2, 3]);
        assert!(set.remove(9).is_none());
        assert!(set.remove(2).is_some());
        assert_eq!(keys(&set), [1, 3]);
        assert!(set.remove(1).is_some() && set.remove(3).is_some());
        assert!(set.is_empty());

        set.insert(7, subscriber(7));
        assert!(set.remove(8).is_none());
        assert_eq!(set.remove(7).map(|s| s.connection.key), Some(7));
        assert!(set.is_empty());
        set.insert(5, subscriber(5));
        let all: Vec<u64> = set.into_values().map(|s| s.connection.key).collect();
        assert_eq!(all, [5]);
    }
}
