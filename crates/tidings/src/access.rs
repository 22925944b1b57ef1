//! Who may do what on which channel: namespace lookup and rule evaluation.
//!
//! Deny by default: a channel whose namespace is not configured is unknown, and an
//! action whose rule list is empty is refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use tidings_auth::Identity;

use crate::config::{Config, NamespaceConfig, Rule};
use crate::protocol::ChannelName;

/// One shared empty claims map, for connections whose rules read no claim.
fn empty_claims() -> Arc<serde_json::Map<String, serde_json::Value>> {
    static EMPTY: std::sync::OnceLock<Arc<serde_json::Map<String, serde_json::Value>>> =
        std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| Arc::new(serde_json::Map::new()))
        .clone()
}

/// What a connection wants to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive its events.
    Subscribe,
    /// Publish from a client connection.
    Publish,
    /// List its members.
    Presence,
    /// Read its history.
    History,
}

/// Why access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The namespace is not configured, or the channel has the wrong number of segments.
    #[error("unknown channel {0}")]
    UnknownChannel(String),
    /// The rules do not grant the action.
    #[error("not allowed to {action} on {channel}")]
    PermissionDenied {
        /// The action, lowercase.
        action: &'static str,
        /// The channel.
        channel: String,
    },
}

/// A namespace in force, with its rules.
#[derive(Debug)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: NamespaceConfig,
    roles_claim: String,
}

/// The namespaces in force and the checks over them.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    namespaces: Arc<HashMap<String, Arc<Namespace>>>,
    /// Every claim a rule reads; the others need not outlive authentication.
    read_claims: Arc<HashSet<String>>,
    /// The kept claim sets, shared between connections that carry equal ones.
    claim_sets: Arc<Mutex<ClaimSets>>,
}

type Claims = serde_json::Map<String, serde_json::Value>;

/// Kept claim sets by their JSON text. Tokens of one organisation or role
/// usually carry the same rule-read claims (`workspaces`, `org`), so one
/// copy serves all their connections instead of one map per connection.
/// Entries whose last connection is gone are swept when the table has doubled
/// since the last sweep.
#[derive(Debug, Default)]
struct ClaimSets {
    by_json: HashMap<String, Weak<Claims>>,
    sweep_at: usize,
}

impl ClaimSets {
    /// Least table size that triggers a sweep.
    const MIN_SWEEP: usize = 64;

    /// The shared copy of `claims`, stored first if there is none.
    fn share(&mut self, claims: Claims) -> Arc<Claims> {
        let Ok(key) = serde_json::to_string(&claims) else {
            return Arc::new(claims);
        };
        if let Some(shared) = self.by_json.get(&key).and_then(Weak::upgrade) {
            return shared;
        }
        let claims = Arc::new(claims);
        self.by_json.insert(key, Arc::downgrade(&claims));
        if self.by_json.len() >= self.sweep_at {
            self.by_json.retain(|_, set| set.strong_count() > 0);
            self.by_json.shrink_to_fit();
            self.sweep_at = (self.by_json.len() * 2).max(Self::MIN_SWEEP);
        }
        claims
    }
}

impl AccessPolicy {
    /// Builds the policy from the effective namespaces of `config`.
    pub fn new(config: &Config) -> Self {
        let roles_claim = config.jwt.roles_claim.clone();
        let namespaces = config
            .effective_namespaces()
            .into_iter()
            .map(|(name, config)| {
                let ns = Namespace {
                    name: name.clone(),
                    config,
                    roles_claim: roles_claim.clone(),
                };
                (name, Arc::new(ns))
            })
            .collect();
        // `sub` and the roles claim are read from their parsed forms in `Identity`.
        let mut read_claims: HashSet<String> = HashSet::new();
        for ns in config.effective_namespaces().values() {
            for rule in ns
                .subscribe
                .iter()
                .chain(&ns.publish)
                .chain(&ns.presence)
                .chain(&ns.history)
            {
                read_claims.extend(rule.claim.clone());
            }
        }
        read_claims.remove("sub");
        read_claims.remove(&config.jwt.roles_claim);
        Self {
            namespaces: Arc::new(namespaces),
            read_claims: Arc::new(read_claims),
            claim_sets: Arc::default(),
        }
    }

    /// Drops the claims no rule reads, so a long-lived connection does not keep
    /// its whole decoded token in memory, and shares the kept set with other
    /// connections that carry an equal one.
    pub fn retain_read_claims(&self, identity: &mut Identity) {
        if !identity.claims.keys().any(|k| self.read_claims.contains(k)) {
            identity.claims = empty_claims();
            return;
        }
        let kept: Vec<(String, serde_json::Value)> = identity
            .claims
            .iter()
            .filter(|(k, _)| self.read_claims.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Sized exactly: this map may live as long as the connection.
        let mut claims = serde_json::Map::with_capacity(kept.len());
        claims.extend(kept);
        let mut claim_sets = match self.claim_sets.lock() {
            Ok(sets) => sets,
            // The table holds no invariant a panic could break.
            Err(poisoned) => poisoned.into_inner(),
        };
        identity.claims = claim_sets.share(claims);
    }

    /// The namespace `channel` belongs to, if it is configured and the channel's
    /// shape fits it.
    pub fn namespace(&self, channel: &ChannelName) -> Result<&Arc<Namespace>, AccessError> {
        let ns = self
            .namespaces
            .get(channel.namespace())
            .ok_or_else(|| AccessError::UnknownChannel(channel.to_string()))?;
        let segments = channel.segments().count();
        if segments < ns.config.min_segments
            || segments > ns.config.max_segments
            || channel.segments().any(str::is_empty)
        {
            return Err(AccessError::UnknownChannel(channel.to_string()));
        }
        Ok(ns)
    }

    /// Checks that `identity` may do `action` on `channel`; returns its namespace.
    pub fn check(
        &self,
        identity: &Identity,
        channel: &ChannelName,
        action: Action,
    ) -> Result<&Arc<Namespace>, AccessError> {
        let ns = self.namespace(channel)?;
        if ns.allows(identity, channel, action) {
            Ok(ns)
        } else {
            Err(AccessError::PermissionDenied {
                action: match action {
                    Action::Subscribe => "subscribe",
                    Action::Publish => "publish",
                    Action::Presence => "read presence",
                    Action::History => "read history",
                },
                channel: channel.to_string(),
            })
        }
    }
}

impl Namespace {
    /// Whether any rule for `action` holds.
    pub fn allows(&self, identity: &Identity, channel: &ChannelName, action: Action) -> bool {
        let rules = match action {
            Action::Subscribe => &self.config.subscribe,
            Action::Publish => &self.config.publish,
            Action::Presence => &self.config.presence,
            Action::History => &self.config.history,
        };
        rules
            .iter()
            .any(|rule| self.rule_holds(rule, identity, channel))
    }

    /// Whether claim `name` equals or contains `value`. `sub` and the roles claim
    /// come from their parsed forms (connections do not keep them in `claims`).
    fn claim_contains(&self, identity: &Identity, name: &str, value: &str) -> bool {
        if name == "sub" {
            return &*identity.user == value;
        }
        if name == self.roles_claim {
            return identity.roles.iter().any(|r| r == value);
        }
        identity.claim_contains(name, value)
    }

    fn rule_holds(&self, rule: &Rule, identity: &Identity, channel: &ChannelName) -> bool {
        if let Some(role) = &rule.role {
            if !identity.roles.iter().any(|r| r == role) {
                return false;
            }
        }
        match (&rule.claim, rule.segment, &rule.value) {
            (Some(claim), Some(index), _) => match channel.segment(index) {
                Some(segment) => self.claim_contains(identity, claim, segment),
                None => false,
            },
            (Some(claim), None, Some(value)) => self.claim_contains(identity, claim, value),
            // Shapes without a claim are either `{}`/role-only (already checked) or
            // rejected by `Config::validate`; refuse them here too.
            (None, None, None) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(workspace: &str) -> Claims {
        let mut claims = Claims::new();
        claims.insert("workspaces".into(), serde_json::json!([workspace]));
        claims
    }

    #[test]
    fn equal_claim_sets_are_shared_and_dead_ones_swept() {
        let mut sets = ClaimSets::default();
        let first = sets.share(claims("acme"));
        let second = sets.share(claims("acme"));
        let other = sets.share(claims("globex"));
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, claims("globex"));

        drop((first, second, other));
        for i in 0..ClaimSets::MIN_SWEEP * 2 {
            drop(sets.share(claims(&format!("w{i}"))));
        }
        // Every set was dropped right away: sweeps keep the table small.
        assert!(
            sets.by_json.len() <= ClaimSets::MIN_SWEEP,
            "{}",
            sets.by_json.len()
        );
        let fresh = sets.share(claims("acme"));
        assert_eq!(*fresh, claims("acme"));
    }
}
