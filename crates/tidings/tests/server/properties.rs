//! Property: across random users, workspaces, subscriptions, audiences and
//! publishes, every connection receives exactly the events it may see — nothing
//! of a channel it may not read or of an audience that excludes it, and nothing
//! it may see is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use crate::support::*;

const WORKSPACES: [&str; 3] = ["acme", "globex", "initech"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const ROLES: [&str; 2] = ["admin", "viewer"];

#[derive(Debug, Clone)]
struct Member {
    user: usize,
    workspaces: Vec<usize>,
    roles: Vec<usize>,
    wants: Vec<ChannelPick>,
}

#[derive(Debug, Clone)]
enum ChannelPick {
    Workspace(usize),
    Entity(usize, u8),
    User(usize),
}

impl ChannelPick {
    fn name(&self) -> String {
        match self {
            Self::Workspace(w) => format!("workspace:{}", WORKSPACES[*w]),
            Self::Entity(w, e) => format!("workspace:{}:items:{e}", WORKSPACES[*w]),
            Self::User(u) => format!("user:{}", USERS[*u]),
        }
    }
}

#[derive(Debug, Clone)]
struct Publish {
    channel: ChannelPick,
    users: Option<Vec<usize>>,
    roles: Option<Vec<usize>>,
}

fn pick() -> impl Strategy<Value = ChannelPick> {
    prop_oneof![
        (0..3usize).prop_map(ChannelPick::Workspace),
        (0..3usize, 0..2u8).prop_map(|(w, e)| ChannelPick::Entity(w, e)),
        (0..4usize).prop_map(ChannelPick::User),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    (
        0..4usize,
        proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3),
        proptest::sample::subsequence(vec![0usize, 1], 0..=2),
        proptest::collection::vec(pick(), 1..5),
    )
        .prop_map(|(user, workspaces, roles, wants)| Member {
            user,
            workspaces,
            roles,
            wants,
        })
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        pick(),
        proptest::option::weighted(
            0.3,
            proptest::sample::subsequence(vec![0usize, 1, 2, 3], 0..=2),
        ),
        proptest::option::weighted(0.2, proptest::sample::subsequence(vec![0usize, 1], 0..=1)),
    )
        .prop_map(|(channel, users, roles)| Publish {
            channel,
            users,
            roles,
        })
}

fn may_read(m: &Member, channel: &ChannelPick) -> bool {
    match channel {
        ChannelPick::Workspace(w) | ChannelPick::Entity(w, _) => m.workspaces.contains(w),
        ChannelPick::User(u) => *u == m.user,
    }
}

fn in_audience(m: &Member, p: &Publish) -> bool {
    if p.users.is_none() && p.roles.is_none() {
        return true;
    }
    p.users.as_ref().is_some_and(|us| us.contains(&m.user))
        || p.roles
            .as_ref()
            .is_some_and(|rs| rs.iter().any(|r| m.roles.contains(r)))
}

async fn run_case(members: Vec<Member>, publishes: Vec<Publish>) {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    let mut subscribed: Vec<BTreeSet<String>> = Vec::new();
    for m in &members {
        let ws: Vec<&str> = m.workspaces.iter().map(|w| WORKSPACES[*w]).collect();
        let roles: Vec<&str> = m.roles.iter().map(|r| ROLES[*r]).collect();
        let mut client = server.connect(&token(USERS[m.user], &ws, &roles)).await;
        let mut mine = BTreeSet::new();
        for (i, want) in m.wants.iter().enumerate() {
            let name = want.name();
            let reply = client
                .request(json!({"type": "subscribe", "channel": name}), i as u64)
                .await;
            let allowed = may_read(m, want);
            if mine.contains(&name) {
                assert_eq!(reply["code"], "already_subscribed");
            } else if allowed {
                assert_eq!(reply["type"], "subscribed", "{name} for {m:?}: {reply}");
                mine.insert(name);
            } else {
                assert_eq!(
                    reply["code"], "permission_denied",
                    "{name} for {m:?}: {reply}"
                );
            }
        }
        clients.push(client);
        subscribed.push(mine);
    }
    let mut expected: Vec<BTreeMap<String, Vec<u64>>> = vec![BTreeMap::new(); members.len()];
    for p in &publishes {
        let mut audience = serde_json::Map::new();
        if let Some(us) = &p.users {
            audience.insert(
                "users".into(),
                json!(us.iter().map(|u| USERS[*u]).collect::<Vec<_>>()),
            );
        }
        if let Some(rs) = &p.roles {
            audience.insert(
                "roles".into(),
                json!(rs.iter().map(|r| ROLES[*r]).collect::<Vec<_>>()),
            );
        }
        let mut body = json!({"channel": p.channel.name(), "event": "e", "data": {}});
        if p.users.is_some() || p.roles.is_some() {
            body["audience"] = serde_json::Value::Object(audience);
        }
        let (status, published) = server.api("/api/publish", body).await;
        assert_eq!(status, 200);
        let offset = published["offset"].as_u64().unwrap();
        for (i, m) in members.iter().enumerate() {
            if subscribed[i].contains(&p.channel.name()) && in_audience(m, p) {
                expected[i]
                    .entry(p.channel.name())
                    .or_default()
                    .push(offset);
            }
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for event in client.drain_events(Duration::from_millis(150)).await {
            let channel = event["channel"].as_str().unwrap().to_owned();
            assert!(
                subscribed[i].contains(&channel),
                "event of an unsubscribed channel {channel}"
            );
            got.entry(channel)
                .or_default()
                .push(event["offset"].as_u64().unwrap());
        }
        assert_eq!(got, expected[i], "member {:?}", members[i]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn every_connection_gets_exactly_what_it_may_see(
        members in proptest::collection::vec(member(), 1..6),
        publishes in proptest::collection::vec(publish(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run_case(members, publishes));
    }
}
