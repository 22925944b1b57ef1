//! Error codes (§3) and close codes (§8) of the wire contract.

use serde::Serialize;

/// The `code` of an `error` message or of an HTTP API error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown `type`, missing or mistyped fields.
    BadRequest,
    /// Missing or invalid token or API key.
    Unauthorized,
    /// The connection's claims do not grant this.
    PermissionDenied,
    /// The channel's namespace is not configured.
    UnknownChannel,
    /// `subscribe` to a channel the connection is already on.
    AlreadySubscribed,
    /// `unsubscribe` (or a channel request) for a channel the connection is not on.
    NotSubscribed,
    /// A size or count limit.
    LimitExceeded,
    /// Too many requests.
    RateLimited,
    /// The token has expired.
    TokenExpired,
    /// The feature is not available on this server or channel.
    NotAvailable,
    /// The server failed; the request may be retried.
    Internal,
    /// The engine (Redis) is unreachable; nothing was done. Retry, with the same
    /// `idempotency_key` for a publish.
    EngineUnavailable,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::PermissionDenied => "permission_denied",
            Self::UnknownChannel => "unknown_channel",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::TokenExpired => "token_expired",
            Self::NotAvailable => "not_available",
            Self::Internal => "internal",
            Self::EngineUnavailable => "engine_unavailable",
        }
    }
}

/// WebSocket close codes (§8). 4000–4499 tell clients to reconnect, 4500+ not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed.
    Normal = 1000,
    /// The server is going away.
    GoingAway = 1001,
    /// A frame broke RFC 6455 (the WebSocket library refused it).
    ProtocolError = 1002,
    /// A text message or close reason was not valid UTF-8.
    InvalidPayload = 1007,
    /// The server is restarting: reconnect.
    Restarting = 1012,
    /// The server asks for a reconnect.
    Reconnect = 4000,
    /// No `pong` within `pong_timeout`.
    NoPong = 4001,
    /// The send queue overflowed.
    SlowConsumer = 4002,
    /// The token expired without a `refresh`.
    TokenExpired = 4003,
    /// Rate limited.
    RateLimited = 4004,
    /// Lost sync with the broker.
    BrokerSyncLost = 4005,
    /// Authentication failed.
    Unauthorized = 4500,
    /// Binary frame, oversized message or too many bad requests.
    ProtocolViolation = 4501,
    /// Disconnected through the server API.
    DisconnectedByApi = 4502,
    /// Connection limit reached.
    ConnectionLimit = 4503,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether the client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        matches!(self.code(), 1001 | 1012 | 4000..=4499)
    }

    /// A short human-readable reason sent with the close.
    pub fn default_reason(self) -> &'static str {
        match self {
            Self::Normal => "closed",
            Self::GoingAway => "server going away",
            Self::ProtocolError => "protocol error",
            Self::InvalidPayload => "invalid UTF-8",
            Self::Restarting => "server restarting",
            Self::Reconnect => "reconnect requested",
            Self::NoPong => "no pong within pong_timeout",
            Self::SlowConsumer => "slow consumer: send queue overflowed",
            Self::TokenExpired => "token expired",
            Self::RateLimited => "rate limited",
            Self::BrokerSyncLost => "lost sync with the broker",
            Self::Unauthorized => "unauthorized",
            Self::ProtocolViolation => "protocol violation",
            Self::DisconnectedByApi => "disconnected by the server",
            Self::ConnectionLimit => "connection limit reached",
        }
    }

    /// The close code for a number given through the server API, if it is one of §8.
    pub fn from_code(code: u16) -> Option<Self> {
        [
            Self::Normal,
            Self::GoingAway,
            Self::Restarting,
            Self::Reconnect,
            Self::NoPong,
            Self::SlowConsumer,
            Self::TokenExpired,
            Self::RateLimited,
            Self::BrokerSyncLost,
            Self::Unauthorized,
            Self::ProtocolViolation,
            Self::DisconnectedByApi,
            Self::ConnectionLimit,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}
