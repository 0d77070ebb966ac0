//! `/healthz` and `/readyz`: liveness and readiness for orchestrators.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, AppState};

/// The operational endpoints.
pub struct OpsApi;

/// Health status.
#[derive(Object)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
    /// Ave's discovery document is loaded.
    #[oai(skip_serializing_if_is_none)]
    pub ave_discovery: Option<bool>,
    /// Ave's JWKS is loaded.
    #[oai(skip_serializing_if_is_none)]
    pub ave_jwks: Option<bool>,
    /// The session store answers.
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
pub struct BudgetHealth {
    /// Renewals (`refresh_token` grant): may use the whole budget.
    pub renewal: BudgetClassHealth,
    /// Sign-ins (`authorization_code` grant): may use the budget less the renewal reserve.
    pub sign_in: BudgetClassHealth,
}

/// One class of the token-endpoint budget.
#[derive(Object)]
pub struct BudgetClassHealth {
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
    fn of(b: crate::ave::budget::BudgetSnapshot) -> Self {
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
pub enum ReadyResponse {
    /// Ready to serve sign-ins.
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// Not ready yet (or not any more).
    #[oai(status = 503)]
    NotReady(Json<Health>),
}

#[OpenApi(tag = "ApiTags::Ops")]
impl OpsApi {
    /// Liveness: the process answers.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            ave_discovery: None,
            ave_jwks: None,
            store: None,
            ave_token_budget_per_minute: None,
            ave_token_budget: None,
        })
    }

    /// Readiness: Ave's discovery and JWKS are loaded and the store answers.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let discovery = state.ave.metadata().await.is_ok();
        let jwks = discovery && state.ave.key_set().await.is_ok();
        let store = state.sessions.ping().await.is_ok();
        let ok = discovery && jwks && store;
        let health = Health {
            status: if ok { "ok" } else { "unavailable" }.into(),
            ave_discovery: Some(discovery),
            ave_jwks: Some(jwks),
            store: Some(store),
            ave_token_budget_per_minute: Some(state.ave.token_budget_per_minute()),
            ave_token_budget: Some(BudgetHealth::of(state.ave.token_budget())),
        };
        if ok {
            ReadyResponse::Ready(Json(health))
        } else {
            ReadyResponse::NotReady(Json(health))
        }
    }
}
