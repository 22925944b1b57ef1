//! The node's control plane: which nodes are alive, and server-API actions
//! that must reach a user's connections wherever they are. [`Cluster`] is the
//! seam; [`LocalCluster`] serves one node, the Redis engine serves several.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::EngineError;
use crate::protocol::{ChannelName, CloseCode};

/// One live node, as `GET /api/info` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id (`node` in `connected`).
    pub name: String,
    /// Client connections it holds.
    pub connections: usize,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Its Tidings version.
    pub version: String,
}

/// What this node does when a control action reaches it. The hub implements it.
#[async_trait]
pub trait ControlHandler: Send + Sync + 'static {
    /// Closes every local connection of `user` with `code`; returns how many.
    fn disconnect_user(&self, user: &str, code: CloseCode, reason: Option<String>) -> usize;
    /// Removes every local connection of `user` from `channel`; returns how many.
    async fn unsubscribe_user(&self, user: &str, channel: &ChannelName, reason: &str) -> usize;
    /// Client connections on this node.
    fn connection_count(&self) -> usize;
}

/// The engine's state as `/health` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Whether the backing store answers (always true in memory).
    pub available: bool,
    /// Outages seen since start.
    pub outages: u64,
    /// Channels whose continuity was restored from history after a gap.
    pub gaps_filled: u64,
    /// Channels whose subscribers were told to resubscribe (continuity lost).
    pub resubscribes: u64,
}

/// Node membership and cluster-wide control actions.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Registers what this node does on a control action. Called once.
    fn attach(&self, handler: Arc<dyn ControlHandler>);
    /// The name this node goes by in the node list, when the engine was
    /// given one: [`crate::Tidings::with_engine`] uses it when `config.node`
    /// is unset, so clients and the cluster see one name.
    fn node_name(&self) -> Option<&str> {
        None
    }
    /// Closes `user`'s connections on every node; returns how many this node
    /// closed (other nodes act on their own).
    async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: Option<String>,
    ) -> Result<usize, EngineError>;
    /// Removes `user` from `channel` on every node; returns how many of this
    /// node's connections were removed.
    async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &ChannelName,
        reason: &str,
    ) -> Result<usize, EngineError>;
    /// Every live node, this one first.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;
    /// Availability and counters of the engine.
    fn status(&self) -> EngineStatus;
    /// A clean stop: takes this node off the list of live nodes at once
    /// (with its presence entries), rather than after `node_ttl` as for a node
    /// that died. Called once the node's connections are drained.
    async fn leave(&self) {}
}

/// One node: every action is local.
pub struct LocalCluster {
    name: String,
    started: Instant,
    handler: OnceLock<Arc<dyn ControlHandler>>,
}

impl LocalCluster {
    /// The single node `name`.
    pub fn new(name: String) -> Self {
        Self {
            name,
            started: Instant::now(),
            handler: OnceLock::new(),
        }
    }
}

/// This node's entry in the node list.
pub(crate) fn local_node(name: &str, started: Instant, connections: usize) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        connections,
        uptime_seconds: started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

#[async_trait]
impl Cluster for LocalCluster {
    fn attach(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.handler.set(handler);
    }

    fn node_name(&self) -> Option<&str> {
        Some(&self.name)
    }

    async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        Ok(self
            .handler
            .get()
            .map_or(0, |h| h.disconnect_user(user, code, reason)))
    }

    async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &ChannelName,
        reason: &str,
    ) -> Result<usize, EngineError> {
        match self.handler.get() {
            Some(h) => Ok(h.unsubscribe_user(user, channel, reason).await),
            None => Ok(0),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let connections = self.handler.get().map_or(0, |h| h.connection_count());
        Ok(vec![local_node(&self.name, self.started, connections)])
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            available: true,
            ..EngineStatus::default()
        }
    }
}
