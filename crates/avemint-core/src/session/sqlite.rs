//! The embedded SQLite backend: zero set-up, one file, migrations on start.
//!
//! The database file holds sealed tokens and session keys' derived hashes, so
//! it is created 0600 (owner only) whatever the umask, before SQLite opens it;
//! SQLite gives its `-wal` and `-shm` files the database file's mode. An
//! existing file (and its `-wal` / `-shm`) readable by others is tightened to
//! 0600 on start, with a warning.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::sql::unavailable;
use super::store::StoreError;

/// Each pooled connection's page cache (`PRAGMA cache_size`, negative: KiB): 512 KiB instead of SQLite's 2 MiB, so
/// the pool's memory stays small whatever `AVEMINT_DATABASE_MAX_CONNECTIONS` says (16 connections each filling 2 MiB
/// from a large store were 32 MiB of the process). A session lookup reads a few pages at random keys; what misses
/// this cache is in the operating system's.
const PAGE_CACHE: &str = "-512";

/// Sessions in an SQLite file.
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and runs migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, 8).await
    }

    /// Like `connect`, with at most `max_connections` pooled connections
    /// (always one for an in-memory database).
    pub(crate) async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
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
            .foreign_keys(true)
            .pragma("cache_size", PAGE_CACHE);
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
        // Numbered apart from PostgreSQL's history; see `sql` for the mapping.
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

super::sql::sql_session_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionStore;

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
        assert!(
            s.consume_login_state(&[1; 32], avemint_base::clock::UnixTime::from_secs(1000))
                .await
                .expect("write")
        );
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
