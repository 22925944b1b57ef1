//! SSE (`/sse`), HTTP polling (`/events`), client requests over HTTP
//! (`/request`) and `GET /api/history`, over real HTTP connections.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::config::{Config, NamespaceConfig, Rule};

use crate::support::*;

/// One SSE message.
#[derive(Debug, Clone)]
pub(crate) struct SseMessage {
    id: Option<String>,
    event: String,
    data: String,
}

impl SseMessage {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// A streaming `GET /sse` read with a small WHATWG-style parser.
pub(crate) struct SseStream {
    response: reqwest::Response,
    buffer: String,
    comments: usize,
    pub(crate) ended: bool,
    last_id: Option<String>,
}

impl SseStream {
    pub(crate) async fn open(server: &TestServer, query: &str, token: &str) -> Self {
        Self::open_with(server, query, |r| r.bearer_auth(token)).await
    }

    async fn open_with(
        server: &TestServer,
        query: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Self {
        let request = server.http.get(server.url(&format!("/sse?{query}")));
        let response = build(request).send().await.unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "content type"
        );
        Self {
            response,
            buffer: String::new(),
            comments: 0,
            ended: false,
            last_id: None,
        }
    }

    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut message = SseMessage {
                id: None,
                event: "message".into(),
                data: String::new(),
            };
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => message.id = Some(value.to_owned()),
                    "event" => message.event = value.to_owned(),
                    "data" => data.push(value.to_owned()),
                    _ => {}
                }
            }
            if message.id.is_some() {
                self.last_id = message.id.clone();
            }
            if !data.is_empty() {
                message.data = data.join("\n");
                return Some(message);
            }
        }
    }

    /// Waits for `disconnect` 4000 with `reconnect: true`, then the end of
    /// the body: the stream cannot subscribe again by itself.
    async fn expect_reconnect_end(&mut self) {
        let disconnect = self.expect("disconnect").await.json();
        assert_eq!(
            (
                disconnect["code"].as_u64(),
                disconnect["reconnect"].as_bool()
            ),
            (Some(4000), Some(true)),
            "{disconnect}"
        );
        assert!(
            self.next(Duration::from_secs(2)).await.is_none(),
            "the body ends"
        );
    }

    /// The next message, or `None` if the stream ends or `wait` passes.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(message) = self.take_message() {
                return Some(message);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(_) => self.ended = true,
            }
        }
    }

    pub(crate) async fn expect(&mut self, event: &str) -> SseMessage {
        let message = self
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no `{event}` message"));
        assert_eq!(message.event, event, "{message:?}");
        message
    }

    /// Application events until `quiet` passes without one.
    async fn drain_events(&mut self, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(message) = self.next(quiet).await {
            let value = message.json();
            if value["type"] == "event" {
                events.push(value);
            }
        }
        events
    }
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

fn chat_config() -> Config {
    let mut config = base_config();
    let anyone = vec![Rule::default()];
    config.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            subscribe: anyone.clone(),
            publish: anyone.clone(),
            presence: anyone.clone(),
            history: anyone,
            ..NamespaceConfig::default()
        },
    );
    config
}

#[tokio::test]
async fn sse_streams_connected_subscribed_errors_and_events() {
    let server = TestServer::start().await;
    server.publish("workspace:acme", "before", json!(1)).await;
    let token = token("u1", &["acme"], &[]);
    let mut stream = SseStream::open(
        &server,
        "channel=workspace:acme&channel=user:u1&channel=workspace:globex",
        &token,
    )
    .await;
    let client_header = stream.response.headers()["x-tidings-client"]
        .to_str()
        .unwrap()
        .to_owned();
    let connected = stream.expect("connected").await.json();
    assert_eq!(connected["client"], client_header.as_str());
    assert_eq!(connected["user"], "u1");
    let acme = stream.expect("subscribed").await;
    assert_eq!(acme.json()["channel"], "workspace:acme");
    assert_eq!(acme.json()["offset"], 1);
    assert!(acme.json().get("recovered").is_none());
    assert!(acme.id.is_some(), "subscribed carries a resume token");
    assert_eq!(
        stream.expect("subscribed").await.json()["channel"],
        "user:u1"
    );
    let refused = stream.expect("error").await.json();
    assert_eq!(refused["channel"], "workspace:globex");
    assert_eq!(refused["code"], "permission_denied");

    // The same bytes a WebSocket client gets, under the event's name.
    let mut ws = server.connect_user("u2", &["acme"]).await;
    ws.subscribe("workspace:acme").await;
    server
        .publish(
            "workspace:acme",
            "applications.updated",
            json!({"id": "a1"}),
        )
        .await;
    let message = stream.expect("applications.updated").await;
    let over_ws = ws.expect("event").await;
    assert_eq!(message.json(), over_ws);
    assert_eq!(message.json()["offset"], 2);
    server.publish("user:u1", "note", json!("hi")).await;
    assert_eq!(stream.expect("note").await.json()["channel"], "user:u1");
    assert_eq!(server.metric("tidings_sse_streams").await, 1.0);

    drop(stream);
    let deadline = Instant::now() + WAIT;
    while server.metric("tidings_sse_streams").await > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("tidings_sse_streams").await, 0.0);
    assert_eq!(
        server.metric("tidings_connections").await,
        1.0,
        "only ws left"
    );
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_with_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let token = token("u1", &["acme"], &[]);
    let mut stream =
        SseStream::open(&server, "channel=workspace:acme&channel=user:u1", &token).await;
    stream.expect("connected").await;
    stream.expect("subscribed").await;
    stream.expect("subscribed").await;
    for i in 1..=2 {
        server.publish("workspace:acme", "seen", json!(i)).await;
        stream.expect("seen").await;
    }
    server.publish("user:u1", "seen", json!(0)).await;
    stream.expect("seen").await;
    let last_id = stream.last_id.clone().unwrap();
    drop(stream);

    for i in 3..=5 {
        server.publish("workspace:acme", "missed", json!(i)).await;
    }
    server.publish("user:u1", "missed", json!(0)).await;
    // The header a browser's EventSource sends on its own reconnect.
    let mut again = SseStream::open_with(&server, "channel=workspace:acme&channel=user:u1", |r| {
        r.bearer_auth(&token).header("Last-Event-ID", &last_id)
    })
    .await;
    again.expect("connected").await;
    let acme = again.expect("subscribed").await.json();
    assert_eq!(acme["recovered"], true, "{acme}");
    let replay: Vec<Value> = [
        again.expect("missed").await,
        again.expect("missed").await,
        again.expect("missed").await,
    ]
    .iter()
    .map(SseMessage::json)
    .collect();
    assert_eq!(offsets(&replay), [3, 4, 5]);
    let user = again.expect("subscribed").await.json();
    assert_eq!(user["recovered"], true);
    assert_eq!(again.expect("missed").await.json()["channel"], "user:u1");
    server.publish("workspace:acme", "live", json!(6)).await;
    let live = again.drain_events(Duration::from_millis(300)).await;
    assert_eq!(offsets(&live), [6], "nothing replayed twice");

    // The same token as a query parameter, after more events: only those.
    let resume = again.last_id.clone().unwrap();
    drop(again);
    server.publish("workspace:acme", "later", json!(7)).await;
    let query = format!(
        "channel=workspace:acme&last_event_id={}",
        urlencode(&resume)
    );
    let mut third = SseStream::open(&server, &query, &token).await;
    third.expect("connected").await;
    assert_eq!(third.expect("subscribed").await.json()["recovered"], true);
    let events = third.drain_events(Duration::from_millis(300)).await;
    assert_eq!(offsets(&events), [7]);

    // An empty `last_event_id=` (a polyfill that always appends it) is no
    // query: the header still resumes.
    let resume = third.last_id.clone().unwrap();
    drop(third);
    server.publish("workspace:acme", "later", json!(8)).await;
    let mut fourth = SseStream::open_with(&server, "channel=workspace:acme&last_event_id=", |r| {
        r.bearer_auth(&token).header("Last-Event-ID", &resume)
    })
    .await;
    fourth.expect("connected").await;
    assert_eq!(fourth.expect("subscribed").await.json()["recovered"], true);
    let events = fourth.drain_events(Duration::from_millis(300)).await;
    assert_eq!(offsets(&events), [8]);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn sse_says_unrecoverable_for_another_epoch_or_a_gap() {
    let mut config = base_config();
    config.namespaces.insert(
        "feed".into(),
        NamespaceConfig {
            subscribe: vec![Rule::default()],
            history_size: 3,
            ..NamespaceConfig::default()
        },
    );
    let server = TestServer::with_config(config).await;
    let token = token("u1", &[], &[]);
    let mut stream = SseStream::open(&server, "channel=feed:a", &token).await;
    stream.expect("connected").await;
    let epoch = stream.expect("subscribed").await.json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(stream);
    for i in 1..=10 {
        server.publish("feed:a", "tick", json!(i)).await;
    }
    for (token_text, reason) in [
        (format!("1;feed:a,{epoch},2"), "history_gone"),
        ("1;feed:a,OTHEREPOCH,2".to_owned(), "epoch_changed"),
        (format!("1;feed:a,{epoch},99"), "offset_ahead"),
    ] {
        let query = format!("channel=feed:a&last_event_id={}", urlencode(&token_text));
        let mut stream = SseStream::open(&server, &query, &token).await;
        stream.expect("connected").await;
        let notice = stream.expect("unrecoverable").await.json();
        assert_eq!(notice["channel"], "feed:a");
        assert_eq!(notice["reason"], reason);
        assert_eq!(notice["offset"], 10);
        let subscribed = stream.expect("subscribed").await.json();
        assert_eq!(subscribed["recovered"], false);
        assert!(
            stream
                .drain_events(Duration::from_millis(200))
                .await
                .is_empty(),
            "never a partial replay"
        );
    }
    let metrics = server.metrics().await;
    for reason in ["history_gone", "epoch_changed", "offset_ahead"] {
        let line = format!(r#"tidings_recoveries_total{{result="failed",reason="{reason}"}} 1"#);
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn sse_keeps_alive_and_ends_with_disconnect() {
    let mut config = base_config();
    config.connection.heartbeat = Duration::from_millis(150);
    let server = TestServer::with_config(config).await;
    let short = token_with_ttl("u1", &["acme"], &[], Duration::from_secs(2));
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &short).await;
    stream.expect("connected").await;
    stream.expect("subscribed").await;
    // Comments are not messages: the stream stays quiet but alive.
    assert!(stream.next(Duration::from_millis(600)).await.is_none());
    assert!(stream.comments >= 2, "keep-alives: {}", stream.comments);
    let expired = stream
        .next(Duration::from_secs(4))
        .await
        .expect("disconnect at expiry");
    assert_eq!(expired.event, "disconnect");
    assert_eq!(expired.json()["code"], 4003);
    assert_eq!(expired.json()["reconnect"], true);
    assert!(stream.next(Duration::from_secs(1)).await.is_none());
    assert!(stream.ended, "the body ends after disconnect");

    let token = token("u2", &["acme"], &[]);
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &token).await;
    stream.expect("connected").await;
    stream.expect("subscribed").await;
    let (status, body) = server
        .api("/api/disconnect", json!({"user": "u2", "code": 4502}))
        .await;
    assert_eq!((status, &body["disconnected"]), (200, &json!(1)));
    let notice = stream.expect("disconnect").await.json();
    assert_eq!(notice["code"], 4502);
    assert_eq!(notice["reconnect"], false);
}

#[tokio::test]
async fn sse_refuses_bad_requests_before_the_stream() {
    let mut config = base_config();
    config.connection.max_channels = 2;
    let server = TestServer::with_config(config).await;
    let token = token("u1", &["acme"], &[]);
    let get = |query: &str| server.http.get(server.url(&format!("/sse?{query}")));
    let cases = [
        (get("").bearer_auth(&token), 400),
        (get("channel=bad%20name").bearer_auth(&token), 400),
        (
            get("channel=user:u1&channel=workspace:acme&channel=workspace:acme:x")
                .bearer_auth(&token),
            400,
        ),
        (
            get("channel=user:u1&last_event_id=garbage").bearer_auth(&token),
            400,
        ),
        (get("channel=user:u1"), 401),
        (get("channel=user:u1").bearer_auth("not-a-jwt"), 401),
    ];
    for (request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    // Token by query and by cookie.
    let mut by_query =
        SseStream::open_with(&server, &format!("channel=user:u1&token={token}"), |r| r).await;
    assert_eq!(by_query.expect("connected").await.json()["user"], "u1");
    let mut by_cookie = SseStream::open_with(&server, "channel=user:u1", |r| {
        r.header("cookie", format!("theme=dark; tidings_token={token}"))
    })
    .await;
    assert_eq!(by_cookie.expect("connected").await.json()["user"], "u1");
}

/// The token cookie is sent by the browser whatever page makes the request:
/// it is taken from a page of the server's own origin, or of one listed in
/// `allowed_origins`, not from any origin (as a header token is when the list
/// is empty).
#[tokio::test]
async fn the_token_cookie_is_taken_only_from_the_servers_or_a_listed_origin() {
    let token = token("u1", &["acme"], &[]);
    let cookie = format!("tidings_token={token}");
    for allowed in [vec![], vec!["https://app.example.com".to_owned()]] {
        let mut config = base_config();
        config.allowed_origins = allowed.clone();
        let server = TestServer::with_config(config).await;
        let own = format!("http://{}", server.addr);
        let poll = |origin: &str, auth: Option<&str>| {
            let request = server
                .http
                .get(server.url("/events?channel=workspace:acme"))
                .header("origin", origin);
            match auth {
                Some(token) => request.bearer_auth(token),
                None => request.header("cookie", cookie.as_str()),
            }
            .send()
        };
        let from_elsewhere = poll("https://evil.example", None).await.unwrap();
        assert_eq!(from_elsewhere.status(), 403, "{allowed:?}");
        let body: Value = from_elsewhere.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            if allowed.is_empty() {
                "the token cookie is not taken from this origin: list it in allowed_origins"
            } else {
                "origin not allowed"
            }
        );
        if allowed.is_empty() {
            // The server's own origin (a listed origin otherwise: a list
            // refuses every other origin, the server's own included).
            assert_eq!(poll(&own, None).await.unwrap().status(), 200);
            // A header token is not sent by the browser on its own: any origin.
            let header = poll("https://evil.example", Some(&token)).await.unwrap();
            assert_eq!(header.status(), 200);
        } else {
            let listed = poll("https://app.example.com", None).await.unwrap();
            assert_eq!(listed.status(), 200);
        }
    }
}

#[tokio::test]
async fn head_sse_answers_the_stream_headers_without_opening_a_stream() {
    let server = TestServer::with_config(config_with_workspace(|workspace| {
        workspace.presence_events = true;
    }))
    .await;
    let mut watcher = server.connect_user("w", &["acme"]).await;
    watcher.subscribe("workspace:acme").await;
    assert_eq!(watcher.expect("presence").await["member"]["user"], "w");
    let token = token("u1", &["acme"], &[]);
    let head = |query: &str| server.http.head(server.url(&format!("/sse?{query}")));
    let response = head("channel=workspace:acme")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().get("x-tidings-client").is_none());
    // Checked like GET: a missing token or a bad channel is refused.
    let refused = head("channel=workspace:acme").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused = head("channel=bad%20name").bearer_auth(&token).send().await;
    assert_eq!(refused.unwrap().status(), 400);
    // Nothing was opened: u1 never joined the channel's presence.
    let pushed = watcher.next(Duration::from_millis(300)).await;
    assert_eq!(pushed, None);
}

#[tokio::test]
async fn sse_data_with_line_breaks_arrives_intact() {
    let server = TestServer::start().await;
    let token = token("u1", &["acme"], &[]);
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &token).await;
    stream.expect("connected").await;
    stream.expect("subscribed").await;
    // A backend posting pretty-printed JSON: `data` is kept byte for byte.
    let body = "{\"channel\":\"workspace:acme\",\"event\":\"pretty\",\"data\":{\r\n  \"a\": 1,\n  \"b\": \"x\"\n}}";
    let response = server
        .http
        .post(server.url("/api/publish"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = stream.expect("pretty").await.json();
    assert_eq!(event["data"], json!({"a": 1, "b": "x"}));
}

#[tokio::test]
async fn a_user_holds_at_most_max_connections_per_user_long_polls() {
    let mut config = base_config();
    config.connection.max_connections_per_user = 2;
    let server = TestServer::with_config(config).await;
    let poll = |user: &str, wait: f64| {
        let token = token(user, &["acme"], &[]);
        let server = &server;
        async move {
            server
                .poll(&token, &format!("channel=workspace:acme&wait={wait}"))
                .await
        }
    };
    let held = async { tokio::join!(poll("u1", 10.0), poll("u1", 10.0)) };
    let probe = async {
        // Both of u1's slots are taken once two polls wait.
        let deadline = Instant::now() + WAIT;
        while server.metric("tidings_polls_waiting").await < 2.0 {
            assert!(Instant::now() < deadline, "the two polls never waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let (status, refused) = poll("u1", 10.0).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
        assert_eq!(status, 429);
        assert_eq!(refused["error"]["code"], "rate_limited");
        // Another user is not affected.
        let (status, other) = poll("u2", 0.2).await;
        assert_eq!((status, other["events"].clone()), (200, json!([])));
        server.publish("workspace:acme", "tick", json!(1)).await;
    };
    let (((a, first), (b, second)), ()) = tokio::join!(held, probe);
    assert_eq!((a, b), (200, 200));
    assert_eq!(offsets(first["events"].as_array().unwrap()), [1]);
    assert_eq!(offsets(second["events"].as_array().unwrap()), [1]);
    // The slots are given back when the polls end.
    let (status, _) = poll("u1", 0.1).await;
    assert_eq!(status, 200);
    assert_eq!(server.metric("tidings_polls_waiting").await, 0.0);
}

/// The polling probe leaves `expires_at` out for a token without `exp`, as
/// `connected` does on the other transports.
#[tokio::test]
async fn the_probe_omits_expires_at_for_a_token_without_exp() {
    let mut config = base_config();
    config.jwt.require_exp = false;
    let server = TestServer::with_config(config).await;
    let forever = tidings::auth::mint_hs256(
        SECRET,
        &tidings::auth::MintClaims {
            sub: "u1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let (status, probe) = server.poll(&forever, "").await;
    assert_eq!(status, 200, "{probe}");
    assert!(probe.get("expires_at").is_none(), "{probe}");
    let (_, lapsing) = server.poll(&token("u1", &[], &[]), "").await;
    assert!(
        lapsing["expires_at"].as_str().unwrap().ends_with('Z'),
        "{lapsing}"
    );
}

#[tokio::test]
async fn long_poll_answers_when_an_event_arrives_or_when_wait_ends() {
    let server = TestServer::start().await;
    let token = token("u1", &["acme"], &[]);
    let poll = |query: String| {
        let (server, token) = (&server, &token);
        async move { server.poll(token, &query).await }
    };
    let (status, probe) = poll(String::new()).await;
    assert_eq!((status, &probe["type"]), (200, &json!("connected")));
    assert_eq!(probe["user"], "u1");

    let (_, first) = poll("channel=workspace:acme".into()).await;
    assert_eq!(first["offset"], 0);
    assert!(first.get("recovered").is_none());
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    // Held open until the publish, then answered at once.
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let published_at = Instant::now();
        server.publish("workspace:acme", "tick", json!(1)).await;
        published_at
    };
    let started = Instant::now();
    let ((_, reply), published_at) = tokio::join!(
        poll(format!(
            "channel=workspace:acme&since=0&epoch={epoch}&wait=10"
        )),
        publisher
    );
    let answered = Instant::now();
    assert!(started.elapsed() >= Duration::from_millis(350), "it waited");
    assert!(
        answered.duration_since(published_at) < Duration::from_millis(500),
        "answered {:?} after the publish",
        answered.duration_since(published_at)
    );
    assert_eq!(reply["recovered"], true);
    assert_eq!(offsets(reply["events"].as_array().unwrap()), [1]);
    assert_eq!(reply["offset"], 1);

    // Nothing new: answered empty after `wait`.
    let started = Instant::now();
    let (_, empty) = poll(format!(
        "channel=workspace:acme&since=1&epoch={epoch}&wait=0.6"
    ))
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["offset"], 1);
    assert_eq!(server.metric("tidings_polls_waiting").await, 0.0);

    // Paging with limit.
    for i in 2..=5 {
        server.publish("workspace:acme", "tick", json!(i)).await;
    }
    let (_, page) = poll(format!(
        "channel=workspace:acme&since=1&epoch={epoch}&limit=2"
    ))
    .await;
    assert_eq!(offsets(page["events"].as_array().unwrap()), [2, 3]);
    assert_eq!((&page["offset"], &page["more"]), (&json!(3), &json!(true)));
    let (_, rest) = poll(format!(
        "channel=workspace:acme&since=3&epoch={epoch}&limit=2"
    ))
    .await;
    assert_eq!(offsets(rest["events"].as_array().unwrap()), [4, 5]);
    assert_eq!(rest["more"], false);

    // Another epoch: at once, not recovered, nothing replayed, where to go on.
    let started = Instant::now();
    let (_, lost) = poll("channel=workspace:acme&since=1&epoch=NOPE&wait=10".into()).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(lost["recovered"], false);
    assert_eq!(lost["events"], json!([]));
    assert_eq!(
        (&lost["offset"], &lost["epoch"]),
        (&json!(5), &json!(epoch))
    );

    for (query, status) in [
        ("channel=workspace:acme&since=1", 400),
        ("channel=workspace:acme&since=x&epoch=e", 400),
        ("channel=workspace:acme&limit=0", 400),
        ("channel=workspace:acme&wait=-1", 400),
        ("channel=workspace:globex", 403),
        ("channel=nope:x", 404),
    ] {
        let (got, body) = poll(query.into()).await;
        assert_eq!(got, status, "{query}: {body}");
    }
    assert!(server.metric("tidings_polls_total").await >= 6.0);
}

#[tokio::test]
async fn polling_applies_audience_rules() {
    let server = TestServer::start().await;
    let (_, top) = server
        .poll(&token("u1", &["acme"], &[]), "channel=workspace:acme")
        .await;
    let epoch = top["epoch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "secret", "data": 1, "audience": {"users": ["u2"]}}),
        )
        .await;
    assert_eq!(status, 200);
    // An empty exclude_client names no connection, not every poller.
    let (status, _) = server
        .api(
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "public", "data": 2, "exclude_client": ""}),
        )
        .await;
    assert_eq!(status, 200);
    for (user, expected) in [("u1", vec![2]), ("u2", vec![1, 2])] {
        let query = format!("channel=workspace:acme&since=0&epoch={epoch}");
        let (_, reply) = server.poll(&token(user, &["acme"], &[]), &query).await;
        assert_eq!(
            offsets(reply["events"].as_array().unwrap()),
            expected,
            "{user}"
        );
        assert_eq!(reply["offset"], 2, "{user} moves past what it may not see");
    }
}

/// A refresh through `POST /request` ends the stream's channels the new
/// token no longer allows (an `unsubscribed` message) and applies its roles.
#[tokio::test]
async fn refresh_of_a_stream_with_fewer_rights_ends_its_channels() {
    let server = TestServer::start().await;
    let token = token("u1", &["acme", "globex"], &["admin"]);
    let mut stream = SseStream::open(
        &server,
        "channel=workspace:acme&channel=workspace:globex",
        &token,
    )
    .await;
    let client = stream.expect("connected").await.json()["client"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.expect("subscribed").await;
    stream.expect("subscribed").await;

    let fewer = super::support::token("u1", &["acme"], &[]);
    let refresh = json!({"type": "refresh", "id": 1, "token": fewer});
    let (status, _) = server.http_request(&token, Some(&client), refresh).await;
    assert_eq!(status, 200);
    let revoked = stream.expect("unsubscribed").await.json();
    assert_eq!(
        revoked,
        json!({"type": "unsubscribed", "channel": "workspace:globex", "reason": "permission_denied"})
    );

    server
        .publish("workspace:globex", "globex", json!({}))
        .await;
    let admins_only = json!({"channel": "workspace:acme", "event": "for-admins", "data": 1,
        "audience": {"roles": ["admin"]}});
    assert_eq!(server.api("/api/publish", admins_only).await.0, 200);
    server.publish("workspace:acme", "marker", json!({})).await;
    // SSE names each message after its event: the admins-only one (offset 1)
    // and the revoked channel's never came.
    let event = stream.expect("marker").await.json();
    assert_eq!(event["offset"], 2, "{event}");
}

#[tokio::test]
async fn http_requests_publish_read_and_reach_the_sse_stream() {
    let server = TestServer::with_config(chat_config()).await;
    let token = token("u1", &[], &[]);
    let mut stream = SseStream::open(&server, "channel=chat:room", &token).await;
    let client = stream.expect("connected").await.json()["client"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.expect("subscribed").await;
    let request = |body: Value, client: Option<&str>, token: &str| {
        let (token, client) = (token.to_owned(), client.map(str::to_owned));
        let server = &server;
        async move { server.http_request(&token, client.as_deref(), body).await }
    };

    let (status, published) = request(
        json!({"type": "publish", "id": 1, "channel": "chat:room", "event": "message", "data": {"text": "hi"}}),
        None,
        &token,
    )
    .await;
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["type"], "published");
    assert_eq!(
        (&published["id"], &published["offset"]),
        (&json!(1), &json!(1))
    );
    let event = stream.expect("message").await.json();
    assert_eq!(event["meta"]["actor"], "u1");

    let (_, history) = request(
        json!({"type": "history", "id": "h", "channel": "chat:room"}),
        None,
        &token,
    )
    .await;
    assert_eq!(history["type"], "history");
    assert_eq!(offsets(history["events"].as_array().unwrap()), [1]);

    let (status, pong) = request(json!({"type": "ping", "id": 9}), None, &token).await;
    assert_eq!(
        (status, &pong["type"], &pong["id"]),
        (200, &json!("pong"), &json!(9))
    );

    // Status reaches this stream's presence, and is answered once it has:
    // a listing right after the reply shows it.
    for status_name in ["busy", "away", "online", "busy"] {
        let (status, reply) = request(
            json!({"type": "status", "id": 2, "status": status_name}),
            Some(&client),
            &token,
        )
        .await;
        assert_eq!((status, &reply["status"]), (200, &json!(status_name)));
        let (_, presence) = request(
            json!({"type": "presence", "id": 3, "channel": "chat:room"}),
            None,
            &token,
        )
        .await;
        assert_eq!(
            presence["members"][0]["status"], status_name,
            "applied before the reply: {presence}"
        );
        assert_eq!(presence["members"][0]["clients"][0], client.as_str());
    }

    // Refresh extends the stream's token; another user's token is refused.
    let fresh = token_with_ttl("u1", &[], &[], Duration::from_secs(7200));
    let (status, refreshed) = request(
        json!({"type": "refresh", "id": 4, "token": fresh}),
        Some(&client),
        &token,
    )
    .await;
    assert_eq!((status, &refreshed["type"]), (200, &json!("refreshed")));
    let other = super::support::token("u9", &[], &[]);
    let (status, refused) = request(
        json!({"type": "refresh", "id": 5, "token": other}),
        Some(&client),
        &token,
    )
    .await;
    assert_eq!((status, &refused["code"]), (401, &json!("unauthorized")));

    // Errors: WebSocket-shaped, with an HTTP status.
    let u2 = super::support::token("u2", &[], &[]);
    let cases = [
        (
            json!({"type": "status", "status": "away"}),
            None,
            &token,
            400,
            "bad_request",
        ),
        (
            json!({"type": "status", "status": "away"}),
            Some(client.as_str()),
            &u2,
            400,
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "id": 6, "channel": "chat:room"}),
            None,
            &token,
            400,
            "bad_request",
        ),
        (
            json!({"type": "publish", "id": 7, "channel": "workspace:acme", "event": "x", "data": 1}),
            None,
            &token,
            403,
            "permission_denied",
        ),
        (
            json!({"type": "nope", "id": 8}),
            None,
            &token,
            400,
            "bad_request",
        ),
        (
            json!({"type": "ping"}),
            None,
            &"bad".to_owned(),
            401,
            "unauthorized",
        ),
    ];
    for (body, client, token, status, code) in cases {
        let (got, reply) = request(body.clone(), client, token).await;
        assert_eq!((got, &reply["code"]), (status, &json!(code)), "{body}");
        assert_eq!(reply["type"], "error");
    }
    let (_, echoed) = request(json!({"type": "nope", "id": 8}), None, &token).await;
    assert_eq!(echoed["id"], 8, "the id is echoed when it can be read");
    // The types this endpoint takes, not every type a WebSocket does.
    assert_eq!(
        echoed["message"],
        "unknown request type `nope`: POST /request takes publish, history, presence, ping, status and refresh"
    );
    assert_eq!(
        refused["id"], 5,
        "a refused refresh token is the request's error"
    );

    // Bodies the protocol cannot read still get its JSON error.
    let over = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
    let over_body_limit = "x".repeat((1 << 20) + 1);
    let raw_cases: [(Vec<u8>, &str, u16, &str); 4] = [
        (
            over.clone().into_bytes(),
            token.as_str(),
            413,
            "limit_exceeded",
        ),
        (
            over_body_limit.into_bytes(),
            token.as_str(),
            413,
            "limit_exceeded",
        ),
        (b"\xff\xfe".to_vec(), token.as_str(), 400, "bad_request"),
        (over.into_bytes(), "bad", 401, "unauthorized"),
    ];
    for (body, token, status, code) in raw_cases {
        let response = server
            .http
            .post(server.url("/request"))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(
            (&reply["type"], &reply["code"]),
            (&json!("error"), &json!(code))
        );
    }
    assert!(server.metric("tidings_http_requests_total").await >= 10.0);
}

#[tokio::test]
async fn http_requests_are_rate_limited_per_user() {
    let mut config = base_config();
    config.connection.requests_per_second = 2;
    config.connection.request_burst = 3;
    let server = TestServer::with_config(config).await;
    let token = token("u1", &[], &[]);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = server
            .http
            .post(server.url("/request"))
            .bearer_auth(&token)
            .body(r#"{"type":"ping"}"#)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another user has a budget of their own.
    let response = server
        .http
        .post(server.url("/request"))
        .bearer_auth(super::support::token("u2", &[], &[]))
        .body(r#"{"type":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn api_history_reads_oldest_or_newest_with_since_and_epoch() {
    let server = TestServer::start().await;
    for i in 1..=5 {
        server.publish("workspace:acme", "tick", json!(i)).await;
    }
    let get = |query: &str| {
        let request = server
            .http
            .get(server.url(&format!("/api/history?{query}")))
            .bearer_auth(API_KEY);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, all) = get("channel=workspace:acme").await;
    assert_eq!(status, 200);
    assert_eq!(offsets(all["events"].as_array().unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(
        (&all["offset"], &all["complete"]),
        (&json!(5), &json!(true))
    );
    let epoch = all["epoch"].as_str().unwrap().to_owned();
    let (_, newest) = get("channel=workspace:acme&limit=2&order=newest").await;
    assert_eq!(offsets(newest["events"].as_array().unwrap()), [5, 4]);
    let (_, after) = get(&format!("channel=workspace:acme&since=3&epoch={epoch}")).await;
    assert_eq!(offsets(after["events"].as_array().unwrap()), [4, 5]);
    let (_, other) = get("channel=workspace:acme&since=3&epoch=OTHER").await;
    assert_eq!(other["events"], json!([]));
    assert_eq!(other["complete"], false);
    for (query, status) in [
        ("", 400),
        ("channel=workspace:acme&order=sideways", 400),
        ("channel=workspace:acme&epoch=x", 400),
        ("channel=nope:x", 404),
    ] {
        assert_eq!(get(query).await.0, status, "{query}");
    }
    let response = server
        .http
        .get(server.url("/api/history?channel=workspace:acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the API key is required");
}

#[tokio::test]
async fn browsers_get_cors_for_allowed_origins_only() {
    let mut config = base_config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::with_config(config).await;
    let preflight = |origin: &str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/request"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-tidings-client",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let allow_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allow_headers.contains("x-tidings-client"),
        "{allow_headers}"
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let response = server
        .http
        .get(server.url("/sse?channel=user:u1"))
        .bearer_auth(token("u1", &[], &[]))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn switched_off_transports_are_not_served() {
    let mut config = base_config();
    config.transports.websocket = false;
    config.transports.polling = false;
    let server = TestServer::with_config(config).await;
    let token = token("u1", &[], &[]);
    for path in ["/ws", "/api/ws", "/events?channel=user:u1"] {
        let response = server
            .http
            .get(server.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let mut stream = SseStream::open(&server, "channel=user:u1", &token).await;
    stream.expect("connected").await;
}

#[tokio::test]
async fn sse_reconnecting_under_a_continuous_publisher_sees_every_offset_once() {
    const EVENTS: u64 = 600;
    // History holds every event: this is about resuming exactly, and a reader
    // slowed by a busy machine must not run into history's end instead.
    let server = TestServer::with_config(config_with_workspace(|ws| {
        ws.history_size = EVENTS as usize;
    }))
    .await;
    let token = token("u1", &["acme"], &[]);
    let tidings = server.tidings.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=EVENTS {
            let request =
                tidings::PublishRequest::json("workspace:acme", "tick", &json!(i)).unwrap();
            tidings.publish(request).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut seen = Vec::new();
    let mut resume: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cycles = 0;
    while seen.last().copied() != Some(EVENTS) && Instant::now() < deadline {
        let query = match &resume {
            Some(id) => format!("channel=workspace:acme&last_event_id={}", urlencode(id)),
            None => "channel=workspace:acme".to_owned(),
        };
        let mut stream = SseStream::open(&server, &query, &token).await;
        stream.expect("connected").await;
        let subscribed = stream.expect("subscribed").await.json();
        if resume.is_some() {
            assert_eq!(subscribed["recovered"], true, "{subscribed}");
        } else {
            // The first subscribe starts at the top: what came before is history.
            seen.extend(1..=subscribed["offset"].as_u64().unwrap());
        }
        // Read a few events, then drop the stream mid-flow.
        for _ in 0..(7 + cycles % 13) {
            match stream.next(Duration::from_millis(500)).await {
                Some(message) if message.event == "tick" => {
                    seen.push(message.json()["offset"].as_u64().unwrap());
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        resume = stream.last_id.clone();
        cycles += 1;
    }
    publisher.await.unwrap();
    assert!(cycles >= 10, "only {cycles} reconnects");
    let expected: Vec<u64> = (1..=EVENTS).collect();
    assert_eq!(seen, expected, "every offset exactly once, in order");
}

/// A peer that stops reading (a frozen tab, a dead network behind a proxy that
/// keeps the TCP session) must not hold its stream, its presence and its
/// connection slot forever: unacknowledged data ends the connection after
/// `heartbeat + pong_timeout` (TCP_USER_TIMEOUT), as a missing pong does over
/// WebSocket.
#[tokio::test]
async fn an_sse_reader_that_stops_reading_is_dropped_after_heartbeat_and_pong_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = base_config();
    config.connection.heartbeat = Duration::from_secs(1);
    config.connection.pong_timeout = Duration::from_secs(1);
    config.connection.send_queue_bytes = 256 * 1024;
    let server = TestServer::with_config(config).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "GET /sse?channel=workspace:acme HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        token("u1", &["acme"], &[])
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0; 2048];
    let mut read = 0;
    while !String::from_utf8_lossy(&head[..read]).contains("event: subscribed") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut head[read..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended before subscribed");
        read += n;
    }
    assert_eq!(server.metric("tidings_sse_streams").await, 1.0);

    // From here on the peer reads nothing. Fill its window, the server's socket
    // buffer and the send queue.
    let padding = "x".repeat(32 * 1024);
    for i in 0..400 {
        server
            .publish("workspace:acme", "big", json!({"i": i, "pad": padding}))
            .await;
    }
    // Counted when the queue overflowed, though the stream can never write
    // its `disconnect`.
    assert_eq!(
        server.metric("tidings_slow_consumer_closes_total").await,
        1.0
    );
    let started = Instant::now();
    while server.metric("tidings_sse_streams").await > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled stream is still open after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "stalled stream dropped {:?} after the last publish",
        started.elapsed()
    );
    assert_eq!(server.metric("tidings_connections").await, 0.0);
    drop(stream);
}

/// One node on `redis`, with a short `redis_timeout`.
async fn node_on(redis: &RedisServer) -> TestServer {
    let mut config = base_config();
    config.engine.kind = tidings::config::EngineKind::Redis;
    config.engine.redis_url = redis.url();
    config.engine.redis_prefix = unique_prefix();
    config.engine.redis_timeout = Duration::from_millis(500);
    TestServer::with_config(config).await
}

#[tokio::test]
async fn an_sse_stream_whose_redis_lost_its_state_ends_and_resumes_as_unrecoverable() {
    let mut redis = RedisServer::start().await;
    let server = node_on(&redis).await;
    let token = token("u1", &["acme"], &[]);
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &token).await;
    stream.expect("connected").await;
    stream.expect("subscribed").await;
    server.publish("workspace:acme", "seen", json!(1)).await;
    stream.expect("seen").await;
    let last_id = stream.last_id.clone().unwrap();

    redis.restart().await;
    // The stream cannot resubscribe by itself: it ends, asking for a reconnect.
    stream.expect_reconnect_end().await;
    let mut again = SseStream::open_with(&server, "channel=workspace:acme", |r| {
        r.bearer_auth(&token).header("Last-Event-ID", &last_id)
    })
    .await;
    again.expect("connected").await;
    let lost = again.expect("unrecoverable").await.json();
    assert_eq!(lost["reason"], "epoch_changed", "{lost}");
}

/// An SSE stream opened while Redis is away tells which channels failed, then
/// ends asking for a reconnect (it cannot subscribe again by itself; left
/// open it stayed deaf to those channels after Redis came back), and the
/// reconnect after Redis returned is subscribed.
#[tokio::test]
async fn an_sse_stream_opened_while_redis_is_away_ends_asking_for_a_reconnect() {
    let mut redis = RedisServer::start().await;
    let server = node_on(&redis).await;
    let token = token("u1", &["acme"], &[]);
    redis.kill();
    let mut stream = SseStream::open(&server, "channel=workspace:acme", &token).await;
    stream.expect("connected").await;
    let failed = stream.expect("error").await.json();
    assert_eq!(failed["code"], "engine_unavailable", "{failed}");
    stream.expect_reconnect_end().await;
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = SseStream::open(&server, "channel=workspace:acme", &token).await;
        again.expect("connected").await;
        let next = again.next(WAIT).await.expect("a message after connected");
        if next.event == "subscribed" {
            break;
        }
        assert_eq!(next.event, "error", "{}", next.data);
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A short poller on a channel nobody publishes to or subscribes to keeps its
/// epoch while it keeps polling, though such a channel is kept only briefly
/// (here `position_ttl`, 1 s) after its last read: then it is forgotten.
#[tokio::test]
async fn a_channel_only_polled_keeps_its_epoch_while_it_is_polled() {
    let mut config = base_config();
    config.engine.position_ttl = Duration::from_secs(1);
    config.engine.sweep_interval = Duration::from_millis(50);
    let server = TestServer::with_config(config).await;
    let token = token("u1", &["acme"], &[]);
    let poll = |query: String| {
        let (server, token) = (&server, &token);
        async move {
            let (status, reply) = server
                .poll(token, &format!("channel=workspace:acme:polled{query}"))
                .await;
            assert_eq!(status, 200, "{reply}");
            reply
        }
    };
    let first = poll(String::new()).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    // Polls 400 ms apart for 2 s, twice the channel's time to live.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let reply = poll(format!("&since=0&epoch={epoch}")).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["epoch"], epoch.as_str());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = poll(format!("&since=0&epoch={epoch}")).await;
    assert_eq!(
        reply["recovered"], false,
        "unread for 2.5 s: forgotten: {reply}"
    );
}

/// A long poll is held no longer than its token is valid: it is answered
/// (empty) when the token expires, as a WebSocket or SSE stream is closed
/// then; within the leeway after `exp` a poll is still answered, at once.
#[tokio::test]
async fn long_poll_ends_when_its_token_expires() {
    let server = TestServer::start().await;
    let short = token_with_ttl("u1", &["acme"], &[], Duration::from_secs(2));
    let started = Instant::now();
    let (status, reply) = server.poll(&short, "channel=workspace:acme&wait=20").await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["events"], json!([]));
    assert!(waited < Duration::from_secs(4), "held {waited:?} past exp");
    let started = Instant::now();
    let (status, again) = server.poll(&short, "channel=workspace:acme&wait=20").await;
    assert_eq!((status, &again["events"]), (200, &json!([])), "{again}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an expired token waits for nothing"
    );
}
