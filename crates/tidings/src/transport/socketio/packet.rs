//! Socket.IO v5 packets: `<type>[<attachments>-][<namespace>,][<ack id>][<json>]`,
//! decoded from and encoded into the text of an Engine.IO `message` packet.
//!
//! Decoding is strict: anything the reference parser would refuse is an error,
//! and the session that sent it is closed (the protocol has no error reply for
//! a malformed packet).

use serde_json::value::RawValue;

/// The main namespace.
pub const MAIN_NAMESPACE: &str = "/";

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// `0`: join a namespace.
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event, `[name, ...args]`.
    Event,
    /// `3`: the answer to an event that asked for one.
    Ack,
    /// `4`: a refused `Connect` (server to client only).
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketKind {
    fn from_digit(digit: u8) -> Option<Self> {
        Some(match digit {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }
}

/// A decoded packet, borrowing from the received text.
#[derive(Debug)]
pub struct Packet<'a> {
    /// The type.
    pub kind: PacketKind,
    /// The namespace (`/` when absent).
    pub namespace: &'a str,
    /// The ack id, when the sender asks for (or answers with) an ack.
    pub ack: Option<u64>,
    /// How many binary attachments follow (binary kinds only).
    pub attachments: usize,
    /// The JSON payload, verbatim.
    pub data: Option<&'a RawValue>,
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Empty, or the first character is not a packet type.
    #[error("unknown packet type")]
    UnknownType,
    /// The attachment count of a binary packet is missing or not a number.
    #[error("bad attachment count")]
    BadAttachments,
    /// The ack id does not fit in a number.
    #[error("bad ack id")]
    BadAckId,
    /// The payload is not JSON, or not the shape its type requires.
    #[error("bad payload")]
    BadPayload,
}

/// Most digits in an ack id or attachment count (fits in `u64`).
const MAX_DIGITS: usize = 19;

/// Decodes one packet.
pub fn decode(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = bytes
        .first()
        .and_then(|b| PacketKind::from_digit(*b))
        .ok_or(PacketError::UnknownType)?;
    let mut rest = &text[1..];
    let mut attachments = 0;
    if matches!(kind, PacketKind::BinaryEvent | PacketKind::BinaryAck) {
        let (count, after) = rest.split_once('-').ok_or(PacketError::BadAttachments)?;
        if count.is_empty()
            || count.len() > MAX_DIGITS
            || !count.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PacketError::BadAttachments);
        }
        attachments = count.parse().map_err(|_| PacketError::BadAttachments)?;
        rest = after;
    }
    let mut namespace = MAIN_NAMESPACE;
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(comma) => {
                namespace = &rest[..comma];
                rest = &rest[comma + 1..];
            }
            None => {
                namespace = rest;
                rest = "";
            }
        }
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 {
        if digits > MAX_DIGITS {
            return Err(PacketError::BadAckId);
        }
        let id = rest[..digits].parse().map_err(|_| PacketError::BadAckId)?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<&RawValue>(rest).map_err(|_| PacketError::BadPayload)?)
    };
    let packet = Packet {
        kind,
        namespace,
        ack,
        attachments,
        data,
    };
    check_shape(&packet)?;
    Ok(packet)
}

/// The payload each type allows, as the reference parser checks it.
fn check_shape(packet: &Packet<'_>) -> Result<(), PacketError> {
    let first = packet.data.map(|d| d.get().as_bytes()[0]);
    let ok = match packet.kind {
        PacketKind::Connect => first.is_none() || first == Some(b'{'),
        PacketKind::Disconnect => first.is_none(),
        PacketKind::Event | PacketKind::BinaryEvent => {
            first == Some(b'[') && event_name(packet).is_some()
        }
        PacketKind::Ack | PacketKind::BinaryAck => first == Some(b'[') && packet.ack.is_some(),
        // Only a server sends it.
        PacketKind::ConnectError => false,
    };
    if ok {
        Ok(())
    } else {
        Err(PacketError::BadPayload)
    }
}

/// The arguments of an event or ack payload.
pub fn arguments<'a>(packet: &Packet<'a>) -> Vec<&'a RawValue> {
    packet
        .data
        .and_then(|d| serde_json::from_str::<Vec<&RawValue>>(d.get()).ok())
        .unwrap_or_default()
}

/// The event name (the first argument, a string) of an event packet.
pub fn event_name(packet: &Packet<'_>) -> Option<String> {
    let args = arguments(packet);
    let first = args.first()?;
    serde_json::from_str::<String>(first.get()).ok()
}

/// Encodes a packet as the text of an Engine.IO message (without the `4`).
/// `data` must be valid JSON.
pub fn encode(
    kind: PacketKind,
    namespace: &str,
    ack: Option<u64>,
    attachments: usize,
    data: Option<&str>,
) -> String {
    let mut out = String::with_capacity(16 + namespace.len() + data.map_or(0, str::len));
    out.push(kind.digit());
    if matches!(kind, PacketKind::BinaryEvent | PacketKind::BinaryAck) {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if namespace != MAIN_NAMESPACE {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = ack {
        out.push_str(&id.to_string());
    }
    if let Some(data) = data {
        out.push_str(data);
    }
    out
}

/// `[a, b, …]` from already-encoded JSON values.
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_forms_of_the_specification() {
        let p = decode("0").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.ack),
            (PacketKind::Connect, "/", None)
        );
        let p = decode(r#"0/admin,{"token":"123"}"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data.unwrap().get(), r#"{"token":"123"}"#);
        let p = decode("0/custom").unwrap();
        assert_eq!(p.namespace, "/custom");
        let p = decode(r#"2/admin,456["project:delete",123]"#).unwrap();
        assert_eq!((p.kind, p.ack), (PacketKind::Event, Some(456)));
        assert_eq!(event_name(&p).as_deref(), Some("project:delete"));
        let p = decode(r#"51-["hello",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments), (PacketKind::BinaryEvent, 1));
        let p = decode(r#"3456[1,"2"]"#).unwrap();
        assert_eq!((p.kind, p.ack), (PacketKind::Ack, Some(456)));
    }

    #[test]
    fn refuses_what_the_reference_parser_refuses() {
        for bad in [
            "",
            "abc",
            "7",
            "2{}",
            "2[]",
            "2[1]",
            r#"2abc["message"]"#,
            "1{}",
            r#"0["a"]"#,
            "3[1]",
            r#"4{"message":"x"}"#,
            "5[\"a\"]",
            "2[\"a\"",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn encodes_namespace_ack_and_attachments() {
        assert_eq!(
            encode(PacketKind::Connect, "/", None, 0, Some(r#"{"sid":"x"}"#)),
            r#"0{"sid":"x"}"#
        );
        assert_eq!(
            encode(PacketKind::Ack, "/custom", Some(7), 0, Some("[1]")),
            "3/custom,7[1]"
        );
        assert_eq!(
            encode(PacketKind::BinaryAck, "/", Some(7), 2, Some("[]")),
            "62-7[]"
        );
        assert_eq!(encode(PacketKind::Disconnect, "/", None, 0, None), "1");
    }
}
