//! The enrichment hook: asks an operator's service for extra claims (roles,
//! tenant, plan) before a token is minted.
//!
//! avemint POSTs `{"sub", "claims", "audience"}` as JSON to the profile's hook
//! URL (https, or http on a loopback host), with a timeout and two headers:
//!
//! - `X-Avemint-Timestamp: <unix seconds>`
//! - `X-Avemint-Signature: sha256=<hex>`, the HMAC-SHA256 under the hook secret
//!   of `<timestamp>.<body>` (the timestamp's decimal digits, a `.`, then the exact
//!   body bytes). Receivers recompute it, compare in constant time and refuse old
//!   timestamps, which stops replays.
//!
//! The answer must be a 2xx with a JSON object (at most 64 KiB); its members are
//! merged into the token's claims, except registered claims (which avemint alone
//! sets) and `null` values. Answers are cached per session (each profile has its
//! own hook and cache). Redirects are not followed.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use moka::future::Cache;
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

use super::claims::REGISTERED_CLAIMS;
use avemint_base::clock::UnixTime;
pub use avemint_base::reload::{LiveSecret, Reload, SecretFile};
pub use avemint_base::secret::{Secret, SecretKind};

/// Header carrying the unix time the request was signed at.
pub(crate) const TIMESTAMP_HEADER: &str = "X-Avemint-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub(crate) const SIGNATURE_HEADER: &str = "X-Avemint-Signature";
/// The largest hook answer read.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Cached answers per profile, at most.
const CACHE_CAPACITY: u64 = 100_000;

/// What to do when the hook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the token: 503 `temporarily_unavailable`.
    Deny,
    /// Mint without the hook's claims.
    Omit,
}

impl FailurePolicy {
    /// Parses `deny` or `omit`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "deny" => Ok(Self::Deny),
            "omit" => Ok(Self::Omit),
            _ => Err("must be `deny` or `omit`".into()),
        }
    }
}

/// A validated hook configuration.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// https, or http on a loopback host.
    pub url: Url,
    /// The HMAC key.
    pub secret: Secret<String>,
    /// The file it was read from (`secret_file`), re-read when it changes or on SIGHUP.
    pub secret_file: Option<SecretFile>,
    /// The whole call (connect, send, answer) must finish within this.
    pub timeout: Duration,
    /// How long an answer is reused for the same session; zero disables caching.
    pub cache_ttl: Duration,
    pub on_failure: FailurePolicy,
}

/// Why a hook call gave no claims. Never carries the hook's answer or the secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("the HTTP client for the hook could not be built")]
    Client,
    #[error("the request could not be encoded")]
    Encode,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("the hook could not be reached ({0})")]
    Unreachable(&'static str),
    #[error("the hook answered with status {0}")]
    Status(u16),
    #[error("the hook's answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the hook's answer is not JSON")]
    NotJson,
    #[error("the hook's answer is not a JSON object")]
    NotAnObject,
}

#[derive(Serialize)]
struct HookRequest<'a> {
    sub: &'a str,
    claims: &'a Map<String, Value>,
    audience: &'a str,
}

/// Checks a hook secret (at start-up and on every reload).
pub fn parse_secret(raw: &str) -> Result<Secret<String>, String> {
    if raw.trim().len() < 32 {
        return Err("the secret must be at least 32 characters (e.g. `openssl rand -hex 32`)".into());
    }
    Ok(Secret::new(raw.trim().to_owned()))
}

/// A live hook: HTTP client, key (reloaded from `secret_file` when it changes) and cache.
pub struct Hook {
    url: Url,
    key: Arc<LiveSecret<hmac::Key>>,
    policy: FailurePolicy,
    http: reqwest::Client,
    cache: Option<Cache<String, Arc<Map<String, Value>>>>,
}

impl Hook {
    /// Builds a hook from its configuration.
    /// `profile` names it in reload log lines.
    pub(crate) fn new(spec: &HookSpec, profile: &str) -> Result<Self, HookError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("avemint/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .build()
            .map_err(|_| HookError::Client)?;
        let cache = (!spec.cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(spec.cache_ttl)
                .max_capacity(CACHE_CAPACITY)
                .build()
        });
        Ok(Self {
            url: spec.url.clone(),
            key: Arc::new(LiveSecret::new(
                SecretKind::HookSecret,
                format!("hook secret of profile `{profile}`"),
                hmac_key(&spec.secret),
                spec.secret_file.as_ref(),
                Box::new(|raw: &str| parse_secret(raw).map(|s| hmac_key(&s))),
            )),
            policy: spec.on_failure,
            http,
            cache,
        })
    }

    /// The key's reloader, when it is read from a file.
    pub(crate) fn reloader(&self) -> Option<Arc<dyn Reload>> {
        self.key.is_watched().then(|| self.key.clone() as Arc<dyn Reload>)
    }

    /// The failure policy.
    pub(crate) fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// The hook's claims for one session: from the cache, or by calling the
    /// hook (one call per session at a time; failures are not cached).
    pub(crate) async fn enrich(
        &self,
        session: &str,
        sub: &str,
        claims: &Map<String, Value>,
        audience: &str,
        now: UnixTime,
    ) -> Result<Arc<Map<String, Value>>, HookError> {
        let call = async { self.call(sub, claims, audience, now).await.map(Arc::new) };
        match &self.cache {
            Some(cache) => cache
                .try_get_with(session.to_owned(), call)
                .await
                .map_err(|e| (*e).clone()),
            None => call.await,
        }
    }

    #[tracing::instrument(
        name = "mint.hook",
        skip_all,
        fields(otel.kind = "client", http.status_code = tracing::field::Empty)
    )]
    async fn call(
        &self,
        sub: &str,
        claims: &Map<String, Value>,
        audience: &str,
        now: UnixTime,
    ) -> Result<Map<String, Value>, HookError> {
        let body = serde_json::to_vec(&HookRequest { sub, claims, audience }).map_err(|_| HookError::Encode)?;
        let timestamp = now.as_unsigned();
        let signature = signature(&self.key.current(), timestamp, &body);
        let mut resp = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .headers(avemint_base::trace_context::headers())
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        tracing::Span::current().record("http.status_code", resp.status().as_u16());
        if !resp.status().is_success() {
            return Err(HookError::Status(resp.status().as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(HookError::TooLarge);
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HookError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(HookError::NotAnObject),
            Err(_) => Err(HookError::NotJson),
        }
    }
}

fn transport(e: reqwest::Error) -> HookError {
    // reqwest's Display includes the URL; keep only the kind.
    if e.is_timeout() {
        HookError::Timeout
    } else if e.is_connect() {
        HookError::Unreachable("connection failed")
    } else if e.is_body() || e.is_decode() {
        HookError::Unreachable("answer could not be read")
    } else {
        HookError::Unreachable("request failed")
    }
}

/// `sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
fn hmac_key(secret: &Secret<String>) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())
}

fn signature(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign()))
}

/// Merges a hook's answer into `claims`: its values win over configured ones,
/// `null` values are skipped, registered claims are refused. Returns the names
/// that were refused.
pub(crate) fn merge<'a>(extra: &'a Map<String, Value>, claims: &mut Map<String, Value>) -> Vec<&'a str> {
    let mut refused = Vec::new();
    for (name, value) in extra {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            refused.push(name.as_str());
        } else if !value.is_null() {
            claims.insert(name.clone(), value.clone());
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn signature_matches_a_known_vector() {
        // The header is a one-shot HMAC of "<timestamp>.<body>".
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let body = br#"{"sub":"x"}"#;
        let expected = hmac::sign(&key, b"1700000000.{\"sub\":\"x\"}");
        let hex = hex::encode(expected);
        assert_eq!(signature(&key, 1_700_000_000, body), format!("sha256={hex}"));
        // And the HMAC itself is HMAC-SHA256 (RFC 4231 case 2).
        let rfc = hmac::sign(&key, b"what do ya want for nothing?");
        let rfc_hex = hex::encode(rfc);
        assert_eq!(
            rfc_hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn merge_keeps_registered_claims_and_skips_nulls() {
        let mut claims = json!({"plan":"free","email":"a@example.com"})
            .as_object()
            .cloned()
            .expect("object");
        let extra = json!({"roles":["admin"],"plan":"pro","sub":"evil","exp":1,"email":null})
            .as_object()
            .cloned()
            .expect("object");
        let mut refused = merge(&extra, &mut claims);
        refused.sort_unstable();
        assert_eq!(refused, vec!["exp", "sub"]);
        assert_eq!(
            Value::Object(claims),
            json!({"plan":"pro","email":"a@example.com","roles":["admin"]})
        );
    }

    #[test]
    fn failure_policy_parses() {
        assert_eq!(FailurePolicy::parse("deny"), Ok(FailurePolicy::Deny));
        assert_eq!(FailurePolicy::parse("omit"), Ok(FailurePolicy::Omit));
        assert!(FailurePolicy::parse("Deny").is_err());
    }

    proptest! {
        #[test]
        fn merge_never_sets_a_registered_claim(names in proptest::collection::vec("[a-z_]{1,9}", 0..12)) {
            let mut extra = Map::new();
            for n in names.iter().chain(REGISTERED_CLAIMS.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>().iter()) {
                extra.insert(n.clone(), json!(1));
            }
            let mut claims = Map::new();
            merge(&extra, &mut claims);
            for k in claims.keys() {
                prop_assert!(!REGISTERED_CLAIMS.contains(&k.as_str()));
            }
        }
    }
}
