//! Per-session back-off after a failed refresh.
//!
//! Without it, every request for a session whose refresh failed (Ave answering
//! 500, unreachable, or an answer lost) would call Ave again. After a failure
//! the session is served from its still-valid access token and its refresh is
//! not retried before the back-off ends: 1 s, doubling up to 30 s, stretched by
//! up to a quarter (spread per session so sessions that failed together do
//! not retry together), never shorter than Ave's `Retry-After`. Two rules keep
//! users signed in: one more attempt is made shortly before the access token
//! expires (`LAST_CHANCE`), and once it has expired the session is retried at
//! least every `MAX_AFTER_EXPIRY` (its requests get 503 with `Retry-After`
//! meanwhile). The table is per process; entries go on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::SessionRowHash;

/// The first back-off.
pub(crate) const FIRST: Duration = Duration::from_secs(1);
/// The longest back-off while the access token is valid.
pub(crate) const MAX: Duration = Duration::from_secs(30);
/// One more attempt this long before the access token expires.
pub(crate) const LAST_CHANCE: Duration = Duration::from_secs(2);
/// The longest wait past the access token's expiry.
pub(crate) const MAX_AFTER_EXPIRY: Duration = Duration::from_secs(5);
/// Ave's `Retry-After` is honoured up to this.
const MAX_HINT: Duration = Duration::from_secs(300);
/// Above this many entries, old ones are pruned.
const PRUNE_ABOVE: usize = 4096;
/// Entries whose back-off ended this long ago are pruned.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How long to wait before the next refresh of a session after its
/// `failures`-th failure in a row (`failures >= 1`). `access_left` is how long
/// its access token stays valid (zero if expired); `hint` is Ave's
/// `Retry-After`; `spread` (0–255) stretches the delay by up to a quarter.
pub(crate) fn next_delay(failures: u32, access_left: Duration, hint: Option<Duration>, spread: u8) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let mut delay = FIRST.saturating_mul(1u32 << doublings).min(MAX);
    delay += delay.mul_f64(f64::from(spread) / 255.0 / 4.0);
    // Never wait long past the expiry: users are blocked by then.
    delay = delay.min(access_left + MAX_AFTER_EXPIRY);
    // One more attempt shortly before the access token expires.
    if access_left > LAST_CHANCE + FIRST && delay > access_left - LAST_CHANCE {
        delay = access_left - LAST_CHANCE;
    }
    if let Some(hint) = hint {
        delay = delay.max(hint.min(MAX_HINT));
    }
    delay.max(Duration::from_millis(500))
}

struct Entry {
    failures: u32,
    until: Instant,
}

/// The back-off state of the sessions whose last refresh failed.
#[derive(Default)]
pub(crate) struct Backoffs {
    entries: Mutex<HashMap<SessionRowHash, Entry>>,
}

impl Backoffs {
    /// The time left before `key` may be refreshed again, if it is backing off.
    pub(crate) fn pending(&self, key: &SessionRowHash) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let left = entries.get(key)?.until.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Records a failed refresh of `key`; returns the back-off it starts.
    pub(crate) fn failed(&self, key: &SessionRowHash, access_left: Duration, hint: Option<Duration>) -> Duration {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, e| e.until + FORGET_AFTER > now);
        }
        let entry = entries.entry(*key).or_insert(Entry {
            failures: 0,
            until: now,
        });
        entry.failures = entry.failures.saturating_add(1);
        let spread = key.as_bytes()[entry.failures as usize % 32];
        let delay = next_delay(entry.failures, access_left, hint, spread);
        entry.until = now + delay;
        delay
    }

    /// Forgets `key` (its refresh succeeded, or the session ended).
    pub(crate) fn succeeded(&self, key: &SessionRowHash) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| next_delay(n, HOUR, None, 0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(next_delay(u32::MAX, HOUR, None, 0), MAX);
    }

    #[test]
    fn spread_stretches_by_at_most_a_quarter() {
        assert_eq!(next_delay(3, HOUR, None, 255), Duration::from_secs(5));
        assert!(next_delay(3, HOUR, None, 128) > Duration::from_secs(4));
    }

    #[test]
    fn one_more_attempt_shortly_before_expiry() {
        // 10 s left, a 16 s back-off would overshoot: retry at 8 s instead.
        assert_eq!(next_delay(5, Duration::from_secs(10), None, 0), Duration::from_secs(8));
        // A short back-off that ends before the last chance is kept.
        assert_eq!(next_delay(1, Duration::from_secs(10), None, 0), FIRST);
    }

    #[test]
    fn after_expiry_the_wait_is_short() {
        assert_eq!(next_delay(8, Duration::ZERO, None, 0), MAX_AFTER_EXPIRY);
        assert_eq!(next_delay(8, Duration::from_secs(2), None, 0), Duration::from_secs(7));
        assert_eq!(next_delay(1, Duration::ZERO, None, 0), FIRST);
    }

    #[test]
    fn ave_retry_after_is_honoured_within_bounds() {
        assert_eq!(
            next_delay(1, HOUR, Some(Duration::from_secs(40)), 0),
            Duration::from_secs(40)
        );
        assert_eq!(
            next_delay(1, Duration::ZERO, Some(Duration::from_secs(7)), 0),
            Duration::from_secs(7)
        );
        assert_eq!(next_delay(1, HOUR, Some(Duration::from_secs(86_400)), 0), MAX_HINT);
    }

    #[test]
    fn the_table_backs_off_and_forgets_on_success() {
        let table = Backoffs::default();
        let key = SessionRowHash::from_bytes([7; 32]);
        assert_eq!(table.pending(&key), None);
        let first = table.failed(&key, HOUR, None);
        assert!(first >= FIRST);
        assert!(table.pending(&key).is_some_and(|d| d <= first));
        let second = table.failed(&key, HOUR, None);
        assert!(second > first, "{second:?} > {first:?}");
        table.succeeded(&key);
        assert_eq!(table.pending(&key), None);
    }

    proptest::proptest! {
        #[test]
        fn never_zero_and_never_long_past_expiry(
            failures in 1u32..100,
            left_ms in 0u64..7_200_000,
            hint in proptest::option::of(0u64..1000),
            spread: u8,
        ) {
            let left = Duration::from_millis(left_ms);
            let hint = hint.map(Duration::from_secs);
            let d = next_delay(failures, left, hint, spread);
            proptest::prop_assert!(d >= Duration::from_millis(500));
            let bound = (left + MAX_AFTER_EXPIRY).max(hint.unwrap_or_default().min(MAX_HINT)).max(Duration::from_millis(500));
            proptest::prop_assert!(d <= bound, "{:?} > {:?}", d, bound);
        }
    }
}
