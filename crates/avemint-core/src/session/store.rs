//! The session store abstraction: rows of sealed bytes keyed by `SessionRowHash`.
//!
//! Backends see only ciphertext, timestamps and keyed hashes; sealing happens
//! above them in `Sessions`. `created_at` is bound into the sealed record's
//! associated data and `last_seen_at` carries an HMAC (`seen_mac`), so a row
//! whose timestamps were edited is refused. Rows are indexed per user by
//! `owner` (an HMAC of Ave's `sub`, never the `sub` itself) and by `handle`
//! (an HMAC of the session's `sid`), so an operator can end a session by the
//! `sid` an app JWT carries without knowing its user. Token swaps are compare-and-swap on `version`, so a renewal that
//! raced another one can never overwrite a newer refresh token.
//!
//! Renewal across instances (see `renew`) serialises the refreshers of one
//! session with a row state, the `refresh_started_at` marker: `begin_refresh`
//! sets it in one short statement (compare-and-swap on `version` and on the
//! marker being clear or stale) before the refresh token is sent to Ave, and
//! `replace` / `abort_refresh` clear it with the outcome. No connection is
//! held while Ave answers, so refreshes in flight can never starve the pool.
//! The marker records its deadline (`refresh_deadline`): the time by which
//! the holder's call is certainly over at Ave (sent right after the marker,
//! answered or abandoned within the refresh timeout, plus a margin for clock
//! differences). Until then nobody else sends that session's refresh token,
//! whatever happened to the holder: two instances never present one token
//! while Ave may still be processing it. A marker past its deadline was left
//! by a holder that died or whose call's fate is unknown: the next refresher
//! takes it over and retries with the same refresh token.

use async_trait::async_trait;

use super::id::SessionRowHash;
use avemint_base::clock::UnixTime;

/// The per-user index value of a session: HMAC-SHA256 of Ave's `sub` under a
/// key derived from the session keys (`Macer` with `MacPurpose::UserIndex`).
/// With several session keys configured a user has one owner hash per session
/// key, so lookups pass all of them. A hash, not key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerHash([u8; 32]);

impl OwnerHash {
    /// Wraps a digest (made by `Sessions::owner_hashes`, or read back from the store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes (stored in the `owner` column).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The sid index value of a session: HMAC-SHA256 of its `sid` (the `SessionHandle` app JWTs carry) under a key
/// derived from the session keys (`MacPurpose::SessionIndex`). Like `OwnerHash`, one per configured session key;
/// a hash, not key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandleHash([u8; 32]);

impl HandleHash {
    /// Wraps a digest (made by `Sessions::handle_hashes`, or read back from the store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes (stored in the `handle` column).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Live sessions counted by `SessionStore::counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionCounts {
    /// Every live session.
    pub total: u64,
    /// Of those, created at or after `CountCutoffs::recent_hour` / `recent_day`.
    pub created_last_hour: u64,
    pub created_last_day: u64,
    /// Of those, used at or after `recent_hour` (activity is recorded at most once a minute).
    pub active_last_hour: u64,
}

/// What `SessionStore::counts` counts: rows alive by `live` (created at or after `created_before`, last seen at
/// or after `seen_before`), and the starts of the last hour and day.
#[derive(Debug, Clone, Copy)]
pub struct CountCutoffs {
    pub live: SweepCutoffs,
    pub recent_hour: UnixTime,
    pub recent_day: UnixTime,
}

/// One stored session as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub key: SessionRowHash,
    pub version: i64,
    pub sealed: Vec<u8>,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub access_expires_at: UnixTime,
    pub refresh_started_at: Option<UnixTime>,
    /// When the refresh that set the marker is certainly over at Ave (its send, plus the refresh timeout,
    /// plus a margin): nobody takes the marker over before. `None` for markers written before it was recorded
    /// (taken over by their age, as then).
    pub refresh_deadline: Option<UnixTime>,
    /// The per-user index; `None` for rows written before the index existed.
    pub owner: Option<OwnerHash>,
    /// HMAC over the row key, `created_at` and `last_seen_at`; `None` for rows
    /// written before timestamps were authenticated.
    pub seen_mac: Option<Vec<u8>>,
    /// The sid index; `None` for rows written before it existed (found by their user only).
    pub handle: Option<HandleHash>,
}

/// A backend failure. Carries no row data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store migration failed: {0}")]
    Migration(String),
    /// A session could not be encoded to be sealed (nothing was written).
    #[error("the session could not be encoded")]
    Encoding,
    /// The row exists but its columns cannot be read (a value of the wrong
    /// type, a key of the wrong length): that one session is refused.
    #[error("stored session row cannot be read: {0}")]
    CorruptRow(String),
    /// The row was sealed or its `last_seen_at` MAC'd with a session key this instance does not hold (yet),
    /// named by its id: during a rolling rotation another instance already uses a newer key. That session is
    /// refused for this request and kept.
    #[error("the session was written under a session key this instance does not hold (key id {0})")]
    KeyNotHeld(String),
}

impl StoreError {
    /// What the request that met this error is told (a 503's description).
    pub fn public_reason(&self) -> &'static str {
        match self {
            StoreError::KeyNotHeld(_) => {
                "this session was written under a session key this instance does not have yet; try again shortly"
            }
            _ => "the session store is unavailable",
        }
    }

    /// Logs the failure that refused a request: at `error`, except a key this instance lacks, which was warned
    /// about (once per key id) where it was found and is logged at `debug` here.
    pub fn log(&self, during: &'static str) {
        match self {
            StoreError::KeyNotHeld(_) => tracing::debug!(error = %self, during, "session refused for now"),
            _ => tracing::error!(error = %self, during, "session store failure"),
        }
    }
}

/// Cut-offs for `sweep`: rows created before `created_before` or last seen
/// before `seen_before` are expired.
#[derive(Debug, Clone, Copy)]
pub struct SweepCutoffs {
    pub now: UnixTime,
    pub created_before: UnixTime,
    pub seen_before: UnixTime,
}

/// A session store backend.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new session.
    async fn insert(&self, row: &StoredSession) -> Result<(), StoreError>;
    /// Reads a session.
    async fn get(&self, key: &SessionRowHash) -> Result<Option<StoredSession>, StoreError>;
    /// Replaces the sealed data and clears the refresh marker, if the row still
    /// has `expected_version`; returns false (and changes nothing) otherwise.
    async fn replace(
        &self,
        key: &SessionRowHash,
        expected_version: i64,
        sealed: &[u8],
        access_expires_at: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Takes the per-session refresh lock: sets the refresh marker to `now`
    /// and its `deadline` (when this refresh's call is certainly over at Ave)
    /// if the row has `expected_version` and its marker is clear or was left
    /// by a holder whose call is over: its deadline is before `now` (or, for a
    /// marker written without a deadline, it is older than `stale_before`).
    /// True if this caller set it (and may now send the refresh token).
    async fn begin_refresh(
        &self,
        key: &SessionRowHash,
        expected_version: i64,
        now: UnixTime,
        deadline: UnixTime,
        stale_before: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Releases the lock without changing the data: clears the marker if it is
    /// still the one this caller set (`marker`) on `expected_version`. Used
    /// when the refresh call is over without new tokens; the refresh token is
    /// kept (it did not reach Ave, Ave refused it before using it, or the
    /// outcome is unknown and the token is retried later).
    async fn abort_refresh(
        &self,
        key: &SessionRowHash,
        expected_version: i64,
        marker: UnixTime,
    ) -> Result<(), StoreError>;
    /// The end of the pause Ave's rate limit asked of this client, as shared by the instances on this store
    /// (`None`: never recorded; a time in the past: over).
    async fn ave_pause(&self) -> Result<Option<UnixTime>, StoreError>;
    /// Shares a pause until `until` with the other instances (a later one already recorded is kept).
    async fn share_ave_pause(&self, until: UnixTime) -> Result<(), StoreError>;
    /// Records activity (idle timeout): sets `last_seen_at` to `now` and its
    /// `seen_mac`, unless the row was already seen at or after `now`.
    async fn touch(&self, key: &SessionRowHash, now: UnixTime, seen_mac: &[u8]) -> Result<(), StoreError>;
    /// The sessions of one user (rows whose `owner` is any of `owners`), most
    /// recently used first (`last_seen_at`, then `created_at`, descending).
    /// Callers must still open each row and check its `sub`: the index is
    /// not authenticated.
    async fn sessions_of(&self, owners: &[OwnerHash]) -> Result<Vec<StoredSession>, StoreError>;
    /// Ends the sessions of one user beyond the `keep` most recently used,
    /// counting `except` (the session just created) as one of them and never
    /// ending it; returns the keys of the rows deleted.
    async fn trim_sessions_of(
        &self,
        owners: &[OwnerHash],
        keep: u32,
        except: &SessionRowHash,
    ) -> Result<Vec<SessionRowHash>, StoreError>;
    /// The session whose `handle` is any of `handles`, if one is stored. Callers must still open the row and
    /// check its `sid`: the index is not authenticated.
    async fn session_by_handle(&self, handles: &[HandleHash]) -> Result<Option<StoredSession>, StoreError>;
    /// Counts live sessions (see `SessionCounts`), one statement.
    async fn counts(&self, cutoffs: CountCutoffs) -> Result<SessionCounts, StoreError>;
    /// Deletes a session; true if a row was removed.
    async fn delete(&self, key: &SessionRowHash) -> Result<bool, StoreError>;
    /// Marks a login `state` (by hash) as used; false if it was used before.
    async fn consume_login_state(&self, state_hash: &[u8; 32], expires_at: UnixTime) -> Result<bool, StoreError>;
    /// Deletes expired sessions and used states; returns the sessions removed.
    async fn sweep(&self, cutoffs: SweepCutoffs) -> Result<u64, StoreError>;
    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The connection pool now (`None`: the backend has none).
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
}

/// A store's connection pool at one moment, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections lent out to a statement.
    pub in_use: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// The most connections the pool opens (`AVEMINT_DATABASE_MAX_CONNECTIONS`).
    pub max: u32,
}
