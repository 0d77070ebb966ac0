//! `BackPressure`: Ave's back-pressure holds back the whole client, not one session.
//!
//! Two states gate every token-endpoint call of this process (code exchanges
//! and refreshes alike) before anything is sent or any budget is taken:
//!
//! - **a pause**: Ave answered 429 (`Retry-After`, or [`DEFAULT_PAUSE`]
//!   without one, at most [`MAX_PAUSE`]): no token call goes out until it
//!   ends. The pause is also shared through the session store (one row read
//!   and written by every instance on that store, PostgreSQL or one SQLite
//!   file; see `session::renew::Renewer::share_ave_pause`), so a fleet sends
//!   Ave a handful of calls during a rate limit, not one per session;
//! - **a circuit** (closed / open / half-open): [`FAILURES_TO_OPEN`] failures
//!   in a row that say Ave is unwell (refused or failed connections, 5xx,
//!   timeouts, lost answers) open it. While open, calls are refused at once;
//!   when the open period ends, one call goes through as a probe
//!   (half-open) while the others are still refused: its success closes the
//!   circuit, its failure opens it again for twice as long, up to
//!   [`MAX_OPEN`]. An outage so costs one probe per [`MAX_OPEN`] per
//!   instance, and recovery after Ave returns takes at most [`MAX_OPEN`]
//!   (half of it on average) plus a request.
//!
//! A refused call was never sent: the caller answers 503 with `Retry-After`
//! and keeps the refresh token. Any answer from Ave that is not a 5xx or 429
//! (a token, `invalid_grant`, …) counts as Ave being well.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The circuit opening (again, after each failed probe): one warning every 10 s, with a count (`log_gate`).
pub static CIRCUIT_OPENED: avemint_base::log_gate::LogGate =
    avemint_base::log_gate::LogGate::new(avemint_base::log_gate::OUTAGE_INTERVAL);

/// Failures in a row that open the circuit.
pub(crate) const FAILURES_TO_OPEN: u32 = 5;
/// The first open period.
pub(crate) const FIRST_OPEN: Duration = Duration::from_secs(1);
/// The longest open period (doubling from `FIRST_OPEN`).
pub(crate) const MAX_OPEN: Duration = Duration::from_secs(4);
/// The pause after a 429 without `Retry-After`.
pub(crate) const DEFAULT_PAUSE: Duration = Duration::from_secs(5);
/// Ave's `Retry-After` is honoured up to this.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The circuit's state, as `/metrics` shows it (`avemint_ave_circuit_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Why a call was held back (nothing was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldBack {
    /// Ave rate limited this client (here or at another instance): paused.
    Paused,
    /// Ave failed several calls in a row: the circuit is open.
    CircuitOpen,
}

impl std::fmt::Display for HoldBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldBack::Paused => "Ave asked this client to pause (HTTP 429)",
            HoldBack::CircuitOpen => "Ave failed several calls in a row; calls are held back",
        })
    }
}

/// A call that may go out; `probe` when it is the half-open circuit's one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    pub probe: bool,
}

/// How a call that went out ended, as far as Ave's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Ave answered (a token or a 4xx other than 429).
    Well,
    /// Ave answered 429, with its `Retry-After`.
    RateLimited(Option<Duration>),
    /// Refused or failed connection, 5xx, timeout, a lost answer.
    Unwell,
}

#[derive(Debug)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration, probe_out: bool },
}

#[derive(Debug)]
struct State {
    paused_until: Option<Instant>,
    /// Set when a local 429 started or lengthened the pause, until it is shared.
    unshared: bool,
    circuit: Circuit,
}

/// The pause and the circuit of one Ave client.
#[derive(Debug)]
pub(crate) struct BackPressure {
    state: Mutex<State>,
}

impl Default for BackPressure {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                paused_until: None,
                unshared: false,
                circuit: Circuit::Closed { failures: 0 },
            }),
        }
    }
}

/// Whole seconds, rounded up, at least one: what `Retry-After` says.
pub(crate) fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
}

impl BackPressure {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a call go out, or says why not and when to try again.
    pub(crate) fn admit(&self) -> Result<Admission, (HoldBack, Duration)> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(until) = s.paused_until {
            if until > now {
                return Err((HoldBack::Paused, whole_secs(until - now)));
            }
            s.paused_until = None;
        }
        match s.circuit {
            Circuit::Closed { .. } => Ok(Admission { probe: false }),
            Circuit::Open { until, period } if until <= now => {
                s.circuit = Circuit::HalfOpen {
                    period,
                    probe_out: true,
                };
                tracing::info!("Ave circuit half-open: one probe call goes out");
                Ok(Admission { probe: true })
            }
            Circuit::Open { until, .. } => Err((HoldBack::CircuitOpen, whole_secs(until - now))),
            Circuit::HalfOpen { ref mut probe_out, .. } if !*probe_out => {
                *probe_out = true;
                Ok(Admission { probe: true })
            }
            Circuit::HalfOpen { period, .. } => Err((HoldBack::CircuitOpen, whole_secs(period.min(FIRST_OPEN)))),
        }
    }

    /// A call admitted by `admit` was not sent after all (or its connection was never made and it said nothing
    /// about Ave's health): a probe slot is freed for the next call.
    pub(crate) fn unused(&self, admission: Admission) {
        if !admission.probe {
            return;
        }
        let mut s = self.lock();
        if let Circuit::HalfOpen { ref mut probe_out, .. } = s.circuit {
            *probe_out = false;
        }
    }

    /// Records how an admitted call ended.
    pub(crate) fn record(&self, admission: Admission, health: Health) {
        let now = Instant::now();
        let mut s = self.lock();
        match health {
            Health::Well => {
                if !matches!(s.circuit, Circuit::Closed { failures: 0 }) {
                    if !matches!(s.circuit, Circuit::Closed { .. }) {
                        tracing::info!("Ave answered again: circuit closed");
                    }
                    s.circuit = Circuit::Closed { failures: 0 };
                }
            }
            Health::RateLimited(retry_after) => {
                let pause = retry_after
                    .unwrap_or(DEFAULT_PAUSE)
                    .clamp(Duration::from_secs(1), MAX_PAUSE);
                self.pause_locked(&mut s, now + pause, true);
                // Ave is up: a probe that met a 429 closes the circuit (the pause holds calls back).
                if admission.probe || !matches!(s.circuit, Circuit::Closed { .. }) {
                    s.circuit = Circuit::Closed { failures: 0 };
                }
            }
            Health::Unwell => {
                let open_for = match s.circuit {
                    Circuit::Closed { ref mut failures } => {
                        *failures += 1;
                        (*failures >= FAILURES_TO_OPEN).then_some(FIRST_OPEN)
                    }
                    Circuit::HalfOpen { period, .. } if admission.probe => Some((period * 2).min(MAX_OPEN)),
                    // A call admitted before the circuit opened: the circuit is already open.
                    Circuit::HalfOpen { .. } | Circuit::Open { .. } => None,
                };
                if let Some(period) = open_for {
                    avemint_base::log_gate::warn_gated!(
                        CIRCUIT_OPENED,
                        (),
                        open_ms = period.as_millis() as u64,
                        "Ave failed {FAILURES_TO_OPEN} or more calls in a row: circuit open, token calls held back"
                    );
                    s.circuit = Circuit::Open {
                        until: now + period,
                        period,
                    };
                }
            }
        }
    }

    fn pause_locked(&self, s: &mut State, until: Instant, local: bool) {
        if s.paused_until.is_none_or(|t| t < until) {
            s.paused_until = Some(until);
            s.unshared |= local;
        }
    }

    /// Pauses every token call for `d` (Ave's `Retry-After` learnt from another instance).
    pub(crate) fn pause_for(&self, d: Duration) {
        let mut s = self.lock();
        self.pause_locked(&mut s, Instant::now() + d.min(MAX_PAUSE), false);
    }

    /// The pause this process started (a 429 it received) and has not shared yet: the time left. Taking it
    /// marks it shared.
    pub(crate) fn take_unshared_pause(&self) -> Option<Duration> {
        let mut s = self.lock();
        if !std::mem::take(&mut s.unshared) {
            return None;
        }
        s.paused_until
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// The time left of the pause (zero when none) and the circuit's state, for `/metrics`.
    pub(crate) fn snapshot(&self) -> (Duration, CircuitState) {
        let now = Instant::now();
        let s = self.lock();
        let paused = s
            .paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let circuit = match s.circuit {
            Circuit::Closed { .. } => CircuitState::Closed,
            Circuit::Open { until, .. } if until > now => CircuitState::Open,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
        };
        (paused, circuit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(bp: &BackPressure, n: u32) {
        for _ in 0..n {
            let a = bp.admit().expect("admitted");
            bp.record(a, Health::Unwell);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_failures_opens_the_circuit_and_one_probe_closes_it() {
        let bp = BackPressure::default();
        fail(&bp, FAILURES_TO_OPEN - 1);
        assert_eq!(bp.snapshot().1, CircuitState::Closed);
        fail(&bp, 1);
        assert_eq!(bp.snapshot().1, CircuitState::Open);
        let (why, retry) = bp.admit().expect_err("open");
        assert_eq!((why, retry), (HoldBack::CircuitOpen, FIRST_OPEN));
        tokio::time::advance(FIRST_OPEN).await;
        let probe = bp.admit().expect("the probe");
        assert!(probe.probe);
        assert_eq!(bp.admit().expect_err("one probe at a time").0, HoldBack::CircuitOpen);
        bp.record(probe, Health::Unwell);
        // Open again, twice as long.
        tokio::time::advance(FIRST_OPEN).await;
        assert!(bp.admit().is_err());
        tokio::time::advance(FIRST_OPEN).await;
        let probe = bp.admit().expect("the next probe");
        // A probe that was not sent frees its slot.
        bp.unused(probe);
        let probe = bp.admit().expect("the probe again");
        bp.record(probe, Health::Well);
        assert_eq!(bp.snapshot().1, CircuitState::Closed);
        assert!(bp.admit().is_ok_and(|a| !a.probe));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_costs_one_probe_per_open_period() {
        let bp = BackPressure::default();
        let mut sent = 0;
        // 30 s of refused connections, a call attempted every 10 ms.
        for _ in 0..3000 {
            if let Ok(a) = bp.admit() {
                sent += 1;
                bp.record(a, Health::Unwell);
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // 5 to open, then probes at 1, 2, 4, 4, 4… s.
        assert!(sent <= FAILURES_TO_OPEN + 10, "{sent} calls");
        // Ave is back: the next probe, within MAX_OPEN, closes the circuit.
        let back = Instant::now();
        loop {
            if let Ok(a) = bp.admit() {
                bp.record(a, Health::Well);
                break;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(back.elapsed() <= MAX_OPEN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_call_for_its_retry_after() {
        let bp = BackPressure::default();
        let a = bp.admit().expect("admitted");
        bp.record(a, Health::RateLimited(Some(Duration::from_secs(30))));
        assert_eq!(bp.admit(), Err((HoldBack::Paused, Duration::from_secs(30))));
        assert_eq!(bp.take_unshared_pause(), Some(Duration::from_secs(30)));
        assert_eq!(bp.take_unshared_pause(), None, "shared once");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(bp.admit(), Err((HoldBack::Paused, Duration::from_secs(1))));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(bp.admit().is_ok());
        // A pause learnt from another instance is not shared back.
        bp.pause_for(Duration::from_secs(10));
        assert_eq!(bp.admit().expect_err("paused").0, HoldBack::Paused);
        assert_eq!(bp.take_unshared_pause(), None);
        assert_eq!(bp.snapshot().0, Duration::from_secs(10));
    }
}
