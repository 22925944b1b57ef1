//! Client requests (§3) and server messages (§3, §4) as typed values.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codes::ErrorCode;

/// A request `id`: any number or string, echoed back verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A JSON number.
    Number(serde_json::Number),
    /// A JSON string.
    String(String),
}

/// A position in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Last offset seen (0 = nothing yet).
    pub offset: u64,
    /// The history epoch the offset belongs to.
    pub epoch: String,
}

/// A presence status a client can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Active.
    Online,
    /// Idle.
    Away,
    /// Do not disturb.
    Busy,
}

/// From its name only: the derived form would also take `{"away":null}`.
impl<'de> Deserialize<'de> for PresenceStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        match &*name {
            "online" => Ok(Self::Online),
            "away" => Ok(Self::Away),
            "busy" => Ok(Self::Busy),
            other => Err(serde::de::Error::custom(format!(
                "unknown status `{other}`: expected \"online\", \"away\" or \"busy\""
            ))),
        }
    }
}

/// Which end of history a read starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryOrder {
    /// The oldest events after `since`, in offset order.
    #[default]
    Oldest,
    /// The newest events, newest first.
    Newest,
}

/// A client → server request, without its `id`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Authenticate with a token (first message only).
    Auth {
        /// The JWT.
        token: String,
    },
    /// Subscribe to a channel, optionally recovering from a position.
    Subscribe {
        /// Channel name.
        channel: String,
        /// Where the client stopped (an object: `[offset, epoch]` is refused).
        #[serde(default, deserialize_with = "super::json_object::optional_object")]
        since: Option<StreamPosition>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Publish to a channel (where the namespace allows client publish).
    Publish {
        /// Channel name.
        channel: String,
        /// Event name.
        event: String,
        /// Payload.
        data: Value,
    },
    /// Read a channel's history.
    History {
        /// Channel name.
        channel: String,
        /// Return events after this position (an object).
        #[serde(default, deserialize_with = "super::json_object::optional_object")]
        since: Option<StreamPosition>,
        /// At most this many events.
        #[serde(default)]
        limit: Option<u32>,
        /// Oldest first (absent or `null`: the default) or newest first.
        #[serde(default)]
        order: Option<HistoryOrder>,
    },
    /// List a channel's members.
    Presence {
        /// Channel name.
        channel: String,
    },
    /// Set this connection's presence status.
    Status {
        /// The new status.
        status: PresenceStatus,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT.
        token: String,
    },
    /// Liveness check; answered with `pong`.
    Ping,
    /// Answer to a server `ping`.
    Pong,
}

/// Why a text frame could not be read as a request.
#[derive(Debug, Clone)]
pub struct BadRequest {
    /// The `id`, when one could be read.
    pub id: Option<RequestId>,
    /// What was wrong, for the client.
    pub message: String,
}

/// Parses one text frame into a request and its `id`.
pub fn parse_request(text: &str) -> Result<(Option<RequestId>, Request), BadRequest> {
    let value: Value = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        message: format!("message is not valid JSON: {e}"),
    })?;
    let Value::Object(map) = &value else {
        return Err(BadRequest {
            id: None,
            message: "message must be a JSON object".into(),
        });
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(raw) => match RequestId::deserialize(raw) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(BadRequest {
                    id: None,
                    message: "`id` must be a number or a string".into(),
                })
            }
        },
    };
    match map.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(BadRequest {
                id,
                message: "`type` must be a string".into(),
            })
        }
        None => {
            return Err(BadRequest {
                id,
                message: "message has no `type`".into(),
            })
        }
    }
    match Request::deserialize(value) {
        Ok(request) => Ok((id, request)),
        Err(e) => Err(BadRequest {
            id,
            message: e.to_string(),
        }),
    }
}

/// Metadata a publisher attaches to an event (§4). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMeta {
    /// Who made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The entity it concerns.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_object::optional_object"
    )]
    pub entity: Option<EntityRef>,
}

impl EventMeta {
    /// True when no field is set (then `meta` is left out of the envelope).
    pub fn is_empty(&self) -> bool {
        self.actor.is_none() && self.correlation_id.is_none() && self.entity.is_none()
    }
}

/// An entity reference in `meta.entity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRef {
    /// Entity type, e.g. `applications`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Entity id.
    pub id: String,
    /// Entity version, when the backend versions entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// A presence member (§3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceMember {
    /// User id.
    pub user: String,
    /// Status.
    pub status: PresenceStatus,
    /// The `info` claim, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Connection ids of this user on the channel.
    pub clients: Vec<String>,
    /// Which of the user's pushed changes on the channel this view follows,
    /// for an engine that must not publish an overtaken push (0: unordered).
    /// Engine bookkeeping, never sent.
    #[serde(skip)]
    pub order: u64,
}

/// A server → client message other than `event` (which is pre-encoded).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Authentication succeeded.
    Connected {
        /// The `id` of the `auth` message this answers (none when the token
        /// came with the upgrade).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Connection id.
        client: String,
        /// User id (`sub`).
        user: String,
        /// Server ping interval in milliseconds.
        heartbeat: u64,
        /// Token expiry.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
        /// Node id.
        node: String,
        /// Protocol version.
        version: &'static str,
    },
    /// Subscribe succeeded.
    Subscribed {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Channel name.
        channel: String,
        /// Current top offset; events after it are delivered live.
        offset: u64,
        /// History epoch.
        epoch: String,
        /// Whether the channel keeps history a later `since` can recover from.
        recoverable: bool,
        /// Present when the subscribe asked for recovery.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// Unsubscribed (reply, or server-side removal with a reason).
    Unsubscribed {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Channel name.
        channel: String,
        /// Why the server removed the subscription.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Client publish succeeded.
    Published {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Channel name.
        channel: String,
        /// Offset the event got.
        offset: u64,
    },
    /// Token replaced.
    Refreshed {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// New expiry.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// Answer to a client `ping`.
    Pong {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Server liveness check; the client answers `pong`.
    Ping,
    /// Reply to `presence`: the channel's members.
    #[serde(rename = "presence")]
    PresenceList {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Channel name.
        channel: String,
        /// One entry per user.
        members: Vec<PresenceMember>,
    },
    /// Push: a member joined, left or changed status.
    #[serde(rename = "presence")]
    PresenceChanged {
        /// Channel name.
        channel: String,
        /// `join`, `leave` or `status`.
        action: &'static str,
        /// The member.
        member: PresenceMember,
    },
    /// Reply to `status`.
    Status {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The status now set.
        status: PresenceStatus,
    },
    /// A request failed.
    Error {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Sent just before a close frame with the same code.
    Disconnect {
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
}

impl ServerMessage {
    /// An `error` reply.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            id,
            code,
            message: message.into(),
        }
    }

    /// Encodes the message as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_with_ids() {
        let (id, req) =
            parse_request(r#"{"type":"subscribe","id":7,"channel":"user:u1"}"#).unwrap();
        assert_eq!(id, Some(RequestId::Number(7.into())));
        assert_eq!(
            req,
            Request::Subscribe {
                channel: "user:u1".into(),
                since: None
            }
        );
        let (id, req) = parse_request(r#"{"type":"ping","id":"a"}"#).unwrap();
        assert_eq!(id, Some(RequestId::String("a".into())));
        assert_eq!(req, Request::Ping);
    }

    #[test]
    fn bad_requests_keep_the_id_when_readable() {
        let err = parse_request(r#"{"type":"subscribe","id":3}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Number(3.into())));
        let err = parse_request(r#"{"type":"nope","id":"x"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::String("x".into())));
        assert!(parse_request("not json").unwrap_err().id.is_none());
        assert!(parse_request("[1,2]").is_err());
        assert!(parse_request(r#"{"type":5}"#).is_err());
        assert!(parse_request(r#"{"id":{"a":1},"type":"ping"}"#).is_err());
    }

    #[test]
    fn server_messages_are_snake_case_with_type() {
        let m = ServerMessage::error(None, ErrorCode::PermissionDenied, "no");
        assert_eq!(
            m.to_json(),
            r#"{"type":"error","code":"permission_denied","message":"no"}"#
        );
        assert_eq!(ServerMessage::Ping.to_json(), r#"{"type":"ping"}"#);
    }
}
