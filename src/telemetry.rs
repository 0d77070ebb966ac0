//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! human-readable or JSON (`AVEMINT_LOG_FORMAT=json`).
//!
//! Nothing in avemint logs a token, code, secret or cookie value; this module
//! only decides where the lines go.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init<W>(default_filter: &str, json: bool, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
