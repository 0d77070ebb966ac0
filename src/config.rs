//! Settings: read once from a TOML file and the environment (the environment
//! wins), validated into each component's own settings type, and never read
//! again from anywhere else.
//!
//! This is the composition root: it imports the components' settings types
//! (`ave::AveSettings`, `session::StoreSettings`, `mint::profiles::TokenSettings`,
//! …) and nothing below `startup` imports it. Pure parsers of a component's
//! values live with that component; here are only the sources (file,
//! environment, `_FILE` secrets), the defaults, and the error lines.
//!
//! Every problem found is reported, one line each, without echoing a secret.
//! Public names (environment variables and file keys) are documented in the
//! README and must stay stable. Adding a setting: its field in the component's
//! type, one `or`/`required`/`secret` line below, and the README row.
//!
//! The file is read as a `toml::Table`; each lookup takes its key out, so
//! whatever is left at the end is an unknown key and refused. `[[profiles]]` and `[[routes]]`
//! (nested tables) are deserialized with serde, which refuses their unknown keys.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use serde::Deserialize;

use crate::http::security::on_off;
use avemint_base::reload::SecretFile;
use avemint_base::web_url::{Issuer, PublicUrl, parse_web_url};
use avemint_core::ave::settings::{AveSettings, ClientOptions, DEFAULT_SCOPES, parse_client_secret, parse_scopes};
use avemint_core::mint::claims::ClaimTemplate;
use avemint_core::mint::hook::{self, FailurePolicy, HookSpec};
use avemint_core::mint::keys::rotation::parse_rotation;
use avemint_core::mint::keys::{Algorithm, KeyPolicy, KeysSettings, MAX_TOKEN_TTL};
use avemint_core::mint::profiles::{
    self, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_PROFILE_NAME, DEFAULT_TOKEN_TTL_SECS, ProfileSpec, TokenSettings,
};
use avemint_core::proxy::{RouteSpec, Routes, WebSocketLimits};
use avemint_core::session::{
    DEFAULT_MAX_CONNECTIONS, DatabaseUrl, RenewalSettings, SealingKeys, SessionSettings, StoreSettings,
};
use avemint_core::traffic::client_ip::TrustedProxies;
use avemint_core::traffic::rate_limit::RateLimit;

// The HTTP layer's settings types that `Settings` holds, public with it (the protocol side's own settings types
// are public in `avemint_core`).
pub use crate::http::admin::{AdminSettings, AdminToken};
pub use crate::http::cors::AllowedOrigins;
pub use crate::http::security::{Docs, SecuritySettings, TokenEndpoint};
pub use crate::server::ConnectionTimeouts;

/// The validated configuration of one avemint process: each component's own
/// settings, plus where to listen and where browsers reach avemint.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `AVEMINT_OPS_LISTEN`: a second listener for `/metrics`, `/healthz` and `/readyz` (then `/metrics`
    /// leaves the public listener).
    pub ops_listen: Option<SocketAddr>,
    pub public_url: PublicUrl,
    pub ave: AveSettings,
    pub store: StoreSettings,
    pub session: SessionSettings,
    pub renewal: RenewalSettings,
    pub token: TokenSettings,
    pub keys: KeysSettings,
    pub security: SecuritySettings,
    /// Proxy mode's routes (none: proxy mode is off).
    pub routes: Routes,
    /// How many proxied WebSockets may be open at once.
    pub websockets: WebSocketLimits,
    /// Defaults taken for what is usually set, one sentence each (e.g. "no AVEMINT_DATABASE_URL: …"), for the
    /// start-up summary.
    pub defaults: Vec<String>,
    /// The admin API's listener and token (none: no admin API, nothing bound).
    pub admin: Option<AdminSettings>,
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

/// An in-memory environment: tests, the demo and benchmarks build `Settings`
/// through the same loader as `serve`.
impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Settings {
    /// Loads settings for `avemint serve` from an optional TOML file and the environment.
    pub fn load(config_path: Option<&Path>, env: &dyn Env) -> Result<Settings, ConfigErrors> {
        let mut l = Loader::new(config_path, env)?;
        let settings = l.settings();
        l.finish(settings)
    }
}

/// Loads what the `avemint keys` commands need (the keys directory and the key
/// policy) from the same file and environment as `serve`, reading only those.
pub fn load_keys(config_path: Option<&Path>, env: &dyn Env) -> Result<KeysSettings, ConfigErrors> {
    let mut l = Loader::new(config_path, env)?;
    let keys = l.keys();
    // The other keys belong to `serve`: read them from the file alone (errors
    // ignored), so only keys `serve` would not know either are refused.
    let mut rest = Loader {
        env: &NoEnv,
        file: std::mem::take(&mut l.file),
        errors: Vec::new(),
        defaults: Vec::new(),
    };
    let _ = rest.settings();
    l.file = rest.file;
    l.finish(Some(keys))
}

/// An environment with nothing set.
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// How a setting is written in the TOML file.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A string.
    Text,
    /// A whole number.
    Number,
    /// An array of strings (comma-separated in the environment).
    List,
    /// A boolean (`true`/`false`, `on`/`off` or `1`/`0` in the environment).
    Switch,
}

impl Shape {
    /// The file value as the text the environment would hold, or `None` if it has another type.
    fn text(self, value: toml::Value) -> Option<String> {
        match (self, value) {
            (Shape::Text, toml::Value::String(s)) => Some(s),
            (Shape::Number, toml::Value::Integer(n)) => Some(n.to_string()),
            (Shape::Switch, toml::Value::Boolean(b)) => Some(b.to_string()),
            (Shape::Switch, toml::Value::String(s)) => Some(s),
            (Shape::List, toml::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Shape::Text => "must be a string",
            Shape::Number => "must be a whole number",
            Shape::List => "must be an array of strings",
            Shape::Switch => "must be true or false",
        }
    }
}

/// A value and where it came from, for error messages.
struct Sourced {
    value: String,
    origin: String,
}

/// Reads settings from the environment and the file's table, recording every problem.
struct Loader<'a> {
    env: &'a dyn Env,
    /// The file's top-level keys not read yet.
    file: toml::Table,
    errors: Vec<String>,
    /// Defaults taken for what is usually set (see `Settings::defaults`).
    defaults: Vec<String>,
}

impl<'a> Loader<'a> {
    /// Reads the file named by `--config` or `AVEMINT_CONFIG`, if any.
    fn new(config_path: Option<&Path>, env: &'a dyn Env) -> Result<Self, ConfigErrors> {
        let path = config_path
            .map(Path::to_path_buf)
            .or_else(|| env.var("AVEMINT_CONFIG").map(PathBuf::from));
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ConfigErrors(vec![format!("config file {}: cannot read: {}", p.display(), e.kind())])
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigErrors(vec![format!("config file {}: {}", p.display(), e.message())]))?
            }
            None => toml::Table::new(),
        };
        Ok(Self {
            env,
            file,
            errors: Vec::new(),
            defaults: Vec::new(),
        })
    }

    /// `built` if nothing went wrong; otherwise every problem, and every file key nobody read.
    fn finish<T>(mut self, built: Option<T>) -> Result<T, ConfigErrors> {
        for key in self.file.keys() {
            self.errors.push(format!("config file: unknown key `{key}`"));
        }
        match built {
            Some(t) if self.errors.is_empty() => Ok(t),
            _ => Err(ConfigErrors(self.errors)),
        }
    }

    /// Takes `file_key` out of the file (type-checked) and reads `env_name`; the environment wins.
    fn pick(&mut self, env_name: &str, file_key: &str, shape: Shape) -> Option<Sourced> {
        let origin = format!("config file `{file_key}`");
        let file = self.take_file(file_key, shape);
        match self.env.var(env_name) {
            Some(value) => Some(Sourced {
                value,
                origin: env_name.to_owned(),
            }),
            None => file.map(|value| Sourced { value, origin }),
        }
    }

    fn check<T, E: Display>(&mut self, v: Sourced, parse: impl FnOnce(&str) -> Result<T, E>) -> Option<T> {
        parse(&v.value)
            .map_err(|e| self.errors.push(format!("{}: {e}", v.origin)))
            .ok()
    }

    /// An optional setting: `None` when unset (or invalid: then the problem is recorded).
    fn optional<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let v = self.pick(env_name, file_key, shape)?;
        self.check(v, parse)
    }

    /// A setting with a default (also returned when the value is invalid: the problem is recorded).
    fn or<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> T {
        self.optional(shape, env_name, file_key, parse).unwrap_or(default)
    }

    /// A required text setting.
    fn required<T, E: Display>(
        &mut self,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let v = self.pick(env_name, file_key, Shape::Text);
        self.check_required(v, env_name, parse)
    }

    /// `v` parsed, or a "required" line when it is absent.
    fn check_required<T, E: Display>(
        &mut self,
        v: Option<Sourced>,
        env_name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match v {
            Some(v) => self.check(v, parse),
            None => {
                self.errors.push(format!("{env_name} is required"));
                None
            }
        }
    }

    /// A required secret: see `secret_or_file`.
    fn secret<T, E: Display>(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<(T, Option<SecretFile>)> {
        let (v, file) = match self.secret_or_file(shape, env_name, file_key) {
            Ok(Some((v, file))) => (Some(v), file),
            Ok(None) => (None, None),
            Err(()) => return None,
        };
        self.check_required(v, env_name, parse).map(|t| (t, file))
    }

    /// A secret from `NAME` or `NAME_FILE` in the environment, else from the file's `key` or `key_file`. Each pair
    /// is one setting: giving both of one pair is refused, naming both. `Ok(None)`: not set; `Err`: recorded.
    fn secret_or_file(
        &mut self,
        shape: Shape,
        env_name: &str,
        file_key: &str,
    ) -> Result<Option<(Sourced, Option<SecretFile>)>, ()> {
        let path_key = format!("{file_key}_file");
        let path_env = format!("{env_name}_FILE");
        let in_file = self.take_file(file_key, shape);
        let path_in_file = self.take_file(&path_key, Shape::Text);
        let in_env = self.env.var(env_name);
        let path_in_env = self.env.var(&path_env);
        let (value, path) = if in_env.is_some() || path_in_env.is_some() {
            let value = in_env.map(|value| Sourced {
                value,
                origin: env_name.to_owned(),
            });
            let path = path_in_env.map(|value| Sourced {
                value,
                origin: path_env.clone(),
            });
            (value, path)
        } else {
            let value = in_file.map(|value| Sourced {
                value,
                origin: format!("config file `{file_key}`"),
            });
            let path = path_in_file.map(|value| Sourced {
                value,
                origin: format!("config file `{path_key}`"),
            });
            (value, path)
        };
        self.one_of(value, path)
    }

    /// A value given inline or as a file's path, not both.
    fn one_of(
        &mut self,
        value: Option<Sourced>,
        path: Option<Sourced>,
    ) -> Result<Option<(Sourced, Option<SecretFile>)>, ()> {
        match (value, path) {
            (Some(v), Some(p)) => {
                self.errors.push(format!(
                    "{} and {} are both set; set only one of them",
                    v.origin, p.origin
                ));
                Err(())
            }
            (Some(v), None) => Ok(Some((v, None))),
            (None, Some(p)) => match SecretFile::read(Path::new(&p.value)) {
                Ok((value, file)) => Ok(Some((
                    Sourced {
                        value,
                        origin: p.origin,
                    },
                    Some(file),
                ))),
                Err(kind) => {
                    self.errors
                        .push(format!("{}: cannot read {}: {kind}", p.origin, p.value));
                    Err(())
                }
            },
            (None, None) => Ok(None),
        }
    }

    /// Takes `key` out of the file, type-checked.
    fn take_file(&mut self, key: &str, shape: Shape) -> Option<String> {
        let v = self.file.remove(key)?;
        let text = shape.text(v);
        if text.is_none() {
            self.errors.push(format!("config file `{key}`: {}", shape.expected()));
        }
        text
    }

    /// True when neither the environment nor the file sets `env_name` / `file_key` (or their `_FILE` forms).
    fn unset(&self, env_name: &str, file_key: &str) -> bool {
        self.env.var(env_name).is_none()
            && self.env.var(&format!("{env_name}_FILE")).is_none()
            && !self.file.contains_key(file_key)
            && !self.file.contains_key(&format!("{file_key}_file"))
    }
}

/// The settings of each component, in README order.
impl Loader<'_> {
    #[rustfmt::skip] // one line per setting: kept as a table
    fn settings(&mut self) -> Option<Settings> {
        use Shape::{List, Number, Text};
        let client_id = self.required("AVE_CLIENT_ID", "client_id", non_empty);
        let client_secret = self.secret(Text, "AVE_CLIENT_SECRET", "client_secret", parse_client_secret);
        let issuer = self.or(Text, "AVE_ISSUER", "issuer", Issuer::default(), Issuer::parse);
        let public_url = self.required("AVEMINT_PUBLIC_URL", "public_url", PublicUrl::parse);
        if self.unset("AVEMINT_LISTEN", "listen") {
            self.defaults.push(format!("no AVEMINT_LISTEN: listening on {}", SocketAddr::from(DEFAULT_LISTEN)));
        }
        let listen = self.or(Text, "AVEMINT_LISTEN", "listen", DEFAULT_LISTEN.into(), parse_listen);
        let ops_listen = self.optional(Text, "AVEMINT_OPS_LISTEN", "ops_listen", parse_listen);
        if ops_listen.is_some_and(|ops| ops == listen && ops.port() != 0) {
            self.errors.push("AVEMINT_OPS_LISTEN: must differ from AVEMINT_LISTEN".into());
        }
        let database_url = self.database_url();
        let sealing_keys = self.secret(List, "AVEMINT_SESSION_KEYS", "session_keys", SealingKeys::parse);
        if self.unset("AVEMINT_KEYS_DIR", "keys_dir") {
            self.defaults.push("no AVEMINT_KEYS_DIR: signing keys in ./keys (the working directory)".into());
        }
        let keys = self.keys();
        let token = self.token(public_url.as_ref());
        let scopes = self.or(Text, "AVEMINT_SCOPES", "scopes", DEFAULT_SCOPES.into(), parse_scopes);
        let d = SessionSettings::default();
        let session = SessionSettings {
            idle_timeout: self.or(Number, "AVEMINT_SESSION_IDLE_TIMEOUT", "session_idle_timeout", d.idle_timeout, seconds(366 * 86_400)),
            lifetime: self.or(Number, "AVEMINT_SESSION_LIFETIME", "session_lifetime", d.lifetime, seconds(366 * 86_400)),
            max_sessions_per_user: self.or(Number, "AVEMINT_MAX_SESSIONS_PER_USER", "max_sessions_per_user", d.max_sessions_per_user, whole(0, 100_000)),
        };
        let d = RenewalSettings::default();
        let renewal = RenewalSettings {
            skew: self.or(Number, "AVEMINT_REFRESH_SKEW", "refresh_skew", d.skew, secs(whole(0, 3600))),
            session_cache_ttl: self.or(Number, "AVEMINT_SESSION_CACHE_TTL_MS", "session_cache_ttl_ms", d.session_cache_ttl, millis(whole(0, 1000))),
            ..d
        };
        let d = ClientOptions::default();
        let options = ClientOptions {
            token_budget_per_minute: self.or(Number, "AVEMINT_AVE_TOKEN_BUDGET", "ave_token_budget", d.token_budget_per_minute, whole(1, 10_000)),
            refresh_timeout: self.or(Number, "AVEMINT_AVE_REFRESH_TIMEOUT", "ave_refresh_timeout", d.refresh_timeout, secs(whole(1, 600))),
            metadata_ttl: self.or(Number, "AVEMINT_AVE_METADATA_TTL", "ave_metadata_ttl", d.metadata_ttl, seconds(86_400)),
            ..d
        };
        let max_connections = self.or(Number, "AVEMINT_DATABASE_MAX_CONNECTIONS", "database_max_connections", DEFAULT_MAX_CONNECTIONS, whole(1, 1000));
        let security = self.security();
        let routes = self.routes(token.as_ref());
        // A route's profile is not mintable by page script unless it says `browser = true`.
        let token = token.map(|t| t.settle_browser(routes.all().iter().map(|r| r.profile.as_deref())));
        let d = WebSocketLimits::default();
        let websockets = WebSocketLimits {
            per_session: self.or(Number, "AVEMINT_MAX_WEBSOCKETS_PER_SESSION", "max_websockets_per_session", d.per_session, whole(1, 10_000)),
            instance: self.or(Number, "AVEMINT_MAX_WEBSOCKETS", "max_websockets", d.instance, whole(1, 1_000_000)),
        };
        let admin = self.admin(listen);
        Some(Settings {
            listen,
            ops_listen,
            ave: AveSettings {
                client_id: client_id?,
                client_secret_file: client_secret.as_ref().and_then(|(_, f)| f.clone()),
                client_secret: client_secret?.0,
                issuer,
                scopes,
                options,
            },
            store: StoreSettings {
                database_url,
                max_connections,
                keys_file: sealing_keys.as_ref().and_then(|(_, f)| f.clone()),
                keys: sealing_keys?.0,
            },
            public_url: public_url?,
            session,
            renewal,
            token: token?,
            keys,
            security,
            routes,
            websockets,
            defaults: std::mem::take(&mut self.defaults),
            admin,
        })
    }

    /// `AVEMINT_ADMIN_LISTEN` and its token (`AVEMINT_ADMIN_TOKEN` / `_FILE`): both, or no admin API.
    fn admin(&mut self, public: SocketAddr) -> Option<AdminSettings> {
        use Shape::Text;
        let listen = self.optional(Text, "AVEMINT_ADMIN_LISTEN", "admin_listen", parse_listen);
        let token = match self.secret_or_file(Text, "AVEMINT_ADMIN_TOKEN", "admin_token") {
            Ok(Some((v, _))) => self.check(v, AdminToken::parse).map(Some).ok_or(()),
            Ok(None) => Ok(None),
            Err(()) => Err(()),
        };
        match (listen, token) {
            (Some(listen), _) if listen == public => {
                self.errors.push(
                    "AVEMINT_ADMIN_LISTEN: must differ from AVEMINT_LISTEN (the admin API is never on the public listener)"
                        .into(),
                );
                None
            }
            (Some(listen), Ok(Some(token))) => Some(AdminSettings { listen, token }),
            (Some(_), Ok(None)) => {
                self.errors.push(
                    "AVEMINT_ADMIN_LISTEN is set: AVEMINT_ADMIN_TOKEN (or AVEMINT_ADMIN_TOKEN_FILE) is required".into(),
                );
                None
            }
            _ => None,
        }
    }

    /// `AVEMINT_DATABASE_URL` or `AVEMINT_DATABASE_URL_FILE` (a URL may carry a password); SQLite in the working
    /// directory by default.
    fn database_url(&mut self) -> DatabaseUrl {
        match self.secret_or_file(Shape::Text, "AVEMINT_DATABASE_URL", "database_url") {
            Ok(Some((v, _))) => self.check(v, DatabaseUrl::parse).unwrap_or_default(),
            Ok(None) => {
                let d = DatabaseUrl::default();
                self.defaults.push(format!(
                    "no AVEMINT_DATABASE_URL: using {} in the working directory",
                    d.describe()
                ));
                d
            }
            Err(()) => DatabaseUrl::default(),
        }
    }

    /// `AVEMINT_KEYS_DIR`, `AVEMINT_KEY_ALGORITHM` and `AVEMINT_KEY_ROTATION` (shared by `serve` and `keys`).
    #[rustfmt::skip] // one line per setting: kept as a table
    fn keys(&mut self) -> KeysSettings {
        use Shape::Text;
        let d = KeyPolicy::default();
        KeysSettings {
            dir: self.or(Text, "AVEMINT_KEYS_DIR", "keys_dir", PathBuf::from("keys"), PathBuf::from_str),
            policy: KeyPolicy {
                algorithm: self.or(Text, "AVEMINT_KEY_ALGORITHM", "key_algorithm", d.algorithm, str::parse::<Algorithm>),
                rotation: self.or(Text, "AVEMINT_KEY_ROTATION", "key_rotation", d.rotation, parse_rotation),
            },
        }
    }

    /// `AVEMINT_ALLOWED_ORIGINS`, `AVEMINT_TRUSTED_PROXIES`, `AVEMINT_LOGIN_RATE_LIMIT`, the connection timeouts, `AVEMINT_DOCS`.
    #[rustfmt::skip] // one line per setting: kept as a table
    fn security(&mut self) -> SecuritySettings {
        use Shape::{List, Number, Text};
        let d = SecuritySettings::default();
        let t = ConnectionTimeouts::default();
        SecuritySettings {
            allowed_origins: self.or(List, "AVEMINT_ALLOWED_ORIGINS", "allowed_origins", d.allowed_origins, AllowedOrigins::parse),
            trusted_proxies: self.or(List, "AVEMINT_TRUSTED_PROXIES", "trusted_proxies", d.trusted_proxies, TrustedProxies::parse),
            login_rate_limit: self.or(Number, "AVEMINT_LOGIN_RATE_LIMIT", "login_rate_limit", d.login_rate_limit, RateLimit::parse),
            connection_timeouts: ConnectionTimeouts {
                header_read: self.or(Number, "AVEMINT_HEADER_READ_TIMEOUT", "header_read_timeout", t.header_read, seconds(600)),
                keep_alive: self.or(Number, "AVEMINT_KEEP_ALIVE_TIMEOUT", "keep_alive_timeout", t.keep_alive, seconds(3600)),
            },
            docs: self.or(Text, "AVEMINT_DOCS", "docs", d.docs, Docs::parse),
            token_endpoint: self.or(Shape::Switch, "AVEMINT_TOKEN_ENDPOINT", "token_endpoint", d.token_endpoint, TokenEndpoint::parse),
        }
    }
}

/// Proxy mode's routes: `AVEMINT_ROUTES` (a JSON array) or the file's `[[routes]]`; the environment wins.
impl Loader<'_> {
    fn routes(&mut self, token: Option<&TokenSettings>) -> Routes {
        let file = self.file.remove("routes");
        let (origin, specs) = match (self.env.var("AVEMINT_ROUTES"), file) {
            (Some(json), _) => (
                "AVEMINT_ROUTES",
                serde_json::from_str::<Vec<RouteSpec>>(&json).map_err(|e| e.to_string()),
            ),
            (None, Some(list)) => (
                "config file `routes`",
                Vec::<RouteSpec>::deserialize(list).map_err(|e| e.message().to_owned()),
            ),
            (None, None) => return Routes::default(),
        };
        // With invalid token settings, their problems are reported already: profile names are not checked then.
        let names: Option<Vec<&str>> = token.map(|t| t.profiles().iter().map(|p| p.name.as_str()).collect());
        let built = specs
            .map_err(|e| vec![e])
            .and_then(|specs| Routes::build(specs, names.as_deref()));
        built.unwrap_or_else(|errors| {
            self.errors.extend(errors.into_iter().map(|e| format!("{origin}: {e}")));
            Routes::default()
        })
    }
}

/// Default `AVEMINT_LISTEN`.
const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);

fn parse_listen(s: &str) -> Result<SocketAddr, &'static str> {
    s.trim()
        .parse()
        .map_err(|_| "must be an address and port such as 127.0.0.1:8080")
}
/// The flat keys describing the env-only default profile.
const FLAT_TOKEN_KEYS: [&str; 4] = ["token_ttl", "token_audience", "token_claims", "token_browser"];

/// The token profiles: `[[profiles]]` from the file, or the single `default`
/// profile of env-only deployments; `AVEMINT_TOKEN_*` override the default one.
impl Loader<'_> {
    fn token(&mut self, public_url: Option<&PublicUrl>) -> Option<TokenSettings> {
        use Shape::{Number, Text};
        let max_token_bytes = self.or(
            Number,
            "AVEMINT_TOKEN_MAX_BYTES",
            "max_token_bytes",
            DEFAULT_MAX_TOKEN_BYTES,
            |s| match s.trim().parse::<usize>() {
                Ok(n) if (512..=65_536).contains(&n) => Ok(n),
                _ => Err("must be a whole number of bytes from 512 to 65536"),
            },
        );
        let flat_in_file = FLAT_TOKEN_KEYS.map(|k| (k, self.file.contains_key(k)));
        let list = self.file.remove("profiles");
        let ttl = self.optional(
            Number,
            "AVEMINT_TOKEN_TTL",
            "token_ttl",
            seconds(MAX_TOKEN_TTL.as_secs()),
        );
        let audience = self.optional(Text, "AVEMINT_TOKEN_AUDIENCE", "token_audience", non_empty);
        let browser = self.optional(Shape::Switch, "AVEMINT_TOKEN_BROWSER", "token_browser", on_off);
        let claims = self.token_claims();
        let Some(list) = list else {
            // Env-only: one profile, `default`.
            let audience = audience.or_else(|| public_url.map(|p| p.as_str().to_owned()))?;
            let spec = ProfileSpec {
                name: DEFAULT_PROFILE_NAME.to_owned(),
                audience,
                ttl: ttl.unwrap_or(Duration::from_secs(DEFAULT_TOKEN_TTL_SECS)),
                claims: claims.unwrap_or_default(),
                default: true,
                hook: None,
                introspection_secret: None,
                browser,
            };
            return self.token_settings(vec![spec], max_token_bytes);
        };
        for (key, present) in flat_in_file {
            if present {
                self.errors.push(format!(
                    "config file `{key}`: cannot be combined with [[profiles]]; set it on the default profile"
                ));
            }
        }
        let list = Vec::<FileProfile>::deserialize(list)
            .map_err(|e| self.errors.push(format!("config file `profiles`: {}", e.message())))
            .ok()?;
        let count = list.len();
        let mut specs: Vec<ProfileSpec> = list.into_iter().filter_map(|p| self.profile(p, count == 1)).collect();
        // The environment wins over the default profile's values.
        if let Some(d) = specs.iter_mut().find(|p| p.default) {
            d.ttl = ttl.unwrap_or(d.ttl);
            d.audience = audience.unwrap_or_else(|| d.audience.clone());
            d.claims = claims.unwrap_or_else(|| d.claims.clone());
            d.browser = browser.or(d.browser);
        }
        // The set as a whole is checked only when every profile parsed, so one mistake is one line.
        if specs.len() != count {
            return None;
        }
        self.token_settings(specs, max_token_bytes)
    }

    fn token_settings(&mut self, specs: Vec<ProfileSpec>, max_token_bytes: usize) -> Option<TokenSettings> {
        TokenSettings::new(specs, max_token_bytes)
            .map_err(|errors| {
                self.errors
                    .extend(errors.into_iter().map(|e| format!("config file {e}")))
            })
            .ok()
    }

    /// `AVEMINT_TOKEN_CLAIMS` (JSON) or the file's `[token_claims]` table.
    fn token_claims(&mut self) -> Option<ClaimTemplate> {
        let file = self.file.remove("token_claims");
        if let Some(text) = self.env.var("AVEMINT_TOKEN_CLAIMS") {
            let v = Sourced {
                value: text,
                origin: "AVEMINT_TOKEN_CLAIMS".into(),
            };
            return self.check(v, ClaimTemplate::parse_json);
        }
        match file? {
            toml::Value::Table(table) => self.claims_table("config file `token_claims`", table),
            _ => {
                self.errors.push("config file `token_claims`: must be a table".into());
                None
            }
        }
    }

    fn claims_table(&mut self, origin: &str, table: toml::Table) -> Option<ClaimTemplate> {
        let value = serde_json::to_value(table).unwrap_or(serde_json::Value::Null);
        ClaimTemplate::from_value(value)
            .map_err(|e| self.errors.push(format!("{origin}: {e}")))
            .ok()
    }

    /// One `[[profiles]]` table; `None` (with the problems recorded) if it is not usable.
    fn profile(&mut self, p: FileProfile, single: bool) -> Option<ProfileSpec> {
        let origin = format!("config file profile `{}`", p.name);
        let before = self.errors.len();
        if let Err(e) = profiles::parse_name(&p.name) {
            self.errors.push(format!("{origin}: `name` {e}"));
        }
        if non_empty(&p.audience).is_err() {
            self.errors.push(format!("{origin}: `audience` must not be empty"));
        }
        let ttl = match p.ttl.unwrap_or(DEFAULT_TOKEN_TTL_SECS) {
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
        let introspection_secret = p.introspection.and_then(|i| self.introspection(&origin, i));
        let claims = claims.filter(|_| self.errors.len() == before)?;
        Some(ProfileSpec {
            name: p.name,
            audience: p.audience.trim().to_owned(),
            ttl,
            claims,
            default: p.default || single,
            hook: hook.flatten(),
            introspection_secret,
            browser: p.browser,
        })
    }

    /// A `[profiles.introspection]` table: the secret callers present to `POST /oauth/introspect`
    /// (`secret` or `secret_file`, exactly one, at least 32 characters; read at start-up). Never echoed.
    fn introspection(&mut self, origin: &str, i: FileIntrospection) -> Option<avemint_base::secret::Secret<String>> {
        let origin = format!("{origin}: `introspection`");
        let inline = i.secret.map(|value| Sourced {
            value,
            origin: format!("{origin}: `secret`"),
        });
        let path = i.secret_file.map(|p| Sourced {
            value: p.display().to_string(),
            origin: format!("{origin}: `secret_file`"),
        });
        match self.one_of(inline, path) {
            Ok(Some((v, _))) if v.value.len() >= 32 => Some(avemint_base::secret::Secret::new(v.value)),
            Ok(Some(_)) => {
                self.errors.push(format!(
                    "{origin}: the secret must be at least 32 characters (e.g. `openssl rand -hex 32`)"
                ));
                None
            }
            Ok(None) => {
                self.errors
                    .push(format!("{origin}: set exactly one of `secret` and `secret_file`"));
                None
            }
            Err(()) => None,
        }
    }

    fn hook(&mut self, origin: &str, h: FileHook) -> Option<HookSpec> {
        let origin = format!("{origin}: `hook`");
        let before = self.errors.len();
        let url = parse_web_url(&h.url)
            .map_err(|e| self.errors.push(format!("{origin}: `url` {e}")))
            .ok();
        let inline = h.secret.map(|value| Sourced {
            value,
            origin: format!("{origin}: `secret`"),
        });
        let path = h.secret_file.map(|p| Sourced {
            value: p.display().to_string(),
            origin: format!("{origin}: `secret_file`"),
        });
        let (secret, secret_file) = match self.one_of(inline, path) {
            Ok(Some((v, file))) => (self.check(v, hook::parse_secret), file),
            Ok(None) => {
                self.errors
                    .push(format!("{origin}: set exactly one of `secret` and `secret_file`"));
                (None, None)
            }
            Err(()) => (None, None),
        };
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
                secret,
                secret_file,
                timeout,
                cache_ttl,
                on_failure,
            }),
            _ => None,
        }
    }
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
    introspection: Option<FileIntrospection>,
    browser: Option<bool>,
}

/// A `[profiles.introspection]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIntrospection {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
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

/// A whole number in `min..=max`.
fn whole<T: TryFrom<u64>>(min: u64, max: u64) -> impl Fn(&str) -> Result<T, String> {
    move |s| match s.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)) {
        Some(n) => T::try_from(n).map_err(|_| format!("must be a whole number from {min} to {max}")),
        None => Err(format!("must be a whole number from {min} to {max}")),
    }
}

/// A duration of `n` seconds, `n` as `parse` reads it.
fn secs(parse: impl Fn(&str) -> Result<u64, String>) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| parse(s).map(Duration::from_secs)
}

/// A duration of `n` milliseconds, `n` as `parse` reads it.
fn millis(parse: impl Fn(&str) -> Result<u64, String>) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| parse(s).map(Duration::from_millis)
}

/// Whole seconds from 1 to `max`.
fn seconds(max: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 && n <= max => Ok(Duration::from_secs(n)),
        _ => Err(format!("must be a whole number of seconds from 1 to {max}")),
    }
}

fn non_empty(s: &str) -> Result<String, &'static str> {
    match s.trim() {
        "" => Err("must not be empty"),
        t => Ok(t.to_owned()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use avemint_base::web_url::DEFAULT_ISSUER;

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
        assert_eq!(s.ave.issuer.as_str(), DEFAULT_ISSUER);
        assert_eq!(s.public_url.as_str(), "https://app.example.com");
        assert_eq!(s.public_url.redirect_uri(), "https://app.example.com/auth/callback");
        assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"));
        let token = s.token.default_profile();
        assert_eq!(token.ttl, Duration::from_secs(300));
        assert_eq!(token.audience, "https://app.example.com");
        assert_eq!(token.name, "default");
        assert_eq!(s.token.profiles().len(), 1);
        assert_eq!(s.ave.scopes, DEFAULT_SCOPES);
        assert_eq!(s.store.database_url, DatabaseUrl::Sqlite("sqlite://avemint.db".into()));
        assert_eq!(s.keys.dir, PathBuf::from("keys"));
        assert_eq!(s.keys.policy, KeyPolicy::default());
        assert_eq!(s.keys.policy.algorithm, Algorithm::Es256);
        assert_eq!(s.keys.policy.rotation, None);
    }

    #[test]
    fn store_pool_and_refresh_timeout_parse_and_report_problems() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.store.max_connections, 16);
        assert_eq!(s.ave.options.refresh_timeout, ClientOptions::default().refresh_timeout);
        let mut e = minimal();
        e.push(("AVEMINT_DATABASE_MAX_CONNECTIONS", "40"));
        e.push(("AVEMINT_AVE_REFRESH_TIMEOUT", "5"));
        let s = Settings::load(None, &env(&e)).expect("valid");
        assert_eq!(s.store.max_connections, 40);
        assert_eq!(s.ave.options.refresh_timeout, Duration::from_secs(5));
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
        assert_eq!(s.keys.policy.algorithm, Algorithm::EdDsa);
        assert_eq!(s.keys.policy.rotation, Some(Duration::from_secs(30 * 86_400)));
        let k = load_keys(
            None,
            &env(&[("AVEMINT_KEY_ALGORITHM", "rs256"), ("AVEMINT_KEYS_DIR", "/k")]),
        )
        .expect("keys settings need no client settings");
        assert_eq!((k.dir, k.policy.algorithm), (PathBuf::from("/k"), Algorithm::Rs256));
        let err = load_keys(
            None,
            &env(&[("AVEMINT_KEY_ALGORITHM", "hs256"), ("AVEMINT_KEY_ROTATION", "5m")]),
        )
        .expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].contains("AVEMINT_KEY_ALGORITHM") && err.0[1].contains("AVEMINT_KEY_ROTATION"));
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
        assert_eq!(s.token.default_profile().ttl, Duration::from_secs(60));
        assert!(!s.token.default_profile().claims.is_empty());
    }

    #[test]
    fn every_file_pair_refuses_both_and_the_database_url_reads_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url_path = dir.path().join("db");
        std::fs::write(
            &url_path,
            "postgres://avemint:hunter2@db.internal:6543/sessions?sslmode=require\n",
        )
        .expect("write");
        let url_path = url_path.to_str().expect("utf8");
        let mut pairs = minimal();
        pairs.push(("AVEMINT_DATABASE_URL_FILE", url_path));
        let s = Settings::load(None, &env(&pairs)).expect("valid");
        assert_eq!(s.store.database_url.describe(), "postgres://db.internal:6543/sessions");
        assert!(
            s.defaults.iter().all(|d| !d.contains("DATABASE_URL")),
            "{:?}",
            s.defaults
        );
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert!(
            s.defaults
                .contains(&"no AVEMINT_DATABASE_URL: using sqlite://avemint.db in the working directory".to_owned()),
            "{:?}",
            s.defaults
        );
        // Both of one pair, in the environment: one line naming both, for each pair.
        for (name, value) in [
            ("AVE_CLIENT_SECRET", "x"),
            ("AVEMINT_SESSION_KEYS", KEY),
            ("AVEMINT_DATABASE_URL", "sqlite://a.db"),
        ] {
            let file_name = format!("{name}_FILE");
            let mut pairs = minimal();
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, value));
            pairs.push((&file_name, url_path));
            let e = Settings::load(None, &env(&pairs)).expect_err("both");
            assert_eq!(
                e.0,
                vec![format!("{name} and {name}_FILE are both set; set only one of them")]
            );
        }
        // Both of one pair in the file.
        let e = load_file(
            &format!("database_url = \"sqlite://a.db\"\ndatabase_url_file = \"{url_path}\"\n"),
            &[],
        )
        .expect_err("both");
        assert_eq!(
            e.0,
            vec!["config file `database_url` and config file `database_url_file` are both set; set only one of them"]
        );
        // The environment's pair wins over the file's.
        let s = load_file(
            "database_url = \"sqlite://file.db\"\n",
            &[("AVEMINT_DATABASE_URL_FILE", url_path)],
        )
        .expect("env wins");
        assert!(matches!(s.store.database_url, DatabaseUrl::Postgres(_)));
        // Unreadable: named, and the password never appears anywhere.
        let mut pairs = minimal();
        pairs.push(("AVEMINT_DATABASE_URL_FILE", "/nonexistent/avemint-db-url"));
        let e = Settings::load(None, &env(&pairs)).expect_err("unreadable");
        assert_eq!(
            e.0,
            vec!["AVEMINT_DATABASE_URL_FILE: cannot read /nonexistent/avemint-db-url: entity not found"]
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("avemint.toml");
        std::fs::write(&cfg, "clientid = \"typo\"\n").expect("write");
        let e = Settings::load(Some(&cfg), &env(&[])).expect_err("invalid");
        assert!(e.to_string().contains("clientid"), "{e}");
    }

    #[test]
    fn file_keys_of_the_wrong_type_and_unknown_keys_are_reported_with_the_rest() {
        let e = load_file(
            "token_ttl = \"60\"\nsession_keys = \"not-a-list\"\nclientid = \"typo\"\n",
            &[("AVEMINT_DOCS", "maybe")],
        )
        .expect_err("invalid");
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(
            e.0.contains(&"config file `token_ttl`: must be a whole number".to_owned()),
            "{e}"
        );
        assert!(
            e.0.contains(&"config file `session_keys`: must be an array of strings".to_owned()),
            "{e}"
        );
        assert!(
            e.to_string().contains("`clientid`") && e.to_string().contains("AVEMINT_DOCS"),
            "{e}"
        );
    }

    #[test]
    fn the_keys_commands_accept_every_serve_key_and_refuse_unknown_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("avemint.toml");
        std::fs::write(&cfg, format!("client_id = \"x\"\nkeys_dir = \"/k\"\n{TWO}")).expect("write");
        let k = load_keys(Some(&cfg), &env(&[])).expect("serve keys are known");
        assert_eq!(k.dir, PathBuf::from("/k"));
        std::fs::write(&cfg, "keys_dir = \"/k\"\nkey_rotaton = \"30d\"\n").expect("write");
        let e = load_keys(Some(&cfg), &env(&[])).expect_err("typo");
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.0[0].contains("`key_rotaton`"), "{e}");
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
    fn profiles_load_with_defaults_and_the_marked_one_is_the_default() {
        let s = load_file(TWO, &[]).expect("valid");
        let t = &s.token;
        assert_eq!(t.profiles().len(), 2);
        let d = t.default_profile();
        assert_eq!((d.audience.as_str(), d.ttl), ("https://web", Duration::from_secs(600)));
        assert!(!d.claims.is_empty());
        assert_eq!(t.max_token_bytes(), DEFAULT_MAX_TOKEN_BYTES);
        let orders = &t.profiles()[1];
        assert!(!orders.default);
        assert_eq!(orders.ttl, Duration::from_secs(300));
        let hook = orders.hook.as_ref().expect("hook");
        assert_eq!(hook.url.as_str(), "https://hooks.example.com/roles");
        assert_eq!(hook.timeout, Duration::from_millis(2000));
        assert_eq!(hook.cache_ttl, Duration::from_secs(60));
        assert_eq!(hook.on_failure, FailurePolicy::Deny);
        // A single profile is the default without saying so.
        let one = load_file("[[profiles]]\nname = \"a\"\naudience = \"x\"\n", &[]).expect("valid");
        assert!(one.token.profiles()[0].default);
        assert_eq!(one.token.default_profile().audience, "x");
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
        let web = &s.token.profiles()[0];
        assert_eq!(
            (web.audience.as_str(), web.ttl),
            ("https://env", Duration::from_secs(30))
        );
        assert!(web.claims.is_empty());
        assert_eq!(s.token.profiles()[1].audience, "orders-api", "other profiles unchanged");
        assert_eq!(s.token.default_profile().audience, "https://env");
        assert_eq!(s.token.max_token_bytes(), 2048);
        // An override that collides with another profile's audience is refused.
        let e = load_file(TWO, &[("AVEMINT_TOKEN_AUDIENCE", "orders-api")]).expect_err("duplicate");
        assert!(e.to_string().contains("already the audience"), "{e}");
    }

    #[test]
    fn the_ops_listener_is_optional_and_must_differ_from_the_public_one() {
        assert_eq!(
            Settings::load(None, &env(&minimal())).expect("default").ops_listen,
            None
        );
        let mut e = minimal();
        e.push(("AVEMINT_OPS_LISTEN", "127.0.0.1:9091"));
        let s = Settings::load(None, &env(&e)).expect("set");
        assert_eq!(s.ops_listen, Some("127.0.0.1:9091".parse().expect("addr")));
        let file = load_file("ops_listen = \"0.0.0.0:9100\"\n", &[]).expect("file key");
        assert_eq!(file.ops_listen, Some("0.0.0.0:9100".parse().expect("addr")));
        for bad in ["9091", "127.0.0.1:8080"] {
            let mut e = minimal();
            e.push(("AVEMINT_OPS_LISTEN", bad));
            let err = Settings::load(None, &env(&e)).expect_err(bad).to_string();
            assert!(err.contains("AVEMINT_OPS_LISTEN"), "{err}");
        }
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
            (hook("secret = \"0123456789abcdef0123456789abcdef\"\nsecret_file = \"/x\""), "`secret` and config file profile `a`: `hook`: `secret_file` are both set"),
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
    fn websocket_limits_from_the_file_or_the_environment() {
        let s = Settings::load(None, &env(&minimal())).expect("defaults");
        assert_eq!((s.websockets.per_session, s.websockets.instance), (8, 1024));
        let s = load_file(
            "max_websockets_per_session = 2\nmax_websockets = 50\n",
            &[("AVEMINT_MAX_WEBSOCKETS", "70")],
        )
        .expect("valid");
        assert_eq!((s.websockets.per_session, s.websockets.instance), (2, 70));
        let e = load_file("", &[("AVEMINT_MAX_WEBSOCKETS_PER_SESSION", "0")]).expect_err("zero");
        assert!(e.0[0].starts_with("AVEMINT_MAX_WEBSOCKETS_PER_SESSION"), "{e}");
    }

    #[test]
    fn routes_from_the_file_or_the_environment_with_every_problem_reported() {
        assert!(
            Settings::load(None, &env(&minimal()))
                .expect("valid")
                .routes
                .all()
                .is_empty()
        );
        let file = "[[routes]]\npath = \"/api/orders\"\nupstream = \"https://orders.internal:8443/v1\"\nmethods = [\"GET\", \"POST\"]\ntimeout_ms = 5000\nmax_request_bytes = 1024\nmax_message_bytes = 4096\nstrip_cookies = true\n";
        let s = load_file(file, &[]).expect("valid");
        let r = &s.routes.all()[0];
        assert_eq!(r.max_message_bytes, 4096);
        assert_eq!(
            (r.path.as_str(), r.upstream.as_str()),
            ("/api/orders", "https://orders.internal:8443/v1")
        );
        assert_eq!(
            (r.timeout, r.max_request_bytes, r.strip_cookies),
            (Duration::from_millis(5000), 1024, true)
        );
        assert_eq!(r.methods.as_ref().map(Vec::len), Some(2));
        let json = r#"[{"path": "/api/a", "upstream": "http://127.0.0.1:9000", "profile": "orders"}]"#;
        let s = load_file(TWO, &[("AVEMINT_ROUTES", json)]).expect("env");
        assert_eq!(s.routes.all()[0].profile.as_deref(), Some("orders"));
        let s = load_file(&format!("{file}{TWO}"), &[("AVEMINT_ROUTES", json)]).expect("the environment wins");
        assert_eq!(s.routes.all()[0].path, "/api/a");
        let bad = r#"[{"path": "/auth", "upstream": "http://orders.internal", "profile": "nope"}, {"path": "/x", "upstream": "https://h", "extra": 1}]"#;
        let e = load_file(TWO, &[("AVEMINT_ROUTES", bad)]).expect_err("invalid");
        assert_eq!(e.0.len(), 1, "a JSON shape error is one line: {e}");
        assert!(e.0[0].starts_with("AVEMINT_ROUTES: unknown field `extra`"), "{e}");
        let bad = r#"[{"path": "/auth", "upstream": "http://orders.internal", "profile": "nope"}]"#;
        let e = load_file(TWO, &[("AVEMINT_ROUTES", bad)]).expect_err("invalid");
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(
            e.0.iter().all(|l| l.starts_with("AVEMINT_ROUTES: route `/auth`: ")),
            "{e}"
        );
        let e = load_file("[[routes]]\npath = \"/a\"\n", &[]).expect_err("no upstream");
        assert!(
            e.0[0].starts_with("config file `routes`: missing field `upstream`"),
            "{e}"
        );
    }

    #[test]
    fn ave_metadata_ttl_from_env_or_file_with_a_default_of_five_minutes() {
        let s = Settings::load(None, &env(&minimal())).expect("valid");
        assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(300));
        let s = load_file("ave_metadata_ttl = 60\n", &[]).expect("file key");
        assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(60));
        let s = load_file("ave_metadata_ttl = 60\n", &[("AVEMINT_AVE_METADATA_TTL", "2")]).expect("env wins");
        assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(2));
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
    fn browser_and_the_token_endpoint_load_from_the_file_and_the_environment() {
        let browser = |s: &Settings| -> Vec<(String, Option<bool>)> {
            s.token.profiles().iter().map(|p| (p.name.clone(), p.browser)).collect()
        };
        // No route: every profile is mintable by page script; the endpoint is on.
        let s = load_file(TWO, &[]).expect("valid");
        assert_eq!(
            browser(&s),
            [("web".to_owned(), Some(true)), ("orders".to_owned(), Some(true))]
        );
        assert_eq!(s.security.token_endpoint, TokenEndpoint::On);
        // A route's profile is not, unless it says so; a route without `profile` attaches the default one.
        let route =
            |profile: &str| format!("[[routes]]\npath = \"/api/x\"\nupstream = \"https://x.internal\"\n{profile}");
        let s = load_file(&format!("{TWO}{}", route("profile = \"orders\"\n")), &[]).expect("valid");
        assert_eq!(
            browser(&s),
            [("web".to_owned(), Some(true)), ("orders".to_owned(), Some(false))]
        );
        let said = TWO.replace(
            "[[profiles]]\nname = \"orders\"",
            "[[profiles]]\nname = \"orders\"\nbrowser = true",
        );
        let s = load_file(&format!("{said}{}", route("profile = \"orders\"\n")), &[]).expect("valid");
        assert_eq!(browser(&s)[1], ("orders".to_owned(), Some(true)));
        let s = load_file(&format!("{TWO}{}", route("")), &[]).expect("valid");
        assert_eq!(
            browser(&s)[0],
            ("web".to_owned(), Some(false)),
            "the default profile is the route's"
        );
        // The environment: the default profile's `browser`, and the endpoint switch (the file takes a boolean).
        let s = load_file(&format!("{TWO}{}", route("")), &[("AVEMINT_TOKEN_BROWSER", "true")]).expect("valid");
        assert_eq!(browser(&s)[0], ("web".to_owned(), Some(true)));
        let s = load_file(&format!("token_endpoint = false\n{TWO}"), &[]).expect("valid");
        assert_eq!(s.security.token_endpoint, TokenEndpoint::Off);
        let s = load_file(TWO, &[("AVEMINT_TOKEN_ENDPOINT", "off")]).expect("valid");
        assert_eq!(s.security.token_endpoint, TokenEndpoint::Off);
        let s = Settings::load(
            None,
            &env(&[minimal(), vec![("AVEMINT_TOKEN_BROWSER", "false")]].concat()),
        )
        .expect("env only");
        assert_eq!(s.token.default_profile().browser, Some(false));
        // Bad values, and the flat key next to [[profiles]], are refused.
        let e = load_file(TWO, &[("AVEMINT_TOKEN_ENDPOINT", "maybe")]).expect_err("invalid");
        assert!(e.0[0].contains("AVEMINT_TOKEN_ENDPOINT"), "{e}");
        let e = load_file(&format!("token_browser = true\n{TWO}"), &[]).expect_err("invalid");
        assert!(e.0[0].contains("token_browser"), "{e}");
        let e = load_file(&format!("token_endpoint = 3\n{TWO}"), &[]).expect_err("invalid");
        assert!(e.0[0].contains("token_endpoint"), "{e}");
    }
}
