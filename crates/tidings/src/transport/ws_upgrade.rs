//! The WebSocket upgrade of `/ws` and the conformance echo endpoint: axum's
//! `WebSocketUpgrade` neither shows the client's `Sec-WebSocket-Extensions` nor
//! lets a layer sit under tungstenite, and permessage-deflate needs both.
//!
//! HTTP/1.1 only (the server does not enable HTTP/2, so no extended CONNECT).

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite_server::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::permessage_deflate::{self, InflatingIo};

/// A server-side WebSocket connection after the upgrade.
pub type ClientSocket = WebSocketStream<InflatingIo<TokioIo<Upgraded>>>;

/// A WebSocket upgrade request (the extractor).
pub struct WebSocketUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    requested_protocols: Vec<HeaderValue>,
    deflate_offer: Option<permessage_deflate::Agreement>,
    protocol: Option<HeaderValue>,
}

/// The socket options of an upgrade: tungstenite's limits, and whether
/// permessage-deflate may be accepted.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// tungstenite's buffers and limits.
    pub config: WebSocketConfig,
    /// Largest message, also the bound on an inflated message.
    pub max_message_size: usize,
    /// Accept permessage-deflate if the client offers it.
    pub compression: bool,
}

/// Why a request is not a WebSocket upgrade, with axum's statuses for each.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRejection {
    /// Not a GET.
    #[error("WebSocket upgrades must use GET")]
    MethodNotGet,
    /// `Connection` lacks `upgrade`, or `Upgrade` is not `websocket`.
    #[error("not a WebSocket upgrade request (Connection/Upgrade headers)")]
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("Sec-WebSocket-Version must be 13")]
    WrongVersion,
    /// No `Sec-WebSocket-Key`.
    #[error("Sec-WebSocket-Key is missing")]
    KeyMissing,
    /// The connection cannot be upgraded (hyper gave no upgrade handle).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        // The API's error shape, as every other refusal before the upgrade.
        let body =
            serde_json::json!({"error": {"code": "bad_request", "message": self.to_string()}});
        (status, axum::Json(body)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(UpgradeRejection::NotAnUpgrade);
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(UpgradeRejection::WrongVersion);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRejection::KeyMissing)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        let requested_protocols = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .filter_map(|protocol| HeaderValue::from_bytes(protocol.trim_ascii()).ok())
            .collect();
        let deflate_offer = permessage_deflate::negotiate(
            parts
                .headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        Ok(Self {
            key,
            on_upgrade,
            requested_protocols,
            deflate_offer,
            protocol: None,
        })
    }
}

impl WebSocketUpgrade {
    /// Selects the first of `protocols` the client asked for, if any.
    pub fn protocols(mut self, protocols: impl IntoIterator<Item = &'static str>) -> Self {
        self.protocol = protocols.into_iter().find_map(|protocol| {
            self.requested_protocols
                .iter()
                .find(|requested| {
                    requested
                        .as_bytes()
                        .eq_ignore_ascii_case(protocol.as_bytes())
                })
                .cloned()
        });
        self
    }

    /// Answers 101 and, once hyper hands the connection over, calls
    /// `callback` with the socket and whether the server may send compressed
    /// messages on it (permessage-deflate negotiated, with a window the shared
    /// compressed frames fit), in a task of its own.
    pub fn on_upgrade<C, F>(self, options: SocketOptions, callback: C) -> Response
    where
        C: FnOnce(ClientSocket, bool) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let agreement = self.deflate_offer.filter(|_| options.compression);
        let inflate = agreement.is_some();
        let deflate = agreement.is_some_and(|a| a.compresses_outgoing());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "websocket upgrade failed");
                    return;
                }
            };
            let io = InflatingIo::new(
                TokioIo::new(upgraded),
                inflate.then_some(options.max_message_size),
            );
            let socket =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(options.config)).await;
            callback(socket, deflate).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if let Some(answer) = agreement.and_then(|a| HeaderValue::from_str(&a.response()).ok()) {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
        }
        response
    }
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
