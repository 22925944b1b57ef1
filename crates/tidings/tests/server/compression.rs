//! permessage-deflate on `/ws`: negotiation, one compression per event shared
//! by every compressing subscriber, plain frames for the others and for small
//! events, compressed client messages (whole and fragmented), and the refusal
//! of decompression bombs and corrupt data.
//!
//! tokio-tungstenite has no permessage-deflate, so these clients speak
//! WebSocket by hand over a `TcpStream`.

use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use serde_json::{json, Value};
use tidings::transport::permessage_deflate::deflate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CHANNEL: &str = "workspace:acme:applications";

/// One frame from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client written by hand, which can offer permessage-deflate and
/// send compressed frames.
struct RawClient {
    stream: TcpStream,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Upgrades with `offer` as `Sec-WebSocket-Extensions` (if any) and reads
    /// `connected`.
    async fn connect(server: &TestServer, offer: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {}\r\n",
            server.addr,
            token("u1", &["acme"], &[])
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed during the handshake");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        let mut client = Self {
            stream,
            extensions,
            buffer: buffer[head_end..].to_vec(),
        };
        let connected = client.next_json().await;
        assert_eq!(connected["type"], "connected");
        client
    }

    async fn fill(&mut self, at_least: usize) -> bool {
        while self.buffer.len() < at_least {
            let mut chunk = [0; 4096];
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
        true
    }

    /// The next frame, or `None` when the connection ends or nothing comes.
    async fn frame(&mut self) -> Option<Frame> {
        if !self.fill(2).await {
            return None;
        }
        let (mut at, len) = match self.buffer[1] & 0x7f {
            126 => {
                self.fill(4).await;
                (
                    4,
                    u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                )
            }
            127 => {
                self.fill(10).await;
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&self.buffer[2..10]);
                (10, u64::from_be_bytes(bytes) as usize)
            }
            len => (2, len as usize),
        };
        assert_eq!(self.buffer[1] & 0x80, 0, "server frames are unmasked");
        if !self.fill(at + len).await {
            return None;
        }
        let first = self.buffer[0];
        let payload = self.buffer[at..at + len].to_vec();
        at += len;
        self.buffer.drain(..at);
        Some(Frame {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            payload,
        })
    }

    /// The next text message as it was on the wire (skipping pings).
    async fn next_text_frame(&mut self) -> Frame {
        loop {
            let frame = self.frame().await.expect("a frame");
            if frame.opcode == 1 {
                assert!(frame.fin, "the server does not fragment");
                return frame;
            }
            assert_ne!(frame.opcode, 8, "closed: {frame:?}");
        }
    }

    /// The next text message, inflated if compressed, as JSON.
    async fn next_json(&mut self) -> Value {
        let frame = self.next_text_frame().await;
        let text = if frame.rsv1 {
            inflate(&frame.payload)
        } else {
            frame.payload
        };
        serde_json::from_slice(&text).unwrap()
    }

    /// Sends one masked frame with `first` as its first byte.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0xa1, 0xb2, 0xc3, 0xd4];
        let mut frame = vec![first];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send_frame(0x81, value.to_string().as_bytes()).await;
    }

    async fn subscribe(&mut self) {
        self.send_json(json!({"type": "subscribe", "channel": CHANNEL, "id": 1}))
            .await;
        let reply = self.next_json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    /// Reads until the server's Close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some(frame) if frame.opcode == 8 => {
                    return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                }
                Some(_) => continue,
                None => panic!("no Close frame"),
            }
        }
    }
}

/// Inflates a compressed message's payload (RFC 7692 §7.2.2).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut decompress = Decompress::new(false);
    let mut output = Vec::with_capacity(input.len() * 20 + 1024);
    decompress
        .decompress_vec(&input, &mut output, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(
        decompress.total_in() as usize,
        input.len(),
        "inflated whole"
    );
    output
}

/// A realistic entity-change event of about 1 KB.
fn entity_change(n: u64) -> Value {
    json!({
        "entity": {"type": "applications", "id": format!("app_{n:06}"), "version": n},
        "changes": {
            "status": {"from": "submitted", "to": "under_review"},
            "assignee": {"from": null, "to": {"id": "u_8812", "name": "Dana Whitfield", "email": "dana.whitfield@example.com"}},
            "updated_at": "2026-12-05T20:31:07.412Z"
        },
        "applicant": {"id": "p_55120", "name": "Marguerite Oyelaran-Castillo", "email": "m.oyelaran@example.org", "phone": "+44 20 7946 0958"},
        "program": {"id": "prg_42", "name": "Early Career Research Fellowship 2027", "cycle": "2027-spring"},
        "scores": [{"reviewer": "u_1201", "score": 4.5, "comment": "Strong methodology and clear milestones."}, {"reviewer": "u_3307", "score": 3.75, "comment": "Budget justification needs more detail."}],
        "tags": ["priority", "resubmission", "international"],
        "actor": {"id": "u_0042", "name": "Priya Raman", "role": "program_manager"}
    })
}

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn compressing_and_plain_clients_get_the_same_event() {
    let server = TestServer::start().await;
    let mut compressing = RawClient::connect(&server, Some(OFFER)).await;
    let mut plain = RawClient::connect(&server, None).await;
    assert_eq!(compressing.extensions.as_deref(), Some(ANSWER));
    assert_eq!(plain.extensions, None);
    compressing.subscribe().await;
    plain.subscribe().await;
    server
        .publish(CHANNEL, "applications.updated", entity_change(1))
        .await;
    let compressed = compressing.next_text_frame().await;
    let uncompressed = plain.next_text_frame().await;
    assert!(compressed.rsv1);
    assert!(!uncompressed.rsv1);
    assert!(uncompressed.payload.len() > 900, "a ~1 KB event");
    assert_eq!(inflate(&compressed.payload), uncompressed.payload);
    assert!(compressed.payload.len() < uncompressed.payload.len());
    let event: Value = serde_json::from_slice(&uncompressed.payload).unwrap();
    assert_eq!(event["data"], entity_change(1));
    // The standard client (no extension) is unaffected.
    let mut standard = server.connect_user("u2", &["acme"]).await;
    standard.subscribe(CHANNEL).await;
}

#[tokio::test]
async fn each_event_is_compressed_once_for_all_subscribers() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = RawClient::connect(&server, Some("permessage-deflate")).await;
        client.subscribe().await;
        clients.push(client);
    }
    for n in 1..=3 {
        server.publish(CHANNEL, "changed", entity_change(n)).await;
    }
    let mut payloads = Vec::new();
    for client in &mut clients {
        for n in 1..=3 {
            let frame = client.next_text_frame().await;
            assert!(frame.rsv1);
            let event: Value = serde_json::from_slice(&inflate(&frame.payload)).unwrap();
            assert_eq!(event["offset"], n);
            payloads.push(frame.payload);
        }
    }
    // Byte-identical frames across subscribers.
    assert!(payloads.chunks(3).all(|c| c == &payloads[..3]));
    assert_eq!(server.metric("tidings_ws_deflate_total").await, 3.0);
    assert_eq!(
        server.metric("tidings_ws_deflated_frames_total").await,
        15.0
    );
    let bytes_in = server
        .metric("tidings_ws_deflated_frame_bytes_in_total")
        .await;
    let bytes_out = server
        .metric("tidings_ws_deflated_frame_bytes_out_total")
        .await;
    assert!(
        bytes_out > 0.0 && bytes_out < bytes_in,
        "{bytes_in} {bytes_out}"
    );
}

#[tokio::test]
async fn small_events_and_replies_go_plain() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    client.subscribe().await;
    server.publish(CHANNEL, "small", json!({"a": 1})).await;
    let frame = client.next_text_frame().await;
    assert!(!frame.rsv1);
    let event: Value = serde_json::from_slice(&frame.payload).unwrap();
    assert_eq!(event["data"], json!({"a": 1}));
    assert_eq!(server.metric("tidings_ws_deflate_total").await, 0.0);
}

#[tokio::test]
async fn compression_off_is_not_negotiated() {
    let mut config = base_config();
    config.websocket.compression = false;
    let server = TestServer::with_config(config).await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    assert_eq!(client.extensions, None);
    client.subscribe().await;
    server.publish(CHANNEL, "big", entity_change(1)).await;
    assert!(!client.next_text_frame().await.rsv1);
    // Without the extension, a compressed frame is a protocol error.
    client
        .send_frame(0xc1, &deflate(b"{\"type\":\"ping\"}"))
        .await;
    assert_eq!(client.close_code().await, 1002);
}

#[tokio::test]
async fn a_smaller_server_window_is_accepted_and_kept_by_sending_plain() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(
        &server,
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_eq!(
        client.extensions.as_deref(),
        Some(format!("{ANSWER}; server_max_window_bits=10").as_str())
    );
    client.subscribe().await;
    server.publish(CHANNEL, "big", entity_change(1)).await;
    assert!(!client.next_text_frame().await.rsv1);
    // Its compressed messages are still read.
    let ping = json!({"type": "ping", "id": 5}).to_string();
    client.send_frame(0xc1, &deflate(ping.as_bytes())).await;
    assert_eq!(client.next_json().await["id"], 5);
    // A malformed offer is declined and the next one taken.
    let fallback = RawClient::connect(
        &server,
        Some("permessage-deflate; server_max_window_bits=7, permessage-deflate"),
    )
    .await;
    assert_eq!(fallback.extensions.as_deref(), Some(ANSWER));
}

#[tokio::test]
async fn compressed_client_messages_are_read() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    // Whole.
    let subscribe = json!({"type": "subscribe", "channel": CHANNEL, "id": 1}).to_string();
    client
        .send_frame(0xc1, &deflate(subscribe.as_bytes()))
        .await;
    assert_eq!(client.next_json().await["type"], "subscribed");
    // Fragmented (RSV1 on the first frame only), a ping in between, and
    // larger than the read buffer once inflated.
    let ping = format!("{}{}", json!({"type": "ping", "id": 2}), " ".repeat(20_000));
    let deflated = deflate(ping.as_bytes());
    let (first, rest) = deflated.split_at(deflated.len() / 2);
    client.send_frame(0x41, first).await;
    client.send_frame(0x89, b"hi").await;
    client.send_frame(0x80, rest).await;
    let pong = loop {
        let frame = client.frame().await.expect("a frame");
        if frame.opcode == 0xa {
            assert_eq!(frame.payload, b"hi");
            continue;
        }
        break serde_json::from_slice::<Value>(&frame.payload).unwrap();
    };
    assert_eq!(pong, json!({"type": "pong", "id": 2}));
    // Plain messages still work on the same connection.
    client.send_json(json!({"type": "ping", "id": 3})).await;
    assert_eq!(client.next_json().await["id"], 3);
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_4501() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    // 10 MB of spaces deflate to about 10 KB; max_message_size is 64 KiB.
    let bomb = deflate(&vec![b' '; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    client.send_frame(0xc1, &bomb).await;
    let disconnect = client.next_json().await;
    assert_eq!(disconnect["type"], "disconnect");
    assert_eq!(disconnect["code"], 4501);
    assert_eq!(client.close_code().await, 4501);
}

#[tokio::test]
async fn corrupt_compressed_data_closes_with_1002() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    client.send_frame(0xc1, &[0xff; 32]).await;
    assert_eq!(client.close_code().await, 1002);
}

#[tokio::test]
async fn rsv1_on_a_control_frame_closes_with_1002() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    client.send_frame(0xc9, b"").await;
    let code = tokio::time::timeout(Duration::from_secs(5), client.close_code())
        .await
        .unwrap();
    assert_eq!(code, 1002);
}
