//! Transports: how clients and backends reach the hub. Each speaks the same
//! protocol types and goes through the same access checks.

pub mod api;
pub mod http;
pub mod ops;
mod requests;
mod subscriptions;
pub mod websocket;

use std::sync::Arc;

use crate::engine::{ChannelPosition, Publication};
use crate::protocol::{ChannelName, RequestId};

/// The `history` reply: `{type, id?, channel, epoch, offset, complete?, events:[…]}`,
/// with each event's pre-encoded envelope spliced in rather than re-serialized.
pub(crate) fn history_json(
    id: Option<&RequestId>,
    channel: &ChannelName,
    position: &ChannelPosition,
    events: &[&Arc<Publication>],
    complete: Option<bool>,
) -> String {
    let mut out =
        String::with_capacity(128 + events.iter().map(|p| p.encoded().len() + 1).sum::<usize>());
    out.push_str(r#"{"type":"history""#);
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&serde_json::to_string(id).unwrap_or_else(|_| "null".into()));
    }
    out.push_str(r#","channel":"#);
    out.push_str(&serde_json::to_string(channel.as_str()).unwrap_or_default());
    out.push_str(r#","epoch":"#);
    out.push_str(&serde_json::to_string(&*position.epoch).unwrap_or_default());
    out.push_str(r#","offset":"#);
    out.push_str(&position.offset.to_string());
    if let Some(complete) = complete {
        out.push_str(if complete {
            r#","complete":true"#
        } else {
            r#","complete":false"#
        });
    }
    out.push_str(r#","events":["#);
    for (i, publication) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(publication.encoded().as_str());
    }
    out.push_str("]}");
    out
}
