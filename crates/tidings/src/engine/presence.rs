//! Presence: who is on a channel, with a status. [`PresenceStore`] is the seam;
//! [`MemoryPresence`] serves one node.
//!
//! Presence is tracked per connection and reported per user: a user is a member
//! while any of their connections is subscribed, and their status is the most
//! available status among those connections (online, then busy, then away).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use serde_json::Value;

use super::{Broker, EngineError};
use crate::protocol::messages::PresenceMember;
use crate::protocol::{ChannelName, PresenceStatus};

/// One connection's presence on a channel.
#[derive(Debug, Clone)]
pub struct ClientPresence {
    /// Connection id.
    pub client: Arc<str>,
    /// User id.
    pub user: Arc<str>,
    /// The connection's status.
    pub status: PresenceStatus,
    /// The token's `info` claim.
    pub info: Option<Value>,
}

/// A change others on the channel should be told about.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceChange {
    /// The user's first connection joined.
    Join(PresenceMember),
    /// The user's last connection left.
    Leave(PresenceMember),
    /// The user's aggregate status changed.
    Status(PresenceMember),
}

/// Where presence lives.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Adds a connection; returns `Join` when it is the user's first, and
    /// `Status` when it changes the user's status (a more available tab).
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError>;
    /// Removes a connection of `user`; returns `Leave` when it was the user's
    /// last, and `Status` when the user's status changes with it (the most
    /// available tab left).
    async fn leave(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
    ) -> Result<Option<PresenceChange>, EngineError>;
    /// Sets the status of a connection of `user`; returns `Status` when the
    /// user's status changed.
    async fn set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
        status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError>;
    /// The channel's members, one per user, sorted by user id.
    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError>;
    /// Sends `change`'s push, `text`, to the channel's subscribers on every
    /// node. The default hands it to `broker`; an engine whose changes can be
    /// announced out of order (by several nodes) drops a push that a later
    /// change of the same user overtook instead of publishing it after that.
    async fn announce(
        &self,
        broker: &dyn Broker,
        channel: &ChannelName,
        change: &PresenceChange,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        let _ = change;
        broker.publish_presence(channel, text).await
    }
}

fn rank(status: PresenceStatus) -> u8 {
    match status {
        PresenceStatus::Online => 0,
        PresenceStatus::Busy => 1,
        PresenceStatus::Away => 2,
    }
}

/// One user's connections on a channel. A `Vec`, not a map: almost every user
/// has one or two, and a map per user would cost every connection ~1 KiB.
pub(crate) type UserClients = Vec<ClientPresence>;

/// The member view of one user's connections, if it has any.
pub(crate) fn member_of(user: &str, clients: &UserClients) -> Option<PresenceMember> {
    let status = clients.iter().map(|c| c.status).min_by_key(|s| rank(*s))?;
    let mut ids: Vec<String> = clients.iter().map(|c| c.client.to_string()).collect();
    ids.sort();
    Some(PresenceMember {
        user: user.to_owned(),
        status,
        // The same whichever order the connections are listed in (a push and
        // a listing agree): the info of the first connection id that has one.
        info: clients
            .iter()
            .filter(|c| c.info.is_some())
            .min_by(|a, b| a.client.cmp(&b.client))
            .and_then(|c| c.info.clone()),
        clients: ids,
        order: 0,
    })
}

/// `Status` with the user's member view when their status is no longer `before`.
pub(crate) fn status_change(
    before: PresenceStatus,
    after: Option<PresenceMember>,
) -> Option<PresenceChange> {
    after
        .filter(|m| m.status != before)
        .map(PresenceChange::Status)
}

/// Single-node presence: per channel, per user, per connection.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: DashMap<ChannelName, HashMap<Arc<str>, UserClients>>,
}

impl MemoryPresence {
    /// Empty presence.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let mut users = self.channels.entry(channel.clone()).or_default();
        let user = client.user.clone();
        let clients = users
            .entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        let before = member_of(&user, clients).map(|m| m.status);
        clients.retain(|c| c.client != client.client);
        clients.push(client);
        let after = member_of(&user, clients);
        Ok(match before {
            None => after.map(PresenceChange::Join),
            Some(before) => status_change(before, after),
        })
    }

    async fn leave(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let mut change = None;
        self.channels.remove_if_mut(channel, |_, users| {
            if let Some(clients) = users.get_mut(user) {
                let before = member_of(user, clients).map(|m| m.status);
                let index = clients.iter().position(|c| &*c.client == client);
                if let Some(gone) = index.map(|i| clients.swap_remove(i)) {
                    if clients.is_empty() {
                        users.remove(user);
                        change = Some(PresenceChange::Leave(PresenceMember {
                            user: user.to_owned(),
                            status: gone.status,
                            info: gone.info,
                            clients: Vec::new(),
                            order: 0,
                        }));
                    } else if let Some(before) = before {
                        change = status_change(before, member_of(user, clients));
                    }
                }
            }
            users.is_empty()
        });
        Ok(change)
    }

    async fn set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
        status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let Some(mut users) = self.channels.get_mut(channel) else {
            return Ok(None);
        };
        let Some(clients) = users.get_mut(user) else {
            return Ok(None);
        };
        let before = member_of(user, clients).map(|m| m.status);
        match clients.iter_mut().find(|c| &*c.client == client) {
            Some(entry) => entry.status = status,
            None => return Ok(None),
        }
        Ok(before.and_then(|before| status_change(before, member_of(user, clients))))
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        let Some(users) = self.channels.get(channel) else {
            return Ok(Vec::new());
        };
        let mut members: Vec<PresenceMember> =
            users.iter().filter_map(|(u, c)| member_of(u, c)).collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, user: &str) -> ClientPresence {
        ClientPresence {
            client: Arc::from(id),
            user: Arc::from(user),
            status: PresenceStatus::Online,
            info: None,
        }
    }

    #[tokio::test]
    async fn join_and_leave_are_per_user() {
        let p = MemoryPresence::new();
        let ch = ChannelName::parse("workspace:a").unwrap();
        assert!(matches!(
            p.join(&ch, client("c1", "u1")).await.unwrap(),
            Some(PresenceChange::Join(_))
        ));
        assert_eq!(
            p.join(&ch, client("c2", "u1")).await.unwrap(),
            None,
            "second tab is no join"
        );
        let members = p.members(&ch).await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].clients, ["c1", "c2"]);
        assert_eq!(p.leave(&ch, "u1", "c1").await.unwrap(), None);
        assert!(matches!(
            p.leave(&ch, "u1", "c2").await.unwrap(),
            Some(PresenceChange::Leave(_))
        ));
        assert!(p.members(&ch).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn status_is_the_most_available_of_the_users_connections() {
        let p = MemoryPresence::new();
        let ch = ChannelName::parse("workspace:a").unwrap();
        p.join(&ch, client("c1", "u1")).await.unwrap();
        p.join(&ch, client("c2", "u1")).await.unwrap();
        assert_eq!(
            p.set_status(&ch, "u1", "c1", PresenceStatus::Away)
                .await
                .unwrap(),
            None
        );
        let change = p
            .set_status(&ch, "u1", "c2", PresenceStatus::Busy)
            .await
            .unwrap();
        assert!(
            matches!(change, Some(PresenceChange::Status(m)) if m.status == PresenceStatus::Busy)
        );
    }

    #[tokio::test]
    async fn a_tab_joining_or_leaving_can_change_the_users_status() {
        let p = MemoryPresence::new();
        let ch = ChannelName::parse("workspace:a").unwrap();
        let away = ClientPresence {
            status: PresenceStatus::Away,
            ..client("c1", "u1")
        };
        assert!(matches!(
            p.join(&ch, away).await.unwrap(),
            Some(PresenceChange::Join(m)) if m.status == PresenceStatus::Away
        ));
        let change = p.join(&ch, client("c2", "u1")).await.unwrap();
        assert!(
            matches!(&change, Some(PresenceChange::Status(m))
                if m.status == PresenceStatus::Online && m.clients == ["c1", "c2"]),
            "{change:?}"
        );
        let third = ClientPresence {
            status: PresenceStatus::Busy,
            ..client("c3", "u1")
        };
        assert_eq!(p.join(&ch, third).await.unwrap(), None, "still online");
        assert_eq!(
            p.leave(&ch, "u1", "c1").await.unwrap(),
            None,
            "still online"
        );
        let change = p.leave(&ch, "u1", "c2").await.unwrap();
        assert!(
            matches!(&change, Some(PresenceChange::Status(m))
                if m.status == PresenceStatus::Busy && m.clients == ["c3"]),
            "{change:?}"
        );
        assert!(matches!(
            p.leave(&ch, "u1", "c3").await.unwrap(),
            Some(PresenceChange::Leave(_))
        ));
    }
}
