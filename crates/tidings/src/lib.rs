//! Tidings: a real-time update server. Browsers subscribe to channels over
//! WebSocket; backends publish over HTTP (or, embedded, by calling
//! [`Tidings::publish`]); every event reaches exactly the connections allowed to
//! see it, each with a per-channel offset.
//!
//! Layers, bottom up: [`protocol`] (wire types), [`config`] and [`access`]
//! (namespaces and rules), [`engine`] (offsets, history, cross-node delivery),
//! [`hub`] (local subscribers and fan-out), [`publisher`] (the publish path),
//! [`transport`] (WebSocket, server API, ops), and [`server`] (assembly).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = tidings::config::Config::default();
//! config.jwt.secret = Some("a-long-random-secret-of-32-bytes!".into());
//! let tidings = tidings::Tidings::new(config)?;
//! let app = axum::Router::new().merge(tidings.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod config;
pub mod consumers;
pub mod engine;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod publisher;
pub mod server;
pub mod transport;

pub use publisher::{PublishError, PublishRequest, Published, Publisher};
pub use server::{ChannelError, Tidings};
pub use tidings_auth as auth;
