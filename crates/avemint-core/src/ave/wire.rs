//! The wire types and helpers shared by `client` (the token endpoint) and `metadata` (discovery and JWKS):
//! `AveError`, the provider metadata document, Ave's key set, and reading a bounded body from Ave.
//!
//! Why a file of its own: both callers need them, and `client` builds on `metadata`; with these here the
//! imports point one way (client → metadata → wire) instead of metadata reaching back into client.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use super::backpressure::{Health, HoldBack};
use avemint_base::metrics::AveFailure;

/// Bodies larger than this from Ave are refused unread.
const MAX_BODY: usize = 256 * 1024;

/// Ave's OpenID provider metadata (the fields avemint uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// Why a call to Ave failed. Never carries a token, code or secret.
#[derive(Debug, thiserror::Error)]
pub enum AveError {
    /// Ave answered with an OAuth error (`invalid_grant`, `invalid_client`, …).
    #[error("Ave rejected the request: HTTP {status}, error `{code}`")]
    OAuth { status: u16, code: String },
    /// Ave is rate limiting this client.
    #[error("Ave is rate limiting this client (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// This process's own token-endpoint budget had no room: nothing was sent to Ave.
    #[error("the token-endpoint budget is exhausted; room in {} s", retry_after.as_secs())]
    BudgetExhausted { retry_after: Duration },
    /// Ave's back-pressure holds this client back (a 429's pause, or the circuit open after a run of
    /// failures): nothing was sent to Ave.
    #[error("{cause}; try again in {} s", retry_after.as_secs())]
    HeldBack { cause: HoldBack, retry_after: Duration },
    /// Ave answered 5xx or another unexpected status.
    #[error("Ave answered HTTP {status}")]
    Server { status: u16 },
    /// The request never reached Ave (connection refused, DNS, TLS, connect timeout).
    #[error("Ave could not be reached: {0}")]
    Transport(String),
    /// The HTTP client for Ave could not be built (nothing was sent).
    #[error("the HTTP client for Ave could not be built")]
    HttpClient,
    /// The request may have reached Ave, but no usable answer came back
    /// (timeout after sending, broken or unreadable response). Ave may have
    /// acted on it: a refresh token sent this way must be treated as spent.
    #[error("Ave's answer was lost: {0}")]
    LostResponse(String),
    /// Ave answered, but not with what the protocol promises.
    #[error("Ave's response was not understood: {0}")]
    Malformed(String),
    /// Discovery's `issuer` differs from the configured one.
    #[error("discovery issuer `{found}` does not equal the configured issuer `{expected}`")]
    IssuerMismatch { expected: String, found: String },
}

impl AveError {
    /// The metrics label of this failure.
    pub(crate) fn failure(&self) -> AveFailure {
        match self {
            AveError::OAuth { .. } => AveFailure::Rejected,
            // Budget refusals never reach `metrics::ave_call`; they count as what they used to be reported as.
            AveError::RateLimited { .. } | AveError::BudgetExhausted { .. } | AveError::HeldBack { .. } => {
                AveFailure::RateLimited
            }
            AveError::Server { .. } => AveFailure::Server,
            AveError::Transport(_) | AveError::HttpClient => AveFailure::Transport,
            AveError::LostResponse(_) => AveFailure::LostResponse,
            AveError::Malformed(_) | AveError::IssuerMismatch { .. } => AveFailure::Malformed,
        }
    }

    /// When a call refused before anything was sent may be tried again (the budget, the pause, the circuit).
    pub(crate) fn not_sent_retry_after(&self) -> Option<Duration> {
        match self {
            AveError::BudgetExhausted { retry_after } | AveError::HeldBack { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// What this outcome of a call that went out says about Ave's health.
    pub(super) fn health(&self) -> Health {
        match self {
            AveError::RateLimited { retry_after } => Health::RateLimited(*retry_after),
            AveError::Server { .. } | AveError::Transport(_) | AveError::LostResponse(_) | AveError::Malformed(_) => {
                Health::Unwell
            }
            _ => Health::Well,
        }
    }

    /// True for failures worth retrying later (the request may not have reached Ave).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AveError::RateLimited { .. }
                | AveError::BudgetExhausted { .. }
                | AveError::HeldBack { .. }
                | AveError::Server { .. }
                | AveError::Transport(_)
        )
    }
}

/// A request that failed in transport, by kind only.
pub(super) fn transport(e: reqwest::Error) -> AveError {
    // reqwest's Display can include the URL; Ave's URLs carry no secrets, but
    // keep only the kind to be safe and brief.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body read failed"
    } else {
        "request failed"
    };
    AveError::Transport(kind.to_owned())
}

/// One RSA public key from Ave's JWKS.
struct Jwk {
    kid: Option<String>,
    key: DecodingKey,
}

/// Ave's key set, selected by `kid`.
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// The key for `kid`; without a `kid`, the only key if there is exactly one.
    pub fn find(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key),
            None if self.keys.len() == 1 => self.keys.first().map(|k| &k.key),
            None => None,
        }
    }

    /// Parses a JWKS document, keeping its RSA signing keys for RS256.
    pub fn parse(body: &[u8]) -> Result<Self, AveError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<HashMap<String, Value>>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|_| AveError::Malformed("JWKS is not a key set".into()))?;
        let keys = doc
            .keys
            .iter()
            .filter_map(|k| {
                let s = |name: &str| k.get(name).and_then(Value::as_str);
                // Only RSA signing keys for RS256; anything else is ignored.
                if s("kty") != Some("RSA")
                    || s("use").is_some_and(|u| u != "sig")
                    || s("alg").is_some_and(|a| a != "RS256")
                {
                    return None;
                }
                let key = DecodingKey::from_rsa_components(s("n")?, s("e")?).ok()?;
                Some(Jwk {
                    kid: s("kid").map(str::to_owned),
                    key,
                })
            })
            .collect::<Vec<_>>();
        if keys.is_empty() {
            return Err(AveError::Malformed("JWKS holds no RS256 signing key".into()));
        }
        Ok(Self { keys })
    }
}

/// Reads a response body from Ave, refusing one over `MAX_BODY`.
pub(super) async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, AveError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(AveError::Malformed("response too large".into()));
    }
    let bytes = resp.bytes().await.map_err(transport)?;
    if bytes.len() > MAX_BODY {
        return Err(AveError::Malformed("response too large".into()));
    }
    Ok(bytes.to_vec())
}

/// A copy of an error, for the cached failure of a metadata fetch and each caller that meets it.
pub(super) fn clone_error(e: &AveError) -> AveError {
    match e {
        AveError::OAuth { status, code } => AveError::OAuth {
            status: *status,
            code: code.clone(),
        },
        AveError::RateLimited { retry_after } => AveError::RateLimited {
            retry_after: *retry_after,
        },
        AveError::BudgetExhausted { retry_after } => AveError::BudgetExhausted {
            retry_after: *retry_after,
        },
        AveError::HeldBack { cause, retry_after } => AveError::HeldBack {
            cause: *cause,
            retry_after: *retry_after,
        },
        AveError::Server { status } => AveError::Server { status: *status },
        AveError::Transport(s) => AveError::Transport(s.clone()),
        AveError::HttpClient => AveError::HttpClient,
        AveError::LostResponse(s) => AveError::LostResponse(s.clone()),
        AveError::Malformed(s) => AveError::Malformed(s.clone()),
        AveError::IssuerMismatch { expected, found } => AveError::IssuerMismatch {
            expected: expected.clone(),
            found: found.clone(),
        },
    }
}
