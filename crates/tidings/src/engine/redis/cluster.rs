//! [`RedisCluster`]: which nodes are alive, API actions that reach every node,
//! and cleaning up after a node that died.
//!
//! Every node writes a heartbeat (its entry and Redis's time) every third of
//! `engine.node_ttl`. A node whose heartbeat is older than `node_ttl` is dead:
//! its presence entries are left out of listings at once, and one survivor
//! (the one that takes the reaper lock) removes them, telling the channels'
//! subscribers that those users left.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use redis::Value;
use serde::{Deserialize, Serialize};

use super::presence::{push_change, Entry, RedisPresence};
use super::receiver::Incoming;
use super::{millis, number, text, Shared};
use crate::engine::cluster::{local_node, Cluster, ControlHandler, EngineStatus, NodeInfo};
use crate::engine::presence::PresenceChange;
use crate::engine::EngineError;
use crate::protocol::{ChannelName, CloseCode, ServerMessage};

/// Node membership and control actions through Redis.
pub struct RedisCluster {
    shared: Arc<Shared>,
}

impl RedisCluster {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn broadcast(&self, action: &ControlAction) -> Result<(), EngineError> {
        let link = &self.shared.link;
        let message = serde_json::to_string(&ControlMessage {
            from: link.node.clone(),
            action: action.clone(),
        })
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        link.query::<()>(redis::cmd("PUBLISH").arg(link.keys.control()).arg(message))
            .await
    }

    fn local(&self) -> NodeInfo {
        let connections = self
            .shared
            .control
            .get()
            .map_or(0, |h| h.connection_count());
        local_node(&self.shared.link.name, self.shared.started, connections)
    }
}

/// An API action carried to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ControlAction {
    Disconnect {
        user: String,
        code: u16,
        reason: Option<String>,
    },
    Unsubscribe {
        user: String,
        channel: String,
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ControlMessage {
    from: String,
    #[serde(flatten)]
    action: ControlAction,
}

/// Acts on a control message from another node.
pub(crate) async fn on_control(shared: &Shared, payload: &[u8]) {
    let Ok(message) = serde_json::from_slice::<ControlMessage>(payload) else {
        tracing::warn!("unreadable control message");
        return;
    };
    if message.from == shared.link.node {
        return;
    }
    let Some(handler) = shared.control.get() else {
        return;
    };
    match message.action {
        ControlAction::Disconnect { user, code, reason } => {
            if let Some(code) = CloseCode::from_code(code) {
                handler.disconnect_user(&user, code, reason);
            }
        }
        ControlAction::Unsubscribe {
            user,
            channel,
            reason,
        } => {
            if let Ok(channel) = ChannelName::parse(&channel) {
                handler.unsubscribe_user(&user, &channel, &reason).await;
            }
        }
    }
}

#[async_trait]
impl Cluster for RedisCluster {
    fn attach(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.shared.control.set(handler);
    }

    fn node_name(&self) -> Option<&str> {
        Some(&self.shared.link.name)
    }

    async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        // This node's connections first: they need no Redis, and stay acted
        // on when telling the others fails (503; a retry finds them gone).
        let closed = self
            .shared
            .control
            .get()
            .map_or(0, |h| h.disconnect_user(user, code, reason.clone()));
        self.broadcast(&ControlAction::Disconnect {
            user: user.to_owned(),
            code: code.code(),
            reason,
        })
        .await?;
        Ok(closed)
    }

    async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &ChannelName,
        reason: &str,
    ) -> Result<usize, EngineError> {
        // This node's connections first, as for a disconnect.
        let removed = match self.shared.control.get() {
            Some(h) => h.unsubscribe_user(user, channel, reason).await,
            None => 0,
        };
        self.broadcast(&ControlAction::Unsubscribe {
            user: user.to_owned(),
            channel: channel.to_string(),
            reason: reason.to_owned(),
        })
        .await?;
        Ok(removed)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let me = self.local();
        let ttl = millis(self.shared.link.settings.node_ttl);
        let mut nodes = vec![me.clone()];
        for (member, age, entry) in beat(&self.shared, None).await? {
            if member == self.shared.link.node || age > ttl {
                continue;
            }
            if let Ok(info) = serde_json::from_str::<NodeInfo>(&entry) {
                nodes.push(info);
            }
        }
        Ok(nodes)
    }

    async fn leave(&self) {
        let shared = &self.shared;
        shared.left.store(true, Ordering::Relaxed);
        let me = shared.link.node.clone();
        match remove_node(shared, &me).await {
            Ok(()) => tracing::info!("left the node list"),
            Err(err) => {
                tracing::warn!(error = %err, "could not leave the node list; the others drop this node after node_ttl")
            }
        }
    }

    fn status(&self) -> EngineStatus {
        let shared = &self.shared;
        EngineStatus {
            available: shared.link.availability.is_up(),
            outages: shared.link.availability.outages(),
            gaps_filled: shared.gaps_filled.load(Ordering::Relaxed),
            resubscribes: shared.resubscribes.load(Ordering::Relaxed),
        }
    }
}

/// Writes this node's heartbeat (when `me` is given) and returns every
/// member's id (`RedisLink::node`), milliseconds since its last heartbeat, and
/// entry.
async fn beat(
    shared: &Shared,
    me: Option<&NodeInfo>,
) -> Result<Vec<(String, u64, String)>, EngineError> {
    let keys = &shared.link.keys;
    let (member, entry) = match me {
        Some(me) => (
            shared.link.node.clone(),
            serde_json::to_string(me).map_err(|e| EngineError::Unavailable(e.to_string()))?,
        ),
        None => (String::new(), String::new()),
    };
    let reply: Vec<Value> = shared
        .link
        .call(
            "heartbeat",
            &[&keys.nodes(), &keys.node_heartbeats()],
            &[member.as_bytes(), entry.as_bytes()],
        )
        .await?;
    Ok(reply
        .into_iter()
        .filter_map(|row| match row {
            Value::Array(fields) if fields.len() == 3 => Some((
                text(&fields[0])?,
                number(&fields[1]).unwrap_or(0),
                text(&fields[2]).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect())
}

/// How often a node writes its heartbeat.
fn heartbeat_interval(settings: &crate::config::EngineSettings) -> Duration {
    (settings.node_ttl / 3).max(Duration::from_millis(100))
}

/// How often a node extends the positions of the channels it follows.
fn touch_interval(settings: &crate::config::EngineSettings) -> Duration {
    (settings.position_ttl / 4).max(heartbeat_interval(settings))
}

/// The time to live a followed channel's position gets at each touch: at
/// least `position_ttl`, and two touches' worth when `position_ttl` is
/// shorter than the heartbeat, so it never lapses while a node follows it.
pub(crate) fn followed_ttl(settings: &crate::config::EngineSettings) -> Duration {
    settings.position_ttl.max(touch_interval(settings) * 2)
}

/// The node's heartbeat loop: writes its entry, keeps the list of live nodes,
/// reaps dead nodes, keeps followed positions alive, and subscribes to the
/// control channel. Runs until the engine is dropped.
pub(crate) async fn heartbeat(shared: Weak<Shared>) {
    let Some(settings) = shared.upgrade().map(|s| s.link.settings.clone()) else {
        return;
    };
    let interval = heartbeat_interval(&settings);
    let touch_every = touch_interval(&settings);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_subscribed = false;
    // On the ticks' schedule, not the time a beat ends: measured after a
    // beat, a touch one heartbeat later looked a hair early and was put off
    // to the next tick, so positions were extended every two heartbeats, the
    // very lifetime they get.
    let mut last_touch: Option<tokio::time::Instant> = None;
    // When the last beat that reached Redis returned, and the first one
    // after a gap (failed beats, a beat held up by Redis, or this process
    // stalled). Real time, not the ticks': a beat can wait out a whole
    // outage in Redis's input and land when it ends.
    let mut last_beat: Option<tokio::time::Instant> = None;
    let mut resumed: Option<tokio::time::Instant> = None;
    loop {
        let ticked = tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.left.load(Ordering::Relaxed) {
            return;
        }
        if !control_subscribed {
            control_subscribed = shared.link.subscribe_control().await.is_ok();
        }
        let connections = shared.control.get().map_or(0, |h| h.connection_count());
        let me = local_node(&shared.link.name, shared.started, connections);
        let Ok(nodes) = beat(&shared, Some(&me)).await else {
            // Also reconnects the pub/sub connection once Redis is back.
            let _ = shared.link.ping_subscriber().await;
            continue;
        };
        // A gap long enough for this node to look dead (its age over
        // node_ttl when the next beat would have come).
        let gap = settings.node_ttl.saturating_sub(interval);
        let beaten = tokio::time::Instant::now();
        if last_beat.is_some_and(|last| beaten.saturating_duration_since(last) > gap) {
            resumed = Some(beaten);
        }
        // Nodes that beat on while this one could not may have taken it for
        // dead and removed its presence entries. Checked at every beat: a
        // reap decided just before this beat can end after it.
        check_not_reaped(&shared).await;
        last_beat = Some(beaten);
        // The other nodes may not have been able to beat either (Redis was
        // away): judge none dead until each has had a whole interval after
        // this beat to be heard, or a Redis outage longer than node_ttl
        // would remove everyone's presence.
        if resumed.is_some_and(|at| beaten.saturating_duration_since(at) <= interval * 3 / 2) {
            continue_touching(&shared, ticked, touch_every, &mut last_touch);
            continue;
        }
        let ttl = millis(settings.node_ttl);
        let dead: Vec<String> = nodes
            .iter()
            .filter(|(_, age, _)| *age > ttl)
            .map(|(name, _, _)| name.clone())
            .collect();
        if let Ok(mut cached) = shared.dead_nodes.write() {
            cached.clone_from(&dead);
        }
        for dead in &dead {
            if let Err(err) = reap(&shared, dead).await {
                tracing::warn!(node = %dead, error = %err, "could not clean up after a dead node");
            }
        }
        continue_touching(&shared, ticked, touch_every, &mut last_touch);
    }
}

/// Extends the followed channels' positions when a touch is due at `ticked`.
fn continue_touching(
    shared: &Shared,
    ticked: tokio::time::Instant,
    touch_every: Duration,
    last_touch: &mut Option<tokio::time::Instant>,
) {
    if last_touch.is_none_or(|last| ticked.saturating_duration_since(last) >= touch_every) {
        *last_touch = Some(ticked);
        shared.tell(Incoming::Touch);
    }
}

/// If another node reaped this one (it left its mark), this node's presence
/// entries are gone although its clients are connected: its subscribers
/// subscribe again, which enters them again, once the reaper has had a beat
/// to finish.
async fn check_not_reaped(shared: &Arc<Shared>) {
    let link = &shared.link;
    let removed: Result<i64, EngineError> = link
        .query(redis::cmd("DEL").arg(link.keys.reaped(&link.node)))
        .await;
    if removed.is_ok_and(|n| n > 0) {
        tracing::warn!(
            "other nodes took this one for dead (no heartbeat of it reached Redis for \
             node_ttl) and removed its presence entries: its subscribers resubscribe"
        );
        let shared = Arc::downgrade(shared);
        let wait = heartbeat_interval(&link.settings);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(shared) = shared.upgrade() {
                shared.tell(Incoming::ResubscribeAll);
            }
        });
    }
}

/// How long a reaped node's mark stays: a node that stalls or is cut off
/// longer than this is surely disconnected from every client anyway.
const REAPED_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// Removes a dead node's presence entries (if this node wins the reaper lock),
/// telling each channel's subscribers who left.
async fn reap(shared: &Shared, dead: &str) -> Result<(), EngineError> {
    let link = &shared.link;
    let keys = &link.keys;
    let won: Option<String> = link
        .query(
            redis::cmd("SET")
                .arg(keys.reaper(dead))
                .arg(&link.node)
                .arg("NX")
                .arg("PX")
                .arg(60_000),
        )
        .await?;
    if won.is_none() {
        return Ok(());
    }
    remove_node(shared, dead).await?;
    // Marked once the entries are gone: a node that was alive after all
    // finds the mark at its next beat, and its subscribers enter again
    // after the removal, not during it.
    link.query::<()>(
        redis::cmd("SET")
            .arg(keys.reaped(dead))
            .arg(1)
            .arg("PX")
            .arg(millis(REAPED_MARK_TTL)),
    )
    .await?;
    tracing::info!(node = %dead, "cleaned up after a dead node");
    Ok(())
}

/// Removes `node`'s presence entries, telling each channel's subscribers who
/// left and whose status changed (a user whose online tab was on the dead
/// node and whose other tab is away), and takes it off the node list.
async fn remove_node(shared: &Shared, node: &str) -> Result<(), EngineError> {
    let link = &shared.link;
    let keys = &link.keys;
    let channels: Vec<String> = link
        .query(redis::cmd("SMEMBERS").arg(keys.node_presence(node)))
        .await?;
    for channel in channels.iter().filter_map(|c| ChannelName::parse(c).ok()) {
        let reply: Vec<Value> = link
            .call(
                "presence_reap",
                &[
                    &keys.presence(&channel),
                    &keys.presence_users(&channel),
                    &keys.presence_tabs(&channel),
                ],
                &[node.as_bytes()],
            )
            .await?;
        let gone = match reply.first() {
            Some(Value::Array(gone)) => gone.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        for entry in gone {
            let Ok(entry) = serde_json::from_str::<Entry>(&entry) else {
                continue;
            };
            let push = ServerMessage::PresenceChanged {
                channel: channel.to_string(),
                action: "leave",
                member: entry.gone_member(),
            };
            shared
                .publish_presence(&channel, Utf8Bytes::from(push.to_json()))
                .await?;
        }
        for change in reply.iter().skip(1) {
            let Value::Array(change) = change else {
                continue;
            };
            let Some(user) = change.first().and_then(text) else {
                continue;
            };
            let Some(PresenceChange::Status(member)) =
                RedisPresence::tab_change(&user, &change[1..])
            else {
                continue;
            };
            let push = ServerMessage::PresenceChanged {
                channel: channel.to_string(),
                action: "status",
                member: member.clone(),
            };
            push_change(shared, &channel, &member, Utf8Bytes::from(push.to_json())).await?;
        }
    }
    link.query::<()>(redis::cmd("DEL").arg(keys.node_presence(node)))
        .await?;
    link.query::<()>(redis::cmd("HDEL").arg(keys.nodes()).arg(node))
        .await?;
    link.query::<()>(redis::cmd("HDEL").arg(keys.node_heartbeats()).arg(node))
        .await?;
    Ok(())
}
