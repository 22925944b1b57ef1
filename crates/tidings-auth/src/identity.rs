//! What a verified token says about the connection.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Who a verified token says the connection is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`: a non-empty string.
    pub user: Arc<str>,
    /// The token's `exp`, as Unix seconds; a later one than
    /// 9999-12-31T23:59:59Z is read as that.
    pub expires_at: Option<u64>,
    /// From the roles claim: an array of strings, or a single string; missing
    /// or `null` means no roles.
    pub roles: Arc<[String]>,
    /// The whole payload, for permission rules.
    pub claims: Arc<Map<String, Value>>,
    /// From the info claim (anything but `null`), for presence.
    pub info: Option<Value>,
}

impl Identity {
    /// True when claim `name` is a string equal to `value` or an array
    /// containing the string `value`.
    pub fn claim_contains(&self, name: &str, value: &str) -> bool {
        match self.claims.get(name) {
            Some(Value::String(s)) => s == value,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(value)),
            _ => false,
        }
    }

    /// True when [`roles`](Self::roles) contains `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The strings of claim `name`: the string itself, or the string items of
    /// an array (other items are skipped). Empty when the claim is missing or
    /// of another type.
    pub fn claim_strings(&self, name: &str) -> Vec<&str> {
        match self.claims.get(name) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}
