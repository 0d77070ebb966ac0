//! `LogGate`: at most one log line per interval for a warning that an outside
//! party can trigger at will (a busy Ave, a refused network, a proxy sending
//! junk), with a count of the lines held back, so logs stay readable and
//! cannot be flooded. One gate per kind of line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one log line through per interval and counts the ones held back.
pub(crate) struct LogGate {
    every: Duration,
    /// When a line last passed, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogGate {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub(crate) fn pass(&self) -> Option<u64> {
        self.pass_at(Instant::now())
    }

    /// `pass` at `now` (tests drive time by hand).
    pub(crate) fn pass_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_counts_the_held_back_ones() {
        let gate = LogGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(gate.pass_at(at(0)), Some(0));
        assert_eq!(gate.pass_at(at(1)), None);
        assert_eq!(gate.pass_at(at(59)), None);
        assert_eq!(gate.pass_at(at(60)), Some(2), "the next line counts the held-back ones");
        assert_eq!(gate.pass_at(at(61)), None);
    }
}
