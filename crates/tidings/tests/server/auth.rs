//! Each token transport, and the tokens that must be refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Tries a header-token upgrade; returns the HTTP status and JSON body of a refusal.
async fn refused_status(server: &TestServer, token: &str) -> (u16, Value) {
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("token was accepted"),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn token_in_header_query_and_first_message() {
    let server = TestServer::start().await;
    let token = token("u1", &["acme"], &[]);

    let header = server.connect(&token).await;
    assert_eq!(header.connected.as_ref().unwrap()["user"], "u1");

    let url = format!("{}?token={token}", server.ws_url());
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut query = Client::from_stream(ws).await;
    let connected = query.expect("connected").await;
    assert_eq!(connected["user"], "u1");
    assert_eq!(connected["version"], "1");
    assert_eq!(connected["heartbeat"], 25000);
    assert!(connected["expires_at"].as_str().unwrap().ends_with('Z'));

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut first = Client::from_stream(ws).await;
    first.send(json!({"type": "auth", "token": token})).await;
    let connected = first.expect("connected").await;
    assert_eq!(connected["user"], "u1");
    assert!(connected.get("id").is_none(), "{connected}");
    assert!(header.connected.as_ref().unwrap().get("id").is_none());
    assert_eq!(server.metric("tidings_connections").await, 3.0);

    // `connected` answers the auth message, so it echoes the message's id.
    for id in [json!(7), json!("a-1")] {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .unwrap();
        let mut with_id = Client::from_stream(ws).await;
        with_id
            .send(json!({"type": "auth", "id": id, "token": token}))
            .await;
        let connected = with_id.expect("connected").await;
        assert_eq!(connected["id"], id, "{connected}");
        assert_eq!(connected["user"], "u1");
    }
}

#[tokio::test]
async fn subprotocol_is_selected_when_offered() {
    let server = TestServer::start().await;
    let mut request = format!("{}?token={}", server.ws_url(), token("u1", &[], &[]))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "tidings.v1".parse().unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "tidings.v1");
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let t = now();
    let cases = [
        (
            "expired",
            hs256(json!({"sub": "u1", "exp": t - 3600}), SECRET),
        ),
        (
            "not yet valid",
            hs256(
                json!({"sub": "u1", "exp": t + 3600, "nbf": t + 3600}),
                SECRET,
            ),
        ),
        (
            "wrong key",
            hs256(
                json!({"sub": "u1", "exp": t + 3600}),
                "another-secret-another-secret-another",
            ),
        ),
        ("no sub", hs256(json!({"exp": t + 3600}), SECRET)),
        ("no exp", hs256(json!({"sub": "u1"}), SECRET)),
        ("garbage", "not.a.jwt".to_owned()),
        ("alg none", {
            use base64_url as b64;
            format!(
                "{}.{}.",
                b64::encode(r#"{"alg":"none","typ":"JWT"}"#),
                b64::encode(&json!({"sub":"u1","exp":t+3600}).to_string())
            )
        }),
    ];
    for (name, token) in cases {
        let (status, body) = refused_status(&server, &token).await;
        assert_eq!(status, 401, "{name}");
        // Only expiry has a code of its own: the client may get a fresh token.
        let code = if name == "expired" {
            "token_expired"
        } else {
            "unauthorized"
        };
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(server.metric("tidings_auth_failures_total").await >= 7.0);
    assert_eq!(server.metric("tidings_connections").await, 0.0);
}

/// Minimal base64url without padding, so the test does not trust the library it tests.
mod base64_url {
    pub fn encode(input: &str) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = input.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn rsa_server_refuses_hmac_signed_with_its_public_key() {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tidings-auth/tests/fixtures"
    );
    let mut config = base_config();
    config.jwt.secret = None;
    config.jwt.public_key_file = Some(format!("{fixtures}/rsa_public.pem").into());
    let server = TestServer::with_config(config).await;
    let claims = json!({"sub": "u1", "exp": now() + 3600});

    let private = std::fs::read(format!("{fixtures}/rsa_private.pem")).unwrap();
    let good = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    server.connect(&good).await;

    let public = std::fs::read(format!("{fixtures}/rsa_public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let (status, _) = refused_status(&server, &confused).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_first_message_token_gets_error_and_4500() {
    let server = TestServer::start().await;
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut client = Client::from_stream(ws).await;
    client
        .send(json!({"type": "auth", "id": 1, "token": "bad.token.here"}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["id"], 1);
    let closed = client.closed(WAIT).await;
    assert_eq!(closed.code, 4500);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
}

#[tokio::test]
async fn expired_first_message_token_says_token_expired() {
    let server = TestServer::start().await;
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut client = Client::from_stream(ws).await;
    let expired = hs256(json!({"sub": "u1", "exp": now() - 3600}), SECRET);
    client.send(json!({"type": "auth", "token": expired})).await;
    assert_eq!(client.expect("error").await["code"], "token_expired");
    assert_eq!(client.closed(WAIT).await.code, 4500);
}

#[tokio::test]
async fn silent_unauthenticated_socket_is_closed_after_auth_timeout() {
    let mut config = base_config();
    config.connection.auth_timeout = Duration::from_millis(300);
    let server = TestServer::with_config(config).await;
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut client = Client::from_stream(ws).await;
    let started = std::time::Instant::now();
    assert_eq!(client.closed(WAIT).await.code, 4500);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Nothing is left behind.
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let (_sink, mut stream) = ws.split();
    assert!(tokio::time::timeout(WAIT, stream.next()).await.is_ok());
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let mut config = base_config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::with_config(config).await;
    let token = token("u1", &[], &[]);
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.example.com", false),
    ] {
        let mut request = format!("{}?token={token}", server.ws_url())
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let result = tokio_tungstenite::connect_async(request).await;
        match (allowed, result) {
            (true, Ok(_)) => {}
            (false, Err(WsError::Http(response))) => assert_eq!(response.status().as_u16(), 403),
            (allowed, other) => panic!("{origin} (allowed: {allowed}): {:?}", other.map(|_| ())),
        }
    }
}

/// An `Authorization: Bearer` header is a token source even when its token is
/// empty or not text: it is checked (a malformed token), with no fallback to
/// `?token=`; another scheme is not a token source.
#[tokio::test]
async fn an_empty_or_unreadable_bearer_header_is_a_malformed_token() {
    use reqwest::header::{HeaderValue, AUTHORIZATION};
    let server = TestServer::start().await;
    let good = token("u1", &["acme"], &[]);
    let http = reqwest::Client::new();
    for (value, expected) in [
        (&b"Bearer "[..], 401),
        (b"Bearer \xff\xfe", 401),
        (b"Basic dTE6cA==", 200),
    ] {
        for path in ["/events", "/request"] {
            let request = if path == "/events" {
                http.get(server.url(&format!("/events?token={good}")))
            } else {
                http.post(server.url(&format!("/request?token={good}")))
                    .body(r#"{"type":"presence","channel":"workspace:acme"}"#)
            };
            let response = request
                .header(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if expected == 401 {
                assert_eq!(status, 401, "{path} {value:?}: {body}");
                // /request answers in the WebSocket error form.
                let message = if path == "/events" {
                    &body["error"]["message"]
                } else {
                    &body["message"]
                };
                assert_eq!(message, "token is malformed", "{body}");
            } else {
                assert_ne!(status, 401, "{path} {value:?}: {body}");
            }
        }
    }
    // The same on /ws, before the upgrade.
    let mut request = format!("{}?token={good}", server.ws_url())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
        }
        other => panic!("connected: {:?}", other.map(|_| ())),
    }
}

/// An SSE `Last-Event-ID` header that is not text is refused like an
/// unreadable `?last_event_id=`.
#[tokio::test]
async fn an_unreadable_last_event_id_header_is_refused() {
    use reqwest::header::HeaderValue;
    let server = TestServer::start().await;
    let good = token("u1", &["acme"], &[]);
    let response = reqwest::Client::new()
        .get(server.url(&format!("/sse?channel=workspace:acme&token={good}")))
        .header(
            "last-event-id",
            HeaderValue::from_bytes(b"1;workspace:acme:e,\xff,1").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
}

/// An `exp` past the year 9999 (up to 2^64 - 1) is read as its last second:
/// the server panicked adding it to a clock reading (the connection dropped
/// without a word, and its slot and presence stayed taken), and wrote such
/// an expiry as 1970.
#[tokio::test]
async fn an_expiry_beyond_the_year_9999_is_read_as_its_last_second() {
    let server = TestServer::start().await;
    for exp in [json!(u64::MAX), json!(253_402_300_800u64), json!(1e19)] {
        let far = hs256(
            json!({"sub": "u-far", "exp": exp, "workspaces": ["acme"]}),
            SECRET,
        );
        let mut client = server.connect(&far).await;
        let connected = client.connected.clone().unwrap_or_default();
        assert_eq!(connected["expires_at"], "9999-12-31T23:59:59.000Z", "{exp}");
        client.subscribe("workspace:acme").await;
        let refreshed = client
            .request(json!({"type": "refresh", "token": far}), 1)
            .await;
        assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
        assert_eq!(refreshed["expires_at"], "9999-12-31T23:59:59.000Z");
        let poll = server
            .http
            .get(server.url("/events?channel=workspace:acme"))
            .bearer_auth(&far)
            .send()
            .await
            .unwrap();
        assert_eq!(poll.status().as_u16(), 200, "{exp}");
        let sse = server
            .http
            .get(server.url("/sse?channel=workspace:acme"))
            .bearer_auth(&far)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status().as_u16(), 200, "{exp}");
        drop(sse);
        drop(client);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metric("tidings_connections").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
