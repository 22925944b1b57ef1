//! Engine.IO v4: the session under a Socket.IO connection. HTTP long-polling
//! (`GET` waits for packets, `POST` delivers them, `\x1e` between packets),
//! WebSocket, the polling→WebSocket upgrade (`2probe`/`3probe`/`5`), ping/pong
//! at the configured interval and `maxPayload`.
//!
//! One task per session (`drive`) owns the Socket.IO side ([`App`]) and the
//! heartbeat; the transports only move packets. Packets for the client wait in
//! the session's bounded outbox, which the current transport drains; while it
//! is full the task stops taking events from the hub, so a client that stops
//! reading overflows its hub queue and is closed (4002) instead of growing.
//!
//! A session whose socket has not connected (no `CONNECT` to `/` accepted
//! yet) costs a client nothing to open, so it is bounded twice: each holds a
//! pending slot ([`MAX_PENDING_SESSIONS`] per endpoint; a handshake past them
//! closes the oldest), and its outbox is [`PRECONNECT_OUTBOX_BYTES`] until
//! the socket connects; a session over it is closed.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequest;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{FutureExt, SinkExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::App;
use crate::metrics::Metrics;
use crate::transport::http::declares_more_than;

/// The Engine.IO protocol revision served.
const PROTOCOL: &str = "4";
/// Separator of packets in a long-polling payload.
const RECORD_SEPARATOR: char = '\x1e';
/// Packets from the client waiting for the session task.
const INBOUND_CAPACITY: usize = 16;
/// Most sessions of one endpoint whose socket has not connected, lingering
/// ones included. Opening one takes a request and no token, so without a cap
/// a client can hold as many as it can send requests in `auth_timeout`. A
/// client connects within a round trip of its handshake, so even a mass
/// reconnect keeps far fewer waiting at once; past the cap a handshake closes
/// the oldest session still waiting. Each holds about 5 KB
/// (the session and its task, as measured with 64,000 of them) and at most
/// [`PRECONNECT_OUTBOX_BYTES`] queued, so 10,000 hold about 130 MB at worst.
/// No setting gives a natural bound: `max_connections` counts connected
/// sockets and is unlimited by default.
pub const MAX_PENDING_SESSIONS: usize = 10_000;
/// The outbox limit of a session until its socket connects: room for the
/// handshake, pongs, a few `connect_error`s and the close, but not for the
/// answers to a flood of `CONNECT`s to other namespaces. A session over it is
/// closed (the client is not reading); once the socket connects the limit is
/// the configured `outbox_bytes`.
pub const PRECONNECT_OUTBOX_BYTES: usize = 8 * 1024;

/// Engine.IO settings of one endpoint.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long it waits for the pong.
    pub ping_timeout: Duration,
    /// Largest message (and polling body) accepted, in bytes.
    pub max_payload: usize,
    /// How long a session may stay without a Socket.IO connection.
    pub connect_timeout: Duration,
    /// Bytes of outgoing packets a session holds before it stops taking events.
    pub outbox_bytes: usize,
    /// WebSocket read buffer.
    pub read_buffer_size: usize,
    /// WebSocket write buffer.
    pub write_buffer_size: usize,
}

/// A packet for the client.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A text packet, type digit included (`4…` for messages).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// What the frame holds in an outbox: its bytes and its slot (a 1-byte
    /// pong costs about 40 bytes queued).
    fn cost(&self) -> usize {
        self.len() + std::mem::size_of::<Self>()
    }
}

/// A packet from the client, for the session task.
#[derive(Debug)]
pub enum Inbound {
    /// A `message` packet's text (after the `4`).
    Message(String),
    /// A binary message.
    Binary(Bytes),
    /// `ping` (a v3-style client): answered with `pong`.
    Ping,
    /// `pong`.
    Pong,
    /// The client closed the session (`close` packet, or its WebSocket went away).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Polling,
    WebSocket,
}

#[derive(Debug)]
struct SessionState {
    outbox: VecDeque<Frame>,
    outbox_bytes: usize,
    transport: Transport,
    /// A `GET` is waiting.
    polling: bool,
    /// A `POST` is being read or handed to the session task.
    posting: bool,
    /// The probe was answered; the pending `GET` ends with a `noop`.
    upgrading: bool,
    /// Whether that `noop` went out over polling.
    noop_sent: bool,
    /// A WebSocket holds (or is upgrading) the session.
    websocket_attached: bool,
    closed: bool,
    /// The socket connected once: the outbox limit is the configured one.
    connected: bool,
    /// The session's pending slot, until the socket connects (or the session
    /// is dropped, lingering included).
    pending: Option<PendingSlot>,
}

/// One Engine.IO session.
#[derive(Debug)]
pub struct Session {
    /// The session id.
    pub sid: Arc<str>,
    state: Mutex<SessionState>,
    /// Wakes the transport reading the outbox (and everyone on close).
    outbox_ready: Notify,
    /// Wakes the session task when the outbox has room again.
    outbox_room: Notify,
    inbound: mpsc::Sender<Inbound>,
    outbox_limit: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// Queues a packet for the client.
    pub fn push(&self, frame: Frame) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        state.outbox_bytes += frame.cost();
        state.outbox.push_back(frame);
        drop(state);
        self.outbox_ready.notify_waiters();
    }

    /// Queues a Socket.IO packet (an Engine.IO `message`).
    pub fn push_message(&self, packet: &str) {
        let mut text = String::with_capacity(packet.len() + 1);
        text.push('4');
        text.push_str(packet);
        self.push(Frame::Text(Utf8Bytes::from(text)));
    }

    /// Whether the outbox can take more events.
    pub fn has_room(&self) -> bool {
        self.closed_and_room().1
    }

    /// Whether the session is closed, and whether its outbox can take more.
    fn closed_and_room(&self) -> (bool, bool) {
        let state = lock(&self.state);
        let limit = if state.connected {
            self.outbox_limit
        } else {
            self.outbox_limit.min(PRECONNECT_OUTBOX_BYTES)
        };
        (state.closed, state.outbox_bytes < limit)
    }

    /// The socket connected: the outbox gets its full limit, and the pending
    /// slot is given back. Called as the `CONNECT` is accepted, and by the
    /// session task once the app says it is connected.
    pub(crate) fn mark_connected(&self) {
        let mut state = lock(&self.state);
        state.connected = true;
        let slot = state.pending.take();
        drop(state);
        drop(slot);
    }

    async fn room(&self) {
        loop {
            let notified = self.outbox_room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() || lock(&self.state).closed {
                return;
            }
            notified.await;
        }
    }

    fn drain(state: &mut SessionState) -> Vec<Frame> {
        state.outbox_bytes = 0;
        std::mem::take(&mut state.outbox).into()
    }

    /// What one long poll takes: everything queued, except that the server's
    /// `close` packet goes out in a poll of its own, as upstream Engine.IO
    /// sends it. engine.io-client acts on `close` at once but hands the packets
    /// before it to socket.io-client a tick later, so in one payload the client
    /// would see "transport close" (and reconnect) before the `DISCONNECT`
    /// that tells it not to.
    fn drain_poll(state: &mut SessionState) -> Vec<Frame> {
        let close_waits = state.closed
            && state.outbox.len() > 1
            && matches!(state.outbox.back(), Some(Frame::Text(last)) if last.as_str() == "1");
        let close = if close_waits {
            state.outbox.pop_back()
        } else {
            None
        };
        let frames = Self::drain(state);
        if let Some(close) = close {
            state.outbox_bytes = close.cost();
            state.outbox.push_back(close);
        }
        frames
    }

    /// Ends the session: nothing more is queued; what is queued still goes out.
    /// A polling session with packets left stays known until a poll takes them
    /// (or for one heartbeat period), so the client reads its last packets
    /// (a `DISCONNECT`, the `close`) instead of an unknown-session error.
    fn close(&self, registry: &Arc<Sessions>, close_packet: bool) {
        self.close_with(registry, close_packet.then_some("1"), true);
    }

    /// Ends the session; a polling client's next poll gets `last` (`1` when
    /// the server closes, `6` when the client did). Without `linger` the
    /// session is forgotten at once: only a poll already waiting gets `last`.
    fn close_with(&self, registry: &Arc<Sessions>, last: Option<&'static str>, linger: bool) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let polling = state.transport == Transport::Polling;
        if let (Some(last), true) = (last, polling) {
            state
                .outbox
                .push_back(Frame::Text(Utf8Bytes::from_static(last)));
        }
        state.closed = true;
        let linger = linger && last.is_some() && polling && !state.outbox.is_empty();
        drop(state);
        // Ended now, though a polling session lingers for its last poll.
        if let Some(metrics) = &registry.metrics {
            metrics.socketio_session_closed();
        }
        if linger {
            let registry = registry.clone();
            let sid = self.sid.clone();
            tokio::spawn(async move {
                tokio::time::sleep(registry.linger).await;
                registry.remove(&sid);
            });
        } else {
            registry.remove(&self.sid);
        }
        self.outbox_ready.notify_waiters();
        self.outbox_room.notify_waiters();
    }
}

/// A session whose socket has not connected, counted in [`Sessions`]: given
/// back once on drop, however the session ends (connected, closed, timed
/// out, its task panicked, or dropped after lingering).
#[derive(Debug)]
struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sessions of one endpoint.
pub struct Sessions {
    map: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// How long a closed polling session waits for its last poll.
    linger: Duration,
    /// Counts open sessions (`tidings_socketio_sessions`), from opened to
    /// closed; none for the conformance endpoint.
    metrics: Option<Arc<Metrics>>,
    /// Sessions holding a [`PendingSlot`].
    pending: Arc<AtomicUsize>,
    /// Most of them at once.
    max_pending: usize,
    /// Sessions in the order they were opened, for the oldest pending one
    /// to make room; those no longer pending are dropped from the front.
    pending_order: Mutex<VecDeque<Weak<Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("linger", &self.linger)
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

impl Sessions {
    /// No sessions yet; a closed polling session lingers `linger` for its
    /// last poll; at most `max_pending` sessions at once have not connected.
    pub fn new(linger: Duration, metrics: Option<Arc<Metrics>>, max_pending: usize) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::default(),
            linger,
            metrics,
            pending: Arc::default(),
            max_pending,
            pending_order: Mutex::default(),
        })
    }

    /// A pending slot for a new session. When all are taken, the oldest
    /// session still waiting to join is closed to make room: a client joins
    /// within a round trip of its handshake, so a flood of handshakes closes
    /// only sessions that are slow to join or never do, not the next real
    /// client. `None` only when none could be closed.
    fn reserve(self: &Arc<Self>) -> Option<PendingSlot> {
        for _ in 0..4 {
            let reserved = self
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_pending).then_some(n + 1)
                });
            if reserved.is_ok() {
                return Some(PendingSlot(self.pending.clone()));
            }
            if !self.close_oldest_pending() {
                return None;
            }
        }
        None
    }

    /// Closes the oldest session holding a pending slot, giving the slot
    /// back; false when there is none.
    fn close_oldest_pending(self: &Arc<Self>) -> bool {
        loop {
            let Some(oldest) = lock(&self.pending_order).pop_front() else {
                return false;
            };
            let Some(session) = oldest.upgrade() else {
                continue;
            };
            let Some(slot) = lock(&session.state).pending.take() else {
                continue;
            };
            drop(slot);
            tracing::debug!(sid = %session.sid, "socket.io session that had not joined closed for a newer one");
            if let Some(metrics) = &self.metrics {
                metrics.socketio_pending_closed();
            }
            session.close_with(self, Some("1"), false);
            // Wakes its task, which may be waiting for a packet.
            let _ = session.inbound.try_send(Inbound::Close);
            return true;
        }
    }

    /// Records a new session for [`Sessions::close_oldest_pending`].
    fn track_pending(&self, session: &Arc<Session>) {
        let mut order = lock(&self.pending_order);
        while order.front().is_some_and(|front| {
            front
                .upgrade()
                .is_none_or(|s| lock(&s.state).pending.is_none())
        }) {
            order.pop_front();
        }
        order.push_back(Arc::downgrade(session));
    }

    fn insert(&self, session: Arc<Session>) {
        lock(&self.map).insert(session.sid.clone(), session);
        if let Some(metrics) = &self.metrics {
            metrics.socketio_session_opened();
        }
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(sid).cloned()
    }

    /// Forgets a closed session (counted as ended when it closed).
    fn remove(&self, sid: &str) {
        lock(&self.map).remove(sid);
    }
}

/// The query of every Engine.IO request.
#[derive(Debug, Default, serde::Deserialize)]
pub struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// An Engine.IO error answer: `400 {"code":n,"message":"…"}` as the reference
/// server writes them.
pub(super) fn engine_error(code: u8, message: &str) -> Response {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn unknown_sid() -> Response {
    engine_error(1, "Session ID unknown")
}

/// A handshake past [`MAX_PENDING_SESSIONS`] when no pending session could be
/// closed to make room (not expected: each holds a slot): 503 with Engine.IO's error body
/// (code 4, which the reference server gives a handshake its policy refuses).
/// The client retries later, with socket.io-client's reconnection backoff.
fn too_many_pending() -> Response {
    let body = serde_json::json!({
        "code": 4,
        "message": "Too many sessions waiting to connect; retry later",
    })
    .to_string();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// What the endpoint needs to open and serve sessions.
pub struct Endpoint {
    /// Engine.IO settings.
    pub settings: EngineSettings,
    /// Open sessions.
    pub sessions: Arc<Sessions>,
    /// Makes the Socket.IO side of a new session.
    pub new_app: Box<dyn Fn(&HeaderMap) -> App + Send + Sync>,
}

impl Endpoint {
    /// The transport asked for, or the error answer (boxed: a `Response` is large).
    fn validate(query: &EngineQuery) -> Result<Transport, Box<Response>> {
        if query.eio.as_deref() != Some(PROTOCOL) {
            return Err(Box::new(engine_error(5, "Unsupported protocol version")));
        }
        match query.transport.as_deref() {
            Some("polling") => Ok(Transport::Polling),
            Some("websocket") => Ok(Transport::WebSocket),
            _ => Err(Box::new(engine_error(0, "Transport unknown"))),
        }
    }

    fn open(
        self: &Arc<Self>,
        headers: &HeaderMap,
        transport: Transport,
        slot: PendingSlot,
    ) -> Arc<Session> {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let sid: Arc<str> = Arc::from(new_sid().as_str());
        let upgrades = if transport == Transport::Polling {
            r#"["websocket"]"#
        } else {
            "[]"
        };
        let settings = &self.settings;
        let open = format!(
            r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            settings.ping_interval.as_millis(),
            settings.ping_timeout.as_millis(),
            settings.max_payload
        );
        let session = Arc::new(Session {
            sid: sid.clone(),
            state: Mutex::new(SessionState {
                outbox: VecDeque::from([Frame::Text(Utf8Bytes::from(open))]),
                outbox_bytes: 0,
                transport,
                polling: false,
                posting: false,
                upgrading: false,
                noop_sent: false,
                websocket_attached: transport == Transport::WebSocket,
                closed: false,
                connected: false,
                pending: Some(slot),
            }),
            outbox_ready: Notify::new(),
            outbox_room: Notify::new(),
            inbound: tx,
            outbox_limit: settings.outbox_bytes,
        });
        self.sessions.insert(session.clone());
        self.sessions.track_pending(&session);
        let app = (self.new_app)(headers);
        tokio::spawn(drive(self.clone(), session.clone(), rx, app));
        session
    }
}

fn new_sid() -> String {
    let id = ulid::Ulid::generate().to_string();
    format!("s{id}")
}

/// A Socket.IO socket id for the echo endpoint (the hub's sockets use their
/// connection id).
pub fn new_socket_id() -> String {
    crate::protocol::time::new_client_id()
}

/// `GET`: a new polling session, a poll, or a WebSocket (new or upgrading).
pub async fn get(
    endpoint: Arc<Endpoint>,
    query: EngineQuery,
    headers: HeaderMap,
    upgrade: Option<WebSocketUpgrade>,
) -> Response {
    let transport = match Endpoint::validate(&query) {
        Ok(t) => t,
        Err(response) => return *response,
    };
    match (transport, query.sid) {
        (Transport::Polling, None) => {
            let Some(slot) = endpoint.sessions.reserve() else {
                return too_many_pending();
            };
            let session = endpoint.open(&headers, Transport::Polling, slot);
            poll(&endpoint, &session).await
        }
        (Transport::Polling, Some(sid)) => match endpoint.sessions.get(&sid) {
            Some(session) => poll(&endpoint, &session).await,
            None => unknown_sid(),
        },
        (Transport::WebSocket, sid) => {
            let Some(upgrade) = upgrade else {
                return engine_error(3, "Bad request");
            };
            // An existing session, or the pending slot of a new one (taken
            // before the upgrade, so a refusal is still an HTTP answer).
            let existing = match sid {
                Some(sid) => match endpoint.sessions.get(&sid) {
                    Some(session) => Ok(session),
                    None => return unknown_sid(),
                },
                None => match endpoint.sessions.reserve() {
                    Some(slot) => Err(slot),
                    None => return too_many_pending(),
                },
            };
            let settings = &endpoint.settings;
            upgrade
                .read_buffer_size(settings.read_buffer_size)
                .write_buffer_size(settings.write_buffer_size)
                .max_message_size(settings.max_payload)
                .max_frame_size(settings.max_payload)
                .on_upgrade(move |socket| {
                    // The session is made (and the headers dropped) before the
                    // socket's task starts: it lives as long as the connection.
                    let session = match existing {
                        Ok(session) => Err(session),
                        Err(slot) => Ok(endpoint.open(&headers, Transport::WebSocket, slot)),
                    };
                    drop(headers);
                    async move {
                        match session {
                            Err(session) => {
                                Box::pin(upgrade_session(&endpoint, session, socket)).await
                            }
                            Ok(session) => serve_websocket(&endpoint, &session, socket).await,
                        }
                    }
                })
        }
    }
}

/// Clears the session's `polling` flag however the `GET` ends (answered, or
/// dropped because the client went away).
struct PollGuard<'a>(&'a Session);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).polling = false;
    }
}

/// Clears the session's `posting` flag however the `POST` ends.
struct PostGuard<'a>(&'a Session);

impl Drop for PostGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).posting = false;
    }
}

async fn poll(endpoint: &Endpoint, session: &Arc<Session>) -> Response {
    {
        let mut state = lock(&session.state);
        if state.transport != Transport::Polling || (state.closed && state.outbox.is_empty()) {
            return engine_error(3, "Bad request");
        }
        if state.polling {
            // Two polls at once: a broken client. The pending one gets `close`.
            drop(state);
            return end_overlapping(endpoint, session);
        }
        state.polling = true;
    }
    let _guard = PollGuard(session);
    loop {
        let notified = session.outbox_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = lock(&session.state);
            if !state.outbox.is_empty() {
                let frames = Session::drain_poll(&mut state);
                let done = state.closed && state.outbox.is_empty();
                drop(state);
                if done {
                    endpoint.sessions.remove(&session.sid);
                }
                session.outbox_room.notify_waiters();
                return payload(&frames);
            }
            if state.upgrading && !state.noop_sent {
                state.noop_sent = true;
                return payload(&[Frame::Text(Utf8Bytes::from_static("6"))]);
            }
            if state.closed || state.transport != Transport::Polling {
                return payload(&[Frame::Text(Utf8Bytes::from_static("6"))]);
            }
        }
        notified.await;
    }
}

/// A long-polling payload: packets separated by `\x1e`, binary ones as `b<base64>`.
fn payload(frames: &[Frame]) -> Response {
    let mut body = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(RECORD_SEPARATOR);
        }
        match frame {
            Frame::Text(text) => body.push_str(text.as_str()),
            Frame::Binary(bytes) => {
                body.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut body);
            }
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

/// Reads one text packet from the client; `None` when it is not a valid one.
fn parse_text(text: &str) -> Option<Inbound> {
    let mut chars = text.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    Some(match kind {
        '1' if rest.is_empty() => Inbound::Close,
        '2' if rest.is_empty() => Inbound::Ping,
        '3' if rest.is_empty() => Inbound::Pong,
        '4' => Inbound::Message(rest.to_owned()),
        'b' => Inbound::Binary(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?,
        )),
        _ => return None,
    })
}

/// `POST`: packets for a polling session. The body is read only once the
/// session is known to take it, and not at all when it declares more than
/// `maxPayload`.
pub async fn post(
    endpoint: Arc<Endpoint>,
    query: EngineQuery,
    request: axum::extract::Request,
) -> Response {
    let transport = match Endpoint::validate(&query) {
        Ok(t) => t,
        Err(response) => return *response,
    };
    let Some(sid) = query.sid.filter(|_| transport == Transport::Polling) else {
        return engine_error(2, "Bad handshake method");
    };
    let Some(session) = endpoint.sessions.get(&sid) else {
        return unknown_sid();
    };
    {
        let mut state = lock(&session.state);
        if state.transport != Transport::Polling {
            return engine_error(3, "Bad request");
        }
        if state.closed {
            // A closed session waiting for its last poll: what the client sent
            // meanwhile is moot, and an error here would reach the client as a
            // transport error before it reads why the session ended.
            return ok_response();
        }
        if state.posting {
            // Two POSTs at once: a broken client (Engine.IO sends one at a
            // time), or one piling up POSTs the session does not read while
            // the client does not poll. The reference server ends it too.
            drop(state);
            return end_overlapping(&endpoint, &session);
        }
        state.posting = true;
    }
    let _posting = PostGuard(&session);
    if declares_more_than(request.headers(), endpoint.settings.max_payload) {
        return end_too_large(&endpoint, &session);
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) if body.len() <= endpoint.settings.max_payload => body,
        // Over `maxPayload`, or over the server's own body limit.
        Ok(_)
        | Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return end_too_large(&endpoint, &session)
        }
        // A body that stalled past `request_timeout`, in Engine.IO's shape.
        Err(_) => return engine_error(3, "Bad request"),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_packet(&endpoint, &session).await;
    };
    let mut packets = Vec::new();
    for part in text.split(RECORD_SEPARATOR) {
        match parse_text(part) {
            Some(packet) => packets.push(packet),
            None => return bad_packet(&endpoint, &session).await,
        }
    }
    for packet in packets {
        if matches!(packet, Inbound::Close) {
            // A poll on its way (or waiting) ends with `noop`, as the reference
            // server's does; closed first, so the session task ending does not
            // forget the session before that poll arrives.
            session.close_with(&endpoint.sessions, Some("6"), true);
            let _ = session.inbound.send(Inbound::Close).await;
            break;
        }
        if session.inbound.send(packet).await.is_err() {
            return engine_error(3, "Bad request");
        }
    }
    ok_response()
}

/// A second `GET` or `POST` while one is pending (clients send one of each
/// at a time) ends the session: 400.
fn end_overlapping(endpoint: &Endpoint, session: &Session) -> Response {
    let _ = session.inbound.try_send(Inbound::Close);
    session.close(&endpoint.sessions, true);
    engine_error(3, "Bad request")
}

/// A polling body over `maxPayload` ends the session: 413.
fn end_too_large(endpoint: &Arc<Endpoint>, session: &Session) -> Response {
    session.close(&endpoint.sessions, true);
    let _ = session.inbound.try_send(Inbound::Close);
    (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response()
}

fn ok_response() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        "ok",
    )
        .into_response()
}

async fn bad_packet(endpoint: &Endpoint, session: &Session) -> Response {
    let _ = session.inbound.send(Inbound::Close).await;
    session.close(&endpoint.sessions, false);
    engine_error(3, "Bad request")
}

/// A WebSocket for a polling session: the probe, then the switch.
async fn upgrade_session(endpoint: &Arc<Endpoint>, session: Arc<Session>, mut socket: WebSocket) {
    let refused = {
        let mut state = lock(&session.state);
        let refused =
            state.closed || state.websocket_attached || state.transport != Transport::Polling;
        state.websocket_attached = true;
        refused
    };
    if refused {
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let limit = endpoint.settings.ping_interval + endpoint.settings.ping_timeout;
    let upgraded = tokio::time::timeout(limit, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(text))) if text.as_str() == "2probe" => {
                    socket.send(Message::Text("3probe".into())).await.ok()?;
                    lock(&session.state).upgrading = true;
                    session.outbox_ready.notify_waiters();
                }
                Some(Ok(Message::Text(text))) if text.as_str() == "5" => {
                    let noop_sent = {
                        let mut state = lock(&session.state);
                        if !state.upgrading {
                            return None;
                        }
                        state.transport = Transport::WebSocket;
                        state.upgrading = false;
                        state.noop_sent
                    };
                    session.outbox_ready.notify_waiters();
                    if !noop_sent {
                        // No poll was waiting to carry it: it goes here instead.
                        socket.send(Message::Text("6".into())).await.ok()?;
                    }
                    return Some(());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => return None,
            }
        }
    })
    .await;
    if matches!(upgraded, Ok(Some(()))) {
        serve_websocket(endpoint, &session, socket).await;
    } else {
        let mut state = lock(&session.state);
        state.websocket_attached = false;
        state.upgrading = false;
    }
}

/// Moves packets both ways until the session or the socket ends.
async fn serve_websocket(endpoint: &Endpoint, session: &Arc<Session>, mut socket: WebSocket) {
    loop {
        let notified = session.outbox_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (frames, closed) = {
            let mut state = lock(&session.state);
            (Session::drain(&mut state), state.closed)
        };
        if !frames.is_empty() {
            session.outbox_room.notify_waiters();
            let mut failed = false;
            for frame in frames {
                let message = match frame {
                    Frame::Text(text) => Message::Text(text),
                    Frame::Binary(bytes) => Message::Binary(bytes),
                };
                if socket.feed(message).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || socket.flush().await.is_err() {
                break;
            }
            continue;
        }
        if closed {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                socket.send(Message::Close(None)).await.ok()?;
                while let Some(Ok(_)) = socket.recv().await {}
                Some(())
            })
            .await;
            return;
        }
        tokio::select! {
            () = &mut notified => {}
            message = socket.recv() => {
                let inbound = match message {
                    Some(Ok(Message::Text(text))) => match parse_text(text.as_str()) {
                        Some(packet) => packet,
                        None => {
                            let _ = session.inbound.send(Inbound::Close).await;
                            break;
                        }
                    },
                    Some(Ok(Message::Binary(bytes))) => Inbound::Binary(bytes),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        let _ = session.inbound.send(Inbound::Close).await;
                        break;
                    }
                };
                let close = matches!(inbound, Inbound::Close);
                if session.inbound.send(inbound).await.is_err() || close {
                    break;
                }
            }
        }
    }
    session.close(&endpoint.sessions, false);
}

/// How the Socket.IO side ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client left (close packet, transport gone, ping timeout).
    Gone,
    /// The server closes the transport: the client reconnects. A session
    /// whose socket never connected is then forgotten at once rather than
    /// kept for a last poll, so its pending slot comes back.
    Close,
}

/// The session task: heartbeat, packets to the app, app pushes to the outbox.
/// It ends when the client leaves, the heartbeat fails or the app ends it;
/// then it closes the session and lets the app release its hub connection.
async fn drive(
    endpoint: Arc<Endpoint>,
    session: Arc<Session>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut app: App,
) {
    // A panic while serving (a bug, or an embedder's engine) must not leave
    // the socket's hub connection registered and its presence listed: end the
    // session as the server would (the client reconnects), then release it.
    let serving = serve(&endpoint.settings, &session, &mut inbound, &mut app);
    let end = match AssertUnwindSafe(serving).catch_unwind().await {
        Ok(end) => end,
        Err(_) => {
            tracing::error!(sid = %session.sid, "Socket.IO session task panicked; closing it");
            End::Close
        }
    };
    let never_connected = !lock(&session.state).connected;
    match end {
        End::Gone => session.close(&endpoint.sessions, false),
        End::Close if never_connected => session.close_with(&endpoint.sessions, Some("1"), false),
        End::Close => session.close(&endpoint.sessions, true),
    }
    // Boxed: leaving the hub (presence, engine calls) is a large future that
    // would otherwise sit in every session's task for its whole life.
    Box::pin(app.finish()).await;
}

/// Heartbeats the session and hands its packets to `app` until one side ends it.
async fn serve(
    settings: &EngineSettings,
    session: &Arc<Session>,
    inbound: &mut mpsc::Receiver<Inbound>,
    app: &mut App,
) -> End {
    let mut next_ping = Instant::now() + settings.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let connect_deadline = Instant::now() + settings.connect_timeout;
    // A packet the server answers waits while the outbox is over its limit:
    // events are taken only while there is room, and a client that sends
    // pings or emits without reading the answers must not grow it either.
    // Reading stops meanwhile, so the transport stops reading the client.
    let mut held: Option<Inbound> = None;
    // The socket connected once (the session's outbox limit rose then).
    let mut connected = false;
    loop {
        // Marked before the room is measured: a `CONNECT` answered with a
        // recovery replay is over the pre-connect limit, not the full one.
        if !connected && app.is_connected() {
            connected = true;
            session.mark_connected();
        }
        let mut deadline = next_ping;
        if let Some(pong) = pong_deadline {
            deadline = deadline.min(pong);
        }
        if !app.is_connected() {
            deadline = deadline.min(connect_deadline);
        }
        if let Some(app_deadline) = app.deadline() {
            deadline = deadline.min(app_deadline);
        }
        // Closed by a request handler (an overlap, a body too large): its
        // close packet may not get through `inbound` while a packet is held.
        // One lock for both: this runs at every wake-up, each event included.
        let (closed, room) = session.closed_and_room();
        if closed {
            break End::Gone;
        }
        if !room && !connected {
            // Not connected and not reading the answers to what it sends
            // (`connect_error`s, pongs): holding its packets would keep its
            // session to `connect_timeout`; it ends now.
            tracing::debug!(sid = %session.sid, "socket.io session over its pre-connect outbox limit; closing it");
            break End::Close;
        }
        if room {
            if let Some(packet) = held.take() {
                if let Err(end) = answer(session, app, packet).await {
                    break end;
                }
                continue;
            }
        }
        let step = tokio::select! {
            biased;
            wake = app.wake(room) => Box::pin(app.on_wake(session, wake)).await,
            packet = inbound.recv(), if held.is_none() => match packet {
                None | Some(Inbound::Close) => Err(End::Gone),
                Some(Inbound::Pong) => {
                    pong_deadline = None;
                    Ok(())
                }
                Some(packet) if !room => {
                    held = Some(packet);
                    Ok(())
                }
                Some(packet) => answer(session, app, packet).await,
            },
            () = session.room(), if !room => Ok(()),
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if pong_deadline.is_some_and(|d| d <= now) {
                    Err(End::Gone)
                } else if !app.is_connected() && connect_deadline <= now {
                    Err(End::Close)
                } else if next_ping <= now {
                    next_ping = now + settings.ping_interval;
                    pong_deadline.get_or_insert(now + settings.ping_timeout);
                    session.push(Frame::Text(Utf8Bytes::from_static("2")));
                    Ok(())
                } else {
                    Box::pin(app.on_deadline(session)).await
                }
            }
        };
        if let Err(end) = step {
            break end;
        }
    }
}

/// Handles a client packet the server may answer (a ping, a Socket.IO packet).
async fn answer(session: &Session, app: &mut App, packet: Inbound) -> Result<(), End> {
    match packet {
        Inbound::Ping => {
            session.push(Frame::Text(Utf8Bytes::from_static("3")));
            Ok(())
        }
        Inbound::Message(text) => Box::pin(app.on_message(session, &text)).await,
        Inbound::Binary(bytes) => Box::pin(app.on_binary(session, bytes)).await,
        // Answered by nothing; `serve` takes them as they come.
        Inbound::Pong | Inbound::Close => Ok(()),
    }
}
