//! The Ave emulator as a process of its own, for smoke tests of a packaged avemint (a container image, a systemd
//! unit) that cannot start it in-process the way the test suite does. Not for production: it signs whatever it is
//! asked to.
//!
//! ```text
//! cargo run --release -p ave-emulator --example standalone -- \
//!     --listen 127.0.0.1:9000 --client-id app_smoke --client-secret s3cret \
//!     --redirect-uri http://127.0.0.1:8080/auth/callback
//! ```
//!
//! Prints `issuer=<url>` on stdout once it listens (the value for `AVE_ISSUER`), then serves until it is killed.

use std::net::SocketAddr;

use ave_emulator::{Emulator, EmulatorConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn parse(mut args: impl Iterator<Item = String>) -> Result<EmulatorConfig, Error> {
    let mut config = EmulatorConfig::default();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => config.listen = value.parse::<SocketAddr>()?,
            "--client-id" => config.client_id = value,
            "--client-secret" => config.client_secret = value,
            "--redirect-uri" => config.redirect_uris.push(value),
            "--issuer" => config.issuer = Some(value),
            other => {
                return Err(format!(
                    "unknown option {other} (known: --listen, --client-id, --client-secret, --redirect-uri, --issuer)"
                )
                .into());
            }
        }
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = parse(std::env::args().skip(1))?;
    let emulator = Emulator::start(config).await?;
    println!("issuer={}", emulator.issuer());
    // Serves until the process is killed (SIGTERM's default action ends it).
    std::future::pending::<()>().await;
    Ok(())
}
