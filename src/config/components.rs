//! Each component's settings, read through the loader in the order of
//! docs/configuration.md: Ave, the listeners, the store and sessions,
//! signing keys, the browser-facing security settings, proxy mode's routes and the admin API (token profiles:
//! `token`).
//!
//! Why its own module: the one table of every setting's names, default and parser; adding a setting is one line
//! here (and its row in docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;

use serde::Deserialize;

use super::Settings;
use super::loader::{Loader, Shape, Sourced};
use super::values::{millis, non_empty, parse_listen, seconds, secs, whole};
use crate::http::admin::{AdminSettings, AdminToken};
use crate::http::cors::AllowedOrigins;
use crate::http::security::{Docs, SecuritySettings, TokenEndpoint};
use crate::http::signin_page::ErrorPath;
use crate::http::spa_host::{PageCsp, SpaRoot, SpaSettings, SpaSource, parse_upstream};
use crate::server::ConnectionTimeouts;
use avemint_base::web_url::{Issuer, PublicUrl};
use avemint_core::ave::settings::{AveSettings, ClientOptions, DEFAULT_SCOPES, parse_client_secret, parse_scopes};
use avemint_core::mint::keys::rotation::parse_rotation;
use avemint_core::mint::keys::{Algorithm, KeyPolicy, KeysSettings};
use avemint_core::mint::profiles::TokenSettings;
use avemint_core::proxy::{RouteSpec, Routes, WebSocketLimits};
use avemint_core::session::{
    DEFAULT_MAX_CONNECTIONS, DatabaseUrl, RenewalSettings, SealingKeys, SessionSettings, StoreSettings,
};
use avemint_core::traffic::client_ip::TrustedProxies;
use avemint_core::traffic::rate_limit::RateLimit;

/// The settings of each component, in the order of docs/configuration.md.
impl Loader<'_> {
    #[rustfmt::skip] // one line per setting: kept as a table
    pub(super) fn settings(&mut self) -> Option<Settings> {
        use Shape::{List, Number, Text};
        let client_id = self.required("AVE_CLIENT_ID", "client_id", non_empty);
        let client_secret = self.secret(Text, "AVE_CLIENT_SECRET", "client_secret", parse_client_secret);
        let issuer = self.or(Text, "AVE_ISSUER", "issuer", Issuer::default(), Issuer::parse);
        let public_url = self.required("AVEMINT_PUBLIC_URL", "public_url", PublicUrl::parse);
        if self.unset("AVEMINT_LISTEN", "listen") {
            self.defaults.push(format!("no AVEMINT_LISTEN: listening on {}", SocketAddr::from(DEFAULT_LISTEN)));
        }
        let listen_name = self.written("AVEMINT_LISTEN", "listen");
        let listen = self.or(Text, "AVEMINT_LISTEN", "listen", DEFAULT_LISTEN.into(), parse_listen);
        let ops_name = self.written("AVEMINT_OPS_LISTEN", "ops_listen");
        let ops_listen = self.optional(Text, "AVEMINT_OPS_LISTEN", "ops_listen", parse_listen);
        if ops_listen.is_some_and(|ops| ops == listen && ops.port() != 0) {
            self.errors.push(format!("{ops_name}: must differ from {listen_name}"));
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
        if let Some(t) = &token {
            let errors = t.route_errors(routes.all().iter().map(|r| r.profile.as_deref()));
            self.errors.extend(errors.into_iter().map(|e| format!("config file `routes`: {e}")));
        }
        let exchange = self.exchange();
        // A route's profile is not mintable by page script unless it says `browser = true` (a route with
        // `auth = "none"` attaches none).
        let attached = routes.all().iter().filter(|r| r.auth != avemint_core::proxy::RouteAuth::None);
        let token = token.map(|t| t.settle_browser(attached.map(|r| r.profile.as_deref())));
        let d = WebSocketLimits::default();
        let websockets = WebSocketLimits {
            per_session: self.or(Number, "AVEMINT_MAX_WEBSOCKETS_PER_SESSION", "max_websockets_per_session", d.per_session, whole(1, 10_000)),
            instance: self.or(Number, "AVEMINT_MAX_WEBSOCKETS", "max_websockets", d.instance, whole(1, 1_000_000)),
        };
        let admin = self.admin(listen, &listen_name);
        let spa = self.spa();
        let error_path = self.optional(Shape::Text, "AVEMINT_ERROR_PATH", "error_path", ErrorPath::parse);
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
            exchange,
            spa,
            error_path,
        })
    }

    /// `AVEMINT_ADMIN_LISTEN` and its token (`AVEMINT_ADMIN_TOKEN` / `_FILE`): both, or no admin API.
    pub(super) fn admin(&mut self, public: SocketAddr, public_name: &str) -> Option<AdminSettings> {
        use Shape::Text;
        let listen_name = self.written("AVEMINT_ADMIN_LISTEN", "admin_listen");
        // The token is asked for in the form the listener was given in.
        let token_name = match listen_name.starts_with("config file") {
            true => "`admin_token` (or `admin_token_file`)",
            false => "AVEMINT_ADMIN_TOKEN (or AVEMINT_ADMIN_TOKEN_FILE)",
        };
        let listen = self.optional(Text, "AVEMINT_ADMIN_LISTEN", "admin_listen", parse_listen);
        let token = match self.secret_or_file(Text, "AVEMINT_ADMIN_TOKEN", "admin_token") {
            Ok(Some((v, _))) => self.check(v, AdminToken::parse).map(Some).ok_or(()),
            Ok(None) => Ok(None),
            Err(()) => Err(()),
        };
        match (listen, token) {
            (Some(listen), _) if listen == public => {
                self.errors.push(format!(
                    "{listen_name}: must differ from {public_name} (the admin API is never on the public listener)"
                ));
                None
            }
            (Some(listen), Ok(Some(token))) => Some(AdminSettings { listen, token }),
            (Some(_), Ok(None)) => {
                self.errors
                    .push(format!("{listen_name} is set: {token_name} is required"));
                None
            }
            _ => None,
        }
    }

    /// `AVEMINT_DATABASE_URL` or `AVEMINT_DATABASE_URL_FILE` (a URL may carry a password); SQLite in the working
    /// directory by default.
    pub(super) fn database_url(&mut self) -> DatabaseUrl {
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
    pub(super) fn keys(&mut self) -> KeysSettings {
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
    pub(super) fn security(&mut self) -> SecuritySettings {
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
    pub(super) fn routes(&mut self, token: Option<&TokenSettings>) -> Routes {
        let file = self.take("routes");
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

/// The SPA on avemint's origin: the file's `[spa]` table (`root`, `upstream`, `content_security_policy`) or
/// `AVEMINT_SPA_ROOT`, `AVEMINT_SPA_UPSTREAM`, `AVEMINT_SPA_CSP`; the environment wins, key by key.
impl Loader<'_> {
    pub(super) fn spa(&mut self) -> SpaSettings {
        let mut table = match self.take("spa") {
            None => toml::Table::new(),
            Some(toml::Value::Table(table)) => table,
            Some(_) => {
                self.errors.push("config file `spa`: must be a table ([spa])".into());
                toml::Table::new()
            }
        };
        let mut pick = |l: &mut Self, env_name: &str, key: &str| -> Option<Sourced> {
            #[cfg(test)]
            l.asked.insert(format!("spa.{key}"));
            let file = match table.remove(key) {
                Some(toml::Value::String(v)) => Some(v),
                Some(_) => {
                    l.errors.push(format!("config file `[spa] {key}`: must be a string"));
                    None
                }
                None => None,
            };
            match l.env.var(env_name) {
                Some(value) => Some(Sourced {
                    value,
                    origin: env_name.to_owned(),
                }),
                None => file.map(|value| Sourced {
                    value,
                    origin: format!("config file `[spa] {key}`"),
                }),
            }
        };
        let root = pick(self, "AVEMINT_SPA_ROOT", "root");
        let upstream = pick(self, "AVEMINT_SPA_UPSTREAM", "upstream");
        let csp = pick(self, "AVEMINT_SPA_CSP", "content_security_policy");
        for key in table.keys() {
            self.errors.push(format!("config file `[spa]`: unknown key `{key}`"));
        }
        let source = match (root, upstream) {
            (Some(root), Some(upstream)) => {
                self.errors.push(format!(
                    "{} and {}: set one of them (the built files, or a development server), not both",
                    root.origin, upstream.origin
                ));
                None
            }
            (Some(root), None) => self.check(root, SpaRoot::parse).map(SpaSource::Root),
            (None, Some(upstream)) => self.check(upstream, parse_upstream).map(SpaSource::Upstream),
            (None, None) => None,
        };
        let content_security_policy = csp.and_then(|csp| self.check(csp, PageCsp::parse));
        SpaSettings {
            source,
            content_security_policy,
        }
    }
}

/// Default `AVEMINT_LISTEN`.
const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 8080);
