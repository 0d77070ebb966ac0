//! The `avemint` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use avemint::config::{ProcessEnv, Settings};
use avemint::healthcheck;
use avemint::keys::{Algorithm, KeyDir, commands};
use avemint::startup::{Application, ConfigSource, Mode, shutdown_signal};
use avemint::telemetry::{LogSettings, Tracing};
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
    /// Load and validate the whole configuration as `serve` would (files, secrets, signing keys, routes,
    /// profiles), then exit without binding or serving: status 0 and a one-line summary on stdout, or status 2 and
    /// the error lines `serve` would print.
    CheckConfig,
    /// Run a local demo: avemint plus a built-in Ave emulator on loopback, throw-away signing keys in a temporary
    /// directory (removed on exit). Not for production. Only in builds with the `demo` feature (the default).
    #[cfg(feature = "demo")]
    Demo {
        /// Where the demo listens (loopback only).
        #[arg(long, env = "AVEMINT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Develop against your own configuration (`--config`, `AVEMINT_CONFIG`, the environment): `serve` with your
    /// routes, token profiles and the rest, but the built-in Ave emulator in place of Ave (pick a user on its page),
    /// throw-away signing and session keys (signing keys in a temporary directory, removed on exit) and an in-memory
    /// session store; the public URL is `http://<listen>`. SIGHUP reloads routes, profiles and SPA settings as in
    /// `serve`. Not for production. Only in builds with the `demo` feature (the default).
    #[cfg(feature = "demo")]
    Dev {
        /// Where to listen (loopback only); the configuration's `listen` and `public_url` are not used.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Print the OpenAPI document (YAML).
    Openapi {
        /// Print the admin API's document instead (see `AVEMINT_ADMIN_LISTEN`).
        #[arg(long)]
        admin: bool,
    },
    /// Probe a running avemint's `/healthz`: exit status 0 when it answers 200, 1 otherwise (for container
    /// HEALTHCHECKs in images without curl).
    Healthcheck {
        /// Where avemint listens; `0.0.0.0` and `[::]` are probed on loopback.
        #[arg(long, env = "AVEMINT_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The URL to probe instead (default: `http://<listen>/healthz`).
        #[arg(long)]
        url: Option<String>,
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
            // SIGHUP reads the same file and environment again (routes, token profiles and SPA settings are put in
            // use).
            let path = cli.config.clone();
            let source: ConfigSource = Box::new(move || Settings::load(path.as_deref(), &ProcessEnv));
            run(true, async move {
                let stop = shutdown_signal();
                let app = Application::build(settings, Mode::Serve).await?.reload_from(source);
                app.log_summary();
                app.run_until(stop).await?;
                Ok(())
            })
        }
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Keys { command } => keys(cli.config.as_deref(), command),
        Command::Healthcheck { listen, url } => healthcheck(url.unwrap_or_else(|| healthcheck::default_url(listen))),
        #[cfg(feature = "demo")]
        Command::Dev { listen } => run(true, async move { Ok(avemint::demo::dev(cli.config, listen).await?) }),
        #[cfg(feature = "demo")]
        Command::Demo { listen } => {
            // The demo configures itself (emulator, throw-away keys, in-memory store): a configuration file would
            // be silently ignored, so it is refused instead.
            if let Some(source) = demo_config_source(cli.config.as_deref()) {
                eprintln!(
                    "avemint: demo reads no configuration file, but {source} names one; remove it (the demo configures \
                     itself), or run `avemint serve` to use the file"
                );
                return ExitCode::from(2);
            }
            run(false, async move { Ok(avemint::demo::run(listen).await?) })
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

/// `avemint check-config`: what `serve` checks before it binds, with the same error lines; exit status 2 for any.
fn check_config(config: Option<&std::path::Path>) -> ExitCode {
    let settings = match Settings::load(config, &ProcessEnv) {
        Ok(s) => s,
        Err(errors) => return config_failure(&errors),
    };
    if let Err(e) = LogSettings::from_env(avemint::telemetry::DEFAULT_FILTER) {
        eprintln!("avemint: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    // Some clients are built on a runtime; nothing is spawned or awaited on it.
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            let _entered = rt.enter();
            avemint::startup::check(settings).map_err(|e| e.to_string())
        });
    match checked {
        Ok(summary) => {
            println!("avemint: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("avemint: {e}");
            ExitCode::from(2)
        }
    }
}

fn keys(config: Option<&std::path::Path>, command: KeysCommand) -> ExitCode {
    let settings = match avemint::config::load_keys(config, &ProcessEnv) {
        Ok(s) => s,
        Err(errors) => return config_failure(&errors),
    };
    let logs = LogSettings::from_env("warn").and_then(|logs| avemint::telemetry::init_stderr(&logs, Tracing::Off));
    if let Err(e) = logs {
        eprintln!("avemint: invalid configuration: {e}");
        return ExitCode::from(2);
    }
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
            if let Some(owner) = e.run_as() {
                eprintln!("  instead run: sudo -u {owner} {}", this_command());
            }
            ExitCode::FAILURE
        }
    }
}

/// Probes `url` on a single-threaded runtime; a failure is one line on stderr and exit status 1.
fn healthcheck(url: String) -> ExitCode {
    let probed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(healthcheck::probe(&url)).map_err(|e| e.to_string()));
    match probed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("avemint: healthcheck failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line this process was started with, quoted for a shell where needed.
fn this_command() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints one line per configuration problem and exits with status 2.
fn config_failure(errors: &avemint::config::ConfigErrors) -> ExitCode {
    eprintln!("avemint: invalid configuration:");
    for line in &errors.0 {
        eprintln!("  {line}");
    }
    ExitCode::from(2)
}

/// Sets up logging (and, for `serve`, span export: `tracing`), runs `fut`, then flushes the spans.
/// An invalid `AVEMINT_LOG_FORMAT` or `RUST_LOG` exits with status 2 before anything starts.
fn run(tracing: bool, fut: impl Future<Output = Result<(), Box<dyn std::error::Error>>>) -> ExitCode {
    let logs = match LogSettings::from_env(avemint::telemetry::DEFAULT_FILTER) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("avemint: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let export = if tracing { Tracing::from_env() } else { Tracing::Off };
    let telemetry = match avemint::telemetry::init_stderr(&logs, export) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("avemint: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("avemint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(fut);
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("avemint: {e}");
            // `dev` reads its configuration once the emulator runs: invalid configuration is status 2 there too.
            #[cfg(feature = "demo")]
            if let Some(avemint::demo::DemoError::Settings(_)) = e.downcast_ref() {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}
