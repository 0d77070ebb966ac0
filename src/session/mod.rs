//! Sessions: who is signed in, with Ave's tokens sealed at rest.
//!
//! `Sessions` is the one door to the store: it seals `SessionData` before a
//! backend sees it, opens it on the way back, and applies the idle timeout and
//! absolute lifetime. Backends (`sqlite`, later PostgreSQL) store bytes only.

pub mod id;
pub mod sealer;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{DatabaseUrl, SessionKeys, SessionSettings};
use crate::secret::Secret;
pub use id::{SessionHandle, SessionId, SessionKey};
pub use sealer::{Purpose, Sealer};
pub use store::{SessionStore, StoreError, StoredSession, SweepCutoffs};

/// Idle-time bookkeeping is written at most this often per session, so the
/// hot path is not a write per request.
const TOUCH_INTERVAL_SECS: i64 = 60;

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
    pub data: SessionData,
    lifetime: Duration,
    idle_timeout: Duration,
}

impl Session {
    /// When the session ends if nothing else happens (unix seconds).
    pub fn expires_at(&self) -> i64 {
        (self.created_at + self.lifetime.as_secs() as i64).min(self.last_seen_at + self.idle_timeout.as_secs() as i64)
    }
}

/// The session service.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    sealer: Sealer,
    settings: SessionSettings,
}

impl Sessions {
    /// Opens the configured backend.
    pub async fn open(url: &DatabaseUrl, keys: &SessionKeys, settings: SessionSettings) -> Result<Self, StoreError> {
        let store: Arc<dyn SessionStore> = match url {
            DatabaseUrl::Sqlite(u) => Arc::new(sqlite::SqliteStore::connect(u).await?),
        };
        Ok(Self::with_store(store, keys, settings))
    }

    /// Wraps an already opened backend.
    pub fn with_store(store: Arc<dyn SessionStore>, keys: &SessionKeys, settings: SessionSettings) -> Self {
        Self {
            store,
            sealer: Sealer::new(keys, Purpose::SessionStore),
            settings,
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
        };
        self.store.insert(&row).await?;
        Ok(id)
    }

    /// Loads a live session. Expired sessions are deleted and reported as absent;
    /// rows that cannot be opened (unknown key, tampering) are reported as
    /// absent and left alone.
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
            data,
            lifetime,
            idle_timeout: idle,
        }))
    }

    /// Swaps a session's data if nobody else did since `session` was read.
    pub async fn replace(&self, session: &Session, data: &SessionData) -> Result<bool, StoreError> {
        let sealed = self.seal(&session.key, data)?;
        self.store
            .replace(&session.key, session.version, &sealed, data.tokens.access_expires_at)
            .await
    }

    /// Deletes a session (logout).
    pub async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
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
