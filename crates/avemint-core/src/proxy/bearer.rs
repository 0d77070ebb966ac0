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

/// Most bytes of cached tokens with their claims (sessions × profiles in use), as [`Bearer::heap_bytes`] weighs
/// them (a few KiB each). Tokens are reused for minutes, so every session active within that time holds one per
/// profile: bounded in bytes, not in entries, the cache stays within this whatever the number of users; over it,
/// the least recently used token goes (and is minted again when next needed).
const CAPACITY_BYTES: u64 = 32 << 20;
/// The most of a token's lifetime that is left unused at the end.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// A minted app JWT and how long it may be reused.
pub struct Bearer {
    pub token: Secret<String>,
    /// The token's claims as signed (a route's `require_claims` is checked on them).
    pub claims: Map<String, Value>,
    reuse_for: Duration,
}

impl Bearer {
    /// About how many bytes this cached token holds, with its key (see `session::map_bytes`).
    fn heap_bytes(&self, key: &(String, String)) -> usize {
        std::mem::size_of::<Self>()
            + key.0.len()
            + key.1.len()
            + self.token.expose().len()
            + crate::session::map_bytes(&self.claims)
    }
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
        Self::within(CAPACITY_BYTES)
    }
}

impl Bearers {
    /// A cache of at most `bytes` (see [`CAPACITY_BYTES`]).
    fn within(bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .weigher(|key, bearer: &Arc<Bearer>| u32::try_from(bearer.heap_bytes(key)).unwrap_or(u32::MAX))
                .max_capacity(bytes)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .expire_after(ReuseWindow)
                .build(),
        }
    }

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

    #[tokio::test]
    async fn the_cache_stays_within_its_bytes_and_keeps_what_was_just_minted() {
        let bearers = Bearers::within(1 << 20);
        let bearer = |i: usize| {
            let claims = Map::from_iter([("pad".into(), Value::String("p".repeat(16 << 10)))]);
            Arc::new(Bearer {
                token: Secret::new(format!("t{i}")),
                claims,
                reuse_for: Duration::from_secs(60),
            })
        };
        let key = |i: usize| (format!("sid{i}"), "api".to_owned());
        let weight = bearer(0).heap_bytes(&key(0)) as u64;
        for i in 0..200 {
            bearers.cache.insert(key(i), bearer(i)).await;
        }
        bearers.cache.run_pending_tasks().await;
        let cached = bearers.cache.entry_count();
        assert!(cached * weight <= 1 << 20, "{cached} tokens of {weight} bytes cached");
        assert!(cached >= (1 << 20) / weight / 2, "{cached} tokens cached");
        assert!(bearers.cache.contains_key(&key(199)), "the token minted last is cached");
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
