//! What the session store is configured with: where it lives, how many
//! connections it may hold, the keys sealing its records, and how long a
//! session lasts. `config` fills these in; `Sessions` consumes them.

use std::fmt;
use std::time::Duration;

use url::Url;

use super::sealer::SealingKeys;
use avemint_base::reload::SecretFile;
use avemint_base::secret::Secret;

/// Default `AVEMINT_MAX_SESSIONS_PER_USER`.
pub(crate) const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 50;

/// The session store: location, pool size, and the at-rest keys.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `AVEMINT_DATABASE_URL`.
    pub database_url: DatabaseUrl,
    /// Pooled database connections per process (`AVEMINT_DATABASE_MAX_CONNECTIONS`).
    pub max_connections: u32,
    /// `AVEMINT_SESSION_KEYS`: the first seals, all open.
    pub keys: SealingKeys,
    /// `AVEMINT_SESSION_KEYS_FILE`: where they were read from (re-read when it changes and on SIGHUP).
    pub keys_file: Option<SecretFile>,
}

/// Session lifetimes.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however active.
    pub lifetime: Duration,
    /// `AVEMINT_MAX_SESSIONS_PER_USER`: a sign-in that would give a user more
    /// sessions than this ends the least recently used ones; 0 means no cap.
    pub max_sessions_per_user: u32,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(7 * 24 * 3600),
            lifetime: Duration::from_secs(30 * 24 * 3600),
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        }
    }
}

/// The session store's location.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (`sqlite://path` or `sqlite:path`); `sqlite::memory:` for a throw-away store.
    Sqlite(String),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`), shared by many instances.
    Postgres(Secret<String>),
}

/// Why a database URL was refused (never echoes the URL: it may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("is not a valid PostgreSQL URL")]
    InvalidPostgres,
    #[error("must start with `sqlite:` (e.g. `sqlite://avemint.db`) or `postgres://`")]
    Scheme,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(u) => write!(f, "Sqlite({u:?})"),
            // A PostgreSQL URL may carry a password.
            Self::Postgres(_) => f.write_str("Postgres([redacted])"),
        }
    }
}

impl Default for DatabaseUrl {
    /// `sqlite://avemint.db`, the default of `AVEMINT_DATABASE_URL`.
    fn default() -> Self {
        Self::Sqlite("sqlite://avemint.db".into())
    }
}

impl DatabaseUrl {
    /// The store kind and where it is, without credentials: an SQLite URL as given (a path), a PostgreSQL URL as
    /// `postgres://host:port/database` (no user, password or parameters).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(u) => u.clone(),
            Self::Postgres(u) => match Url::parse(u.expose()) {
                Ok(url) => format!(
                    "postgres://{}:{}{}",
                    url.host_str().unwrap_or("localhost"),
                    url.port().unwrap_or(5432),
                    url.path()
                ),
                Err(_) => "postgres://[unparsable]".into(),
            },
        }
    }

    /// Parses a database URL.
    pub fn parse(raw: &str) -> Result<Self, DatabaseUrlError> {
        let raw = raw.trim();
        if raw.starts_with("sqlite:") {
            Ok(Self::Sqlite(raw.to_owned()))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Url::parse(raw).map_err(|_| DatabaseUrlError::InvalidPostgres)?;
            Ok(Self::Postgres(Secret::new(raw.to_owned())))
        } else {
            Err(DatabaseUrlError::Scheme)
        }
    }
}
