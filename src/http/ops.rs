//! `/healthz` and `/readyz`: liveness and readiness for orchestrators and load
//! balancers, and what the health gauges of `/metrics` show (`metrics::readiness`).
//!
//! Readiness means "this instance can serve": Ave's discovery document and
//! JWKS were loaded once since start (a stale copy is fine). Neither an Ave
//! outage nor a store outage flips it, because both hit every instance at
//! once: taking them all out of the load balancer would turn per-request 503s
//! into an outage of everything, avemint's own JWKS and discovery included.
//! Both are reported instead (`status: degraded`, the age of Ave's documents,
//! `store: false`) in the body and in `/metrics`. The store cannot fail
//! readiness at all: avemint does not start without reaching it (migrations
//! run at start). Neither check waits on Ave; the store check is bounded by
//! [`STORE_CHECK_TIMEOUT`], so probes answer promptly during any outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::{ApiTags, AppState};
use avemint_core::ave::{DocumentStatus, MetadataStatus};

/// How long `/readyz` and `/metrics` wait for the store to answer before
/// reporting it down.
pub(crate) const STORE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// How long one store check's answer is reused: probes and scrapes, however
/// many, cost the store at most one ping per interval (they are unauthenticated,
/// and the pool serves sessions first).
pub(crate) const STORE_CHECK_REUSE: Duration = Duration::from_secs(1);

/// The last answer of the store check, shared by `/readyz` and `/metrics`.
#[derive(Default)]
pub(crate) struct StoreCheck {
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl StoreCheck {
    /// True when the store answered a ping within [`STORE_CHECK_TIMEOUT`], at
    /// most [`STORE_CHECK_REUSE`] ago. One check at a time: concurrent callers
    /// wait for it and share its answer.
    pub(crate) async fn store_answers(&self, sessions: &avemint_core::session::Sessions) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, up)) = *last
            && at.elapsed() < STORE_CHECK_REUSE
        {
            return up;
        }
        let up = matches!(
            tokio::time::timeout(STORE_CHECK_TIMEOUT, sessions.ping()).await,
            Ok(Ok(()))
        );
        *last = Some((Instant::now(), up));
        up
    }
}

/// The operational endpoints.
pub(crate) struct OpsApi;

/// The overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum HealthStatus {
    /// Everything is fine (`/healthz`: the process answers).
    Ok,
    /// Ready and serving, but Ave's discovery document or JWKS is a stale copy
    /// (re-fetching it fails) or the session store does not answer (session
    /// requests get 503 with `Retry-After` meanwhile).
    Degraded,
    /// Not ready: Ave's discovery document or JWKS has not been loaded since start.
    Unavailable,
}

/// Health status.
#[derive(Object)]
pub(crate) struct Health {
    /// `ok`; `/readyz` also answers `degraded` (200) and `unavailable` (503).
    pub status: HealthStatus,
    /// Ave's discovery document is loaded (possibly a stale copy).
    #[oai(skip_serializing_if_is_none)]
    pub ave_discovery: Option<bool>,
    /// Ave's JWKS is loaded (possibly a stale copy).
    #[oai(skip_serializing_if_is_none)]
    pub ave_jwks: Option<bool>,
    /// Seconds since the discovery document in use was fetched (absent before the first load).
    #[oai(skip_serializing_if_is_none)]
    pub ave_discovery_age_seconds: Option<u64>,
    /// Seconds since the JWKS in use was fetched (absent before the first load).
    #[oai(skip_serializing_if_is_none)]
    pub ave_jwks_age_seconds: Option<u64>,
    /// The discovery document is older than its lifetime because re-fetching it failed.
    #[oai(skip_serializing_if_is_none)]
    pub ave_discovery_stale: Option<bool>,
    /// The JWKS is older than its lifetime because re-fetching it failed.
    #[oai(skip_serializing_if_is_none)]
    pub ave_jwks_stale: Option<bool>,
    /// How long Ave's documents are used before a re-fetch (`AVEMINT_AVE_METADATA_TTL`).
    #[oai(skip_serializing_if_is_none)]
    pub ave_metadata_ttl_seconds: Option<u64>,
    /// The session store answered a check within 0.5 s (checks are at most 1 s
    /// apart and shared by all callers). Never affects readiness.
    #[oai(skip_serializing_if_is_none)]
    pub store: Option<bool>,
    /// Calls per minute this instance allows itself at Ave's token endpoint
    /// (Ave allows 180 per client id, shared by all instances).
    #[oai(skip_serializing_if_is_none)]
    pub ave_token_budget_per_minute: Option<u32>,
    /// How that budget is split and used over the last minute.
    #[oai(skip_serializing_if_is_none)]
    pub ave_token_budget: Option<BudgetHealth>,
}

/// The token-endpoint budget over the last (sliding) minute, per class.
#[derive(Object)]
pub(crate) struct BudgetHealth {
    /// Renewals (`refresh_token` grant): may use the whole budget.
    pub renewal: BudgetClassHealth,
    /// Sign-ins (`authorization_code` grant): may use the budget less the renewal reserve.
    pub sign_in: BudgetClassHealth,
}

/// One class of the token-endpoint budget.
#[derive(Object)]
pub(crate) struct BudgetClassHealth {
    /// Calls per minute this class may make at most.
    pub limit: u32,
    /// The part of the budget only this class may use (the renewal reserve; 0 for sign-ins).
    pub reserved: u32,
    /// Calls of this class in the last minute.
    pub used: u32,
    /// Calls of this class that could start now.
    pub available: u32,
}

impl BudgetHealth {
    fn of(b: avemint_core::ave::budget::BudgetSnapshot) -> Self {
        Self {
            renewal: BudgetClassHealth {
                limit: b.per_minute,
                reserved: b.renewal_reserve,
                used: b.renewal_used,
                available: b.renewal_available,
            },
            sign_in: BudgetClassHealth {
                limit: b.sign_in_limit,
                reserved: 0,
                used: b.sign_in_used,
                available: b.sign_in_available,
            },
        }
    }
}

/// Readiness.
#[derive(ApiResponse)]
pub(crate) enum ReadyResponse {
    /// Ready to serve (`status` is `ok` or `degraded`).
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// Not ready yet: Ave's discovery document or JWKS was never loaded since start.
    #[oai(status = 503)]
    NotReady(Json<Health>),
}

/// What readiness is made of, read without fetching anything from Ave.
pub(crate) struct Readiness {
    pub ave: MetadataStatus,
    pub store: bool,
}

impl Readiness {
    /// Reads Ave's cache state and checks the store (see [`StoreCheck`]).
    pub(crate) async fn check(state: &AppState) -> Self {
        let store = state.store_check.store_answers(&state.sessions).await;
        Self {
            ave: state.ave.metadata_status(),
            store,
        }
    }

    /// Ready: Ave's discovery document and JWKS were loaded once. Nothing else counts.
    pub(crate) fn ready(&self) -> bool {
        self.ave.loaded()
    }

    pub(crate) fn status(&self) -> HealthStatus {
        if !self.ready() {
            HealthStatus::Unavailable
        } else if self.ave.stale() || !self.store {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        }
    }

    /// What the readiness gauges of `/metrics` show (`metrics::readiness`).
    pub(crate) fn gauges(&self) -> avemint_base::metrics::Readiness {
        let document = |s: &DocumentStatus| avemint_base::metrics::AveDocument {
            loaded: s.loaded,
            age: s.age,
            stale: s.stale,
        };
        avemint_base::metrics::Readiness {
            ready: self.ready(),
            discovery: document(&self.ave.discovery),
            jwks: document(&self.ave.jwks),
            metadata_ttl: self.ave.lifetime,
            store_up: self.store,
        }
    }
}

fn age_secs(s: &DocumentStatus) -> Option<u64> {
    s.age.map(|a| a.as_secs())
}

#[OpenApi(tag = "ApiTags::Ops")]
impl OpsApi {
    /// Liveness: the process answers.
    ///
    /// Use it as the liveness probe. It checks nothing else, so neither Ave nor
    /// the session store can ever make it fail (restarting would not fix them).
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: HealthStatus::Ok,
            ave_discovery: None,
            ave_jwks: None,
            ave_discovery_age_seconds: None,
            ave_jwks_age_seconds: None,
            ave_discovery_stale: None,
            ave_jwks_stale: None,
            ave_metadata_ttl_seconds: None,
            store: None,
            ave_token_budget_per_minute: None,
            ave_token_budget: None,
        })
    }

    /// Readiness: this instance can serve.
    ///
    /// 200 once Ave's discovery document and JWKS were loaded since start; 503
    /// before that. After that it stays 200 whatever happens to Ave or the
    /// session store: a failed re-fetch of Ave's documents keeps the last good
    /// copy (serve-stale-on-error; `status` becomes `degraded`, the `*_age_seconds`
    /// and `*_stale` fields show it), and a store outage answers each session
    /// request with 503 and `Retry-After` while JWKS, discovery and readiness
    /// keep answering (`store: false`, `status: degraded`). Never waits on Ave;
    /// the store check is bounded to 0.5 s.
    ///
    /// Use it as the readiness probe and the load balancer's health check, and
    /// look at the status code only; never as the liveness probe.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let r = Readiness::check(&state).await;
        let health = Health {
            status: r.status(),
            ave_discovery: Some(r.ave.discovery.loaded),
            ave_jwks: Some(r.ave.jwks.loaded),
            ave_discovery_age_seconds: age_secs(&r.ave.discovery),
            ave_jwks_age_seconds: age_secs(&r.ave.jwks),
            ave_discovery_stale: Some(r.ave.discovery.stale),
            ave_jwks_stale: Some(r.ave.jwks.stale),
            ave_metadata_ttl_seconds: Some(r.ave.lifetime.as_secs()),
            store: Some(r.store),
            ave_token_budget_per_minute: Some(state.ave.token_budget_per_minute()),
            ave_token_budget: Some(BudgetHealth::of(state.ave.token_budget())),
        };
        if r.ready() {
            ReadyResponse::Ready(Json(health))
        } else {
            ReadyResponse::NotReady(Json(health))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(loaded: bool, stale: bool) -> DocumentStatus {
        DocumentStatus {
            loaded,
            age: loaded.then(|| Duration::from_millis(2500)),
            stale,
            consecutive_failures: u32::from(stale),
        }
    }

    fn readiness(discovery: DocumentStatus, jwks: DocumentStatus, store: bool) -> Readiness {
        Readiness {
            ave: MetadataStatus {
                discovery,
                jwks,
                lifetime: Duration::from_secs(1),
            },
            store,
        }
    }

    #[test]
    fn only_a_document_never_loaded_makes_the_instance_unready() {
        let cases = [
            (doc(true, false), doc(true, false), true, true, HealthStatus::Ok),
            (doc(true, true), doc(true, true), true, true, HealthStatus::Degraded),
            (doc(true, false), doc(true, false), false, true, HealthStatus::Degraded),
            (doc(true, true), doc(true, false), false, true, HealthStatus::Degraded),
            (
                doc(true, false),
                doc(false, false),
                true,
                false,
                HealthStatus::Unavailable,
            ),
            (
                doc(false, false),
                doc(false, false),
                true,
                false,
                HealthStatus::Unavailable,
            ),
        ];
        for (i, (d, j, store, ready, status)) in cases.into_iter().enumerate() {
            let r = readiness(d, j, store);
            assert_eq!(r.ready(), ready, "case {i}");
            assert_eq!(r.status(), status, "case {i}");
        }
    }

    #[test]
    fn gauges_show_age_staleness_and_the_store() {
        let gauges = readiness(doc(true, true), doc(true, false), false).gauges();
        let text = avemint_base::metrics::scrape(|| avemint_base::metrics::readiness(&gauges));
        for line in [
            "avemint_ready 1",
            "avemint_ave_metadata_loaded{document=\"jwks\"} 1",
            "avemint_ave_metadata_age_seconds{document=\"discovery\"} 2.5",
            "avemint_ave_metadata_stale{document=\"discovery\"} 1",
            "avemint_ave_metadata_stale{document=\"jwks\"} 0",
            "avemint_ave_metadata_ttl_seconds 1",
            "avemint_store_up 0",
            "avemint_dependency_up{dependency=\"ave_discovery\"} 0",
            "avemint_dependency_up{dependency=\"ave_jwks\"} 1",
            "avemint_dependency_up{dependency=\"store\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        let gauges = readiness(doc(false, false), doc(false, false), true).gauges();
        let text = avemint_base::metrics::scrape(|| avemint_base::metrics::readiness(&gauges));
        assert!(text.lines().any(|l| l == "avemint_ready 0"));
        assert!(
            !text.contains("avemint_ave_metadata_age_seconds{"),
            "no age before the first load"
        );
    }
}
