//! Settings: read once from a TOML file and the environment (the environment
//! wins), validated into typed values, and never read again from anywhere else.
//!
//! Every problem found is reported, one line each, without echoing a secret.
//! Public names (environment variables and file keys) are documented in the
//! README and must stay stable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use url::{Host, Url};

use crate::http::cors::AllowedOrigins;
use crate::http::security::{Docs, SecuritySettings};
use crate::mint::claims::ClaimTemplate;
use crate::mint::hook::{FailurePolicy, HookSpec};
use crate::mint::keys::{Algorithm, KeyPolicy, MAX_TOKEN_TTL, rotation::MIN_ROTATION};
use crate::mint::profiles::{self, ProfileSpec};
use crate::secret::Secret;
use crate::server::{ConnectionTimeouts, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT};
use crate::traffic::client_ip::TrustedProxies;
use crate::traffic::rate_limit::RateLimit;

/// Default Ave issuer (production).
pub const DEFAULT_ISSUER: &str = "https://aveid.net";
/// Default scopes requested from Ave.
pub const DEFAULT_SCOPES: &str = "openid profile email offline_access";

/// The validated configuration of one avemint process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ave: AveSettings,
    pub public_url: PublicUrl,
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub session_keys: SessionKeys,
    pub keys_dir: PathBuf,
    /// Algorithm of new signing keys and automatic rotation.
    pub signing: KeyPolicy,
    pub token: TokenSettings,
    pub session: SessionSettings,
    pub renewal: RenewalSettings,
    pub security: SecuritySettings,
}

/// Silent renewal of Ave's tokens.
#[derive(Debug, Clone)]
pub struct RenewalSettings {
    /// Refresh when Ave's access token expires within this margin.
    pub skew: Duration,
    /// Token-endpoint calls this process may make per minute (Ave allows 180
    /// per client id, shared by every instance).
    pub token_budget_per_minute: u32,
    /// How long a decrypted session may be served from memory; bounds how
    /// late another instance notices a logout.
    pub session_cache_ttl: Duration,
    /// How long a request waits for a slow refresh before it is answered from
    /// the current access token (or with 503); the refresh itself goes on.
    pub wait: Duration,
    /// How long a refresh waits for Ave's answer before its outcome counts as
    /// unknown (`AVEMINT_AVE_REFRESH_TIMEOUT`); `None`: the client's default (60 s).
    pub refresh_timeout: Option<Duration>,
    /// Pooled database connections per process (`AVEMINT_DATABASE_MAX_CONNECTIONS`).
    pub database_max_connections: u32,
    /// How long Ave's discovery document and JWKS are used before a re-fetch;
    /// a failed re-fetch keeps the last good copy (`AVEMINT_AVE_METADATA_TTL`).
    pub ave_metadata_ttl: Duration,
}

impl Default for RenewalSettings {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            token_budget_per_minute: 180,
            session_cache_ttl: Duration::from_millis(500),
            wait: Duration::from_secs(10),
            refresh_timeout: None,
            database_max_connections: crate::session::DEFAULT_MAX_CONNECTIONS,
            ave_metadata_ttl: crate::ave::client::DEFAULT_METADATA_TTL,
        }
    }
}

/// The registered Ave application and how to reach Ave.
#[derive(Debug, Clone)]
pub struct AveSettings {
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub issuer: Issuer,
    pub scopes: String,
}

/// App-JWT minting.
///
/// `ttl`, `audience` and `claims` describe the default profile (with
/// `[[profiles]]` in the file they are copied from the default one); `profiles`
/// is the file's complete list, empty in env-only deployments.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub ttl: Duration,
    pub audience: String,
    pub claims: ClaimTemplate,
    pub profiles: Vec<ProfileSpec>,
    /// Minting fails (500 `server_error`) rather than hand out a longer token.
    pub max_token_bytes: usize,
}

/// Default `max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 4096;

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

/// Default `AVEMINT_MAX_SESSIONS_PER_USER`.
pub const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 50;

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(7 * 24 * 3600),
            lifetime: Duration::from_secs(30 * 24 * 3600),
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        }
    }
}

/// Where browsers reach avemint: an `https` origin (or `http` on loopback), no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Parses an origin such as `https://app.example.com` (a trailing `/` is allowed).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = parse_web_url(raw)?;
        if url.path() != "/" {
            return Err(
                "must be an origin without a path (avemint's cookies use the __Host- prefix, which needs Path=/)"
                    .into(),
            );
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The origin without a trailing slash, e.g. `https://app.example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{public_url}/auth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.0)
    }

    /// True when the public URL is https (browsers then require it for everything).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ave's issuer identifier, compared exactly with discovery and id_tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer(String);

impl Issuer {
    /// Parses an `https` URL (or `http` on loopback); a trailing `/` is dropped.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = parse_web_url(raw)?;
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The issuer string, e.g. `https://aveid.net`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.0)
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

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(u) => write!(f, "Sqlite({u:?})"),
            // A PostgreSQL URL may carry a password.
            Self::Postgres(_) => f.write_str("Postgres([redacted])"),
        }
    }
}

impl DatabaseUrl {
    /// Parses a database URL.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("sqlite:") {
            Ok(Self::Sqlite(raw.to_owned()))
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Url::parse(raw).map_err(|_| "is not a valid PostgreSQL URL".to_owned())?;
            Ok(Self::Postgres(Secret::new(raw.to_owned())))
        } else {
            Err("must start with `sqlite:` (e.g. `sqlite://avemint.db`) or `postgres://`".into())
        }
    }
}

/// Keys encrypting stored tokens: the first encrypts, all decrypt.
#[derive(Clone)]
pub struct SessionKeys(Vec<Secret<[u8; 32]>>);

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKeys({} keys, [redacted])", self.0.len())
    }
}

impl SessionKeys {
    /// Parses comma-separated base64 (standard or URL-safe, padding optional) 32-byte keys.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, part) in raw.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err(format!("key #{} is empty", i + 1));
            }
            let decoded = decode_any_base64(part).ok_or_else(|| format!("key #{} is not valid base64", i + 1))?;
            let key: [u8; 32] = decoded
                .as_slice()
                .try_into()
                .map_err(|_| format!("key #{} decodes to {} bytes; 32 are needed", i + 1, decoded.len()))?;
            keys.push(Secret::new(key));
        }
        if keys.is_empty() {
            return Err("no key given".into());
        }
        Ok(Self(keys))
    }

    /// Builds from raw keys (demo mode and tests).
    pub fn from_keys(keys: Vec<[u8; 32]>) -> Self {
        Self(keys.into_iter().map(Secret::new).collect())
    }

    /// The keys, the encrypting one first.
    pub fn keys(&self) -> &[Secret<[u8; 32]>] {
        &self.0
    }
}

fn decode_any_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s).ok())
}

/// `http` is allowed only for loopback hosts; no query, fragment or user-info.
fn parse_web_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("is not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err("must use https (http is accepted only for loopback hosts)".into()),
        _ => return Err("must be an https URL".into()),
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user-info".into());
    }
    Ok(url)
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The TOML file's shape. Keys mirror the environment variables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    issuer: Option<String>,
    scopes: Option<String>,
    public_url: Option<String>,
    listen: Option<String>,
    database_url: Option<String>,
    session_keys: Option<Vec<String>>,
    session_keys_file: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    key_algorithm: Option<String>,
    key_rotation: Option<String>,
    token_ttl: Option<u64>,
    token_audience: Option<String>,
    token_claims: Option<toml::Table>,
    max_token_bytes: Option<u64>,
    profiles: Option<Vec<FileProfile>>,
    session_idle_timeout: Option<u64>,
    session_lifetime: Option<u64>,
    max_sessions_per_user: Option<u64>,
    refresh_skew: Option<u64>,
    ave_token_budget: Option<u64>,
    session_cache_ttl_ms: Option<u64>,
    ave_refresh_timeout: Option<u64>,
    database_max_connections: Option<u64>,
    ave_metadata_ttl: Option<u64>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    login_rate_limit: Option<u32>,
    header_read_timeout: Option<u64>,
    keep_alive_timeout: Option<u64>,
    docs: Option<String>,
}

/// One `[[profiles]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProfile {
    name: String,
    audience: String,
    ttl: Option<u64>,
    #[serde(default)]
    default: bool,
    claims: Option<toml::Table>,
    hook: Option<FileHook>,
}

/// A `[profiles.hook]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHook {
    url: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
    cache_ttl: Option<u64>,
    on_failure: Option<String>,
}

/// All problems found while loading settings, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads environment variables; injected so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A value and where it came from, for error messages.
struct Sourced {
    value: String,
    origin: String,
}

struct Loader<'a> {
    env: &'a dyn Env,
    errors: Vec<String>,
}

impl Loader<'_> {
    fn pick(&self, env_name: &str, file_key: &str, file_value: Option<String>) -> Option<Sourced> {
        if let Some(v) = self.env.var(env_name) {
            return Some(Sourced {
                value: v,
                origin: env_name.to_owned(),
            });
        }
        file_value.map(|v| Sourced {
            value: v,
            origin: format!("config file `{file_key}`"),
        })
    }

    /// A secret from `NAME`, `NAME_FILE`, or the file's `key` / `key_file`.
    fn secret(
        &mut self,
        env_name: &str,
        file_key: &str,
        file_value: Option<String>,
        file_path: Option<PathBuf>,
    ) -> Option<Sourced> {
        let file_env = format!("{env_name}_FILE");
        if let Some(v) = self.env.var(env_name) {
            return Some(Sourced {
                value: v,
                origin: env_name.to_owned(),
            });
        }
        let path = self
            .env
            .var(&file_env)
            .map(|p| (PathBuf::from(p), file_env.clone()))
            .or_else(|| file_path.map(|p| (p, format!("config file `{file_key}_file`"))));
        if let Some((path, origin)) = path {
            return match std::fs::read_to_string(&path) {
                Ok(v) => Some(Sourced {
                    value: v.trim().to_owned(),
                    origin,
                }),
                Err(e) => {
                    self.errors
                        .push(format!("{origin}: cannot read {}: {}", path.display(), e.kind()));
                    None
                }
            };
        }
        file_value.map(|v| Sourced {
            value: v,
            origin: format!("config file `{file_key}`"),
        })
    }

    fn require(&mut self, v: Option<Sourced>, env_name: &str) -> Option<Sourced> {
        if v.is_none() {
            self.errors.push(format!("{env_name} is required"));
        }
        v
    }

    fn check<T>(&mut self, v: Option<Sourced>, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let v = v?;
        match parse(&v.value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(format!("{}: {e}", v.origin));
                None
            }
        }
    }

    fn seconds(
        &mut self,
        env_name: &str,
        file_key: &str,
        file_value: Option<u64>,
        default: u64,
        max: u64,
    ) -> Option<Duration> {
        let v = self
            .pick(env_name, file_key, file_value.map(|n| n.to_string()))
            .unwrap_or(Sourced {
                value: default.to_string(),
                origin: env_name.to_owned(),
            });
        self.check(Some(v), |s| match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 && n <= max => Ok(Duration::from_secs(n)),
            _ => Err(format!("must be a whole number of seconds from 1 to {max}")),
        })
    }
}

/// The `[[profiles]]` section: each profile checked, then the set as a whole.
impl Loader<'_> {
    fn claims_table(&mut self, origin: &str, table: toml::Table) -> Option<ClaimTemplate> {
        let value = serde_json::to_value(table).unwrap_or(serde_json::Value::Null);
        match ClaimTemplate::from_value(value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(format!("{origin}: {e}"));
                None
            }
        }
    }

    /// `env_default` holds the `AVEMINT_TOKEN_*` values that were set in the
    /// environment: they override the default profile (the environment wins).
    fn profiles(
        &mut self,
        list: Vec<FileProfile>,
        flat_in_file: &[(&str, bool)],
        env_default: (Option<Duration>, Option<String>, Option<ClaimTemplate>),
    ) -> Vec<ProfileSpec> {
        for (key, present) in flat_in_file {
            if *present {
                self.errors.push(format!(
                    "config file `{key}`: cannot be combined with [[profiles]]; set it on the default profile"
                ));
            }
        }
        let count = list.len();
        let single = count == 1;
        let mut out = Vec::with_capacity(list.len());
        for p in list {
            let origin = format!("config file profile `{}`", p.name);
            let before = self.errors.len();
            if let Err(e) = profiles::parse_name(&p.name) {
                self.errors.push(format!("{origin}: `name` {e}"));
            }
            if non_empty(&p.audience).is_err() {
                self.errors.push(format!("{origin}: `audience` must not be empty"));
            }
            let ttl = match p.ttl.unwrap_or(300) {
                n if (1..=MAX_TOKEN_TTL.as_secs()).contains(&n) => Duration::from_secs(n),
                _ => {
                    self.errors.push(format!(
                        "{origin}: `ttl` must be a whole number of seconds from 1 to 86400"
                    ));
                    Duration::ZERO
                }
            };
            let claims = match p.claims {
                Some(table) => self.claims_table(&format!("{origin}: `claims`"), table),
                None => Some(ClaimTemplate::default()),
            };
            let hook = p.hook.map(|h| self.hook(&origin, h));
            if let (Some(claims), true) = (claims, self.errors.len() == before) {
                out.push(ProfileSpec {
                    name: p.name,
                    audience: p.audience.trim().to_owned(),
                    ttl,
                    claims,
                    default: p.default || single,
                    hook: hook.flatten(),
                });
            }
        }
        if let Some(d) = out.iter_mut().find(|p| p.default) {
            let (ttl, audience, claims) = env_default;
            d.ttl = ttl.unwrap_or(d.ttl);
            d.audience = audience.unwrap_or_else(|| d.audience.clone());
            d.claims = claims.unwrap_or_else(|| d.claims.clone());
        }
        // The set as a whole is checked only when every profile parsed, so one
        // mistake is one line.
        if out.len() == count {
            self.errors
                .extend(profiles::validate(&out).into_iter().map(|e| format!("config file {e}")));
        }
        out
    }

    fn hook(&mut self, origin: &str, h: FileHook) -> Option<HookSpec> {
        let origin = format!("{origin}: `hook`");
        let before = self.errors.len();
        let url = parse_web_url(&h.url)
            .map_err(|e| self.errors.push(format!("{origin}: `url` {e}")))
            .ok();
        let secret = match (h.secret, h.secret_file) {
            (Some(s), None) => Some(s),
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map(|v| v.trim().to_owned())
                .map_err(|e| {
                    self.errors.push(format!(
                        "{origin}: `secret_file` cannot read {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })
                .ok(),
            _ => {
                self.errors
                    .push(format!("{origin}: set exactly one of `secret` and `secret_file`"));
                None
            }
        };
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            self.errors.push(format!(
                "{origin}: the secret must be at least 32 characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        let timeout = match h.timeout_ms.unwrap_or(2000) {
            n @ 1..=60_000 => Duration::from_millis(n),
            _ => {
                self.errors
                    .push(format!("{origin}: `timeout_ms` must be from 1 to 60000"));
                Duration::ZERO
            }
        };
        let cache_ttl = match h.cache_ttl.unwrap_or(60) {
            n @ 0..=86_400 => Duration::from_secs(n),
            _ => {
                self.errors
                    .push(format!("{origin}: `cache_ttl` must be from 0 to 86400 seconds"));
                Duration::ZERO
            }
        };
        let on_failure = FailurePolicy::parse(h.on_failure.as_deref().unwrap_or("deny"))
            .map_err(|e| self.errors.push(format!("{origin}: `on_failure` {e}")))
            .ok();
        match (url, secret, on_failure) {
            (Some(url), Some(secret), Some(on_failure)) if self.errors.len() == before => Some(HookSpec {
                url,
                secret: Secret::new(secret),
                timeout,
                cache_ttl,
                on_failure,
            }),
            _ => None,
        }
    }
}

impl Loader<'_> {
    /// `AVEMINT_KEYS_DIR`, `AVEMINT_KEY_ALGORITHM` and `AVEMINT_KEY_ROTATION` (shared by `serve` and `keys`).
    fn keys(
        &mut self,
        keys_dir: Option<PathBuf>,
        algorithm: Option<String>,
        rotation: Option<String>,
    ) -> (PathBuf, Option<KeyPolicy>) {
        let dir = self
            .pick(
                "AVEMINT_KEYS_DIR",
                "keys_dir",
                keys_dir.map(|p| p.to_string_lossy().into_owned()),
            )
            .map(|s| PathBuf::from(s.value))
            .unwrap_or_else(|| PathBuf::from("keys"));
        let algorithm = self.pick("AVEMINT_KEY_ALGORITHM", "key_algorithm", algorithm);
        let algorithm = match algorithm {
            Some(a) => self.check(Some(a), |s| s.parse::<Algorithm>()),
            None => Some(Algorithm::default()),
        };
        let rotation = self.pick("AVEMINT_KEY_ROTATION", "key_rotation", rotation);
        let rotation = match rotation {
            Some(r) => self.check(Some(r), parse_rotation),
            None => Some(None),
        };
        let policy = match (algorithm, rotation) {
            (Some(algorithm), Some(rotation)) => Some(KeyPolicy { algorithm, rotation }),
            _ => None,
        };
        (dir, policy)
    }
}

/// What the `avemint keys` commands need: the keys directory and the key policy.
#[derive(Debug, Clone)]
pub struct KeysSettings {
    pub keys_dir: PathBuf,
    pub signing: KeyPolicy,
}

impl KeysSettings {
    /// Loads from the same TOML file and environment as `serve`, reading only the key settings.
    pub fn load(config_path: Option<&Path>, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let file = read_file(config_path, env)?;
        let mut l = Loader {
            env,
            errors: Vec::new(),
        };
        let (keys_dir, signing) = l.keys(file.keys_dir, file.key_algorithm, file.key_rotation);
        match signing {
            Some(signing) if l.errors.is_empty() => Ok(Self { keys_dir, signing }),
            _ => Err(ConfigErrors(l.errors)),
        }
    }
}

/// The token settings; with profiles, the flat fields mirror the default profile.
fn token_settings(
    ttl: Duration,
    audience: String,
    claims: ClaimTemplate,
    profiles: Vec<ProfileSpec>,
    max_token_bytes: usize,
) -> TokenSettings {
    let (ttl, audience, claims) = match profiles.iter().find(|p| p.default) {
        Some(d) => (d.ttl, d.audience.clone(), d.claims.clone()),
        None => (ttl, audience, claims),
    };
    TokenSettings {
        ttl,
        audience,
        claims,
        profiles,
        max_token_bytes,
    }
}

/// `AVEMINT_KEY_ROTATION`: `off`, or a whole number with a unit (`s`, `m`, `h`, `d`, `w`), e.g. `30d`.
pub fn parse_rotation(raw: &str) -> Result<Option<Duration>, String> {
    let s = raw.trim();
    if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let err = || {
        format!(
            "must be `off` or a period such as `30d`, `12h` or `90m` (units s, m, h, d, w), from {}h to 3650d",
            MIN_ROTATION.as_secs() / 3600
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| err())?;
    let unit = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    let secs = n.checked_mul(unit).ok_or_else(err)?;
    if secs < MIN_ROTATION.as_secs() || secs > 3650 * 86_400 {
        return Err(err());
    }
    Ok(Some(Duration::from_secs(secs)))
}

fn read_file(config_path: Option<&Path>, env: &dyn Env) -> Result<FileSettings, ConfigErrors> {
    let path = config_path
        .map(Path::to_path_buf)
        .or_else(|| env.var("AVEMINT_CONFIG").map(PathBuf::from));
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| ConfigErrors(vec![format!("config file {}: cannot read: {}", p.display(), e.kind())]))?;
            toml::from_str::<FileSettings>(&text)
                .map_err(|e| ConfigErrors(vec![format!("config file {}: {}", p.display(), e.message())]))
        }
        None => Ok(FileSettings::default()),
    }
}

impl Settings {
    /// Loads settings for `avemint serve` from an optional TOML file and the environment.
    pub fn load(config_path: Option<&Path>, env: &dyn Env) -> Result<Settings, ConfigErrors> {
        let file = read_file(config_path, env)?;
        let mut l = Loader {
            env,
            errors: Vec::new(),
        };

        let client_id = l.pick("AVE_CLIENT_ID", "client_id", file.client_id);
        let client_id = l.require(client_id, "AVE_CLIENT_ID");
        let client_id = l.check(client_id, |s| non_empty(s).map(str::to_owned));
        let secret = l.secret(
            "AVE_CLIENT_SECRET",
            "client_secret",
            file.client_secret,
            file.client_secret_file,
        );
        let secret = l.require(secret, "AVE_CLIENT_SECRET");
        let client_secret = l.check(secret, |s| non_empty(s).map(|s| Secret::new(s.to_owned())));
        let issuer = l.pick("AVE_ISSUER", "issuer", file.issuer).unwrap_or(Sourced {
            value: DEFAULT_ISSUER.into(),
            origin: "AVE_ISSUER".into(),
        });
        let issuer = l.check(Some(issuer), Issuer::parse);
        let scopes = l.pick("AVEMINT_SCOPES", "scopes", file.scopes).unwrap_or(Sourced {
            value: DEFAULT_SCOPES.into(),
            origin: "AVEMINT_SCOPES".into(),
        });
        let scopes = l.check(Some(scopes), parse_scopes);
        let public_url = l.pick("AVEMINT_PUBLIC_URL", "public_url", file.public_url);
        let public_url = l.require(public_url, "AVEMINT_PUBLIC_URL");
        let public_url = l.check(public_url, PublicUrl::parse);
        let listen = l.pick("AVEMINT_LISTEN", "listen", file.listen).unwrap_or(Sourced {
            value: "127.0.0.1:8080".into(),
            origin: "AVEMINT_LISTEN".into(),
        });
        let listen = l.check(Some(listen), |s| {
            s.trim()
                .parse::<SocketAddr>()
                .map_err(|_| "must be an address and port such as 127.0.0.1:8080".to_owned())
        });
        let database_url = l
            .pick("AVEMINT_DATABASE_URL", "database_url", file.database_url)
            .unwrap_or(Sourced {
                value: "sqlite://avemint.db".into(),
                origin: "AVEMINT_DATABASE_URL".into(),
            });
        let database_url = l.check(Some(database_url), DatabaseUrl::parse);
        let keys = l.secret(
            "AVEMINT_SESSION_KEYS",
            "session_keys",
            file.session_keys.map(|v| v.join(",")),
            file.session_keys_file,
        );
        let keys = l.require(keys, "AVEMINT_SESSION_KEYS");
        let session_keys = l.check(keys, SessionKeys::parse);
        let (keys_dir, signing) = l.keys(file.keys_dir, file.key_algorithm, file.key_rotation);
        let flat_in_file = [
            ("token_ttl", file.token_ttl.is_some()),
            ("token_audience", file.token_audience.is_some()),
            ("token_claims", file.token_claims.is_some()),
        ];
        let ttl = l.seconds(
            "AVEMINT_TOKEN_TTL",
            "token_ttl",
            file.token_ttl,
            300,
            MAX_TOKEN_TTL.as_secs(),
        );
        let audience = l.pick("AVEMINT_TOKEN_AUDIENCE", "token_audience", file.token_audience);
        let audience = match audience {
            Some(a) => l.check(Some(a), |s| non_empty(s).map(str::to_owned)),
            None => public_url.as_ref().map(|p| p.as_str().to_owned()),
        };
        let claims = match l.env.var("AVEMINT_TOKEN_CLAIMS") {
            Some(text) => l.check(
                Some(Sourced {
                    value: text,
                    origin: "AVEMINT_TOKEN_CLAIMS".into(),
                }),
                |s| ClaimTemplate::parse_json(s).map_err(|e| e.to_string()),
            ),
            None => match file.token_claims {
                Some(table) => l.claims_table("config file `token_claims`", table),
                None => Some(ClaimTemplate::default()),
            },
        };
        let max_token_bytes = l
            .pick(
                "AVEMINT_TOKEN_MAX_BYTES",
                "max_token_bytes",
                file.max_token_bytes.map(|n| n.to_string()),
            )
            .unwrap_or(Sourced {
                value: DEFAULT_MAX_TOKEN_BYTES.to_string(),
                origin: "AVEMINT_TOKEN_MAX_BYTES".into(),
            });
        let max_token_bytes = l.check(Some(max_token_bytes), |s| match s.trim().parse::<usize>() {
            Ok(n) if (512..=65_536).contains(&n) => Ok(n),
            _ => Err("must be a whole number of bytes from 512 to 65536".into()),
        });
        let profiles = match file.profiles {
            Some(list) => {
                let set = |name: &str| env.var(name).is_some();
                let env_default = (
                    ttl.filter(|_| set("AVEMINT_TOKEN_TTL")),
                    audience.clone().filter(|_| set("AVEMINT_TOKEN_AUDIENCE")),
                    claims.clone().filter(|_| set("AVEMINT_TOKEN_CLAIMS")),
                );
                l.profiles(list, &flat_in_file, env_default)
            }
            None => Vec::new(),
        };
        let idle = l.seconds(
            "AVEMINT_SESSION_IDLE_TIMEOUT",
            "session_idle_timeout",
            file.session_idle_timeout,
            7 * 86_400,
            366 * 86_400,
        );
        let lifetime = l.seconds(
            "AVEMINT_SESSION_LIFETIME",
            "session_lifetime",
            file.session_lifetime,
            30 * 86_400,
            366 * 86_400,
        );
        let max_sessions = l.pick(
            "AVEMINT_MAX_SESSIONS_PER_USER",
            "max_sessions_per_user",
            file.max_sessions_per_user.map(|n| n.to_string()),
        );
        let max_sessions_per_user = match max_sessions {
            Some(v) => l.check(Some(v), |s| bounded(s, 0, 100_000).map(|n| n as u32)),
            None => Some(DEFAULT_MAX_SESSIONS_PER_USER),
        };
        let security = security_settings(
            &mut l,
            file.allowed_origins,
            file.trusted_proxies,
            file.login_rate_limit,
        );
        let header_read = l.seconds(
            "AVEMINT_HEADER_READ_TIMEOUT",
            "header_read_timeout",
            file.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
            600,
        );
        let keep_alive = l.seconds(
            "AVEMINT_KEEP_ALIVE_TIMEOUT",
            "keep_alive_timeout",
            file.keep_alive_timeout,
            DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs(),
            3600,
        );
        let docs = match l.pick("AVEMINT_DOCS", "docs", file.docs) {
            Some(v) => l.check(Some(v), Docs::parse),
            None => Some(Docs::default()),
        };
        let security = match (security, header_read, keep_alive, docs) {
            (Some(security), Some(header_read), Some(keep_alive), Some(docs)) => Some(SecuritySettings {
                connection_timeouts: ConnectionTimeouts {
                    header_read,
                    keep_alive,
                },
                docs,
                ..security
            }),
            _ => None,
        };

        let skew = l.pick(
            "AVEMINT_REFRESH_SKEW",
            "refresh_skew",
            file.refresh_skew.map(|n| n.to_string()),
        );
        let skew = match skew {
            Some(v) => l.check(Some(v), |s| bounded(s, 0, 3600).map(Duration::from_secs)),
            None => Some(RenewalSettings::default().skew),
        };
        let budget = l.pick(
            "AVEMINT_AVE_TOKEN_BUDGET",
            "ave_token_budget",
            file.ave_token_budget.map(|n| n.to_string()),
        );
        let budget = match budget {
            Some(v) => l.check(Some(v), |s| bounded(s, 1, 10_000).map(|n| n as u32)),
            None => Some(RenewalSettings::default().token_budget_per_minute),
        };
        let cache_ttl = l.pick(
            "AVEMINT_SESSION_CACHE_TTL_MS",
            "session_cache_ttl_ms",
            file.session_cache_ttl_ms.map(|n| n.to_string()),
        );
        let cache_ttl = match cache_ttl {
            Some(v) => l.check(Some(v), |s| bounded(s, 0, 1000).map(Duration::from_millis)),
            None => Some(RenewalSettings::default().session_cache_ttl),
        };
        let refresh_timeout = l
            .pick(
                "AVEMINT_AVE_REFRESH_TIMEOUT",
                "ave_refresh_timeout",
                file.ave_refresh_timeout.map(|n| n.to_string()),
            )
            .map(|v| l.check(Some(v), |s| bounded(s, 1, 600).map(Duration::from_secs)));
        let max_connections = l.pick(
            "AVEMINT_DATABASE_MAX_CONNECTIONS",
            "database_max_connections",
            file.database_max_connections.map(|n| n.to_string()),
        );
        let max_connections = match max_connections {
            Some(v) => l.check(Some(v), |s| bounded(s, 1, 1000).map(|n| n as u32)),
            None => Some(RenewalSettings::default().database_max_connections),
        };
        let renewal = match (skew, budget, cache_ttl, refresh_timeout, max_connections) {
            (
                Some(skew),
                Some(token_budget_per_minute),
                Some(session_cache_ttl),
                None | Some(Some(_)),
                Some(database_max_connections),
            ) => Some(RenewalSettings {
                skew,
                token_budget_per_minute,
                session_cache_ttl,
                refresh_timeout: refresh_timeout.flatten(),
                database_max_connections,
                ..RenewalSettings::default()
            }),
            _ => None,
        };
        let ave_metadata_ttl = l.seconds(
            "AVEMINT_AVE_METADATA_TTL",
            "ave_metadata_ttl",
            file.ave_metadata_ttl,
            RenewalSettings::default().ave_metadata_ttl.as_secs(),
            86_400,
        );
        let renewal = renewal
            .zip(ave_metadata_ttl)
            .map(|(r, ave_metadata_ttl)| RenewalSettings { ave_metadata_ttl, ..r });

        match (
            client_id,
            client_secret,
            issuer,
            scopes,
            public_url,
            listen,
            database_url,
            session_keys,
            ttl,
            audience,
            claims,
            idle,
            lifetime,
            renewal,
            max_token_bytes,
            signing,
            security,
            max_sessions_per_user,
        ) {
            (
                Some(client_id),
                Some(client_secret),
                Some(issuer),
                Some(scopes),
                Some(public_url),
                Some(listen),
                Some(database_url),
                Some(session_keys),
                Some(ttl),
                Some(audience),
                Some(claims),
                Some(idle_timeout),
                Some(lifetime),
                Some(renewal),
                Some(max_token_bytes),
                Some(signing),
                Some(security),
                Some(max_sessions_per_user),
            ) if l.errors.is_empty() => Ok(Settings {
                token: token_settings(ttl, audience, claims, profiles, max_token_bytes),
                ave: AveSettings {
                    client_id,
                    client_secret,
                    issuer,
                    scopes,
                },
                public_url,
                listen,
                database_url,
                session_keys,
                keys_dir,
                signing,
                session: SessionSettings {
                    idle_timeout,
                    lifetime,
                    max_sessions_per_user,
                },
                renewal,
                security,
            }),
            _ => Err(ConfigErrors(l.errors)),
        }
    }
}

fn bounded(s: &str, min: u64, max: u64) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// `AVEMINT_ALLOWED_ORIGINS`, `AVEMINT_TRUSTED_PROXIES`, `AVEMINT_LOGIN_RATE_LIMIT`.
fn security_settings(
    l: &mut Loader<'_>,
    origins: Option<Vec<String>>,
    proxies: Option<Vec<String>>,
    rate: Option<u32>,
) -> Option<SecuritySettings> {
    let origins = l.pick(
        "AVEMINT_ALLOWED_ORIGINS",
        "allowed_origins",
        origins.map(|v| v.join(",")),
    );
    let origins = match origins {
        Some(v) => l.check(Some(v), AllowedOrigins::parse),
        None => Some(AllowedOrigins::default()),
    };
    let proxies = l.pick(
        "AVEMINT_TRUSTED_PROXIES",
        "trusted_proxies",
        proxies.map(|v| v.join(",")),
    );
    let proxies = match proxies {
        Some(v) => l.check(Some(v), TrustedProxies::parse),
        None => Some(TrustedProxies::default()),
    };
    let rate = l.pick(
        "AVEMINT_LOGIN_RATE_LIMIT",
        "login_rate_limit",
        rate.map(|n| n.to_string()),
    );
    let rate = match rate {
        Some(v) => l.check(Some(v), RateLimit::parse),
        None => Some(RateLimit::default()),
    };
    Some(SecuritySettings {
        allowed_origins: origins?,
        trusted_proxies: proxies?,
        login_rate_limit: rate?,
        ..SecuritySettings::default()
    })
}

fn non_empty(s: &str) -> Result<&str, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(t)
    }
}

fn parse_scopes(s: &str) -> Result<String, String> {
    let scopes: Vec<&str> = s.split_whitespace().collect();
    if !scopes.contains(&"openid") {
        return Err("must include `openid` (avemint needs Ave's id_token)".into());
    }
    if let Some(bad) = scopes.iter().find(|s| s.starts_with("e2ee:")) {
        return Err(format!(
            "`{bad}` delivers keys in the URL fragment, which a server-side client never sees"
        ));
    }
    Ok(scopes.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AVE_CLIENT_ID", "app_1"),
            ("AVE_CLIENT_SECRET", "s3cret-value"),
            ("AVEMINT_PUBLIC_URL", "https://app.example.com/"),
            ("AVEMINT_SESSION_KEYS", KEY),
        ]
    }

    #[test]
    fn minimal_env_gives_documented_defaults() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.ave.issuer.as_str(), "https://aveid.net");
        assert_eq!(s.public_url.as_str(), "https://app.example.com");
        assert_eq!(s.public_url.redirect_uri(), "https://app.example.com/auth/callback");
        assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"));
        assert_eq!(s.token.ttl, Duration::from_secs(300));
        assert_eq!(s.token.audience, "https://app.example.com");
        assert_eq!(s.ave.scopes, DEFAULT_SCOPES);
        assert_eq!(s.database_url, DatabaseUrl::Sqlite("sqlite://avemint.db".into()));
        assert_eq!(s.keys_dir, PathBuf::from("keys"));
        assert_eq!(s.signing, KeyPolicy::default());
        assert_eq!(s.signing.algorithm, Algorithm::Es256);
        assert_eq!(s.signing.rotation, None);
    }

    #[test]
    fn store_pool_and_refresh_timeout_parse_and_report_problems() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.renewal.database_max_connections, 16);
        assert_eq!(s.renewal.refresh_timeout, None);
        let mut e = minimal();
        e.push(("AVEMINT_DATABASE_MAX_CONNECTIONS", "40"));
        e.push(("AVEMINT_AVE_REFRESH_TIMEOUT", "5"));
        let s = Settings::load(None, &env(&e)).expect("valid");
        assert_eq!(s.renewal.database_max_connections, 40);
        assert_eq!(s.renewal.refresh_timeout, Some(Duration::from_secs(5)));
        let mut e = minimal();
        e.push(("AVEMINT_DATABASE_MAX_CONNECTIONS", "0"));
        e.push(("AVEMINT_AVE_REFRESH_TIMEOUT", "never"));
        let errors = Settings::load(None, &env(&e)).expect_err("invalid").0;
        assert!(
            errors.iter().any(|m| m.starts_with("AVEMINT_DATABASE_MAX_CONNECTIONS")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|m| m.starts_with("AVEMINT_AVE_REFRESH_TIMEOUT")),
            "{errors:?}"
        );
    }

    #[test]
    fn key_settings_parse_and_report_problems() {
        let mut e = minimal();
        e.push(("AVEMINT_KEY_ALGORITHM", "EdDSA"));
        e.push(("AVEMINT_KEY_ROTATION", "30d"));
        let s = Settings::load(None, &env(&e)).expect("valid");
        assert_eq!(s.signing.algorithm, Algorithm::EdDsa);
        assert_eq!(s.signing.rotation, Some(Duration::from_secs(30 * 86_400)));
        let k = KeysSettings::load(
            None,
            &env(&[("AVEMINT_KEY_ALGORITHM", "rs256"), ("AVEMINT_KEYS_DIR", "/k")]),
        )
        .expect("keys settings need no client settings");
        assert_eq!(
            (k.keys_dir, k.signing.algorithm),
            (PathBuf::from("/k"), Algorithm::Rs256)
        );
        let err = KeysSettings::load(
            None,
            &env(&[("AVEMINT_KEY_ALGORITHM", "hs256"), ("AVEMINT_KEY_ROTATION", "5m")]),
        )
        .expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].contains("AVEMINT_KEY_ALGORITHM") && err.0[1].contains("AVEMINT_KEY_ROTATION"));
    }

    #[test]
    fn rotation_periods() {
        assert_eq!(parse_rotation("off"), Ok(None));
        assert_eq!(parse_rotation("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(parse_rotation("12h"), Ok(Some(Duration::from_secs(12 * 3600))));
        assert_eq!(parse_rotation(" 2w "), Ok(Some(Duration::from_secs(14 * 86_400))));
        assert_eq!(parse_rotation("90m"), Ok(Some(Duration::from_secs(5400))));
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "1.5d",
            "59m",
            "30 days",
            "3651d",
            "99999999999999999999w",
        ] {
            assert!(parse_rotation(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn rotation_parser_never_panics_and_respects_bounds(s in "\\PC{0,12}") {
            if let Ok(Some(d)) = parse_rotation(&s) {
                proptest::prop_assert!(d >= MIN_ROTATION && d.as_secs() <= 3650 * 86_400);
            }
        }
    }

    #[test]
    fn every_problem_is_reported_once_and_secrets_are_not_echoed() {
        let e = Settings::load(
            None,
            &env(&[
                ("AVE_CLIENT_SECRET", "   "),
                ("AVEMINT_PUBLIC_URL", "http://example.com"),
                ("AVEMINT_SESSION_KEYS", "c2hvcnQtc2VjcmV0LWtleQ=="),
                ("AVEMINT_TOKEN_TTL", "zero"),
                ("AVEMINT_TOKEN_CLAIMS", r#"{"sub":"x"}"#),
                ("AVE_ISSUER", "ftp://aveid.net"),
            ]),
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert_eq!(e.0.len(), 7, "{text}");
        for needle in [
            "AVE_CLIENT_ID",
            "AVE_CLIENT_SECRET",
            "AVEMINT_PUBLIC_URL",
            "AVEMINT_SESSION_KEYS",
            "AVEMINT_TOKEN_TTL",
            "AVEMINT_TOKEN_CLAIMS",
            "AVE_ISSUER",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(!text.contains("c2hvcnQtc2VjcmV0LWtleQ"));
    }

    #[test]
    fn environment_wins_over_file_and_file_secrets_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_path = dir.path().join("secret");
        std::fs::write(&secret_path, "from-file\n").expect("write");
        let cfg = dir.path().join("avemint.toml");
        std::fs::write(
            &cfg,
            format!(
                "client_id = \"file-id\"\npublic_url = \"http://127.0.0.1:9000\"\nsession_keys = [\"{KEY}\"]\ntoken_ttl = 60\n[token_claims]\nplan = \"pro\"\n"
            ),
        )
        .expect("write");
        let e = env(&[
            ("AVE_CLIENT_ID", "env-id"),
            ("AVE_CLIENT_SECRET_FILE", secret_path.to_str().expect("utf8")),
        ]);
        let s = Settings::load(Some(&cfg), &e).expect("valid");
        assert_eq!(s.ave.client_id, "env-id");
        assert_eq!(s.ave.client_secret.expose(), "from-file");
        assert_eq!(s.token.ttl, Duration::from_secs(60));
        assert!(!s.token.claims.is_empty());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("avemint.toml");
        std::fs::write(&cfg, "clientid = \"typo\"\n").expect("write");
        let e = Settings::load(Some(&cfg), &env(&[])).expect_err("invalid");
        assert!(e.to_string().contains("clientid"), "{e}");
    }

    fn load_file(toml: &str, extra_env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("avemint.toml");
        std::fs::write(&cfg, toml).expect("write");
        let mut pairs = minimal();
        pairs.extend_from_slice(extra_env);
        Settings::load(Some(&cfg), &env(&pairs))
    }

    const TWO: &str = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\nttl = 600\ndefault = true\n[profiles.claims]\nplan = \"pro\"\n[[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n[profiles.hook]\nurl = \"https://hooks.example.com/roles\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn profiles_load_with_defaults_and_the_flat_fields_mirror_the_default() {
        let s = load_file(TWO, &[]).expect("valid");
        let t = &s.token;
        assert_eq!(t.profiles.len(), 2);
        assert_eq!((t.audience.as_str(), t.ttl), ("https://web", Duration::from_secs(600)));
        assert!(!t.claims.is_empty());
        assert_eq!(t.max_token_bytes, DEFAULT_MAX_TOKEN_BYTES);
        let orders = &t.profiles[1];
        assert!(!orders.default);
        assert_eq!(orders.ttl, Duration::from_secs(300));
        let hook = orders.hook.as_ref().expect("hook");
        assert_eq!(hook.url.as_str(), "https://hooks.example.com/roles");
        assert_eq!(hook.timeout, Duration::from_millis(2000));
        assert_eq!(hook.cache_ttl, Duration::from_secs(60));
        assert_eq!(hook.on_failure, FailurePolicy::Deny);
        // A single profile is the default without saying so.
        let one = load_file("[[profiles]]\nname = \"a\"\naudience = \"x\"\n", &[]).expect("valid");
        assert!(one.token.profiles[0].default);
        assert_eq!(one.token.audience, "x");
    }

    #[test]
    fn the_environment_overrides_the_default_profile() {
        let s = load_file(
            TWO,
            &[
                ("AVEMINT_TOKEN_TTL", "30"),
                ("AVEMINT_TOKEN_AUDIENCE", "https://env"),
                ("AVEMINT_TOKEN_CLAIMS", "{}"),
                ("AVEMINT_TOKEN_MAX_BYTES", "2048"),
            ],
        )
        .expect("valid");
        let web = &s.token.profiles[0];
        assert_eq!(
            (web.audience.as_str(), web.ttl),
            ("https://env", Duration::from_secs(30))
        );
        assert!(web.claims.is_empty());
        assert_eq!(s.token.profiles[1].audience, "orders-api", "other profiles unchanged");
        assert_eq!(s.token.audience, "https://env");
        assert_eq!(s.token.max_token_bytes, 2048);
        // An override that collides with another profile's audience is refused.
        let e = load_file(TWO, &[("AVEMINT_TOKEN_AUDIENCE", "orders-api")]).expect_err("duplicate");
        assert!(e.to_string().contains("already the audience"), "{e}");
    }

    #[test]
    fn hardening_settings_parse_with_documented_defaults() {
        let s = Settings::load(None, &env(&minimal())).expect("defaults");
        assert_eq!(s.session.max_sessions_per_user, 50);
        assert_eq!(s.security.docs, Docs::On);
        assert_eq!(s.security.connection_timeouts.header_read, Duration::from_secs(10));
        assert_eq!(s.security.connection_timeouts.keep_alive, Duration::from_secs(75));
        let mut e = minimal();
        e.extend([
            ("AVEMINT_MAX_SESSIONS_PER_USER", "3"),
            ("AVEMINT_DOCS", "off"),
            ("AVEMINT_HEADER_READ_TIMEOUT", "5"),
            ("AVEMINT_KEEP_ALIVE_TIMEOUT", "30"),
        ]);
        let s = Settings::load(None, &env(&e)).expect("set");
        assert_eq!(s.session.max_sessions_per_user, 3);
        assert_eq!(s.security.docs, Docs::Off);
        assert_eq!(s.security.connection_timeouts.header_read, Duration::from_secs(5));
        assert_eq!(s.security.connection_timeouts.keep_alive, Duration::from_secs(30));
        let mut bad = minimal();
        bad.extend([
            ("AVEMINT_MAX_SESSIONS_PER_USER", "-1"),
            ("AVEMINT_DOCS", "maybe"),
            ("AVEMINT_HEADER_READ_TIMEOUT", "0"),
            ("AVEMINT_KEEP_ALIVE_TIMEOUT", "forever"),
        ]);
        let err = Settings::load(None, &env(&bad)).expect_err("refused");
        assert_eq!(err.0.len(), 4, "{err}");
        let file = load_file(
            "max_sessions_per_user = 0\ndocs = \"off\"\nheader_read_timeout = 2\nkeep_alive_timeout = 9\n",
            &[],
        )
        .expect("file keys");
        assert_eq!(file.session.max_sessions_per_user, 0);
        assert_eq!(file.security.docs, Docs::Off);
    }

    #[test]
    fn bad_profiles_and_hooks_are_refused_one_line_each() {
        let hook = |extra: &str| {
            format!(
                "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"https://h.example/x\"\n{extra}\n"
            )
        };
        for (toml, needle) in [
            (format!("token_ttl = 60\n{TWO}"), "`token_ttl`: cannot be combined"),
            (format!("token_audience = \"y\"\n{TWO}"), "`token_audience`: cannot be combined"),
            ("profiles = []\n".to_owned(), "the list is empty"),
            ("[[profiles]]\nname = \"has space\"\naudience = \"x\"\n".to_owned(), "`name`"),
            ("[[profiles]]\nname = \"a\"\naudience = \" \"\n".to_owned(), "`audience`"),
            ("[[profiles]]\nname = \"a\"\naudience = \"x\"\nttl = 0\n".to_owned(), "`ttl`"),
            ("[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.claims]\naud = \"y\"\n".to_owned(), "`aud`"),
            (hook(""), "exactly one of `secret` and `secret_file`"),
            (hook("secret = \"short\""), "at least 32"),
            (hook("secret = \"0123456789abcdef0123456789abcdef\"\nsecret_file = \"/x\""), "exactly one"),
            (hook("secret_file = \"/nonexistent/avemint-secret\""), "cannot read"),
            (hook("secret = \"0123456789abcdef0123456789abcdef\"\non_failure = \"retry\""), "`on_failure`"),
            (hook("secret = \"0123456789abcdef0123456789abcdef\"\ntimeout_ms = 0"), "`timeout_ms`"),
            (hook("secret = \"0123456789abcdef0123456789abcdef\"\ncache_ttl = 100000"), "`cache_ttl`"),
            (
                "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"http://hooks.example.com\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n".to_owned(),
                "https",
            ),
            ("max_token_bytes = 100\n".to_owned(), "max_token_bytes"),
        ] {
            let e = load_file(&toml, &[]).expect_err(&toml);
            assert_eq!(e.0.len(), 1, "one line for {toml}: {e}");
            assert!(e.to_string().contains(needle), "{needle} in {e}");
            assert!(!e.to_string().contains("0123456789abcdef"), "no secret echoed: {e}");
        }
        // http is fine for loopback hooks.
        let ok = "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
        assert!(load_file(ok, &[]).is_ok());
    }

    #[test]
    fn public_url_rules() {
        assert!(PublicUrl::parse("http://localhost:8080").is_ok());
        assert!(PublicUrl::parse("http://127.0.0.1:8080/").is_ok());
        assert!(PublicUrl::parse("http://[::1]:8080").is_ok());
        assert!(PublicUrl::parse("http://example.com").is_err());
        assert!(PublicUrl::parse("https://example.com/app").is_err());
        assert!(PublicUrl::parse("https://user@example.com").is_err());
        assert!(PublicUrl::parse("https://example.com/?q").is_err());
    }

    #[test]
    fn security_settings_are_parsed_and_checked() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.security, SecuritySettings::default());
        assert_eq!(s.security.login_rate_limit, RateLimit(30));
        let mut pairs = minimal();
        pairs.push((
            "AVEMINT_ALLOWED_ORIGINS",
            "https://spa.example.com,http://localhost:5173",
        ));
        pairs.push(("AVEMINT_TRUSTED_PROXIES", "10.0.0.0/8, ::1"));
        pairs.push(("AVEMINT_LOGIN_RATE_LIMIT", "5"));
        let s = Settings::load(None, &env(&pairs)).expect("valid");
        assert!(s.security.allowed_origins.contains("http://localhost:5173"));
        assert!(s.security.trusted_proxies.contains("10.9.8.7".parse().expect("ip")));
        assert_eq!(s.security.login_rate_limit, RateLimit(5));
        let mut bad = minimal();
        bad.push(("AVEMINT_ALLOWED_ORIGINS", "*"));
        bad.push(("AVEMINT_TRUSTED_PROXIES", "proxy.example"));
        bad.push(("AVEMINT_LOGIN_RATE_LIMIT", "-1"));
        let e = Settings::load(None, &env(&bad)).expect_err("invalid");
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn ave_metadata_ttl_from_env_or_file_with_a_default_of_five_minutes() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.renewal.ave_metadata_ttl, Duration::from_secs(300));
        let s = load_file("ave_metadata_ttl = 60\n", &[]).expect("file key");
        assert_eq!(s.renewal.ave_metadata_ttl, Duration::from_secs(60));
        let s = load_file("ave_metadata_ttl = 60\n", &[("AVEMINT_AVE_METADATA_TTL", "2")]).expect("env wins");
        assert_eq!(s.renewal.ave_metadata_ttl, Duration::from_secs(2));
        for bad in ["0", "86401", "5m", "-1"] {
            let mut pairs = minimal();
            pairs.push(("AVEMINT_AVE_METADATA_TTL", bad));
            let err = Settings::load(None, &env(&pairs)).expect_err(bad).to_string();
            assert_eq!(
                err, "AVEMINT_AVE_METADATA_TTL: must be a whole number of seconds from 1 to 86400",
                "{bad}"
            );
        }
    }

    #[test]
    fn scopes_must_include_openid() {
        assert!(parse_scopes("profile email").is_err());
        assert_eq!(parse_scopes(" openid  email ").as_deref(), Ok("openid email"));
    }
}
