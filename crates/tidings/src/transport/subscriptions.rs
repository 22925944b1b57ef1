//! What one client connection (WebSocket or SSE stream) is subscribed to: the
//! subscribe procedure with recovery (§5), the per-channel positions that drop
//! duplicates, and presence membership. The transports that hold a connection
//! share it, so both give the same guarantees.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tidings_auth::Identity;
use tokio::time::Instant;

use crate::access::{AccessError, Action};
use crate::engine::presence::{ClientPresence, PresenceChange, PresenceStore};
use crate::engine::{ChannelPosition, HistoryPage, HistoryQuery, Publication};
use crate::hub::{Connection, Hub};
use crate::metrics::RecoveryFailure;
use crate::protocol::{
    ChannelName, ErrorCode, PresenceStatus, RequestId, ServerMessage, StreamPosition,
};
use crate::server::ServerState;
use crate::transport::expiry_instant;

/// A refused request: the error reply to send.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The engine could not be reached: a temporary failure the client retries.
    pub fn engine_unavailable() -> Self {
        Self::new(
            ErrorCode::EngineUnavailable,
            "the engine is unavailable; retry",
        )
    }
}

impl From<AccessError> for Refusal {
    fn from(err: AccessError) -> Self {
        let code = match err {
            AccessError::UnknownChannel(_) => ErrorCode::UnknownChannel,
            AccessError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
        };
        Self::new(code, err.to_string())
    }
}

/// Parses a channel name from a request.
pub(crate) fn parse_channel(name: &str) -> Result<ChannelName, Refusal> {
    ChannelName::parse(name)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("channel: {e}")))
}

/// Whether everything after `since` can be replayed from `page`, a history read
/// of the events after `since.offset` (§5: all of them or none).
pub(crate) fn recovery(since: &StreamPosition, page: &HistoryPage) -> Result<(), RecoveryFailure> {
    if *since.epoch != *page.position.epoch {
        Err(RecoveryFailure::EpochChanged)
    } else if since.offset > page.position.offset {
        Err(RecoveryFailure::OffsetAhead)
    } else if !page.complete {
        Err(RecoveryFailure::HistoryGone)
    } else {
        Ok(())
    }
}

/// One channel of a connection.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub epoch: Arc<str>,
    /// Highest offset delivered (or covered by `subscribed.offset`); queued
    /// events at or below it are duplicates of what the client already has.
    pub offset: u64,
    /// Whether this connection is tracked in the channel's presence.
    presence: bool,
}

/// A successful subscribe: what to tell the client, then what to replay.
#[derive(Debug)]
pub(crate) struct Subscribed {
    pub channel: ChannelName,
    pub position: ChannelPosition,
    pub recoverable: bool,
    /// Present when the subscribe asked to recover.
    pub recovery: Option<Result<(), RecoveryFailure>>,
    /// The missed events this connection may see, in offset order (only when
    /// recovered).
    pub replay: Vec<Arc<Publication>>,
}

impl Subscribed {
    /// The `subscribed` reply.
    pub fn reply(&self, id: Option<RequestId>) -> ServerMessage {
        ServerMessage::Subscribed {
            id,
            channel: self.channel.to_string(),
            offset: self.position.offset,
            epoch: self.position.epoch.to_string(),
            recoverable: self.recoverable,
            recovered: self.recovery.map(|r| r.is_ok()),
        }
    }
}

/// A connection's subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    channels: SubscriptionTable,
}

/// Up to this many subscriptions are kept in an exactly sized list (searched
/// in order) rather than a hash map: most connections have one to a few
/// channels, and a hash map allocates at least four slots plus control bytes.
const FEW_SUBSCRIPTIONS: usize = 8;

/// Channel → subscription, sized for the usual handful of channels.
#[derive(Debug)]
enum SubscriptionTable {
    /// At most [`FEW_SUBSCRIPTIONS`], capacity equal to length.
    Few(Vec<(ChannelName, Subscription)>),
    Many(HashMap<ChannelName, Subscription>),
}

impl Default for SubscriptionTable {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl SubscriptionTable {
    fn len(&self) -> usize {
        match self {
            Self::Few(list) => list.len(),
            Self::Many(map) => map.len(),
        }
    }

    fn contains_key(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Few(list) => list.iter().any(|(name, _)| name == channel),
            Self::Many(map) => map.contains_key(channel),
        }
    }

    fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Subscription> {
        match self {
            Self::Few(list) => list
                .iter_mut()
                .find(|(name, _)| name == channel)
                .map(|(_, subscription)| subscription),
            Self::Many(map) => map.get_mut(channel),
        }
    }

    /// Adds a channel the table does not hold yet.
    fn insert(&mut self, channel: ChannelName, subscription: Subscription) {
        match self {
            Self::Few(list) if list.len() < FEW_SUBSCRIPTIONS => {
                // Exactly sized: subscribes are rare, idle connections many.
                list.reserve_exact(1);
                list.push((channel, subscription));
            }
            Self::Few(list) => {
                let mut map: HashMap<_, _> = std::mem::take(list).into_iter().collect();
                map.insert(channel, subscription);
                *self = Self::Many(map);
            }
            Self::Many(map) => {
                map.insert(channel, subscription);
            }
        }
    }

    fn remove(&mut self, channel: &ChannelName) -> Option<Subscription> {
        match self {
            Self::Few(list) => {
                let index = list.iter().position(|(name, _)| name == channel)?;
                let (_, subscription) = list.swap_remove(index);
                list.shrink_to_fit();
                Some(subscription)
            }
            Self::Many(map) => map.remove(channel),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = (&ChannelName, &Subscription)> + Send + '_> {
        match self {
            Self::Few(list) => Box::new(list.iter().map(|(name, sub)| (name, sub))),
            Self::Many(map) => Box::new(map.iter()),
        }
    }

    fn into_keys(self) -> Box<dyn Iterator<Item = ChannelName> + Send> {
        match self {
            Self::Few(list) => Box::new(list.into_iter().map(|(name, _)| name)),
            Self::Many(map) => Box::new(map.into_keys()),
        }
    }
}

impl Subscriptions {
    /// Subscribes `connection` to `channel`, recovering from `since` when given.
    ///
    /// The connection is registered with the hub first and the history read
    /// second: every event after the position read is already on its way through
    /// the connection's queue, and [`Subscriptions::accept`] drops what the queue
    /// carries at or below it. Nothing is lost and nothing is doubled.
    pub async fn subscribe(
        &mut self,
        state: &ServerState,
        identity: &Identity,
        connection: &Arc<Connection>,
        channel: ChannelName,
        since: Option<&StreamPosition>,
        status: PresenceStatus,
    ) -> Result<Subscribed, Refusal> {
        state.access.check(identity, &channel, Action::Subscribe)?;
        if self.channels.contains_key(&channel) {
            return Err(Refusal::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ));
        }
        let max = state.config.connection.max_channels;
        if self.channels.len() >= max {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("at most {max} channels per connection"),
            ));
        }
        let namespace = state.access.namespace(&channel)?;
        let tracks_presence = !namespace.config.presence.is_empty();
        let sees_presence = namespace.config.presence_events
            && namespace.allows(identity, &channel, Action::Presence);
        let recoverable =
            namespace.config.history_size > 0 && !namespace.config.history_ttl.is_zero();
        let hub = &state.hub;
        // Listed before the hub takes the connection in: a subscribe cut
        // short (an SSE client that went away, whose stream is dropped
        // mid-subscribe) is then undone by `close` like any other. The
        // channel's position replaces this one below.
        self.channels.insert(
            channel.clone(),
            Subscription {
                epoch: Arc::from(""),
                offset: 0,
                presence: false,
            },
        );
        if let Err(err) = hub
            .add_subscription(&channel, connection, sees_presence)
            .await
        {
            self.channels.remove(&channel);
            tracing::warn!(%channel, error = %err, "subscribe failed in the engine");
            return Err(Refusal::engine_unavailable());
        }
        let query = HistoryQuery {
            after: since.map(|s| s.offset),
            ..HistoryQuery::default()
        };
        let page = match hub.broker().history(&channel, &query).await {
            Ok(page) => page,
            Err(err) => {
                // Unlisted last: cut short here, `close` finishes it.
                hub.remove_subscription(&channel, connection).await;
                self.channels.remove(&channel);
                tracing::warn!(%channel, error = %err, "subscribe failed in the engine");
                return Err(Refusal::engine_unavailable());
            }
        };
        let recovery = since.map(|since| recovery(since, &page));
        if let Some(outcome) = recovery {
            state.metrics.recovery(outcome);
        }
        let replay = match recovery {
            Some(Ok(())) => page
                .events
                .into_iter()
                .filter(|p| connection.admits(p))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(subscription) = self.channels.get_mut(&channel) {
            *subscription = Subscription {
                epoch: page.position.epoch.clone(),
                offset: page.position.offset,
                presence: tracks_presence,
            };
        }
        if tracks_presence {
            let me = ClientPresence {
                client: connection.client_id.clone(),
                user: identity.user.clone(),
                status,
                info: identity.info.clone(),
            };
            match state.presence.join(&channel, me).await {
                Ok(Some(change)) if namespace.config.presence_events => {
                    announce(&state.hub, &*state.presence, &channel, change).await
                }
                Ok(_) => {}
                Err(err) => {
                    // Subscribed but unlisted would last until the client
                    // left: refuse the subscribe instead (the client retries,
                    // as after any engine error) and take back a join that
                    // may have reached the engine before the error.
                    tracing::warn!(%channel, error = %err, "presence join failed: the subscribe is refused");
                    hub.remove_subscription(&channel, connection).await;
                    leave_presence(state, &channel, connection).await;
                    self.channels.remove(&channel);
                    return Err(Refusal::engine_unavailable());
                }
            }
        }
        Ok(Subscribed {
            channel,
            position: page.position,
            recoverable,
            recovery,
            replay,
        })
    }

    /// Leaves `channel` at the client's request; returns whether it was on it.
    pub async fn unsubscribe(
        &mut self,
        state: &ServerState,
        connection: &Connection,
        channel: &ChannelName,
    ) -> bool {
        self.end(state, connection, channel, true).await
    }

    /// Puts a refreshed token in force on a connection, the same way on every
    /// transport: its expiry becomes `expiry`, its claims replace `current`
    /// for later requests, its roles filter deliveries (`audience`), and every
    /// channel its claims no longer let the connection subscribe to is left,
    /// so a user removed from a workspace stops receiving it without
    /// reconnecting; on the channels it keeps, presence pushes follow the new
    /// claims' `presence` rule. Returns the channels left, for the transport to
    /// tell the client with an `unsubscribed` push
    /// ([`REVOKED_REASON`](crate::hub::REVOKED_REASON)).
    pub async fn take_refresh(
        &mut self,
        state: &ServerState,
        connection: &Connection,
        identity: Identity,
        current: &mut Identity,
        expiry: &mut Option<Instant>,
    ) -> Vec<ChannelName> {
        *expiry = expiry_instant(&identity);
        let revoked = self.leave_denied(state, &identity, connection).await;
        *current = identity;
        revoked
    }

    /// The channel side of [`take_refresh`](Self::take_refresh).
    async fn leave_denied(
        &mut self,
        state: &ServerState,
        identity: &Identity,
        connection: &Connection,
    ) -> Vec<ChannelName> {
        connection.set_roles(identity.roles.clone());
        let denied: Vec<ChannelName> = self
            .channels()
            .filter(|channel| {
                state
                    .access
                    .check(identity, channel, Action::Subscribe)
                    .is_err()
            })
            .cloned()
            .collect();
        for channel in &denied {
            self.unsubscribe(state, connection, channel).await;
        }
        for channel in self.channels() {
            if let Ok(namespace) = state.access.namespace(channel) {
                if namespace.config.presence_events {
                    let sees = namespace.allows(identity, channel, Action::Presence);
                    state.hub.set_sees_presence(channel, connection.key, sees);
                }
            }
        }
        denied
    }

    /// Forgets `channel` after the hub removed the connection from it (a
    /// server-side unsubscribe); returns whether it was on it.
    pub async fn forget(
        &mut self,
        state: &ServerState,
        connection: &Connection,
        channel: &ChannelName,
    ) -> bool {
        self.end(state, connection, channel, false).await
    }

    /// Ends the subscription to `channel`: the hub's (`leave_hub`), its
    /// presence entry, then the listing. Listed until every step is done, so
    /// one cut short (an SSE stream dropped mid-way) is finished by `close`;
    /// leaving twice does nothing. The hub goes first: a presence leave that
    /// fails is tried again unless the connection is back on the channel,
    /// which it must not take it for while this end is still under way.
    async fn end(
        &mut self,
        state: &ServerState,
        connection: &Connection,
        channel: &ChannelName,
        leave_hub: bool,
    ) -> bool {
        let Some(presence) = self.channels.get_mut(channel).map(|s| s.presence) else {
            return false;
        };
        if leave_hub {
            state.hub.remove_subscription(channel, connection).await;
        }
        if presence {
            leave_presence(state, channel, connection).await;
        }
        self.channels.remove(channel);
        true
    }

    /// Whether a queued event is new for this connection, advancing its position.
    pub fn accept(&mut self, publication: &Publication) -> bool {
        let Some(sub) = self.channels.get_mut(&publication.channel) else {
            return false;
        };
        if sub.epoch != publication.epoch {
            // History was reset under us (the channel was reclaimed and
            // recreated): follow the new epoch from here.
            sub.epoch = publication.epoch.clone();
            sub.offset = publication.offset;
            return true;
        }
        if publication.offset <= sub.offset {
            return false;
        }
        sub.offset = publication.offset;
        true
    }

    /// Writes every channel's position as a resume token
    /// (`1;channel,epoch,offset;…`, the format `sse::ResumeToken` reads).
    pub fn write_positions(&self, out: &mut String) {
        out.push('1');
        for (channel, sub) in self.channels.iter() {
            out.push(';');
            out.push_str(channel.as_str());
            out.push(',');
            out.push_str(&sub.epoch);
            out.push(',');
            out.push_str(&sub.offset.to_string());
        }
    }

    /// The longest [`Subscriptions::write_positions`] can write for these
    /// channels: each offset counted at 20 digits, the most a `u64` has.
    pub fn positions_len_bound(&self) -> usize {
        let mut len = 1;
        for (channel, sub) in self.channels.iter() {
            len += 3 + channel.as_str().len() + sub.epoch.len() + 20;
        }
        len
    }

    /// Sets `channel`'s delivered position back to `offset` (a recovered
    /// subscription whose replay the caller then passes through
    /// [`Subscriptions::accept`], so each replayed event advances it in turn).
    pub fn rewind(&mut self, channel: &ChannelName, offset: u64) {
        if let Some(sub) = self.channels.get_mut(channel) {
            sub.offset = sub.offset.min(offset);
        }
    }

    /// The channels the connection is on.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelName> {
        self.channels.iter().map(|(channel, _)| channel)
    }

    /// Whether the connection is on `channel`.
    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// Sets the connection's presence status on every channel tracking it;
    /// `engine_unavailable` when the engine could not store it on one of
    /// them (the others are still set, and the caller keeps the status for
    /// channels joined later).
    pub async fn set_status(
        &self,
        state: &ServerState,
        connection: &Connection,
        status: PresenceStatus,
    ) -> Result<(), Refusal> {
        let mut failed = None;
        for (channel, _) in self.channels.iter().filter(|(_, s)| s.presence) {
            match state
                .presence
                .set_status(channel, &connection.user, &connection.client_id, status)
                .await
            {
                Ok(Some(change)) if pushes_presence(state, channel) => {
                    announce(&state.hub, &*state.presence, channel, change).await
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%channel, error = %err, "presence status failed");
                    failed.get_or_insert_with(|| channel.clone());
                }
            }
        }
        match failed {
            None => Ok(()),
            Some(channel) => Err(Refusal::new(
                ErrorCode::EngineUnavailable,
                format!(
                    "the status could not be stored on {channel} (the engine is unavailable); it applies to channels joined from now on; retry"
                ),
            )),
        }
    }

    /// Ends every subscription and unregisters the connection from the hub.
    pub async fn close(self, state: &ServerState, connection: &Arc<Connection>) {
        for (channel, subscription) in self.channels.iter() {
            if subscription.presence {
                leave_presence(state, channel, connection).await;
            }
        }
        state
            .hub
            .unregister(connection, self.channels.into_keys())
            .await;
    }
}

/// When a presence leave that failed (the engine away, or slower than
/// `engine.redis_timeout` in a mass disconnect) is tried again. Without it the
/// entry would stay listed until the node stops. Trying again is safe: leaving
/// a channel the entry has already left does nothing, and a connection that is
/// on the channel again by then (a resubscribe) is not taken off it.
const LEAVE_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// Removes a connection from a channel's presence and tells the others; a
/// leave that fails is tried again in the background.
async fn leave_presence(state: &ServerState, channel: &ChannelName, connection: &Connection) {
    let (user, client) = (&connection.user, &connection.client_id);
    match state.presence.leave(channel, user, client).await {
        Ok(Some(change)) if pushes_presence(state, channel) => {
            announce(&state.hub, &*state.presence, channel, change).await
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(%channel, error = %err, "presence leave failed; trying again in the background");
            let (presence, hub) = (state.presence.clone(), state.hub.clone());
            let pushes = pushes_presence(state, channel);
            let (channel, user, client) = (channel.clone(), user.clone(), client.clone());
            let key = connection.key;
            // A connection that is closing stays listed on the channel
            // until its close is done (which takes a while when Redis is
            // down): only a live one can be back on it with a new entry.
            let closing = connection.is_closed();
            tokio::spawn(async move {
                for delay in LEAVE_RETRY_DELAYS {
                    tokio::time::sleep(delay).await;
                    if !closing && hub.is_subscribed(&channel, key) {
                        return;
                    }
                    if let Ok(change) = presence.leave(&channel, &user, &client).await {
                        if let Some(change) = change.filter(|_| pushes) {
                            announce(&hub, &*presence, &channel, change).await;
                        }
                        return;
                    }
                }
                tracing::warn!(%channel, "presence leave failed again: the entry stays listed until this node stops");
            });
        }
    }
}

/// Whether `channel`'s namespace pushes presence changes (`presence_events`):
/// without it no subscriber gets them, and they are not sent at all (on Redis
/// each would cost a call and a message to every node on the channel).
fn pushes_presence(state: &ServerState, channel: &ChannelName) -> bool {
    state
        .access
        .namespace(channel)
        .is_ok_and(|namespace| namespace.config.presence_events)
}

/// Pushes a presence change to the channel's subscribers that may see presence.
async fn announce(
    hub: &Hub,
    presence: &dyn PresenceStore,
    channel: &ChannelName,
    change: PresenceChange,
) {
    let (action, member) = match &change {
        PresenceChange::Join(m) => ("join", m),
        PresenceChange::Leave(m) => ("leave", m),
        PresenceChange::Status(m) => ("status", m),
    };
    let push = ServerMessage::PresenceChanged {
        channel: channel.to_string(),
        action,
        member: member.clone(),
    };
    let text = Utf8Bytes::from(push.to_json());
    if let Err(err) = presence
        .announce(&**hub.broker(), channel, &change, text)
        .await
    {
        tracing::warn!(%channel, error = %err, "presence push failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(i: usize) -> ChannelName {
        ChannelName::parse(&format!("user:u{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn subscription(offset: u64) -> Subscription {
        Subscription {
            epoch: Arc::from("e"),
            offset,
            presence: false,
        }
    }

    #[test]
    fn the_position_bound_holds_for_any_offset_and_is_reached_at_the_largest() {
        let mut subscriptions = Subscriptions {
            channels: SubscriptionTable::default(),
        };
        for (i, offset) in [0, 9, 10, 99_999].into_iter().enumerate() {
            subscriptions
                .channels
                .insert(channel(i * 37), subscription(offset));
            let mut written = String::new();
            subscriptions.write_positions(&mut written);
            assert!(
                subscriptions.positions_len_bound() > written.len(),
                "{written}"
            );
        }
        let mut largest = Subscriptions {
            channels: SubscriptionTable::default(),
        };
        for i in 0..3 {
            largest.channels.insert(channel(i), subscription(u64::MAX));
        }
        let mut written = String::new();
        largest.write_positions(&mut written);
        assert_eq!(largest.positions_len_bound(), written.len(), "{written}");
    }

    #[test]
    fn the_table_is_an_exact_list_for_a_few_channels_and_a_map_beyond() {
        let mut table = SubscriptionTable::default();
        table.insert(channel(0), subscription(0));
        table.insert(channel(1), subscription(1));
        match &table {
            SubscriptionTable::Few(list) => assert_eq!(list.capacity(), 2),
            SubscriptionTable::Many(_) => panic!("two channels went to a map"),
        }
        for i in 2..=FEW_SUBSCRIPTIONS {
            table.insert(channel(i), subscription(i as u64));
        }
        assert!(matches!(table, SubscriptionTable::Many(_)));
        assert_eq!(table.len(), FEW_SUBSCRIPTIONS + 1);
        for i in 0..=FEW_SUBSCRIPTIONS {
            assert!(table.contains_key(&channel(i)));
            assert_eq!(table.get_mut(&channel(i)).map(|s| s.offset), Some(i as u64));
        }
        assert_eq!(table.remove(&channel(3)).map(|s| s.offset), Some(3));
        assert!(!table.contains_key(&channel(3)));
        assert_eq!(table.iter().count(), FEW_SUBSCRIPTIONS);

        let mut few = SubscriptionTable::default();
        few.insert(channel(0), subscription(0));
        few.insert(channel(1), subscription(1));
        assert!(few.remove(&channel(9)).is_none());
        assert_eq!(few.remove(&channel(0)).map(|s| s.offset), Some(0));
        assert!(few.get_mut(&channel(0)).is_none());
        let keys: Vec<ChannelName> = few.into_keys().collect();
        assert_eq!(keys, [channel(1)]);
    }
}
