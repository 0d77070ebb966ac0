//! The `avemint` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use avemint::config::{ProcessEnv, Settings};
use avemint::keys::{Algorithm, KeyDir, commands};
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
    /// Only in builds with the `demo` feature (the default).
    #[cfg(feature = "demo")]
    Demo {
        /// Where the demo listens (loopback only).
        #[arg(long, env = "AVEMINT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Signing keys directory.
        #[arg(long, env = "AVEMINT_KEYS_DIR", default_value = "keys")]
        keys_dir: PathBuf,
    },
    /// Print the OpenAPI document (YAML).
    Openapi {
        /// Print the admin API's document instead (see `AVEMINT_ADMIN_LISTEN`).
        #[arg(long)]
        admin: bool,
    },
    /// Manage the signing keys in `AVEMINT_KEYS_DIR` (see keys/README.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a key: `next` (published now, signs after `keys rotate`), or `current` if there is none.
    Generate {
        /// es256, eddsa or rs256 (default: `AVEMINT_KEY_ALGORITHM`, else es256).
        #[arg(long)]
        alg: Option<Algorithm>,
    },
    /// List the keys: kid, algorithm, state, age.
    List,
    /// current → retired, next → current, and a new next key.
    Rotate {
        /// Algorithm of the new next key (default: `AVEMINT_KEY_ALGORITHM`, else es256).
        #[arg(long)]
        alg: Option<Algorithm>,
        /// Rotate even if the next key was published less than one JWKS cache lifetime ago.
        #[arg(long)]
        force: bool,
    },
    /// Remove retired keys whose tokens have all expired.
    Prune,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi { admin } => {
            if admin {
                print!("{}", avemint::admin_openapi_yaml());
            } else {
                print!("{}", avemint::openapi_yaml());
            }
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let settings = match Settings::load(cli.config.as_deref(), &ProcessEnv) {
                Ok(s) => s,
                Err(errors) => return config_failure(&errors),
            };
            run(async move {
                let app = Application::build(settings, Mode::Serve).await?;
                tracing::info!(addr = %app.local_addr(), "avemint listening");
                app.run_until(shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Keys { command } => keys(cli.config.as_deref(), command),
        #[cfg(feature = "demo")]
        Command::Demo { listen, keys_dir } => {
            // The demo configures itself (emulator, throw-away keys, in-memory store): a configuration file would
            // be silently ignored, so it is refused instead.
            if let Some(source) = demo_config_source(cli.config.as_deref()) {
                eprintln!(
                    "avemint: demo reads no configuration file, but {source} names one; remove it (the demo configures \
                     itself), or run `avemint serve` to use the file"
                );
                return ExitCode::from(2);
            }
            run(async move { Ok(avemint::demo::run(listen, keys_dir).await?) })
        }
    }
}

/// Where a configuration file was named for `avemint demo`, if anywhere (`--config` or `AVEMINT_CONFIG`).
#[cfg(feature = "demo")]
fn demo_config_source(flag: Option<&std::path::Path>) -> Option<&'static str> {
    if flag.is_some() {
        Some("--config")
    } else if std::env::var_os("AVEMINT_CONFIG").is_some_and(|v| !v.is_empty()) {
        Some("AVEMINT_CONFIG")
    } else {
        None
    }
}

fn keys(config: Option<&std::path::Path>, command: KeysCommand) -> ExitCode {
    let settings = match avemint::config::load_keys(config, &ProcessEnv) {
        Ok(s) => s,
        Err(errors) => return config_failure(&errors),
    };
    avemint::telemetry::init_stderr("warn", false);
    let dir = KeyDir::new(settings.dir);
    let default_alg = settings.policy.algorithm;
    let now = avemint::Clock::System.now();
    let result = match command {
        KeysCommand::Generate { alg } => commands::generate(&dir, alg.unwrap_or(default_alg), now),
        KeysCommand::List => commands::list(&dir, now),
        KeysCommand::Rotate { alg, force } => commands::rotate(&dir, alg.unwrap_or(default_alg), force, now),
        KeysCommand::Prune => commands::prune(&dir, now),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("avemint: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one line per configuration problem and exits with status 2.
fn config_failure(errors: &avemint::config::ConfigErrors) -> ExitCode {
    eprintln!("avemint: invalid configuration:");
    for line in &errors.0 {
        eprintln!("  {line}");
    }
    ExitCode::from(2)
}

fn run(fut: impl Future<Output = Result<(), Box<dyn std::error::Error>>>) -> ExitCode {
    let json = std::env::var("AVEMINT_LOG_FORMAT").is_ok_and(|v| v == "json");
    avemint::telemetry::init_stderr("info", json);
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
