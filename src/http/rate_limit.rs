//! Per-client-IP rate limiting of `/auth/login` and `/auth/callback`
//! (`AVEMINT_LOGIN_RATE_LIMIT`, requests per minute per client and endpoint).
//!
//! Every sign-in costs a call to Ave's token endpoint, and Ave rate limits per
//! client id: without this, one noisy address could use up the budget of every
//! user. Fixed one-minute windows, one per (endpoint, client); IPv6 clients
//! are grouped by /64, since one host usually owns a whole /64. Memory is
//! bounded: windows live in a capacity-limited cache that forgets them after
//! a minute.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;

/// The length of one counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most clients tracked at once.
const MAX_TRACKED: u64 = 100_000;

/// The rate-limited endpoints (each has its own budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limited {
    Login,
    Callback,
}

impl Limited {
    /// Which limited endpoint `path` is, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path.trim_end_matches('/') {
            "/auth/login" => Some(Self::Login),
            "/auth/callback" => Some(Self::Callback),
            _ => None,
        }
    }
}

/// Requests allowed per client per minute on each limited endpoint; `0` turns limiting off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub u32);

impl Default for RateLimit {
    fn default() -> Self {
        Self(30)
    }
}

impl RateLimit {
    /// Parses a whole number of requests per minute (0 disables).
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.trim()
            .parse::<u32>()
            .map(Self)
            .map_err(|_| "must be a whole number of requests per minute (0 turns limiting off)".into())
    }
}

struct Window {
    started: Instant,
    count: u32,
}

/// The limiter's state.
pub struct RateLimiter {
    limit: RateLimit,
    windows: Cache<(Limited, IpAddr), Arc<Mutex<Window>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            windows: Cache::builder().max_capacity(MAX_TRACKED).time_to_live(WINDOW).build(),
        }
    }

    /// Counts one request; `Err(retry_after)` when the client is over its budget.
    pub async fn check(&self, endpoint: Limited, client: IpAddr) -> Result<(), Duration> {
        self.check_at(endpoint, client, Instant::now()).await
    }

    async fn check_at(&self, endpoint: Limited, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.limit.0 == 0 {
            return Ok(());
        }
        let window = self
            .windows
            .get_with((endpoint, group(client)), async move {
                Arc::new(Mutex::new(Window { started: now, count: 0 }))
            })
            .await;
        let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed >= WINDOW {
            w.started = now;
            w.count = 0;
        }
        if w.count >= self.limit.0 {
            let left = WINDOW.saturating_sub(now.saturating_duration_since(w.started));
            return Err(left.max(Duration::from_secs(1)));
        }
        w.count += 1;
        Ok(())
    }
}

/// IPv6 addresses are limited per /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn budget_per_client_and_endpoint_then_a_new_window() {
        let l = RateLimiter::new(RateLimit(2));
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        assert!(l.check_at(Limited::Login, a, t0).await.is_ok());
        assert!(l.check_at(Limited::Login, a, t0).await.is_ok());
        let retry = l
            .check_at(Limited::Login, a, t0 + Duration::from_secs(15))
            .await
            .expect_err("third is refused");
        assert_eq!(retry, Duration::from_secs(45));
        // Other endpoints and other clients have their own budgets.
        assert!(l.check_at(Limited::Callback, a, t0).await.is_ok());
        assert!(l.check_at(Limited::Login, ip("198.51.100.2"), t0).await.is_ok());
        // The next window starts afresh.
        assert!(l.check_at(Limited::Login, a, t0 + WINDOW).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_is_grouped_by_64_and_zero_disables() {
        let l = RateLimiter::new(RateLimit(1));
        let t0 = Instant::now();
        assert!(l.check_at(Limited::Login, ip("2001:db8::1"), t0).await.is_ok());
        assert!(l.check_at(Limited::Login, ip("2001:db8::2"), t0).await.is_err());
        assert!(l.check_at(Limited::Login, ip("2001:db8:0:1::1"), t0).await.is_ok());
        let off = RateLimiter::new(RateLimit(0));
        for _ in 0..100 {
            assert!(off.check_at(Limited::Login, ip("2001:db8::1"), t0).await.is_ok());
        }
        assert_eq!(Limited::from_path("/auth/login"), Some(Limited::Login));
        assert_eq!(Limited::from_path("/auth/callback/"), Some(Limited::Callback));
        assert_eq!(Limited::from_path("/auth/token"), None);
    }
}
