//! `avemint demo`: avemint plus the built-in Ave emulator on loopback, so the
//! whole flow can be tried in a browser with no Ave account; and `avemint dev`:
//! the same emulator under a team's own configuration (routes, profiles, …).
//!
//! Demo and dev mode are built only here: the emulator, the throw-away signing
//! and session keys and the in-memory store never exist in `avemint serve`.
//! Signing keys live in a temporary directory removed on exit, so no key made
//! here is ever in a directory `serve` reads. The demo's proxied route
//! (`/api/demo` → the demo API) is an ordinary `AVEMINT_ROUTES` entry, loaded
//! and validated like any `serve` configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ave_emulator::{Emulator, EmulatorConfig};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::config::{ConfigErrors, Env, Overlay, ProcessEnv, Settings};
use crate::startup::{Application, Mode, StartupError, shutdown_signal};
use avemint_base::secret::random_bytes;
use avemint_base::web_url::PublicUrl;

/// Why the demo or the dev loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo and the dev loop listen on loopback only; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("the Ave emulator did not start: {0}")]
    Emulator(String),
    #[error("cannot make a temporary directory for the throw-away signing keys: {0}")]
    Keys(std::io::ErrorKind),
    #[error("invalid configuration:\n  {}", .0.0.join("\n  "))]
    Settings(#[from] ConfigErrors),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// Demo claims: show how id_token claims flow into app JWTs.
const DEMO_CLAIMS: &str =
    r#"{"name":"{id_token.name}","email":"{id_token.email}","handle":"{user.handle}","demo":true}"#;

/// The demo's proxied route (proxy mode): `/api/demo/**` goes to the demo downstream API, `/demo/api/**` on the
/// demo's own loopback address, with the default profile's app JWT attached by avemint. The demo shows both modes
/// with that one profile, so it says `AVEMINT_TOKEN_BROWSER=true`: a route's profile is otherwise not mintable by
/// page script (a deployment that wants both gives the route a profile of its own).
const DEMO_ROUTE: &str = "/api/demo";

/// `AVEMINT_ROUTES` of the demo: [`DEMO_ROUTE`] to the demo API of the avemint at `public_url`.
fn demo_routes(public_url: &PublicUrl) -> String {
    let upstream = format!("{}/demo/api", public_url.as_str().trim_end_matches('/'));
    serde_json::json!([{ "path": DEMO_ROUTE, "upstream": upstream, "methods": ["GET"] }]).to_string()
}

/// A loopback listener on `listen`, its address, and the public URL `http://<address>`.
fn bind_loopback(listen: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr, PublicUrl), DemoError> {
    if !listen.ip().is_loopback() {
        return Err(DemoError::NotLoopback(listen));
    }
    let bind_error = |e: std::io::Error| DemoError::Bind {
        addr: listen,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(listen).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let public_url = PublicUrl::parse(&format!("http://{addr}")).map_err(|e| DemoError::Emulator(e.to_string()))?;
    Ok((listener, addr, public_url))
}

/// The emulator, with `public_url`'s callback as its one redirect URI.
async fn start_emulator(public_url: &PublicUrl) -> Result<Emulator, DemoError> {
    Emulator::start(EmulatorConfig {
        redirect_uris: vec![public_url.redirect_uri()],
        ..EmulatorConfig::default()
    })
    .await
    .map_err(|e| DemoError::Emulator(e.to_string()))
}

/// A fresh temporary directory for throw-away signing keys, removed when it is dropped (the demo or dev loop ends).
fn throwaway_keys() -> Result<tempfile::TempDir, DemoError> {
    tempfile::Builder::new()
        .prefix("avemint-throwaway-keys-")
        .tempdir()
        .map_err(|e| DemoError::Keys(e.kind()))
}

/// What the demo and the dev loop set in place of a real deployment's values: the emulator's client, the public URL
/// and listener, an in-memory store, a throw-away session key and signing-keys directory.
fn emulated(emulator: &Emulator, addr: SocketAddr, public_url: &PublicUrl, keys: &Path) -> BTreeMap<String, String> {
    let session_key = STANDARD.encode(random_bytes::<32>());
    [
        ("AVE_CLIENT_ID", emulator.client_id().to_owned()),
        ("AVE_CLIENT_SECRET", emulator.client_secret().to_owned()),
        ("AVE_ISSUER", emulator.issuer()),
        ("AVEMINT_PUBLIC_URL", public_url.to_string()),
        ("AVEMINT_LISTEN", addr.to_string()),
        ("AVEMINT_DATABASE_URL", "sqlite::memory:".to_owned()),
        ("AVEMINT_SESSION_KEYS", session_key),
        ("AVEMINT_KEYS_DIR", keys.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Prints `banner` on stdout. A closed stdout (a pipe whose reader left) must not take the process down: write
/// errors are ignored.
fn print_banner(banner: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
}

/// Starts the emulator and avemint, prints where to go, and serves until Ctrl-C.
pub async fn run(listen: SocketAddr) -> Result<(), DemoError> {
    // Before the banner: a signal sent once the URL is printed shuts down gracefully (and removes the keys).
    let stop = shutdown_signal();
    let (listener, addr, public_url) = bind_loopback(listen)?;
    let emulator = start_emulator(&public_url).await?;
    let keys = throwaway_keys()?;
    // The demo's settings go through the same loader as `serve`, over an in-memory environment.
    let mut env = emulated(&emulator, addr, &public_url, keys.path());
    for (k, v) in [
        ("AVEMINT_TOKEN_CLAIMS", DEMO_CLAIMS.to_owned()),
        ("AVEMINT_ROUTES", demo_routes(&public_url)),
        ("AVEMINT_TOKEN_BROWSER", "true".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    let settings = Settings::load(None, &env)?;
    let app = Application::with_listener(settings, Mode::Demo, listener).await?;
    print_banner(&format!(
        "\n  avemint DEMO MODE: a built-in Ave emulator stands in for Ave. Not for production.\n  \
         Ave emulator:  {}\n  Signing keys:  throw-away, in {} (removed on exit)\n  \
         Open:          {public_url}/\n  API docs:      {public_url}/docs\n  \
         Stop with Ctrl-C.\n\n",
        emulator.base_url(),
        keys.path().display(),
    ));
    app.run_until(stop)
        .await
        .map_err(|e| DemoError::Startup(StartupError::Serve(e)))?;
    emulator.shutdown().await;
    drop(keys);
    Ok(())
}

/// `avemint dev`: `serve` with the configuration of `config` (or `AVEMINT_CONFIG`) and the environment, but the
/// emulator in place of Ave, throw-away signing and session keys, an in-memory store, and `http://<listen>` as the
/// public URL. SIGHUP reloads the routes, token profiles and SPA settings from the same file, as in `serve`.
pub async fn dev(config: Option<PathBuf>, listen: SocketAddr) -> Result<(), DemoError> {
    let stop = shutdown_signal();
    let (listener, addr, public_url) = bind_loopback(listen)?;
    let emulator = start_emulator(&public_url).await?;
    let keys = throwaway_keys()?;
    let env = Overlay {
        over: emulated(&emulator, addr, &public_url, keys.path()),
        under: ProcessEnv,
    };
    let file = config
        .clone()
        .or_else(|| env.var("AVEMINT_CONFIG").map(PathBuf::from))
        .map_or_else(|| "none (the environment only)".to_owned(), |p| p.display().to_string());
    let settings = Settings::load(config.as_deref(), &env)?;
    let app = Application::with_listener(settings, Mode::Serve, listener)
        .await?
        .reload_from(Box::new(move || Settings::load(config.as_deref(), &env)));
    print_banner(&format!(
        "\n  avemint DEV MODE: your configuration, with a built-in Ave emulator in place of Ave. Not for production.\n  \
         Configuration: {file}\n  \
         Ave emulator:  {} (pick a user on its sign-in page)\n  \
         Signing keys:  throw-away, in {} (removed on exit); sessions in memory\n  \
         Open:          {public_url}/\n  \
         Reload routes, profiles, SPA:  kill -HUP {}\n  \
         Stop with Ctrl-C.\n\n",
        emulator.base_url(),
        keys.path().display(),
        std::process::id(),
    ));
    app.log_summary();
    app.run_until(stop)
        .await
        .map_err(|e| DemoError::Startup(StartupError::Serve(e)))?;
    emulator.shutdown().await;
    drop(keys);
    Ok(())
}
