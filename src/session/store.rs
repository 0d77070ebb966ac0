//! The session store abstraction: rows of sealed bytes keyed by `SessionKey`.
//!
//! Backends see only ciphertext and timestamps; sealing happens above them in
//! `Sessions`. Token swaps are compare-and-swap on `version`, so a renewal that
//! raced another one can never overwrite a newer refresh token.
//!
//! Renewal across instances (see `renew`) serialises the refreshers of one
//! session with a row state, the `refresh_started_at` marker: `begin_refresh`
//! sets it in one short statement (compare-and-swap on `version` and on the
//! marker being clear or stale) before the refresh token is sent to Ave, and
//! `replace` / `abort_refresh` clear it with the outcome. No connection is
//! held while Ave answers, so refreshes in flight can never starve the pool.
//! While the marker is set and younger than the refresh lease, nobody else
//! sends that session's refresh token: two instances never present one token
//! at the same time. A marker older than the lease was left by a holder that
//! died (its Ave call is over by then, bounded by the refresh timeout): the
//! next refresher takes it over and retries with the same refresh token.

use async_trait::async_trait;

use super::id::SessionKey;

/// One stored session as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub key: SessionKey,
    pub version: i64,
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub access_expires_at: i64,
    pub refresh_started_at: Option<i64>,
}

/// A backend failure. Carries no row data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store migration failed: {0}")]
    Migration(String),
}

/// Cut-offs for `sweep`: rows created before `created_before` or last seen
/// before `seen_before` are expired.
#[derive(Debug, Clone, Copy)]
pub struct SweepCutoffs {
    pub now: i64,
    pub created_before: i64,
    pub seen_before: i64,
}

/// A session store backend.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new session.
    async fn insert(&self, row: &StoredSession) -> Result<(), StoreError>;
    /// Reads a session.
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError>;
    /// Replaces the sealed data and clears the refresh marker, if the row still
    /// has `expected_version`; returns false (and changes nothing) otherwise.
    async fn replace(
        &self,
        key: &SessionKey,
        expected_version: i64,
        sealed: &[u8],
        access_expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// Takes the per-session refresh lock: sets the refresh marker to `now` if
    /// the row has `expected_version` and its marker is clear or older than
    /// `stale_before` (left by a holder that died). True if this caller set it
    /// (and may now send the refresh token).
    async fn begin_refresh(
        &self,
        key: &SessionKey,
        expected_version: i64,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError>;
    /// Releases the lock without changing the data: clears the marker if it is
    /// still the one this caller set (`marker`) on `expected_version`. Used
    /// when the refresh call is over without new tokens; the refresh token is
    /// kept (it did not reach Ave, Ave refused it before using it, or the
    /// outcome is unknown and the token is retried later).
    async fn abort_refresh(&self, key: &SessionKey, expected_version: i64, marker: i64) -> Result<(), StoreError>;
    /// Records activity (idle timeout).
    async fn touch(&self, key: &SessionKey, now: i64) -> Result<(), StoreError>;
    /// Deletes a session; true if a row was removed.
    async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError>;
    /// Marks a login `state` (by hash) as used; false if it was used before.
    async fn consume_login_state(&self, state_hash: &[u8; 32], expires_at: i64) -> Result<bool, StoreError>;
    /// Deletes expired sessions and used states; returns the sessions removed.
    async fn sweep(&self, cutoffs: SweepCutoffs) -> Result<u64, StoreError>;
    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
