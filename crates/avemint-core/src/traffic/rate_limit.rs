//! Per-client-IP rate limiting of the sign-in navigations (`/auth/login` and
//! `/auth/callback`, see `route::Route::limited`; `AVEMINT_LOGIN_RATE_LIMIT`, requests per minute per client and endpoint),
//! and the per-network limit on failed code exchanges.
//!
//! Every sign-in costs a call to Ave's token endpoint, and Ave rate limits per
//! client id. Request limits: fixed one-minute windows, one per (endpoint,
//! client); IPv6 clients are grouped by /64, since one host usually owns a
//! whole /64. Memory is bounded: windows live in a capacity-limited cache that
//! forgets them after a minute.
//!
//! Request limits alone do not stop a stranger spending Ave's budget with junk
//! codes from many addresses. [`CodeExchangeLimiter`] counts the code
//! exchanges Ave **rejects**, per network: each IPv4 /24, each IPv6 /64 and,
//! since one site usually owns a whole /48, each IPv6 /48. A network that
//! reaches its limit within the window is refused (429 with `Retry-After`)
//! before anything is sent to Ave, until its failures age out. While many
//! exchanges fail across all networks (an attack spread over many networks),
//! the limiter turns strict: one failure closes a network. Exchanges still in
//! flight count as failures until Ave answers, so a burst cannot slip past
//! the limit, and one abandoned after its code was sent counts as failed.
//! Successes never clear failures, so good codes interleaved with junk buy
//! nothing.
//!
//! [`CredentialLimiter`] counts wrong credentials the same way, per network, at
//! an endpoint that checks a secret (`POST /oauth/introspect`, the admin API):
//! good credentials are never limited; a network's wrong ones past its limit
//! are answered 429 instead of 401 until they age out. This module knows
//! networks and numbers only, no HTTP.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use moka::future::Cache;

use super::client_ip::canonical;
pub use avemint_base::log_gate::LogGate;
pub use avemint_base::route::Limited;

/// The length of one counting window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Most clients tracked at once.
const MAX_TRACKED: u64 = 100_000;

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
    /// A limiter with `limit`, no request counted yet.
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
        IpAddr::V6(v6) => Ipv6Net::new(v6, 64).map_or(ip, |n| IpAddr::V6(n.network())),
        v4 => v4,
    }
}

/// A network whose failed code exchanges are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Network {
    /// An IPv4 /24 (one small network, or one NAT pool).
    V4(Ipv4Net),
    /// An IPv6 /64 (usually one host or one LAN).
    V6Host(Ipv6Net),
    /// An IPv6 /48 (usually one site, which owns 65,536 /64s).
    V6Site(Ipv6Net),
}

impl Network {
    /// The networks `ip` belongs to (IPv4-mapped IPv6 counts as IPv4), widest first: a closed /48 is
    /// refused before its /64s are even looked up, so a site's many /64s cannot fill the tracking cache.
    pub(crate) fn of(ip: IpAddr) -> Vec<Network> {
        match canonical(ip) {
            IpAddr::V4(v4) => Ipv4Net::new(v4, 24)
                .map(|n| Network::V4(n.trunc()))
                .into_iter()
                .collect(),
            IpAddr::V6(v6) => [
                Ipv6Net::new(v6, 48).map(|n| Network::V6Site(n.trunc())),
                Ipv6Net::new(v6, 64).map(|n| Network::V6Host(n.trunc())),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// The metrics label of this grouping.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Network::V4(_) => "ipv4_24",
            Network::V6Host(_) => "ipv6_64",
            Network::V6Site(_) => "ipv6_48",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::V4(n) => n.fmt(f),
            Network::V6Host(n) | Network::V6Site(n) => n.fmt(f),
        }
    }
}

/// How many rejected code exchanges each network may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeLimits {
    /// How long a failure counts against its network.
    pub window: Duration,
    /// Failures per IPv4 /24 or IPv6 /64 within `window`.
    pub per_network: u32,
    /// Failures per IPv6 /48 within `window`.
    pub per_site: u32,
    /// Failures across all networks within [`STRICT_WINDOW`] that make the
    /// limiter strict: one failure within `window` then closes a network.
    pub strict_after: u32,
}

/// The span over which all networks' failures are added up for strict mode.
pub(crate) const STRICT_WINDOW: Duration = Duration::from_secs(60);

impl ExchangeLimits {
    /// Limits scaled to the sign-in share of Ave's token budget (calls per
    /// minute): a network's failures may take about a twelfth of one minute's
    /// sign-in share per ten minutes (10 of 120 with the default budget; an
    /// IPv6 /48 twice that), and failures worth a sixth of it (20 of 120)
    /// within a minute turn the limiter strict.
    pub fn for_sign_in_share(sign_in_per_minute: u32) -> Self {
        let per_network = (sign_in_per_minute / 12).clamp(2, 10);
        Self {
            window: Duration::from_secs(600),
            per_network,
            per_site: per_network * 2,
            strict_after: (sign_in_per_minute / 6).max(2),
        }
    }

    fn of(&self, network: Network) -> u32 {
        match network {
            Network::V6Site(_) => self.per_site,
            Network::V4(_) | Network::V6Host(_) => self.per_network,
        }
    }
}

/// One network's recent failures (newest last) and exchanges in flight.
#[derive(Default)]
struct Failures {
    times: VecDeque<Instant>,
    in_flight: u32,
}

/// A callback refused before calling Ave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExchangeRefused {
    /// When the network may try again (whole seconds, at least one).
    pub retry_after: Duration,
    /// The network that reached its limit.
    pub network: Network,
}

/// How a code exchange ended, as far as the client's network is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeOutcome {
    /// Ave accepted the code.
    Accepted,
    /// Ave rejected the code (or the exchange was abandoned after the code was sent).
    Rejected,
    /// Nothing the client can be blamed for: no call was made, or Ave or the budget failed.
    NotJudged,
}

/// Limits failed code exchanges per client network (see the module doc).
pub struct CodeExchangeLimiter {
    limits: ExchangeLimits,
    networks: Cache<Network, Arc<Mutex<Failures>>>,
    recent: Arc<Mutex<VecDeque<Instant>>>,
    refusals_logged: LogGate,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn whole_secs(d: Duration) -> Duration {
    Duration::from_secs((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
}

/// Forgets the failures older than `window`.
fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

impl CodeExchangeLimiter {
    /// A limiter with `limits`, no failure counted yet.
    pub fn new(limits: ExchangeLimits) -> Self {
        Self {
            limits,
            networks: Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_idle(limits.window)
                .build(),
            recent: Arc::new(Mutex::new(VecDeque::new())),
            refusals_logged: LogGate::new(Duration::from_secs(10)),
        }
    }

    /// True while failures across all networks make one failure close a network.
    pub(crate) fn strict(&self) -> bool {
        self.strict_at(Instant::now())
    }

    fn strict_at(&self, now: Instant) -> bool {
        let recent = lock(&self.recent);
        recent.len() >= self.limits.strict_after as usize
            && recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) < STRICT_WINDOW)
    }

    /// Admits a code exchange from `client`, or refuses it when one of its
    /// networks reached its limit. The permit must be armed before the code is
    /// sent and settled with the outcome.
    pub(crate) async fn admit(&self, client: IpAddr) -> Result<ExchangePermit, ExchangeRefused> {
        let result = self.admit_at(client, Instant::now()).await;
        if let Err(refused) = &result {
            avemint_base::metrics::sign_in_exchange_refused(refused.network.label());
            if let Some(held_back) = self.refusals_logged.pass() {
                tracing::warn!(
                    network = %refused.network,
                    retry_after_secs = refused.retry_after.as_secs(),
                    strict = self.strict(),
                    similar_lines_held_back = held_back,
                    "too many failed sign-ins from this network; refusing callbacks without calling Ave"
                );
            }
        }
        result
    }

    async fn admit_at(&self, client: IpAddr, now: Instant) -> Result<ExchangePermit, ExchangeRefused> {
        let strict = self.strict_at(now);
        let mut permit = ExchangePermit {
            held: Vec::with_capacity(2),
            recent: self.recent.clone(),
            keep: self.limits.per_network.max(self.limits.per_site).max(1) as usize,
            strict_after: self.limits.strict_after.max(1) as usize,
            armed: false,
            settled: false,
        };
        for network in Network::of(client) {
            let cell = self
                .networks
                .get_with(network, async { Arc::new(Mutex::new(Failures::default())) })
                .await;
            let limit = if strict {
                1
            } else {
                self.limits.of(network).max(1) as usize
            };
            {
                let mut f = lock(&cell);
                prune(&mut f.times, now, self.limits.window);
                let failed = f.times.len();
                if failed >= limit {
                    // Open until enough failures age out to be under the limit again.
                    let until = f.times[failed - limit] + self.limits.window;
                    let retry_after = whole_secs(until.saturating_duration_since(now));
                    return Err(ExchangeRefused { retry_after, network });
                }
                if failed + f.in_flight as usize >= limit {
                    // Exchanges in flight could each be a failure: wait for their answers.
                    return Err(ExchangeRefused {
                        retry_after: Duration::from_secs(1),
                        network,
                    });
                }
                f.in_flight += 1;
            }
            // Dropping the (unarmed) permit on a later refusal gives this slot back.
            permit.held.push(cell);
        }
        Ok(permit)
    }
}

/// One admitted code exchange; counts as in flight for its networks until settled.
pub(crate) struct ExchangePermit {
    held: Vec<Arc<Mutex<Failures>>>,
    recent: Arc<Mutex<VecDeque<Instant>>>,
    keep: usize,
    strict_after: usize,
    armed: bool,
    settled: bool,
}

impl ExchangePermit {
    /// The code is about to be sent to Ave: from now on, a permit dropped
    /// without an outcome (the request was abandoned) counts as a failure.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// Records how the exchange ended.
    pub(crate) fn settle(mut self, outcome: ExchangeOutcome) {
        self.finish(outcome, Instant::now());
    }

    fn finish(&mut self, outcome: ExchangeOutcome, now: Instant) {
        if self.settled {
            return;
        }
        self.settled = true;
        let rejected = outcome == ExchangeOutcome::Rejected;
        for cell in &self.held {
            let mut f = lock(cell);
            f.in_flight = f.in_flight.saturating_sub(1);
            if rejected {
                f.times.push_back(now);
                while f.times.len() > self.keep {
                    f.times.pop_front();
                }
            }
        }
        if rejected {
            avemint_base::metrics::sign_in_exchange_failed();
            let mut recent = lock(&self.recent);
            recent.push_back(now);
            while recent.len() > self.strict_after {
                recent.pop_front();
            }
        }
    }
}

impl Drop for ExchangePermit {
    fn drop(&mut self) {
        let outcome = if self.armed {
            ExchangeOutcome::Rejected
        } else {
            ExchangeOutcome::NotJudged
        };
        self.finish(outcome, Instant::now());
    }
}

/// An endpoint that checks a secret, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialEndpoint {
    /// `POST /oauth/introspect` (a profile's introspection secret).
    Introspect,
    /// The admin API (`AVEMINT_ADMIN_TOKEN`).
    Admin,
    /// `POST /oauth/token` (a profile's client or exchange secret, and refused subject tokens).
    Token,
}

impl CredentialEndpoint {
    /// The `endpoint` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CredentialEndpoint::Introspect => "introspect",
            CredentialEndpoint::Admin => "admin",
            CredentialEndpoint::Token => "token",
        }
    }
}

/// Wrong credentials allowed per IPv4 /24 or IPv6 /64 within [`CREDENTIAL_WINDOW`] (an IPv6 /48: twice that)
/// before the next ones are answered 429. A caller with the right secret never gets here; one with a wrong
/// secret retrying in a loop reaches it within seconds.
pub(crate) const CREDENTIAL_FAILURES: u32 = 20;
/// How long a wrong credential counts against its network.
pub(crate) const CREDENTIAL_WINDOW: Duration = Duration::from_secs(60);

/// What a wrong credential gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialVerdict {
    /// Under the limit: an ordinary 401.
    Rejected,
    /// The client's network is past its limit: 429, try again after this long.
    Limited(Duration),
}

/// Counts wrong credentials per client network at one endpoint (see the module doc). Good credentials are checked
/// first and never reach it, so a caller that knows its secret is never limited, whatever its network does; a
/// network past its limit has its wrong credentials answered 429 with `Retry-After` until they age out.
pub struct CredentialLimiter {
    endpoint: CredentialEndpoint,
    limits: ExchangeLimits,
    networks: Cache<Network, Arc<Mutex<Failures>>>,
    refusals_logged: LogGate,
}

impl CredentialLimiter {
    /// A limiter of wrong credentials at `endpoint`, nothing counted yet.
    pub fn new(endpoint: CredentialEndpoint) -> Self {
        let limits = ExchangeLimits {
            window: CREDENTIAL_WINDOW,
            per_network: CREDENTIAL_FAILURES,
            per_site: CREDENTIAL_FAILURES * 2,
            strict_after: 0,
        };
        Self {
            endpoint,
            limits,
            networks: Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_idle(limits.window)
                .build(),
            refusals_logged: LogGate::new(Duration::from_secs(10)),
        }
    }

    /// Counts a wrong credential from `client` (counted in `/metrics` either way).
    pub async fn failed(&self, client: IpAddr) -> CredentialVerdict {
        let verdict = self.failed_at(client, Instant::now()).await;
        let answer = match verdict {
            CredentialVerdict::Rejected => "rejected",
            CredentialVerdict::Limited(retry_after) => {
                if let Some(held_back) = self.refusals_logged.pass() {
                    tracing::warn!(
                        endpoint = self.endpoint.label(),
                        client_ip = %client,
                        retry_after_secs = retry_after.as_secs(),
                        similar_lines_held_back = held_back,
                        "too many wrong credentials from this network; answering 429"
                    );
                }
                "rate_limited"
            }
        };
        avemint_base::metrics::credential_failure(self.endpoint.label(), answer);
        verdict
    }

    async fn failed_at(&self, client: IpAddr, now: Instant) -> CredentialVerdict {
        let mut verdict = CredentialVerdict::Rejected;
        for network in Network::of(client) {
            let cell = self
                .networks
                .get_with(network, async { Arc::new(Mutex::new(Failures::default())) })
                .await;
            let limit = self.limits.of(network).max(1) as usize;
            let mut f = lock(&cell);
            prune(&mut f.times, now, self.limits.window);
            f.times.push_back(now);
            while f.times.len() > limit + 1 {
                f.times.pop_front();
            }
            if f.times.len() > limit {
                // The next wrong credential is a 401 again once all but `limit - 1` of these aged out.
                let until = f.times[f.times.len() - limit] + self.limits.window;
                let retry_after = whole_secs(until.saturating_duration_since(now));
                verdict = match verdict {
                    CredentialVerdict::Limited(other) => CredentialVerdict::Limited(other.max(retry_after)),
                    CredentialVerdict::Rejected => CredentialVerdict::Limited(retry_after),
                };
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_credentials_past_the_limit_are_limited_per_network_until_they_age_out() {
        let l = CredentialLimiter::new(CredentialEndpoint::Introspect);
        let t0 = Instant::now();
        let limit = CREDENTIAL_FAILURES as usize;
        for i in 0..limit {
            assert_eq!(
                l.failed_at(ip("192.0.2.7"), t0).await,
                CredentialVerdict::Rejected,
                "failure #{i}"
            );
        }
        assert_eq!(
            l.failed_at(ip("192.0.2.200"), t0).await,
            CredentialVerdict::Limited(CREDENTIAL_WINDOW),
            "the same /24"
        );
        assert_eq!(
            l.failed_at(ip("198.51.100.1"), t0).await,
            CredentialVerdict::Rejected,
            "another network"
        );
        // A minute later the first failures have aged out.
        let later = t0 + CREDENTIAL_WINDOW;
        assert_eq!(l.failed_at(ip("192.0.2.7"), later).await, CredentialVerdict::Rejected);
        // An IPv6 site is limited at twice the /64 limit, across its /64s.
        for i in 0..2 * limit {
            let client = ip(&format!("2001:db8:1:{i:x}::1"));
            assert_eq!(l.failed_at(client, t0).await, CredentialVerdict::Rejected, "/64 #{i}");
        }
        assert!(matches!(
            l.failed_at(ip("2001:db8:1:ffff::1"), t0).await,
            CredentialVerdict::Limited(_)
        ));
    }

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
    }

    const LIMITS: ExchangeLimits = ExchangeLimits {
        window: Duration::from_secs(600),
        per_network: 3,
        per_site: 5,
        strict_after: 8,
    };

    async fn fail(l: &CodeExchangeLimiter, client: &str, now: Instant) -> Result<(), ExchangeRefused> {
        let mut permit = l.admit_at(ip(client), now).await?;
        permit.arm();
        permit.finish(ExchangeOutcome::Rejected, now);
        Ok(())
    }

    async fn succeed(l: &CodeExchangeLimiter, client: &str, now: Instant) -> Result<(), ExchangeRefused> {
        let mut permit = l.admit_at(ip(client), now).await?;
        permit.arm();
        permit.finish(ExchangeOutcome::Accepted, now);
        Ok(())
    }

    #[test]
    fn networks_group_ipv4_by_24_and_ipv6_by_64_and_48() {
        let v4 = Network::of(ip("198.51.100.77"));
        assert_eq!(v4, vec![Network::V4("198.51.100.0/24".parse().expect("net"))]);
        assert_eq!(Network::of(ip("::ffff:198.51.100.9")), v4, "IPv4-mapped is IPv4");
        let v6 = Network::of(ip("2001:db8:1:2:3::4"));
        assert_eq!(
            v6,
            vec![
                Network::V6Site("2001:db8:1::/48".parse().expect("net")),
                Network::V6Host("2001:db8:1:2::/64".parse().expect("net")),
            ]
        );
        assert_eq!(v6[0].to_string(), "2001:db8:1::/48");
        assert_eq!(v6[0].label(), "ipv6_48");
        assert_eq!(group(ip("2001:db8::1:2")), ip("2001:db8::"));
    }

    proptest::proptest! {
        #[test]
        fn every_address_is_in_its_networks_and_neighbours_share_them(a in proptest::prelude::any::<u128>(), low in proptest::prelude::any::<u128>(), v4 in proptest::prelude::any::<u32>(), host in proptest::prelude::any::<u8>()) {
            let v6 = std::net::Ipv6Addr::from(a);
            let nets = Network::of(IpAddr::V6(v6));
            // The same /48 (first 48 bits) and the same /64 (first 64 bits) group together.
            let same_48 = std::net::Ipv6Addr::from((a & !((1u128 << 80) - 1)) | (low & ((1u128 << 80) - 1)));
            let same_64 = std::net::Ipv6Addr::from((a & !((1u128 << 64) - 1)) | (low & ((1u128 << 64) - 1)));
            if v6.to_ipv4_mapped().is_none() && same_48.to_ipv4_mapped().is_none() && same_64.to_ipv4_mapped().is_none() {
                proptest::prop_assert_eq!(nets.len(), 2);
                for n in &nets {
                    let (Network::V6Site(net) | Network::V6Host(net)) = n else {
                        return Err(proptest::test_runner::TestCaseError::fail("an IPv6 address got an IPv4 network"));
                    };
                    proptest::prop_assert!(net.contains(&v6));
                }
                proptest::prop_assert_eq!(Network::of(IpAddr::V6(same_48))[0], nets[0]);
                proptest::prop_assert_eq!(&Network::of(IpAddr::V6(same_64)), &nets);
            }
            let v4a = std::net::Ipv4Addr::from(v4);
            let v4b = std::net::Ipv4Addr::from((v4 & !0xff) | u32::from(host));
            proptest::prop_assert_eq!(Network::of(IpAddr::V4(v4a)), Network::of(IpAddr::V4(v4b)));
            let Network::V4(net) = Network::of(IpAddr::V4(v4a))[0] else {
                return Err(proptest::test_runner::TestCaseError::fail("an IPv4 address got an IPv6 network"));
            };
            proptest::prop_assert!(net.contains(&v4a));
            proptest::prop_assert_eq!(net.prefix_len(), 24);
        }
    }

    #[tokio::test]
    async fn many_64s_of_one_48_share_the_site_limit() {
        let l = CodeExchangeLimiter::new(LIMITS);
        let t0 = Instant::now();
        for i in 0..5 {
            fail(&l, &format!("2001:db8:7:{i}::1"), t0)
                .await
                .expect("under the site limit");
        }
        let refused = fail(&l, "2001:db8:7:99::1", t0 + Duration::from_secs(30))
            .await
            .expect_err("a fresh /64 of the same /48 is refused");
        assert_eq!(
            refused.network,
            Network::V6Site("2001:db8:7::/48".parse().expect("net"))
        );
        assert_eq!(refused.retry_after, Duration::from_secs(570));
        // Another /48 is unaffected; the site opens again once its failures age out.
        assert!(succeed(&l, "2001:db8:8::1", t0).await.is_ok());
        assert!(fail(&l, "2001:db8:7:99::1", t0 + LIMITS.window).await.is_ok());
    }

    #[tokio::test]
    async fn one_64_and_one_ipv4_24_reach_their_own_limit() {
        let l = CodeExchangeLimiter::new(LIMITS);
        let t0 = Instant::now();
        for host in 1..=3 {
            fail(&l, &format!("198.51.100.{host}"), t0)
                .await
                .expect("under the limit");
        }
        let refused = fail(&l, "198.51.100.250", t0).await.expect_err("same /24");
        assert_eq!(refused.network.label(), "ipv4_24");
        assert!(
            fail(&l, "198.51.101.1", t0).await.is_ok(),
            "the next /24 is another network"
        );
        for _ in 0..3 {
            fail(&l, "2001:db8:9:1::1", t0).await.expect("under the /64 limit");
        }
        let refused = fail(&l, "2001:db8:9:1::2", t0).await.expect_err("same /64");
        assert_eq!(refused.network.label(), "ipv6_64");
    }

    #[tokio::test]
    async fn good_codes_between_junk_ones_clear_nothing() {
        let l = CodeExchangeLimiter::new(LIMITS);
        let t0 = Instant::now();
        for _ in 0..3 {
            succeed(&l, "203.0.113.5", t0).await.expect("good code");
            fail(&l, "203.0.113.5", t0).await.expect("junk code");
        }
        assert!(
            succeed(&l, "203.0.113.5", t0).await.is_err(),
            "closed, even for a good code"
        );
    }

    #[tokio::test]
    async fn exchanges_in_flight_count_and_abandoned_ones_are_failures() {
        let l = CodeExchangeLimiter::new(LIMITS);
        let t0 = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..3 {
            let mut p = l.admit_at(ip("192.0.2.1"), t0).await.expect("admitted");
            p.arm();
            permits.push(p);
        }
        let busy = l
            .admit_at(ip("192.0.2.2"), t0)
            .await
            .err()
            .expect("three in flight fill the limit");
        assert_eq!(busy.retry_after, Duration::from_secs(1));
        // The clients hang up after their codes were sent: each counts as a failure.
        drop(permits);
        let closed = l.admit_at(ip("192.0.2.3"), t0).await.err().expect("three failures");
        assert!(closed.retry_after > Duration::from_secs(500));
        // A permit never armed (no call made) and a not-judged one leave no trace.
        let l = CodeExchangeLimiter::new(LIMITS);
        for _ in 0..10 {
            drop(l.admit_at(ip("192.0.2.1"), t0).await.expect("admitted"));
            let p = l.admit_at(ip("192.0.2.1"), t0).await.expect("admitted");
            p.settle(ExchangeOutcome::NotJudged);
        }
        // A refusal by the /64 gives the /48's slot back.
        let l = CodeExchangeLimiter::new(ExchangeLimits {
            per_network: 1,
            ..LIMITS
        });
        fail(&l, "2001:db8:5:1::1", t0).await.expect("first");
        for _ in 0..6 {
            let refused = l.admit_at(ip("2001:db8:5:1::2"), t0).await.err().expect("/64 closed");
            assert_eq!(refused.network.label(), "ipv6_64", "never the /48's in-flight count");
        }
        assert!(
            succeed(&l, "2001:db8:5:2::1", t0).await.is_ok(),
            "the /48 still has room"
        );
    }

    #[tokio::test]
    async fn failures_across_many_networks_make_one_failure_close_a_network() {
        let l = CodeExchangeLimiter::new(LIMITS);
        let t0 = Instant::now();
        for n in 0..8 {
            fail(&l, &format!("198.51.{n}.1"), t0).await.expect("one failure each");
        }
        assert!(l.strict_at(t0));
        let refused = fail(&l, "198.51.0.1", t0)
            .await
            .expect_err("strict: one failure closes it");
        assert_eq!(refused.retry_after, LIMITS.window);
        assert!(
            succeed(&l, "203.0.113.9", t0).await.is_ok(),
            "a network without failures signs in"
        );
        // Strict mode ends a minute after the failures stop; the normal limit applies again.
        let later = t0 + STRICT_WINDOW;
        assert!(!l.strict_at(later));
        assert!(fail(&l, "198.51.0.1", later).await.is_ok());
    }
}
