//! `TokenBudget`: keeps this process under Ave's token-endpoint rate limit,
//! and keeps a share of that limit for renewals.
//!
//! Ave allows 180 token-endpoint calls per minute per client id, shared by
//! every user and every instance (`docs/ave-protocol.md` §1.2). The
//! budget is a sliding one-minute window of `per_minute` calls, split in two
//! classes:
//!
//! - **renewals** (`refresh_token` grant) may use the whole window;
//! - **sign-ins** (`authorization_code` grant) may use at most
//!   `per_minute - reserve`, where `reserve` is a third of the budget. Code
//!   exchanges are the calls a stranger can cause (one `/auth/login` plus one
//!   `/auth/callback?code=junk`), so however many of them arrive, a third of
//!   the budget stays free for the renewals of existing sessions.
//!
//! A call that finds its class full waits for room, but never past
//! `max_wait`: a caller whose turn would come later is refused at once with
//! the time until room frees up (the HTTP layer answers 503 with
//! `Retry-After`) and nothing is sent to Ave. The window's lock is a plain
//! mutex held for a few comparisons only, never across a sleep: waiters sleep
//! unlocked and look again when the call that blocks them leaves the window.
//! Only a caller that found no room and slept counts as a wait: waits and
//! refusals are counted in `/metrics` and logged at most once per
//! [`LOG_EVERY`] per class; a call that found room at once is neither.
//!
//! The wait happens before anything is sent, so it never shortens the time
//! Ave has to answer (the Ave client starts its timeout at the send). A call
//! taken but never sent, or whose connection to Ave was never made, is given
//! back (`refund`): Ave never saw it, so an outage does not use up the budget.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::time::Instant;

pub use avemint_base::log_gate::LogGate;

/// The length of the sliding window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// The least time between two "the budget made requests wait" log lines of one class.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Which share of the budget a call draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetClass {
    /// A refresh of an existing session's tokens: may use the whole budget.
    Renewal,
    /// A sign-in's code exchange: may not use the share reserved for renewals.
    SignIn,
}

impl BudgetClass {
    /// The metrics and log label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            BudgetClass::Renewal => "renewal",
            BudgetClass::SignIn => "sign_in",
        }
    }
}

/// The budget had no room within the allowed wait; nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Ave token-endpoint budget exhausted; room in {} s", retry_after.as_secs())]
pub(crate) struct BudgetExhausted {
    /// When to try again (whole seconds, at least one).
    pub retry_after: Duration,
}

/// A call taken from the budget: when (to give it back) and how long the caller waited for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    class: BudgetClass,
    at: Instant,
    /// Zero unless the caller found no room and slept until some freed up.
    pub waited: Duration,
}

/// The state of the window now, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// Calls per sliding minute in all.
    pub per_minute: u32,
    /// The part of it sign-ins can never take.
    pub renewal_reserve: u32,
    /// The most sign-ins per sliding minute.
    pub sign_in_limit: u32,
    /// Renewals in the last minute.
    pub renewal_used: u32,
    /// Sign-ins in the last minute.
    pub sign_in_used: u32,
    /// Renewals that could start now.
    pub renewal_available: u32,
    /// Sign-ins that could start now.
    pub sign_in_available: u32,
    /// Renewals waiting for room now.
    pub renewal_waiting: u32,
    /// Sign-ins waiting for room now.
    pub sign_in_waiting: u32,
}

/// Counts a caller as waiting for room while it lives.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, AtomicOrdering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

/// The calls of the last minute, oldest first.
#[derive(Default)]
struct Window {
    calls: VecDeque<(Instant, BudgetClass)>,
    sign_ins: usize,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some(&(t, class)) = self.calls.front() {
            if now.saturating_duration_since(t) < WINDOW {
                break;
            }
            self.calls.pop_front();
            if class == BudgetClass::SignIn {
                self.sign_ins -= 1;
            }
        }
    }
}

/// A sliding-window limiter for calls to Ave's token endpoint.
pub(crate) struct TokenBudget {
    per_minute: u32,
    reserve: u32,
    max_wait: Duration,
    window: Mutex<Window>,
    waits_logged: [LogGate; 2],
    refusals_logged: [LogGate; 2],
    /// Callers of each class waiting for room now.
    waiting: [AtomicU32; 2],
}

impl TokenBudget {
    /// `per_minute` calls per sliding minute, a third of them (rounded down,
    /// at least one of two or more) reserved for renewals; callers wait at
    /// most `max_wait`.
    pub(crate) fn new(per_minute: u32, max_wait: Duration) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            per_minute,
            // A third, and at least one call as soon as sign-ins can still have one too.
            reserve: if per_minute >= 2 { (per_minute / 3).max(1) } else { 0 },
            max_wait,
            window: Mutex::new(Window::default()),
            waits_logged: [LogGate::new(LOG_EVERY), LogGate::new(LOG_EVERY)],
            refusals_logged: [LogGate::new(LOG_EVERY), LogGate::new(LOG_EVERY)],
            waiting: [AtomicU32::new(0), AtomicU32::new(0)],
        }
    }

    /// The configured calls per minute.
    pub(crate) fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// The most sign-ins per sliding minute (the budget less the renewal reserve).
    pub(crate) fn sign_in_limit(&self) -> u32 {
        self.per_minute - self.reserve
    }

    fn limit(&self, class: BudgetClass) -> usize {
        match class {
            BudgetClass::Renewal => self.per_minute as usize,
            BudgetClass::SignIn => self.sign_in_limit() as usize,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one call of `class` now, or says when to look again.
    fn try_take(&self, class: BudgetClass, now: Instant) -> Result<(), Instant> {
        let mut w = self.lock();
        w.prune(now);
        let total = w.calls.len();
        let all = self.per_minute as usize;
        if total >= all {
            // Room comes when the call at `total - all` leaves the window.
            let (t, _) = w.calls[total - all];
            return Err(t + WINDOW);
        }
        if class == BudgetClass::SignIn {
            let limit = self.limit(class);
            if w.sign_ins >= limit {
                let blocking = w.sign_ins - limit;
                let t = w
                    .calls
                    .iter()
                    .filter(|(_, c)| *c == BudgetClass::SignIn)
                    .nth(blocking)
                    .map_or(now + WINDOW, |(t, _)| *t + WINDOW);
                return Err(t);
            }
            w.sign_ins += 1;
        }
        w.calls.push_back((now, class));
        Ok(())
    }

    /// Takes one call of `class` from the budget, waiting (unlocked) for room
    /// up to `max_wait`. Only a caller that found no room and slept counts
    /// (and logs) as a wait; one that found room at once has waited zero.
    pub(crate) async fn acquire(&self, class: BudgetClass) -> Result<Taken, BudgetExhausted> {
        let start = Instant::now();
        let deadline = start + self.max_wait;
        let mut waiting = None;
        loop {
            let now = Instant::now();
            let room_at = match self.try_take(class, now) {
                Ok(()) => {
                    let waited = if waiting.is_some() {
                        let waited = now.saturating_duration_since(start);
                        self.waited(class, waited);
                        waited
                    } else {
                        Duration::ZERO
                    };
                    return Ok(Taken { class, at: now, waited });
                }
                Err(at) => at,
            };
            if room_at > deadline {
                let retry_after = room_at.saturating_duration_since(now);
                // Whole seconds, rounded up: `Retry-After` must not send the client back too early.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let retry_after = Duration::from_secs(secs.max(1));
                self.refused(class, retry_after);
                return Err(BudgetExhausted { retry_after });
            }
            waiting.get_or_insert_with(|| Waiting::new(&self.waiting[class as usize]));
            tokio::time::sleep_until(room_at).await;
        }
    }

    /// Gives back a call taken by `acquire` that never reached Ave (the
    /// connection was never made, or the call was not started after all).
    pub(crate) fn refund(&self, taken: &Taken) {
        let mut w = self.lock();
        if let Some(i) = w.calls.iter().rposition(|&(t, c)| t == taken.at && c == taken.class) {
            w.calls.remove(i);
            if taken.class == BudgetClass::SignIn {
                w.sign_ins -= 1;
            }
        }
    }

    fn waited(&self, class: BudgetClass, waited: Duration) {
        avemint_base::metrics::budget_wait(class.label(), waited);
        if let Some(held_back) = self.waits_logged[class as usize].pass() {
            tracing::warn!(
                class = class.label(),
                waited_ms = waited.as_millis() as u64,
                budget = self.per_minute,
                class_limit = self.limit(class),
                similar_lines_held_back = held_back,
                "Ave token-endpoint budget made a request wait"
            );
        }
    }

    fn refused(&self, class: BudgetClass, retry_after: Duration) {
        avemint_base::metrics::budget_refused(class.label());
        if let Some(held_back) = self.refusals_logged[class as usize].pass() {
            tracing::warn!(
                class = class.label(),
                retry_after_secs = retry_after.as_secs(),
                max_wait_ms = self.max_wait.as_millis() as u64,
                budget = self.per_minute,
                class_limit = self.limit(class),
                similar_lines_held_back = held_back,
                "Ave token-endpoint budget exhausted; request refused without calling Ave"
            );
        }
    }

    /// Use and room of each class over the last minute.
    pub(crate) fn snapshot(&self) -> BudgetSnapshot {
        let mut w = self.lock();
        w.prune(Instant::now());
        let total = w.calls.len() as u32;
        let sign_in_used = w.sign_ins as u32;
        let renewal_available = self.per_minute.saturating_sub(total);
        BudgetSnapshot {
            per_minute: self.per_minute,
            renewal_reserve: self.reserve,
            sign_in_limit: self.sign_in_limit(),
            renewal_used: total - sign_in_used,
            sign_in_used,
            renewal_available,
            sign_in_available: self.sign_in_limit().saturating_sub(sign_in_used).min(renewal_available),
            renewal_waiting: self.waiting[BudgetClass::Renewal as usize].load(AtomicOrdering::Relaxed),
            sign_in_waiting: self.waiting[BudgetClass::SignIn as usize].load(AtomicOrdering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn bursts_queue_within_the_window_and_give_up_past_the_bound() {
        let budget = TokenBudget::new(3, Duration::from_secs(90));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire(BudgetClass::Renewal).await.expect("room");
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        budget
            .acquire(BudgetClass::Renewal)
            .await
            .expect("waits for the window");
        assert!(start.elapsed() >= WINDOW, "the fourth call waited a full window");

        for (budget, reserve) in [(1, 0), (2, 1), (3, 1), (5, 1), (6, 2), (180, 60)] {
            assert_eq!(
                TokenBudget::new(budget, Duration::ZERO).reserve,
                reserve,
                "budget {budget}"
            );
        }
        let strict = TokenBudget::new(1, Duration::from_secs(1));
        strict.acquire(BudgetClass::Renewal).await.expect("room");
        let before = Instant::now();
        let refused = strict
            .acquire(BudgetClass::Renewal)
            .await
            .expect_err("would wait too long");
        assert_eq!(
            refused.retry_after, WINDOW,
            "Retry-After is the time until room, in whole seconds"
        );
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "refused at once, without waiting first"
        );
    }

    /// Issue 22 §6: a call that finds room at once has not waited, so it is neither logged nor counted as a
    /// budget wait (real clock: the time between two `Instant::now()` calls is never zero).
    #[tokio::test]
    async fn a_call_that_finds_room_has_waited_zero() {
        let budget = TokenBudget::new(180, Duration::from_secs(10));
        for class in [BudgetClass::SignIn, BudgetClass::Renewal, BudgetClass::SignIn] {
            let taken = budget.acquire(class).await.expect("room");
            assert_eq!(taken.waited, Duration::ZERO, "{class:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refunded_call_frees_its_room() {
        let budget = TokenBudget::new(3, Duration::ZERO);
        let first = budget.acquire(BudgetClass::SignIn).await.expect("room");
        budget.acquire(BudgetClass::Renewal).await.expect("room");
        budget.acquire(BudgetClass::Renewal).await.expect("room");
        budget.acquire(BudgetClass::Renewal).await.expect_err("full");
        budget.refund(&first);
        let snap = budget.snapshot();
        assert_eq!(
            (snap.sign_in_used, snap.renewal_used, snap.renewal_available),
            (0, 2, 1)
        );
        budget.acquire(BudgetClass::SignIn).await.expect("room again");
    }

    #[tokio::test(start_paused = true)]
    async fn sign_ins_never_take_the_renewal_reserve() {
        let budget = TokenBudget::new(180, Duration::from_secs(5));
        assert_eq!(budget.sign_in_limit(), 120);
        let mut admitted = 0;
        for _ in 0..500 {
            if budget.acquire(BudgetClass::SignIn).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 120, "a sign-in flood stops at the sign-in share");
        let snap = budget.snapshot();
        assert_eq!((snap.sign_in_used, snap.sign_in_available), (120, 0));
        assert_eq!(
            (snap.renewal_used, snap.renewal_available, snap.renewal_reserve),
            (0, 60, 60)
        );
        let start = Instant::now();
        for _ in 0..60 {
            budget
                .acquire(BudgetClass::Renewal)
                .await
                .expect("the reserve is there");
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "renewals did not wait");
        let err = budget
            .acquire(BudgetClass::Renewal)
            .await
            .expect_err("the whole budget is used");
        assert!(err.retry_after <= WINDOW);
        let snap = budget.snapshot();
        assert_eq!(
            (snap.renewal_used, snap.renewal_available, snap.sign_in_available),
            (60, 0, 0)
        );
        // A minute later everything is free again.
        tokio::time::advance(WINDOW).await;
        let snap = budget.snapshot();
        assert_eq!((snap.sign_in_available, snap.renewal_available), (120, 180));
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_can_use_the_sign_in_share_when_sign_ins_leave_it() {
        let budget = TokenBudget::new(6, Duration::ZERO);
        for _ in 0..6 {
            budget
                .acquire(BudgetClass::Renewal)
                .await
                .expect("renewals may use it all");
        }
        let err = budget.acquire(BudgetClass::SignIn).await.expect_err("nothing left");
        assert_eq!(err.retry_after, WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_is_never_held_across_a_sleep() {
        let budget = Arc::new(TokenBudget::new(3, Duration::from_secs(30)));
        budget.acquire(BudgetClass::SignIn).await.expect("room");
        budget.acquire(BudgetClass::SignIn).await.expect("room");
        tokio::time::advance(Duration::from_secs(40)).await;
        // The sign-in share (2 of 3) is full for another 20 s: this sign-in sleeps.
        let sleeper = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(BudgetClass::SignIn).await }
        });
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "the sign-in is waiting");
        assert!(
            budget.window.try_lock().is_ok(),
            "the window is unlocked while it waits"
        );
        // A renewal is not queued behind the sleeping sign-in.
        let start = Instant::now();
        budget.acquire(BudgetClass::Renewal).await.expect("the reserve");
        assert_eq!(start.elapsed(), Duration::ZERO);
        let taken = sleeper.await.expect("join").expect("room after 20 s");
        assert_eq!(taken.waited, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn no_caller_waits_past_the_bound() {
        let max_wait = Duration::from_secs(5);
        let budget = Arc::new(TokenBudget::new(10, max_wait));
        // Calls spread over the first minute, so room frees up one by one.
        for _ in 0..10 {
            budget.acquire(BudgetClass::Renewal).await.expect("room");
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        // t = 60 s: the first call left the window; a crowd arrives.
        let crowd: Vec<_> = (0..30)
            .map(|i| {
                let budget = budget.clone();
                let class = if i % 2 == 0 {
                    BudgetClass::Renewal
                } else {
                    BudgetClass::SignIn
                };
                tokio::spawn(async move {
                    let start = Instant::now();
                    let result = budget.acquire(class).await;
                    (start.elapsed(), result)
                })
            })
            .collect();
        let mut admitted = 0;
        for task in crowd {
            let (elapsed, result) = task.await.expect("join");
            assert!(elapsed <= max_wait, "waited {elapsed:?}");
            match result {
                Ok(taken) => {
                    admitted += 1;
                    assert_eq!(taken.waited, elapsed);
                }
                Err(e) => assert!(e.retry_after >= Duration::from_secs(1)),
            }
        }
        // Room for one at t = 60 s, and one more at 66 s is past the 5 s bound.
        assert_eq!(admitted, 1);
        assert_eq!(
            budget.snapshot().renewal_available + budget.snapshot().sign_in_available,
            0
        );
    }
}
