//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! human-readable or JSON (`AVEMINT_LOG_FORMAT=json`). Colour codes only when
//! stderr is a terminal: a log file or collector gets plain lines (and the
//! per-request line costs less to format).
//!
//! Nothing in avemint logs a token, code, secret or cookie value; this module
//! only decides where the lines go.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber writing to stderr; later calls are no-ops.
pub fn init_stderr(default_filter: &str, json: bool) {
    install(default_filter, json, std::io::stderr, std::io::stderr().is_terminal());
}

/// Installs the global subscriber writing plain lines to `writer` (tests,
/// benchmarks); later calls are no-ops.
pub fn init<W>(default_filter: &str, json: bool, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(default_filter, json, writer, false);
}

fn install<W>(default_filter: &str, json: bool, writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
