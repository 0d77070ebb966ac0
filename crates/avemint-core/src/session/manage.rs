//! Session management: list a user's sessions and end them, one, all but one,
//! or all; end one by its `sid` alone; count them. One implementation for the
//! signed-in user's endpoints (`/auth/sessions`, `/auth/logout` scopes) and
//! the operators' admin API, with no HTTP type.
//!
//! A user's sessions are found through the per-user index (`OwnerHash`, an
//! HMAC of `sub`), a single session through the sid index (`HandleHash`, an
//! HMAC of `sid`); neither index is authenticated, so every row found is
//! opened and its sealed `sub` (or `sid`) compared before it is shown or
//! ended. Sessions written before an index existed are not found through it
//! (before the owner index: not listed at all; before the sid index: found
//! through their user only). Ending a session deletes its row and drops it
//! from this instance's cache; other instances stop serving it within their
//! cache time (`AVEMINT_SESSION_CACHE_TTL_MS`).

use std::time::Duration;

use super::id::{SessionHandle, SessionRowHash};
use super::store::{CountCutoffs, SessionCounts, StoreError, StoredSession, SweepCutoffs};
use super::{Session, Sessions, SignedInFrom};
use avemint_base::clock::UnixTime;

/// One session as a session list shows it.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// The row key (compared with the caller's own session; never shown).
    pub key: SessionRowHash,
    /// The session's `sid`, as its app JWTs carry it: the id the list shows.
    pub sid: SessionHandle,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    /// When it ends by lifetime or idle timeout, whichever is first.
    pub expires_at: UnixTime,
    pub signed_in_from: SignedInFrom,
}

impl SessionSummary {
    fn of(session: Session) -> Self {
        Self {
            key: session.key,
            expires_at: session.expires_at(),
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            sid: session.data.sid,
            signed_in_from: session.data.signed_in_from,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

impl Sessions {
    /// Opens a row found through an index, without side effects (no activity recorded, nothing deleted):
    /// `None` when it is expired or cannot be opened (those are dealt with when the session itself is used).
    fn open_found(&self, row: &StoredSession, now: UnixTime) -> Option<Session> {
        let (lifetime, idle) = (self.settings.lifetime, self.settings.idle_timeout);
        if row.created_at + lifetime <= now || row.last_seen_at + idle <= now {
            return None;
        }
        let plain = self.open_row(row, now).ok()?;
        let data = super::record::decode(&plain).ok()?;
        Some(self.session_of_row(row, data))
    }

    /// The live sessions of the user `sub`, opened and checked, most recently used first.
    async fn sessions_of_user(&self, sub: &str) -> Result<Vec<Session>, StoreError> {
        let now = self.now();
        let rows = self.store.sessions_of(&self.owner_hashes(sub)).await?;
        Ok(rows
            .iter()
            .filter_map(|row| self.open_found(row, now))
            .filter(|s| s.data.sub == sub)
            .collect())
    }

    /// The live sessions of the user `sub`, most recently used first.
    pub async fn list_of(&self, sub: &str) -> Result<Vec<SessionSummary>, StoreError> {
        Ok(self
            .sessions_of_user(sub)
            .await?
            .into_iter()
            .map(SessionSummary::of)
            .collect())
    }

    /// Ends the session `sid` if it is one of the user `sub`'s; returns its row key, `None` when `sub` has no
    /// such session (another user's and an unknown `sid` alike).
    pub async fn end_one_of(&self, sub: &str, sid: &SessionHandle) -> Result<Option<SessionRowHash>, StoreError> {
        let found = self
            .sessions_of_user(sub)
            .await?
            .into_iter()
            .find(|s| s.data.sid == *sid);
        let Some(session) = found else {
            return Ok(None);
        };
        self.delete(&session.key).await?;
        Ok(Some(session.key))
    }

    /// Ends every session of the user `sub` but `keep` (when given); returns how many ended.
    pub async fn end_all_of(&self, sub: &str, keep: Option<&SessionRowHash>) -> Result<usize, StoreError> {
        let mut ended = 0;
        for session in self.sessions_of_user(sub).await? {
            if Some(&session.key) != keep && self.delete(&session.key).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends the session `sid`, whoever it belongs to (the admin API); false when no session has it (or it was
    /// written before the sid index: end those through their user).
    pub async fn end_by_sid(&self, sid: &SessionHandle) -> Result<bool, StoreError> {
        let Some(row) = self.store.session_by_handle(&self.handle_hashes(sid.as_str())).await? else {
            return Ok(false);
        };
        match self.open_found(&row, self.now()) {
            Some(session) if session.data.sid == *sid => self.delete(&session.key).await,
            _ => Ok(false),
        }
    }

    /// Live sessions in the store: in all, created in the last hour and day, used in the last hour.
    pub async fn counts(&self) -> Result<SessionCounts, StoreError> {
        let now = self.now();
        self.store
            .counts(CountCutoffs {
                live: SweepCutoffs {
                    now,
                    created_before: now - self.settings.lifetime,
                    seen_before: now - self.settings.idle_timeout,
                },
                recent_hour: now - HOUR,
                recent_day: now - DAY,
            })
            .await
    }
}
