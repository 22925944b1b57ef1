//! Requests whose answer does not depend on the transport: `publish`,
//! `history`, `presence` and the token check of `refresh`. The WebSocket session
//! and `POST /request` both answer through these, with the same checks.

use std::sync::Arc;

use tidings_auth::Identity;

use super::subscriptions::{parse_channel, Refusal};
use crate::access::Action;
use crate::engine::{HistoryQuery, Publication};
use crate::protocol::{
    ErrorCode, EventMeta, HistoryOrder, RequestId, ServerMessage, StreamPosition,
};
use crate::publisher::PublishRequest;
use crate::server::ServerState;

/// Who is asking, for audience filtering of history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    /// The connection id (`exclude_client` is checked against it); empty when
    /// the request comes from no connection.
    pub client: &'a str,
    /// The verified identity.
    pub identity: &'a Identity,
}

/// A client `publish`: checked against the namespace's publish rules, with
/// `meta.actor` set to the publisher.
pub(crate) async fn publish(
    state: &ServerState,
    identity: &Identity,
    id: Option<RequestId>,
    channel: String,
    event: String,
    data: &serde_json::Value,
) -> Result<ServerMessage, Refusal> {
    let name = parse_channel(&channel)?;
    state.access.check(identity, &name, Action::Publish)?;
    let mut request = PublishRequest::json(channel, event, data)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    // The server vouches for the actor of a client publish.
    request.meta = Some(EventMeta {
        actor: Some(identity.user.to_string()),
        ..EventMeta::default()
    });
    let published = state
        .publisher
        .publish(request)
        .await
        .map_err(|err| Refusal::new(err.code(), err.to_string()))?;
    Ok(ServerMessage::Published {
        id,
        channel: published.channel,
        offset: published.offset,
    })
}

/// A `history` read, as the reply's JSON text.
pub(crate) async fn history(
    state: &ServerState,
    reader: Reader<'_>,
    id: Option<RequestId>,
    channel: &str,
    since: Option<StreamPosition>,
    limit: Option<u32>,
    order: HistoryOrder,
) -> Result<String, Refusal> {
    let channel = parse_channel(channel)?;
    state
        .access
        .check(reader.identity, &channel, Action::History)?;
    let limit = limit.map(|l| l as usize);
    let mut query = HistoryQuery {
        after: since.as_ref().map(|s| s.offset),
        limit,
        newest_first: order == HistoryOrder::Newest,
    };
    let identity = reader.identity;
    let admits = |p: &Arc<Publication>| p.admits(reader.client, &identity.user, &identity.roles);
    let broker = state.hub.broker();
    let mut page = broker
        .history(&channel, &query)
        .await
        .map_err(|_| Refusal::engine_unavailable())?;
    // `limit` counts the events this reader may see: when the page was full
    // and some of it is for others, read everything after `since` (bounded
    // by the namespace's history_size) and take `limit` of what remains.
    if limit.is_some_and(|l| l > 0 && page.events.len() >= l) && !page.events.iter().all(admits) {
        query.limit = None;
        page = broker
            .history(&channel, &query)
            .await
            .map_err(|_| Refusal::engine_unavailable())?;
    }
    // Offsets of another epoch say nothing about this one.
    let same_epoch = since
        .as_ref()
        .is_none_or(|s| *s.epoch == *page.position.epoch);
    let events: Vec<&Arc<Publication>> = page
        .events
        .iter()
        .filter(|_| same_epoch)
        .filter(|p| admits(p))
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    Ok(super::history_json(
        id.as_ref(),
        &channel,
        &page.position,
        &events,
        None,
    ))
}

/// A `presence` listing.
pub(crate) async fn presence(
    state: &ServerState,
    identity: &Identity,
    id: Option<RequestId>,
    channel: &str,
) -> Result<ServerMessage, Refusal> {
    let channel = parse_channel(channel)?;
    state.access.check(identity, &channel, Action::Presence)?;
    let members = state
        .presence
        .members(&channel)
        .await
        .map_err(|_| Refusal::engine_unavailable())?;
    Ok(ServerMessage::PresenceList {
        id,
        channel: channel.to_string(),
        members,
    })
}

/// Verifies a `refresh` token: valid, and for the same user.
pub(crate) fn verify_refresh(
    state: &ServerState,
    user: &str,
    token: &str,
) -> Result<Identity, Refusal> {
    let mut identity = state.verifier.verify(token).map_err(|err| {
        state.metrics.auth_failed();
        let code = if err.is_expired() {
            ErrorCode::TokenExpired
        } else {
            ErrorCode::Unauthorized
        };
        Refusal::new(code, err.to_string())
    })?;
    if &*identity.user != user {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the new token is for another user",
        ));
    }
    state.access.retain_read_claims(&mut identity);
    Ok(identity)
}
