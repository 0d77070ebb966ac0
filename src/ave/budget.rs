//! `TokenBudget`: keeps this process under Ave's token-endpoint rate limit.
//!
//! Ave allows 180 token-endpoint calls per minute per client id, shared by
//! every user and every instance (`../shared/ave-protocol.md` §1.2). The
//! budget is a sliding one-minute window: a call waits until fewer than
//! `per_minute` calls were made in the last 60 s, so bursts queue here
//! instead of hitting Ave's 429. Waits are bounded; past the bound the caller
//! gets a local "rate limited" answer and nothing is sent.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

/// A sliding-window limiter for calls to Ave's token endpoint.
pub struct TokenBudget {
    per_minute: u32,
    max_wait: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl TokenBudget {
    /// `per_minute` calls per sliding minute; callers wait at most `max_wait`.
    pub fn new(per_minute: u32, max_wait: Duration) -> Self {
        Self {
            per_minute: per_minute.max(1),
            max_wait,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    /// The configured calls per minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one call from the budget, waiting for room if needed. Returns the
    /// time to wait that would have been needed if it exceeds `max_wait`.
    pub async fn acquire(&self) -> Result<(), Duration> {
        // The lock is held while waiting, so callers are served in order.
        let mut sent = self.sent.lock().await;
        let now = Instant::now();
        while sent.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            sent.pop_front();
        }
        if sent.len() >= self.per_minute as usize {
            let oldest = *sent.front().unwrap_or(&now);
            let wait = (oldest + WINDOW).saturating_duration_since(now);
            if wait > self.max_wait {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
            sent.pop_front();
        }
        sent.push_back(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_queue_within_the_window_and_give_up_past_the_bound() {
        let budget = TokenBudget::new(3, Duration::from_secs(90));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await.expect("room");
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        budget.acquire().await.expect("waits for the window");
        assert!(start.elapsed() >= WINDOW, "the fourth call waited a full window");

        let strict = TokenBudget::new(1, Duration::from_secs(1));
        strict.acquire().await.expect("room");
        let wait = strict.acquire().await.expect_err("would wait too long");
        assert!(wait > Duration::from_secs(1));
    }
}
