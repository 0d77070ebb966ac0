//! Wall time: one `UnixTime` and one `Clock`.
//!
//! Why a module: expiry decides who stays signed in (idle timeout, absolute
//! lifetime, Ave's access token), which key signs (rotation) and whether a
//! login cookie or a hook call is still fresh. Written as bare `i64` and `u64`
//! seconds with casts, a sign or an overflow slips through unnoticed, and
//! every component read the system clock itself, so none of it could be
//! tested without waiting. `UnixTime` is the one timestamp type: whole seconds
//! since the epoch, arithmetic with `Duration` that saturates instead of
//! wrapping, and conversions only at the edges (SQL columns, JWT `iat`/`exp`,
//! manifest fields, sealed records), where it is stored as the same number as
//! before. `Clock` is the one source of "now": `Clock::System` in production,
//! a `ManualClock` in tests, handed to the components that need the time.
//!
//! This is a leaf: it imports nothing of the crate. Monotonic timers (timeouts,
//! back-offs, rate limits) use `std::time::Instant` and are not wall time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in wall time: whole seconds since 1970-01-01T00:00:00Z.
///
/// Serialized (JSON) and stored (SQL) as the plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(i64);

impl UnixTime {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Self = Self(0);
    /// The earliest representable time (a "never" that is before everything).
    pub const MIN: Self = Self(i64::MIN);

    /// The time `secs` seconds after the epoch (a stored column, a test's fixed time).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs)
    }

    /// The time from an unsigned number of seconds (a JWT `iat`/`exp`, a key file name); saturates.
    pub fn from_unsigned(secs: u64) -> Self {
        Self(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// Seconds since the epoch (what SQL columns and sealed records hold).
    pub const fn as_secs(self) -> i64 {
        self.0
    }

    /// Seconds since the epoch, zero for times before it (JWT `iat`/`exp`, the hook timestamp).
    pub fn as_unsigned(self) -> u64 {
        u64::try_from(self.0).unwrap_or(0)
    }

    /// `self + d`, saturating at the far future.
    pub(crate) fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(secs_of(d)))
    }

    /// `self - d`, saturating at the far past.
    pub(crate) fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(secs_of(d)))
    }

    /// How long after `earlier` this is; zero if `earlier` is not before it.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_secs(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// Whole seconds of `d` as an `i64` (saturating).
fn secs_of(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl std::ops::Add<Duration> for UnixTime {
    type Output = Self;
    /// Saturating.
    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl std::ops::Sub<Duration> for UnixTime {
    type Output = Self;
    /// Saturating.
    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

impl std::ops::AddAssign<Duration> for UnixTime {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl std::ops::SubAssign<Duration> for UnixTime {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where "now" comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock (production).
    #[default]
    System,
    /// A clock a test sets and advances.
    Manual(ManualClock),
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> UnixTime {
        match self {
            Self::System => UnixTime(time::OffsetDateTime::now_utc().unix_timestamp()),
            Self::Manual(m) => m.now(),
        }
    }
}

/// A clock that stands still until it is set or advanced; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixTime) -> Self {
        Self(Arc::new(AtomicI64::new(start.0)))
    }

    /// The time it shows.
    pub fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }

    /// Sets it to `t`.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    /// Moves it `d` forward.
    pub fn advance(&self, d: Duration) {
        self.set(self.now() + d);
    }

    /// A `Clock` reading this one.
    pub fn clock(&self) -> Clock {
        Clock::Manual(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = UnixTime::from_secs(100);
        assert_eq!(t + Duration::from_secs(5), UnixTime::from_secs(105));
        assert_eq!(t - Duration::from_secs(500), UnixTime::from_secs(-400));
        assert_eq!(UnixTime::MIN - Duration::from_secs(1), UnixTime::MIN);
        assert_eq!(t + Duration::MAX, UnixTime::from_secs(i64::MAX));
        assert_eq!(t.saturating_duration_since(UnixTime::EPOCH), Duration::from_secs(100));
        assert_eq!(UnixTime::EPOCH.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(UnixTime::from_secs(-3).as_unsigned(), 0);
        assert_eq!(UnixTime::from_unsigned(u64::MAX).as_secs(), i64::MAX);
    }

    #[test]
    fn stored_as_the_plain_number() {
        assert_eq!(
            serde_json::to_string(&UnixTime::from_secs(1_700_000_000)).expect("json"),
            "1700000000"
        );
        let t: UnixTime = serde_json::from_str("42").expect("json");
        assert_eq!(t, UnixTime::from_secs(42));
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let manual = ManualClock::new(UnixTime::from_secs(10));
        let clock = manual.clock();
        assert_eq!(clock.now(), UnixTime::from_secs(10));
        manual.advance(Duration::from_secs(3));
        assert_eq!(clock.clone().now(), UnixTime::from_secs(13));
        let system = Clock::System.now();
        assert!(system > UnixTime::from_secs(1_600_000_000));
    }
}
