//! Socket.IO v4 clients (socket.io-client 4.x, unchanged) on the hub: Engine.IO
//! v4 sessions ([`engineio`]), Socket.IO v5 packets ([`packet`]), and the
//! mapping of a Socket.IO socket onto a hub connection (`hub_socket`): the
//! same subscribe, recovery, access, limits and metrics as `/ws`.
//!
//! A conformance endpoint ([`conformance_router`]) serves the same Engine.IO
//! and packet code with the echo handlers the upstream protocol test suites
//! expect; the server never routes it (`examples/socketio-conformance.rs`).

mod echo;
pub mod engineio;
mod hub_socket;
pub mod packet;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::time::Instant;

use self::engineio::{End, Endpoint, EngineQuery, EngineSettings, Session, Sessions};
use super::http::{check_origin, client_cors};
use crate::hub::{CloseRequest, Outbound};
use crate::server::ServerState;

/// The Socket.IO side of one Engine.IO session.
pub enum App {
    /// A client of the hub.
    Hub(Box<hub_socket::HubSocket>),
    /// The conformance echo handlers.
    Echo(echo::EchoSocket),
    /// Bare Engine.IO echo (the conformance endpoint's `/engine.io/`): every
    /// message goes back as it came.
    EngineEcho,
}

/// What woke a connected socket: its hub queue or a close request.
pub enum Wake {
    /// The hub (or the API) asks the connection to close.
    Close(CloseRequest),
    /// Something queued for the client.
    Outbound(Outbound),
}

impl App {
    fn is_connected(&self) -> bool {
        match self {
            Self::Hub(socket) => socket.is_connected(),
            Self::Echo(socket) => socket.is_connected(),
            Self::EngineEcho => true,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Hub(socket) => socket.deadline(),
            Self::Echo(_) | Self::EngineEcho => None,
        }
    }

    /// Waits for the hub: a close request, or (when `room`) a queued item.
    async fn wake(&mut self, room: bool) -> Wake {
        match self {
            Self::Hub(socket) => socket.wake(room).await,
            Self::Echo(_) | Self::EngineEcho => std::future::pending().await,
        }
    }

    async fn on_wake(&mut self, session: &Session, wake: Wake) -> Result<(), End> {
        match self {
            Self::Hub(socket) => socket.on_wake(session, wake).await,
            Self::Echo(_) | Self::EngineEcho => Ok(()),
        }
    }

    async fn on_message(&mut self, session: &Session, text: &str) -> Result<(), End> {
        match self {
            Self::Hub(socket) => socket.on_message(session, text).await,
            Self::Echo(socket) => socket.on_message(session, text),
            Self::EngineEcho => {
                session.push_message(text);
                Ok(())
            }
        }
    }

    async fn on_binary(&mut self, session: &Session, bytes: Bytes) -> Result<(), End> {
        match self {
            Self::Hub(socket) => socket.on_binary(bytes),
            Self::Echo(socket) => socket.on_binary(session, bytes),
            Self::EngineEcho => {
                session.push(engineio::Frame::Binary(bytes));
                Ok(())
            }
        }
    }

    async fn on_deadline(&mut self, session: &Session) -> Result<(), End> {
        match self {
            Self::Hub(socket) => socket.on_deadline(session),
            Self::Echo(_) | Self::EngineEcho => Ok(()),
        }
    }

    /// Releases what the socket holds (its hub connection) once the session ended.
    async fn finish(self) {
        if let Self::Hub(socket) = self {
            socket.finish().await;
        }
    }
}

/// The Engine.IO settings the server's configuration gives `/socket.io/`.
fn engine_settings(state: &ServerState) -> EngineSettings {
    let connection = &state.config.connection;
    EngineSettings {
        ping_interval: connection.heartbeat,
        ping_timeout: connection.pong_timeout,
        max_payload: connection.max_message_size,
        connect_timeout: connection.auth_timeout,
        outbox_bytes: connection.send_queue_bytes,
        read_buffer_size: connection.read_buffer_size,
        write_buffer_size: connection.write_buffer_size,
    }
}

/// The routes of the Socket.IO endpoint at `transports.socketio_path`.
pub fn router<S: Clone + Send + Sync + 'static>(state: Arc<ServerState>) -> Router<S> {
    let path = state.config.transports.socketio_path.clone();
    let origins = state.config.allowed_origins.clone();
    let settings = engine_settings(&state);
    let linger = settings.ping_interval + settings.ping_timeout;
    let max_pending = state.config.transports.socketio_max_pending;
    let endpoint = Arc::new(Endpoint {
        settings,
        sessions: Sessions::new(
            linger,
            Some(state.metrics.clone()),
            max_pending.unwrap_or(engineio::MAX_PENDING_SESSIONS),
        ),
        new_app: Box::new(move |headers| {
            App::Hub(Box::new(hub_socket::HubSocket::new(state.clone(), headers)))
        }),
    });
    routes(&path, endpoint, origins)
}

fn routes<S: Clone + Send + Sync + 'static>(
    path: &str,
    endpoint: Arc<Endpoint>,
    origins: Vec<String>,
) -> Router<S> {
    let trimmed = path.trim_end_matches('/');
    let handler = any(handle).with_state(Arc::new(Mounted {
        endpoint,
        origins: origins.clone(),
    }));
    Router::new()
        .route(&format!("{trimmed}/"), handler.clone())
        .route(trimmed, handler)
        .layer(client_cors(&origins))
}

struct Mounted {
    endpoint: Arc<Endpoint>,
    origins: Vec<String>,
}

async fn handle(
    State(mounted): State<Arc<Mounted>>,
    method: Method,
    query: Result<Query<EngineQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    request: axum::extract::Request,
) -> Response {
    if let Err(err) = check_origin(&mounted.origins, &headers) {
        return err.into_response();
    }
    // A parameter given twice: Engine.IO's error shape, not axum's text.
    let Ok(Query(query)) = query else {
        return engineio::engine_error(3, "Bad request");
    };
    let endpoint = mounted.endpoint.clone();
    match method {
        Method::GET => engineio::get(endpoint, query, headers, upgrade.ok()).await,
        Method::POST => engineio::post(endpoint, query, request).await,
        _ => engineio::engine_error(2, "Bad handshake method"),
    }
}

/// The conformance endpoints: `/socket.io/` with the settings the upstream
/// Socket.IO test suite expects (ping every 300 ms, 200 ms to answer,
/// `maxPayload` 1e6, 1 s to connect) and echo handlers on the namespaces `/`
/// and `/custom`; and `/engine.io/`, the same Engine.IO code with every
/// message echoed, for the upstream Engine.IO test suite.
pub fn conformance_router() -> Router {
    let endpoint = |new_app: Box<dyn Fn(&HeaderMap) -> App + Send + Sync>| {
        Arc::new(Endpoint {
            settings: EngineSettings {
                ping_interval: Duration::from_millis(300),
                ping_timeout: Duration::from_millis(200),
                max_payload: 1_000_000,
                connect_timeout: Duration::from_secs(1),
                outbox_bytes: 1 << 20,
                read_buffer_size: 4096,
                write_buffer_size: 4096,
            },
            sessions: Sessions::new(
                Duration::from_millis(500),
                None,
                engineio::MAX_PENDING_SESSIONS,
            ),
            new_app,
        })
    };
    let socketio = endpoint(Box::new(|_| App::Echo(echo::EchoSocket::default())));
    let engineio = endpoint(Box::new(|_| App::EngineEcho));
    routes("/socket.io/", socketio, Vec::new()).merge(routes("/engine.io/", engineio, Vec::new()))
}
