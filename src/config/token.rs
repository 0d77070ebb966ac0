//! The token profiles' settings: the file's `[[profiles]]` (with their claims, hooks and introspection secrets),
//! or the single `default` profile of environment-only deployments; `AVEMINT_TOKEN_*` override the default one.
//!
//! Why its own module: the only settings with nested tables, and the largest part of the configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::loader::{Loader, Shape, Sourced};
use super::values::{non_empty, seconds};
use crate::http::security::on_off;
use avemint_base::web_url::{PublicUrl, parse_web_url};
use avemint_core::mint::claims::ClaimTemplate;
use avemint_core::mint::hook::{self, FailurePolicy, HookSpec};
use avemint_core::mint::keys::MAX_TOKEN_TTL;
use avemint_core::mint::profiles::{
    self, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_PROFILE_NAME, DEFAULT_TOKEN_TTL_SECS, ExchangeSpec, ProfileGrants,
    ProfileSpec, TokenSettings,
};
use avemint_core::token_service::ExchangeSettings;

/// The flat keys describing the env-only default profile.
const FLAT_TOKEN_KEYS: [&str; 4] = ["token_ttl", "token_audience", "token_claims", "token_browser"];

/// The token profiles: `[[profiles]]` from the file, or the single `default`
/// profile of env-only deployments; `AVEMINT_TOKEN_*` override the default one.
impl Loader<'_> {
    pub(super) fn token(&mut self, public_url: Option<&PublicUrl>) -> Option<TokenSettings> {
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
        let list = self.take("profiles");
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
                grants: ProfileGrants::default(),
            };
            return self.token_settings(vec![spec], max_token_bytes, "");
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
        self.token_settings(specs, max_token_bytes, "config file ")
    }

    /// The set checked as a whole; each problem prefixed with where the profiles came from (`origin`).
    fn token_settings(
        &mut self,
        specs: Vec<ProfileSpec>,
        max_token_bytes: usize,
        origin: &str,
    ) -> Option<TokenSettings> {
        TokenSettings::new(specs, max_token_bytes)
            .map_err(|errors| self.errors.extend(errors.into_iter().map(|e| format!("{origin}{e}"))))
            .ok()
    }

    /// `AVEMINT_TOKEN_CLAIMS` (JSON) or the file's `[token_claims]` table.
    fn token_claims(&mut self) -> Option<ClaimTemplate> {
        let file = self.take("token_claims");
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
        let client_secret = p
            .client
            .and_then(|c| self.profile_secret(&format!("{origin}: `client`"), c.secret, c.secret_file));
        let exchange = p.exchange.and_then(|e| {
            let secret = self.profile_secret(&format!("{origin}: `exchange`"), e.secret, e.secret_file)?;
            Some(ExchangeSpec {
                secret,
                may_exchange_to: e.may_exchange_to,
            })
        });
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
            grants: ProfileGrants {
                service: p.service,
                client_secret,
                exchange,
                exchange_from_ave: p.exchange_from_ave,
            },
        })
    }

    /// The secret of a `[profiles.client]` or `[profiles.exchange]` table: `secret` or `secret_file`, exactly one,
    /// at least 32 characters, read at start-up. Never echoed.
    fn profile_secret(
        &mut self,
        origin: &str,
        secret: Option<String>,
        secret_file: Option<PathBuf>,
    ) -> Option<avemint_base::secret::Secret<String>> {
        self.table_secret(origin.to_owned(), secret, secret_file)
    }

    /// `[exchange]` (`ave_client_ids`) or `AVEMINT_EXCHANGE_AVE_CLIENT_IDS` (comma-separated); the environment wins.
    pub(super) fn exchange(&mut self) -> ExchangeSettings {
        let file = self.take("exchange").map(FileExchange::deserialize);
        let from_file = match file {
            Some(Ok(e)) => e.ave_client_ids,
            Some(Err(e)) => {
                self.errors.push(format!("config file `exchange`: {}", e.message()));
                None
            }
            None => None,
        };
        let ids = match self.env.var("AVEMINT_EXCHANGE_AVE_CLIENT_IDS") {
            Some(list) => list
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            None => from_file.unwrap_or_default(),
        };
        ExchangeSettings { ave_client_ids: ids }
    }

    /// A `[profiles.introspection]` table: the secret callers present to `POST /oauth/introspect`
    /// (`secret` or `secret_file`, exactly one, at least 32 characters; read at start-up). Never echoed.
    fn introspection(&mut self, origin: &str, i: FileIntrospection) -> Option<avemint_base::secret::Secret<String>> {
        self.table_secret(format!("{origin}: `introspection`"), i.secret, i.secret_file)
    }

    /// The secret of a profile's table (`secret` or `secret_file`, exactly one, at least 32 characters; read at
    /// start-up); `origin` names the table. Never echoed.
    fn table_secret(
        &mut self,
        origin: String,
        secret: Option<String>,
        secret_file: Option<PathBuf>,
    ) -> Option<avemint_base::secret::Secret<String>> {
        let inline = secret.map(|value| Sourced {
            value,
            origin: format!("{origin}: `secret`"),
        });
        let path = secret_file.map(|p| Sourced {
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
    #[serde(default)]
    service: bool,
    #[serde(default)]
    exchange_from_ave: bool,
    client: Option<FileIntrospection>,
    exchange: Option<FileExchangeFrom>,
}

/// A `[profiles.exchange]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExchangeFrom {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    may_exchange_to: Vec<String>,
}

/// The top-level `[exchange]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExchange {
    ave_client_ids: Option<Vec<String>>,
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
