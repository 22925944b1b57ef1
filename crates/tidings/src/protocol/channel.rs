//! Channel names: validation and the namespace/segment view rules work on.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name (`[A-Za-z0-9_.:@/=-]`, 1–255 bytes).
///
/// Cheap to clone: the name is shared, since it is stored once per subscriber
/// and once per history entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name has a byte outside the allowed set.
    #[error("channel name may only contain A-Z a-z 0-9 and _ . : @ / = -")]
    BadCharacter,
}

impl ChannelName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.:@/=-".contains(&b);
        if !name.bytes().all(allowed) {
            return Err(ChannelNameError::BadCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:` (the whole name when there is none).
    pub fn namespace(&self) -> &str {
        self.0.split(':').next().unwrap_or(&self.0)
    }

    /// The `:`-separated segments; segment 0 is the namespace.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split(':')
    }

    /// Segment `index` (0 = namespace), if the name has that many.
    pub fn segment(&self, index: usize) -> Option<&str> {
        self.segments().nth(index)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_conventional_scopes() {
        let ch = ChannelName::parse("workspace:acme:applications:app123").unwrap();
        assert_eq!(ch.namespace(), "workspace");
        assert_eq!(ch.segment(1), Some("acme"));
        assert_eq!(ch.segment(3), Some("app123"));
        assert_eq!(ch.segment(4), None);
        assert_eq!(ChannelName::parse("user").unwrap().namespace(), "user");
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse(&"a".repeat(256)),
            Err(ChannelNameError::TooLong)
        );
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
        for bad in ["a b", "a\nb", "é", "a*", "a#b", "a\u{0}"] {
            assert_eq!(
                ChannelName::parse(bad),
                Err(ChannelNameError::BadCharacter),
                "{bad:?}"
            );
        }
    }
}
