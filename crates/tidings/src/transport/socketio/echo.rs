//! The echo handlers the upstream Socket.IO protocol test suite expects, on
//! the namespaces `/` and `/custom`: `auth` sent back on connect, `message`
//! answered with `message-back`, `message-with-ack` acknowledged with its
//! arguments, binary attachments included. Only the conformance endpoint uses
//! them.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;

use super::engineio::{End, Frame, Session};
use super::packet::{self, json_array, Packet, PacketKind, MAIN_NAMESPACE};

/// Namespaces the echo endpoint accepts.
const NAMESPACES: [&str; 2] = [MAIN_NAMESPACE, "/custom"];

/// A binary packet whose attachments are still arriving.
#[derive(Debug)]
struct Pending {
    kind: PacketKind,
    namespace: String,
    ack: Option<u64>,
    data: String,
    expected: usize,
    attachments: Vec<Bytes>,
}

/// One session's echo state.
#[derive(Debug, Default)]
pub struct EchoSocket {
    namespaces: HashSet<String>,
    pending: Option<Pending>,
    /// Whether a namespace was ever joined (the connect timeout stops then).
    joined: bool,
}

impl EchoSocket {
    /// Whether a namespace was joined.
    pub fn is_connected(&self) -> bool {
        self.joined
    }

    /// Handles one Socket.IO packet.
    pub fn on_message(&mut self, session: &Session, text: &str) -> Result<(), End> {
        if self.pending.is_some() {
            return Err(End::Close);
        }
        let packet = packet::decode(text).map_err(|_| End::Close)?;
        match packet.kind {
            PacketKind::Connect => {
                self.connect(session, &packet);
                Ok(())
            }
            PacketKind::Disconnect => {
                self.namespaces.remove(packet.namespace);
                if self.namespaces.is_empty() {
                    return Err(End::Close);
                }
                Ok(())
            }
            PacketKind::Event | PacketKind::BinaryEvent => {
                if !self.namespaces.contains(packet.namespace) {
                    return Ok(());
                }
                let data = packet.data.map(|d| d.get().to_owned()).unwrap_or_default();
                let pending = Pending {
                    kind: packet.kind,
                    namespace: packet.namespace.to_owned(),
                    ack: packet.ack,
                    data,
                    expected: packet.attachments,
                    attachments: Vec::new(),
                };
                if pending.expected == 0 {
                    answer(session, &pending);
                } else {
                    self.pending = Some(pending);
                }
                Ok(())
            }
            // Acks from the client answer nothing the echo asked.
            PacketKind::Ack | PacketKind::BinaryAck => Ok(()),
            PacketKind::ConnectError => Err(End::Close),
        }
    }

    /// Takes one binary attachment of the pending packet.
    pub fn on_binary(&mut self, session: &Session, bytes: Bytes) -> Result<(), End> {
        let Some(pending) = &mut self.pending else {
            return Err(End::Close);
        };
        pending.attachments.push(bytes);
        if pending.attachments.len() == pending.expected {
            if let Some(pending) = self.pending.take() {
                answer(session, &pending);
            }
        }
        Ok(())
    }

    fn connect(&mut self, session: &Session, packet: &Packet<'_>) {
        let namespace = packet.namespace;
        if !NAMESPACES.contains(&namespace) {
            let error = packet::encode(
                PacketKind::ConnectError,
                namespace,
                None,
                0,
                Some(r#"{"message":"Invalid namespace"}"#),
            );
            session.push_message(&error);
            return;
        }
        self.namespaces.insert(namespace.to_owned());
        self.joined = true;
        let sid = serde_json::json!({ "sid": super::engineio::new_socket_id() }).to_string();
        session.push_message(&packet::encode(
            PacketKind::Connect,
            namespace,
            None,
            0,
            Some(&sid),
        ));
        let auth = packet.data.map_or("{}", |d| d.get());
        let event = json_array([r#""auth""#, auth]);
        session.push_message(&packet::encode(
            PacketKind::Event,
            namespace,
            None,
            0,
            Some(&event),
        ));
    }
}

/// `message` → `message-back` with the same arguments; `message-with-ack` →
/// an ack with its arguments; attachments go back in order.
fn answer(session: &Session, pending: &Pending) {
    let Ok(args) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&pending.data) else {
        return;
    };
    let Some(name) = args
        .first()
        .and_then(|n| serde_json::from_str::<String>(n.get()).ok())
    else {
        return;
    };
    let binary = pending.kind == PacketKind::BinaryEvent;
    let rest = args[1..].iter().map(|a| a.get());
    let text = match name.as_str() {
        "message" => {
            let kind = if binary {
                PacketKind::BinaryEvent
            } else {
                PacketKind::Event
            };
            let data = json_array(std::iter::once(r#""message-back""#).chain(rest));
            packet::encode(
                kind,
                &pending.namespace,
                None,
                pending.expected,
                Some(&data),
            )
        }
        "message-with-ack" => {
            let Some(ack) = pending.ack else {
                return;
            };
            let kind = if binary {
                PacketKind::BinaryAck
            } else {
                PacketKind::Ack
            };
            let data = json_array(rest);
            packet::encode(
                kind,
                &pending.namespace,
                Some(ack),
                pending.expected,
                Some(&data),
            )
        }
        _ => return,
    };
    session.push(Frame::Text(Utf8Bytes::from(format!("4{text}"))));
    for attachment in &pending.attachments {
        session.push(Frame::Binary(attachment.clone()));
    }
}
