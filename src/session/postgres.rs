//! The PostgreSQL backend: one database shared by many avemint instances
//! behind a load balancer. Migrations run on start (sqlx serialises them with
//! its own advisory lock).
//!
//! Every operation is one short statement on a pooled connection; none is held
//! while Ave answers a refresh. The per-session refresh lock is the row's
//! refresh marker (see `store`), taken and released by single UPDATEs, so a
//! hundred refreshes in flight use no connection at all between those
//! statements and requests for valid sessions never queue behind them. The
//! pool size is `AVEMINT_DATABASE_MAX_CONNECTIONS`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::id::SessionKey;
use super::store::{OwnerKey, SessionStore, StoreError, StoredSession, SweepCutoffs};

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

impl PostgresStore {
    /// Connects and runs migrations. The URL may carry `options=-c search_path=…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, super::DEFAULT_MAX_CONNECTIONS).await
    }

    /// Like `connect`, with at most `max_connections` pooled connections.
    pub async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Unavailable("invalid PostgreSQL URL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
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

    async fn begin_refresh(
        &self,
        key: &SessionKey,
        expected_version: i64,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET refresh_started_at = $1 \
             WHERE key_hash = $2 AND version = $3 AND (refresh_started_at IS NULL OR refresh_started_at < $4)",
        )
        .bind(now)
        .bind(key.as_bytes().as_slice())
        .bind(expected_version)
        .bind(stale_before)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn abort_refresh(&self, key: &SessionKey, expected_version: i64, marker: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET refresh_started_at = NULL \
             WHERE key_hash = $1 AND version = $2 AND refresh_started_at = $3",
        )
        .bind(key.as_bytes().as_slice())
        .bind(expected_version)
        .bind(marker)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
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
