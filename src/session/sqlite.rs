//! The embedded SQLite backend: zero set-up, one file, migrations on start.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::id::SessionKey;
use super::store::{SessionStore, StoreError, StoredSession, SweepCutoffs};

/// Sessions in an SQLite file.
pub struct SqliteStore {
    pool: SqlitePool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    // sqlx errors name the operation and SQLite's message, never bound values.
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and runs migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, 8).await
    }

    /// Like `connect`, with at most `max_connections` pooled connections
    /// (always one for an in-memory database).
    pub async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(if in_memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            // Every pooled in-memory connection would be its own database.
            .max_connections(if in_memory { 1 } else { max_connections.max(1) })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("src/session/migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }
}

fn key_from_blob(bytes: Vec<u8>) -> Result<SessionKey, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Unavailable("corrupt session key in store".into()))?;
    Ok(SessionKey::from_bytes(arr))
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert(&self, row: &StoredSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, access_expires_at) VALUES (?, ?, ?, ?, ?, ?)",
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
            "SELECT key_hash, version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at \
             FROM sessions WHERE key_hash = ?",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| {
            Ok(StoredSession {
                key: key_from_blob(r.try_get("key_hash").map_err(unavailable)?)?,
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
            "UPDATE sessions SET sealed = ?, access_expires_at = ?, version = version + 1, refresh_started_at = NULL \
             WHERE key_hash = ? AND version = ?",
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
            "UPDATE sessions SET refresh_started_at = ? \
             WHERE key_hash = ? AND version = ? AND (refresh_started_at IS NULL OR refresh_started_at < ?)",
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
            "UPDATE sessions SET refresh_started_at = NULL WHERE key_hash = ? AND version = ? AND refresh_started_at = ?",
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
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE key_hash = ? AND last_seen_at < ?")
            .bind(now)
            .bind(key.as_bytes().as_slice())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE key_hash = ?")
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn consume_login_state(&self, state_hash: &[u8; 32], expires_at: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("INSERT INTO used_login_states (state_hash, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(state_hash.as_slice())
                .bind(expires_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn sweep(&self, c: SweepCutoffs) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE created_at < ? OR last_seen_at < ?")
            .bind(c.created_before)
            .bind(c.seen_before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        sqlx::query("DELETE FROM used_login_states WHERE expires_at < ?")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: u8, version: i64, now: i64) -> StoredSession {
        StoredSession {
            key: SessionKey::from_bytes([k; 32]),
            version,
            sealed: vec![k; 40],
            created_at: now,
            last_seen_at: now,
            access_expires_at: now + 3600,
            refresh_started_at: None,
        }
    }

    #[tokio::test]
    async fn crud_cas_and_sweep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = SqliteStore::connect(&url).await.expect("connect");
        s.ping().await.expect("ping");
        let r = row(1, 0, 1000);
        s.insert(&r).await.expect("insert");
        assert_eq!(s.get(&r.key).await.expect("get"), Some(r.clone()));
        assert!(s.replace(&r.key, 0, b"new", 5000).await.expect("cas"));
        assert!(
            !s.replace(&r.key, 0, b"stale", 6000).await.expect("cas"),
            "stale version must lose"
        );
        let got = s.get(&r.key).await.expect("get").expect("row");
        assert_eq!(
            (got.version, got.sealed.as_slice(), got.access_expires_at),
            (1, b"new".as_slice(), 5000)
        );
        assert!(s.begin_refresh(&r.key, 1, 1500, 1400).await.expect("marker"));
        assert!(
            !s.begin_refresh(&r.key, 1, 1501, 1401).await.expect("marker"),
            "one marker holder"
        );
        assert_eq!(
            s.get(&r.key).await.expect("get").expect("row").refresh_started_at,
            Some(1500)
        );
        s.abort_refresh(&r.key, 1, 1499)
            .await
            .expect("abort of another holder's marker");
        assert_eq!(
            s.get(&r.key).await.expect("get").expect("row").refresh_started_at,
            Some(1500),
            "only the holder's own marker is cleared"
        );
        assert!(
            s.begin_refresh(&r.key, 1, 1600, 1501).await.expect("marker"),
            "a stale marker (a dead holder) is taken over"
        );
        s.abort_refresh(&r.key, 1, 1600).await.expect("abort");
        assert!(s.begin_refresh(&r.key, 1, 1602, 1502).await.expect("marker"));
        assert!(s.replace(&r.key, 1, b"newer", 7000).await.expect("cas"));
        assert_eq!(
            s.get(&r.key).await.expect("get").expect("row").refresh_started_at,
            None,
            "replace clears the marker"
        );
        s.touch(&r.key, 2000).await.expect("touch");
        s.insert(&row(2, 0, 10)).await.expect("insert old");
        let removed = s
            .sweep(SweepCutoffs {
                now: 3000,
                created_before: 500,
                seen_before: 500,
            })
            .await
            .expect("sweep");
        assert_eq!(removed, 1);
        assert!(s.get(&SessionKey::from_bytes([2; 32])).await.expect("get").is_none());
        assert!(s.delete(&r.key).await.expect("delete"));
        assert!(!s.delete(&r.key).await.expect("delete"));
        assert!(s.consume_login_state(&[9; 32], 100).await.expect("state"));
        assert!(!s.consume_login_state(&[9; 32], 100).await.expect("state"));
    }
}
