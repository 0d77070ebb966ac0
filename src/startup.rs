//! Building and running the application from `Settings`.
//!
//! `Application::build` wires the store, the Ave client, the key ring and the
//! routes onto a bound listener; `run_until` serves until the shutdown future
//! resolves, then lets in-flight requests finish (bounded). Tests and the demo
//! use the same path as `serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};

use crate::config::{ConfigErrors, Settings};
use crate::http::admin::AdminToken;
use crate::http::security::TokenEndpoint;
use crate::http::spa_host::{LiveSpa, SpaInUse};
use crate::http::{self, AppState};
use avemint_base::clock::Clock;
use avemint_base::reload::{Reload, reload_one};
use avemint_base::secret::SecretKind;
use avemint_core::ave::settings::parse_client_secret;
use avemint_core::ave::{AveClient, AveError};
use avemint_core::mint::hook::HookError;
use avemint_core::mint::{KeyError, LiveKeys, Minter, Profiles};
use avemint_core::session::{Renewer, Sessions, StoreError};
use avemint_core::traffic::rate_limit::{CodeExchangeLimiter, CredentialEndpoint, CredentialLimiter, ExchangeLimits};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// What the refresh drain allows beyond the refresh timeout: storing the
/// renewed tokens (retried through a short store outage).
pub const REFRESH_DRAIN_MARGIN: Duration = Duration::from_secs(10);

/// How long, from the shutdown signal, refreshes already sent to Ave may
/// still finish and be stored (the server drains requests meanwhile): the
/// refresh timeout (`AVEMINT_AVE_REFRESH_TIMEOUT`, counted from the send)
/// plus `REFRESH_DRAIN_MARGIN`, so every refresh sent before the signal is
/// answered (or has timed out) and stored. A refresh cut off at this bound
/// (a stuck store) keeps its marker until its deadline. The process manager's
/// stop timeout (Kubernetes' `terminationGracePeriodSeconds`, systemd's
/// `TimeoutStopSec`) must be longer: 80 s for the default 60 s.
pub fn refresh_drain(refresh_timeout: Duration) -> Duration {
    refresh_timeout + REFRESH_DRAIN_MARGIN
}

/// How often the pause after Ave's 429 is shared between the instances on one store.
const AVE_PAUSE_SYNC: Duration = Duration::from_millis(500);
/// How often expired sessions are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Ave(#[from] AveError),
    #[error("claims hook: {0}")]
    Hook(#[from] HookError),
    #[error(transparent)]
    Proxy(#[from] avemint_core::proxy::ClientError),
    /// The server failed while serving (an I/O error of the listener).
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Which routes to mount (`http` owns the route sets; the entry point picks one).
pub use crate::http::Mode;

/// A built application bound to its listener.
pub struct Application {
    acceptor: TcpAcceptor,
    addr: SocketAddr,
    /// The ops listener (`AVEMINT_OPS_LISTEN`) and its bound address.
    ops: Option<(TcpAcceptor, SocketAddr)>,
    state: Arc<AppState>,
    mode: Mode,
    /// Everything re-read on a file change or SIGHUP: secrets from `*_FILE` and the signing keys.
    reloaders: Vec<Arc<dyn Reload>>,
    summary: Summary,
    /// The admin API's own listener, when `AVEMINT_ADMIN_LISTEN` is set.
    admin: Option<AdminListener>,
    /// Where SIGHUP reads the configuration again (`reload_from`); without it SIGHUP reloads secrets and keys only.
    config_source: Option<ConfigSource>,
    /// The settings a reload cannot apply, as loaded at start (see `Restart`).
    restart: Restart,
}

/// Reads the configuration again, from the same file and environment as at start (SIGHUP).
pub type ConfigSource = Box<dyn Fn() -> Result<Settings, ConfigErrors> + Send + Sync>;

/// The settings a reload does not apply (everything but the proxied routes, the token profiles and the SPA settings:
/// `[spa]` and `error_path`), each by its name and a rendering that changes when it does (secrets are redacted in
/// it: a changed inline secret is not seen).
struct Restart(Vec<(&'static str, String)>);

impl Restart {
    fn of(s: &Settings) -> Self {
        let mut seen = vec![
            ("listen", format!("{:?}", s.listen)),
            ("ops_listen", format!("{:?}", s.ops_listen)),
            ("public_url", format!("{:?}", s.public_url)),
            (
                "Ave (client_id, client_secret, issuer, scopes, ave_*)",
                format!("{:?}", s.ave),
            ),
            ("the store (database_url, session_keys)", format!("{:?}", s.store)),
            ("sessions (session_*)", format!("{:?}", s.session)),
            (
                "renewal (refresh_skew, session_cache_ttl_ms)",
                format!("{:?}", s.renewal),
            ),
            ("signing keys (keys_dir, key_*)", format!("{:?}", s.keys)),
            (
                "security (allowed_origins, trusted_proxies, docs, token_endpoint, …)",
                format!("{:?}", s.security),
            ),
            ("max_websockets*", format!("{:?}", s.websockets)),
            ("admin API (admin_*)", format!("{:?}", s.admin)),
            ("token service ([exchange] ave_client_ids)", format!("{:?}", s.exchange)),
        ];
        seen.push(("max_token_bytes", s.token.max_token_bytes().to_string()));
        Self(seen)
    }

    /// The names of the settings that differ between `self` (running) and `new`.
    fn changed(&self, new: &Restart) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&new.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// The configuration as a reloadable item: on SIGHUP the proxied routes, the token profiles and the SPA settings
/// (`[spa]`, `error_path`) are read again from the configuration's source, validated as at start (every problem,
/// one line each), and put in use whole, or not at all (the running ones stay, and the log says why). Every second,
/// and on SIGHUP, the hook secrets of the token profiles in use are checked too (they change with the profiles).
struct ConfigReload {
    state: Arc<AppState>,
    source: Option<ConfigSource>,
    /// What runs: as at start (a reload never changes these).
    running: Restart,
}

impl Reload for ConfigReload {
    fn kind(&self) -> SecretKind {
        SecretKind::Configuration
    }

    fn name(&self) -> String {
        "configuration".into()
    }

    fn reload(&self, forced: bool) -> Result<bool, String> {
        for hook in self.state.minter.profiles().reloaders() {
            reload_one(hook.as_ref(), forced);
        }
        let (true, Some(source)) = (forced, &self.source) else {
            return Ok(false);
        };
        let settings = source().map_err(|e| e.0.join("; "))?;
        let profiles = Profiles::build(&settings.token).map_err(|e| format!("claims hook: {e}"))?;
        let restart = Restart::of(&settings);
        let described = describe_profiles(&settings.token);
        let routes = settings.routes.all().len();
        let spa = SpaInUse::new(settings.spa, settings.error_path);
        let spa_described = spa.spa.describe();
        // Profiles first: a new route may name a new profile.
        self.state.minter.replace_profiles(profiles);
        self.state.proxy.routes().replace(settings.routes);
        self.state.spa.replace(spa);
        // Cached upstream tokens were minted under the old profiles.
        self.state.proxy.bearers().clear();
        let changed = self.running.changed(&restart);
        tracing::info!(
            profiles = %described,
            proxy_routes = routes,
            spa = %spa_described,
            "configuration reloaded: these routes, token profiles and SPA settings are in use"
        );
        if !changed.is_empty() {
            tracing::warn!(
                settings = %changed.join("; "),
                "configuration reloaded, but these settings changed and apply only at the next restart"
            );
        }
        Ok(true)
    }
}

/// What the start-up line says (never a credential).
struct Summary {
    public_url: String,
    issuer: String,
    store: String,
    session_keys: String,
    client_secret: String,
    profiles: String,
    /// The profiles page script may mint through `POST /auth/token`.
    browser_profiles: String,
    /// What `POST /oauth/token` issues.
    token_service: String,
    defaults: Vec<String>,
}

impl Summary {
    /// What `serve` runs with, as the start-up line and `check-config` say it.
    fn of(
        public_url: &avemint_base::web_url::PublicUrl,
        ave: &avemint_core::ave::settings::AveSettings,
        store: &avemint_core::session::settings::StoreSettings,
        token: &avemint_core::mint::profiles::TokenSettings,
        profiles: &Profiles,
        token_endpoint: TokenEndpoint,
        defaults: Vec<String>,
    ) -> Self {
        let browser_profiles = match token_endpoint {
            TokenEndpoint::Off => "none (AVEMINT_TOKEN_ENDPOINT=off: no /auth/token)".to_owned(),
            TokenEndpoint::On => match profiles.browser_names() {
                names if names.is_empty() => "none (every profile is a proxied route's)".to_owned(),
                names => names.join(", "),
            },
        };
        let ids = store.keys.ids().iter().map(ToString::to_string).collect::<Vec<_>>();
        Self {
            browser_profiles,
            public_url: public_url.as_str().to_owned(),
            issuer: ave.issuer.as_str().to_owned(),
            store: store.database_url.describe(),
            session_keys: match &store.keys_file {
                Some(f) => format!(
                    "{} (ids {}; from {}, reloaded on change)",
                    ids.len(),
                    ids.join(" "),
                    f.path().display()
                ),
                None => format!("{} (ids {})", ids.len(), ids.join(" ")),
            },
            client_secret: match &ave.client_secret_file {
                Some(f) => format!(
                    "from {}, reloaded on change",
                    f.setting().unwrap_or("AVE_CLIENT_SECRET_FILE")
                ),
                None => "inline (a restart changes it)".to_owned(),
            },
            profiles: describe_profiles(token),
            // Set by the caller, which holds the `[exchange]` settings (`describe_token_service`).
            token_service: String::new(),
            defaults,
        }
    }

    /// The defaults taken, or `none`.
    fn defaults(&self) -> String {
        if self.defaults.is_empty() {
            "none".to_owned()
        } else {
            self.defaults.join("; ")
        }
    }
}

/// The admin API's bound listener and its token.
struct AdminListener {
    acceptor: TcpAcceptor,
    addr: SocketAddr,
    token: AdminToken,
}

/// Binds `addr`.
async fn bind(addr: SocketAddr) -> Result<TcpAcceptor, StartupError> {
    TcpListener::bind(addr)
        .into_acceptor()
        .await
        .map_err(|e| StartupError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

impl Application {
    /// Binds `settings.listen` and builds the application.
    pub async fn build(settings: Settings, mode: Mode) -> Result<Self, StartupError> {
        let acceptor = bind(settings.listen).await?;
        Self::with_acceptor(settings, mode, acceptor, Clock::System).await
    }

    /// Builds on an already bound listener (tests bind port 0 first to learn the URL).
    pub async fn with_listener(
        settings: Settings,
        mode: Mode,
        listener: std::net::TcpListener,
    ) -> Result<Self, StartupError> {
        Self::with_listener_and_clock(settings, mode, listener, Clock::System).await
    }

    /// `with_listener` on `clock` instead of the system's (tests that move time, e.g. past the once-a-minute
    /// activity write, without waiting).
    pub async fn with_listener_and_clock(
        settings: Settings,
        mode: Mode,
        listener: std::net::TcpListener,
        clock: Clock,
    ) -> Result<Self, StartupError> {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let bind_err = |e: std::io::Error| StartupError::Bind {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let acceptor = TcpAcceptor::from_std(listener).map_err(bind_err)?;
        Self::with_acceptor(settings, mode, acceptor, clock).await
    }

    /// Hands each component its own settings and wires them together; `clock` is the one wall clock of the process
    /// (sessions, renewal, minting, key rotation and the sign-in cookie read it).
    async fn with_acceptor(
        settings: Settings,
        mode: Mode,
        acceptor: TcpAcceptor,
        clock: Clock,
    ) -> Result<Self, StartupError> {
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| StartupError::Bind {
                addr: settings.listen.to_string(),
                reason: "no local address".into(),
            })?;
        let ops = match settings.ops_listen {
            Some(at) => Some(bind_ops(at).await?),
            None => None,
        };
        let restart = Restart::of(&settings);
        let Settings {
            listen: _,
            ops_listen: _,
            public_url,
            ave,
            store,
            session,
            renewal,
            token,
            keys,
            security,
            routes,
            websockets,
            defaults,
            admin,
            exchange,
            spa,
            error_path,
        } = settings;
        // The admin API binds its own address (never the public one); nothing is bound without it.
        let admin = match admin {
            Some(a) => {
                let acceptor = bind(a.listen).await?;
                let addr = acceptor
                    .local_addr()
                    .first()
                    .and_then(|l| l.as_socket_addr().copied())
                    .unwrap_or(a.listen);
                tracing::info!(%addr, "admin API listening");
                Some(AdminListener {
                    acceptor,
                    addr,
                    token: a.token,
                })
            }
            None => None,
        };
        let sessions = Arc::new(
            Sessions::open_with_pool(
                &store.database_url,
                &store.keys,
                session.clone(),
                renewal.session_cache_ttl,
                store.max_connections,
                clock.clone(),
            )
            .await?
            .with_keys_file(&store.keys, store.keys_file.as_ref()),
        );
        let keys = Arc::new(LiveKeys::open(&keys.dir, keys.policy, clock.clone())?);
        let lock_wait = ave.options.request_timeout + Duration::from_secs(5);
        let ave_client = Arc::new(
            AveClient::new(
                ave.issuer.clone(),
                ave.client_id.clone(),
                ave.client_secret.clone(),
                ave.options.clone(),
            )?
            .with_secret_file(ave.client_secret_file.as_ref(), Box::new(parse_client_secret)),
        );
        tracing::info!(
            budget_per_minute = ave_client.token_budget_per_minute(),
            refresh_skew_secs = renewal.skew.as_secs(),
            "Ave token-endpoint budget"
        );
        let renewer = Renewer::new(
            ave_client.clone(),
            sessions.clone(),
            renewal.skew,
            lock_wait,
            renewal.wait,
        );
        let profiles = Profiles::build(&token)?;
        let mut summary = Summary::of(
            &public_url,
            &ave,
            &store,
            &token,
            &profiles,
            security.token_endpoint,
            defaults,
        );
        summary.token_service = describe_token_service(&token, &exchange);
        let mut reloaders: Vec<Arc<dyn Reload>> = vec![keys.clone()];
        reloaders.extend(ave_client.secret_reloader());
        reloaders.extend(sessions.keys_reloader());
        // The hook secrets are checked by the configuration's reloader (`ConfigReload`), for the profiles in use.
        let minter = Minter::new(
            keys,
            public_url.as_str().to_owned(),
            ave.client_id.clone(),
            profiles,
            token.max_token_bytes(),
            clock.clone(),
        );
        let sign_in_limiter = CodeExchangeLimiter::new(ExchangeLimits::for_sign_in_share(
            ave_client.token_budget().sign_in_limit,
        ));
        let proxy = avemint_core::proxy::Proxy::new(routes, websockets, &public_url)?;
        let state = Arc::new(AppState {
            proxy,
            spa: LiveSpa::new(SpaInUse::new(spa, error_path)),
            sign_in_limiter,
            introspect_limiter: CredentialLimiter::new(CredentialEndpoint::Introspect),
            token_limiter: CredentialLimiter::new(CredentialEndpoint::Token),
            exchange,
            ave: ave_client,
            sessions,
            renewer,
            minter,
            redirect_uri: public_url.redirect_uri(),
            public_url,
            scopes: ave.scopes,
            session_cookie_max_age: session.lifetime,
            security,
            store_check: Default::default(),
            clock,
        });
        Ok(Self {
            acceptor,
            addr,
            ops,
            state,
            mode,
            reloaders,
            summary,
            admin,
            config_source: None,
            restart,
        })
    }

    /// Makes SIGHUP read the configuration again from `source` and put its proxied routes, token profiles and SPA
    /// settings in use (`serve` and `dev`: the same file and environment as at start).
    pub fn reload_from(mut self, source: ConfigSource) -> Self {
        self.config_source = Some(source);
        self
    }

    /// Logs the one start-up line (at `info`): what this instance serves and with what, and each default taken for
    /// something usually set. Never a credential: the store is named by kind, host, port and database only.
    pub fn log_summary(&self) {
        let s = &self.summary;
        let ring = self.state.minter.keys().current();
        let defaults = s.defaults();
        let ops = self.ops_addr().map_or_else(|| "off".to_owned(), |a| a.to_string());
        let admin = self.admin_addr().map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            listen = %self.addr,
            ops_listen = %ops,
            admin_listen = %admin,
            public_url = %s.public_url,
            issuer = %s.issuer,
            store = %s.store,
            session_keys = %s.session_keys,
            client_secret = %s.client_secret,
            signing_keys = %ring.describe(),
            profiles = %s.profiles,
            browser_profiles = %s.browser_profiles,
            token_service = %s.token_service,
            proxy_routes = self.state.proxy.routes().current().routes().all().len(),
            spa = %self.state.spa.current().spa.describe(),
            defaults = %defaults,
            "avemint ready"
        );
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's bound address, when it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The ops listener's bound address, when `AVEMINT_OPS_LISTEN` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, a)| *a)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests (on the ops listener too).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let background = tokio::spawn(background_tasks(self.state.clone()));
        let key_watch = tokio::spawn(self.state.minter.keys().clone().maintain_forever());
        let mut reloaders = self.reloaders;
        reloaders.push(Arc::new(ConfigReload {
            state: self.state.clone(),
            source: self.config_source,
            running: self.restart,
        }));
        let reload_watch = tokio::spawn(avemint_base::reload::watch(reloaders));
        let renewer = self.state.renewer.clone();
        let signalled = Arc::new(std::sync::OnceLock::new());
        let shutdown = {
            let renewer = renewer.clone();
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                // Start no new refresh; those in flight go on (see `refresh_drain`).
                renewer.stop();
                let _ = signalled.set(std::time::Instant::now());
            }
        };
        // One shutdown for every listener (public, ops, admin).
        let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
        let timeouts = self.state.security.connection_timeouts;
        let app = http::routes(self.state.clone(), self.mode, self.ops.is_some());
        let public = crate::server::serve(self.acceptor, app, shutdown.clone(), GRACE_PERIOD, timeouts);
        let ops = self.ops.map(|(ops, _)| {
            let app = http::ops_routes(self.state.clone());
            crate::server::serve(ops, app, shutdown.clone(), GRACE_PERIOD, timeouts)
        });
        let admin = self.admin.map(|a| {
            let app = http::admin::routes(self.state.clone(), a.token);
            crate::server::serve(a.acceptor, app, shutdown.clone(), GRACE_PERIOD, timeouts)
        });
        let (public, ops, admin) = tokio::join!(public, served(ops), served(admin));
        let result = public.and(ops).and(admin);
        let since = signalled.get().copied().unwrap_or_else(std::time::Instant::now);
        renewer
            .drain(since + refresh_drain(self.state.ave.refresh_timeout()))
            .await;
        background.abort();
        key_watch.abort();
        reload_watch.abort();
        result
    }
}

/// The token profiles for the start-up line: name, audience, whether default, whether hooked.
/// What `POST /oauth/token` issues, for the start-up line: service profiles, the profiles Ave tokens may become
/// (and how many Ave clients may exchange), and the delegations allowed; never a secret.
fn describe_token_service(
    token: &avemint_core::mint::profiles::TokenSettings,
    exchange: &avemint_core::token_service::ExchangeSettings,
) -> String {
    let profiles = token.profiles();
    let names = |keep: &dyn Fn(&avemint_core::mint::profiles::ProfileSpec) -> bool| {
        profiles
            .iter()
            .filter(|p| keep(p))
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    let services = names(&|p| p.grants.service);
    if !services.is_empty() {
        parts.push(format!("services: {services}"));
    }
    let from_ave = names(&|p| p.grants.exchange_from_ave);
    if !from_ave.is_empty() && !exchange.ave_client_ids.is_empty() {
        parts.push(format!(
            "Ave tokens to: {from_ave} (from {} Ave clients)",
            exchange.ave_client_ids.len()
        ));
    }
    let delegations: Vec<String> = profiles
        .iter()
        .filter_map(|p| {
            let e = p.grants.exchange.as_ref()?;
            Some(format!("{} -> {}", p.name, e.may_exchange_to.join(" ")))
        })
        .collect();
    if !delegations.is_empty() {
        parts.push(format!("delegation: {}", delegations.join(", ")));
    }
    if parts.is_empty() {
        "off".to_owned()
    } else {
        parts.join("; ")
    }
}

fn describe_profiles(token: &avemint_core::mint::profiles::TokenSettings) -> String {
    token
        .profiles()
        .iter()
        .map(|p| {
            let default = if p.default { ", default" } else { "" };
            let hook = if p.hook.is_some() { ", hook" } else { "" };
            format!("{} (aud {}{default}{hook})", p.name, p.audience)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serves an optional listener (`Ok` when there is none).
async fn served(listener: Option<impl Future<Output = std::io::Result<()>>>) -> std::io::Result<()> {
    match listener {
        Some(serving) => serving.await,
        None => Ok(()),
    }
}

/// Binds the ops listener.
async fn bind_ops(at: SocketAddr) -> Result<(TcpAcceptor, SocketAddr), StartupError> {
    let failed = |reason: String| StartupError::Bind {
        addr: format!("{at} (AVEMINT_OPS_LISTEN)"),
        reason,
    };
    let acceptor = TcpListener::bind(at)
        .into_acceptor()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or_else(|| failed("no local address".into()))?;
    Ok((acceptor, bound))
}

/// Loads Ave's discovery and JWKS (retrying with back-off until they load), then keeps them fresh, and sweeps
/// expired sessions.
async fn background_tasks(state: Arc<AppState>) {
    let warm = {
        let state = state.clone();
        async move {
            let mut delay = Duration::from_millis(250);
            loop {
                match state.ave.key_set().await {
                    Ok(_) => {
                        tracing::info!(issuer = state.ave.issuer().as_str(), "Ave discovery and JWKS loaded");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Ave discovery or JWKS not loaded yet")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            // Reading the documents starts a background re-fetch when one is due (never waits, keeps the last good
            // copy on failure), so their age stays within the lifetime even on an idle instance.
            let every =
                (state.ave.metadata_status().lifetime / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                tokio::time::sleep(every).await;
                let _ = state.ave.metadata().await;
                let _ = state.ave.key_set().await;
            }
        }
    };
    let share_pause = {
        let renewer = state.renewer.clone();
        async move {
            let mut tick = tokio::time::interval(AVE_PAUSE_SYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                renewer.share_ave_pause().await;
            }
        }
    };
    let sweep = async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            match state.sessions.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "swept expired sessions"),
                Err(e) => tracing::warn!(error = %e, "session sweep failed"),
            }
        }
    };
    tokio::join!(warm, share_pause, sweep);
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called, not when the future is
/// first polled: from then on neither signal ends the process before its graceful shutdown (call it before telling
/// anyone the service is up). Must be called on a runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (term, int) = signals;
            tokio::select! {
                () = received(term) => {}
                () = received(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received; finishing in-flight requests");
    }
}

/// Resolves when `signal` arrives (never, without a handler).
#[cfg(unix)]
async fn received(signal: Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// `avemint check-config`: builds every part of the configuration `serve` builds without touching the network or
/// writing anything (no listener bound, no store opened, no call to Ave): the Ave client, the token profiles and
/// their hooks, the proxied routes' clients, and the signing keys in `AVEMINT_KEYS_DIR` (read-only; a directory
/// without keys is where `serve` generates them). Returns the one-line summary of what `serve` would run with.
pub fn check(settings: Settings) -> Result<String, StartupError> {
    let Settings {
        listen,
        ops_listen,
        public_url,
        ave,
        store,
        session: _,
        renewal: _,
        token,
        keys,
        security,
        routes,
        websockets,
        defaults,
        admin,
        exchange,
        spa,
        error_path: _,
    } = settings;
    let profiles = Profiles::build(&token)?;
    let mut s = Summary::of(
        &public_url,
        &ave,
        &store,
        &token,
        &profiles,
        security.token_endpoint,
        defaults,
    );
    s.token_service = describe_token_service(&token, &exchange);
    AveClient::new(ave.issuer.clone(), ave.client_id, ave.client_secret, ave.options)?;
    let proxy = avemint_core::proxy::Proxy::new(routes, websockets, &public_url)?;
    let manifest = avemint_core::mint::keys::KeyDir::new(&keys.dir).read_manifest()?;
    let signing_keys = if manifest.keys.is_empty() {
        format!("none yet in {} (serve generates them)", keys.dir.display())
    } else {
        avemint_core::mint::keys::KeyRing::load(&keys.dir)?.describe()
    };
    let off = || "off".to_owned();
    Ok(format!(
        "configuration OK: listen {listen}, ops listen {}, admin listen {}, public URL {}, issuer {}, store {}, \
         session keys {}, client secret {}, signing keys {signing_keys}, profiles {}, browser profiles {}, \
         proxy routes {}, token service {}, SPA {}; defaults taken: {}",
        ops_listen.map_or_else(off, |a| a.to_string()),
        admin.map_or_else(off, |a| a.listen.to_string()),
        s.public_url,
        s.issuer,
        s.store,
        s.session_keys,
        s.client_secret,
        s.profiles,
        s.browser_profiles,
        proxy.routes().current().routes().all().len(),
        s.token_service,
        crate::http::spa_host::Spa::new(spa).describe(),
        s.defaults(),
    ))
}
