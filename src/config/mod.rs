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
//! Public names (environment variables and file keys) are documented in
//! docs/configuration.md and must stay stable. Adding a setting: its field in
//! the component's type, one `or`/`required`/`secret` line in `components` (or
//! `token`), and its row in docs/configuration.md (`tests.rs` checks that table
//! against what the loader reads).
//!
//! The file is read as a `toml::Table`; each lookup takes its key out, so
//! whatever is left at the end is an unknown key and refused. `[[profiles]]` and `[[routes]]`
//! (nested tables) are deserialized with serde, which refuses their unknown keys.
//!
//! Submodules by source: `env` (the environment), `file` (the TOML file), `secrets` (inline or `_FILE` secrets) and
//! `loader` (the lookups over them); by component: `components` (every setting but the token profiles), `token`
//! (the token profiles), and `values` (plain value parsers).

mod components;
mod env;
mod file;
mod loader;
mod secrets;
mod token;
mod values;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;

use avemint_base::web_url::PublicUrl;
use avemint_core::ave::settings::AveSettings;
use avemint_core::mint::keys::KeysSettings;
use avemint_core::mint::profiles::TokenSettings;
use avemint_core::proxy::{Routes, WebSocketLimits};
use avemint_core::session::{RenewalSettings, SessionSettings, StoreSettings};
use avemint_core::token_service::ExchangeSettings;

// The HTTP layer's settings types that `Settings` holds, public with it (the protocol side's own settings types
// are public in `avemint_core`).
pub use crate::http::admin::{AdminSettings, AdminToken};
pub use crate::http::cors::AllowedOrigins;
pub use crate::http::security::{Docs, SecuritySettings, TokenEndpoint};
pub use crate::http::signin_page::ErrorPath;
pub use crate::http::spa_host::{PageCsp, SpaRoot, SpaSettings, SpaSource};
pub use crate::server::ConnectionTimeouts;

use env::NoEnv;
pub use env::{Env, Overlay, ProcessEnv};
use loader::Loader;

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
    /// `[exchange]`: which Ave clients' access tokens the token service exchanges.
    pub exchange: ExchangeSettings,
    /// The SPA on avemint's origin (`[spa]`): its built files or its development server (none: no SPA).
    pub spa: SpaSettings,
    /// `error_path`: the SPA's page for failed sign-ins (none: avemint's own page).
    pub error_path: Option<ErrorPath>,
}

/// All problems found while loading settings, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

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
        has_file: true,
        #[cfg(test)]
        asked: Default::default(),
    };
    let _ = rest.settings();
    l.file = rest.file;
    l.finish(Some(keys))
}
