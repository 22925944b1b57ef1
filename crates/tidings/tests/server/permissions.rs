//! The permission matrix of the default namespaces.

use serde_json::json;
use tidings::config::{NamespaceConfig, Rule};

use crate::support::*;

#[tokio::test]
async fn default_namespaces_grant_own_scopes_only() {
    let server = TestServer::start().await;
    let mut client = server.connect_user("u1", &["acme"]).await;
    let cases = [
        ("workspace:acme", "subscribed"),
        ("workspace:acme:applications", "subscribed"),
        ("workspace:acme:applications:app123", "subscribed"),
        ("user:u1", "subscribed"),
        ("workspace:globex", "permission_denied"),
        ("workspace:globex:applications:app1", "permission_denied"),
        ("user:u2", "permission_denied"),
        ("billing:acme", "unknown_channel"),
        ("workspace", "unknown_channel"),
        ("workspace:acme:a:b:c", "unknown_channel"),
        ("user:u1:extra", "unknown_channel"),
        ("workspace::x", "unknown_channel"),
        ("bad channel", "bad_request"),
    ];
    for (i, (channel, expected)) in cases.iter().enumerate() {
        let reply = client
            .request(json!({"type": "subscribe", "channel": channel}), i as u64)
            .await;
        let got = if reply["type"] == "error" {
            &reply["code"]
        } else {
            &reply["type"]
        };
        assert_eq!(got, expected, "{channel}: {reply}");
    }
}

#[tokio::test]
async fn denied_channels_deliver_nothing() {
    let server = TestServer::start().await;
    let mut outsider = server.connect_user("u2", &["globex"]).await;
    let reply = outsider
        .request(json!({"type": "subscribe", "channel": "workspace:acme"}), 1)
        .await;
    assert_eq!(reply["code"], "permission_denied");
    outsider.subscribe("workspace:globex").await;
    server
        .publish("workspace:acme", "secret.thing", json!({"x": 1}))
        .await;
    server
        .publish("workspace:globex", "public.thing", json!({"x": 2}))
        .await;
    let events = outsider
        .drain_events(std::time::Duration::from_millis(300))
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["channel"], "workspace:globex");
}

#[tokio::test]
async fn configured_namespace_with_role_rule_and_client_publish() {
    let mut config = base_config();
    let in_workspace = Rule::segment_in_claim(1, "workspaces");
    config.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            min_segments: 3,
            max_segments: 3,
            subscribe: vec![in_workspace.clone()],
            publish: vec![Rule {
                role: Some("member".into()),
                ..in_workspace
            }],
            ..NamespaceConfig::default()
        },
    );
    config.namespaces.insert(
        "admin".into(),
        NamespaceConfig {
            subscribe: vec![Rule {
                role: Some("admin".into()),
                ..Rule::default()
            }],
            ..NamespaceConfig::default()
        },
    );
    let server = TestServer::with_config(config).await;
    let mut member = server.connect(&token("u1", &["acme"], &["member"])).await;
    let mut reader = server.connect(&token("u2", &["acme"], &[])).await;
    let mut admin = server.connect(&token("root", &[], &["admin"])).await;

    reader.subscribe("chat:acme:general").await;
    let refused = reader
        .request(
            json!({"type": "publish", "channel": "chat:acme:general", "event": "m", "data": 1}),
            1,
        )
        .await;
    assert_eq!(refused["code"], "permission_denied");

    let published = member
        .request(json!({"type": "publish", "channel": "chat:acme:general", "event": "message", "data": {"text": "hi"}}), 2)
        .await;
    assert_eq!(published["type"], "published", "{published}");
    assert_eq!(published["offset"], 1);
    let event = reader.expect("event").await;
    assert_eq!(event["data"]["text"], "hi");
    assert_eq!(
        event["meta"]["actor"], "u1",
        "the server vouches for the actor"
    );

    // Default namespaces still exist next to configured ones.
    member.subscribe("workspace:acme").await;
    admin.subscribe("admin:anything").await;
    let denied = member
        .request(json!({"type": "subscribe", "channel": "admin:anything"}), 3)
        .await;
    assert_eq!(denied["code"], "permission_denied");
    // Default namespaces deny client publish.
    let denied = member
        .request(
            json!({"type": "publish", "channel": "workspace:acme", "event": "x", "data": 1}),
            4,
        )
        .await;
    assert_eq!(denied["code"], "permission_denied");
}
