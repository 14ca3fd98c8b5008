//! [`Clock`]: wall-clock time read off the monotonic clock, so that a warm
//! validation reads the clock once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Wall-clock time read off the monotonic clock. Re-anchored to the system
/// clock on every tick of the feed follower, successful or not (and at
/// start), so it follows the system clock to within a sync interval's drift.
#[derive(Debug)]
pub(crate) struct Clock {
    started: Instant,
    /// The system clock at `started`, in microseconds since the epoch.
    anchor: AtomicI64,
}

impl Clock {
    /// A clock anchored now.
    pub(crate) fn new() -> Self {
        let clock = Self {
            started: Instant::now(),
            anchor: AtomicI64::new(0),
        };
        clock.anchor();
        clock
    }

    /// Re-reads the system clock.
    pub(crate) fn anchor(&self) {
        // The monotonic reading first: a pause between the two reads then
        // makes this clock run early, so keys expire early, never late.
        let since = self.since_start(Instant::now());
        let utc = Utc::now().timestamp_micros();
        self.anchor.store(utc - since, Ordering::Relaxed);
    }

    /// Microseconds from the clock's start to `at`.
    pub(crate) fn since_start(&self, at: Instant) -> i64 {
        micros(at.saturating_duration_since(self.started))
    }

    /// The unix second starting the wall-clock minute of `at`.
    pub(crate) fn minute_start(&self, at: Instant) -> i64 {
        let micros = self.anchor.load(Ordering::Relaxed) + self.since_start(at);
        micros.div_euclid(60_000_000) * 60
    }

    /// The wall-clock time of `at` in milliseconds since the epoch (what
    /// rate-limit windows are numbered by), without building a date.
    pub(crate) fn unix_millis(&self, at: Instant) -> u64 {
        let micros = self.anchor.load(Ordering::Relaxed) + self.since_start(at);
        u64::try_from(micros / 1000).unwrap_or(0)
    }

    /// The wall-clock time of `at`.
    pub(crate) fn utc(&self, at: Instant) -> DateTime<Utc> {
        let micros = self.anchor.load(Ordering::Relaxed) + self.since_start(at);
        DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The safe direction for expiry: read after the system clock, this
    /// clock is never behind it (within the two microsecond truncations), so
    /// a key never validates past its `expires_at`.
    #[test]
    fn never_behind_the_system_clock_so_keys_never_expire_late() {
        let clock = Clock::new();
        let tolerance = chrono::TimeDelta::microseconds(2);
        for round in 0..10_000 {
            if round % 100 == 0 {
                clock.anchor();
            }
            let real = Utc::now();
            let reading = clock.utc(Instant::now());
            assert!(reading + tolerance >= real, "{reading} is before {real}");
        }
    }

    #[test]
    fn follows_the_monotonic_clock_between_anchors() {
        let clock = Clock::new();
        let start = Instant::now();
        let later = start + Duration::from_secs(90);
        assert_eq!(
            clock.utc(later) - clock.utc(start),
            chrono::TimeDelta::seconds(90)
        );
        // An instant before the clock's start reads as its start.
        let before = clock.started.checked_sub(Duration::from_secs(1));
        if let Some(before) = before {
            assert_eq!(clock.since_start(before), 0);
        }
        let now = clock.utc(Instant::now());
        assert!((Utc::now() - now).num_seconds().abs() < 5, "{now}");
    }

    #[test]
    fn micros_saturate() {
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
        assert_eq!(micros(Duration::MAX), i64::MAX);
    }
}
