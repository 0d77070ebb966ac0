//! `avemint demo`: avemint plus the built-in Ave emulator on loopback, so the
//! whole flow can be tried in a browser with no Ave account.
//!
//! Demo mode is built only here: the emulator, the throw-away session keys and
//! the in-memory store never exist in `avemint serve`. Its proxied route
//! (`/api/demo` → the demo API) is an ordinary `AVEMINT_ROUTES` entry, loaded
//! and validated like any `serve` configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ave_emulator::{Emulator, EmulatorConfig};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::config::{ConfigErrors, Settings};
use crate::startup::{Application, Mode, StartupError, shutdown_signal};
use avemint_base::secret::random_bytes;
use avemint_base::web_url::PublicUrl;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo listens on loopback only; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("the Ave emulator did not start: {0}")]
    Emulator(String),
    #[error("demo settings: {0}")]
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

/// Starts the emulator and avemint, prints where to go, and serves until Ctrl-C.
pub async fn run(listen: SocketAddr, keys_dir: PathBuf) -> Result<(), DemoError> {
    if !listen.ip().is_loopback() {
        return Err(DemoError::NotLoopback(listen));
    }
    let listener = std::net::TcpListener::bind(listen).map_err(|e| DemoError::Bind {
        addr: listen,
        reason: e.to_string(),
    })?;
    let addr = listener.local_addr().map_err(|e| DemoError::Bind {
        addr: listen,
        reason: e.to_string(),
    })?;
    let public_url = PublicUrl::parse(&format!("http://{addr}")).map_err(|e| DemoError::Emulator(e.to_string()))?;
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![public_url.redirect_uri()],
        ..EmulatorConfig::default()
    })
    .await
    .map_err(|e| DemoError::Emulator(e.to_string()))?;
    // The demo's settings go through the same loader as `serve`, over an in-memory environment.
    let session_key = STANDARD.encode(random_bytes::<32>());
    let env: BTreeMap<String, String> = [
        ("AVE_CLIENT_ID", emulator.client_id().to_owned()),
        ("AVE_CLIENT_SECRET", emulator.client_secret().to_owned()),
        ("AVE_ISSUER", emulator.issuer()),
        ("AVEMINT_PUBLIC_URL", public_url.to_string()),
        ("AVEMINT_LISTEN", addr.to_string()),
        ("AVEMINT_DATABASE_URL", "sqlite::memory:".to_owned()),
        ("AVEMINT_SESSION_KEYS", session_key),
        ("AVEMINT_TOKEN_CLAIMS", DEMO_CLAIMS.to_owned()),
        ("AVEMINT_ROUTES", demo_routes(&public_url)),
        ("AVEMINT_TOKEN_BROWSER", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut settings = Settings::load(None, &env)?;
    settings.keys.dir = keys_dir;
    let app = Application::with_listener(settings, Mode::Demo, listener).await?;
    // A closed stdout (a pipe whose reader left) must not take the demo down: write errors are ignored.
    let banner = format!(
        "\n  avemint DEMO MODE: a built-in Ave emulator stands in for Ave. Not for production.\n  \
         Ave emulator:  {}\n  Open:          {public_url}/\n  API docs:      {public_url}/docs\n  \
         Stop with Ctrl-C.\n\n",
        emulator.base_url()
    );
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }
    app.run_until(shutdown_signal())
        .await
        .map_err(|e| DemoError::Startup(StartupError::Serve(e)))?;
    emulator.shutdown().await;
    Ok(())
}
