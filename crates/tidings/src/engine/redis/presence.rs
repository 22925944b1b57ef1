//! [`RedisPresence`]: who is on which channel, across nodes.
//!
//! Each connection's entry carries the node holding it. Entries of a node
//! that stopped heart-beating are left out of listings at once and removed
//! by the survivors within `engine.node_ttl` (see `cluster`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::SemaphorePermit;

use super::Shared;
use crate::engine::presence::{member_of, ClientPresence, PresenceChange, PresenceStore};
use crate::engine::EngineError;
use crate::protocol::messages::PresenceMember;
use crate::protocol::{ChannelName, PresenceStatus};

/// Presence in Redis, shared by every node.
pub struct RedisPresence {
    shared: Arc<Shared>,
}

impl RedisPresence {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Waits for one of the node's presence call slots.
    async fn slot(&self) -> Result<SemaphorePermit<'_>, EngineError> {
        self.shared.presence_slot().await
    }
}

/// One connection's entry, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "s")]
    pub status: PresenceStatus,
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Json>,
    #[serde(rename = "n")]
    pub node: String,
}

impl Entry {
    fn client(&self, client: &str) -> ClientPresence {
        ClientPresence {
            client: Arc::from(client),
            user: Arc::from(self.user.as_str()),
            status: self.status,
            info: self.info.clone(),
        }
    }

    /// The member view of a user whose last connection this was.
    pub fn gone_member(self) -> PresenceMember {
        PresenceMember {
            user: self.user,
            status: self.status,
            info: self.info,
            clients: Vec::new(),
        }
    }
}

fn bad_entry() -> EngineError {
    EngineError::Unavailable("unreadable presence entry in Redis".to_owned())
}

fn status_name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Busy => "busy",
    }
}

fn status_named(name: &str) -> Option<PresenceStatus> {
    match name {
        "online" => Some(PresenceStatus::Online),
        "away" => Some(PresenceStatus::Away),
        "busy" => Some(PresenceStatus::Busy),
        _ => None,
    }
}

impl RedisPresence {
    /// The `Status` change a join or leave caused, from the functions' reply
    /// tail `[status before, status after, client ids…]`: the member as a
    /// listing shows it (its connections' entries are read to get its `info`).
    /// None when the status did not change, or is not known: a user with no
    /// connections recorded there (they joined through a node of an older
    /// release) is left alone.
    async fn tab_change(
        &self,
        channel: &ChannelName,
        user: &str,
        tail: &[String],
    ) -> Result<Option<PresenceChange>, EngineError> {
        let (Some(before), Some(after)) = (
            tail.first().and_then(|s| status_named(s)),
            tail.get(1).and_then(|s| status_named(s)),
        ) else {
            return Ok(None);
        };
        let ids = &tail[2..];
        if before == after || ids.is_empty() {
            return Ok(None);
        }
        let link = &self.shared.link;
        let slot = self.slot().await?;
        let entries: Vec<Option<String>> = link
            .query(
                redis::cmd("HMGET")
                    .arg(link.keys.presence(channel))
                    .arg(ids),
            )
            .await?;
        drop(slot);
        let clients: Vec<ClientPresence> = ids
            .iter()
            .zip(entries)
            .filter_map(|(id, entry)| {
                let entry: Entry = serde_json::from_str(&entry?).ok()?;
                Some(entry.client(id))
            })
            .collect();
        Ok(member_of(user, &clients)
            .filter(|m| m.status != before)
            .map(PresenceChange::Status))
    }

    /// The channel's entries of live nodes, by user.
    async fn users(
        &self,
        channel: &ChannelName,
    ) -> Result<BTreeMap<String, Vec<ClientPresence>>, EngineError> {
        let link = &self.shared.link;
        let slot = self.slot().await?;
        let all: Vec<(String, String)> = link
            .query(redis::cmd("HGETALL").arg(link.keys.presence(channel)))
            .await?;
        drop(slot);
        let dead = self.shared.dead_nodes();
        let mut users: BTreeMap<String, Vec<ClientPresence>> = BTreeMap::new();
        for (client, entry) in all {
            let Ok(entry) = serde_json::from_str::<Entry>(&entry) else {
                continue;
            };
            if dead.contains(&entry.node) {
                continue;
            }
            users
                .entry(entry.user.clone())
                .or_default()
                .push(entry.client(&client));
        }
        Ok(users)
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn join(
        &self,
        channel: &ChannelName,
        client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let link = &self.shared.link;
        let keys = &link.keys;
        let entry = Entry {
            user: client.user.to_string(),
            status: client.status,
            info: client.info.clone(),
            node: link.node.clone(),
        };
        let entry = serde_json::to_string(&entry).map_err(|_| bad_entry())?;
        let slot = self.slot().await?;
        // Recorded first: if this node dies right after, the survivors find it.
        link.query::<()>(
            redis::cmd("SADD")
                .arg(keys.node_presence(&link.node))
                .arg(channel.as_str()),
        )
        .await?;
        let reply: Vec<redis::Value> = link
            .call(
                "presence_join",
                &[
                    &keys.presence(channel),
                    &keys.presence_users(channel),
                    &keys.presence_tabs(channel),
                ],
                &[
                    client.client.as_bytes(),
                    client.user.as_bytes(),
                    entry.as_bytes(),
                    status_name(client.status).as_bytes(),
                ],
            )
            .await?;
        drop(slot);
        let count = reply
            .first()
            .and_then(super::number)
            .ok_or_else(bad_entry)?;
        if count == 1 {
            let user = client.user.clone();
            return Ok(member_of(&user, &vec![client]).map(PresenceChange::Join));
        }
        let tail: Vec<String> = reply[1..].iter().filter_map(super::text).collect();
        self.tab_change(channel, &client.user, &tail).await
    }

    async fn leave(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let keys = &self.shared.link.keys;
        let slot = self.slot().await?;
        let reply: Vec<redis::Value> = self
            .shared
            .link
            .call(
                "presence_leave",
                &[
                    &keys.presence(channel),
                    &keys.presence_users(channel),
                    &keys.presence_tabs(channel),
                ],
                &[client.as_bytes(), user.as_bytes()],
            )
            .await?;
        drop(slot);
        let left = match reply.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => return Err(bad_entry()),
        };
        if left < 0 {
            return Ok(None);
        }
        let entry = reply.get(1).and_then(super::text).ok_or_else(bad_entry)?;
        let entry: Entry = serde_json::from_str(&entry).map_err(|_| bad_entry())?;
        if left == 0 {
            return Ok(Some(PresenceChange::Leave(entry.gone_member())));
        }
        let tail: Vec<String> = reply[2..].iter().filter_map(super::text).collect();
        self.tab_change(channel, user, &tail).await
    }

    async fn set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
        status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let link = &self.shared.link;
        let users = self.users(channel).await?;
        let Some(mine) = users.get(user) else {
            return Ok(None);
        };
        let Some(entry) = mine.iter().find(|c| &*c.client == client) else {
            return Ok(None);
        };
        let before = member_of(user, mine).map(|m| m.status);
        let stored = Entry {
            user: user.to_owned(),
            status,
            info: entry.info.clone(),
            node: link.node.clone(),
        };
        let stored = serde_json::to_string(&stored).map_err(|_| bad_entry())?;
        let slot = self.slot().await?;
        let keys = &link.keys;
        link.call::<i64>(
            "presence_status",
            &[&keys.presence(channel), &keys.presence_tabs(channel)],
            &[
                client.as_bytes(),
                user.as_bytes(),
                stored.as_bytes(),
                status_name(status).as_bytes(),
            ],
        )
        .await?;
        drop(slot);
        let after: Vec<ClientPresence> = mine
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if &*c.client == client {
                    c.status = status;
                }
                c
            })
            .collect();
        Ok(member_of(user, &after)
            .filter(|m| Some(m.status) != before)
            .map(PresenceChange::Status))
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        let users = self.users(channel).await?;
        Ok(users
            .iter()
            .filter_map(|(user, clients)| member_of(user, clients))
            .collect())
    }
}
