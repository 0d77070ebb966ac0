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
use super::store::{SessionStore, StoreError, StoredSession, SweepCutoffs};

/// Sessions in PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
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
            "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, access_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(row.key.as_bytes().as_slice())
        .bind(row.version)
        .bind(row.sealed.as_slice())
        .bind(row.created_at)
        .bind(row.last_seen_at)
        .bind(row.access_expires_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let row = sqlx::query(
            "SELECT version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at \
             FROM sessions WHERE key_hash = $1",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| {
            Ok(StoredSession {
                key: *key,
                version: r.try_get("version").map_err(unavailable)?,
                sealed: r.try_get("sealed").map_err(unavailable)?,
                created_at: r.try_get("created_at").map_err(unavailable)?,
                last_seen_at: r.try_get("last_seen_at").map_err(unavailable)?,
                access_expires_at: r.try_get("access_expires_at").map_err(unavailable)?,
                refresh_started_at: r.try_get("refresh_started_at").map_err(unavailable)?,
            })
        })
        .transpose()
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

    async fn touch(&self, key: &SessionKey, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE key_hash = $2 AND last_seen_at < $1")
            .bind(now)
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
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
