//! The OpenAPI document (`docs/openapi.json`, served at `GET /api/openapi.json`)
//! held against the real server: every documented operation and status is
//! exercised over HTTP, every response must validate against the document's
//! schema for that status, and the router's `/api/*` paths must be the
//! document's paths. A route, field or status that drifts fails here.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};
use tidings::engine::cluster::{Cluster, ControlHandler, EngineStatus, NodeInfo};
use tidings::engine::presence::{ClientPresence, PresenceChange, PresenceStore};
use tidings::engine::{
    Broker, ChannelPosition, Engine, EngineError, EventSink, HistoryPage, HistoryQuery, NewEvent,
    PublishOptions, PublishOutcome,
};
use tidings::protocol::messages::PresenceMember;
use tidings::protocol::{ChannelName, CloseCode, PresenceStatus};
use tidings::transport::api;
use tidings::Tidings;

use crate::support::*;

/// Documented statuses no test can reach on the in-memory engine: its node
/// list cannot fail (the Redis engine's can).
const UNREACHABLE: &[(&str, &str, &str)] = &[];

/// The document, and the (method, path, status) triples a test has seen.
struct Contract {
    document: Value,
    seen: BTreeSet<(String, String, String)>,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Key {
    Bearer,
    Header,
    Wrong,
    Missing,
}

impl Contract {
    fn load() -> Self {
        let document: Value =
            serde_json::from_str(api::OPENAPI_DOCUMENT).expect("docs/openapi.json is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        Self {
            document,
            seen: BTreeSet::new(),
        }
    }

    /// Every documented (method, path, status).
    fn documented(&self) -> BTreeSet<(String, String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for status in operation["responses"].as_object().unwrap().keys() {
                    all.insert((method.clone(), path.clone(), status.clone()));
                }
            }
        }
        all
    }

    /// The response object for `status`, with a `$ref` to
    /// `#/components/responses/…` followed.
    fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let operation = &self.document["paths"][path][method];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the document"
        );
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
        match response.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/responses/")
                    .expect("response refs point into components/responses");
                &self.document["components"]["responses"][name]
            }
            None => response,
        }
    }

    /// Checks a response against the document and records it as seen.
    fn check(&mut self, method: &str, path: &str, status: u16, content_type: &str, body: &Value) {
        let response = self.response(method, path, status);
        let media = &response["content"]["application/json"];
        assert!(
            media.is_object(),
            "{method} {path} {status}: no application/json content documented"
        );
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path} {status}: content type {content_type}"
        );
        // The response schema, with the document's components beside it so
        // its `#/components/schemas/…` references resolve.
        let mut schema = media["schema"].clone();
        schema["components"] = self.document["components"].clone();
        schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: bad schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: response violates the document: {errors:?}\n{body}"
        );
        self.seen
            .insert((method.to_owned(), path.to_owned(), status.to_string()));
    }

    /// Calls the server and checks the answer against the document; returns
    /// the status and body.
    async fn call(
        &mut self,
        server: &TestServer,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        key: Key,
    ) -> (u16, Value) {
        let mut url = server.url(path);
        if !query.is_empty() {
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            url = format!("{url}?{encoded}");
        }
        let mut request = match method {
            "get" => server.http.get(url),
            "post" => server.http.post(url),
            other => panic!("no {other} in the API"),
        };
        request = match key {
            Key::Bearer => request.bearer_auth(API_KEY),
            Key::Header => request.header("x-api-key", API_KEY),
            Key::Wrong => request.bearer_auth("not-the-api-key-at-all"),
            Key::Missing => request,
        };
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path} {status}: not JSON: {text}"));
        self.check(method, path, status, &content_type, &body);
        (status, body)
    }

    async fn post(&mut self, server: &TestServer, path: &str, body: Value) -> (u16, Value) {
        self.call(
            server,
            "post",
            path,
            &[],
            Some(body.to_string()),
            Key::Bearer,
        )
        .await
    }

    async fn post_expect(
        &mut self,
        server: &TestServer,
        path: &str,
        body: Value,
        status: u16,
    ) -> Value {
        let (got, reply) = self.post(server, path, body).await;
        assert_eq!(got, status, "POST {path}: {reply}");
        reply
    }

    async fn get_expect(
        &mut self,
        server: &TestServer,
        path: &str,
        query: &[(&str, &str)],
        status: u16,
    ) -> Value {
        let (got, reply) = self
            .call(server, "get", path, query, None, Key::Bearer)
            .await;
        assert_eq!(got, status, "GET {path} {query:?}: {reply}");
        reply
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn router_paths_are_the_document_paths() {
    let contract = Contract::load();
    let documented: BTreeSet<&str> = contract.document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served: BTreeSet<&str> = api::paths().into_iter().collect();
    assert_eq!(served, documented);
}

#[tokio::test]
async fn every_operation_and_status_matches_the_document() {
    let mut contract = Contract::load();
    let server = TestServer::start().await;

    // The document itself: public, and the very bytes of docs/openapi.json.
    let (status, served) = contract
        .call(&server, "get", "/api/openapi.json", &[], None, Key::Missing)
        .await;
    assert_eq!(status, 200);
    assert_eq!(served, contract.document);

    // A subscriber, so disconnect, unsubscribe, presence and history have
    // something to report.
    let mut client = server.connect_user("u42", &["acme"]).await;
    client.subscribe("workspace:acme").await;

    let published = contract
        .post_expect(
            &server,
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "applications.updated",
                   "data": {"id": "app123"},
                   "meta": {"actor": "u7", "correlation_id": "req-91",
                            "entity": {"type": "applications", "id": "app123", "version": 7}},
                   "audience": {"users": ["u42"], "roles": ["admin"]},
                   "exclude_client": "c_nobody", "idempotency_key": "req-91"}),
            200,
        )
        .await;
    let repeated = contract
        .post_expect(
            &server,
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "applications.updated",
                   "data": {"id": "app123"}, "idempotency_key": "req-91"}),
            200,
        )
        .await;
    assert_eq!(
        repeated, published,
        "a repeated idempotency key publishes nothing"
    );
    // Nulls stand for absent optional fields.
    contract
        .post_expect(
            &server,
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "x", "data": null, "meta": null,
                   "audience": null, "exclude_client": null, "idempotency_key": null}),
            200,
        )
        .await;
    // The other key scheme, and refusals.
    let plain = json!({"channel": "workspace:acme", "event": "x", "data": 1}).to_string();
    let (status, _) = contract
        .call(
            &server,
            "post",
            "/api/publish",
            &[],
            Some(plain.clone()),
            Key::Header,
        )
        .await;
    assert_eq!(status, 200);
    for key in [Key::Missing, Key::Wrong] {
        let (status, body) = contract
            .call(
                &server,
                "post",
                "/api/publish",
                &[],
                Some(plain.clone()),
                key,
            )
            .await;
        assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    }
    for bad in [
        json!({"channel": "workspace:acme", "event": "", "data": 1}),
        json!({"channel": "workspace:acme", "event": "a\u{7}b", "data": 1}),
        json!({"channel": "workspace acme", "event": "x", "data": 1}),
        json!({"channel": "workspace:acme", "event": "x"}),
        json!({"channel": "workspace:acme", "event": "x", "data": 1, "extra": true}),
        json!({"channel": "workspace:acme", "event": "x", "data": 1, "meta": {"who": "u1"}}),
        json!({"channel": "workspace:acme", "event": "x", "data": 1, "idempotency_key": ""}),
        // serde's structs also take arrays; the contract's objects are objects.
        json!(["not", "an", "object"]),
        json!({"channel": "workspace:acme", "event": "x", "data": 1, "meta": [null, null]}),
        json!({"channel": "workspace:acme", "event": "x", "data": 1, "audience": [["u1"]]}),
        json!({"channel": "workspace:acme", "event": "x", "data": 1,
               "meta": {"entity": ["t", "1"]}}),
    ] {
        let body = contract
            .post_expect(&server, "/api/publish", bad, 400)
            .await;
        assert_eq!(error_code(&body), "bad_request");
    }
    let (status, _) = contract
        .call(
            &server,
            "post",
            "/api/publish",
            &[],
            Some("{not json".into()),
            Key::Bearer,
        )
        .await;
    assert_eq!(status, 400);
    let body = contract
        .post_expect(
            &server,
            "/api/publish",
            json!({"channel": "nowhere:acme", "event": "x", "data": 1}),
            404,
        )
        .await;
    assert_eq!(error_code(&body), "unknown_channel");
    let oversized = json!({"channel": "workspace:acme", "event": "x",
                           "data": "a".repeat(1024 * 1024 + 1)});
    let body = contract
        .post_expect(&server, "/api/publish", oversized.clone(), 413)
        .await;
    assert_eq!(error_code(&body), "limit_exceeded");

    // Broadcast.
    let reply = contract
        .post_expect(
            &server,
            "/api/broadcast",
            json!({"channels": ["workspace:acme", "user:u42"], "event": "notice", "data": {}}),
            200,
        )
        .await;
    assert_eq!(reply["results"].as_array().map(Vec::len), Some(2));
    contract
        .post_expect(
            &server,
            "/api/broadcast",
            json!({"channels": [], "event": "notice", "data": {}}),
            400,
        )
        .await;
    contract
        .post_expect(
            &server,
            "/api/broadcast",
            json!({"channels": ["workspace:acme", "nowhere:x"], "event": "notice", "data": {}}),
            404,
        )
        .await;
    let too_many: Vec<String> = (0..1001).map(|i| format!("user:u{i}")).collect();
    let body = contract
        .post_expect(
            &server,
            "/api/broadcast",
            json!({"channels": too_many, "event": "notice", "data": {}}),
            413,
        )
        .await;
    assert_eq!(error_code(&body), "limit_exceeded");
    let (status, _) = contract
        .call(
            &server,
            "post",
            "/api/broadcast",
            &[],
            Some("{}".into()),
            Key::Missing,
        )
        .await;
    assert_eq!(status, 401);
    contract
        .post_expect(&server, "/api/broadcast", oversized.clone(), 413)
        .await;

    // Entity events: any action name.
    for action in ["approved", "status_changed", "created"] {
        let reply = contract
            .post_expect(
                &server,
                "/api/events",
                json!({"workspace": "acme", "entity": {"type": "applications", "id": "app123"},
                       "action": action, "data": {"v": 1}, "actor": "u7"}),
                200,
            )
            .await;
        assert_eq!(reply["event"], format!("applications.{action}"));
    }
    for bad in [
        json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": ""}),
        json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": "a\nb"}),
        json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": "x".repeat(254)}),
        json!({"workspace": "a:b", "entity": {"type": "t", "id": "1"}, "action": "created"}),
        json!({"workspace": "acme", "entity": {"type": "t"}, "action": "created"}),
        json!({"workspace": "acme", "entity": ["t", "1"], "action": "created"}),
    ] {
        contract.post_expect(&server, "/api/events", bad, 400).await;
    }
    let (status, _) = contract
        .call(
            &server,
            "post",
            "/api/events",
            &[],
            Some("{}".into()),
            Key::Missing,
        )
        .await;
    assert_eq!(status, 401);
    contract
        .post_expect(&server, "/api/events", oversized.clone(), 413)
        .await;
    // unknown_channel: a workspace namespace that takes no entity channels.
    let shallow = TestServer::with_config(config_with_workspace(|ns| ns.max_segments = 3)).await;
    let body = contract
        .post_expect(
            &shallow,
            "/api/events",
            json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": "created"}),
            404,
        )
        .await;
    assert_eq!(error_code(&body), "unknown_channel");

    // Presence and history of the subscriber's channel.
    let presence = contract
        .get_expect(
            &server,
            "/api/presence",
            &[("channel", "workspace:acme")],
            200,
        )
        .await;
    assert_eq!(presence["members"][0]["user"], "u42");
    contract
        .get_expect(&server, "/api/presence", &[], 400)
        .await;
    contract
        .get_expect(&server, "/api/presence", &[("channel", "bad channel")], 400)
        .await;
    contract
        .get_expect(&server, "/api/presence", &[("channel", "nowhere:x")], 404)
        .await;
    let history = contract
        .get_expect(
            &server,
            "/api/history",
            &[
                ("channel", "workspace:acme"),
                ("order", "newest"),
                ("limit", "2"),
            ],
            200,
        )
        .await;
    assert_eq!(history["events"].as_array().map(Vec::len), Some(2));
    let epoch = history["epoch"].as_str().unwrap().to_owned();
    let since = contract
        .get_expect(
            &server,
            "/api/history",
            &[
                ("channel", "workspace:acme"),
                ("since", "1"),
                ("epoch", &epoch),
            ],
            200,
        )
        .await;
    assert_eq!(since["events"][0]["offset"], 2);
    for query in [
        vec![("channel", "workspace:acme"), ("epoch", epoch.as_str())],
        vec![("channel", "workspace:acme"), ("since", "-1")],
        vec![("channel", "workspace:acme"), ("order", "sideways")],
        vec![],
    ] {
        contract
            .get_expect(&server, "/api/history", &query, 400)
            .await;
    }
    contract
        .get_expect(&server, "/api/history", &[("channel", "nowhere:x")], 404)
        .await;

    // Info.
    let info = contract.get_expect(&server, "/api/info", &[], 200).await;
    assert_eq!(info["engine"], if on_redis() { "redis" } else { "memory" });
    assert_eq!(info["version"], "0.1.0");
    for path in ["/api/presence", "/api/history", "/api/info"] {
        let (status, _) = contract
            .call(
                &server,
                "get",
                path,
                &[("channel", "workspace:acme")],
                None,
                Key::Wrong,
            )
            .await;
        assert_eq!(status, 401);
    }

    // Unsubscribe, then disconnect, the subscriber.
    let reply = contract
        .post_expect(
            &server,
            "/api/unsubscribe",
            json!({"user": "u42", "channel": "workspace:acme", "reason": "removed"}),
            200,
        )
        .await;
    assert_eq!(reply["unsubscribed"], 1);
    contract
        .post_expect(
            &server,
            "/api/unsubscribe",
            json!({"user": "u42", "channel": "not a channel"}),
            400,
        )
        .await;
    contract
        .post_expect(&server, "/api/unsubscribe", json!({"user": "u42"}), 400)
        .await;
    for channel in ["nope:acme", "workspace"] {
        let reply = contract
            .post_expect(
                &server,
                "/api/unsubscribe",
                json!({"user": "u42", "channel": channel}),
                404,
            )
            .await;
        assert_eq!(
            reply["error"]["code"], "unknown_channel",
            "{channel}: {reply}"
        );
    }
    for code in [1000, 4999, 70000] {
        contract
            .post_expect(
                &server,
                "/api/disconnect",
                json!({"user": "u42", "code": code}),
                400,
            )
            .await;
    }
    let reply = contract
        .post_expect(
            &server,
            "/api/disconnect",
            json!({"user": "u42", "code": 4000, "reason": "bye"}),
            200,
        )
        .await;
    assert_eq!(reply["disconnected"], 1);
    assert_eq!(client.closed(WAIT).await.code, 4000);
    for path in ["/api/disconnect", "/api/unsubscribe"] {
        let (status, _) = contract
            .call(&server, "post", path, &[], Some("{}".into()), Key::Missing)
            .await;
        assert_eq!(status, 401);
        contract
            .post_expect(&server, path, oversized.clone(), 413)
            .await;
    }

    // engine_unavailable, from an engine that always fails.
    let failing = TestServer::with_tidings(
        Tidings::with_engine(
            base_config(),
            Engine {
                broker: Arc::new(FailingBroker),
                presence: Arc::new(FailingPresence),
                cluster: Arc::new(FailingCluster),
            },
        )
        .expect("valid test config"),
    )
    .await;
    for (path, body) in [
        (
            "/api/publish",
            json!({"channel": "workspace:acme", "event": "x", "data": 1}),
        ),
        (
            "/api/broadcast",
            json!({"channels": ["workspace:acme"], "event": "x", "data": 1}),
        ),
        (
            "/api/events",
            json!({"workspace": "acme", "entity": {"type": "t", "id": "1"}, "action": "created"}),
        ),
    ] {
        let reply = contract.post_expect(&failing, path, body, 503).await;
        assert_eq!(error_code(&reply), "engine_unavailable");
    }
    for path in ["/api/presence", "/api/history"] {
        contract
            .get_expect(&failing, path, &[("channel", "workspace:acme")], 503)
            .await;
    }
    contract.get_expect(&failing, "/api/info", &[], 503).await;
    for (path, body) in [
        ("/api/disconnect", json!({"user": "u1"})),
        (
            "/api/unsubscribe",
            json!({"user": "u1", "channel": "workspace:acme"}),
        ),
    ] {
        let reply = contract.post_expect(&failing, path, body, 503).await;
        assert_eq!(error_code(&reply), "engine_unavailable");
    }

    let unexercised: Vec<_> = contract
        .documented()
        .difference(&contract.seen)
        .filter(|(m, p, s)| !UNREACHABLE.contains(&(m.as_str(), p.as_str(), s.as_str())))
        .cloned()
        .collect();
    assert!(
        unexercised.is_empty(),
        "documented but never exercised: {unexercised:?}"
    );
}

/// A broker whose store is always unreachable.
struct FailingBroker;

fn unavailable() -> EngineError {
    EngineError::Unavailable("test engine is down".into())
}

#[async_trait]
impl Broker for FailingBroker {
    fn attach(&self, _sink: Arc<dyn EventSink>) {}
    async fn publish_presence(
        &self,
        _channel: &ChannelName,
        _text: Utf8Bytes,
    ) -> Result<(), EngineError> {
        Err(unavailable())
    }
    async fn publish(
        &self,
        _channel: &ChannelName,
        _event: NewEvent,
        _options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        Err(unavailable())
    }
    async fn subscribe_node(&self, _channel: &ChannelName) -> Result<(), EngineError> {
        Err(unavailable())
    }
    async fn unsubscribe_node(&self, _channel: &ChannelName) -> Result<(), EngineError> {
        Err(unavailable())
    }
    async fn position(&self, _channel: &ChannelName) -> Result<ChannelPosition, EngineError> {
        Err(unavailable())
    }
    async fn history(
        &self,
        _channel: &ChannelName,
        _query: &HistoryQuery,
    ) -> Result<HistoryPage, EngineError> {
        Err(unavailable())
    }
    fn channel_count(&self) -> usize {
        0
    }
}

/// A presence store that is always unreachable.
struct FailingPresence;

#[async_trait]
impl PresenceStore for FailingPresence {
    async fn join(
        &self,
        _channel: &ChannelName,
        _client: ClientPresence,
    ) -> Result<Option<PresenceChange>, EngineError> {
        Err(unavailable())
    }
    async fn leave(
        &self,
        _channel: &ChannelName,
        _user: &str,
        _client: &str,
    ) -> Result<Option<PresenceChange>, EngineError> {
        Err(unavailable())
    }
    async fn set_status(
        &self,
        _channel: &ChannelName,
        _user: &str,
        _client: &str,
        _status: PresenceStatus,
    ) -> Result<Option<PresenceChange>, EngineError> {
        Err(unavailable())
    }
    async fn members(&self, _channel: &ChannelName) -> Result<Vec<PresenceMember>, EngineError> {
        Err(unavailable())
    }
}

/// A cluster whose store is always unreachable.
struct FailingCluster;

#[async_trait]
impl Cluster for FailingCluster {
    fn attach(&self, _handler: Arc<dyn ControlHandler>) {}
    async fn disconnect_user(
        &self,
        _user: &str,
        _code: CloseCode,
        _reason: Option<String>,
    ) -> Result<usize, EngineError> {
        Err(unavailable())
    }
    async fn unsubscribe_user(
        &self,
        _user: &str,
        _channel: &ChannelName,
        _reason: &str,
    ) -> Result<usize, EngineError> {
        Err(unavailable())
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Err(unavailable())
    }
    fn status(&self) -> EngineStatus {
        EngineStatus::default()
    }
}
