//! Presence: members, join/leave/status pushes, and the API view.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A server whose `workspace` namespace pushes presence events.
async fn server_with_presence_events() -> TestServer {
    let mut config = base_config();
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .unwrap();
    workspace.presence_events = true;
    config.namespaces.insert("workspace".into(), workspace);
    TestServer::with_config(config).await
}

#[tokio::test]
async fn members_join_leave_and_status_are_pushed() {
    let server = server_with_presence_events().await;
    let mut alice = server.connect_user("alice", &["acme"]).await;
    alice.subscribe("workspace:acme").await;
    let joined = alice.expect("presence").await;
    assert_eq!(joined["action"], "join");
    assert_eq!(joined["member"]["user"], "alice");

    let mut bob_tab1 = server.connect_user("bob", &["acme"]).await;
    bob_tab1.subscribe("workspace:acme").await;
    let push = alice.expect("presence").await;
    assert_eq!(
        (push["action"].as_str(), push["member"]["user"].as_str()),
        (Some("join"), Some("bob"))
    );
    assert_eq!(push["member"]["status"], "online");

    // A second tab of the same user is not a new member.
    let mut bob_tab2 = server.connect_user("bob", &["acme"]).await;
    bob_tab2.subscribe("workspace:acme").await;
    let list = alice
        .request(json!({"type": "presence", "channel": "workspace:acme"}), 1)
        .await;
    let members = list["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{list}");
    assert_eq!(members[1]["user"], "bob");
    assert_eq!(members[1]["clients"].as_array().unwrap().len(), 2);

    // Status: bob's aggregate changes only when no tab is online any more.
    let reply = bob_tab1
        .request(json!({"type": "status", "status": "away"}), 2)
        .await;
    assert_eq!(reply, json!({"type": "status", "id": 2, "status": "away"}));
    bob_tab2
        .request(json!({"type": "status", "status": "busy"}), 3)
        .await;
    let push = alice
        .wait_for("bob's status", |v| {
            v["type"] == "presence" && v["action"] == "status"
        })
        .await;
    assert_eq!(push["member"]["status"], "busy");

    let (status, body) = api_presence(&server, "workspace:acme").await;
    assert_eq!(status, 200);
    assert_eq!(body["members"].as_array().unwrap().len(), 2);

    drop(bob_tab1);
    bob_tab2
        .request(
            json!({"type": "unsubscribe", "channel": "workspace:acme"}),
            4,
        )
        .await;
    let push = alice
        .wait_for("bob's leave", |v| {
            v["type"] == "presence" && v["action"] == "leave"
        })
        .await;
    assert_eq!(push["member"]["user"], "bob");
    let list = alice
        .request(json!({"type": "presence", "channel": "workspace:acme"}), 5)
        .await;
    assert_eq!(list["members"].as_array().unwrap().len(), 1);
}

/// A user's status is their most available tab's: a tab joining or leaving
/// that changes it is pushed as a `status` change (on both engines).
#[tokio::test]
async fn a_second_tab_joining_or_leaving_pushes_the_users_new_status() {
    let server = server_with_presence_events().await;
    let mut alice = server.connect_user("alice", &["acme"]).await;
    alice.subscribe("workspace:acme").await;
    alice.expect("presence").await;

    // Only the first tab's token has `info`: every push shows it, as the
    // listing does, whichever tab caused the push.
    let with_info = tidings::auth::mint_hs256(
        SECRET,
        &tidings::auth::MintClaims {
            sub: "bob".into(),
            workspaces: vec!["acme".into()],
            ttl: Some(Duration::from_secs(3600)),
            extra: serde_json::Map::from_iter([("info".to_owned(), json!({"name": "Bob"}))]),
            ..Default::default()
        },
    )
    .unwrap();
    let mut bob_away = server.connect(&with_info).await;
    bob_away
        .request(json!({"type": "status", "status": "away"}), 1)
        .await;
    bob_away.subscribe("workspace:acme").await;
    let is_bob = |v: &serde_json::Value| v["type"] == "presence" && v["member"]["user"] == "bob";
    let joined = alice.wait_for("bob's join", is_bob).await;
    assert_eq!(
        (&joined["action"], &joined["member"]["status"]),
        (&json!("join"), &json!("away"))
    );

    let mut bob_online = server.connect_user("bob", &["acme"]).await;
    bob_online.subscribe("workspace:acme").await;
    let online = alice.wait_for("bob online", is_bob).await;
    assert_eq!(
        (&online["action"], &online["member"]["status"]),
        (&json!("status"), &json!("online")),
        "{online}"
    );
    let mut tabs = vec![bob_away.client_id(), bob_online.client_id()];
    tabs.sort();
    assert_eq!(online["member"]["clients"], json!(tabs));
    assert_eq!(online["member"]["info"], json!({"name": "Bob"}), "{online}");

    bob_online
        .request(
            json!({"type": "unsubscribe", "channel": "workspace:acme"}),
            2,
        )
        .await;
    let away = alice.wait_for("bob away again", is_bob).await;
    assert_eq!(
        (
            &away["action"],
            &away["member"]["status"],
            &away["member"]["clients"]
        ),
        (
            &json!("status"),
            &json!("away"),
            &json!([bob_away.client_id()])
        ),
        "{away}"
    );
    assert_eq!(away["member"]["info"], json!({"name": "Bob"}), "{away}");
}

#[tokio::test]
async fn presence_needs_permission_and_does_not_leak_across_workspaces() {
    let server = server_with_presence_events().await;
    let mut acme = server.connect_user("a", &["acme"]).await;
    let mut globex = server.connect_user("g", &["globex"]).await;
    acme.subscribe("workspace:acme").await;
    globex.subscribe("workspace:globex").await;
    let denied = globex
        .request(json!({"type": "presence", "channel": "workspace:acme"}), 1)
        .await;
    assert_eq!(denied["code"], "permission_denied");
    // globex sees only its own join.
    let mut seen = Vec::new();
    while let Some(v) = globex.next(Duration::from_millis(300)).await {
        seen.push(v);
    }
    assert!(seen.iter().all(|v| v["member"]["user"] != "a"), "{seen:?}");
}

async fn api_presence(server: &TestServer, channel: &str) -> (u16, serde_json::Value) {
    server
        .api_get(&format!("/api/presence?channel={channel}"))
        .await
}

#[tokio::test]
async fn default_namespaces_list_members_without_pushing() {
    let server = TestServer::start().await;
    let mut a = server.connect_user("a", &["acme"]).await;
    let mut b = server.connect_user("b", &["acme"]).await;
    a.subscribe("workspace:acme").await;
    b.subscribe("workspace:acme").await;
    let list = a
        .request(json!({"type": "presence", "channel": "workspace:acme"}), 1)
        .await;
    let users: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["a", "b"]);
    assert!(
        a.next(Duration::from_millis(300)).await.is_none(),
        "no presence pushes by default"
    );
    a.subscribe("user:a").await;
    let own = a
        .request(json!({"type": "presence", "channel": "user:a"}), 2)
        .await;
    assert_eq!(
        own["code"], "permission_denied",
        "no presence on user channels"
    );
}

/// Presence pushes follow the token in force: a refresh that drops the role
/// the `presence` rule asks for stops them on the channels the connection
/// keeps, and one that grants it starts them.
#[tokio::test]
async fn refresh_changes_which_presence_pushes_arrive() {
    let mut config = base_config();
    let mut workspace = tidings::config::builtin_namespaces(&config.jwt)
        .remove("workspace")
        .unwrap();
    workspace.presence_events = true;
    workspace.presence = vec![tidings::config::Rule {
        role: Some("lead".into()),
        ..Default::default()
    }];
    config.namespaces.insert("workspace".into(), workspace);
    let server = TestServer::with_config(config).await;

    let mut alice = server.connect(&token("alice", &["acme"], &["lead"])).await;
    alice.subscribe("workspace:acme").await;
    assert_eq!(alice.expect("presence").await["member"]["user"], "alice");
    let mut bob = server.connect_user("bob", &["acme"]).await;
    bob.subscribe("workspace:acme").await;
    let push = alice.expect("presence").await;
    assert_eq!(
        (&push["action"], &push["member"]["user"]),
        (&json!("join"), &json!("bob"))
    );

    // Without the role: bob's leave is not pushed, the channel's events are.
    let reply = alice
        .request(
            json!({"type": "refresh", "token": token("alice", &["acme"], &[])}),
            1,
        )
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    drop(bob);
    let mut carol = server.connect_user("carol", &["acme"]).await;
    carol.subscribe("workspace:acme").await;
    server.publish("workspace:acme", "marker", json!({})).await;
    let next = alice.wait_for("the marker", |v| v["type"] != "pong").await;
    assert_eq!(
        next["event"], "marker",
        "no presence push before it: {next}"
    );

    // With the role again: pushes resume.
    let reply = alice
        .request(
            json!({"type": "refresh", "token": token("alice", &["acme"], &["lead"])}),
            2,
        )
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    drop(carol);
    let push = alice.expect("presence").await;
    assert_eq!(
        (&push["action"], &push["member"]["user"]),
        (&json!("leave"), &json!("carol"))
    );
}
