//! The app JWTs proxied requests carry upstream, cached per session and token
//! profile and minted again before they run out.
//!
//! Why a cache: in proxy mode a token never leaves the server, so reusing it
//! within its lifetime exposes nothing a fresh one would not, and saves a
//! signature (and a claims-hook call) per proxied request. A cached token is
//! used only while more than `min(ttl / 2, 60 s)` of its lifetime is left,
//! so the upstream always gets one that is still valid for a while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::Expiry;
use moka::future::Cache;
use serde_json::{Map, Value};

use crate::mint::{MintError, Minter, Profile, Subject};
use avemint_base::secret::Secret;

/// Most cached tokens (sessions × profiles in use).
const CAPACITY: u64 = 100_000;
/// The most of a token's lifetime that is left unused at the end.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// A minted app JWT and how long it may be reused.
pub struct Bearer {
    pub token: Secret<String>,
    /// The token's claims as signed (a route's `require_claims` is checked on them).
    pub claims: Map<String, Value>,
    reuse_for: Duration,
}

/// Cached app JWTs, keyed by session handle and profile name.
pub struct Bearers {
    cache: Cache<(String, String), Arc<Bearer>>,
}

/// Each token expires from the cache after its own reuse window.
struct ReuseWindow;

impl Expiry<(String, String), Arc<Bearer>> for ReuseWindow {
    fn expire_after_create(&self, _: &(String, String), bearer: &Arc<Bearer>, _: Instant) -> Option<Duration> {
        Some(bearer.reuse_for)
    }
}

impl Default for Bearers {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(ReuseWindow)
                .build(),
        }
    }
}

impl Bearers {
    /// The app JWT of `profile` for the session `subject` describes: cached, or minted now.
    pub async fn get(
        &self,
        minter: &Minter,
        profile: &Profile,
        subject: &Subject<'_>,
    ) -> Result<Arc<Bearer>, MintError> {
        let key = (subject.sid.to_owned(), profile.name.clone());
        if let Some(bearer) = self.cache.get(&key).await {
            return Ok(bearer);
        }
        let minted = minter.mint(profile, subject).await?;
        let ttl = Duration::from_secs(minted.expires_in);
        let bearer = Arc::new(Bearer {
            claims: payload_claims(minted.token.expose()),
            token: minted.token,
            reuse_for: reuse_window(ttl),
        });
        self.cache.insert(key, bearer.clone()).await;
        Ok(bearer)
    }

    /// Forgets every cached token (the token profiles were reloaded: the next request mints under the new ones).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

/// The claims of a token avemint has just signed: its payload, decoded (nothing to verify; an unreadable payload,
/// which the minter never produces, has no claims and so satisfies no requirement).
fn payload_claims(token: &str) -> Map<String, Value> {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

/// How long a token of lifetime `ttl` is reused: all but `min(ttl / 2, 60 s)` of it.
fn reuse_window(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 2).min(MAX_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_reused_for_most_of_their_lifetime_only() {
        assert_eq!(reuse_window(Duration::from_secs(300)), Duration::from_secs(240));
        assert_eq!(reuse_window(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(reuse_window(Duration::from_secs(1)), Duration::from_millis(500));
    }

    #[test]
    fn the_claims_are_the_payloads() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","roles":["admin"]}"#);
        let claims = payload_claims(&format!("eyJhbGciOiJFUzI1NiJ9.{payload}.sig"));
        assert_eq!(claims["roles"], serde_json::json!(["admin"]));
        assert!(payload_claims("not a token").is_empty());
        assert!(payload_claims("a.%%%.c").is_empty());
    }
}
