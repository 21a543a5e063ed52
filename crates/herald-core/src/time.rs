//! The two ways herald writes time (CONTRACT §1.5).

use chrono::{DateTime, Utc};

/// `session_start_time`: UTC, microseconds, no offset, as the seed shows it
/// (`2020-10-14T09:42:07.151657`).
pub fn session_start_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Every other timestamp: RFC 3339, milliseconds, `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Microseconds since the Unix epoch, the form times are stored in
/// (`session_start_time` shows microseconds).
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_match_the_contract() {
        let t = Utc.with_ymd_and_hms(2020, 10, 14, 9, 42, 7).unwrap()
            + chrono::Duration::microseconds(151_657);
        assert_eq!(session_start_time(t), "2020-10-14T09:42:07.151657");
        assert_eq!(rfc3339(t), "2020-10-14T09:42:07.151Z");
        assert_eq!(from_micros(to_micros(t)), t);
    }
}
