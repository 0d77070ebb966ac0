//! Ave's discovery document and JWKS, cached with serve-stale-on-error.
//!
//! Both documents are loaded once and then re-fetched when they are older than
//! the configured lifetime (`AVEMINT_AVE_METADATA_TTL`). A re-fetch never
//! makes a caller wait: the caller gets the copy in memory and the re-fetch
//! runs in the background. When it fails, the last good copy stays in use
//! (serve-stale-on-error), the next attempt backs off, and a rate-limited
//! warning is logged; the age of the copy is reported by `/readyz` and
//! `/metrics`. So once Ave was reached, an Ave outage costs nothing but
//! freshness: readiness, sign-in starts and the validation of id_tokens signed
//! with known keys go on. Only the very first load waits for Ave (single-flight).
//!
//! The caching decisions live in [`StaleCache`], a pure state machine driven by
//! an explicit clock, so they are unit-tested without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use super::wire::{AveError, KeySet, ProviderMetadata, clone_error, read_limited, transport};
use avemint_base::metrics::{self, AveCall};
use avemint_base::web_url::Issuer;

/// The longest pause between two re-fetch attempts while Ave keeps failing.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// At most one "serving a stale copy" warning per document this often.
const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// A background re-fetch still marked in flight after this long is presumed
/// dead (its task panicked or was dropped) and another may start. Far above
/// any request timeout.
const STUCK_REFRESH: Duration = Duration::from_secs(120);

/// Which of Ave's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Document {
    /// `{issuer}/.well-known/openid-configuration`.
    Discovery,
    /// The `jwks_uri` of the discovery document.
    Jwks,
}

impl Document {
    /// The label used in logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Document::Discovery => "discovery",
            Document::Jwks => "jwks",
        }
    }

    fn call(self) -> AveCall {
        match self {
            Document::Discovery => AveCall::Discovery,
            Document::Jwks => AveCall::Jwks,
        }
    }
}

/// What `/readyz` and `/metrics` report about one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentStatus {
    /// A copy was loaded at least once since start.
    pub loaded: bool,
    /// Time since the copy in use was fetched (`None` before the first load).
    pub age: Option<Duration>,
    /// The copy is older than its lifetime because re-fetching it failed.
    pub stale: bool,
    /// Failed fetches since the last successful one.
    pub consecutive_failures: u32,
}

/// Both documents at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataStatus {
    pub discovery: DocumentStatus,
    pub jwks: DocumentStatus,
    /// The configured lifetime of both documents.
    pub lifetime: Duration,
}

impl MetadataStatus {
    /// Both documents were loaded at least once (stale is fine).
    pub fn loaded(&self) -> bool {
        self.discovery.loaded && self.jwks.loaded
    }

    /// Either document is being served past its lifetime.
    pub fn stale(&self) -> bool {
        self.discovery.stale || self.jwks.stale
    }
}

/// What a read of the cache found.
#[derive(Debug)]
pub(crate) enum Lookup<T> {
    /// Younger than the lifetime.
    Fresh(Arc<T>),
    /// Older than the lifetime. When `refresh` is true this caller must start
    /// the re-fetch (it is now marked in flight) and report it back.
    Stale { value: Arc<T>, refresh: bool },
    /// Never loaded: the caller must fetch and wait.
    Empty,
}

/// What a failed fetch means for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureReport {
    /// Log a warning now (first failure, then at most once per `WARN_INTERVAL`).
    pub warn: bool,
    /// Failed fetches since the last success, this one included.
    pub failures: u32,
    /// The age of the copy still in use, if there is one.
    pub age: Option<Duration>,
    /// When the next background re-fetch may start.
    pub retry_in: Duration,
}

/// The caching decisions for one document. Pure: every method takes `now`.
#[derive(Debug)]
pub(crate) struct StaleCache<T, E> {
    lifetime: Duration,
    current: Option<(Arc<T>, Instant)>,
    refreshing_since: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    last_failure: Option<(Instant, E)>,
    last_warned: Option<Instant>,
}

impl<T, E> StaleCache<T, E> {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            current: None,
            refreshing_since: None,
            failures: 0,
            retry_at: None,
            last_failure: None,
            last_warned: None,
        }
    }

    /// Reads the cache; marks a re-fetch in flight when one is due.
    pub(crate) fn lookup(&mut self, now: Instant) -> Lookup<T> {
        let Some((value, fetched_at)) = &self.current else {
            return Lookup::Empty;
        };
        if now.saturating_duration_since(*fetched_at) < self.lifetime {
            return Lookup::Fresh(Arc::clone(value));
        }
        let in_flight = self
            .refreshing_since
            .is_some_and(|since| now.saturating_duration_since(since) < STUCK_REFRESH);
        let due = !in_flight && self.retry_at.is_none_or(|at| now >= at);
        if due {
            self.refreshing_since = Some(now);
        }
        Lookup::Stale {
            value: Arc::clone(value),
            refresh: due,
        }
    }

    /// The copy in use, whatever its age.
    pub(crate) fn current(&self) -> Option<Arc<T>> {
        self.current.as_ref().map(|(v, _)| Arc::clone(v))
    }

    /// The last failure, if it happened after the last success.
    pub(crate) fn last_failure(&self) -> Option<(Instant, &E)> {
        self.last_failure.as_ref().map(|(at, e)| (*at, e))
    }

    /// A fetch succeeded; returns how many failures it ends.
    pub(crate) fn succeeded(&mut self, value: Arc<T>, now: Instant) -> u32 {
        let ended = self.failures;
        self.current = Some((value, now));
        self.refreshing_since = None;
        self.failures = 0;
        self.retry_at = None;
        self.last_failure = None;
        self.last_warned = None;
        ended
    }

    /// A fetch failed: the copy in use (if any) stays, the next background
    /// re-fetch backs off exponentially (1 s, 2 s, 4 s … at most a minute,
    /// and never longer than the lifetime).
    pub(crate) fn failed(&mut self, now: Instant, error: E) -> FailureReport {
        self.failures = self.failures.saturating_add(1);
        self.refreshing_since = None;
        let retry_in = retry_delay(self.failures, self.lifetime);
        self.retry_at = Some(now + retry_in);
        self.last_failure = Some((now, error));
        let warn = self
            .last_warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_INTERVAL);
        if warn {
            self.last_warned = Some(now);
        }
        FailureReport {
            warn,
            failures: self.failures,
            age: self.current.as_ref().map(|(_, at)| now.saturating_duration_since(*at)),
            retry_in,
        }
    }

    /// What `/readyz` reports.
    pub(crate) fn status(&self, now: Instant) -> DocumentStatus {
        let age = self.current.as_ref().map(|(_, at)| now.saturating_duration_since(*at));
        DocumentStatus {
            loaded: age.is_some(),
            age,
            stale: age.is_some_and(|a| a >= self.lifetime) && self.failures > 0,
            consecutive_failures: self.failures,
        }
    }
}

/// The pause before re-fetch attempt `failures + 1`.
fn retry_delay(failures: u32, lifetime: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(1u64 << exp).min(MAX_RETRY_DELAY).min(lifetime)
}

/// One cached document plus its first-load lock.
struct Cached<T> {
    document: Document,
    state: Mutex<StaleCache<T, AveError>>,
    /// Serialises first loads, so a crowd of callers costs Ave one request.
    first_load: tokio::sync::Mutex<()>,
}

impl<T> Cached<T> {
    fn new(document: Document, lifetime: Duration) -> Self {
        Self {
            document,
            state: Mutex::new(StaleCache::new(lifetime)),
            first_load: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StaleCache<T, AveError>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Fetch<T> = fn(Arc<Inner>) -> Pin<Box<dyn Future<Output = Result<Arc<T>, AveError>> + Send>>;

/// Ave's discovery document and JWKS for one issuer.
pub(crate) struct AveMetadata {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    issuer: Issuer,
    lifetime: Duration,
    discovery: Cached<ProviderMetadata>,
    jwks: Cached<KeySet>,
    refetch_cooldown: Duration,
    last_forced_refetch: Mutex<Option<Instant>>,
}

impl AveMetadata {
    pub(crate) fn new(http: reqwest::Client, issuer: Issuer, lifetime: Duration, refetch_cooldown: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                issuer,
                lifetime,
                discovery: Cached::new(Document::Discovery, lifetime),
                jwks: Cached::new(Document::Jwks, lifetime),
                refetch_cooldown,
                last_forced_refetch: Mutex::new(None),
            }),
        }
    }

    /// The discovery document (loaded on first use; possibly stale).
    pub(crate) async fn discovery(&self) -> Result<Arc<ProviderMetadata>, AveError> {
        self.inner.discovery().await
    }

    /// The key set (loaded on first use; possibly stale).
    pub(crate) async fn key_set(&self) -> Result<Arc<KeySet>, AveError> {
        self.inner.key_set().await
    }

    /// Re-fetches the key set now because a token named an unknown `kid`; at
    /// most once per cooldown (`None` when the cooldown forbids it). A failed
    /// re-fetch keeps the keys in use.
    pub(crate) async fn refetch_key_set(&self) -> Result<Option<Arc<KeySet>>, AveError> {
        {
            let mut last = self
                .inner
                .last_forced_refetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.inner.refetch_cooldown) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let result = self.inner.fetch_jwks().await;
        self.inner.record(&self.inner.jwks, result).map(Some)
    }

    /// The state of both documents, without fetching anything.
    pub(crate) fn status(&self) -> MetadataStatus {
        let now = Instant::now();
        MetadataStatus {
            discovery: self.inner.discovery.lock().status(now),
            jwks: self.inner.jwks.lock().status(now),
            lifetime: self.inner.lifetime,
        }
    }
}

impl Inner {
    async fn discovery(self: &Arc<Self>) -> Result<Arc<ProviderMetadata>, AveError> {
        self.get(|i| &i.discovery, |i| Box::pin(async move { i.fetch_discovery().await }))
            .await
    }

    async fn key_set(self: &Arc<Self>) -> Result<Arc<KeySet>, AveError> {
        self.get(|i| &i.jwks, |i| Box::pin(async move { i.fetch_jwks().await }))
            .await
    }

    /// The cached copy; a due re-fetch is started in the background. Only a
    /// first load waits, one fetch at a time: callers that queued behind a
    /// failed first load get its error instead of trying again.
    async fn get<T: Send + Sync + 'static>(
        self: &Arc<Self>,
        pick: fn(&Inner) -> &Cached<T>,
        fetch: Fetch<T>,
    ) -> Result<Arc<T>, AveError> {
        let cached = pick(self);
        let lookup = cached.lock().lookup(Instant::now());
        match lookup {
            Lookup::Fresh(value) => return Ok(value),
            Lookup::Stale { value, refresh } => {
                if refresh {
                    let inner = Arc::clone(self);
                    tokio::spawn(async move {
                        let result = fetch(Arc::clone(&inner)).await;
                        let _ = inner.record(pick(&inner), result);
                    });
                }
                return Ok(value);
            }
            Lookup::Empty => {}
        }
        let asked = Instant::now();
        let _first = cached.first_load.lock().await;
        {
            let state = cached.lock();
            if let Some(value) = state.current() {
                return Ok(value);
            }
            if let Some((at, e)) = state.last_failure()
                && at >= asked
            {
                return Err(clone_error(e));
            }
        }
        let result = fetch(Arc::clone(self)).await;
        self.record(cached, result)
    }

    /// Stores a fetch's outcome; a failure keeps the copy in use and is logged
    /// (rate-limited, by kind only).
    fn record<T>(&self, cached: &Cached<T>, result: Result<Arc<T>, AveError>) -> Result<Arc<T>, AveError> {
        let now = Instant::now();
        let document = cached.document.label();
        match result {
            Ok(value) => {
                let ended = cached.lock().succeeded(Arc::clone(&value), now);
                if ended > 0 {
                    tracing::info!(
                        document,
                        failed_attempts = ended,
                        "Ave {document} re-fetched; fresh again"
                    );
                }
                Ok(value)
            }
            Err(e) => {
                let report = cached.lock().failed(now, clone_error(&e));
                if report.warn {
                    let retry_in_secs = report.retry_in.as_secs();
                    match report.age {
                        Some(age) => tracing::warn!(
                            document,
                            error = %e,
                            failures = report.failures,
                            age_secs = age.as_secs(),
                            retry_in_secs,
                            "Ave {document} could not be re-fetched; serving the last good copy"
                        ),
                        // Before the first load the caller reports the error (startup logs each attempt).
                        None => tracing::debug!(
                            document,
                            error = %e,
                            failures = report.failures,
                            "Ave {document} could not be loaded"
                        ),
                    }
                }
                Err(e)
            }
        }
    }

    async fn fetch_discovery(&self) -> Result<Arc<ProviderMetadata>, AveError> {
        let body = self.get_json(&self.issuer.discovery_url(), Document::Discovery).await?;
        let meta: ProviderMetadata = serde_json::from_slice(&body)
            .map_err(|_| AveError::Malformed("discovery document lacks required fields".into()))?;
        if meta.issuer != self.issuer.as_str() {
            return Err(AveError::IssuerMismatch {
                expected: self.issuer.as_str().to_owned(),
                found: meta.issuer,
            });
        }
        for (name, url) in [
            ("authorization_endpoint", &meta.authorization_endpoint),
            ("token_endpoint", &meta.token_endpoint),
            ("jwks_uri", &meta.jwks_uri),
        ] {
            let ok = url::Url::parse(url).is_ok_and(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && avemint_base::web_url::is_loopback(&u))
            });
            if !ok {
                return Err(AveError::Malformed(format!("discovery `{name}` is not an https URL")));
            }
        }
        Ok(Arc::new(meta))
    }

    async fn fetch_jwks(self: &Arc<Self>) -> Result<Arc<KeySet>, AveError> {
        let meta = self.discovery().await?;
        let body = self.get_json(&meta.jwks_uri, Document::Jwks).await?;
        KeySet::parse(&body).map(Arc::new)
    }

    async fn get_json(&self, url: &str, document: Document) -> Result<Vec<u8>, AveError> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "ave.fetch",
            document = ?document,
            otel.kind = "client",
            http.status_code = tracing::field::Empty,
        );
        let result = self.get_json_timed(url).instrument(span).await;
        metrics::ave_call(
            document.call(),
            started.elapsed(),
            result.as_ref().err().map(AveError::failure),
        );
        result
    }

    async fn get_json_timed(&self, url: &str) -> Result<Vec<u8>, AveError> {
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .headers(avemint_base::trace_context::headers())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        tracing::Span::current().record("http.status_code", status);
        if status != 200 {
            // Logged (rate-limited) by `record`.
            return Err(if status >= 500 {
                AveError::Server { status }
            } else {
                AveError::Malformed(format!("HTTP {status}"))
            });
        }
        read_limited(resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(300);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn value<T>(l: &Lookup<T>) -> Option<&Arc<T>> {
        match l {
            Lookup::Fresh(v) | Lookup::Stale { value: v, .. } => Some(v),
            Lookup::Empty => None,
        }
    }

    #[test]
    fn empty_until_loaded_then_fresh_for_the_lifetime() {
        let t0 = Instant::now();
        let mut c: StaleCache<u32, &str> = StaleCache::new(LIFE);
        assert!(matches!(c.lookup(t0), Lookup::Empty));
        assert!(!c.status(t0).loaded);
        let report = c.failed(t0, "down");
        assert_eq!(report.age, None, "nothing to serve");
        assert!(
            matches!(c.lookup(t0 + secs(1)), Lookup::Empty),
            "a failure never invents a value"
        );
        assert_eq!(c.last_failure().map(|(_, e)| *e), Some("down"));
        c.succeeded(Arc::new(1), t0 + secs(2));
        assert!(c.last_failure().is_none());
        assert!(matches!(c.lookup(t0 + secs(2)), Lookup::Fresh(v) if *v == 1));
        assert!(matches!(c.lookup(t0 + secs(301)), Lookup::Fresh(_)));
        let s = c.status(t0 + secs(100));
        assert!(s.loaded && !s.stale);
        assert_eq!(s.age, Some(secs(98)));
    }

    #[test]
    fn past_the_lifetime_one_caller_refreshes_and_everyone_gets_the_copy() {
        let t0 = Instant::now();
        let mut c: StaleCache<u32, &str> = StaleCache::new(LIFE);
        c.succeeded(Arc::new(7), t0);
        let first = c.lookup(t0 + LIFE);
        assert!(matches!(first, Lookup::Stale { refresh: true, .. }));
        assert_eq!(value(&first).map(|v| **v), Some(7));
        let second = c.lookup(t0 + LIFE + secs(1));
        assert!(
            matches!(second, Lookup::Stale { refresh: false, .. }),
            "one re-fetch in flight at a time"
        );
        assert!(
            !c.status(t0 + LIFE).stale,
            "past the lifetime but not failed: not stale yet"
        );
        c.succeeded(Arc::new(8), t0 + LIFE + secs(2));
        assert!(matches!(c.lookup(t0 + LIFE + secs(3)), Lookup::Fresh(v) if *v == 8));
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_copy_and_backs_off() {
        let t0 = Instant::now();
        let mut c: StaleCache<u32, &str> = StaleCache::new(LIFE);
        c.succeeded(Arc::new(7), t0);
        let mut now = t0 + LIFE;
        assert!(matches!(c.lookup(now), Lookup::Stale { refresh: true, .. }));
        let mut delays = Vec::new();
        for _ in 0..9 {
            let report = c.failed(now, "down");
            assert_eq!(report.age, Some(now - t0));
            delays.push(report.retry_in.as_secs());
            assert!(
                matches!(c.lookup(now + report.retry_in - Duration::from_millis(1)), Lookup::Stale { value, refresh: false } if *value == 7),
                "served stale, no attempt before the back-off ends"
            );
            now += report.retry_in;
            assert!(matches!(c.lookup(now), Lookup::Stale { value, refresh: true } if *value == 7));
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let s = c.status(now);
        assert!(s.loaded && s.stale);
        assert_eq!(s.age, Some(now - t0));
        assert_eq!(s.consecutive_failures, 9);
        assert_eq!(c.succeeded(Arc::new(9), now), 9, "the success ends nine failures");
        let s = c.status(now);
        assert!(!s.stale && s.consecutive_failures == 0 && s.age == Some(Duration::ZERO));
    }

    #[test]
    fn the_back_off_never_exceeds_the_lifetime() {
        assert_eq!(retry_delay(1, secs(1)), secs(1));
        assert_eq!(retry_delay(5, secs(1)), secs(1));
        assert_eq!(retry_delay(5, secs(10)), secs(10));
        assert_eq!(retry_delay(u32::MAX, LIFE), secs(60));
    }

    #[test]
    fn warnings_are_rate_limited_per_outage() {
        let t0 = Instant::now();
        let mut c: StaleCache<u32, &str> = StaleCache::new(secs(1));
        c.succeeded(Arc::new(1), t0);
        let warned: Vec<bool> = (0..130).map(|i| c.failed(t0 + secs(1 + i), "down").warn).collect();
        assert_eq!(warned.iter().filter(|w| **w).count(), 3, "at 1 s, 61 s and 121 s");
        assert!(warned[0] && warned[60] && warned[120]);
        c.succeeded(Arc::new(2), t0 + secs(200));
        assert!(c.failed(t0 + secs(202), "down").warn, "a new outage warns at once");
    }

    #[test]
    fn a_refresh_that_never_reports_back_does_not_block_refreshing_forever() {
        let t0 = Instant::now();
        let mut c: StaleCache<u32, &str> = StaleCache::new(LIFE);
        c.succeeded(Arc::new(1), t0);
        assert!(matches!(c.lookup(t0 + LIFE), Lookup::Stale { refresh: true, .. }));
        assert!(matches!(
            c.lookup(t0 + LIFE + secs(60)),
            Lookup::Stale { refresh: false, .. }
        ));
        assert!(matches!(
            c.lookup(t0 + LIFE + STUCK_REFRESH),
            Lookup::Stale { refresh: true, .. }
        ));
    }
}
