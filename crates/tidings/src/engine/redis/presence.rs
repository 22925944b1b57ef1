//! [`RedisPresence`]: who is on which channel, across nodes.
//!
//! Each connection's entry carries the node holding it. Entries of a node
//! that stopped heart-beating are left out of listings at once and removed
//! by the survivors within `engine.node_ttl` (see `cluster`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::SemaphorePermit;

use super::Shared;
use crate::engine::presence::{member_of, ClientPresence, PresenceChange, PresenceStore};
use crate::engine::{Broker, EngineError};
use crate::protocol::messages::PresenceMember;
use crate::protocol::{ChannelName, PresenceStatus};

/// Presence in Redis, shared by every node.
pub struct RedisPresence {
    shared: Arc<Shared>,
    /// This node's connections that may have an entry on each channel (by
    /// client id). A channel leaves the node's index in Redis (the channels
    /// the reaper looks at when the node dies) once its last one here has
    /// left; the index otherwise kept every channel the node ever had
    /// presence on. Kept by client rather than counted: a leave that finds
    /// no entry (a join that never wrote it, a leave done twice when the
    /// first one's answer was lost) must still take that client off, and
    /// only that client.
    local: Mutex<HashMap<ChannelName, HashSet<Arc<str>>>>,
}

impl RedisPresence {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            local: Mutex::new(HashMap::new()),
        }
    }

    fn local(&self) -> MutexGuard<'_, HashMap<ChannelName, HashSet<Arc<str>>>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `client` may have an entry on `channel`: noted before the index
    /// records the channel.
    fn note_entry(&self, channel: &ChannelName, client: &Arc<str>) {
        self.local()
            .entry(channel.clone())
            .or_default()
            .insert(client.clone());
    }

    /// `client` has no entry on `channel` any more; the last client takes
    /// the channel out of the node's index. No lock spans the removal: a
    /// join noted meanwhile adds the channel again (a join records it after
    /// noting; this looks at the clients after removing).
    async fn forget_entry(&self, channel: &ChannelName, client: &str) {
        {
            let mut local = self.local();
            let Some(clients) = local.get_mut(channel) else {
                return;
            };
            if !clients.remove(client) || !clients.is_empty() {
                return;
            }
            local.remove(channel);
        }
        let link = &self.shared.link;
        let index = link.keys.node_presence(&link.node);
        // Whatever the SREM's outcome: one that timed out may still run
        // after a join's SADD.
        let _ = link
            .query::<()>(redis::cmd("SREM").arg(&index).arg(channel.as_str()))
            .await;
        if self.local().contains_key(channel) {
            let _ = link
                .query::<()>(redis::cmd("SADD").arg(&index).arg(channel.as_str()))
                .await;
        }
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
            order: 0,
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
    /// The `Status` change a join, leave or status change caused, from the
    /// functions' reply tail `[push count, status before, status after, then
    /// each client id and its entry]`: the member as a listing showed it at
    /// that instant, in the push count's place among the user's pushes. None
    /// when the status did not change, or is not known: a user with no
    /// connections recorded there (they joined through a node of an older
    /// release) is left alone.
    pub(super) fn tab_change(user: &str, tail: &[redis::Value]) -> Option<PresenceChange> {
        let order = tail.first().and_then(super::number)?;
        let status = |i: usize| {
            tail.get(i)
                .and_then(super::text)
                .and_then(|s| status_named(&s))
        };
        let (before, after) = (status(1)?, status(2)?);
        if before == after {
            return None;
        }
        let clients: Vec<ClientPresence> = tail[3..]
            .chunks_exact(2)
            .filter_map(|pair| {
                let id = super::text(&pair[0])?;
                let entry: Entry = serde_json::from_str(&super::text(&pair[1])?).ok()?;
                Some(entry.client(&id))
            })
            .collect();
        let mut member = member_of(user, &clients).filter(|m| m.status != before)?;
        member.order = order;
        Some(PresenceChange::Status(member))
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
        // Noted, then recorded, then written: if this node dies right
        // after, the survivors find the entry. A join that fails stays
        // noted: its caller takes it back with a leave.
        self.note_entry(channel, &client.client);
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
            return Ok(member_of(&user, &vec![client]).map(|mut member| {
                // The user's first push on the channel.
                member.order = 1;
                PresenceChange::Join(member)
            }));
        }
        Ok(Self::tab_change(&client.user, &reply[1..]))
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
        // Gone, or not there (a second leave of the same entry, one cut
        // short or whose answer was lost; a join that never wrote it;
        // reaped): either way this client has none now. A leave that failed
        // is tried again, and forgets it then.
        self.forget_entry(channel, client).await;
        if left < 0 {
            return Ok(None);
        }
        let entry = reply.get(1).and_then(super::text).ok_or_else(bad_entry)?;
        let entry: Entry = serde_json::from_str(&entry).map_err(|_| bad_entry())?;
        if left == 0 {
            // Order 0: published once the user has no tab left.
            return Ok(Some(PresenceChange::Leave(entry.gone_member())));
        }
        Ok(Self::tab_change(user, &reply[2..]))
    }

    async fn set_status(
        &self,
        channel: &ChannelName,
        user: &str,
        client: &str,
        status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        let link = &self.shared.link;
        let keys = &link.keys;
        // Only this connection writes its own entry: reading it first is
        // safe. Everything about the user's other tabs comes from the
        // function, in the same atomic step as the change.
        let slot = self.slot().await?;
        let entry: Option<String> = link
            .query(redis::cmd("HGET").arg(keys.presence(channel)).arg(client))
            .await?;
        let Some(entry) = entry.and_then(|e| serde_json::from_str::<Entry>(&e).ok()) else {
            return Ok(None);
        };
        let stored = Entry {
            status,
            node: link.node.clone(),
            ..entry
        };
        let stored = serde_json::to_string(&stored).map_err(|_| bad_entry())?;
        let reply: Vec<redis::Value> = link
            .call(
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
        if reply.first().and_then(super::number) != Some(1) {
            return Ok(None);
        }
        Ok(Self::tab_change(user, &reply[1..]))
    }

    async fn members(&self, channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        let users = self.users(channel).await?;
        Ok(users
            .iter()
            .filter_map(|(user, clients)| member_of(user, clients))
            .collect())
    }

    async fn announce(
        &self,
        _broker: &dyn Broker,
        channel: &ChannelName,
        change: &PresenceChange,
        text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        let member = match change {
            PresenceChange::Join(m) | PresenceChange::Leave(m) | PresenceChange::Status(m) => m,
        };
        push_change(&self.shared, channel, member, text).await
    }
}

/// Publishes the push `text` about `member` on `channel` unless a later
/// pushed change of the same user overtook it (see `member.order`).
pub(super) async fn push_change(
    shared: &Shared,
    channel: &ChannelName,
    member: &PresenceMember,
    text: Utf8Bytes,
) -> Result<(), EngineError> {
    let link = &shared.link;
    let mut message = Vec::with_capacity(text.len() + 1);
    message.push(b'P');
    message.extend_from_slice(text.as_bytes());
    let order = member.order.to_string();
    let pubsub = link.keys.pubsub(channel);
    let sharded = if link.sharded() { "1" } else { "0" };
    // A mass disconnect sends a push per leaving user: capped with the
    // leaves themselves.
    let _slot = shared.presence_slot().await?;
    link.call::<i64>(
        "presence_push",
        &[&link.keys.presence_tabs(channel)],
        &[
            member.user.as_bytes(),
            order.as_bytes(),
            pubsub.as_bytes(),
            &message,
            sharded.as_bytes(),
        ],
    )
    .await?;
    Ok(())
}
