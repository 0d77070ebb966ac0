//! `avemint demo`: avemint plus the built-in Ave emulator on loopback, so the
//! whole flow can be tried in a browser with no Ave account.
//!
//! Demo mode is built only here: the emulator, the throw-away session keys and
//! the in-memory store never exist in `avemint serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ave_emulator::{Emulator, EmulatorConfig};

use crate::ave::ClientOptions;
use crate::config::{
    AveSettings, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_SCOPES, DatabaseUrl, Issuer, PublicUrl, RenewalSettings, SessionKeys,
    SessionSettings, Settings, TokenSettings,
};
use crate::mint::claims::ClaimTemplate;
use crate::secret::{Secret, random_bytes};
use crate::startup::{Application, Mode, StartupError, shutdown_signal};

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo listens on loopback only; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("the Ave emulator did not start: {0}")]
    Emulator(String),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// Demo claims: show how id_token claims flow into app JWTs.
const DEMO_CLAIMS: &str =
    r#"{"name":"{id_token.name}","email":"{id_token.email}","handle":"{user.handle}","demo":true}"#;

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
    let issuer = Issuer::parse(&emulator.issuer()).map_err(DemoError::Emulator)?;
    let settings = Settings {
        ave: AveSettings {
            client_id: emulator.client_id().to_owned(),
            client_secret: Secret::new(emulator.client_secret().to_owned()),
            issuer,
            scopes: DEFAULT_SCOPES.to_owned(),
        },
        listen: addr,
        database_url: DatabaseUrl::Sqlite("sqlite::memory:".into()),
        session_keys: SessionKeys::from_keys(vec![random_bytes::<32>()]),
        keys_dir,
        signing: Default::default(),
        token: TokenSettings {
            ttl: std::time::Duration::from_secs(300),
            audience: public_url.as_str().to_owned(),
            claims: ClaimTemplate::parse_json(DEMO_CLAIMS).map_err(|e| DemoError::Emulator(e.to_string()))?,
            profiles: Vec::new(),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        },
        session: SessionSettings::default(),
        renewal: RenewalSettings::default(),
        security: Default::default(),
        public_url: public_url.clone(),
    };
    let app = Application::with_listener(settings, Mode::Demo, listener, ClientOptions::default()).await?;
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
        .map_err(|e| DemoError::Startup(StartupError::Ave(e.to_string())))?;
    emulator.shutdown().await;
    Ok(())
}
