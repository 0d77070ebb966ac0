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

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::sql::unavailable;
use super::store::StoreError;

/// Sessions in PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and runs migrations. The URL may carry `options=-c search_path=…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, super::DEFAULT_MAX_CONNECTIONS).await
    }

    /// Like `connect`, with at most `max_connections` pooled connections.
    pub(crate) async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Unavailable("invalid PostgreSQL URL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        // Numbered apart from SQLite's history; see `sql` for the mapping.
        sqlx::migrate!("src/session/migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }
}

super::sql::sql_session_store!(PostgresStore);
