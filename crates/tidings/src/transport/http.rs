//! HTTP pieces every transport shares: JSON error bodies, tokens, origins, CORS,
//! per-user request budgets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dashmap::DashMap;
use serde_json::json;
use tidings_auth::{Identity, TokenError};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::request_quota;
use crate::config::ConnectionSettings;
use crate::protocol::ErrorCode;
use crate::server::ServerState;

/// The header naming an SSE stream's connection id (sent with the stream,
/// accepted by `POST /request`).
pub const CLIENT_HEADER: &str = "x-tidings-client";

/// An HTTP error with the contract's body `{"error":{"code","message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The conventional HTTP status for the code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::UnknownChannel => StatusCode::NOT_FOUND,
            ErrorCode::AlreadySubscribed | ErrorCode::NotSubscribed => StatusCode::CONFLICT,
            ErrorCode::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotAvailable => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::EngineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The message of a 500 `internal`: what failed is logged, not sent.
pub const INTERNAL_ERROR: &str = "internal server error";

/// The answer to a request whose handler panicked (the server's catch-panic
/// layer): 500 `internal`. The panic message went to the panic hook, not here:
/// it may hold request data.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked; answered 500");
    ApiError::new(ErrorCode::Internal, INTERNAL_ERROR).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        (self.status(), Json(body)).into_response()
    }
}

/// The token of an `Authorization: Bearer …` header. A Bearer header whose
/// token is empty or not text is present all the same, as `""` (a malformed
/// token): the first token source present is the one checked, with no
/// fallback to the next. Another scheme (`Basic`) is no token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    bearer_bytes(headers).map(|token| std::str::from_utf8(token).unwrap_or(""))
}

/// The bytes after `Bearer ` in the `Authorization` header, without the
/// surrounding spaces; `None` without one or with another scheme.
pub fn bearer_bytes(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = match value.iter().position(|&b| b == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, &[][..]),
    };
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Whether the request's `Content-Length` already says its body is longer
/// than `limit`: refused before reading, rather than after `limit` bytes (or
/// after `request_timeout`, for a client that declares more than it sends).
pub fn declares_more_than(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > limit as u64)
}

/// The first of `names` given twice in the query string `raw`. A parameter
/// given twice is a 400 on every transport, not one of the two, and is found
/// before the query is parsed (whose error would name the first value that
/// does not parse instead).
pub fn repeated_parameter(raw: &str, names: &[&'static str]) -> Option<&'static str> {
    let mut seen = Vec::with_capacity(names.len());
    form_urlencoded::parse(raw.as_bytes()).find_map(|(key, _)| {
        let name = *names.iter().find(|name| **name == key)?;
        if seen.contains(&name) {
            Some(name)
        } else {
            seen.push(name);
            None
        }
    })
}

/// The 400 for a parameter given twice.
pub fn given_twice(name: &str) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("`{name}` given twice"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Checks the origin and verifies the client token of a plain HTTP transport
/// request (SSE, polling, `/request`): `Authorization: Bearer`, then `?token=`,
/// then the token cookie.
pub fn authenticate_client(
    state: &ServerState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, ApiError> {
    let allowed = &state.config.allowed_origins;
    check_origin(allowed, headers)?;
    let token = match bearer_token(headers).or(query_token) {
        Some(token) => token,
        None => {
            let token =
                cookie(headers, &state.config.transports.token_cookie).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Unauthorized,
                        "no token: send Authorization: Bearer <jwt>, ?token= or the token cookie",
                    )
                })?;
            if !cookie_origin_allowed(allowed, headers) {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    "the token cookie is not taken from this origin: list it in allowed_origins",
                ));
            }
            token
        }
    };
    match state.verifier.verify(token) {
        Ok(mut identity) => {
            state.access.retain_read_claims(&mut identity);
            Ok(identity)
        }
        Err(err) => {
            state.metrics.auth_failed();
            tracing::info!(reason = %err, "client token refused");
            Err(token_refused(&err))
        }
    }
}

/// The 401 for a client token that failed verification: `token_expired`
/// when it only expired (the client may get a fresh one), else `unauthorized`.
pub fn token_refused(err: &TokenError) -> ApiError {
    let code = if err.is_expired() {
        ErrorCode::TokenExpired
    } else {
        ErrorCode::Unauthorized
    };
    ApiError::new(code, err.to_string())
}

/// CORS for the browser-facing HTTP transports: the allowed origins (any when
/// none are configured), with credentials so the token cookie works.
pub fn client_cors(allowed: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = allowed
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow_origin = if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins)
    };
    let client = HeaderName::from_static(CLIENT_HEADER);
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            client.clone(),
        ])
        .expose_headers([client])
        .max_age(std::time::Duration::from_secs(600))
}

/// How often (in requests) idle users are dropped from the rate limiter.
const RETAIN_EVERY: u64 = 1024;

/// Per-user request budgets for the HTTP client transports (`POST /request`,
/// `GET /events`), as a WebSocket connection has its own, and the number of
/// long polls a user may hold open at once.
pub struct UserRequestLimits {
    limiter: Option<governor::DefaultKeyedRateLimiter<Arc<str>>>,
    seen: AtomicU64,
    /// Long polls waiting, per user with at least one.
    waiting: DashMap<Arc<str>, usize>,
    /// Each waiting poll holds a hub subscription, so it counts like a
    /// connection: at most `max_connections_per_user` per user.
    max_waiting: usize,
}

impl std::fmt::Debug for UserRequestLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserRequestLimits")
    }
}

impl UserRequestLimits {
    /// Budgets of `requests_per_second` with `request_burst` per user.
    pub fn new(settings: &ConnectionSettings) -> Self {
        Self {
            limiter: request_quota(settings).map(governor::RateLimiter::keyed),
            seen: AtomicU64::new(0),
            waiting: DashMap::new(),
            max_waiting: settings.max_connections_per_user,
        }
    }

    /// Takes one of `user`'s long-poll slots; `false` when all are in use.
    /// Give it back with [`Self::end_wait`].
    pub fn begin_wait(&self, user: &Arc<str>) -> bool {
        let mut waiting = self.waiting.entry(user.clone()).or_insert(0);
        if *waiting >= self.max_waiting {
            return false;
        }
        *waiting += 1;
        true
    }

    /// Gives back a slot taken by [`Self::begin_wait`].
    pub fn end_wait(&self, user: &Arc<str>) {
        if let Some(mut waiting) = self.waiting.get_mut(user) {
            *waiting = waiting.saturating_sub(1);
        }
        self.waiting.remove_if(user, |_, waiting| *waiting == 0);
    }

    /// Whether `user` may make one more request now.
    pub fn admit(&self, user: &Arc<str>) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if self.seen.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(user).is_ok()
    }
}

/// Refuses a browser request from an origin not in `allowed` (empty allows all).
pub fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Non-browser clients send no Origin; the token still guards them.
        return Ok(());
    };
    // An Origin that is not text matches no listed one: refused, not absent.
    let origin = origin.to_str().ok();
    match origin {
        _ if allowed.iter().any(|a| a == "*") => Ok(()),
        Some(origin) if allowed.iter().any(|a| a == origin) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "origin not allowed",
        )),
    }
}

/// Whether a token cookie may be taken from this request. A browser sends
/// the cookie whatever page makes the request, so a page of another site
/// could read the user's events with it: a cookie is taken from the server's
/// own origin (the `Origin` names the host the request was sent to: `Host`, or
/// `X-Forwarded-Host` set by a proxy, default ports aside), from an origin
/// listed by name in `allowed_origins` (`"*"` does not list any), or from a
/// request without `Origin` that a browser does not mark as cross-site
/// (`Sec-Fetch-Site`: an `<img>` or `<iframe>` of another site sends none).
fn cookie_origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
        return !matches!(fetch_site, Some(b"cross-site" | b"same-site"));
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let origin_host = without_default_port(scheme, authority);
    // A browser cannot set either header on a cross-origin request (CORS
    // allows neither): they come from the client's proxy or the client.
    [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .any(|host| without_default_port(scheme, host.trim()).eq_ignore_ascii_case(origin_host))
}

/// `host[:port]` without the scheme's default port (`:443` for https, `:80`
/// for http), as browsers write an `Origin`.
fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    crate::config::default_port(scheme)
        .and_then(|port| authority.strip_suffix(port))
        .unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cookie_is_taken_from_the_servers_own_or_a_listed_origin() {
        let check = |allowed: &[&str], pairs: &[(&'static str, &'static str)]| {
            let allowed: Vec<String> = allowed.iter().map(|a| (*a).to_owned()).collect();
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            cookie_origin_allowed(&allowed, &headers)
        };
        let app = "https://app.example.com";
        // Not a browser, or a browser's own navigation.
        assert!(check(&[], &[]));
        assert!(check(&[], &[("sec-fetch-site", "same-origin")]));
        assert!(check(&[], &[("sec-fetch-site", "none")]));
        // An <img> or <iframe> of another site: no Origin, but marked.
        assert!(!check(&[], &[("sec-fetch-site", "cross-site")]));
        assert!(!check(&[], &[("sec-fetch-site", "same-site")]));
        // The server's own origin, default ports and letter case aside.
        for host in ["app.example.com", "app.example.com:443", "APP.example.com"] {
            assert!(check(&[], &[("origin", app), ("host", host)]), "{host}");
        }
        assert!(check(
            &[],
            &[
                ("origin", "http://app.example.com:80"),
                ("host", "app.example.com")
            ]
        ));
        assert!(!check(
            &[],
            &[("origin", app), ("host", "app.example.com:8443")]
        ));
        // Behind a proxy that sends its upstream's address as Host.
        let proxied = [
            ("origin", app),
            ("host", "127.0.0.1:8000"),
            ("x-forwarded-host", "app.example.com"),
        ];
        assert!(check(&[], &proxied));
        assert!(!check(&[], &[("origin", app), ("host", "127.0.0.1:8000")]));
        // Another origin: only when listed by name, not by "*".
        let evil = [
            ("origin", "https://evil.example"),
            ("host", "app.example.com"),
        ];
        assert!(!check(&[], &evil));
        assert!(!check(&["*"], &evil));
        assert!(check(&["https://evil.example"], &evil));
        assert!(!check(
            &["*"],
            &[("origin", "null"), ("host", "app.example.com")]
        ));
        assert!(check(
            &["null"],
            &[("origin", "null"), ("host", "app.example.com")]
        ));
        assert!(!check(&[], &[("origin", app)]), "no Host");
    }

    #[test]
    fn origins_outside_the_list_are_refused() {
        let allowed = ["https://app.example.com".to_owned()];
        let mut h = HeaderMap::new();
        assert!(
            check_origin(&allowed, &h).is_ok(),
            "no Origin: not a browser"
        );
        h.insert(header::ORIGIN, "https://app.example.com".parse().unwrap());
        assert!(check_origin(&allowed, &h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_origin(&allowed, &h).is_err());
        let not_text = HeaderValue::from_bytes(b"https://app.example.com\xff").unwrap();
        h.insert(header::ORIGIN, not_text);
        assert!(check_origin(&allowed, &h).is_err());
        assert!(check_origin(&["*".to_owned()], &h).is_ok());
        assert!(check_origin(&[], &h).is_ok());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        for present_but_malformed in [&b"Bearer "[..], b"Bearer", b"bearer \xff\xfe"] {
            h.insert(
                header::AUTHORIZATION,
                header::HeaderValue::from_bytes(present_but_malformed).unwrap(),
            );
            assert_eq!(bearer_token(&h), Some(""));
        }
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie(&h, "t"), None);
        h.append(header::COOKIE, "a=1; t=jwt.x.y ;b=2".parse().unwrap());
        assert_eq!(cookie(&h, "t"), Some("jwt.x.y"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "tt"), None);
        h.append(header::COOKIE, "c=\"q\"".parse().unwrap());
        assert_eq!(cookie(&h, "c"), Some("q"));
    }
}
