//! One SQL text and one implementation of `SessionStore` for both backends.
//!
//! SQLite accepts PostgreSQL's numbered `$n` parameters (a repeated `$n` is
//! one value), so every statement is written once, here, and run unchanged
//! by `SqliteStore` and `PostgresStore`: `sql_session_store!` expands the same
//! method bodies for each backend's pool, and `SessionRow` (`sqlx::FromRow`)
//! maps a row the same way on both. This is what keeps the two backends from
//! drifting. What stays backend-specific is only how a pool is opened
//! (`sqlite`: file created 0600, pragmas, one connection for `:memory:`;
//! `postgres`: pool options) and which migration directory runs.
//!
//! # Migration histories
//!
//! Applied migration files are never edited (deployed databases have run them
//! and sqlx checks their checksums), so the two histories keep their own
//! numbering and end in the same schema (`tests/store_contract.rs` compares
//! the columns):
//!
//! | end state                          | SQLite                           | PostgreSQL                        |
//! |------------------------------------|----------------------------------|-----------------------------------|
//! | `sessions`, `used_login_states`    | `0001_sessions`                  | `0001_sessions`                   |
//! | `sessions.refresh_started_at`      | `0002_refresh_marker`            | `0001_sessions` (in the table)    |
//! | `owner_hash`, `seen_mac`, index    | `0003_owner_index_and_seen_mac`  | `0002_owner_index_and_seen_mac`   |
//! | `handle_hash`, timestamps index    | `0004_handle_index`              | `0004_handle_index`               |
//! | `refresh_deadline`, `ave_pause`     | `0005_refresh_deadline`          | `0005_refresh_deadline`           |
//! | no `sessions_created_at` index     | `0006_compact_sessions`          | `0006_compact_sessions`           |
//!
//! Column types map BLOB ↔ BYTEA and INTEGER ↔ BIGINT. From 0004 on a
//! migration takes the same version number on both backends (PostgreSQL has
//! no 0003; sqlx allows the gap), with the same file name.

use sqlx::FromRow;

use super::id::SessionRowHash;
use super::store::{HandleHash, OwnerHash, SessionCounts, StoreError, StoredSession};
use avemint_base::clock::UnixTime;

/// Inserts a new session row.
pub(crate) const INSERT: &str = "INSERT INTO sessions \
     (key_hash, version, sealed, created_at, last_seen_at, access_expires_at, owner_hash, seen_mac, handle_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The columns `SessionRow` reads.
const COLUMNS: &str = "key_hash, version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at, \
     refresh_deadline, owner_hash, seen_mac, handle_hash";

/// Reads one session by key.
pub(crate) const GET: &str = "SELECT key_hash, version, sealed, created_at, last_seen_at, access_expires_at, \
     refresh_started_at, refresh_deadline, owner_hash, seen_mac, handle_hash FROM sessions WHERE key_hash = $1";

/// Counts live sessions: created after `$1` and last seen after `$2` (what `Sessions` counts as expired is at
/// or before them), `$3` the start
/// of the last hour, `$4` of the last day. `COUNT` is a BIGINT on PostgreSQL and never NULL on either.
pub(crate) const COUNTS: &str = "SELECT COUNT(*) AS total, \
     COUNT(CASE WHEN created_at >= $4 THEN 1 END) AS created_last_day, \
     COUNT(CASE WHEN created_at >= $3 THEN 1 END) AS created_last_hour, \
     COUNT(CASE WHEN last_seen_at >= $3 THEN 1 END) AS active_last_hour \
     FROM sessions WHERE created_at > $1 AND last_seen_at > $2";

/// Compare-and-swap of the sealed data on `version`; clears the refresh marker.
pub(crate) const REPLACE: &str = "UPDATE sessions \
     SET sealed = $1, access_expires_at = $2, version = version + 1, refresh_started_at = NULL, \
     refresh_deadline = NULL \
     WHERE key_hash = $3 AND version = $4";

/// Sets the refresh marker (`$1`, now) and its deadline (`$5`) if the version matches and the marker is clear,
/// past its own deadline, or (a marker written before deadlines were recorded) older than `$4`.
pub(crate) const BEGIN_REFRESH: &str = "UPDATE sessions SET refresh_started_at = $1, refresh_deadline = $5 \
     WHERE key_hash = $2 AND version = $3 AND (refresh_started_at IS NULL OR refresh_deadline < $1 \
     OR (refresh_deadline IS NULL AND refresh_started_at < $4))";

/// Reads the pause Ave's rate limit asked of this client (one row shared by every instance on the store).
pub(crate) const AVE_PAUSE: &str = "SELECT paused_until FROM ave_pause WHERE id = 1";

/// Records a pause until `$1`, keeping a later one already recorded.
pub(crate) const SHARE_AVE_PAUSE: &str = "INSERT INTO ave_pause (id, paused_until) VALUES (1, $1) \
     ON CONFLICT (id) DO UPDATE SET paused_until = CASE WHEN excluded.paused_until > ave_pause.paused_until \
     THEN excluded.paused_until ELSE ave_pause.paused_until END";

/// Clears the refresh marker if it is still the caller's.
pub(crate) const ABORT_REFRESH: &str = "UPDATE sessions SET refresh_started_at = NULL, refresh_deadline = NULL \
     WHERE key_hash = $1 AND version = $2 AND refresh_started_at = $3";

/// Moves `last_seen_at` forward (never back) with its MAC.
pub(crate) const TOUCH: &str =
    "UPDATE sessions SET last_seen_at = $1, seen_mac = $2 WHERE key_hash = $3 AND last_seen_at < $1";

/// Deletes one session.
pub(crate) const DELETE: &str = "DELETE FROM sessions WHERE key_hash = $1";

/// Records a used login `state`; no row is inserted if it was used before.
pub(crate) const CONSUME_LOGIN_STATE: &str =
    "INSERT INTO used_login_states (state_hash, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// Deletes sessions past their absolute lifetime or idle timeout.
pub(crate) const SWEEP_SESSIONS: &str = "DELETE FROM sessions WHERE created_at < $1 OR last_seen_at < $2";

/// Deletes expired used login states.
pub(crate) const SWEEP_LOGIN_STATES: &str = "DELETE FROM used_login_states WHERE expires_at < $1";

/// Checks the database answers.
pub(crate) const PING: &str = "SELECT 1";

/// `$first, $first+1, …` for an `IN` list of `n` owner keys. Only numbered
/// placeholders are formatted into SQL; every value is bound.
fn owner_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sessions of any of `n` owners (bound as `$1…$n`), most recently used first.
pub(crate) fn sessions_of(n: usize) -> String {
    format!(
        "SELECT {COLUMNS} FROM sessions WHERE owner_hash IN ({}) ORDER BY last_seen_at DESC, created_at DESC",
        owner_list(1, n)
    )
}

/// The session of any of `n` sid index values (bound as `$1…$n`).
pub(crate) fn session_by_handle(n: usize) -> String {
    format!(
        "SELECT {COLUMNS} FROM sessions WHERE handle_hash IN ({}) LIMIT 1",
        owner_list(1, n)
    )
}

/// Deletes the sessions of any of `n` owners (bound as `$3…`) except `$1` and
/// the `$2` most recently used others; returns the deleted keys.
pub(crate) fn trim_sessions_of(n: usize) -> String {
    let list = owner_list(3, n);
    format!(
        "DELETE FROM sessions WHERE owner_hash IN ({list}) AND key_hash <> $1 AND key_hash NOT IN \
         (SELECT key_hash FROM sessions WHERE owner_hash IN ({list}) AND key_hash <> $1 \
          ORDER BY last_seen_at DESC, created_at DESC LIMIT $2) RETURNING key_hash"
    )
}

/// A session row as both backends return it.
#[derive(FromRow)]
pub(crate) struct SessionRow {
    key_hash: Vec<u8>,
    version: i64,
    sealed: Vec<u8>,
    created_at: i64,
    last_seen_at: i64,
    access_expires_at: i64,
    refresh_started_at: Option<i64>,
    refresh_deadline: Option<i64>,
    owner_hash: Option<Vec<u8>>,
    seen_mac: Option<Vec<u8>>,
    handle_hash: Option<Vec<u8>>,
}

/// A backend error: the store is unavailable. sqlx errors name the operation
/// and the database's message, never bound values.
pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A column that cannot be decoded makes the row unreadable, not the store unavailable.
fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::CorruptRow(e.to_string())
}

/// A 32-byte session key read back from `key_hash`.
pub(crate) fn session_key(bytes: Vec<u8>) -> Result<SessionRowHash, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::CorruptRow("session key of the wrong length".into()))?;
    Ok(SessionRowHash::from_bytes(arr))
}

/// Reads a stored session from a row of `GET` or `sessions_of`.
pub(crate) fn stored_session<'r, R: sqlx::Row>(row: &'r R) -> Result<StoredSession, StoreError>
where
    SessionRow: FromRow<'r, R>,
{
    let r = SessionRow::from_row(row).map_err(corrupt)?;
    let owner = r
        .owner_hash
        .map(|o| {
            o.try_into()
                .map(OwnerHash::from_bytes)
                .map_err(|_| StoreError::CorruptRow("owner hash of the wrong length".into()))
        })
        .transpose()?;
    let handle = r
        .handle_hash
        .map(|h| {
            h.try_into()
                .map(HandleHash::from_bytes)
                .map_err(|_| StoreError::CorruptRow("handle hash of the wrong length".into()))
        })
        .transpose()?;
    Ok(StoredSession {
        key: session_key(r.key_hash)?,
        version: r.version,
        sealed: r.sealed,
        created_at: UnixTime::from_secs(r.created_at),
        last_seen_at: UnixTime::from_secs(r.last_seen_at),
        access_expires_at: UnixTime::from_secs(r.access_expires_at),
        refresh_started_at: r.refresh_started_at.map(UnixTime::from_secs),
        refresh_deadline: r.refresh_deadline.map(UnixTime::from_secs),
        owner,
        seen_mac: r.seen_mac,
        handle,
    })
}

/// Reads a row of `COUNTS`.
pub(crate) fn session_counts<R: sqlx::Row>(row: &R) -> Result<SessionCounts, StoreError>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count = |name: &str| {
        row.try_get::<i64, _>(name)
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(corrupt)
    };
    Ok(SessionCounts {
        total: count("total")?,
        created_last_hour: count("created_last_hour")?,
        created_last_day: count("created_last_day")?,
        active_last_hour: count("active_last_hour")?,
    })
}

/// Implements `SessionStore` for a backend struct with a `pool` field (an
/// `sqlx::Pool` of either database) with the statements above. Written as a
/// macro rather than generic code over `sqlx::Database` because the trait
/// bounds that would need (encode/decode of every bound type, executor
/// lifetimes) would outweigh the methods; the expansion is the same text for
/// both backends.
macro_rules! sql_session_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::session::store::SessionStore for $store {
            async fn insert(
                &self,
                row: &$crate::session::store::StoredSession,
            ) -> Result<(), $crate::session::store::StoreError> {
                sqlx::query($crate::session::sql::INSERT)
                    .bind(row.key.as_bytes().as_slice())
                    .bind(row.version)
                    .bind(row.sealed.as_slice())
                    .bind(row.created_at.as_secs())
                    .bind(row.last_seen_at.as_secs())
                    .bind(row.access_expires_at.as_secs())
                    .bind(row.owner.map(|o| o.as_bytes().to_vec()))
                    .bind(row.seen_mac.as_deref())
                    .bind(row.handle.map(|h| h.as_bytes().to_vec()))
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(())
            }

            async fn get(
                &self,
                key: &$crate::session::id::SessionRowHash,
            ) -> Result<Option<$crate::session::store::StoredSession>, $crate::session::store::StoreError> {
                let row = sqlx::query($crate::session::sql::GET)
                    .bind(key.as_bytes().as_slice())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                row.as_ref().map($crate::session::sql::stored_session).transpose()
            }

            async fn replace(
                &self,
                key: &$crate::session::id::SessionRowHash,
                expected_version: i64,
                sealed: &[u8],
                access_expires_at: ::avemint_base::clock::UnixTime,
            ) -> Result<bool, $crate::session::store::StoreError> {
                let done = sqlx::query($crate::session::sql::REPLACE)
                    .bind(sealed)
                    .bind(access_expires_at.as_secs())
                    .bind(key.as_bytes().as_slice())
                    .bind(expected_version)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn begin_refresh(
                &self,
                key: &$crate::session::id::SessionRowHash,
                expected_version: i64,
                now: ::avemint_base::clock::UnixTime,
                deadline: ::avemint_base::clock::UnixTime,
                stale_before: ::avemint_base::clock::UnixTime,
            ) -> Result<bool, $crate::session::store::StoreError> {
                let done = sqlx::query($crate::session::sql::BEGIN_REFRESH)
                    .bind(now.as_secs())
                    .bind(key.as_bytes().as_slice())
                    .bind(expected_version)
                    .bind(stale_before.as_secs())
                    .bind(deadline.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn abort_refresh(
                &self,
                key: &$crate::session::id::SessionRowHash,
                expected_version: i64,
                marker: ::avemint_base::clock::UnixTime,
            ) -> Result<(), $crate::session::store::StoreError> {
                sqlx::query($crate::session::sql::ABORT_REFRESH)
                    .bind(key.as_bytes().as_slice())
                    .bind(expected_version)
                    .bind(marker.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(())
            }

            async fn ave_pause(
                &self,
            ) -> Result<Option<::avemint_base::clock::UnixTime>, $crate::session::store::StoreError> {
                let until: Option<i64> = sqlx::query_scalar($crate::session::sql::AVE_PAUSE)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(until.map(::avemint_base::clock::UnixTime::from_secs))
            }

            async fn share_ave_pause(
                &self,
                until: ::avemint_base::clock::UnixTime,
            ) -> Result<(), $crate::session::store::StoreError> {
                sqlx::query($crate::session::sql::SHARE_AVE_PAUSE)
                    .bind(until.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(())
            }

            async fn touch(
                &self,
                key: &$crate::session::id::SessionRowHash,
                now: ::avemint_base::clock::UnixTime,
                seen_mac: &[u8],
            ) -> Result<(), $crate::session::store::StoreError> {
                sqlx::query($crate::session::sql::TOUCH)
                    .bind(now.as_secs())
                    .bind(seen_mac)
                    .bind(key.as_bytes().as_slice())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(())
            }

            async fn sessions_of(
                &self,
                owners: &[$crate::session::store::OwnerHash],
            ) -> Result<Vec<$crate::session::store::StoredSession>, $crate::session::store::StoreError> {
                if owners.is_empty() {
                    return Ok(Vec::new());
                }
                // Only numbered placeholders are formatted in; every value is bound.
                let sql = $crate::session::sql::sessions_of(owners.len());
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for o in owners {
                    query = query.bind(o.as_bytes().as_slice());
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                // One unreadable row must not hide the others.
                Ok(rows
                    .iter()
                    .filter_map(|r| $crate::session::sql::stored_session(r).ok())
                    .collect())
            }

            async fn trim_sessions_of(
                &self,
                owners: &[$crate::session::store::OwnerHash],
                keep: u32,
                except: &$crate::session::id::SessionRowHash,
            ) -> Result<Vec<$crate::session::id::SessionRowHash>, $crate::session::store::StoreError> {
                use sqlx::Row as _;
                if owners.is_empty() {
                    return Ok(Vec::new());
                }
                // Only numbered placeholders are formatted in; every value is bound.
                let sql = $crate::session::sql::trim_sessions_of(owners.len());
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(except.as_bytes().as_slice())
                    .bind(i64::from(keep.saturating_sub(1)));
                for o in owners {
                    query = query.bind(o.as_bytes().as_slice());
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(rows
                    .iter()
                    .filter_map(|r| r.try_get::<Vec<u8>, _>("key_hash").ok())
                    .filter_map(|k| $crate::session::sql::session_key(k).ok())
                    .collect())
            }

            async fn session_by_handle(
                &self,
                handles: &[$crate::session::store::HandleHash],
            ) -> Result<Option<$crate::session::store::StoredSession>, $crate::session::store::StoreError> {
                if handles.is_empty() {
                    return Ok(None);
                }
                // Only numbered placeholders are formatted in; every value is bound.
                let sql = $crate::session::sql::session_by_handle(handles.len());
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for h in handles {
                    query = query.bind(h.as_bytes().as_slice());
                }
                let row = query
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                row.as_ref().map($crate::session::sql::stored_session).transpose()
            }

            async fn counts(
                &self,
                c: $crate::session::store::CountCutoffs,
            ) -> Result<$crate::session::store::SessionCounts, $crate::session::store::StoreError> {
                let row = sqlx::query($crate::session::sql::COUNTS)
                    .bind(c.live.created_before.as_secs())
                    .bind(c.live.seen_before.as_secs())
                    .bind(c.recent_hour.as_secs())
                    .bind(c.recent_day.as_secs())
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                $crate::session::sql::session_counts(&row)
            }

            async fn delete(
                &self,
                key: &$crate::session::id::SessionRowHash,
            ) -> Result<bool, $crate::session::store::StoreError> {
                let done = sqlx::query($crate::session::sql::DELETE)
                    .bind(key.as_bytes().as_slice())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn consume_login_state(
                &self,
                state_hash: &[u8; 32],
                expires_at: ::avemint_base::clock::UnixTime,
            ) -> Result<bool, $crate::session::store::StoreError> {
                let done = sqlx::query($crate::session::sql::CONSUME_LOGIN_STATE)
                    .bind(state_hash.as_slice())
                    .bind(expires_at.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn sweep(
                &self,
                c: $crate::session::store::SweepCutoffs,
            ) -> Result<u64, $crate::session::store::StoreError> {
                let done = sqlx::query($crate::session::sql::SWEEP_SESSIONS)
                    .bind(c.created_before.as_secs())
                    .bind(c.seen_before.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                sqlx::query($crate::session::sql::SWEEP_LOGIN_STATES)
                    .bind(c.now.as_secs())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(done.rows_affected())
            }

            async fn ping(&self) -> Result<(), $crate::session::store::StoreError> {
                sqlx::query($crate::session::sql::PING)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::session::sql::unavailable)?;
                Ok(())
            }

            fn pool_stats(&self) -> Option<$crate::session::store::PoolStats> {
                let size = self.pool.size();
                let idle = u32::try_from(self.pool.num_idle()).unwrap_or(size);
                Some($crate::session::store::PoolStats {
                    in_use: size.saturating_sub(idle),
                    idle,
                    max: self.pool.options().get_max_connections(),
                })
            }
        }
    };
}

pub(crate) use sql_session_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lists_number_their_placeholders_after_the_fixed_ones() {
        assert_eq!(owner_list(3, 2), "$3, $4");
        assert!(sessions_of(2).contains("owner_hash IN ($1, $2)"));
        let trim = trim_sessions_of(3);
        assert_eq!(trim.matches("owner_hash IN ($3, $4, $5)").count(), 2);
        assert!(trim.contains("LIMIT $2"));
    }
}
