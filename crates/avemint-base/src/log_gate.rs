//! `LogGate`: at most one log line per interval and per cause for a warning
//! that an outside party can trigger at will (a busy or unreachable Ave, a
//! refused network, a proxy sending junk, a burst of 503s), with a count of
//! the lines held back, so logs stay readable and cannot be flooded. One gate
//! per kind of line; its causes (`K`) are a small fixed set: a failure label,
//! a route and status, or `()` for a line with a single cause.
//!
//! [`warn_gated!`] writes a gated line: the first of each interval and cause
//! at `WARN` with `similar_lines_held_back` (how many were held back since the
//! previous one), the others at `DEBUG`, so `RUST_LOG=debug` still shows each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval of the gates on what an outage repeats for every request (failed renewals, failed Ave calls,
/// 5xx and 429 access lines).
pub const OUTAGE_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one log line per cause through per interval and counts the ones held back.
pub struct LogGate<K = ()> {
    every: Duration,
    /// Per cause: when a line last passed, and how many were held back since.
    state: Mutex<Vec<(K, Instant, u64)>>,
}

impl<K: PartialEq> LogGate<K> {
    /// A gate letting one line per cause through every `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(Vec::new()),
        }
    }

    /// `Some(held back since the last line of this cause)` when a line for `cause` may be logged now.
    pub fn pass_for(&self, cause: K) -> Option<u64> {
        self.pass_at(cause, Instant::now())
    }

    /// `pass_for` at `now` (tests drive time by hand).
    pub(crate) fn pass_at(&self, cause: K, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.iter_mut().find(|(k, _, _)| *k == cause) {
            Some((_, last, held_back)) if now.saturating_duration_since(*last) < self.every => {
                *held_back += 1;
                None
            }
            Some((_, last, held_back)) => {
                *last = now;
                Some(std::mem::take(held_back))
            }
            None => {
                state.push((cause, now, 0));
                Some(0)
            }
        }
    }
}

impl LogGate {
    /// `pass_for` of a gate with a single cause.
    pub fn pass(&self) -> Option<u64> {
        self.pass_for(())
    }
}

/// `tracing::warn!(fields…, "message")` through `gate` for `cause`: at `WARN` with `similar_lines_held_back` when
/// the gate lets it pass, else at `DEBUG`. `warn_gated!(GATE, cause, field = value, …, "message")`.
#[macro_export]
macro_rules! warn_gated {
    ($gate:expr, $cause:expr, $($line:tt)+) => {
        match $gate.pass_for($cause) {
            Some(held_back) => ::tracing::warn!(similar_lines_held_back = held_back, $($line)+),
            None => ::tracing::debug!($($line)+),
        }
    };
}
pub use crate::warn_gated;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_counts_the_held_back_ones() {
        let gate = LogGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(gate.pass_at((), at(0)), Some(0));
        assert_eq!(gate.pass_at((), at(1)), None);
        assert_eq!(gate.pass_at((), at(59)), None);
        assert_eq!(
            gate.pass_at((), at(60)),
            Some(2),
            "the next line counts the held-back ones"
        );
        assert_eq!(gate.pass_at((), at(61)), None);
    }

    #[test]
    fn each_cause_has_its_own_interval_and_count() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(gate.pass_at("unreachable", at(0)), Some(0));
        assert_eq!(
            gate.pass_at("unavailable", at(1)),
            Some(0),
            "another cause is not held back"
        );
        for s in 2..9 {
            assert_eq!(gate.pass_at("unreachable", at(s)), None);
        }
        assert_eq!(gate.pass_at("unavailable", at(9)), None);
        assert_eq!(gate.pass_at("unreachable", at(10)), Some(7));
        assert_eq!(gate.pass_at("unavailable", at(11)), Some(1));
    }
}
