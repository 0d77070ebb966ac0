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
        check_reachable(&options).await?;
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

/// How long the first connection at start may take.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens one connection before the pool is built, so a database that cannot be reached is reported with its host,
/// port and the cause (a pool would only say that it timed out). Never shows the password.
async fn check_reachable(options: &PgConnectOptions) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let target = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or("(the user's default)");
    let cause = match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Ok(Err(e)) => connect_cause(&e),
        Err(_) => format!("no answer within {} s (timed out)", FIRST_CONNECT_TIMEOUT.as_secs()),
    };
    Err(StoreError::Unavailable(format!(
        "cannot connect to PostgreSQL at {target}, database {database}: {cause}"
    )))
}

/// The cause of a failed connection, in words an operator can act on.
fn connect_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused (nothing listens on that port)".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => {
                format!("the host name could not be resolved (DNS: {io})")
            }
            _ => format!("network error: {io}"),
        },
        sqlx::Error::Tls(t) => format!("TLS failed: {t}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => {
                format!(
                    "authentication failed (check the user name and password): {}",
                    db.message()
                )
            }
            Some("3D000") => format!("the database does not exist: {}", db.message()),
            _ => format!("the server refused: {}", db.message()),
        },
        other => other.to_string(),
    }
}

super::sql::sql_session_store!(PostgresStore);
