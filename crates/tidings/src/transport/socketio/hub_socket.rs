//! A Socket.IO socket on the main namespace as a hub connection.
//!
//! The token comes from the `CONNECT` packet (`auth.token`) or the handshake's
//! `Authorization` header; the socket joins `user:{sub}` and (configurable) its
//! workspaces; `subscribe`/`unsubscribe`/`publish`-like emits go through the
//! same procedures as `/ws` requests; each event goes out as
//! `[event, data, meta, position]`, where `position` is the resume token of
//! every channel of the socket, which socket.io-client keeps as its recovery
//! offset and sends back with its `pid` when it reconnects.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use tidings_auth::Identity;
use tokio::time::Instant;

use super::engineio::{End, Session};
use super::packet::{self, json_array, Packet, PacketKind, MAIN_NAMESPACE};
use super::Wake;
use crate::access::Action;
use crate::engine::Publication;
use crate::hub::connection::ServerUnsubscribe;
use crate::hub::{
    Connection, ConnectionQueue, ControlRequest, Outbound, RESUBSCRIBE_REASON, REVOKED_REASON,
};
use crate::protocol::time::new_client_id;
use crate::protocol::{
    ChannelName, CloseCode, ErrorCode, HistoryOrder, PresenceStatus, StreamPosition,
};
use crate::server::ServerState;
use crate::transport::http::bearer_token;
use crate::transport::requests::{self, Reader};
use crate::transport::sse::ResumeToken;
use crate::transport::subscriptions::{parse_channel, Refusal, Subscriptions};
use crate::transport::{expiry_instant, open_client_connection, RequestRate};

/// The event that tells the client the socket's positions changed without an
/// event (after `subscribe`/`unsubscribe`), so its recovery offset stays true.
const POSITION_EVENT: &str = "tidings:position";
/// Sent before a `DISCONNECT` the client must not reconnect after: `{code, reason}`.
const DISCONNECT_EVENT: &str = "tidings:disconnect";
/// A server-side unsubscribe (`/api/unsubscribe`): `{channel, reason}`.
const UNSUBSCRIBED_EVENT: &str = "tidings:unsubscribed";
/// A presence push: the `presence` message of `/ws`.
const PRESENCE_EVENT: &str = "tidings:presence";

/// One Engine.IO session's Socket.IO side on the hub.
pub struct HubSocket {
    state: Arc<ServerState>,
    /// A token from the handshake's `Authorization` header (Node clients).
    header_token: Option<String>,
    connected: Option<Box<Connected>>,
    /// Binary attachments of a refused packet still to be skipped.
    skip_attachments: usize,
}

struct Connected {
    identity: Identity,
    connection: Arc<Connection>,
    queue: ConnectionQueue,
    subscriptions: Subscriptions,
    token_expiry: Option<Instant>,
    status: PresenceStatus,
    rate: Option<RequestRate>,
    /// `bad_request` answers in a row: more than `max_bad_requests` end the
    /// socket with 4501, as on `/ws`.
    bad_requests: u32,
    /// How long the socket's resume position may grow (see
    /// [`position_ceiling`] and [`check_position_room`]).
    position_room: usize,
}

/// The `CONNECT` payload: socket.io-client's `auth`, plus `pid` and `offset`
/// when it asks to recover.
#[derive(Debug, Default)]
struct ConnectPayload {
    /// `Some(Err)`: a `token` that is not a string.
    token: Option<Result<String, ()>>,
    pid: Option<String>,
    offset: Option<String>,
}

impl ConnectPayload {
    /// Reads the fields it knows from `auth`, which is the application's own
    /// object: other fields, and a `pid` or `offset` that is not a string
    /// (not socket.io-client's), do not make the token unreadable.
    fn read(data: Option<&RawValue>) -> Self {
        let Some(serde_json::Value::Object(auth)) =
            data.and_then(|d| serde_json::from_str(d.get()).ok())
        else {
            return Self::default();
        };
        let text = |name: &str| match auth.get(name) {
            Some(serde_json::Value::String(value)) => Some(value.clone()),
            _ => None,
        };
        Self {
            token: match auth.get("token") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(token)) => Some(Ok(token.clone())),
                Some(_) => Some(Err(())),
            },
            pid: text("pid"),
            offset: text("offset"),
        }
    }
}

/// A refusal as an ack or `connect_error` payload: `{error: {code, message}}`.
fn error_json(code: ErrorCode, message: &str) -> String {
    serde_json::json!({ "error": { "code": code.as_str(), "message": message } }).to_string()
}

impl HubSocket {
    /// A socket for a new session; `headers` are the handshake's.
    pub fn new(state: Arc<ServerState>, headers: &HeaderMap) -> Self {
        Self {
            state,
            header_token: bearer_token(headers).map(str::to_owned),
            connected: None,
            skip_attachments: 0,
        }
    }

    /// Whether the main namespace is joined.
    pub fn is_connected(&self) -> bool {
        self.connected.is_some()
    }

    /// When the token expires.
    pub fn deadline(&self) -> Option<Instant> {
        self.connected.as_ref().and_then(|c| c.token_expiry)
    }

    /// Waits for a close request, or (with `room`) the next queued item.
    pub async fn wake(&mut self, room: bool) -> Wake {
        let Some(connected) = self.connected.as_mut() else {
            return std::future::pending().await;
        };
        let connection = connected.connection.clone();
        if room {
            tokio::select! {
                biased;
                request = connection.close_requested() => Wake::Close(request),
                item = connected.queue.recv() => Wake::Outbound(item),
            }
        } else {
            Wake::Close(connection.close_requested().await)
        }
    }

    /// Writes what woke the socket, with whatever else is already queued.
    pub async fn on_wake(&mut self, session: &Session, wake: Wake) -> Result<(), End> {
        let first = match wake {
            Wake::Close(request) => return Err(self.close(session, request.code, &request.reason)),
            Wake::Outbound(item) => item,
        };
        let mut item = Some(first);
        let mut written = 0;
        let mut oldest = None;
        while let Some(next) = item.take() {
            let Some(connected) = self.connected.as_mut() else {
                return Ok(());
            };
            match next {
                Outbound::Event(publication) => {
                    if connected.subscriptions.accept(&publication) {
                        oldest.get_or_insert(publication.received_at);
                        session.push_message(&event_packet(connected, publication.socketio_args()));
                    }
                }
                Outbound::Presence(push) => {
                    if connected.subscriptions.contains(&push.channel) {
                        emit(session, PRESENCE_EVENT, &[push.text.as_str()]);
                    }
                }
                Outbound::Control(control) => {
                    let (request, applied) = control.take();
                    let mut outcome = Ok(());
                    match request {
                        ControlRequest::Status(status) => {
                            connected.status = status;
                            outcome = connected
                                .subscriptions
                                .set_status(&self.state, &connected.connection, status)
                                .await;
                        }
                        ControlRequest::Refresh(identity) => {
                            // The new claims apply as on `/ws`: their roles to
                            // delivery, and channels they no longer allow end.
                            let revoked = Box::pin(connected.subscriptions.take_refresh(
                                &self.state,
                                &connected.connection,
                                identity,
                                &mut connected.identity,
                                &mut connected.token_expiry,
                            ))
                            .await;
                            for channel in &revoked {
                                emit_unsubscribed(session, channel, REVOKED_REASON);
                            }
                            if !revoked.is_empty() {
                                emit_position(session, connected);
                            }
                        }
                    }
                    applied.done(outcome.map_err(|refusal| (refusal.code, refusal.message)));
                }
                Outbound::Unsubscribed(notice) => {
                    let ServerUnsubscribe { channel, reason } = *notice;
                    if reason == RESUBSCRIBE_REASON {
                        // The channel's continuity is lost: the client reconnects,
                        // and its recovery (`socket.recovered`) says whether it
                        // missed anything.
                        return Err(End::Close);
                    }
                    if connected
                        .subscriptions
                        .forget(&self.state, &connected.connection, &channel)
                        .await
                    {
                        emit_unsubscribed(session, &channel, &reason);
                        emit_position(session, connected);
                    }
                }
            }
            written += 1;
            if written < 64 && session.has_room() {
                item = connected.queue.try_recv();
            }
        }
        if let Some(received) = oldest {
            self.state.metrics.written(received.elapsed());
        }
        Ok(())
    }

    /// How a close the hub asked for reaches the client: a close it reconnects
    /// after (1012 restart, 4002 slow consumer, …) ends the transport; one it
    /// must not reconnect after (token expired, disconnected by the API, …)
    /// is a Socket.IO `DISCONNECT` ("io server disconnect").
    fn close(&mut self, session: &Session, code: CloseCode, reason: &str) -> End {
        if code == CloseCode::TokenExpired || !code.reconnect() {
            let notice = serde_json::json!({ "code": code.code(), "reason": reason });
            emit(session, DISCONNECT_EVENT, &[&notice.to_string()]);
            session.push_message(&packet::encode(
                PacketKind::Disconnect,
                MAIN_NAMESPACE,
                None,
                0,
                None,
            ));
        }
        tracing::debug!(
            code = code.code(),
            reason,
            "socket.io connection closed by the server"
        );
        End::Close
    }

    /// The token deadline passed.
    pub fn on_deadline(&mut self, session: &Session) -> Result<(), End> {
        if self
            .deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            let reason = CloseCode::TokenExpired.default_reason();
            return Err(self.close(session, CloseCode::TokenExpired, reason));
        }
        Ok(())
    }

    /// A binary attachment: only those of a refused packet are expected.
    pub fn on_binary(&mut self, _bytes: Bytes) -> Result<(), End> {
        if self.skip_attachments == 0 {
            return Err(End::Close);
        }
        self.skip_attachments -= 1;
        Ok(())
    }

    /// One Socket.IO packet from the client.
    pub async fn on_message(&mut self, session: &Session, text: &str) -> Result<(), End> {
        if self.skip_attachments > 0 {
            return Err(End::Close);
        }
        let packet = packet::decode(text).map_err(|_| End::Close)?;
        if packet.namespace != MAIN_NAMESPACE {
            if packet.kind == PacketKind::Connect {
                session.push_message(&packet::encode(
                    PacketKind::ConnectError,
                    packet.namespace,
                    None,
                    0,
                    Some(r#"{"message":"Invalid namespace"}"#),
                ));
            }
            return Ok(());
        }
        match packet.kind {
            PacketKind::Connect => {
                if self.connected.is_none() {
                    Box::pin(self.connect(session, &packet)).await;
                }
                Ok(())
            }
            PacketKind::Disconnect => {
                if let Some(connected) = self.connected.take() {
                    release(&self.state, *connected).await;
                }
                Ok(())
            }
            PacketKind::Event => {
                if self.connected.is_some() {
                    Box::pin(self.on_event(session, &packet)).await?;
                }
                Ok(())
            }
            PacketKind::BinaryEvent => {
                self.skip_attachments = packet.attachments;
                if self.count_bad_request(true) {
                    return Err(self.too_many_bad_requests(session));
                }
                if let Some(id) = packet.ack {
                    let refusal = error_json(
                        ErrorCode::BadRequest,
                        "binary attachments are not supported",
                    );
                    ack(session, id, &refusal);
                }
                Ok(())
            }
            PacketKind::BinaryAck => {
                self.skip_attachments = packet.attachments;
                Ok(())
            }
            // The server asks for no acks; a stray one is harmless.
            PacketKind::Ack => Ok(()),
            PacketKind::ConnectError => Err(End::Close),
        }
    }

    /// Verifies the token, opens the hub connection, joins the socket's rooms
    /// (recovering them when asked), and answers `CONNECT` or `connect_error`.
    async fn connect(&mut self, session: &Session, packet: &Packet<'_>) {
        let payload = ConnectPayload::read(packet.data);
        let state = self.state.clone();
        if let Some(Err(())) = payload.token {
            connect_error(
                session,
                ErrorCode::Unauthorized,
                "auth.token must be a string",
            );
            return;
        }
        let token = match &payload.token {
            Some(Ok(token)) => Some(token.as_str()),
            _ => self.header_token.as_deref(),
        };
        let Some(token) = token else {
            connect_error(
                session,
                ErrorCode::Unauthorized,
                "no token: pass auth: {token}",
            );
            return;
        };
        let mut identity = match state.verifier.verify(token) {
            Ok(identity) => identity,
            Err(err) => {
                state.metrics.auth_failed();
                tracing::info!(reason = %err, "socket.io token refused");
                let code = if err.is_expired() {
                    ErrorCode::TokenExpired
                } else {
                    ErrorCode::Unauthorized
                };
                connect_error(session, code, &err.to_string());
                return;
            }
        };
        // Rooms on connect come from the token's claims, before the claims
        // no rule reads are dropped.
        let mut rooms = Vec::new();
        if let Ok(channel) = ChannelName::parse(&format!("user:{}", identity.user)) {
            rooms.push(channel);
        }
        if state.config.transports.socketio_join_workspaces {
            let claim = state.verifier.workspaces_claim();
            for workspace in identity.claim_strings(claim) {
                if let Ok(channel) = ChannelName::parse(&format!("workspace:{workspace}")) {
                    rooms.push(channel);
                }
            }
        }
        state.access.retain_read_claims(&mut identity);
        let client_id: Arc<str> = Arc::from(new_client_id().as_str());
        let (connection, queue) = match open_client_connection(&state, client_id.clone(), &identity)
        {
            Ok(opened) => opened,
            Err(err) => {
                connect_error(session, ErrorCode::LimitExceeded, &err.to_string());
                return;
            }
        };
        // Joined: the session gives its pending slot back now, before the
        // rooms are joined (a newer handshake past the cap must not close a
        // socket that has joined).
        session.mark_connected();
        // Held by the socket from here on, so that a panic while joining the
        // rooms (the engine's) still releases the connection.
        let connected: &mut Connected = self.connected.insert(Box::new(Connected {
            token_expiry: expiry_instant(&identity),
            identity,
            connection,
            queue,
            subscriptions: Subscriptions::default(),
            status: PresenceStatus::Online,
            rate: RequestRate::new(&state.config.connection),
            bad_requests: 0,
            position_room: 0,
        }));
        // What the client last saw: its offset (the token of its last event),
        // else the positions its pid was issued with.
        let resume = payload.pid.as_deref().and_then(|pid| {
            let token = payload
                .offset
                .as_deref()
                .or_else(|| pid.split_once('.').map(|(_, positions)| positions))?;
            ResumeToken::parse(token, state.config.connection.max_channels)
        });
        let mut recovered = resume.is_some();
        let mut replay = Vec::new();
        // Positions go back to what the client has only if everything
        // recovers (then the replay moves them forward again, event by event).
        let mut rewinds = Vec::new();
        if let Some(resume) = &resume {
            for (channel, since) in resume.positions() {
                match connected
                    .subscriptions
                    .subscribe(
                        &state,
                        &connected.identity,
                        &connected.connection,
                        channel.clone(),
                        Some(&since),
                        connected.status,
                    )
                    .await
                {
                    Ok(subscribed) if subscribed.recovery == Some(Ok(())) => {
                        rewinds.push((channel.clone(), since.offset));
                        replay.extend(subscribed.replay);
                    }
                    _ => recovered = false,
                }
            }
            if recovered {
                for (channel, offset) in &rewinds {
                    connected.subscriptions.rewind(channel, *offset);
                }
            } else {
                // Socket.IO's contract: a socket that is not recovered starts
                // with its rooms on connect only, and the application joins
                // the rest again.
                replay.clear();
                let joined: Vec<ChannelName> =
                    connected.subscriptions.channels().cloned().collect();
                for channel in joined {
                    if !rooms.contains(&channel) {
                        connected
                            .subscriptions
                            .unsubscribe(&state, &connected.connection, &channel)
                            .await;
                    }
                }
            }
        }
        // Rooms take at most half of the ceiling: the pid repeats them, and
        // the rest is left to `subscribe`.
        let ceiling = position_ceiling(
            state.config.connection.max_message_size,
            payload
                .token
                .as_ref()
                .map_or(0, |token| token.as_ref().map_or(0, String::len)),
        );
        let rooms_ceiling = ceiling / 2;
        for room in rooms {
            if connected.subscriptions.contains(&room) {
                continue;
            }
            if position_bound_with(connected, &room) > rooms_ceiling {
                tracing::debug!(channel = %room, "room on connect not joined: the resume position would be too long");
                continue;
            }
            if let Err(refusal) = connected
                .subscriptions
                .subscribe(
                    &state,
                    &connected.identity,
                    &connected.connection,
                    room.clone(),
                    None,
                    connected.status,
                )
                .await
            {
                tracing::debug!(channel = %room, reason = %refusal.message, "room on connect not joined");
            }
        }
        let pid = match (&payload.pid, recovered) {
            (Some(pid), true) => pid.clone(),
            _ => {
                let mut pid = format!("p{}.", ulid::Ulid::generate());
                connected.subscriptions.write_positions(&mut pid);
                pid
            }
        };
        connected.position_room = ceiling.saturating_sub(pid.len());
        let handshake = serde_json::json!({ "sid": &*connected.connection.client_id, "pid": pid });
        session.push_message(&packet::encode(
            PacketKind::Connect,
            MAIN_NAMESPACE,
            None,
            0,
            Some(&handshake.to_string()),
        ));
        // The replay advances each channel's position as it goes, so every
        // replayed event carries the token of what the client has by then.
        for publication in &replay {
            if connected.subscriptions.accept(publication) {
                session.push_message(&event_packet(connected, publication.socketio_args()));
            }
        }
        if !replay.is_empty() {
            tracing::debug!(events = replay.len(), "socket.io connection recovered");
        }
        // Not recovered although the client sent its last event's token: that
        // token, which socket.io-client keeps until the next event, names the
        // old positions and would fail the next reconnect too. A position
        // event replaces it with the new pid's.
        if !recovered && payload.offset.is_some() {
            emit_position(session, connected);
        }
    }

    /// A client emit: `subscribe`, `unsubscribe`, `presence.update`,
    /// `presence`, `history`, or any other event name as a client publish.
    async fn on_event(&mut self, session: &Session, packet: &Packet<'_>) -> Result<(), End> {
        let Some(connected) = self.connected.as_mut() else {
            return Ok(());
        };
        let state = self.state.clone();
        if let Some(rate) = &mut connected.rate {
            match rate.admit() {
                Ok(true) => {}
                Ok(false) => {
                    if let Some(id) = packet.ack {
                        let refusal =
                            error_json(ErrorCode::RateLimited, "too many requests; slow down");
                        ack(session, id, &refusal);
                    }
                    return Ok(());
                }
                Err(()) => {
                    let reason = CloseCode::RateLimited.default_reason();
                    return Err(self.close(session, CloseCode::RateLimited, reason));
                }
            }
        }
        let args = packet::arguments(packet);
        let name = packet::event_name(packet).unwrap_or_default();
        let first = args.get(1).copied();
        // After a subscribe or unsubscribe: the replay (if any) and the new
        // positions, sent after the ack.
        let mut follow_up: Option<Vec<Arc<Publication>>> = None;
        let answer = match name.as_str() {
            "subscribe" => match subscribe(&state, connected, first).await {
                Ok((answer, replay)) => {
                    follow_up = Some(replay);
                    Ok(answer)
                }
                Err(refusal) => Err(refusal),
            },
            "unsubscribe" => {
                let answer = unsubscribe(&state, connected, first).await;
                if answer.is_ok() {
                    follow_up = Some(Vec::new());
                }
                answer
            }
            "presence.update" => {
                let status = first
                    .and_then(|a| serde_json::from_str::<StatusArgs>(a.get()).ok())
                    .map(|a| a.status);
                match status {
                    Some(status) => {
                        connected.status = status;
                        connected
                            .subscriptions
                            .set_status(&state, &connected.connection, status)
                            .await
                            .map(|()| {
                                serde_json::json!({ "ok": true, "status": status }).to_string()
                            })
                    }
                    None => Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "presence.update takes {status: \"online\"|\"away\"|\"busy\"}",
                    )),
                }
            }
            "presence" => match channel_of(first) {
                Ok(channel) => requests::presence(&state, &connected.identity, None, &channel)
                    .await
                    .map(|m| m.to_json()),
                Err(refusal) => Err(refusal),
            },
            "history" => {
                match first.and_then(|a| serde_json::from_str::<HistoryArgs>(a.get()).ok()) {
                    Some(query) => {
                        let reader = Reader {
                            client: &connected.connection.client_id,
                            identity: &connected.identity,
                        };
                        requests::history(
                            &state,
                            reader,
                            None,
                            &query.channel,
                            query.since,
                            query.limit,
                            query.order.unwrap_or_default(),
                        )
                        .await
                    }
                    None => Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "history takes {channel, since?, limit?, order?}",
                    )),
                }
            }
            _ => match first.map(|a| serde_json::from_str::<PublishArgs>(a.get())) {
                Some(Ok(publish)) => requests::publish(
                    &state,
                    &connected.identity,
                    None,
                    publish.channel,
                    name,
                    &publish.data.unwrap_or(serde_json::Value::Null),
                )
                .await
                .map(|m| m.to_json()),
                // Too deep to read: said as `/ws` says it, not as a wrong shape.
                Some(Err(err)) if err.to_string().starts_with("recursion limit exceeded") => {
                    Err(Refusal::new(ErrorCode::BadRequest, err.to_string()))
                }
                _ => Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "an emit publishes {channel, data} to a channel",
                )),
            },
        };
        let bad = matches!(&answer, Err(refusal) if refusal.code == ErrorCode::BadRequest);
        if self.count_bad_request(bad) {
            return Err(self.too_many_bad_requests(session));
        }
        let Some(connected) = self.connected.as_mut() else {
            return Ok(());
        };
        if let Some(id) = packet.ack {
            let text = match answer {
                Ok(text) => text,
                Err(refusal) => error_json(refusal.code, &refusal.message),
            };
            ack(session, id, &text);
        }
        if let Some(replay) = follow_up {
            for publication in &replay {
                if connected.subscriptions.accept(publication) {
                    session.push_message(&event_packet(connected, publication.socketio_args()));
                }
            }
            emit_position(session, connected);
        }
        Ok(())
    }

    /// Counts a `bad_request` answer (`bad`) or resets the count (any other
    /// answer); true when the count passed `max_bad_requests`.
    fn count_bad_request(&mut self, bad: bool) -> bool {
        let Some(connected) = self.connected.as_mut() else {
            return false;
        };
        connected.bad_requests = if bad { connected.bad_requests + 1 } else { 0 };
        connected.bad_requests > self.state.config.connection.max_bad_requests
    }

    fn too_many_bad_requests(&mut self, session: &Session) -> End {
        self.close(
            session,
            CloseCode::ProtocolViolation,
            "too many bad requests in a row",
        )
    }

    /// Leaves the hub once the session is over.
    pub async fn finish(self) {
        if let Some(connected) = self.connected {
            release(&self.state, *connected).await;
        }
    }
}

#[derive(Deserialize)]
struct StatusArgs {
    status: PresenceStatus,
}

#[derive(Deserialize)]
struct HistoryArgs {
    channel: String,
    since: Option<StreamPosition>,
    limit: Option<u32>,
    order: Option<HistoryOrder>,
}

#[derive(Deserialize)]
struct PublishArgs {
    channel: String,
    data: Option<serde_json::Value>,
}

/// `{channel, since?}` or just the channel name.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelArgs {
    Name(String),
    Object {
        channel: String,
        since: Option<StreamPosition>,
    },
}

fn channel_args(arg: Option<&RawValue>) -> Result<(String, Option<StreamPosition>), Refusal> {
    match arg.and_then(|a| serde_json::from_str::<ChannelArgs>(a.get()).ok()) {
        Some(ChannelArgs::Name(channel)) => Ok((channel, None)),
        Some(ChannelArgs::Object { channel, since }) => Ok((channel, since)),
        None => Err(Refusal::new(
            ErrorCode::BadRequest,
            "expected a channel name or {channel, since?}",
        )),
    }
}

fn channel_of(arg: Option<&RawValue>) -> Result<String, Refusal> {
    channel_args(arg).map(|(channel, _)| channel)
}

async fn subscribe(
    state: &ServerState,
    connected: &mut Connected,
    arg: Option<&RawValue>,
) -> Result<(String, Vec<Arc<Publication>>), Refusal> {
    let (name, since) = channel_args(arg)?;
    let channel = parse_channel(&name)?;
    check_position_room(state, connected, &channel)?;
    let subscribed = connected
        .subscriptions
        .subscribe(
            state,
            &connected.identity,
            &connected.connection,
            channel,
            since.as_ref(),
            connected.status,
        )
        .await?;
    let mut answer = serde_json::json!({
        "ok": true,
        "channel": subscribed.channel.as_str(),
        "offset": subscribed.position.offset,
        "epoch": &*subscribed.position.epoch,
        "recoverable": subscribed.recoverable,
    });
    if let Some(recovery) = subscribed.recovery {
        answer["recovered"] = serde_json::Value::Bool(recovery.is_ok());
    }
    if let (Some(Ok(())), Some(since)) = (subscribed.recovery, &since) {
        connected
            .subscriptions
            .rewind(&subscribed.channel, since.offset);
    }
    Ok((answer.to_string(), subscribed.replay))
}

/// Room a new position entry may take beyond its channel name: the
/// separators, an epoch (10 characters) and an offset (up to 20 digits),
/// with margin.
const POSITION_ENTRY_BYTES: usize = 64;

/// The longest the socket's resume position can become with `channel`
/// added, whatever offsets its channels reach.
fn position_bound_with(connected: &Connected, channel: &ChannelName) -> usize {
    connected.subscriptions.positions_len_bound() + channel.as_str().len() + POSITION_ENTRY_BYTES
}

/// How long the resume position and the `pid` together may be, for a
/// socket that connected with a `CONNECT` token of `token_len` bytes:
/// socket.io-client sends all three back in its `CONNECT` packet when it
/// reconnects, and a packet over `maxPayload` ends the session, so a socket
/// with a longer position could never reconnect. Half of `maxPayload` at
/// most, and less with a token over a quarter of it, leaving the token its
/// length again (a refreshed token may be longer) and 512 bytes of framing.
fn position_ceiling(max_payload: usize, token_len: usize) -> usize {
    (max_payload / 2).min(max_payload.saturating_sub(token_len.saturating_mul(2) + 512))
}

/// Refuses a new channel that could make the socket's resume position pass
/// the room its [`position_ceiling`] leaves after its `pid`. The bound
/// counts every offset at its longest, so it holds however far the channels
/// go. Permission and "already subscribed" are answered first.
fn check_position_room(
    state: &ServerState,
    connected: &Connected,
    channel: &ChannelName,
) -> Result<(), Refusal> {
    if connected.subscriptions.contains(channel) {
        return Ok(());
    }
    if position_bound_with(connected, channel) <= connected.position_room {
        return Ok(());
    }
    state
        .access
        .check(&connected.identity, channel, Action::Subscribe)?;
    Err(Refusal::new(
        ErrorCode::LimitExceeded,
        "the socket's resume position would grow too long to send back when it reconnects \
         (within maxPayload, with its token and pid): unsubscribe from another channel first",
    ))
}

async fn unsubscribe(
    state: &ServerState,
    connected: &mut Connected,
    arg: Option<&RawValue>,
) -> Result<String, Refusal> {
    let channel = parse_channel(&channel_of(arg)?)?;
    if !connected
        .subscriptions
        .unsubscribe(state, &connected.connection, &channel)
        .await
    {
        return Err(Refusal::new(
            ErrorCode::NotSubscribed,
            format!("not subscribed to {channel}"),
        ));
    }
    Ok(serde_json::json!({ "ok": true, "channel": channel.as_str() }).to_string())
}

/// `42[<args>,"<positions>"]`: an event with the socket's resume token last,
/// which socket.io-client keeps as its recovery offset.
fn event_packet(connected: &Connected, args: &str) -> String {
    let mut out = String::with_capacity(args.len() + 64);
    out.push_str("2[");
    out.push_str(args);
    out.push_str(",\"");
    connected.subscriptions.write_positions(&mut out);
    out.push_str("\"]");
    out
}

/// Tells the client its positions after a subscribe or unsubscribe.
fn emit_position(session: &Session, connected: &Connected) {
    let channels: Vec<&str> = connected
        .subscriptions
        .channels()
        .map(ChannelName::as_str)
        .collect();
    let summary = serde_json::json!({ "channels": channels }).to_string();
    let name = serde_json::to_string(POSITION_EVENT).unwrap_or_default();
    let mut positions = String::from("\"");
    connected.subscriptions.write_positions(&mut positions);
    positions.push('"');
    let data = json_array([name.as_str(), summary.as_str(), positions.as_str()]);
    session.push_message(&packet::encode(
        PacketKind::Event,
        MAIN_NAMESPACE,
        None,
        0,
        Some(&data),
    ));
}

/// Emits `name` with already-encoded JSON arguments.
fn emit(session: &Session, name: &str, args: &[&str]) {
    let name = serde_json::to_string(name).unwrap_or_default();
    let data = json_array(std::iter::once(name.as_str()).chain(args.iter().copied()));
    session.push_message(&packet::encode(
        PacketKind::Event,
        MAIN_NAMESPACE,
        None,
        0,
        Some(&data),
    ));
}

fn ack(session: &Session, id: u64, answer: &str) {
    let data = json_array([answer]);
    session.push_message(&packet::encode(
        PacketKind::Ack,
        MAIN_NAMESPACE,
        Some(id),
        0,
        Some(&data),
    ));
}

/// `connect_error` with our error code: `{message, data: {code}}`.
fn connect_error(session: &Session, code: ErrorCode, message: &str) {
    let data = serde_json::json!({ "message": message, "data": { "code": code.as_str() } });
    session.push_message(&packet::encode(
        PacketKind::ConnectError,
        MAIN_NAMESPACE,
        None,
        0,
        Some(&data.to_string()),
    ));
}

/// `tidings:unsubscribed` with `{channel, reason}`: the server ended the socket's
/// subscription to `channel`.
fn emit_unsubscribed(session: &Session, channel: &ChannelName, reason: &str) {
    let notice = serde_json::json!({ "channel": channel.as_str(), "reason": reason });
    emit(session, UNSUBSCRIBED_EVENT, &[&notice.to_string()]);
}

/// Leaves the hub: every channel the connection is on, presence included.
async fn release(state: &ServerState, connected: Connected) {
    let Connected {
        connection,
        subscriptions,
        queue,
        ..
    } = connected;
    drop(queue);
    subscriptions.close(state, &connection).await;
}
