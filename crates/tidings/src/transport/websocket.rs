//! The WebSocket transport (`/ws`, `/api/ws`): authentication, the request loop,
//! heartbeats, token expiry, and writing queued events.
//!
//! One task per connection owns the socket: it reads requests, writes replies and
//! queued events (coalesced into one flush), and watches a single deadline for
//! pings, pong timeouts and token expiry.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tidings_auth::Identity;
use tokio::time::Instant;
use tracing::Instrument;
use tungstenite::protocol::frame::coding::{CloseCode as FrameCloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, Utf8Bytes};

use super::http::{
    bearer_token, check_origin, given_twice, repeated_parameter, token_refused, ApiError,
};
use super::permessage_deflate::{self, InflateError};
use super::requests::{self, Reader};
use super::subscriptions::{parse_channel, Refusal, Subscriptions};
use super::ws_upgrade::{ClientSocket as WebSocket, SocketOptions, WebSocketUpgrade};
use super::{duration_ms, expiry_instant, open_client_connection, RequestRate};
use crate::config::Config;
use crate::engine::Publication;
use crate::hub::connection::ServerUnsubscribe;
use crate::hub::{
    CloseRequest, Connection, ConnectionQueue, Control, ControlRequest, Outbound, REVOKED_REASON,
};
use crate::protocol::time::{format_unix_seconds, new_client_id};
use crate::protocol::{
    parse_request, CloseCode, ErrorCode, PresenceStatus, Request, RequestId, ServerMessage,
    StreamPosition, PROTOCOL_VERSION, SUBPROTOCOL,
};
use crate::server::ServerState;

/// Most queued events written before one flush.
const WRITE_BATCH: usize = 64;
/// How long the server waits for the client's Close once its own Close frame
/// is out (in the kernel's send buffer), within `connection.close_timeout`.
/// The kernel delivers what it holds even after the socket is dropped.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Query parameters of the upgrade request.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    token: Option<String>,
}

/// `GET /ws`: verifies a header or query token before upgrading (401 if bad), or
/// upgrades and waits for an `auth` message.
pub async fn upgrade(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    query: Result<Query<ConnectQuery>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(err) = check_origin(&state.config.allowed_origins, &headers) {
        return err.into_response();
    }
    if let Some(name) = repeated_parameter(raw.as_deref().unwrap_or_default(), &["token"]) {
        return given_twice(name).into_response();
    }
    // The API's JSON errors rather than axum's plain-text rejections.
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return ApiError::new(ErrorCode::BadRequest, rejection.body_text()).into_response()
        }
    };

    let token = bearer_token(&headers).or(query.token.as_deref());
    let identity = match token {
        Some(token) => match state.verifier.verify(token) {
            Ok(identity) => Some(identity),
            Err(err) => {
                state.metrics.auth_failed();
                tracing::info!(reason = %err, "websocket token refused");
                return token_refused(&err).into_response();
            }
        },
        None => None,
    };
    // Boxed: the upgrade callback and the opening step carry a pointer; the
    // session keeps the one copy.
    let identity = identity.map(Box::new);
    let options = socket_options(&state.config);
    upgrade
        .protocols([SUBPROTOCOL])
        .on_upgrade(options, move |socket, deflate| {
            // The connection runs in a task of its own: the upgrade task
            // would keep its upgrade state (the WebSocket config, this
            // callback) beside the session for the whole connection, and it
            // ends as soon as this returns.
            let connection = run(socket, state, identity, deflate);
            async move {
                tokio::spawn(connection);
            }
        })
}

/// The buffer sizes, message limits and compression setting of `config` for
/// an upgrade: the one place both `/ws` and the conformance echo endpoint
/// ([`echo_router`]) get them from.
fn socket_options(config: &Config) -> SocketOptions {
    let settings = &config.connection;
    let limits = WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer_size)
        .write_buffer_size(settings.write_buffer_size)
        // Large enough for the largest event the API accepts, whatever the queue bound.
        .max_write_buffer_size(
            settings
                .send_queue_bytes
                .max(config.api.max_body_size + 64 * 1024)
                .max(settings.write_buffer_size * 2),
        )
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    SocketOptions {
        config: limits,
        max_message_size: settings.max_message_size,
        compression: config.websocket.compression,
    }
}

/// A text message whose bytes are already encoded (an event's envelope, a
/// presence push), written as they are: no UTF-8 check, no copy.
fn text_frame(text: Bytes) -> Message {
    Message::Frame(Frame::message(text, OpCode::Data(Data::Text), true))
}

/// A compressed message (permessage-deflate): `payload` is the deflated
/// content ([`permessage_deflate::deflate`]) and RSV1 marks it.
fn deflated_frame(payload: Bytes, opcode: Data) -> Message {
    let mut frame = Frame::message(payload, OpCode::Data(opcode), true);
    frame.header_mut().rsv1 = true;
    Message::Frame(frame)
}

/// The connection task: authenticates (if the upgrade did not), registers the
/// connection, serves it, then closes the socket and leaves its channels.
///
/// Shaped for an idle connection's memory (the task's future is most of it):
/// an async fn keeps its arguments for its whole life, so everything the
/// session takes over is moved into a boxed opening step here, synchronously,
/// and the long-lived future holds only that box's pointer, then the
/// session, once, and the small `serve` future. `size_of_val` of these futures
/// is pinned by a unit test below.
fn run(
    socket: WebSocket,
    state: Arc<ServerState>,
    identity: Option<Box<Identity>>,
    deflate: bool,
) -> impl Future<Output = ()> + Send {
    let opening = Box::pin(open_session(socket, state, identity, deflate));
    async move {
        let Some(session) = opening.await else {
            return;
        };
        run_session(session).await;
    }
}

/// Authenticates and registers the connection: the session to serve, or
/// `None` once the socket was closed (refused or gone).
async fn open_session(
    mut socket: WebSocket,
    state: Arc<ServerState>,
    identity: Option<Box<Identity>>,
    deflate: bool,
) -> Option<Session> {
    // Counted until registered or refused, so a shutdown waits for its Close.
    let _opening = state.hub.opening();
    let (mut identity, auth_id) = match identity {
        Some(identity) => (*identity, None),
        None => authenticate_first_message(&mut socket, &state).await?,
    };
    state.access.retain_read_claims(&mut identity);
    let client_id: Arc<str> = Arc::from(new_client_id().as_str());
    let span = tracing::info_span!("conn", client = %client_id, user = %identity.user);
    let settings = &state.config.connection;
    let (connection, queue) = match open_client_connection(&state, client_id, &identity) {
        Ok(opened) => opened,
        Err(err) => {
            let reason = err.to_string();
            span.in_scope(|| tracing::info!(reason, "connection refused"));
            close_socket(
                &mut socket,
                ServerClose::notified(CloseCode::ConnectionLimit, &reason),
                settings.close_timeout,
            )
            .instrument(span)
            .await;
            return None;
        }
    };
    span.in_scope(|| tracing::debug!("connected"));
    let mut session = Session {
        socket,
        token_expiry: expiry_instant(&identity),
        identity,
        connection,
        queue,
        subscriptions: Subscriptions::default(),
        bad_requests: 0,
        pong_deadline: None,
        next_ping: Instant::now() + settings.heartbeat,
        status: PresenceStatus::Online,
        rate: RequestRate::new(settings),
        deflate,
        state,
        span,
    };
    // Sent here, not by `serve`: `connected` answers the auth message and
    // echoes its id, which the long-lived session need not keep.
    if let Err(stop) = Box::pin(session.send_connected(auth_id)).await {
        let span = session.span.clone();
        Box::pin(session.end(stop)).instrument(span).await;
        return None;
    }
    Some(session)
}

/// The close reason (with 4000) of a connection whose task panicked.
const PANIC_REASON: &str = "internal server error; reconnect";

/// Serves `session` until it stops, then ends it (boxed: the closing steps are
/// taken once per connection and need not sit in every idle task).
///
/// Not an `async fn`: that would move its argument into a local of its future
/// and keep both copies of the session (rust-lang/rust#62958); the block uses
/// the captured session in place.
#[allow(clippy::manual_async_fn)] // see above: the async fn form doubles the session
fn run_session(mut session: Session) -> impl Future<Output = ()> + Send {
    async move {
        // A panic while serving (a bug, or an embedder's engine) must not
        // leave the connection registered, its presence listed and its client
        // without a close: end the session as any other stop, with 4000.
        // A subscribe cut short is undone by `close` like any other (the
        // channel is listed before the hub takes the connection in).
        let stop = match AssertUnwindSafe(session.serve()).catch_unwind().await {
            Ok(stop) => stop,
            Err(_) => {
                session
                    .span
                    .in_scope(|| tracing::error!("connection task panicked; closing with 4000"));
                Stop::Close(CloseCode::Reconnect, PANIC_REASON.to_owned())
            }
        };
        let span = session.span.clone();
        Box::pin(session.end(stop)).instrument(span).await;
    }
}

/// Writes `messages` and flushes them, unless a close is requested first
/// (`queue`'s connection's).
///
/// A hand-written poll loop (feed each message, then flush, as `SinkExt::feed`
/// and `flush` do) rather than `select!` over an async block: its state is the
/// iterator and one pending message, and it sits inline in every connection's
/// task through [`Session::write_queued`].
fn write_until_closed<'a>(
    socket: &'a mut WebSocket,
    messages: impl IntoIterator<Item = Message> + 'a,
    queue: &'a ConnectionQueue,
) -> impl Future<Output = Result<(), Stop>> + 'a {
    let mut messages = messages.into_iter();
    let mut pending: Option<Message> = None;
    std::future::poll_fn(move |cx| {
        // Checked without registering: a write that completes at once (the
        // usual case) needs no wake-up; one that waits registers below.
        if let Some(CloseRequest { code, reason }) = queue.requested_close() {
            return Poll::Ready(Err(Stop::Close(code, reason)));
        }
        let mut sink = Pin::new(&mut *socket);
        let waiting = loop {
            let Some(message) = pending.take().or_else(|| messages.next()) else {
                match sink.as_mut().poll_flush(cx) {
                    Poll::Ready(result) => return Poll::Ready(result.map_err(|_| Stop::Gone)),
                    Poll::Pending => break Poll::Pending,
                }
            };
            match sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if sink.as_mut().start_send(message).is_err() {
                        return Poll::Ready(Err(Stop::Gone));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Stop::Gone)),
                Poll::Pending => {
                    pending = Some(message);
                    break Poll::Pending;
                }
            }
        };
        // The client is not reading: wait for room or a close request.
        match queue.poll_close(cx) {
            Poll::Ready(CloseRequest { code, reason }) => {
                Poll::Ready(Err(Stop::Close(code, reason)))
            }
            Poll::Pending => waiting,
        }
    })
}

/// A bare WebSocket echo endpoint at `/`, for protocol conformance runs (the
/// Autobahn|Testsuite through `examples/ws-echo.rs`); the server never routes
/// it. It upgrades with the limits of `config` and reads, answers and closes
/// through the same functions as `/ws` (`with_limits`, `close_socket`,
/// `answer_client_close`, `ServerClose::for_read_error`); it only echoes text
/// and binary messages instead of speaking the Tidings protocol, and sends no
/// `disconnect` message before its Close frames.
pub fn echo_router(config: Config) -> Router {
    Router::new()
        .route("/", get(echo_upgrade))
        .with_state(Arc::new(config))
}

async fn echo_upgrade(State(config): State<Arc<Config>>, upgrade: WebSocketUpgrade) -> Response {
    let close_timeout = config.connection.close_timeout;
    let min_size = config.websocket.compression_min_size;
    upgrade.on_upgrade(socket_options(&config), move |socket, deflate| {
        echo(socket, close_timeout, deflate.then_some(min_size))
    })
}

/// Echoes text and binary messages, compressed (each on its own, as `/ws`
/// compresses events) when the connection negotiated permessage-deflate and the
/// message has at least `compress_from` bytes.
async fn echo(mut socket: WebSocket, close_timeout: Duration, compress_from: Option<usize>) {
    loop {
        let message = match socket.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            // The library answers pings itself; raw frames are never read.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) => {
                answer_client_close(&mut socket, close_timeout).await;
                return;
            }
            Some(Err(err)) => {
                if let Some(close) = ServerClose::for_read_error(err, false) {
                    close_socket(&mut socket, close, close_timeout).await;
                }
                return;
            }
            None => return,
        };
        let message = match (message, compress_from) {
            (Message::Text(text), Some(min)) if text.len() >= min => {
                deflated_frame(permessage_deflate::deflate(text.as_bytes()), Data::Text)
            }
            (Message::Binary(data), Some(min)) if data.len() >= min => {
                deflated_frame(permessage_deflate::deflate(&data), Data::Binary)
            }
            (message, _) => message,
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
}

/// Waits for `{"type":"auth"}` within `auth_timeout`: the identity, and the
/// message's `id` for the `connected` reply.
async fn authenticate_first_message(
    socket: &mut WebSocket,
    state: &ServerState,
) -> Option<(Identity, Option<RequestId>)> {
    let settings = &state.config.connection;
    let deadline = Instant::now() + settings.auth_timeout;
    // Nothing is queued for an unauthenticated socket, so its close needs no
    // more time than it was given to authenticate.
    let close_timeout = settings.close_timeout.min(settings.auth_timeout);
    let text = loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, socket.next()) => read,
            // A shutdown reaches sockets that have not authenticated too.
            code = state.hub.closing() => {
                let close = ServerClose::notified(code, code.default_reason());
                close_socket(socket, close, close_timeout).await;
                return None;
            }
        };
        let close = match read {
            Err(_) => ServerClose::notified(
                CloseCode::Unauthorized,
                "no auth message within auth_timeout",
            ),
            Ok(Some(Ok(Message::Text(text)))) => break text,
            // The library answers pings; they do not stand in for `auth`.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => ServerClose::notified(
                CloseCode::ProtocolViolation,
                "binary frames are not supported",
            ),
            Ok(Some(Ok(Message::Close(_)))) => {
                answer_client_close(socket, close_timeout).await;
                return None;
            }
            Ok(Some(Err(err))) => match ServerClose::for_read_error(err, true) {
                Some(close) => close,
                None => return None,
            },
            Ok(None) => return None,
        };
        close_socket(socket, close, close_timeout).await;
        return None;
    };
    let refused = |code| ServerClose::notified(code, "not authenticated");
    let (id, token) = match parse_request(text.as_str()) {
        Ok((id, Request::Auth { token })) => (id, token),
        Ok((id, _)) => {
            send_error(
                socket,
                id,
                ErrorCode::Unauthorized,
                "the first message must be auth",
                close_timeout,
            )
            .await;
            let close = refused(CloseCode::Unauthorized);
            close_socket(socket, close, close_timeout).await;
            return None;
        }
        Err(bad) => {
            let timeout = close_timeout;
            send_error(socket, bad.id, ErrorCode::BadRequest, &bad.message, timeout).await;
            close_socket(socket, refused(CloseCode::Unauthorized), timeout).await;
            return None;
        }
    };
    match state.verifier.verify(&token) {
        Ok(identity) => Some((identity, id)),
        Err(err) => {
            state.metrics.auth_failed();
            tracing::info!(reason = %err, "auth message token refused");
            let code = if err.is_expired() {
                ErrorCode::TokenExpired
            } else {
                ErrorCode::Unauthorized
            };
            let timeout = close_timeout;
            send_error(socket, id, code, &err.to_string(), timeout).await;
            let close = ServerClose::notified(CloseCode::Unauthorized, "unauthorized");
            close_socket(socket, close, timeout).await;
            None
        }
    }
}

async fn send_error(
    socket: &mut WebSocket,
    id: Option<RequestId>,
    code: ErrorCode,
    message: &str,
    timeout: Duration,
) {
    let text = ServerMessage::error(id, code, message).to_json();
    let _ = tokio::time::timeout(timeout, socket.send(Message::Text(text.into()))).await;
}

/// A close the server starts: its code and reason, and whether a `disconnect`
/// message announces it (Tidings clients) or not (the bare echo endpoint).
struct ServerClose<'a> {
    code: CloseCode,
    reason: &'a str,
    notice: bool,
}

impl<'a> ServerClose<'a> {
    /// A close announced by a `disconnect` message with the same code.
    fn notified(code: CloseCode, reason: &'a str) -> Self {
        Self {
            code,
            reason,
            notice: true,
        }
    }

    /// The close a failed read calls for, or `None` when the peer is gone (the
    /// TCP connection ended or broke: there is no one to send a Close to).
    ///
    /// An oversized message is tungstenite's capacity error (4501); a frame
    /// that breaks RFC 6455 fails the connection with 1002, invalid UTF-8 in a
    /// text message or close reason with 1007. The error type must be the
    /// tungstenite axum uses: the `oversized_message_closes_with_4501` tests
    /// fail if a version skew breaks the downcast.
    fn for_read_error(err: tungstenite::Error, notice: bool) -> Option<Self> {
        let (code, reason) = match &err {
            tungstenite::Error::Capacity(_) => (
                CloseCode::ProtocolViolation,
                "message exceeds max_message_size",
            ),
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => return None,
            tungstenite::Error::Protocol(_) => (CloseCode::ProtocolError, "protocol error"),
            tungstenite::Error::Utf8(_) => (CloseCode::InvalidPayload, "invalid UTF-8"),
            // A compressed message that inflates past the limit is refused as
            // an oversized plain one is.
            tungstenite::Error::Io(io) => match InflateError::of(io)? {
                InflateError::TooLarge => (
                    CloseCode::ProtocolViolation,
                    "message exceeds max_message_size",
                ),
                InflateError::Corrupt => (CloseCode::ProtocolError, "invalid compressed data"),
                InflateError::Protocol(_) => (CloseCode::ProtocolError, "protocol error"),
            },
            _ => return None,
        };
        Some(Self {
            code,
            reason,
            notice,
        })
    }
}

/// The server-initiated close handshake (RFC 6455 §5.5.1, §7.1.1), all within
/// `timeout` (`connection.close_timeout`): write what the client has not read
/// yet, then `disconnect` (if announced) and a Close frame, then read until the
/// client's Close for at most [`CLOSE_REPLY_TIMEOUT`]; dropping the socket
/// afterwards closes TCP from the server side, as §7.1.1 asks.
///
/// The bound is long because of slow consumers: a client that stopped reading
/// has a full socket, and the Close frame leaves only once it reads again. The
/// socket is kept that long, not the queue (the caller dropped it). Reading
/// until the client's Close also matters: closing TCP with unread input makes
/// the kernel send a reset, and the client may then lose the frame and its code.
async fn close_socket(socket: &mut WebSocket, close: ServerClose<'_>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let notice = close.notice.then(|| ServerMessage::Disconnect {
        code: close.code.code(),
        reason: close.reason.to_owned(),
        reconnect: close.code.reconnect(),
    });
    let frame = CloseFrame {
        code: FrameCloseCode::from(close.code.code()),
        reason: Utf8Bytes::from(close_reason(close.reason)),
    };
    let sent = tokio::time::timeout_at(deadline, async {
        // Empties the write buffer first, so the frames below always fit in it.
        socket.flush().await?;
        if let Some(notice) = notice {
            socket.feed(Message::Text(notice.to_json().into())).await?;
        }
        socket.send(Message::Close(Some(frame))).await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let reply_deadline = deadline.min(Instant::now() + CLOSE_REPLY_TIMEOUT);
        let _ = tokio::time::timeout_at(reply_deadline, read_until_closed(socket)).await;
    }
}

/// `reason` cut to the 123 bytes a Close frame has room for (control frames
/// carry at most 125 bytes, two of them the code), on a character boundary;
/// the `disconnect` message carries it whole.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Completes a close the client started (RFC 6455 §5.5.1): the library has
/// queued the Close reply (echoing the client's code); reading on writes it,
/// and then reports the connection closed, within `timeout`.
async fn answer_client_close(socket: &mut WebSocket, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, read_until_closed(socket)).await;
}

/// Reads and drops frames until the close handshake is over (the library ends
/// the stream once both Close frames have passed) or the connection fails.
async fn read_until_closed(socket: &mut WebSocket) {
    while let Some(Ok(_)) = socket.next().await {}
}

struct Session {
    socket: WebSocket,
    state: Arc<ServerState>,
    identity: Identity,
    connection: Arc<Connection>,
    queue: ConnectionQueue,
    subscriptions: Subscriptions,
    bad_requests: u32,
    pong_deadline: Option<Instant>,
    next_ping: Instant,
    token_expiry: Option<Instant>,
    status: PresenceStatus,
    rate: Option<RequestRate>,
    /// The connection negotiated permessage-deflate: events of at least
    /// `websocket.compression_min_size` bytes go out compressed.
    deflate: bool,
    /// The span (client id, user) of this connection's logs. Entered only
    /// around the steps that can log, not around writing queued events: a
    /// fan-out wakes every subscriber's task, and entering a span per wake-up
    /// costs more than the write's own bookkeeping.
    span: tracing::Span,
}

/// Why the request loop must stop.
enum Stop {
    /// The server closes with this code.
    Close(CloseCode, String),
    /// The client sent a Close: answer it.
    ClientClosed,
    /// Nothing left to close.
    Gone,
}

/// What woke a session waiting in [`Session::serve`].
enum Wake {
    /// The hub or the API asked the connection to close.
    Close(CloseRequest),
    /// An item arrived on the send queue.
    Queued(Outbound),
    /// A frame (or the end, or a read error) from the socket.
    Frame(Option<Result<Message, tungstenite::Error>>),
    /// The heartbeat, pong or token deadline passed.
    Deadline,
}

/// How a request failed: the connection must stop, or the request is refused
/// with an error reply and the connection goes on.
enum Failure {
    Stop(Stop),
    Refuse(Refusal),
}

impl Session {
    /// Ends a session that stopped: frees the queue (a slow consumer's backlog
    /// is the memory to free), keeps the socket for the close handshake, then
    /// leaves the channels. The connection stays registered until then, so a
    /// shutdown drain waits for its Close.
    async fn end(self, stop: Stop) {
        let Session {
            mut socket,
            subscriptions,
            connection,
            state,
            queue,
            ..
        } = self;
        drop(queue);
        let close_timeout = state.config.connection.close_timeout;
        // How the session ended, for the log: who closed, with which code.
        let end = match stop {
            Stop::Gone => "connection lost".to_owned(),
            Stop::ClientClosed => {
                answer_client_close(&mut socket, close_timeout).await;
                "closed by the client".to_owned()
            }
            Stop::Close(code, reason) => {
                close_socket(
                    &mut socket,
                    ServerClose::notified(code, &reason),
                    close_timeout,
                )
                .await;
                format!("closed by the server with {}", code.code())
            }
        };
        drop(socket);
        subscriptions.close(&state, &connection).await;
        tracing::debug!(%end, "disconnected");
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_ping;
        if let Some(pong) = self.pong_deadline {
            deadline = deadline.min(pong);
        }
        if let Some(expiry) = self.token_expiry {
            deadline = deadline.min(expiry);
        }
        deadline
    }

    /// Runs the session until it must stop; the caller closes the socket.
    async fn serve(&mut self) -> Stop {
        // One timer for the whole session: re-creating it on every wake-up
        // would cost a timer registration per event batch.
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);
        let stop = loop {
            let deadline = self.next_deadline();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // What woke the session, in priority order. A hand-written poll
            // rather than `select!`: the macro keeps two copies of its futures
            // in this future's state, and this future is most of what an idle
            // connection costs.
            let wake = {
                let queue = &mut self.queue;
                let socket = &mut self.socket;
                std::future::poll_fn(|cx| {
                    match queue.poll_close_or_recv(cx) {
                        Poll::Ready(Err(request)) => return Poll::Ready(Wake::Close(request)),
                        Poll::Ready(Ok(item)) => return Poll::Ready(Wake::Queued(item)),
                        Poll::Pending => {}
                    }
                    if let Poll::Ready(frame) = Pin::new(&mut *socket).poll_next(cx) {
                        return Poll::Ready(Wake::Frame(frame));
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Deadline);
                    }
                    Poll::Pending
                })
                .await
            };
            // Rarely-taken arms are boxed so their large futures do not sit in
            // every connection's task; the hot arm (queued events) is not.
            let step = match wake {
                Wake::Close(request) => Err(Stop::Close(request.code, request.reason)),
                Wake::Queued(item) => {
                    // Events and presence pushes are batched here and written
                    // by the lean writer, inline; an item that needs an await
                    // of its own (status, server unsubscribe) ends the batch
                    // and goes to the boxed `write_queued`.
                    let (batch, oldest, rest) = self.collect_queued(item);
                    let mut step = Ok(());
                    if !batch.is_empty() {
                        step = write_until_closed(&mut self.socket, batch, &self.queue).await;
                        if let (Ok(()), Some(received)) = (&step, oldest) {
                            self.state.metrics.written(received.elapsed());
                        }
                    }
                    match (step, rest) {
                        (Ok(()), Some(rest)) => {
                            let span = self.span.clone();
                            Box::pin(self.write_queued(rest)).instrument(span).await
                        }
                        (step, _) => step,
                    }
                }
                // The span is cloned per step (not kept in this future,
                // which every idle connection holds).
                Wake::Frame(frame) => {
                    let span = self.span.clone();
                    Box::pin(self.on_frame(frame)).instrument(span).await
                }
                Wake::Deadline => {
                    let span = self.span.clone();
                    Box::pin(self.on_deadline()).instrument(span).await
                }
            };
            if let Err(stop) = step {
                break stop;
            }
        };
        stop
    }

    async fn send_connected(&mut self, id: Option<RequestId>) -> Result<(), Stop> {
        let message = ServerMessage::Connected {
            id,
            client: self.connection.client_id.to_string(),
            user: self.identity.user.to_string(),
            heartbeat: duration_ms(self.state.config.connection.heartbeat),
            expires_at: self.identity.expires_at.map(format_unix_seconds),
            node: self.state.node.clone(),
            version: PROTOCOL_VERSION,
        };
        self.send(&message).await
    }

    /// Writes messages in one flush, giving up if a close is requested
    /// meanwhile (a client that stopped reading must not pin this task).
    async fn write(&mut self, messages: impl IntoIterator<Item = Message>) -> Result<(), Stop> {
        write_until_closed(&mut self.socket, messages, &self.queue).await
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), Stop> {
        self.write([Message::Text(Utf8Bytes::from(message.to_json()))])
            .await
    }

    async fn on_deadline(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if self.pong_deadline.is_some_and(|d| d <= now) {
            return Err(Stop::Close(
                CloseCode::NoPong,
                CloseCode::NoPong.default_reason().into(),
            ));
        }
        if self.token_expiry.is_some_and(|d| d <= now) {
            return Err(Stop::Close(
                CloseCode::TokenExpired,
                CloseCode::TokenExpired.default_reason().into(),
            ));
        }
        if self.next_ping <= now {
            self.next_ping = now + self.state.config.connection.heartbeat;
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + self.state.config.connection.pong_timeout);
            }
            self.send(&ServerMessage::Ping).await?;
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        let message = match frame {
            None => return Err(Stop::Gone),
            Some(Err(err)) => {
                return Err(match ServerClose::for_read_error(err, true) {
                    Some(close) => Stop::Close(close.code, close.reason.into()),
                    None => Stop::Gone,
                })
            }
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => Err(Stop::Close(
                CloseCode::ProtocolViolation,
                "binary frames are not supported".into(),
            )),
            Message::Close(_) => Err(Stop::ClientClosed),
            // The library answers pings itself; either frame proves liveness.
            Message::Ping(_) | Message::Pong(_) => {
                self.pong_deadline = None;
                Ok(())
            }
            // Only ever written, never read.
            Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Stop> {
        // Any message proves the client is alive.
        self.pong_deadline = None;
        let (id, request) = match parse_request(text) {
            Ok(parsed) => parsed,
            Err(bad) => {
                return self
                    .refuse(bad.id, Refusal::new(ErrorCode::BadRequest, bad.message))
                    .await
            }
        };
        if !matches!(request, Request::Pong) {
            if let Some(rate) = &mut self.rate {
                if rate.limiter.check().is_err() {
                    rate.limited_in_a_row += 1;
                    if rate.limited_in_a_row > rate.tolerance {
                        return Err(Stop::Close(
                            CloseCode::RateLimited,
                            CloseCode::RateLimited.default_reason().into(),
                        ));
                    }
                    let refusal =
                        Refusal::new(ErrorCode::RateLimited, "too many requests; slow down");
                    return self.refuse(id, refusal).await;
                }
                rate.limited_in_a_row = 0;
            }
        }
        let result = match request {
            Request::Pong => Ok(()),
            Request::Ping => self
                .send(&ServerMessage::Pong { id: id.clone() })
                .await
                .map_err(Failure::Stop),
            Request::Auth { .. } => Err(Failure::Refuse(Refusal::new(
                ErrorCode::BadRequest,
                "already authenticated",
            ))),
            Request::Subscribe { channel, since } => {
                self.subscribe(id.clone(), &channel, since).await
            }
            Request::Unsubscribe { channel } => self.unsubscribe(id.clone(), &channel).await,
            Request::Publish {
                channel,
                event,
                data,
            } => {
                let reply = requests::publish(
                    &self.state,
                    &self.identity,
                    id.clone(),
                    channel,
                    event,
                    &data,
                )
                .await;
                self.reply(reply.map(|m| m.to_json())).await
            }
            Request::History {
                channel,
                since,
                limit,
                order,
            } => {
                let reader = Reader {
                    client: &self.connection.client_id,
                    identity: &self.identity,
                };
                let reply = requests::history(
                    &self.state,
                    reader,
                    id.clone(),
                    &channel,
                    since,
                    limit,
                    order.unwrap_or_default(),
                )
                .await;
                self.reply(reply).await
            }
            Request::Refresh { token } => self.refresh(id.clone(), &token).await,
            Request::Presence { channel } => {
                let reply =
                    requests::presence(&self.state, &self.identity, id.clone(), &channel).await;
                self.reply(reply.map(|m| m.to_json())).await
            }
            Request::Status { status } => self.set_status(id.clone(), status).await,
        };
        match result {
            Ok(()) => {
                self.bad_requests = 0;
                Ok(())
            }
            Err(Failure::Stop(stop)) => Err(stop),
            Err(Failure::Refuse(refusal)) => self.refuse(id, refusal).await,
        }
    }

    /// Sends a transport-independent request's reply, or passes its refusal on.
    async fn reply(&mut self, reply: Result<String, Refusal>) -> Result<(), Failure> {
        let text = reply.map_err(Failure::Refuse)?;
        self.write([Message::Text(Utf8Bytes::from(text))])
            .await
            .map_err(Failure::Stop)
    }

    /// Sends an error reply; too many malformed requests in a row close the
    /// connection with 4501.
    async fn refuse(&mut self, id: Option<RequestId>, refusal: Refusal) -> Result<(), Stop> {
        if refusal.code != ErrorCode::BadRequest {
            self.bad_requests = 0;
        } else {
            self.bad_requests += 1;
        }
        if self.bad_requests > self.state.config.connection.max_bad_requests {
            return Err(Stop::Close(
                CloseCode::ProtocolViolation,
                "too many bad requests in a row".into(),
            ));
        }
        self.send(&ServerMessage::error(id, refusal.code, refusal.message))
            .await
    }

    async fn subscribe(
        &mut self,
        id: Option<RequestId>,
        name: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), Failure> {
        let channel = parse_channel(name).map_err(Failure::Refuse)?;
        let subscribed = self
            .subscriptions
            .subscribe(
                &self.state,
                &self.identity,
                &self.connection,
                channel,
                since.as_ref(),
                self.status,
            )
            .await
            .map_err(Failure::Refuse)?;
        let mut out = vec![Message::Text(Utf8Bytes::from(
            subscribed.reply(id).to_json(),
        ))];
        out.extend(subscribed.replay.iter().map(|p| self.event_message(p)));
        self.write(out).await.map_err(Failure::Stop)
    }

    async fn set_status(
        &mut self,
        id: Option<RequestId>,
        status: PresenceStatus,
    ) -> Result<(), Failure> {
        self.status = status;
        self.subscriptions
            .set_status(&self.state, &self.connection, status)
            .await
            .map_err(Failure::Refuse)?;
        self.send(&ServerMessage::Status { id, status })
            .await
            .map_err(Failure::Stop)
    }

    async fn unsubscribe(&mut self, id: Option<RequestId>, name: &str) -> Result<(), Failure> {
        let channel = parse_channel(name).map_err(Failure::Refuse)?;
        if !self
            .subscriptions
            .unsubscribe(&self.state, &self.connection, &channel)
            .await
        {
            return Err(Failure::Refuse(Refusal::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel}"),
            )));
        }
        let reply = ServerMessage::Unsubscribed {
            id,
            channel: channel.to_string(),
            reason: None,
        };
        self.send(&reply).await.map_err(Failure::Stop)
    }

    async fn refresh(&mut self, id: Option<RequestId>, token: &str) -> Result<(), Failure> {
        let identity = requests::verify_refresh(&self.state, &self.identity.user, token)
            .map_err(Failure::Refuse)?;
        let expires_at = identity.expires_at.map(format_unix_seconds);
        for notice in self.take_identity(identity).await {
            self.send(&notice).await.map_err(Failure::Stop)?;
        }
        self.send(&ServerMessage::Refreshed { id, expires_at })
            .await
            .map_err(Failure::Stop)
    }

    /// Puts a refreshed token in force: its expiry, its claims for later
    /// requests, its roles for delivery, and the end of every subscription
    /// it no longer allows; returns the `unsubscribed` pushes to send.
    async fn take_identity(&mut self, identity: Identity) -> Vec<ServerMessage> {
        let revoked = self
            .subscriptions
            .take_refresh(
                &self.state,
                &self.connection,
                identity,
                &mut self.identity,
                &mut self.token_expiry,
            )
            .await;
        revoked
            .into_iter()
            .map(|channel| ServerMessage::Unsubscribed {
                id: None,
                channel: channel.to_string(),
                reason: Some(REVOKED_REASON.to_owned()),
            })
            .collect()
    }

    /// Takes queued events and presence pushes, `first` and whatever else is
    /// already waiting (up to [`WRITE_BATCH`]), without awaiting: the texts to
    /// write, when the oldest event was received, and the item that stopped
    /// the batch because it needs [`write_queued`](Self::write_queued).
    fn collect_queued(
        &mut self,
        first: Outbound,
    ) -> (Vec<Message>, Option<std::time::Instant>, Option<Outbound>) {
        let mut batch = Vec::new();
        let mut oldest = None;
        let mut item = Some(first);
        while let Some(next) = item.take() {
            if let Some(rest) = self.add_data(next, &mut batch, &mut oldest) {
                return (batch, oldest, Some(rest));
            }
            if batch.len() < WRITE_BATCH {
                item = self.queue.try_recv();
            }
        }
        (batch, oldest, None)
    }

    /// An event's frame for this connection: the compressed one, deflated
    /// once per event and shared by every connection that negotiated
    /// permessage-deflate, or the plain envelope (not negotiated, or smaller
    /// than `websocket.compression_min_size`).
    fn event_message(&self, publication: &Publication) -> Message {
        let text = publication.encoded();
        if self.deflate && text.len() >= self.state.config.websocket.compression_min_size {
            let metrics = &self.state.metrics;
            let deflated = publication.deflated(|payload| {
                metrics.deflated_event();
                permessage_deflate::deflate(payload)
            });
            metrics.deflated_frame_written(text.len(), deflated.len());
            return deflated_frame(deflated.clone(), Data::Text);
        }
        text_frame(Bytes::from(text.clone()))
    }

    /// Adds an event or a presence push to `batch` if the connection is still
    /// on its channel; gives back a control request or an unsubscribe notice,
    /// which the caller handles.
    fn add_data(
        &mut self,
        item: Outbound,
        batch: &mut Vec<Message>,
        oldest: &mut Option<std::time::Instant>,
    ) -> Option<Outbound> {
        match item {
            Outbound::Event(publication) => {
                if self.subscriptions.accept(&publication) {
                    oldest.get_or_insert(publication.received_at);
                    batch.push(self.event_message(&publication));
                }
                None
            }
            Outbound::Presence(push) => {
                if self.subscriptions.contains(&push.channel) {
                    batch.push(text_frame(Bytes::from(push.text)));
                }
                None
            }
            rest @ (Outbound::Control(_) | Outbound::Unsubscribed(_)) => Some(rest),
        }
    }

    /// Applies a request from `POST /request`, then tells its caller so;
    /// gives back the notices to write (channels a refresh revoked).
    async fn apply_control(&mut self, control: Control) -> Vec<ServerMessage> {
        let (request, applied) = control.take();
        let (outcome, notices) = match request {
            ControlRequest::Status(status) => {
                self.status = status;
                let stored = self
                    .subscriptions
                    .set_status(&self.state, &self.connection, status)
                    .await;
                (stored, Vec::new())
            }
            ControlRequest::Refresh(identity) => (Ok(()), self.take_identity(identity).await),
        };
        applied.done(outcome.map_err(|refusal| (refusal.code, refusal.message)));
        notices
    }

    /// Writes a queued item and whatever else is already waiting, in one flush.
    async fn write_queued(&mut self, first: Outbound) -> Result<(), Stop> {
        let mut batch = Vec::new();
        let mut oldest = None;
        let mut item = Some(first);
        while let Some(next) = item.take() {
            match self.add_data(next, &mut batch, &mut oldest) {
                None | Some(Outbound::Event(_) | Outbound::Presence(_)) => {}
                Some(Outbound::Control(control)) => {
                    // Boxed, with the request moved into it: a rare arm, and
                    // this future stays small.
                    for notice in Box::pin(self.apply_control(*control)).await {
                        batch.push(Message::Text(Utf8Bytes::from(notice.to_json())));
                    }
                }
                Some(Outbound::Unsubscribed(notice)) => {
                    let ServerUnsubscribe { channel, reason } = *notice;
                    if Box::pin(
                        self.subscriptions
                            .forget(&self.state, &self.connection, &channel),
                    )
                    .await
                    {
                        let notice = ServerMessage::Unsubscribed {
                            id: None,
                            channel: channel.to_string(),
                            reason: Some(reason),
                        };
                        batch.push(Message::Text(Utf8Bytes::from(notice.to_json())));
                    }
                }
            }
            if batch.len() < WRITE_BATCH {
                item = self.queue.try_recv();
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        write_until_closed(&mut self.socket, batch, &self.queue).await?;
        if let Some(received) = oldest {
            self.state.metrics.written(received.elapsed());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size_2<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn output_size_4<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn method_output_size<'a, A: 'a, F: Future>(_: impl FnOnce(&'a mut A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The connection task's future is most of what an idle connection
    /// costs (it sits in a 128-byte-aligned tokio task cell), and it grows
    /// silently when a large future is awaited inline, an async fn argument
    /// is moved into a local, or a `select!` is added to `serve`. Sizes at
    /// the time of writing, the same in debug and release builds: `run`
    /// 1,112 B, `Session` 680 B, `Session::serve` 408 B, `write_queued`
    /// 232 B. If this fails, box the new cold part (see `run` and `serve`)
    /// rather than raising the bound.
    #[test]
    fn connection_futures_stay_small() {
        let run_size = output_size_4(run);
        let serve_size = method_output_size(Session::serve);
        let write_queued_size = output_size_2(Session::write_queued);
        let session_size = std::mem::size_of::<Session>();
        let sizes = format!(
            "run {run_size} B, serve {serve_size} B, write_queued {write_queued_size} B, \
             Session {session_size} B"
        );
        assert!(run_size <= 1_152, "{sizes}");
        assert!(serve_size <= 448, "{sizes}");
        assert!(write_queued_size <= 256, "{sizes}");
        assert!(session_size <= 704, "{sizes}");
        // The session is held once: no second copy of it or of the socket.
        assert!(run_size < session_size * 2, "{sizes}");
    }
}
