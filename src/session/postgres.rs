//! The PostgreSQL backend: one database shared by many avemint instances
//! behind a load balancer. Migrations run on start (sqlx serialises them with
//! its own advisory lock).
//!
//! The per-session refresh lock is a session-level advisory lock held on a
//! dedicated pooled connection: waits are bounded by `lock_timeout`, and if
//! the holder dies its connection closes and PostgreSQL frees the lock, so no
//! lease can run out under a refresh that is still in progress.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};

use super::id::SessionKey;
use super::store::{OwnerKey, RefreshLock, SessionStore, StoreError, StoredSession, SweepCutoffs};

/// Sessions in PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A column that cannot be decoded makes the row unreadable, not the store unavailable.
fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::CorruptRow(e.to_string())
}

fn row_from(r: &sqlx::postgres::PgRow) -> Result<StoredSession, StoreError> {
    let key: Vec<u8> = r.try_get("key_hash").map_err(corrupt)?;
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| StoreError::CorruptRow("session key of the wrong length".into()))?;
    let owner: Option<Vec<u8>> = r.try_get("owner_hash").map_err(corrupt)?;
    let owner = owner
        .map(|o| {
            o.try_into()
                .map(OwnerKey)
                .map_err(|_| StoreError::CorruptRow("owner hash of the wrong length".into()))
        })
        .transpose()?;
    Ok(StoredSession {
        key: SessionKey::from_bytes(key),
        version: r.try_get("version").map_err(corrupt)?,
        sealed: r.try_get("sealed").map_err(corrupt)?,
        created_at: r.try_get("created_at").map_err(corrupt)?,
        last_seen_at: r.try_get("last_seen_at").map_err(corrupt)?,
        access_expires_at: r.try_get("access_expires_at").map_err(corrupt)?,
        refresh_started_at: r.try_get("refresh_started_at").map_err(corrupt)?,
        owner,
        seen_mac: r.try_get("seen_mac").map_err(corrupt)?,
    })
}

fn owner_list(owners: &[OwnerKey]) -> Vec<Vec<u8>> {
    owners.iter().map(|o| o.0.to_vec()).collect()
}

/// The advisory-lock id of a session: the first 8 bytes of its key.
fn lock_id(key: &SessionKey) -> i64 {
    let b = key.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl PostgresStore {
    /// Connects and runs migrations. The URL may carry `options=-c search_path=…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Unavailable("invalid PostgreSQL URL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("src/session/migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }
}

/// An advisory lock held on a pooled connection.
struct PgRefreshLock {
    conn: Option<PoolConnection<Postgres>>,
    id: i64,
}

#[async_trait]
impl RefreshLock for PgRefreshLock {
    async fn release(mut self: Box<Self>) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.id)
                .execute(&mut *conn)
                .await;
            let reset = sqlx::query("RESET lock_timeout").execute(&mut *conn).await;
            if unlocked.is_err() || reset.is_err() {
                // Never return a connection that may still hold the lock.
                conn.close_on_drop();
            }
        }
    }
}

impl Drop for PgRefreshLock {
    fn drop(&mut self) {
        // Dropped without release (a cancelled task): closing the connection frees the lock.
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn insert(&self, row: &StoredSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, access_expires_at, \
             owner_hash, seen_mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(row.key.as_bytes().as_slice())
        .bind(row.version)
        .bind(row.sealed.as_slice())
        .bind(row.created_at)
        .bind(row.last_seen_at)
        .bind(row.access_expires_at)
        .bind(row.owner.map(|o| o.0.to_vec()))
        .bind(row.seen_mac.as_deref())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let row = sqlx::query(
            "SELECT key_hash, version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at, \
             owner_hash, seen_mac FROM sessions WHERE key_hash = $1",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(row_from).transpose()
    }

    async fn replace(
        &self,
        key: &SessionKey,
        expected_version: i64,
        sealed: &[u8],
        access_expires_at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET sealed = $1, access_expires_at = $2, version = version + 1, refresh_started_at = NULL \
             WHERE key_hash = $3 AND version = $4",
        )
        .bind(sealed)
        .bind(access_expires_at)
        .bind(key.as_bytes().as_slice())
        .bind(expected_version)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn begin_refresh(&self, key: &SessionKey, expected_version: i64, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET refresh_started_at = $1 \
             WHERE key_hash = $2 AND version = $3 AND refresh_started_at IS NULL",
        )
        .bind(now)
        .bind(key.as_bytes().as_slice())
        .bind(expected_version)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn abort_refresh(&self, key: &SessionKey, expected_version: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET refresh_started_at = NULL WHERE key_hash = $1 AND version = $2")
            .bind(key.as_bytes().as_slice())
            .bind(expected_version)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn lock_refresh(&self, key: &SessionKey, wait: Duration) -> Result<Box<dyn RefreshLock>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let ms = wait.as_millis().clamp(1, 600_000).to_string();
        sqlx::query("SELECT set_config('lock_timeout', $1, false)")
            .bind(ms)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        let id = lock_id(key);
        match sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(id)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(Box::new(PgRefreshLock { conn: Some(conn), id })),
            Err(e) => {
                let timed_out = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "55P03");
                let _ = sqlx::query("RESET lock_timeout").execute(&mut *conn).await;
                Err(if timed_out {
                    StoreError::LockTimeout
                } else {
                    unavailable(e)
                })
            }
        }
    }

    async fn touch(&self, key: &SessionKey, now: i64, seen_mac: &[u8]) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1, seen_mac = $2 WHERE key_hash = $3 AND last_seen_at < $1")
            .bind(now)
            .bind(seen_mac)
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sessions_of(&self, owners: &[OwnerKey]) -> Result<Vec<StoredSession>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_hash, version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at, \
             owner_hash, seen_mac FROM sessions WHERE owner_hash = ANY($1) ORDER BY last_seen_at DESC, created_at DESC",
        )
        .bind(owner_list(owners))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        // One unreadable row must not hide the others.
        Ok(rows.iter().filter_map(|r| row_from(r).ok()).collect())
    }

    async fn trim_sessions_of(
        &self,
        owners: &[OwnerKey],
        keep: u32,
        except: &SessionKey,
    ) -> Result<Vec<SessionKey>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM sessions WHERE owner_hash = ANY($1) AND key_hash <> $2 AND key_hash NOT IN \
             (SELECT key_hash FROM sessions WHERE owner_hash = ANY($1) AND key_hash <> $2 \
              ORDER BY last_seen_at DESC, created_at DESC LIMIT $3) RETURNING key_hash",
        )
        .bind(owner_list(owners))
        .bind(except.as_bytes().as_slice())
        .bind(i64::from(keep.saturating_sub(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<Vec<u8>, _>("key_hash").ok())
            .filter_map(|k| <[u8; 32]>::try_from(k).ok())
            .map(SessionKey::from_bytes)
            .collect())
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE key_hash = $1")
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn consume_login_state(&self, state_hash: &[u8; 32], expires_at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO used_login_states (state_hash, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(state_hash.as_slice())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn sweep(&self, c: SweepCutoffs) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE created_at < $1 OR last_seen_at < $2")
            .bind(c.created_before)
            .bind(c.seen_before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM used_login_states WHERE expires_at < $1")
            .bind(c.now)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}
