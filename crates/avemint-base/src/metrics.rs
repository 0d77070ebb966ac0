//! Prometheus metrics: where time goes, served as text on `GET /metrics`.
//!
//! One process-wide registry, built on first use. Every labelled child that a
//! request touches (route × status class, route latency, Ave call kind) is
//! created once up front and picked by index, so recording costs a few atomic
//! adds and no allocation. Routes are labelled by their template from the
//! route table (`crate::route`); any other path counts as `unmatched`, so raw
//! paths never become label values.
//!
//! Recording functions the rest of avemint calls: [`record_request`],
//! [`ave_call`], [`refresh_outcome`], [`cache_hit`] / [`cache_miss`] and
//! [`lock_wait`], [`secret_reload`]; gauges read at scrape time ([`store_pool`], [`ave_budget`],
//! [`ave_back_pressure`], [`readiness`]), each scrape setting them and rendering under one lock ([`scrape`]);
//! the process (`process_*`: memory, CPU, file descriptors) and `avemint_build_info`. None of them
//! ever sees a token, cookie or secret.
//!
//! Proxied routes (proxy mode) are labelled `proxied` in the request metrics
//! and have their own families labelled by the route's configured `path`
//! (operator-controlled and bounded, never the request's path), created for
//! each route at start-up: [`proxy_route`].

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::route::Route;
use crate::secret::SecretKind;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds, from 50 µs (a cached token mint) to 10 s (Ave's timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Waits for Ave's token budget: 1 ms up to its bound (Ave's request timeout).
const BUDGET_WAIT_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Lock waits are short or a problem: 1 µs to 1 s.
const LOCK_BUCKETS: &[f64] = &[0.000001, 0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0];

/// Time to an upstream API's status and headers: 1 ms to a route's default `timeout_ms` (30 s).
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label index of requests that match no route.
const UNMATCHED: usize = Route::ALL.len();
/// The label index of requests to a proxied route (`proxied`; per route in the `avemint_proxy_*` families).
const PROXIED: usize = UNMATCHED + 1;
/// The label index of requests the SPA answers (`spa`: its files, or its development server).
const SPA: usize = PROXIED + 1;
const STATUS_CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A route label, resolved once per request without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLabel(usize);

impl RouteLabel {
    /// The label of a request for `route` (`None`: `unmatched`).
    pub fn of(route: Option<Route>) -> Self {
        // `Route::ALL` lists the routes in declaration order (checked by `route`'s tests).
        Self(route.map_or(UNMATCHED, |r| r as usize))
    }

    /// The label of a request to a proxied route.
    pub const PROXIED: Self = Self(PROXIED);

    /// The label of a request the SPA answers (`[spa]`).
    pub const SPA: Self = Self(SPA);

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match Route::ALL.get(self.0) {
            Some(route) => route.metric_label(),
            None if self.0 == PROXIED => "proxied",
            None if self.0 == SPA => "spa",
            None => "unmatched",
        }
    }
}

/// The kinds of call avemint makes to Ave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AveCall {
    /// `GET /.well-known/openid-configuration`.
    Discovery,
    /// `GET` of Ave's JWKS.
    Jwks,
    /// Token endpoint, `authorization_code` grant.
    CodeExchange,
    /// Token endpoint, `refresh_token` grant.
    Refresh,
}

impl AveCall {
    const ALL: [AveCall; 4] = [
        AveCall::Discovery,
        AveCall::Jwks,
        AveCall::CodeExchange,
        AveCall::Refresh,
    ];

    /// The OAuth `grant_type` of a token-endpoint call (`""` for GETs).
    pub fn grant_type(self) -> &'static str {
        match self {
            AveCall::CodeExchange => "authorization_code",
            AveCall::Refresh => "refresh_token",
            AveCall::Discovery | AveCall::Jwks => "",
        }
    }

    fn label(self) -> &'static str {
        match self {
            AveCall::Discovery => "discovery",
            AveCall::Jwks => "jwks",
            AveCall::CodeExchange => "authorization_code",
            AveCall::Refresh => "refresh_token",
        }
    }
}

/// How an Ave call failed, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AveFailure {
    /// Timeout, refused connection, TLS, unreadable body.
    Transport,
    /// The request may have reached Ave but its answer was lost.
    LostResponse,
    /// HTTP 429.
    RateLimited,
    /// HTTP 5xx.
    Server,
    /// An OAuth error answer (`invalid_grant`, …).
    Rejected,
    /// An answer that does not follow the protocol.
    Malformed,
}

impl AveFailure {
    const ALL: [AveFailure; 6] = [
        AveFailure::Transport,
        AveFailure::LostResponse,
        AveFailure::RateLimited,
        AveFailure::Server,
        AveFailure::Rejected,
        AveFailure::Malformed,
    ];

    fn label(self) -> &'static str {
        match self {
            AveFailure::Transport => "transport",
            AveFailure::LostResponse => "lost_response",
            AveFailure::RateLimited => "rate_limited",
            AveFailure::Server => "server",
            AveFailure::Rejected => "rejected",
            AveFailure::Malformed => "malformed",
        }
    }
}

/// Every metric avemint exports.
struct Metrics {
    registry: Registry,
    /// `[route][status class]`.
    requests: Vec<[IntCounter; 5]>,
    /// `[route]`.
    request_seconds: Vec<Histogram>,
    /// `[AveCall]`.
    ave_seconds: Vec<Histogram>,
    /// `[AveCall][AveFailure]`.
    ave_errors: Vec<Vec<IntCounter>>,
    refresh_outcomes: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    lock_wait_seconds: HistogramVec,
    budget_wait_seconds: HistogramVec,
    budget_refused: IntCounterVec,
    code_exchange_failures: IntCounter,
    code_exchange_refused: IntCounterVec,
    credential_failures: IntCounterVec,
    /// `POST /oauth/token` answers by grant and outcome.
    token_service: IntCounterVec,
    /// `[in_use, idle]`.
    store_pool: [IntGauge; 2],
    store_pool_max: IntGauge,
    /// `[BudgetClass]` (renewal, sign_in).
    budget_used: [IntGauge; 2],
    budget_limit: [IntGauge; 2],
    budget_waiting: [IntGauge; 2],
    ave_circuit_state: IntGauge,
    ave_paused_seconds: IntGauge,
    cache_hit_ratio: Gauge,
    ready: IntGauge,
    /// By `document` (`AveDocument`).
    metadata_loaded: IntGaugeVec,
    metadata_age_seconds: GaugeVec,
    metadata_stale: IntGaugeVec,
    metadata_ttl_seconds: IntGauge,
    store_up: IntGauge,
    /// By `dependency`: `ave_discovery`, `ave_jwks`, `store`.
    dependency_up: IntGaugeVec,
    proxy_requests: IntCounterVec,
    proxy_upstream_seconds: HistogramVec,
    proxy_streams: IntGaugeVec,
    secret_reloads: IntCounterVec,
}

/// Only fails on a programming error (duplicate or malformed metric names), which the unit tests exercise.
fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests_vec = IntCounterVec::new(
        Opts::new(
            "avemint_http_requests_total",
            "HTTP requests by route template and status class",
        ),
        &["route", "status"],
    )?;
    let seconds_vec = HistogramVec::new(
        HistogramOpts::new(
            "avemint_http_request_duration_seconds",
            "HTTP request latency by route template",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["route"],
    )?;
    let ave_seconds_vec = HistogramVec::new(
        HistogramOpts::new(
            "avemint_ave_request_duration_seconds",
            "Latency of calls to Ave by kind",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["call"],
    )?;
    let ave_errors_vec = IntCounterVec::new(
        Opts::new(
            "avemint_ave_request_errors_total",
            "Failed calls to Ave by kind and failure",
        ),
        &["call", "failure"],
    )?;
    let refresh_outcomes = IntCounterVec::new(
        Opts::new("avemint_session_refresh_total", "Renewals of Ave tokens by outcome"),
        &["outcome"],
    )?;
    let cache_hits = IntCounter::new("avemint_session_cache_hits_total", "Session lookups served from memory")?;
    let cache_misses = IntCounter::new(
        "avemint_session_cache_misses_total",
        "Session lookups that went to the store",
    )?;
    let lock_wait_seconds = HistogramVec::new(
        HistogramOpts::new("avemint_lock_wait_seconds", "Time spent waiting for a lock, by lock")
            .buckets(LOCK_BUCKETS.to_vec()),
        &["lock"],
    )?;
    registry.register(Box::new(requests_vec.clone()))?;
    registry.register(Box::new(seconds_vec.clone()))?;
    registry.register(Box::new(ave_seconds_vec.clone()))?;
    registry.register(Box::new(ave_errors_vec.clone()))?;
    registry.register(Box::new(refresh_outcomes.clone()))?;
    registry.register(Box::new(cache_hits.clone()))?;
    registry.register(Box::new(cache_misses.clone()))?;
    registry.register(Box::new(lock_wait_seconds.clone()))?;
    let budget_wait_seconds = HistogramVec::new(
        HistogramOpts::new(
            "avemint_ave_budget_wait_seconds",
            "Time token-endpoint calls waited for Ave's token budget (calls that had to wait), by class",
        )
        .buckets(BUDGET_WAIT_BUCKETS.to_vec()),
        &["class"],
    )?;
    let budget_refused = IntCounterVec::new(
        Opts::new(
            "avemint_ave_budget_refused_total",
            "Token-endpoint calls refused because Ave's token budget had no room within the wait bound, by class",
        ),
        &["class"],
    )?;
    let code_exchange_failures = IntCounter::new(
        "avemint_sign_in_exchange_failures_total",
        "Code exchanges Ave rejected (counted against the client's network)",
    )?;
    let code_exchange_refused = IntCounterVec::new(
        Opts::new(
            "avemint_sign_in_exchange_refused_total",
            "Sign-in callbacks refused (429) before calling Ave because the client's network failed too many code \
             exchanges, by network grouping",
        ),
        &["network"],
    )?;
    registry.register(Box::new(budget_wait_seconds.clone()))?;
    registry.register(Box::new(budget_refused.clone()))?;
    registry.register(Box::new(code_exchange_failures.clone()))?;
    registry.register(Box::new(code_exchange_refused.clone()))?;
    let credential_failures = IntCounterVec::new(
        Opts::new(
            "avemint_credential_failures_total",
            "Wrong credentials at an endpoint that checks a secret (endpoint: introspect, admin, token), by answer: \
             rejected (401, or 400 for a refused subject token at token) or rate_limited (429, the client's \
             network is past its limit)",
        ),
        &["endpoint", "answer"],
    )?;
    registry.register(Box::new(credential_failures.clone()))?;
    let token_service = IntCounterVec::new(
        Opts::new(
            "avemint_token_service_requests_total",
            "POST /oauth/token answers by grant (client_credentials, token_exchange_ave, token_exchange_delegation, \
             unknown) and outcome (issued, or the OAuth error code answered)",
        ),
        &["grant", "outcome"],
    )?;
    registry.register(Box::new(token_service.clone()))?;
    for grant in TOKEN_GRANTS {
        token_service.get_metric_with_label_values(&[grant, "issued"])?;
    }
    for endpoint in ["introspect", "admin", "token"] {
        for answer in ["rejected", "rate_limited"] {
            credential_failures.get_metric_with_label_values(&[endpoint, answer])?;
        }
    }
    for class in ["renewal", "sign_in"] {
        budget_wait_seconds.get_metric_with_label_values(&[class])?;
        budget_refused.get_metric_with_label_values(&[class])?;
    }
    for network in ["ipv4_24", "ipv6_64", "ipv6_48"] {
        code_exchange_refused.get_metric_with_label_values(&[network])?;
    }
    let secret_reloads = IntCounterVec::new(
        Opts::new(
            "avemint_secret_reloads_total",
            "Reloads of secrets and signing keys after a file change or SIGHUP, by kind and outcome (ok, failed)",
        ),
        &["kind", "outcome"],
    )?;
    registry.register(Box::new(secret_reloads.clone()))?;
    for kind in SecretKind::ALL {
        for outcome in ["ok", "failed"] {
            secret_reloads.get_metric_with_label_values(&[kind.label(), outcome])?;
        }
    }

    let pool_vec = IntGaugeVec::new(
        Opts::new(
            "avemint_store_pool_connections",
            "Connections of the session store's pool by state (in_use: lent to a statement, idle: open and free)",
        ),
        &["state"],
    )?;
    let store_pool = [
        pool_vec.get_metric_with_label_values(&["in_use"])?,
        pool_vec.get_metric_with_label_values(&["idle"])?,
    ];
    let store_pool_max = IntGauge::new(
        "avemint_store_pool_max_connections",
        "The most connections the session store's pool opens",
    )?;
    let class_gauges = |name: &str, help: &str| -> Result<(IntGaugeVec, [IntGauge; 2]), prometheus::Error> {
        let vec = IntGaugeVec::new(Opts::new(name, help), &["class"])?;
        let pair = [
            vec.get_metric_with_label_values(&["renewal"])?,
            vec.get_metric_with_label_values(&["sign_in"])?,
        ];
        Ok((vec, pair))
    };
    let (budget_used_vec, budget_used) = class_gauges(
        "avemint_ave_budget_used",
        "Token-endpoint calls in the last (sliding) minute, by class",
    )?;
    let (budget_limit_vec, budget_limit) = class_gauges(
        "avemint_ave_budget_limit",
        "The most token-endpoint calls a class may make per sliding minute",
    )?;
    let (budget_waiting_vec, budget_waiting) = class_gauges(
        "avemint_ave_budget_waiting",
        "Token-endpoint calls waiting now for room in Ave's token budget, by class",
    )?;
    let ave_circuit_state = IntGauge::new(
        "avemint_ave_circuit_state",
        "The Ave client's circuit: 0 closed (calls go out), 1 open (token calls held back after a run of \
         failures), 2 half-open (one probe call goes out)",
    )?;
    let ave_paused_seconds = IntGauge::new(
        "avemint_ave_paused_seconds",
        "Seconds left of the pause of every token call after Ave's 429 (Retry-After), learnt here or from \
         another instance; 0 when not paused",
    )?;
    let build_info = IntGaugeVec::new(
        Opts::new("avemint_build_info", "The running avemint's version (always 1)"),
        &["version"],
    )?;
    build_info
        .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
        .set(1);
    registry.register(Box::new(pool_vec))?;
    registry.register(Box::new(store_pool_max.clone()))?;
    registry.register(Box::new(budget_used_vec))?;
    registry.register(Box::new(budget_limit_vec))?;
    registry.register(Box::new(budget_waiting_vec))?;
    registry.register(Box::new(ave_circuit_state.clone()))?;
    registry.register(Box::new(ave_paused_seconds.clone()))?;
    registry.register(Box::new(build_info))?;
    let cache_hit_ratio = Gauge::new(
        "avemint_session_cache_hit_ratio",
        "Share of session lookups served from memory since start",
    )?;
    let ready = IntGauge::new(
        "avemint_ready",
        "1 when /readyz answers 200 (Ave's discovery and JWKS were loaded once)",
    )?;
    let metadata_loaded = IntGaugeVec::new(
        Opts::new(
            "avemint_ave_metadata_loaded",
            "1 once Ave's document was loaded since start",
        ),
        &["document"],
    )?;
    let metadata_age_seconds = GaugeVec::new(
        Opts::new(
            "avemint_ave_metadata_age_seconds",
            "Seconds since the copy of Ave's document in use was fetched",
        ),
        &["document"],
    )?;
    let metadata_stale = IntGaugeVec::new(
        Opts::new(
            "avemint_ave_metadata_stale",
            "1 while Ave's document is served past its lifetime because re-fetching it failed",
        ),
        &["document"],
    )?;
    let metadata_ttl_seconds = IntGauge::new(
        "avemint_ave_metadata_ttl_seconds",
        "How long Ave's discovery and JWKS are used before a re-fetch",
    )?;
    let store_up = IntGauge::new(
        "avemint_store_up",
        "1 when the session store answered a check within 0.5 s",
    )?;
    let dependency_up = IntGaugeVec::new(
        Opts::new(
            "avemint_dependency_up",
            "1 when the dependency is fine now: Ave's document loaded and fresh (not stale), the store answering",
        ),
        &["dependency"],
    )?;
    registry.register(Box::new(cache_hit_ratio.clone()))?;
    registry.register(Box::new(ready.clone()))?;
    registry.register(Box::new(metadata_loaded.clone()))?;
    registry.register(Box::new(metadata_age_seconds.clone()))?;
    registry.register(Box::new(metadata_stale.clone()))?;
    registry.register(Box::new(metadata_ttl_seconds.clone()))?;
    registry.register(Box::new(store_up.clone()))?;
    registry.register(Box::new(dependency_up.clone()))?;
    // Resident memory, CPU seconds, open and maximum file descriptors, start time (read from /proc at scrape).
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

    let proxy_requests = IntCounterVec::new(
        Opts::new(
            "avemint_proxy_requests_total",
            "Requests to proxied routes by route (its configured path) and status class",
        ),
        &["route", "status"],
    )?;
    let proxy_upstream_seconds = HistogramVec::new(
        HistogramOpts::new(
            "avemint_proxy_upstream_duration_seconds",
            "Time from sending a proxied request upstream to the upstream's status and headers, by route",
        )
        .buckets(UPSTREAM_BUCKETS.to_vec()),
        &["route"],
    )?;
    let proxy_streams = IntGaugeVec::new(
        Opts::new(
            "avemint_proxy_streams_in_flight",
            "Proxied answers still streaming to the browser (kind http) and open proxied WebSockets (kind \
             websocket), by route",
        ),
        &["route", "kind"],
    )?;
    registry.register(Box::new(proxy_requests.clone()))?;
    registry.register(Box::new(proxy_upstream_seconds.clone()))?;
    registry.register(Box::new(proxy_streams.clone()))?;

    let routes = (0..=SPA).map(|i| RouteLabel(i).as_str());
    let mut requests = Vec::with_capacity(SPA + 1);
    let mut request_seconds = Vec::with_capacity(SPA + 1);
    for route in routes {
        let mut row = Vec::with_capacity(STATUS_CLASSES.len());
        for class in STATUS_CLASSES {
            row.push(requests_vec.get_metric_with_label_values(&[route, class])?);
        }
        let row: [IntCounter; 5] = row
            .try_into()
            .map_err(|_| prometheus::Error::Msg("five status classes".into()))?;
        requests.push(row);
        request_seconds.push(seconds_vec.get_metric_with_label_values(&[route])?);
    }
    let mut ave_seconds = Vec::with_capacity(AveCall::ALL.len());
    let mut ave_errors = Vec::with_capacity(AveCall::ALL.len());
    for call in AveCall::ALL {
        ave_seconds.push(ave_seconds_vec.get_metric_with_label_values(&[call.label()])?);
        let mut row = Vec::with_capacity(AveFailure::ALL.len());
        for failure in AveFailure::ALL {
            row.push(ave_errors_vec.get_metric_with_label_values(&[call.label(), failure.label()])?);
        }
        ave_errors.push(row);
    }
    Ok(Metrics {
        registry,
        requests,
        request_seconds,
        ave_seconds,
        ave_errors,
        refresh_outcomes,
        cache_hits,
        cache_misses,
        lock_wait_seconds,
        budget_wait_seconds,
        budget_refused,
        code_exchange_failures,
        code_exchange_refused,
        credential_failures,
        token_service,
        store_pool,
        store_pool_max,
        budget_used,
        budget_limit,
        budget_waiting,
        ave_circuit_state,
        ave_paused_seconds,
        cache_hit_ratio,
        ready,
        metadata_loaded,
        metadata_age_seconds,
        metadata_stale,
        metadata_ttl_seconds,
        store_up,
        dependency_up,
        proxy_requests,
        proxy_upstream_seconds,
        proxy_streams,
        secret_reloads,
    })
}

/// Records one reload of a secret or of the signing keys that changed something (`ok`) or was refused.
pub fn secret_reload(kind: SecretKind, ok: bool) {
    let Some(m) = metrics() else { return };
    let outcome = if ok { "ok" } else { "failed" };
    if let Ok(c) = m.secret_reloads.get_metric_with_label_values(&[kind.label(), outcome]) {
        c.inc();
    }
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

fn metrics() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics could not be registered; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// Records one finished HTTP request.
pub fn record_request(route: RouteLabel, status: u16, elapsed: Duration) {
    let Some(m) = metrics() else { return };
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    if let Some(row) = m.requests.get(route.0) {
        row[class].inc();
    }
    if let Some(h) = m.request_seconds.get(route.0) {
        h.observe(elapsed.as_secs_f64());
    }
}

/// Records one call to Ave: its latency, and its failure if it failed.
pub fn ave_call(call: AveCall, elapsed: Duration, failure: Option<AveFailure>) {
    let Some(m) = metrics() else { return };
    let i = call as usize;
    if let Some(h) = m.ave_seconds.get(i) {
        h.observe(elapsed.as_secs_f64());
    }
    if let Some(c) = failure.and_then(|f| m.ave_errors.get(i)?.get(f as usize)) {
        c.inc();
    }
}

/// Counts one renewal of a session's Ave tokens by outcome, e.g. `renewed`,
/// `rejected`, `unavailable`, `lost_race`. Pass a fixed, short snake_case word:
/// anything else is counted as `other`, so label cardinality stays bounded.
pub fn refresh_outcome(outcome: &str) {
    let Some(m) = metrics() else { return };
    let valid =
        !outcome.is_empty() && outcome.len() <= 32 && outcome.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let label = if valid { outcome } else { "other" };
    if let Ok(c) = m.refresh_outcomes.get_metric_with_label_values(&[label]) {
        c.inc();
    }
}

/// A session lookup answered from the in-process cache.
pub fn cache_hit() {
    if let Some(m) = metrics() {
        m.cache_hits.inc();
    }
}

/// A session lookup that had to go to the store.
pub fn cache_miss() {
    if let Some(m) = metrics() {
        m.cache_misses.inc();
    }
}

/// Records how long a task waited for the lock named `lock` (a fixed name such as `session_refresh`).
pub fn lock_wait(lock: &'static str, waited: Duration) {
    let Some(m) = metrics() else { return };
    if let Ok(h) = m.lock_wait_seconds.get_metric_with_label_values(&[lock]) {
        h.observe(waited.as_secs_f64());
    }
}

/// Records a token-endpoint call that waited `waited` for Ave's token budget (`class`: `renewal` or `sign_in`).
pub fn budget_wait(class: &'static str, waited: Duration) {
    let Some(m) = metrics() else { return };
    if let Ok(h) = m.budget_wait_seconds.get_metric_with_label_values(&[class]) {
        h.observe(waited.as_secs_f64());
    }
}

/// Counts a token-endpoint call refused by Ave's token budget (`class`: `renewal` or `sign_in`).
pub fn budget_refused(class: &'static str) {
    let Some(m) = metrics() else { return };
    if let Ok(c) = m.budget_refused.get_metric_with_label_values(&[class]) {
        c.inc();
    }
}

/// Counts a code exchange Ave rejected.
pub fn sign_in_exchange_failed() {
    if let Some(m) = metrics() {
        m.code_exchange_failures.inc();
    }
}

/// Counts a callback refused before calling Ave; `network` is `ipv4_24`, `ipv6_64` or `ipv6_48`.
pub fn sign_in_exchange_refused(network: &'static str) {
    let Some(m) = metrics() else { return };
    if let Ok(c) = m.code_exchange_refused.get_metric_with_label_values(&[network]) {
        c.inc();
    }
}

/// Counts a wrong credential at `endpoint` (`introspect`, `admin`) and how it was `answer`ed (`rejected`,
/// `rate_limited`).
pub fn credential_failure(endpoint: &'static str, answer: &'static str) {
    let Some(m) = metrics() else { return };
    if let Ok(c) = m.credential_failures.get_metric_with_label_values(&[endpoint, answer]) {
        c.inc();
    }
}

/// The `grant` labels of `avemint_token_service_requests_total`.
pub const TOKEN_GRANTS: [&str; 4] = [
    "client_credentials",
    "token_exchange_ave",
    "token_exchange_delegation",
    "unknown",
];

/// Counts one answer of `POST /oauth/token`: `grant` (one of [`TOKEN_GRANTS`]) and `outcome` (`issued`, or the
/// OAuth error code of the answer: a fixed, small set).
pub fn token_service(grant: &'static str, outcome: &'static str) {
    let Some(m) = metrics() else { return };
    if let Ok(c) = m.token_service.get_metric_with_label_values(&[grant, outcome]) {
        c.inc();
    }
}

/// The session store's pool at scrape time.
pub fn store_pool(in_use: u32, idle: u32, max: u32) {
    let Some(m) = metrics() else { return };
    m.store_pool[0].set(i64::from(in_use));
    m.store_pool[1].set(i64::from(idle));
    m.store_pool_max.set(i64::from(max));
}

/// One class (`0`: renewal, `1`: sign-in) of Ave's token budget at scrape time.
pub fn ave_budget(class: usize, used: u32, limit: u32, waiting: u32) {
    let Some(m) = metrics() else { return };
    if let (Some(u), Some(l), Some(w)) = (
        m.budget_used.get(class),
        m.budget_limit.get(class),
        m.budget_waiting.get(class),
    ) {
        u.set(i64::from(used));
        l.set(i64::from(limit));
        w.set(i64::from(waiting));
    }
}

/// Ave's back-pressure at scrape time: the time left of the pause after a 429, and the circuit's state
/// (`0` closed, `1` open, `2` half-open).
pub fn ave_back_pressure(paused: Duration, circuit: u8) {
    let Some(m) = metrics() else { return };
    let secs = paused.as_secs() + u64::from(paused.subsec_nanos() > 0);
    m.ave_paused_seconds.set(i64::try_from(secs).unwrap_or(i64::MAX));
    m.ave_circuit_state.set(i64::from(circuit));
}

/// One of Ave's documents as the readiness gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AveDocument {
    /// Loaded (possibly a stale copy) since start.
    pub loaded: bool,
    /// Since the copy in use was fetched (`None` before the first load: no sample).
    pub age: Option<Duration>,
    /// Served past its lifetime because re-fetching it failed.
    pub stale: bool,
}

/// This instance's readiness at scrape time (what `/readyz` answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub discovery: AveDocument,
    pub jwks: AveDocument,
    pub metadata_ttl: Duration,
    pub store_up: bool,
}

/// The readiness gauges at scrape time: `avemint_ready`, `avemint_ave_metadata_*`, `avemint_store_up` and
/// `avemint_dependency_up`.
pub fn readiness(r: &Readiness) {
    let Some(m) = metrics() else { return };
    m.ready.set(i64::from(r.ready));
    for (doc, s) in [("discovery", &r.discovery), ("jwks", &r.jwks)] {
        if let Ok(g) = m.metadata_loaded.get_metric_with_label_values(&[doc]) {
            g.set(i64::from(s.loaded));
        }
        match s.age {
            // Milliseconds are the precision shown.
            Some(age) => {
                if let Ok(g) = m.metadata_age_seconds.get_metric_with_label_values(&[doc]) {
                    g.set((age.as_secs_f64() * 1000.0).round() / 1000.0);
                }
            }
            None => {
                // Absent (not 0) before the first load; an error only says it was absent already.
                let _ = m.metadata_age_seconds.remove_label_values(&[doc]);
            }
        }
        if let Ok(g) = m.metadata_stale.get_metric_with_label_values(&[doc]) {
            g.set(i64::from(s.stale));
        }
        let dependency = if doc == "discovery" {
            "ave_discovery"
        } else {
            "ave_jwks"
        };
        if let Ok(g) = m.dependency_up.get_metric_with_label_values(&[dependency]) {
            g.set(i64::from(s.loaded && !s.stale));
        }
    }
    m.metadata_ttl_seconds
        .set(i64::try_from(r.metadata_ttl.as_secs()).unwrap_or(i64::MAX));
    m.store_up.set(i64::from(r.store_up));
    if let Ok(g) = m.dependency_up.get_metric_with_label_values(&["store"]) {
        g.set(i64::from(r.store_up));
    }
}

/// What streams through a proxied route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// An HTTP answer whose body is still being sent.
    Http,
    /// An open WebSocket.
    WebSocket,
}

/// The metrics of one proxied route, its children created once (at start-up).
#[derive(Debug, Clone, Default)]
pub struct ProxyRouteMetrics(Option<Arc<ProxyChildren>>);

#[derive(Debug)]
struct ProxyChildren {
    requests: [IntCounter; 5],
    upstream_seconds: Histogram,
    /// `[StreamKind]`.
    streams: [IntGauge; 2],
}

/// Creates the children of the proxied route whose configured path is `path` (all zero until used).
pub fn proxy_route(path: &str) -> ProxyRouteMetrics {
    let children = metrics().and_then(|m| {
        let class = |c: &str| m.proxy_requests.get_metric_with_label_values(&[path, c]).ok();
        let kind = |k: &str| m.proxy_streams.get_metric_with_label_values(&[path, k]).ok();
        Some(Arc::new(ProxyChildren {
            requests: [
                class("1xx")?,
                class("2xx")?,
                class("3xx")?,
                class("4xx")?,
                class("5xx")?,
            ],
            upstream_seconds: m.proxy_upstream_seconds.get_metric_with_label_values(&[path]).ok()?,
            streams: [kind("http")?, kind("websocket")?],
        }))
    });
    ProxyRouteMetrics(children)
}

impl ProxyRouteMetrics {
    /// Counts one answered request (avemint's own refusals included).
    pub fn request(&self, status: u16) {
        if let Some(c) = &self.0 {
            c.requests[usize::from(status / 100).clamp(1, 5) - 1].inc();
        }
    }

    /// Records how long the upstream took to send its status and headers.
    pub fn upstream_latency(&self, elapsed: Duration) {
        if let Some(c) = &self.0 {
            c.upstream_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// One more stream in flight, until the returned guard is dropped.
    pub fn stream(&self, kind: StreamKind) -> InFlightStream {
        let gauge = self.0.as_ref().map(|c| c.streams[kind as usize].clone());
        if let Some(g) = &gauge {
            g.inc();
        }
        InFlightStream(gauge)
    }
}

/// A stream counted in `avemint_proxy_streams_in_flight` while it lives.
#[derive(Debug)]
pub struct InFlightStream(Option<IntGauge>);

impl Drop for InFlightStream {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// One scrape at a time: the gauges read at scrape time are this scrape's when rendered, also with several
/// instances' states in one process (the tests').
static SCRAPE: Mutex<()> = Mutex::new(());

/// One scrape: `set` sets the gauges read at scrape time ([`store_pool`], [`ave_budget`], [`ave_back_pressure`],
/// [`readiness`]), then every metric is rendered in the Prometheus text format.
pub fn scrape(set: impl FnOnce()) -> String {
    let _one_at_a_time = SCRAPE.lock().unwrap_or_else(PoisonError::into_inner);
    set();
    render()
}

/// Renders every metric in the Prometheus text format, after setting the derived
/// `avemint_session_cache_hit_ratio` gauge.
fn render() -> String {
    let Some(m) = metrics() else { return String::new() };
    let (hits, misses) = (m.cache_hits.get(), m.cache_misses.get());
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    };
    m.cache_hit_ratio.set(ratio);
    let mut out = Vec::with_capacity(16 * 1024);
    if TextEncoder::new().encode(&m.registry.gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_routes_map_to_templates() {
        assert!(build().is_ok());
        assert_eq!(RouteLabel::of(Some(Route::Token)).as_str(), "/auth/token");
        assert_eq!(RouteLabel::of(Route::of("/docs/index.js")).as_str(), "/docs");
        assert_eq!(RouteLabel::of(None).as_str(), "unmatched");
        assert_eq!(RouteLabel::PROXIED.as_str(), "proxied");
        assert_eq!(RouteLabel::SPA.as_str(), "spa");
    }

    #[test]
    fn recordings_show_up_in_the_text_format() {
        record_request(RouteLabel::of(Some(Route::Healthz)), 200, Duration::from_micros(80));
        record_request(RouteLabel::of(None), 404, Duration::from_micros(80));
        ave_call(AveCall::Refresh, Duration::from_millis(3), Some(AveFailure::Rejected));
        refresh_outcome("renewed");
        refresh_outcome("Not A Label {}");
        cache_hit();
        cache_miss();
        lock_wait("session_refresh", Duration::from_micros(5));
        budget_wait("sign_in", Duration::from_millis(20));
        budget_refused("renewal");
        sign_in_exchange_failed();
        sign_in_exchange_refused("ipv6_48");
        credential_failure("admin", "rate_limited");
        store_pool(3, 5, 10);
        ave_budget(1, 7, 120, 2);
        ave_back_pressure(Duration::from_millis(29_200), 1);
        let route = proxy_route("/api/unit");
        route.request(502);
        route.upstream_latency(Duration::from_millis(2));
        let open = route.stream(StreamKind::WebSocket);
        let text = scrape(|| {});
        assert!(text.contains(r#"avemint_proxy_streams_in_flight{kind="websocket",route="/api/unit"} 1"#));
        drop(open);
        assert!(scrape(|| {}).contains(r#"avemint_proxy_streams_in_flight{kind="websocket",route="/api/unit"} 0"#));
        for needle in [
            r#"avemint_http_requests_total{route="/healthz",status="2xx"}"#,
            r#"avemint_http_requests_total{route="unmatched",status="4xx"}"#,
            r#"avemint_http_request_duration_seconds_bucket{route="/healthz",le="0.0001"}"#,
            r#"avemint_ave_request_errors_total{call="refresh_token",failure="rejected"}"#,
            r#"avemint_session_refresh_total{outcome="renewed"}"#,
            r#"avemint_session_refresh_total{outcome="other"}"#,
            "avemint_session_cache_hits_total",
            "avemint_session_cache_hit_ratio ",
            r#"avemint_lock_wait_seconds_count{lock="session_refresh"}"#,
            r#"avemint_ave_budget_wait_seconds_count{class="sign_in"}"#,
            r#"avemint_ave_budget_refused_total{class="renewal"}"#,
            "avemint_sign_in_exchange_failures_total",
            r#"avemint_sign_in_exchange_refused_total{network="ipv6_48"}"#,
            r#"avemint_credential_failures_total{answer="rate_limited",endpoint="admin"}"#,
            r#"avemint_credential_failures_total{answer="rejected",endpoint="introspect"} "#,
            r#"avemint_store_pool_connections{state="in_use"} 3"#,
            r#"avemint_store_pool_connections{state="idle"} 5"#,
            "avemint_store_pool_max_connections 10",
            r#"avemint_ave_budget_used{class="sign_in"} 7"#,
            r#"avemint_ave_budget_limit{class="sign_in"} 120"#,
            r#"avemint_ave_budget_waiting{class="sign_in"} 2"#,
            "avemint_ave_paused_seconds 30",
            "avemint_ave_circuit_state 1",
            concat!(r#"avemint_build_info{version=""#, env!("CARGO_PKG_VERSION"), r#""} 1"#),
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            r#"avemint_proxy_requests_total{route="/api/unit",status="5xx"} 1"#,
            r#"avemint_proxy_requests_total{route="/api/unit",status="2xx"} 0"#,
            r#"avemint_proxy_upstream_duration_seconds_count{route="/api/unit"} 1"#,
            r#"avemint_proxy_streams_in_flight{kind="http",route="/api/unit"} 0"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
