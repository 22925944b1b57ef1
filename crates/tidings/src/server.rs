//! Assembling a server: state shared by every transport, the axum router, and
//! graceful shutdown. [`Tidings`] is what an embedding backend holds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tidings_auth::{ApiKey, TokenVerifier};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::access::AccessPolicy;
use crate::config::{Config, ConfigError, EngineKind};
use crate::engine::cluster::{Cluster, NodeInfo};
use crate::engine::presence::PresenceStore;
use crate::engine::{Engine, EngineError, HistoryPage, HistoryQuery};
use crate::hub::{ConnectionLimits, Hub, HubControl};
use crate::metrics::Metrics;
use crate::protocol::messages::PresenceMember;
use crate::protocol::{ChannelName, CloseCode};
use crate::publisher::{PublishError, PublishLimits, PublishRequest, Published, Publisher};
use crate::transport;
use crate::transport::http::{client_cors, panic_response, UserRequestLimits};
use crate::transport::lingering_close::LingeringClose;
use crate::transport::request_endpoint::{self, panic_reply};

/// Everything the transports share.
pub struct ServerState {
    /// The configuration in force.
    pub config: Config,
    /// This node's id.
    pub node: String,
    /// Verifies client tokens.
    pub verifier: TokenVerifier,
    /// The backend API key, if the server API is enabled.
    pub api_key: Option<ApiKey>,
    /// Namespaces and rules.
    pub access: AccessPolicy,
    /// Local subscribers and fan-out.
    pub hub: Arc<Hub>,
    /// Who is on which channel.
    pub presence: Arc<dyn PresenceStore>,
    /// The publish path.
    pub publisher: Publisher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Per-user budgets of `POST /request` and `GET /events`.
    pub user_request_limits: UserRequestLimits,
    /// Which nodes are alive, and API actions that reach every node.
    pub cluster: Arc<dyn Cluster>,
}

impl ServerState {
    /// Every live node of the cluster, this one first.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        self.cluster.nodes().await
    }
}

/// Why a channel operation of [`Tidings`] (presence, history, unsubscribe)
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No namespace defines the channel (`unknown_channel` on the server API).
    #[error("unknown channel {0}")]
    UnknownChannel(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A Tidings server: mount [`Tidings::router`] in an axum app (or call
/// [`Tidings::serve`]) and publish with [`Tidings::publish`].
#[derive(Clone)]
pub struct Tidings {
    state: Arc<ServerState>,
}

impl std::fmt::Debug for Tidings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tidings")
            .field("node", &self.state.node)
            .finish()
    }
}

impl Tidings {
    /// A server on the engine `config.engine.type` names (in memory, or Redis).
    /// Must be called within a Tokio runtime (it starts the engine's tasks and
    /// metrics upkeep). The Redis engine connects lazily: a Redis that is down
    /// at start makes the node degraded, not absent.
    pub fn new(mut config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let node = config
            .node
            .get_or_insert_with(|| format!("n_{}", &ulid::Ulid::generate().to_string()[16..]))
            .clone();
        let engine = match config.engine.kind {
            EngineKind::Memory => Engine::memory(&config.engine, &node),
            EngineKind::Redis => Engine::redis(&config.engine, &node)?,
        };
        Self::with_engine(config, engine)
    }

    /// A server on the given engine. The node's name is `config.node`, else
    /// the one the engine was made with (`Engine::memory(settings, name)`),
    /// else a generated one.
    pub fn with_engine(config: Config, engine: Engine) -> Result<Self, ConfigError> {
        let Engine {
            broker,
            presence,
            cluster,
        } = engine;
        config.validate()?;
        let verifier = TokenVerifier::new(&config.jwt)?;
        let metrics = Arc::new(Metrics::new());
        let access = AccessPolicy::new(&config);
        let hub = Hub::new(
            broker.clone(),
            metrics.clone(),
            ConnectionLimits {
                per_user: config.connection.max_connections_per_user,
                total: config.connection.max_connections,
            },
        );
        let publisher = Publisher::new(
            broker,
            access.clone(),
            metrics.clone(),
            config.api.idempotency_window,
        )
        .with_limits(PublishLimits::of(&config));
        let node = config
            .node
            .clone()
            .or_else(|| cluster.node_name().map(str::to_owned))
            .unwrap_or_else(|| format!("n_{}", &ulid::Ulid::generate().to_string()[16..]));
        cluster.attach(Arc::new(HubControl(Arc::downgrade(&hub))));
        let api_key = config.api_key.clone().map(ApiKey::new);
        spawn_metrics_upkeep(&metrics);
        let user_request_limits = UserRequestLimits::new(&config.connection);
        let state = Arc::new(ServerState {
            user_request_limits,
            config,
            node,
            verifier,
            api_key,
            access,
            hub,
            presence,
            publisher,
            metrics,
            cluster,
        });
        Ok(Self { state })
    }

    /// The axum router with every transport and endpoint.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let transports = &state.config.transports;
        let mut router = Router::new();
        if transports.websocket {
            router = router
                .route("/ws", get(transport::websocket::upgrade))
                .route("/api/ws", get(transport::websocket::upgrade));
        }
        // Browsers reach these with fetch/EventSource, often cross-origin.
        let mut http_clients = Router::new();
        if transports.sse {
            http_clients = http_clients.route("/sse", get(transport::sse::stream));
        }
        if transports.polling {
            http_clients = http_clients.route("/events", get(transport::polling::poll));
        }
        if transports.http_requests {
            let request =
                post(request_endpoint::handle).layer(CatchPanicLayer::custom(panic_reply));
            http_clients = http_clients.route("/request", request);
        }
        if transports.socketio {
            router = router.merge(transport::socketio::router(state.clone()));
        }
        router
            // Caught inside the CORS layer too, so a browser reads the 500.
            .merge(
                http_clients
                    .layer(CatchPanicLayer::custom(panic_response))
                    .layer(client_cors(&state.config.allowed_origins)),
            )
            .merge(transport::api::routes(state.clone()))
            .merge(transport::ops::routes(state.config.console))
            .layer(DefaultBodyLimit::max(state.config.api.max_body_size))
            // A handler that panics (a bug, or an embedder's engine) answers
            // 500 `internal` rather than dropping the client's connection.
            .layer(CatchPanicLayer::custom(panic_response))
            .with_state(state)
    }

    /// The publish handle (cheap to clone).
    pub fn publisher(&self) -> Publisher {
        self.state.publisher.clone()
    }

    /// Publishes one event, as `POST /api/publish` does.
    pub async fn publish(&self, request: PublishRequest) -> Result<Published, PublishError> {
        self.state.publisher.publish(request).await
    }

    /// Closes `user`'s connections on every node with `code` and `reason`
    /// (each code's default reason when `None`), as `POST /api/disconnect`
    /// does; returns how many this node closed. Any code is sent, where the
    /// route takes only the 4xxx ones: `CloseCode::Restarting` (1012) tells
    /// the clients to reconnect, as a restart does.
    pub async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: Option<String>,
    ) -> Result<usize, EngineError> {
        self.state.cluster.disconnect_user(user, code, reason).await
    }

    /// Ends `user`'s subscriptions to `channel` on every node (each
    /// connection gets an `unsubscribed` push with `reason`), as
    /// `POST /api/unsubscribe` does; returns how many this node ended. A
    /// channel no namespace defines is [`ChannelError::UnknownChannel`].
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        channel: &ChannelName,
        reason: &str,
    ) -> Result<usize, ChannelError> {
        self.known(channel)?;
        Ok(self
            .state
            .cluster
            .unsubscribe_user(user, channel, reason)
            .await?)
    }

    /// Who is on `channel`, on every node, as `GET /api/presence` lists them.
    /// A channel no namespace defines is [`ChannelError::UnknownChannel`].
    pub async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceMember>, ChannelError> {
        self.known(channel)?;
        Ok(self.state.presence.members(channel).await?)
    }

    /// A page of `channel`'s history with its current position, as
    /// `GET /api/history` reads it (every event: audience and exclusion do
    /// not apply). A channel no namespace defines is
    /// [`ChannelError::UnknownChannel`].
    pub async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, ChannelError> {
        self.known(channel)?;
        Ok(self.state.hub.broker().history(channel, query).await?)
    }

    /// Refuses a channel no namespace defines, as the server API does (404
    /// `unknown_channel` there): not an empty answer that hides a typo.
    fn known(&self, channel: &ChannelName) -> Result<(), ChannelError> {
        match self.state.access.namespace(channel) {
            Ok(_) => Ok(()),
            Err(_) => Err(ChannelError::UnknownChannel(channel.to_string())),
        }
    }

    /// Every live node of the cluster, this one first, as `GET /api/info`
    /// lists them.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        self.state.nodes().await
    }

    /// Shared state, for transports and tests.
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Tells every client to reconnect elsewhere (1012) and waits up to `drain`
    /// for the connections to close (a `drain` too long to count, such as
    /// `Duration::MAX`, waits until they have), then leaves the cluster.
    pub async fn shutdown(&self, drain: Duration) {
        let hub = &self.state.hub;
        hub.close_all(CloseCode::Restarting);
        let deadline = tokio::time::Instant::now().checked_add(drain);
        while hub.open_sockets() > 0
            && deadline.is_none_or(|deadline| tokio::time::Instant::now() < deadline)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.cluster.leave().await;
    }

    /// Sets the options [`Tidings::serve`] gives every accepted socket; call it
    /// from your own accept loop when you serve [`Tidings::router`] yourself
    /// (and wrap the socket in [`LingeringClose`] as `serve` does).
    ///
    /// - `TCP_NODELAY`: events are small writes that must not wait for Nagle.
    /// - `TCP_USER_TIMEOUT` of `heartbeat + pong_timeout` (Linux): data the peer
    ///   leaves unacknowledged that long ends the connection. This is what finds
    ///   an SSE reader that stopped reading or vanished (SSE has no pong), and a
    ///   WebSocket client that answers pings but stopped reading at an event
    ///   rate too low for its send queue to overflow.
    pub fn tune_socket(&self, tcp: &tokio::net::TcpStream) {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let settings = &self.state.config.connection;
            let timeout = settings.heartbeat + settings.pong_timeout;
            if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
                tracing::debug!(error = %err, "could not set TCP_USER_TIMEOUT");
            }
        }
    }

    /// Serves on `listener` until `signal` resolves, then stops accepting, sends
    /// every client 1012 and drains for `connection.shutdown_drain`.
    ///
    /// A client must send each request's headers within
    /// `connection.request_timeout`, and its body without pausing longer
    /// than that (an idle keep-alive connection is closed after it too): a
    /// client that stops mid-request must not hold its socket forever.
    /// Connections close lingering ([`LingeringClose`]): a body refused
    /// before it was read is drained, so its client reads the answer.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let request_timeout = self.state.config.connection.request_timeout;
        let app = self
            .router()
            .layer(RequestBodyTimeoutLayer::new(request_timeout));
        let tuning = self.clone();
        let mut listener = listener.tap_io(move |tcp| tuning.tune_socket(tcp));
        // HTTP/1 only (as axum::serve without its http2 feature): the
        // version sniffing of hyper-util's auto builder waits for a first
        // byte with no timeout.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(request_timeout);
        // Connection tasks stop on `stop` and hold `open` until they end.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        let mut signal = std::pin::pin!(signal);
        loop {
            // `Listener::accept` waits out accept errors (EMFILE) as axum::serve does.
            let (io, _) = tokio::select! {
                accepted = axum::serve::Listener::accept(&mut listener) => accepted,
                () = &mut signal => break,
            };
            let service = TowerToHyperService::new(app.clone().into_service::<Incoming>());
            let io = LingeringClose::new(io);
            let connection = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut stopping = stopping.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let stopped = tokio::select! {
                    _ = connection.as_mut() => false,
                    _ = stopping.wait_for(|stop| *stop) => true,
                };
                if stopped {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                drop(open);
            });
        }
        drop(listener);
        let _ = stop.send(true);
        drop(open);
        tracing::info!("shutting down: closing connections with 1012");
        let drain = self.state.config.connection.shutdown_drain;
        let drain_ends = tokio::time::Instant::now().checked_add(drain);
        self.shutdown(drain).await;
        // The HTTP side only waits on plain requests (an idle keep-alive
        // connection lingers until its client closes it); upgraded sockets
        // are already drained above. A short grace, within the drain: an
        // orchestrator waits `shutdown_drain` before it kills the process.
        let left = drain_ends.map_or(Duration::MAX, |ends| {
            ends.saturating_duration_since(tokio::time::Instant::now())
        });
        let grace = Duration::from_secs(1).min(left);
        let _ = tokio::time::timeout(grace, all_closed.recv()).await;
        Ok(())
    }
}

fn spawn_metrics_upkeep(metrics: &Arc<Metrics>) {
    let weak = Arc::downgrade(metrics);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(metrics) => metrics.run_upkeep(),
                None => break,
            }
        }
    });
}
