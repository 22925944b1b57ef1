//! The wire contract (protocol v1): channel names, requests, pushes, codes.
//!
//! Nothing here does I/O; every transport and the hub speak these types.

pub mod channel;
pub mod codes;
pub mod json_object;
pub mod messages;
pub mod time;

pub use channel::{ChannelName, ChannelNameError};
pub use codes::{CloseCode, ErrorCode};
pub use messages::{
    parse_request, EntityRef, EventMeta, HistoryOrder, PresenceStatus, Request, RequestId,
    ServerMessage, StreamPosition,
};

/// Protocol version announced in `connected`.
pub const PROTOCOL_VERSION: &str = "1";

/// WebSocket subprotocol selected when the client offers it.
pub const SUBPROTOCOL: &str = "tidings.v1";
