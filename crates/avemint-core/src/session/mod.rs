//! Sessions: who is signed in, with Ave's tokens sealed at rest.
//!
//! `Sessions` is the one door to the store: it seals `SessionData` before a
//! backend sees it, opens it on the way back, and applies the idle timeout and
//! absolute lifetime, and keeps a short-lived in-process cache. Backends
//! (`sqlite`, `postgres`) store bytes only; `renew` refreshes Ave's tokens.
//! `settings` (and `renew::RenewalSettings`) are what the store and renewal are
//! configured with; `sealer::SealingKeys` are the at-rest keys.
//!
//! What decides expiry is authenticated: `created_at` is part of the sealed
//! record's associated data and `last_seen_at` carries an HMAC, so a row whose
//! timestamps were edited in the database is refused (and deleted). The sealed
//! record and the MAC name the key they were made with (`sealer::KeyId`): a
//! row that fails under a key this instance holds is tampered with and
//! deleted; a row made with a key it does not hold (another instance already
//! knows a newer key, mid-rotation) is refused with `StoreError::KeyNotHeld`
//! (a 503 for that request, one `warn` per key id) and kept. Rows
//! written before this (sealed with the row key alone, no `seen_mac`) are
//! still accepted, provided neither timestamp lies in the future; their next
//! token renewal re-seals them with `created_at` bound in, and their next
//! activity gives them a `seen_mac`.
//!
//! Each row is indexed by an HMAC of the user's `sub` (`OwnerHash`), which caps
//! the sessions per user (`AVEMINT_MAX_SESSIONS_PER_USER`) without the `sub`
//! ever being stored in clear, and by an HMAC of its `sid` (`HandleHash`), so
//! an operator can end a session by the `sid` of its app JWTs. Listing and
//! ending sessions (users' own, and the admin API's) is `manage`.

pub(crate) mod backoff;
pub(crate) mod id;
pub(crate) mod manage;
pub mod postgres;
pub(crate) mod record;
pub(crate) mod renew;
pub(crate) mod sealer;
pub mod settings;
pub(crate) mod sql;
pub mod sqlite;
pub(crate) mod store;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use avemint_base::clock::{Clock, UnixTime};
pub use avemint_base::reload::{LiveSecret, Reload, SecretFile};
pub use avemint_base::secret::{Secret, SecretKind};
pub use id::{SessionHandle, SessionId, SessionRowHash};
pub use manage::SessionSummary;
pub use renew::RenewalSettings;
pub use renew::{RenewError, Renewer};
use sealer::{KeyId, MacCheck};
pub use sealer::{Purpose, Sealer, SealingKeys, SessionCrypto};
pub use settings::{DatabaseUrl, SessionSettings, StoreSettings};
pub use store::{
    CountCutoffs, HandleHash, OwnerHash, SessionCounts, SessionStore, StoreError, StoredSession, SweepCutoffs,
};

/// Idle-time bookkeeping is written at most this often per session, so the
/// hot path is not a write per request.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Pooled database connections when `AVEMINT_DATABASE_MAX_CONNECTIONS` is not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Most `sid` → row mappings introspection remembers (the session cache itself is bounded in bytes).
const CACHE_CAPACITY: u64 = 100_000;
/// Most bytes of decrypted sessions the session cache holds at once, as [`SessionData::heap_bytes`] estimates
/// them (a few KiB each). Entries live only `AVEMINT_SESSION_CACHE_TTL_MS`, so how many are alive follows the
/// request rate over distinct sessions: without a bound in bytes, 10,000 requests a second over many sessions
/// kept about 26 MiB of them (issue 25: 100,000 sessions within 64 MiB). Over the bound, the least recently used
/// go first.
const CACHE_BYTES: u64 = 8 << 20;
/// How long introspection remembers which row a `sid` names (the mapping
/// never changes; this only bounds memory together with `CACHE_CAPACITY`).
const SID_ROW_TTL: Duration = Duration::from_secs(600);
/// A stored timestamp later than now by more than this (clock skew between
/// instances) cannot be genuine.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The associated data of a sealed session: the row key and `created_at`.
fn record_aad(key: &SessionRowHash, created_at: UnixTime) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + 12 + 8);
    aad.extend_from_slice(key.as_bytes());
    aad.extend_from_slice(b"|created_at|");
    aad.extend_from_slice(&created_at.as_secs().to_be_bytes());
    aad
}

/// What `seen_mac` authenticates: the row key, `created_at` and `last_seen_at`.
fn seen_message(key: &SessionRowHash, created_at: UnixTime, last_seen_at: UnixTime) -> Vec<u8> {
    let mut msg = Vec::with_capacity(32 + 16);
    msg.extend_from_slice(key.as_bytes());
    msg.extend_from_slice(&created_at.as_secs().to_be_bytes());
    msg.extend_from_slice(&last_seen_at.as_secs().to_be_bytes());
    msg
}

/// Ave's tokens for one session. Only ever serialized to be sealed.
#[derive(Serialize, Deserialize)]
pub struct AveTokens {
    pub access_token: Secret<String>,
    #[serde(default)]
    pub access_token_jwt: Option<Secret<String>>,
    pub id_token: Secret<String>,
    #[serde(default)]
    pub refresh_token: Option<Secret<String>>,
    pub access_expires_at: UnixTime,
}

/// Everything avemint keeps about a signed-in user; sealed as one blob.
#[derive(Serialize, Deserialize)]
pub struct SessionData {
    pub sid: SessionHandle,
    pub sub: String,
    pub scope: String,
    pub tokens: AveTokens,
    /// Claims of the newest validated id_token.
    pub id_token_claims: Map<String, Value>,
    /// Ave's `user` object from sign-in (not re-sent on refresh).
    #[serde(default)]
    pub user: Option<Map<String, Value>>,
    /// Where the session was signed in, as a session list shows it (see `traffic::device`); `None` for sessions
    /// signed in before this was recorded.
    #[serde(default, skip_serializing_if = "SignedInFrom::is_empty")]
    pub signed_in_from: SignedInFrom,
}

impl SessionData {
    /// About how many bytes this session holds on the heap (its strings, tokens and claims, with a per-entry
    /// allowance for the maps): what the session cache weighs it at.
    pub(crate) fn heap_bytes(&self) -> usize {
        let secret = |s: &Secret<String>| s.expose().len();
        let tokens = &self.tokens;
        let strings = self.sid.as_str().len()
            + self.sub.len()
            + self.scope.len()
            + secret(&tokens.access_token)
            + tokens.access_token_jwt.as_ref().map_or(0, secret)
            + secret(&tokens.id_token)
            + tokens.refresh_token.as_ref().map_or(0, secret)
            + self.signed_in_from.device.as_ref().map_or(0, String::len)
            + self.signed_in_from.network.as_ref().map_or(0, String::len);
        std::mem::size_of::<Session>()
            + strings
            + map_bytes(&self.id_token_claims)
            + self.user.as_ref().map_or(0, map_bytes)
    }

    /// The same session with Ave's tokens and the id_token claims replaced (after a refresh, or without its spent
    /// refresh token). Who it is (`sid`, `sub`, `scope`), Ave's `user` from sign-in (not re-sent on refresh) and
    /// where it was signed in stay: the one way a stored session's data is rebuilt.
    pub(crate) fn with_tokens(&self, tokens: AveTokens, id_token_claims: Map<String, Value>) -> SessionData {
        SessionData {
            sid: self.sid.clone(),
            sub: self.sub.clone(),
            scope: self.scope.clone(),
            tokens,
            id_token_claims,
            user: self.user.clone(),
            signed_in_from: self.signed_in_from.clone(),
        }
    }
}

/// About how many heap bytes a JSON object holds: what the session and bearer caches weigh claims at (see
/// [`SessionData::heap_bytes`]).
pub(crate) fn map_bytes(map: &Map<String, Value>) -> usize {
    /// A map or array slot, and what a `Value` takes in it.
    const ENTRY: usize = 64;
    fn value_bytes(value: &Value) -> usize {
        match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(|v| ENTRY + value_bytes(v)).sum(),
            Value::Object(map) => map_bytes(map),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
    }
    map.iter().map(|(k, v)| ENTRY + k.len() + value_bytes(v)).sum()
}

/// Coarse labels of where a session was signed in, kept only inside the sealed record: a device label from the
/// `User-Agent` ("Firefox on Linux", never the header) and the client's network (IPv4 /24 or IPv6 /48, never the
/// address).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl SignedInFrom {
    fn is_empty(&self) -> bool {
        self.device.is_none() && self.network.is_none()
    }
}

/// A session read back from the store.
pub struct Session {
    pub key: SessionRowHash,
    pub version: i64,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    /// Set while (or if) a refresh token was sent to Ave with no outcome stored yet.
    pub refresh_started_at: Option<UnixTime>,
    /// When that refresh is certainly over at Ave (`StoredSession::refresh_deadline`).
    pub refresh_deadline: Option<UnixTime>,
    pub data: SessionData,
    lifetime: Duration,
    idle_timeout: Duration,
}

impl Session {
    /// When the session ends if nothing else happens.
    pub fn expires_at(&self) -> UnixTime {
        (self.created_at + self.lifetime).min(self.last_seen_at + self.idle_timeout)
    }

    /// How long from `now` until `expires_at` (zero once it has passed).
    pub fn expires_in(&self, now: UnixTime) -> Duration {
        self.expires_at().saturating_duration_since(now)
    }

    /// True when the session is past its idle timeout or absolute lifetime.
    pub(crate) fn is_expired(&self, now: UnixTime) -> bool {
        self.expires_at() <= now
    }

    /// True when Ave's access token expires within `skew` of `now`.
    pub(crate) fn needs_refresh(&self, now: UnixTime, skew: Duration) -> bool {
        self.data.tokens.access_expires_at - skew <= now
    }

    /// True while Ave's access token is still valid.
    pub(crate) fn access_valid(&self, now: UnixTime) -> bool {
        self.data.tokens.access_expires_at > now
    }
}

/// Why a load through the cache found nothing (never cached, so a missing
/// row is looked up again next time).
#[derive(Debug, thiserror::Error)]
enum LoadMiss {
    #[error("no such session")]
    Absent,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Key ids this instance has warned it lacks are remembered up to this many (a row's key id is whatever is
/// stored, so this bounds memory; past it, each new id is logged at `debug`).
const UNKNOWN_KEYS_WARNED: usize = 64;
/// How long after its last write a row made with a session key this instance lacks is taken for a rotation in
/// progress (503, the other instances are ahead) rather than a dropped key (the session is over here). Rolling a
/// new key out to every instance must take less than this (docs/configuration.md, Rotating secrets).
pub(crate) const KEY_ROTATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why a stored row was refused.
enum Refused {
    /// Sealed or MAC'd with a session key this instance does not hold: the key id (`None` for a MAC from before
    /// key ids that no configured key verifies).
    UnknownKey(Option<KeyId>),
    /// Its data or timestamps are not what avemint wrote.
    Tampered(&'static str),
}

/// The session service.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// The sealer and MACs derived from the session keys (reloaded from their file, if they come from one).
    crypto: Arc<LiveSecret<SessionCrypto>>,
    settings: SessionSettings,
    /// Decrypted sessions, served for at most the cache TTL (bounded
    /// staleness: another instance's logout is seen within that time).
    cache: Option<Cache<SessionRowHash, Arc<Session>>>,
    /// Which row a `sid` names (`None`: no live session has it), for
    /// introspection (see `is_live`). The mapping never changes, so it is not
    /// what bounds staleness: the session cache is.
    sid_rows: Cache<String, Option<SessionRowHash>>,
    /// Decides expiry, activity and renewal timing.
    clock: Clock,
    /// The key ids this instance already warned it lacks (each is logged once at `warn`).
    unknown_keys: Mutex<HashSet<Option<KeyId>>>,
}

impl Sessions {
    /// Opens the configured backend. A zero `cache_ttl` disables the cache.
    pub async fn open(
        url: &DatabaseUrl,
        keys: &SealingKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        Self::open_with_pool(url, keys, settings, cache_ttl, DEFAULT_MAX_CONNECTIONS, clock).await
    }

    /// Like `open`, with at most `max_connections` pooled database connections
    /// (`AVEMINT_DATABASE_MAX_CONNECTIONS`; an in-memory SQLite database always uses one).
    pub async fn open_with_pool(
        url: &DatabaseUrl,
        keys: &SealingKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
        max_connections: u32,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let store: Arc<dyn SessionStore> = match url {
            DatabaseUrl::Sqlite(u) => Arc::new(sqlite::SqliteStore::connect_with_pool(u, max_connections).await?),
            DatabaseUrl::Postgres(u) => {
                Arc::new(postgres::PostgresStore::connect_with_pool(u.expose(), max_connections).await?)
            }
        };
        Ok(Self::with_store(store, keys, settings, cache_ttl, clock))
    }

    /// Wraps an already opened backend. A zero `cache_ttl` disables the cache.
    pub(crate) fn with_store(
        store: Arc<dyn SessionStore>,
        keys: &SealingKeys,
        settings: SessionSettings,
        cache_ttl: Duration,
        clock: Clock,
    ) -> Self {
        let cache = (!cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(cache_ttl)
                .weigher(|_, session: &Arc<Session>| u32::try_from(session.data.heap_bytes()).unwrap_or(u32::MAX))
                .max_capacity(CACHE_BYTES)
                // What was just read is what is asked for again (within the same request and the next ones), so
                // every new session is admitted and the least recently used goes: no frequency-based refusal.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build()
        });
        let sid_rows = Cache::builder()
            .time_to_live(SID_ROW_TTL)
            .max_capacity(CACHE_CAPACITY)
            .build();
        Self {
            store,
            crypto: Arc::new(LiveSecret::fixed(SecretKind::SessionKeys, SessionCrypto::new(keys))),
            sid_rows,
            settings,
            cache,
            clock,
            unknown_keys: Mutex::new(HashSet::new()),
        }
    }

    /// Reads the session keys from `file` from now on (re-read when it changes and on SIGHUP); `keys` were read
    /// from it at start-up.
    pub fn with_keys_file(mut self, keys: &SealingKeys, file: Option<&SecretFile>) -> Self {
        self.crypto = Arc::new(LiveSecret::new(
            SecretKind::SessionKeys,
            "AVEMINT_SESSION_KEYS_FILE",
            SessionCrypto::new(keys),
            file,
            Box::new(SessionCrypto::parse),
        ));
        self
    }

    /// The session keys' reloader, when they are read from a file.
    pub fn keys_reloader(&self) -> Option<Arc<dyn Reload>> {
        self.crypto.is_watched().then(|| self.crypto.clone() as Arc<dyn Reload>)
    }

    /// The keys in use: the login cookie's sealer is `.login`.
    pub fn crypto(&self) -> Arc<SessionCrypto> {
        self.crypto.current()
    }

    /// The time now, by the clock these sessions run on (renewal reads it too).
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The backend (renewal takes its locks and markers there).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// A live session, from the in-process cache when fresh enough.
    #[tracing::instrument(name = "session.lookup", skip_all, fields(cache = tracing::field::Empty))]
    pub async fn get(&self, key: &SessionRowHash) -> Result<Option<Arc<Session>>, StoreError> {
        let now = self.now();
        let Some(cache) = &self.cache else {
            tracing::Span::current().record("cache", "off");
            avemint_base::metrics::cache_miss();
            return Ok(self.load_at(key, now).await?.map(Arc::new));
        };
        // A hit is answered from the cache alone. A miss loads through `try_get_with`, which coalesces concurrent
        // loads of one key; its future is kilobytes, so it is boxed to keep it out of every request's future.
        let loaded = match cache.get(key).await {
            Some(s) => {
                tracing::Span::current().record("cache", "hit");
                avemint_base::metrics::cache_hit();
                Ok(s)
            }
            None => Box::pin(self.load_into_cache(cache, key, now)).await,
        };
        match loaded {
            Ok(s) if s.is_expired(now) => {
                cache.invalidate(key).await;
                Ok(None)
            }
            Ok(s) => Ok(Some(s)),
            Err(e) => match e.as_ref() {
                LoadMiss::Absent => Ok(None),
                LoadMiss::Store(StoreError::KeyNotHeld(id)) => Err(StoreError::KeyNotHeld(id.clone())),
                LoadMiss::Store(e) => Err(StoreError::Unavailable(e.to_string())),
            },
        }
    }

    /// The cache-missing half of `get`: loads the session from the store (once for all concurrent callers).
    async fn load_into_cache(
        &self,
        cache: &Cache<SessionRowHash, Arc<Session>>,
        key: &SessionRowHash,
        now: UnixTime,
    ) -> Result<Arc<Session>, Arc<LoadMiss>> {
        let missed = std::sync::atomic::AtomicBool::new(false);
        let loaded = cache
            .try_get_with(*key, async {
                missed.store(true, std::sync::atomic::Ordering::Relaxed);
                match self.load_at(key, now).await {
                    Ok(Some(s)) => Ok(Arc::new(s)),
                    Ok(None) => Err(LoadMiss::Absent),
                    Err(e) => Err(LoadMiss::Store(e)),
                }
            })
            .await;
        // Another caller's load that this one joined is a hit.
        if missed.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::Span::current().record("cache", "miss");
            avemint_base::metrics::cache_miss();
        } else {
            tracing::Span::current().record("cache", "hit");
            avemint_base::metrics::cache_hit();
        }
        loaded
    }

    /// Puts a session this process just wrote into the cache.
    pub(crate) async fn remember(&self, session: Arc<Session>) {
        if let Some(cache) = &self.cache {
            cache.insert(session.key, session).await;
        }
    }

    /// Drops a session from the cache.
    pub(crate) async fn forget(&self, key: &SessionRowHash) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key).await;
        }
    }

    fn seal(&self, key: &SessionRowHash, created_at: UnixTime, data: &SessionData) -> Result<Vec<u8>, StoreError> {
        let plain = record::encode(data).map_err(|_| StoreError::Encoding)?;
        Ok(self.crypto().store.seal(&record_aad(key, created_at), &plain))
    }

    /// Whether the session whose app JWTs carry `sid` (and `sub`) is still
    /// live: not logged out, deleted (per-user cap, tampering) or expired.
    /// Read-only: asking does not count as the user's activity (idle timeout).
    ///
    /// The `sid` → row mapping never changes, so it is cached (`SID_ROW_TTL`),
    /// ended sessions included (a `sid` is random and never comes back, and
    /// its token exists only once its session is stored); whether that row is
    /// still live comes from the session cache, which this instance's own
    /// logouts invalidate at once and which sees another instance's within its
    /// TTL. Without a cached mapping, the user's sessions are found through
    /// the per-user index (`owner_hashes`) and opened to compare their `sid`.
    pub async fn is_live(&self, sub: &str, sid: &str) -> Result<bool, StoreError> {
        Ok(self.live_by_sid(sub, sid).await?.is_some())
    }

    /// The live session whose app JWTs carry `sid` (and `sub`), found as `is_live` finds it (read-only: not the
    /// user's activity); `None` once it ended. The token service's delegation renders claims from it.
    pub async fn live_by_sid(&self, sub: &str, sid: &str) -> Result<Option<Arc<Session>>, StoreError> {
        let now = self.now();
        let row = match self.sid_rows.get(sid).await {
            Some(row) => row,
            None => {
                let row = self.find_by_sid(sub, sid, now).await?;
                self.sid_rows.insert(sid.to_owned(), row).await;
                row
            }
        };
        let Some(key) = row else { return Ok(None) };
        let cached = match &self.cache {
            Some(cache) => cache.get(&key).await,
            None => None,
        };
        let session = match cached {
            Some(s) => Some(s),
            None => match self.read_at(&key, now).await? {
                Some(s) => {
                    let s = Arc::new(s);
                    self.remember(s.clone()).await;
                    Some(s)
                }
                None => None,
            },
        };
        Ok(session.filter(|s| !s.is_expired(now) && s.data.sid.as_str() == sid && s.data.sub == sub))
    }

    /// The row key of `sub`'s live session whose `sid` is `sid`, through the per-user index. A row this instance
    /// cannot open for want of a key is skipped; if no other row is the one, that is the answer (`KeyNotHeld`),
    /// not "no such session".
    async fn find_by_sid(&self, sub: &str, sid: &str, now: UnixTime) -> Result<Option<SessionRowHash>, StoreError> {
        let mut not_held = None;
        for row in self.store.sessions_of(&self.owner_hashes(sub)).await? {
            match self.read_at(&row.key, now).await {
                Ok(Some(s)) if s.data.sid.as_str() == sid && s.data.sub == sub => return Ok(Some(row.key)),
                Ok(_) => {}
                Err(e @ StoreError::KeyNotHeld(_)) => not_held = Some(e),
                Err(e) => return Err(e),
            }
        }
        not_held.map_or(Ok(None), Err)
    }

    /// The per-user index values of a user: one per configured session key, the current one first.
    pub(crate) fn owner_hashes(&self, sub: &str) -> Vec<OwnerHash> {
        self.crypto()
            .owner
            .tags(sub.as_bytes())
            .into_iter()
            .map(OwnerHash::from_bytes)
            .collect()
    }

    /// The sid index values of a session handle: one per configured session key, the current one first.
    pub(crate) fn handle_hashes(&self, sid: &str) -> Vec<HandleHash> {
        self.crypto()
            .handle
            .tags(sid.as_bytes())
            .into_iter()
            .map(HandleHash::from_bytes)
            .collect()
    }

    /// Stores a new session and returns the id for the cookie. When the user
    /// then has more than `max_sessions_per_user` sessions, the least recently
    /// used ones (then the oldest) are ended.
    pub async fn create(&self, data: &SessionData) -> Result<SessionId, StoreError> {
        self.create_at(data, self.now()).await
    }

    async fn create_at(&self, data: &SessionData, now: UnixTime) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let key = id.key();
        let owners = self.owner_hashes(&data.sub);
        let row = StoredSession {
            key,
            version: 0,
            sealed: self.seal(&key, now, data)?,
            created_at: now,
            last_seen_at: now,
            access_expires_at: data.tokens.access_expires_at,
            refresh_started_at: None,
            refresh_deadline: None,
            owner: owners.first().copied(),
            seen_mac: Some(self.crypto().seen.stamp(&seen_message(&key, now, now))),
            handle: self.handle_hashes(data.sid.as_str()).first().copied(),
        };
        self.store.insert(&row).await?;
        let cap = self.settings.max_sessions_per_user;
        if cap > 0 {
            let ended = self.store.trim_sessions_of(&owners, cap, &key).await?;
            if !ended.is_empty() {
                for k in &ended {
                    self.forget(k).await;
                }
                tracing::info!(
                    ended = ended.len(),
                    max_sessions_per_user = cap,
                    "a new sign-in passed the sessions-per-user cap; ended the least recently used"
                );
            }
        }
        Ok(id)
    }

    /// Loads a live session from the store, bypassing the cache. Expired
    /// sessions are deleted and reported as absent; rows made with a key this
    /// instance does not hold are refused with `StoreError::KeyNotHeld` and left
    /// alone; rows that were tampered with (timestamps edited, data forged, under
    /// a key this instance holds) or cannot be read are reported as absent with
    /// an error logged, and tampered ones deleted.
    pub async fn load(&self, key: &SessionRowHash) -> Result<Option<Session>, StoreError> {
        self.load_at(key, self.now()).await
    }

    async fn load_at(&self, key: &SessionRowHash, now: UnixTime) -> Result<Option<Session>, StoreError> {
        let Some(mut session) = self.read_at(key, now).await? else {
            return Ok(None);
        };
        if now.saturating_duration_since(session.last_seen_at) >= TOUCH_INTERVAL {
            let mac = self.crypto().seen.stamp(&seen_message(key, session.created_at, now));
            self.store.touch(key, now, &mac).await?;
            session.last_seen_at = now;
        }
        Ok(Some(session))
    }

    /// `load_at` without recording activity.
    async fn read_at(&self, key: &SessionRowHash, now: UnixTime) -> Result<Option<Session>, StoreError> {
        let row = match self.store.get(key).await {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(StoreError::CorruptRow(why)) => {
                tracing::error!(session = ?key, error = %why, "stored session row cannot be read; refusing that session");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let lifetime = self.settings.lifetime;
        let idle = self.settings.idle_timeout;
        if row.created_at + lifetime <= now || row.last_seen_at + idle <= now {
            self.store.delete(key).await?;
            return Ok(None);
        }
        let plain = match self.open_row(&row, now) {
            Ok(p) => p,
            // Written within the rotation window under a key this instance lacks: another instance is ahead
            // in a rotation, so refuse for now (503) and keep it. Older: the key was dropped, so the session is
            // over for this browser (401, sign in again); the row is still kept (a forged key id must not make
            // an instance delete rows) and swept when it expires.
            Err(Refused::UnknownKey(id)) if now.saturating_duration_since(row.last_seen_at) < KEY_ROTATION_WINDOW => {
                return Err(self.key_not_held(id));
            }
            Err(Refused::UnknownKey(id)) => {
                let _ = self.key_not_held(id);
                return Ok(None);
            }
            Err(Refused::Tampered(why)) => {
                tracing::error!(session = ?key, reason = why, "stored session was tampered with; refusing and deleting it");
                self.delete(key).await?;
                return Ok(None);
            }
        };
        let Ok(data) = record::decode(&plain) else {
            tracing::warn!(session = ?key, "stored session could not be decoded");
            return Ok(None);
        };
        Ok(Some(self.session_of_row(&row, data)))
    }

    /// The session a stored row holds, once its sealed record is opened into `data`, with the lifetime and idle
    /// timeout in force. The one way a `Session` is built from the store.
    fn session_of_row(&self, row: &StoredSession, data: SessionData) -> Session {
        Session {
            key: row.key,
            version: row.version,
            created_at: row.created_at,
            last_seen_at: row.last_seen_at,
            refresh_started_at: row.refresh_started_at,
            refresh_deadline: row.refresh_deadline,
            data,
            lifetime: self.settings.lifetime,
            idle_timeout: self.settings.idle_timeout,
        }
    }

    /// The error for a row made with a key this instance lacks, warning once per key id.
    fn key_not_held(&self, id: Option<KeyId>) -> StoreError {
        let label = id.map_or_else(
            || "unrecorded (a MAC from before key ids)".to_owned(),
            |id| id.to_string(),
        );
        let first = {
            let mut warned = self.unknown_keys.lock().unwrap_or_else(PoisonError::into_inner);
            warned.len() < UNKNOWN_KEYS_WARNED && warned.insert(id)
        };
        if first {
            tracing::warn!(
                key_id = %label,
                "a stored session was written under a session key this instance does not hold; refusing it for now \
                 and keeping it (add that key to AVEMINT_SESSION_KEYS; see docs/configuration.md, Rotating secrets)"
            );
        } else {
            tracing::debug!(key_id = %label, "a stored session was written under a session key this instance does not hold");
        }
        StoreError::KeyNotHeld(label)
    }

    /// Opens a row's sealed record, checking that its timestamps are the ones it was written with.
    fn open_row(&self, row: &StoredSession, now: UnixTime) -> Result<zeroize::Zeroizing<Vec<u8>>, Refused> {
        let key = &row.key;
        let crypto = self.crypto();
        let seen = |mac: &[u8]| -> Result<(), Refused> {
            match crypto
                .seen
                .check(&seen_message(key, row.created_at, row.last_seen_at), mac)
            {
                MacCheck::Valid => Ok(()),
                MacCheck::Invalid => Err(Refused::Tampered("last_seen_at does not match its MAC")),
                MacCheck::UnknownKey(id) => Err(Refused::UnknownKey(id)),
            }
        };
        match crypto.store.open(&record_aad(key, row.created_at), &row.sealed) {
            Ok(plain) => match row.seen_mac.as_deref() {
                Some(mac) => seen(mac).map(|()| plain),
                None => Err(Refused::Tampered("last_seen_at has no MAC")),
            },
            Err(sealer::OpenError::UnknownKey(id)) => Err(Refused::UnknownKey(Some(id))),
            Err(_) => {
                // Written before timestamps were authenticated: sealed with the row key alone.
                let Ok(plain) = crypto.store.open(key.as_bytes(), &row.sealed) else {
                    return Err(Refused::Tampered("sealed data or created_at failed authentication"));
                };
                if row.created_at > now + MAX_CLOCK_SKEW || row.last_seen_at > now + MAX_CLOCK_SKEW {
                    return Err(Refused::Tampered("a timestamp of an older row lies in the future"));
                }
                match row.seen_mac.as_deref() {
                    Some(mac) => seen(mac).map(|()| plain),
                    None => Ok(plain),
                }
            }
        }
    }

    /// Swaps a session's data (clearing any refresh marker) if nobody else did
    /// since `session` was read. Returns the stored result, or `None` if the
    /// row's version moved on (or the row is gone).
    pub(crate) async fn replace(
        &self,
        session: &Session,
        data: SessionData,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        self.replace_keeping(session, data).await.map_err(|(e, _)| e)
    }

    /// `replace` that hands `data` back with the error, so a caller can retry.
    pub(crate) async fn replace_keeping(
        &self,
        session: &Session,
        data: SessionData,
    ) -> Result<Option<Arc<Session>>, (StoreError, SessionData)> {
        let sealed = match self.seal(&session.key, session.created_at, &data) {
            Ok(sealed) => sealed,
            Err(e) => return Err((e, data)),
        };
        let swapped = match self
            .store
            .replace(&session.key, session.version, &sealed, data.tokens.access_expires_at)
            .await
        {
            Ok(swapped) => swapped,
            Err(e) => return Err((e, data)),
        };
        if !swapped {
            self.forget(&session.key).await;
            return Ok(None);
        }
        let updated = Arc::new(Session {
            key: session.key,
            version: session.version + 1,
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            refresh_started_at: None,
            refresh_deadline: None,
            data,
            lifetime: session.lifetime,
            idle_timeout: session.idle_timeout,
        });
        self.remember(updated.clone()).await;
        Ok(Some(updated))
    }

    /// Deletes a session (logout, or a session Ave ended).
    pub async fn delete(&self, key: &SessionRowHash) -> Result<bool, StoreError> {
        self.forget(key).await;
        self.store.delete(key).await
    }

    /// Marks a login `state` as used; false on a replay.
    pub(crate) async fn consume_login_state(&self, state: &str, expires_at: UnixTime) -> Result<bool, StoreError> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, state.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.store.consume_login_state(&hash, expires_at).await
    }

    /// Deletes expired sessions and used login states.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let now = self.now();
        self.store
            .sweep(SweepCutoffs {
                now,
                created_before: now - self.settings.lifetime,
                seen_before: now - self.settings.idle_timeout,
            })
            .await
    }

    /// Checks the backend answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn data(sub: &str) -> SessionData {
        SessionData {
            sid: SessionHandle::generate(),
            sub: sub.into(),
            scope: "openid".into(),
            tokens: AveTokens {
                access_token: Secret::new("a".into()),
                access_token_jwt: None,
                id_token: Secret::new("i".into()),
                refresh_token: None,
                access_expires_at: t(10_000),
            },
            id_token_claims: Map::new(),
            user: None,
            signed_in_from: SignedInFrom::default(),
        }
    }

    async fn sessions(dir: &tempfile::TempDir, max_per_user: u32) -> Sessions {
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Arc::new(sqlite::SqliteStore::connect(&url).await.expect("connect"));
        let settings = SessionSettings {
            idle_timeout: Duration::from_secs(1000),
            lifetime: Duration::from_secs(10_000),
            max_sessions_per_user: max_per_user,
        };
        Sessions::with_store(
            store,
            &SealingKeys::from_keys(vec![[5; 32]]),
            settings,
            Duration::ZERO,
            Clock::System,
        )
    }

    #[test]
    fn a_sessions_weight_counts_its_tokens_and_claims() {
        let small = data("u").heap_bytes();
        let mut big = data("u");
        big.tokens.id_token = Secret::new("i".repeat(1000));
        big.id_token_claims
            .insert("name".into(), Value::String("n".repeat(500)));
        big.user = Some(Map::from_iter([(
            "tags".into(),
            serde_json::json!(["a".repeat(300), "b"]),
        )]));
        assert!(
            big.heap_bytes() >= small + 1000 + 500 + 300,
            "{} vs {small}",
            big.heap_bytes()
        );
    }

    #[tokio::test]
    async fn the_session_cache_stays_within_its_bytes_and_keeps_what_was_just_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Arc::new(sqlite::SqliteStore::connect(&url).await.expect("connect"));
        let settings = SessionSettings {
            idle_timeout: Duration::from_secs(100_000),
            lifetime: Duration::from_secs(100_000),
            max_sessions_per_user: 0,
        };
        let keys = SealingKeys::from_keys(vec![[5; 32]]);
        let s = Sessions::with_store(store, &keys, settings, Duration::from_secs(60), Clock::System);
        // 64 KiB each: 300 of them are more than twice the cache's bytes.
        let heavy = || {
            let mut d = data("u");
            d.tokens.id_token = Secret::new("i".repeat(64 << 10));
            d
        };
        let weight = heavy().heap_bytes() as u64;
        let mut last = None;
        for _ in 0..300 {
            let id = s.create(&heavy()).await.expect("create");
            assert!(s.get(&id.key()).await.expect("get").is_some());
            last = Some(id.key());
        }
        let cache = s.cache.as_ref().expect("cache");
        cache.run_pending_tasks().await;
        assert!(
            cache.entry_count() * weight <= CACHE_BYTES,
            "{} sessions of {weight} bytes cached",
            cache.entry_count()
        );
        assert!(
            cache.entry_count() >= CACHE_BYTES / weight / 2,
            "{} sessions cached",
            cache.entry_count()
        );
        assert!(
            cache.contains_key(&last.expect("one")),
            "the session read last is cached"
        );
    }

    /// Rewrites a stored row through `edit` (what someone with write access to the database can do).
    async fn tamper(s: &Sessions, key: &SessionRowHash, edit: impl FnOnce(&mut StoredSession)) {
        let mut row = s.store.get(key).await.expect("get").expect("row");
        edit(&mut row);
        s.store.delete(key).await.expect("delete");
        s.store.insert(&row).await.expect("insert");
    }

    #[tokio::test]
    async fn edited_timestamps_are_refused_and_the_row_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sessions(&dir, 0).await;
        let edits: [fn(&mut StoredSession); 5] = [
            |r| r.created_at += Duration::from_secs(5000),
            |r| r.created_at -= Duration::from_secs(1),
            |r| r.last_seen_at += Duration::from_secs(500),
            |r| r.seen_mac = None,
            |r| r.sealed[30] ^= 1,
        ];
        for (i, edit) in edits.into_iter().enumerate() {
            let id = s.create_at(&data("u"), t(100)).await.expect("create");
            assert!(s.load_at(&id.key(), t(110)).await.expect("load").is_some());
            tamper(&s, &id.key(), edit).await;
            assert!(
                s.load_at(&id.key(), t(120)).await.expect("load").is_none(),
                "edit #{i} refused"
            );
            assert!(
                s.store.get(&id.key()).await.expect("get").is_none(),
                "edit #{i} deleted"
            );
        }
        // Genuine activity still moves last_seen_at (with a fresh MAC) and the session lives on.
        let id = s.create_at(&data("u"), t(100)).await.expect("create");
        assert!(s.load_at(&id.key(), t(900)).await.expect("load").is_some());
        assert!(
            s.load_at(&id.key(), t(1800)).await.expect("load").is_some(),
            "touched at 900"
        );
        assert_eq!(
            s.store.get(&id.key()).await.expect("get").expect("row").last_seen_at,
            t(1800)
        );
    }

    #[tokio::test]
    async fn rows_written_before_timestamps_were_authenticated_still_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sessions(&dir, 0).await;
        let legacy = |key: SessionRowHash, created_at: UnixTime, last_seen_at: UnixTime| {
            let plain = serde_json::to_vec(&data("old")).expect("json");
            StoredSession {
                key,
                version: 0,
                // The earlier layout: the row key alone as associated data, no MAC, no owner.
                sealed: s.crypto().store.seal(key.as_bytes(), &plain),
                created_at,
                last_seen_at,
                access_expires_at: t(10_000),
                refresh_started_at: None,
                refresh_deadline: None,
                owner: None,
                seen_mac: None,
                handle: None,
            }
        };
        let key = SessionId::generate().key();
        s.store.insert(&legacy(key, t(100), t(100))).await.expect("insert");
        let loaded = s
            .load_at(&key, t(500))
            .await
            .expect("load")
            .expect("an older row loads");
        assert_eq!(loaded.data.sub, "old");
        assert!(
            s.store.get(&key).await.expect("get").expect("row").seen_mac.is_some(),
            "activity gave it a MAC"
        );
        // Re-sealing (a renewal) binds created_at in; editing it afterwards is refused.
        let renewed = s
            .replace(&loaded, data("old"))
            .await
            .expect("replace")
            .expect("swapped");
        assert!(s.load_at(&key, t(510)).await.expect("load").is_some());
        tamper(&s, &key, |r| r.created_at += Duration::from_secs(1000)).await;
        assert!(s.load_at(&key, t(520)).await.expect("load").is_none());
        drop(renewed);
        // An older row whose timestamps lie in the future cannot be genuine.
        let future = SessionId::generate().key();
        s.store
            .insert(&legacy(future, t(100_000), t(100)))
            .await
            .expect("insert");
        assert!(s.load_at(&future, t(500)).await.expect("load").is_none());
        let future_seen = SessionId::generate().key();
        s.store
            .insert(&legacy(future_seen, t(100), t(100_000)))
            .await
            .expect("insert");
        assert!(s.load_at(&future_seen, t(500)).await.expect("load").is_none());
    }

    /// A SQLite store in `dir`, for several `Sessions` over one store (instances with different keys).
    async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn SessionStore> {
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        Arc::new(sqlite::SqliteStore::connect(&url).await.expect("connect"))
    }

    /// An instance over `store` with session `keys` (the first seals), `idle` timeout and ten times that lifetime.
    fn keyed_on(store: &Arc<dyn SessionStore>, idle: Duration, keys: Vec<[u8; 32]>) -> Sessions {
        let settings = SessionSettings {
            idle_timeout: idle,
            lifetime: idle * 10,
            max_sessions_per_user: 0,
        };
        Sessions::with_store(
            store.clone(),
            &SealingKeys::from_keys(keys),
            settings,
            Duration::ZERO,
            Clock::System,
        )
    }

    #[tokio::test]
    async fn a_row_made_with_a_key_not_held_is_refused_and_kept_and_one_failing_a_held_key_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let on = |keys| keyed_on(&store, Duration::from_secs(1000), keys);
        let (old, rotated) = (on(vec![[5; 32]]), on(vec![[6; 32], [5; 32]]));
        let new_id = SealingKeys::from_keys(vec![[6; 32]]).ids()[0].to_string();
        let id = old.create_at(&data("u"), t(100)).await.expect("create");
        let key = id.key();
        // The instance with the new key records activity (a MAC under the new key)…
        assert!(rotated.load_at(&key, t(200)).await.expect("load").is_some());
        // …which the other cannot verify: refused for now, named, kept.
        match old.load_at(&key, t(210)).await {
            Err(StoreError::KeyNotHeld(id)) => assert_eq!(id, new_id),
            other => panic!("expected KeyNotHeld, got {:?}", other.map(|s| s.is_some())),
        }
        assert!(store.get(&key).await.expect("get").is_some(), "kept");
        // A renewal re-seals under the new key: the same.
        let s = rotated.load_at(&key, t(220)).await.expect("load").expect("live");
        rotated.replace(&s, data("u")).await.expect("replace").expect("swapped");
        assert!(matches!(
            old.load_at(&key, t(230)).await,
            Err(StoreError::KeyNotHeld(_))
        ));
        assert!(store.get(&key).await.expect("get").is_some(), "kept");
        // Once it knows the new key, it serves the session.
        let caught_up = on(vec![[6; 32], [5; 32]]);
        assert!(caught_up.load_at(&key, t(240)).await.expect("load").is_some());
        // An edited timestamp fails under a key the instance holds: refused and deleted.
        tamper(&rotated, &key, |r| r.last_seen_at += Duration::from_secs(5)).await;
        assert!(caught_up.load_at(&key, t(250)).await.expect("load").is_none());
        assert!(store.get(&key).await.expect("get").is_none(), "deleted");
    }

    #[tokio::test]
    async fn a_row_made_with_a_key_not_held_is_a_rotation_for_an_hour_then_a_dropped_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite_store(&dir).await;
        let on = |keys| keyed_on(&store, Duration::from_secs(86_400), keys);
        // Written by an instance whose only key is one this instance does not hold (a dropped key, seen from here).
        let (dropped, current) = (on(vec![[7; 32]]), on(vec![[8; 32]]));
        let id = dropped.create_at(&data("u"), t(100)).await.expect("create");
        let key = id.key();
        let within = t(100) + KEY_ROTATION_WINDOW - Duration::from_secs(1);
        assert!(matches!(
            current.load_at(&key, within).await,
            Err(StoreError::KeyNotHeld(_))
        ));
        // Past the window: over for this instance (absent, so 401), still kept.
        let past = t(100) + KEY_ROTATION_WINDOW;
        assert!(current.load_at(&key, past).await.expect("load").is_none());
        assert!(store.get(&key).await.expect("get").is_some(), "kept");
        // The instance that holds the key still serves it.
        assert!(dropped.load_at(&key, past).await.expect("load").is_some());
    }

    #[tokio::test]
    async fn the_sessions_per_user_cap_ends_the_least_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sessions(&dir, 2).await;
        let a = s.create_at(&data("alice"), t(100)).await.expect("create");
        let b = s.create_at(&data("alice"), t(101)).await.expect("create");
        let other = s.create_at(&data("bob"), t(102)).await.expect("create");
        // `a` is used again, so `b` is now the least recently used.
        assert!(s.load_at(&a.key(), t(200)).await.expect("load").is_some());
        let c = s.create_at(&data("alice"), t(201)).await.expect("create");
        assert!(s.load_at(&b.key(), t(202)).await.expect("load").is_none(), "b ended");
        for id in [&a, &c, &other] {
            assert!(s.load_at(&id.key(), t(202)).await.expect("load").is_some());
        }
        let owners = s.owner_hashes("alice");
        assert_eq!(s.store.sessions_of(&owners).await.expect("list").len(), 2);
        assert_ne!(owners[0].as_bytes().as_slice(), b"alice".as_slice());
    }
}
