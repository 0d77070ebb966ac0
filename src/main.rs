//! The `avemint` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use avemint::config::{ProcessEnv, Settings};
use avemint::startup::{Application, Mode, shutdown_signal};
use clap::{Parser, Subcommand};

/// Sign single-page apps in with Ave, and mint app JWTs for their APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (also `AVEMINT_CONFIG`); environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Run a local demo: avemint plus a built-in Ave emulator on loopback. Not for production.
    Demo {
        /// Where the demo listens (loopback only).
        #[arg(long, env = "AVEMINT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Signing keys directory.
        #[arg(long, env = "AVEMINT_KEYS_DIR", default_value = "keys")]
        keys_dir: PathBuf,
    },
    /// Print the OpenAPI document (YAML).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            print!("{}", avemint::http::openapi_yaml());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let settings = match Settings::load(cli.config.as_deref(), &ProcessEnv) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("avemint: invalid configuration:");
                    for line in &errors.0 {
                        eprintln!("  {line}");
                    }
                    return ExitCode::from(2);
                }
            };
            run(async move {
                let app = Application::build(settings, Mode::Serve).await?;
                tracing::info!(addr = %app.local_addr(), "avemint listening");
                app.run_until(shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Demo { listen, keys_dir } => run(async move { Ok(avemint::demo::run(listen, keys_dir).await?) }),
    }
}

fn run(fut: impl Future<Output = Result<(), Box<dyn std::error::Error>>>) -> ExitCode {
    let json = std::env::var("AVEMINT_LOG_FORMAT").is_ok_and(|v| v == "json");
    avemint::telemetry::init("info", json, std::io::stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("avemint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("avemint: {e}");
            ExitCode::FAILURE
        }
    }
}
