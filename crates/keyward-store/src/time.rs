//! Time helpers. Every timestamp the store writes is truncated to microseconds,
//! the precision PostgreSQL and MySQL `datetime(6)` keep, so a value returned
//! by a write equals the value read back later on every backend.

use chrono::{DateTime, FixedOffset, SecondsFormat, SubsecRound, TimeDelta, Utc};

/// The current time, truncated to microseconds.
pub(crate) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

/// `at` truncated to microseconds.
pub(crate) fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// The smallest microsecond instant not before `at`: for a stored
/// (microsecond) value `x`, `x < at` exactly when `x < ceil_micros(at)`.
pub(crate) fn ceil_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let truncated = micros(at);
    if truncated == at {
        at
    } else {
        truncated
            .checked_add_signed(TimeDelta::microseconds(1))
            .unwrap_or(truncated)
    }
}

/// `at` as the entities store it: truncated to microseconds, at offset zero
/// (see `entity` for why not `DateTime<Utc>`).
pub(crate) fn db(at: DateTime<Utc>) -> DateTime<FixedOffset> {
    micros(at).fixed_offset()
}

/// A stored timestamp back in UTC.
pub(crate) fn utc(at: DateTime<FixedOffset>) -> DateTime<Utc> {
    at.with_timezone(&Utc)
}

/// RFC 3339 with exactly six fractional digits and `Z`, e.g.
/// `2026-11-23T10:00:00.123456Z`: the form used in event changes and hashes.
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_microseconds() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(micros(at).timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(ceil_micros(at).timestamp_subsec_nanos(), 123_457_000);
        let exact = micros(at);
        assert_eq!(ceil_micros(exact), exact);
        assert_eq!(rfc3339(exact), "2023-11-14T22:13:20.123456Z");
    }
}
