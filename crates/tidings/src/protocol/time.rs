//! Timestamps (RFC 3339 UTC with milliseconds) and identifiers.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats `t` (taken as UTC) the way the contract writes timestamps.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    // Formatting with a fixed, valid description cannot fail for in-range dates.
    utc.format(RFC3339_MILLIS)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The last second a contract timestamp can write (four-digit years):
/// 9999-12-31T23:59:59Z.
const LATEST_TIMESTAMP: i64 = 253_402_300_799;

/// Formats unix seconds as a contract timestamp; a later time is written
/// as the latest one.
pub fn format_unix_seconds(secs: u64) -> String {
    let secs = i64::try_from(secs).map_or(LATEST_TIMESTAMP, |s| s.min(LATEST_TIMESTAMP));
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format_timestamp(t)
}

/// The current time as a contract timestamp.
pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

/// A new connection id (`c_` + ULID).
pub fn new_client_id() -> String {
    format!("c_{}", ulid::Ulid::generate())
}

/// A new event id (`e_` + ULID).
pub fn new_event_id() -> String {
    format!("e_{}", ulid::Ulid::generate())
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_milliseconds_and_z() {
        assert_eq!(super::format_unix_seconds(0), "1970-01-01T00:00:00.000Z");
        for late in [253_402_300_799, 253_402_300_800, u64::MAX] {
            assert_eq!(super::format_unix_seconds(late), "9999-12-31T23:59:59.000Z");
        }
        let now = super::now_timestamp();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'));
    }
}
