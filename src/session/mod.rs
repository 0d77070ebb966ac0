//! Sessions: who is signed in, with Ave's tokens sealed at rest.
//!
//! `Sessions` is the one door to the store: it seals `SessionData` before a
//! backend sees it, opens it on the way back, and applies the idle timeout and
//! absolute lifetime, and keeps a short-lived in-process cache. Backends
//! (`sqlite`, `postgres`) store bytes only; `renew` refreshes Ave's tokens.

pub(crate) mod backoff;
pub mod id;
pub mod postgres;
pub mod renew;
pub mod sealer;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{DatabaseUrl, SessionKeys, SessionSettings};
use crate::secret::Secret;
pub use id::{SessionHandle, SessionId, SessionKey};
pub use renew::{RenewError, Renewer};
pub use sealer::{Purpose, Sealer};
pub use store::{SessionStore, StoreError, StoredSession, SweepCutoffs};

/// Idle-time bookkeeping is written at most this often per session, so the
/// hot path is not a write per request.
const TOUCH_INTERVAL_SECS: i64 = 60;
/// Pooled database connections when `AVEMINT_DATABASE_MAX_CONNECTIONS` is not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Most sessions kept decrypted in memory at once.
const CACHE_CAPACITY: u64 = 100_000;

/// Ave's tokens for one session. Only ever serialized to be sealed.
#[derive(Serialize, Deserialize)]
pub struct AveTokens {
    pub access_token: Secret<String>,
    #[serde(default)]
    pub access_token_jwt: Option<Secret<String>>,
    pub id_token: Secret<String>,
    #[serde(default)]
    pub refresh_token: Option<Secret<String>>,
    /// Unix seconds.
    pub access_expires_at: i64,
}

/// Everything avemint keeps about a signed-in user; sealed as one blob.
#[derive(Serialize, Deserialize)]
pub struct SessionData {
    pub sid: SessionHandle,
    pub sub: String,
    pub scope: String,
    pub tokens: AveTokens,
    /// Claims of the newest validated id_token.
    pub id_token_claims: Map<String, Value>,
    /// Ave's `user` object from sign-in (not re-sent on refresh).
    #[serde(default)]
    pub user: Option<Map<String, Value>>,
}

/// A session read back from the store.
pub struct Session {
    pub key: SessionKey,
    pub version: i64,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// Set while (or if) a refresh token was sent to Ave with no outcome stored yet.
    pub refresh_started_at: Option<i64>,
    pub data: SessionData,
    lifetime: Duration,
    idle_timeout: Duration,
}

impl Session {
    /// When the session ends if nothing else happens (unix seconds).
    pub fn expires_at(&self) -> i64 {
        (self.created_at + self.lifetime.as_secs() as i64).min(self.last_seen_at + self.idle_timeout.as_secs() as i64)
    }

    /// True when the session is past its idle timeout or absolute lifetime.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at() <= now
    }

    /// True when Ave's access token expires within `skew` of `now`.
    pub fn needs_refresh(&self, now: i64, skew: Duration) -> bool {
        self.data.tokens.access_expires_at - skew.as_secs() as i64 <= now
    }

    /// True while Ave's access token is still valid.
    pub fn access_valid(&self, now: i64) -> bool {
        self.data.tokens.access_expires_at > now
    }
}

/// Why a load through the cache found nothing (never cached, so a missing
/// row is looked up again next time).
#[derive(Debug, thiserror::Error)]
enum LoadMiss {
    #[error("no such session")]
    Absent,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The session service.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    sealer: Sealer,
    settings: SessionSettings,
    /// Decrypted sessions, served for at most the cache TTL (bounded
    /// staleness: another instance's logout is seen within that time).
    cache: Option<Cache<SessionKey, Arc<Session>>>,
}

impl Sessions {
    /// Opens the configured backend. A zero `cache_ttl` disables the cache.
    pub async fn open(
        url: &DatabaseUrl,
        keys: &SessionKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
    ) -> Result<Self, StoreError> {
        Self::open_with_pool(url, keys, settings, cache_ttl, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Like `open`, with at most `max_connections` pooled database connections
    /// (`AVEMINT_DATABASE_MAX_CONNECTIONS`; an in-memory SQLite database always uses one).
    pub async fn open_with_pool(
        url: &DatabaseUrl,
        keys: &SessionKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let store: Arc<dyn SessionStore> = match url {
            DatabaseUrl::Sqlite(u) => Arc::new(sqlite::SqliteStore::connect_with_pool(u, max_connections).await?),
            DatabaseUrl::Postgres(u) => {
                Arc::new(postgres::PostgresStore::connect_with_pool(u.expose(), max_connections).await?)
            }
        };
        Ok(Self::with_store(store, keys, settings, cache_ttl))
    }

    /// Wraps an already opened backend. A zero `cache_ttl` disables the cache.
    pub fn with_store(
        store: Arc<dyn SessionStore>,
        keys: &SessionKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
    ) -> Self {
        let cache = (!cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(cache_ttl)
                .max_capacity(CACHE_CAPACITY)
                .build()
        });
        Self {
            store,
            sealer: Sealer::new(keys, Purpose::SessionStore),
            settings,
            cache,
        }
    }

    /// The backend (renewal takes its locks and markers there).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// A live session, from the in-process cache when fresh enough.
    pub async fn get(&self, key: &SessionKey, now: i64) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(cache) = &self.cache else {
            crate::metrics::cache_miss();
            return Ok(self.load(key, now).await?.map(Arc::new));
        };
        let missed = std::sync::atomic::AtomicBool::new(false);
        let loaded = cache
            .try_get_with(*key, async {
                missed.store(true, std::sync::atomic::Ordering::Relaxed);
                match self.load(key, now).await {
                    Ok(Some(s)) => Ok(Arc::new(s)),
                    Ok(None) => Err(LoadMiss::Absent),
                    Err(e) => Err(LoadMiss::Store(e)),
                }
            })
            .await;
        if missed.load(std::sync::atomic::Ordering::Relaxed) {
            crate::metrics::cache_miss();
        } else {
            crate::metrics::cache_hit();
        }
        match loaded {
            Ok(s) if s.is_expired(now) => {
                cache.invalidate(key).await;
                Ok(None)
            }
            Ok(s) => Ok(Some(s)),
            Err(e) => match e.as_ref() {
                LoadMiss::Absent => Ok(None),
                LoadMiss::Store(e) => Err(StoreError::Unavailable(e.to_string())),
            },
        }
    }

    /// Puts a session this process just wrote into the cache.
    pub async fn remember(&self, session: Arc<Session>) {
        if let Some(cache) = &self.cache {
            cache.insert(session.key, session).await;
        }
    }

    /// Drops a session from the cache.
    pub async fn forget(&self, key: &SessionKey) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key).await;
        }
    }

    fn seal(&self, key: &SessionKey, data: &SessionData) -> Result<Vec<u8>, StoreError> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(data).map_err(|_| StoreError::Unavailable("session could not be encoded".into()))?,
        );
        Ok(self.sealer.seal(key.as_bytes(), &plain))
    }

    /// Stores a new session and returns the id for the cookie.
    pub async fn create(&self, data: &SessionData, now: i64) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let key = id.key();
        let row = StoredSession {
            key,
            version: 0,
            sealed: self.seal(&key, data)?,
            created_at: now,
            last_seen_at: now,
            access_expires_at: data.tokens.access_expires_at,
            refresh_started_at: None,
        };
        self.store.insert(&row).await?;
        Ok(id)
    }

    /// Loads a live session from the store, bypassing the cache. Expired
    /// sessions are deleted and reported as absent; rows that cannot be opened
    /// (unknown key, tampering) are reported as absent and left alone.
    pub async fn load(&self, key: &SessionKey, now: i64) -> Result<Option<Session>, StoreError> {
        let Some(row) = self.store.get(key).await? else {
            return Ok(None);
        };
        let lifetime = self.settings.lifetime;
        let idle = self.settings.idle_timeout;
        if row.created_at + lifetime.as_secs() as i64 <= now || row.last_seen_at + idle.as_secs() as i64 <= now {
            self.store.delete(key).await?;
            return Ok(None);
        }
        let plain = match self.sealer.open(key.as_bytes(), &row.sealed) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(session = ?key, error = %e, "stored session could not be opened");
                return Ok(None);
            }
        };
        let Ok(data) = serde_json::from_slice::<SessionData>(&plain) else {
            tracing::warn!(session = ?key, "stored session could not be decoded");
            return Ok(None);
        };
        let mut last_seen_at = row.last_seen_at;
        if now - row.last_seen_at >= TOUCH_INTERVAL_SECS {
            self.store.touch(key, now).await?;
            last_seen_at = now;
        }
        Ok(Some(Session {
            key: *key,
            version: row.version,
            created_at: row.created_at,
            last_seen_at,
            refresh_started_at: row.refresh_started_at,
            data,
            lifetime,
            idle_timeout: idle,
        }))
    }

    /// Swaps a session's data (clearing any refresh marker) if nobody else did
    /// since `session` was read. Returns the stored result, or `None` if the
    /// row's version moved on (or the row is gone).
    pub async fn replace(&self, session: &Session, data: SessionData) -> Result<Option<Arc<Session>>, StoreError> {
        self.replace_keeping(session, data).await.map_err(|(e, _)| e)
    }

    /// `replace` that hands `data` back with the error, so a caller can retry.
    pub(crate) async fn replace_keeping(
        &self,
        session: &Session,
        data: SessionData,
    ) -> Result<Option<Arc<Session>>, (StoreError, SessionData)> {
        let sealed = match self.seal(&session.key, &data) {
            Ok(sealed) => sealed,
            Err(e) => return Err((e, data)),
        };
        let swapped = match self
            .store
            .replace(&session.key, session.version, &sealed, data.tokens.access_expires_at)
            .await
        {
            Ok(swapped) => swapped,
            Err(e) => return Err((e, data)),
        };
        if !swapped {
            self.forget(&session.key).await;
            return Ok(None);
        }
        let updated = Arc::new(Session {
            key: session.key,
            version: session.version + 1,
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            refresh_started_at: None,
            data,
            lifetime: session.lifetime,
            idle_timeout: session.idle_timeout,
        });
        self.remember(updated.clone()).await;
        Ok(Some(updated))
    }

    /// Deletes a session (logout, or a session Ave ended).
    pub async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.forget(key).await;
        self.store.delete(key).await
    }

    /// Marks a login `state` as used; false on a replay.
    pub async fn consume_login_state(&self, state: &str, expires_at: i64) -> Result<bool, StoreError> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, state.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.store.consume_login_state(&hash, expires_at).await
    }

    /// Deletes expired sessions and used login states.
    pub async fn sweep(&self, now: i64) -> Result<u64, StoreError> {
        self.store
            .sweep(SweepCutoffs {
                now,
                created_before: now - self.settings.lifetime.as_secs() as i64,
                seen_before: now - self.settings.idle_timeout.as_secs() as i64,
            })
            .await
    }

    /// Checks the backend answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
