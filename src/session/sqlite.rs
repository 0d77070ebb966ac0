//! The embedded SQLite backend: zero set-up, one file, migrations on start.
//!
//! The database file holds sealed tokens and session keys' derived hashes, so
//! it is created 0600 (owner only) whatever the umask, before SQLite opens it;
//! SQLite gives its `-wal` and `-shm` files the database file's mode. An
//! existing file (and its `-wal` / `-shm`) readable by others is tightened to
//! 0600 on start, with a warning.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::id::SessionKey;
use super::store::{OwnerKey, SessionStore, StoreError, StoredSession, SweepCutoffs};

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
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite URL: {e}")))?;
        if !in_memory {
            owner_only(options.get_filename())?;
        }
        let options = options
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

/// Creates the database file 0600 if it is missing, and takes group and other
/// permissions off an existing one and its `-wal` / `-shm` files.
#[cfg(unix)]
fn owner_only(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("cannot {what} the database file {}: {e}", path.display()))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed("create", e)),
    }
    let mut names = vec![path.as_os_str().to_owned()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        names.push(name);
    }
    for name in names {
        let file = std::path::Path::new(&name);
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| failed("restrict", e))?;
            tracing::warn!(
                file = %file.display(),
                was = format!("{mode:o}"),
                "database file was readable by other users; restricted it to its owner"
            );
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn owner_only(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

fn key_from_blob(bytes: Vec<u8>) -> Result<SessionKey, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::CorruptRow("session key of the wrong length".into()))?;
    Ok(SessionKey::from_bytes(arr))
}

/// The columns of a session row, as `get` and `sessions_of` read them.
const COLUMNS: &str =
    "key_hash, version, sealed, created_at, last_seen_at, access_expires_at, refresh_started_at, owner_hash, seen_mac";

/// A column that cannot be decoded makes the row unreadable, not the store unavailable.
fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::CorruptRow(e.to_string())
}

fn row_from(r: &sqlx::sqlite::SqliteRow) -> Result<StoredSession, StoreError> {
    let owner: Option<Vec<u8>> = r.try_get("owner_hash").map_err(corrupt)?;
    let owner = owner
        .map(|o| {
            o.try_into()
                .map(OwnerKey)
                .map_err(|_| StoreError::CorruptRow("owner hash of the wrong length".into()))
        })
        .transpose()?;
    Ok(StoredSession {
        key: key_from_blob(r.try_get("key_hash").map_err(corrupt)?)?,
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

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert(&self, row: &StoredSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, access_expires_at, owner_hash, seen_mac) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
             owner_hash, seen_mac FROM sessions WHERE key_hash = ?",
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

    async fn touch(&self, key: &SessionKey, now: i64, seen_mac: &[u8]) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = ?, seen_mac = ? WHERE key_hash = ? AND last_seen_at < ?")
            .bind(now)
            .bind(seen_mac)
            .bind(key.as_bytes().as_slice())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sessions_of(&self, owners: &[OwnerKey]) -> Result<Vec<StoredSession>, StoreError> {
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE owner_hash IN ({}) ORDER BY last_seen_at DESC, created_at DESC",
            placeholders(owners.len())
        );
        // Only `?` placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for o in owners {
            query = query.bind(o.0.as_slice());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        // One unreadable row must not hide the others.
        Ok(rows.iter().filter_map(|r| row_from(r).ok()).collect())
    }

    async fn trim_sessions_of(
        &self,
        owners: &[OwnerKey],
        keep: u32,
        except: &SessionKey,
    ) -> Result<Vec<SessionKey>, StoreError> {
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let list = placeholders(owners.len());
        let sql = format!(
            "DELETE FROM sessions WHERE owner_hash IN ({list}) AND key_hash <> ? AND key_hash NOT IN \
             (SELECT key_hash FROM sessions WHERE owner_hash IN ({list}) AND key_hash <> ? \
              ORDER BY last_seen_at DESC, created_at DESC LIMIT ?) RETURNING key_hash"
        );
        // Only `?` placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for o in owners {
            query = query.bind(o.0.as_slice());
        }
        query = query.bind(except.as_bytes().as_slice());
        for o in owners {
            query = query.bind(o.0.as_slice());
        }
        query = query
            .bind(except.as_bytes().as_slice())
            .bind(i64::from(keep.saturating_sub(1)));
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<Vec<u8>, _>("key_hash").ok())
            .filter_map(|k| key_from_blob(k).ok())
            .collect())
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
            owner: Some(OwnerKey([k % 2; 32])),
            seen_mac: Some(vec![k; 32]),
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
        s.touch(&r.key, 2000, b"mac").await.expect("touch");
        let got = s.get(&r.key).await.expect("get").expect("row");
        assert_eq!(
            (got.last_seen_at, got.seen_mac.as_deref()),
            (2000, Some(b"mac".as_slice()))
        );
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

    #[tokio::test]
    async fn the_per_user_index_lists_and_trims_most_recently_used_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = SqliteStore::connect(&url).await.expect("connect");
        let alice = [OwnerKey([7; 32]), OwnerKey([8; 32])];
        let mut rows = Vec::new();
        for (i, seen) in [(10u8, 100), (11, 400), (12, 300), (13, 200)] {
            let mut r = row(i, 0, 50);
            r.last_seen_at = seen;
            r.owner = Some(alice[usize::from(i % 2)]);
            s.insert(&r).await.expect("insert");
            rows.push(r);
        }
        let mut bob = row(20, 0, 50);
        bob.owner = Some(OwnerKey([9; 32]));
        s.insert(&bob).await.expect("insert");
        let listed: Vec<u8> = s
            .sessions_of(&alice)
            .await
            .expect("list")
            .iter()
            .map(|r| r.key.as_bytes()[0])
            .collect();
        assert_eq!(
            listed,
            vec![11, 12, 13, 10],
            "every owner key, most recently used first"
        );
        assert_eq!(s.sessions_of(&alice[..1]).await.expect("list").len(), 2);
        // Keep two (the new session 10 among them): 11 stays, 12 and 13 go.
        let mut ended: Vec<u8> = s
            .trim_sessions_of(&alice, 2, &rows[0].key)
            .await
            .expect("trim")
            .iter()
            .map(|k| k.as_bytes()[0])
            .collect();
        ended.sort_unstable();
        assert_eq!(ended, vec![12, 13]);
        let left: Vec<u8> = s
            .sessions_of(&alice)
            .await
            .expect("list")
            .iter()
            .map(|r| r.key.as_bytes()[0])
            .collect();
        assert_eq!(left, vec![11, 10]);
        assert!(
            s.get(&bob.key).await.expect("get").is_some(),
            "other users are untouched"
        );
        assert!(s.trim_sessions_of(&[], 1, &bob.key).await.expect("trim").is_empty());
    }

    #[tokio::test]
    async fn an_unreadable_row_is_corrupt_not_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = SqliteStore::connect(&url).await.expect("connect");
        let r = row(1, 0, 1000);
        s.insert(&r).await.expect("insert");
        sqlx::query("UPDATE sessions SET created_at = 'soon'")
            .execute(&s.pool)
            .await
            .expect("update");
        assert!(matches!(s.get(&r.key).await, Err(StoreError::CorruptRow(_))));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("new.db");
        let s = SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        s.insert(&row(1, 0, 1000)).await.expect("insert");
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
            assert!(p.exists(), "{suffix} exists while open");
            assert_eq!(mode(&p), 0o600, "new{suffix}");
        }
        // Files left world-readable by an earlier version are tightened on start.
        let old = dir.path().join("old.db");
        std::fs::write(&old, b"").expect("create");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _s = SqliteStore::connect(&format!("sqlite://{}", old.display()))
            .await
            .expect("connect");
        assert_eq!(mode(&old), 0o600);
    }
}
