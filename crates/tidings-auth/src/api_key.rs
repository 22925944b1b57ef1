//! Backend API keys.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// A backend API key, compared in constant time.
///
/// Only the length of the key can leak through timing. An empty key never
/// matches anything, so a blank setting cannot open the API.
///
/// `Debug` prints `ApiKey(***)`; there is no `Display`. It (de)serializes as a
/// plain string so that it can sit in a configuration file.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// A new random key (see [`crate::generate_secret`]).
    pub fn generate() -> Self {
        Self(crate::generate_secret())
    }

    /// True when `presented` is this key. Constant time in the key's content;
    /// always false for an empty key.
    pub fn matches(&self, presented: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// True when the key is empty (and so matches nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key itself, e.g. to print it once when it was generated for
    /// development mode. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}
