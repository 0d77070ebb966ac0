//! The `avemint` binary: `openapi` matches the committed document, bad
//! configuration fails fast with one line per problem, SIGTERM exits 0,
//! `healthcheck` reports whether `/healthz` answers.

mod support;

use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_avemint");

#[test]
fn committed_openapi_document_equals_avemint_openapi() {
    let out = Command::new(BIN).arg("openapi").output().expect("runs");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("utf8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml")).expect("committed file");
    assert!(
        generated == committed,
        "openapi/openapi.yaml is stale: run `cargo run -- openapi > openapi/openapi.yaml`"
    );
    for path in [
        "/auth/login",
        "/auth/callback",
        "/auth/token",
        "/auth/session",
        "/auth/logout",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
    ] {
        assert!(generated.contains(&format!("{path}:")), "{path} documented");
    }
}

fn serve_with(env: &[(&str, &str)]) -> std::process::Output {
    run_with("serve", env)
}

/// `avemint <command>` with only `env` (and `PATH`).
fn run_with(command: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg(command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

#[test]
fn invalid_configuration_exits_non_zero_with_one_line_per_problem_and_no_secret() {
    let out = serve_with(&[
        ("AVE_CLIENT_SECRET", "super-secret-value-123"),
        ("AVEMINT_PUBLIC_URL", "http://app.example.com"),
        ("AVEMINT_SESSION_KEYS", "bm90LTMyLWJ5dGVz"),
        ("AVEMINT_TOKEN_TTL", "-5"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<_> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(problems.len(), 4, "{err}");
    for name in [
        "AVE_CLIENT_ID",
        "AVEMINT_PUBLIC_URL",
        "AVEMINT_SESSION_KEYS",
        "AVEMINT_TOKEN_TTL",
    ] {
        assert!(problems.iter().any(|l| l.contains(name)), "{name} in {err}");
    }
    assert!(!err.contains("super-secret-value-123") && !err.contains("bm90LTMyLWJ5dGVz"));
}

#[test]
fn a_config_file_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, "client_id = \"app_x\"\ntoken_ttl = 0\n").expect("write");
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().expect("utf8"), "serve"])
        .env_clear()
        .env("AVEMINT_TOKEN_TTL", "60")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("AVE_CLIENT_ID"), "client id came from the file: {err}");
    assert!(!err.contains("TOKEN_TTL"), "the environment's valid TTL won: {err}");
    assert!(err.contains("AVE_CLIENT_SECRET"));
}

/// `avemint serve` as a child process against a fresh emulator, on a free port, ready.
struct Served {
    child: std::process::Child,
    port: u16,
    _emulator: ave_emulator::Emulator,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `configure` adjusts the command (environment, stdio) before it is spawned.
    async fn start(configure: impl FnOnce(&mut Command)) -> Self {
        let emulator = ave_emulator::Emulator::start(Default::default())
            .await
            .expect("emulator");
        let port = support::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = format!("sqlite://{}", dir.path().join("a.db").display());
        let mut cmd = Command::new(BIN);
        support::serve_env(
            &mut cmd,
            &support::AveClientEnv::of(&emulator),
            port,
            &database_url,
            &dir.path().join("keys"),
        );
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawns");
        support::wait_ready(&format!("http://127.0.0.1:{port}")).await;
        Self {
            child,
            port,
            _emulator: emulator,
            _dir: dir,
        }
    }
}

/// `avemint healthcheck` (the container image's HEALTHCHECK): 0 only when `/healthz` answers 200; the default URL
/// comes from `AVEMINT_LISTEN`, an unspecified address probed on loopback; `--listen` beats the environment.
fn healthcheck(args: &[&str], listen: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .env_clear()
        .env("AVEMINT_LISTEN", listen)
        .output()
        .expect("runs")
}

#[tokio::test]
async fn serve_passes_healthcheck_and_stops_cleanly_on_sigterm() {
    // No subcommand: `serve` is the default.
    let served = Served::start(|cmd| {
        cmd.env_remove("RUST_LOG");
    })
    .await;
    let (mut child, port) = (served.child, served.port);
    let http = reqwest::Client::new();
    let jwks: serde_json::Value =
        support::get_json(&http, &format!("http://127.0.0.1:{port}/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    let root = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .expect("root");
    assert_eq!(root.status(), 404, "no demo page in serve");
    let up = healthcheck(&[], &format!("0.0.0.0:{port}"));
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let not_found = healthcheck(
        &["--url", &format!("http://127.0.0.1:{port}/no-such-path")],
        "127.0.0.1:1",
    );
    assert_eq!(not_found.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("answered 404"));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exited = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve did not exit after SIGTERM")
    });
    assert!(exited.success(), "exit status {exited:?}");
    let down = healthcheck(&["--listen", &format!("127.0.0.1:{port}")], "0.0.0.0:1");
    assert_eq!(down.status.code(), Some(1), "healthcheck after exit");
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("healthcheck failed"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}/healthz")),
        "the flag beats the environment: {err}"
    );
}

/// A valid configuration whose Ave is never reached (nothing is listening on port 9).
fn valid_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AVE_CLIENT_ID", "app_x"),
        ("AVE_CLIENT_SECRET", "a-client-secret-of-some-length"),
        ("AVE_ISSUER", "http://127.0.0.1:9"),
        ("AVEMINT_PUBLIC_URL", "http://127.0.0.1:8080"),
        ("AVEMINT_SESSION_KEYS", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio="),
        ("AVEMINT_DATABASE_URL", "sqlite::memory:"),
        ("AVEMINT_TOKEN_AUDIENCE", "https://api.example.com"),
    ]
}

#[test]
fn an_invalid_log_format_or_filter_is_a_start_up_error_naming_the_variable() {
    for (name, value) in [
        ("AVEMINT_LOG_FORMAT", "xml"),
        ("AVEMINT_LOG_FORMAT", "JSON "),
        ("RUST_LOG", "avemint=loud"),
        ("RUST_LOG", "info,[{"),
    ] {
        let mut env = valid_env();
        env.push((name, value));
        let out = serve_with(&env);
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(name), "{name} named in {err}");
    }
}

/// `AVEMINT_LOG_FORMAT=json`: each line is one JSON object with the target, and the request's span
/// with its request id and fields.
#[tokio::test]
async fn json_lines_keep_the_target_and_the_request_span() {
    let served = Served::start(|cmd| {
        cmd.env("AVEMINT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
    })
    .await;
    let (child, base) = (served.child, format!("http://127.0.0.1:{}", served.port));
    // Refused (401): its access line is at `info`.
    let resp = reqwest::Client::new()
        .get(format!("{base}/auth/session"))
        .header("X-CSRF", "1")
        .header("X-Request-Id", "json-line-check-1")
        .send()
        .await
        .expect("session");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-request-id"], "json-line-check-1");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "json-line-check-1")
        .unwrap_or_else(|| panic!("no line of the request in:\n{err}"));
    assert_eq!(access["target"], "avemint::access");
    assert_eq!(access["fields"]["status"], 401);
    assert_eq!(access["span"]["name"], "request");
    assert_eq!(access["span"]["route"], "/auth/session");
    assert_eq!(access["span"]["method"], "GET");
    assert!(access["spans"].as_array().is_some_and(|s| !s.is_empty()));
}

/// The one start-up line: what the instance serves and with what, the defaults it took, and never a credential.
#[tokio::test]
async fn the_start_up_line_summarises_and_never_shows_a_secret() {
    let emulator = ave_emulator::Emulator::start(Default::default())
        .await
        .expect("emulator");
    let port = support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr.log");
    // PostgreSQL with a password in the URL when a test database is there (trust authentication ignores it).
    let (database_url, store, password) = match std::env::var("AVEMINT_TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://postgres@127.0.0.1:5432/") => {
            let db = url.rsplit('/').next().unwrap_or("test").to_owned();
            (
                url.replace("postgres://postgres@", "postgres://postgres:pw-never-logged-42@"),
                format!("postgres://127.0.0.1:5432/{db}"),
                Some("pw-never-logged-42"),
            )
        }
        _ => {
            let url = format!("sqlite://{}", dir.path().join("a.db").display());
            (url.clone(), url, None)
        }
    };
    let ave = support::AveClientEnv::of(&emulator);
    let mut child = support::serve_command(&ave, port, &database_url, &dir.path().join("keys"))
        .env("RUST_LOG", "info")
        .env_remove("AVEMINT_KEYS_DIR")
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawns");
    support::wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("avemint ready")).collect();
    assert_eq!(lines.len(), 1, "one start-up line: {text}");
    let line = lines[0];
    for needle in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        format!("listen=127.0.0.1:{port}"),
        format!("public_url=http://127.0.0.1:{port}"),
        format!("issuer={}", ave.issuer),
        format!("store={store}"),
        "session_keys=1".to_owned(),
        "(ES256, signing)".to_owned(),
        "profiles=default (aud http://127.0.0.1".to_owned(),
        "browser_profiles=default".to_owned(),
        "no AVEMINT_KEYS_DIR: signing keys in ./keys (the working directory)".to_owned(),
    ] {
        assert!(line.contains(&needle), "{needle} in {line}");
    }
    for secret in [ave.client_secret.as_str(), support::TEST_SESSION_KEY]
        .into_iter()
        .chain(password)
    {
        assert!(!text.contains(secret), "no secret in the log: {text}");
    }
}

/// A database that cannot be reached is named with its host and port, and the cause; never with the password.
#[test]
fn an_unreachable_database_names_host_port_and_cause() {
    let closed = support::free_port();
    for (url, needles) in [
        (
            format!("postgres://avemint:pw-never-shown@127.0.0.1:{closed}/sessions"),
            vec![
                format!("127.0.0.1:{closed}"),
                "sessions".to_owned(),
                "connection refused".to_owned(),
            ],
        ),
        (
            "postgres://avemint:pw-never-shown@no-such-host.invalid:5432/sessions".to_owned(),
            vec![
                "no-such-host.invalid:5432".to_owned(),
                "could not be resolved".to_owned(),
            ],
        ),
    ] {
        let out = serve_with(&[
            ("AVE_CLIENT_ID", "app_x"),
            ("AVE_CLIENT_SECRET", "s"),
            ("AVE_ISSUER", "http://127.0.0.1:9"),
            ("AVEMINT_PUBLIC_URL", "http://127.0.0.1:8080"),
            ("AVEMINT_SESSION_KEYS", support::TEST_SESSION_KEY),
            ("AVEMINT_DATABASE_URL", &url),
            ("AVEMINT_LISTEN", "127.0.0.1:0"),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for n in &needles {
            assert!(err.contains(n.as_str()), "{n} in {err}");
        }
        assert!(!err.contains("pw-never-shown"), "{err}");
    }
}

/// `X` and `X_FILE` together are refused at start, naming both.
#[test]
fn a_value_and_its_file_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    std::fs::write(&path, "sqlite://x.db").expect("write");
    let out = serve_with(&[
        ("AVE_CLIENT_ID", "app_x"),
        ("AVE_CLIENT_SECRET", "s"),
        ("AVEMINT_PUBLIC_URL", "http://127.0.0.1:8080"),
        ("AVEMINT_SESSION_KEYS", support::TEST_SESSION_KEY),
        ("AVEMINT_DATABASE_URL", "sqlite://y.db"),
        ("AVEMINT_DATABASE_URL_FILE", path.to_str().expect("utf8")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AVEMINT_DATABASE_URL and AVEMINT_DATABASE_URL_FILE are both set"),
        "{err}"
    );
}

/// `avemint check-config` refuses what `serve` refuses, with the same lines and exit status 2: configuration
/// problems, a value and its file together, an exposed signing key.
#[test]
fn check_config_refuses_what_serve_refuses_with_the_same_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("db");
    std::fs::write(&url_file, "sqlite://x.db").expect("write");
    let keys = dir.path().join("keys");
    support::generate_key(&keys);
    let exposed = std::fs::read_dir(&keys)
        .expect("keys")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .expect("a key file");
    let mut conflict = valid_env();
    conflict.push(("AVEMINT_DATABASE_URL_FILE", url_file.to_str().expect("utf8")));
    conflict.push(("AVEMINT_TOKEN_TTL", "-5"));
    let mut exposed_key = valid_env();
    exposed_key.push(("AVEMINT_KEYS_DIR", keys.to_str().expect("utf8")));
    exposed_key.push(("AVEMINT_LISTEN", "127.0.0.1:0"));
    for (what, env, needle) in [
        (
            "a value and its file",
            conflict,
            "AVEMINT_DATABASE_URL and AVEMINT_DATABASE_URL_FILE are both set",
        ),
        ("an exposed signing key", exposed_key, ""),
    ] {
        if needle.is_empty() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let checked = run_with("check-config", &env);
        let served = serve_with(&env);
        let err = String::from_utf8_lossy(&checked.stderr);
        assert_eq!(checked.status.code(), Some(2), "{what}: {err}");
        assert!(checked.stdout.is_empty(), "{what}: nothing on stdout");
        assert!(err.contains(needle), "{what}: {needle} in {err}");
        // serve prints exactly these lines (before its log lines, if it got that far).
        let served_err = String::from_utf8_lossy(&served.stderr);
        assert!(!served.status.success(), "{what}: serve refuses it too");
        assert!(
            served_err.lines().any(|l| l.starts_with("avemint: ")) && served_err.contains(err.trim_end()),
            "{what}: check-config printed\n{err}\nserve printed\n{served_err}"
        );
    }
}

/// `avemint check-config` accepts a valid configuration without binding anything (its listen address is taken),
/// opening the store or calling Ave, and says in one line what `serve` would run with.
#[test]
fn check_config_accepts_a_valid_configuration_without_binding_or_serving() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let db = dir.path().join("never-created.db");
    let db_url = format!("sqlite://{}", db.display());
    let mut env = valid_env();
    env.retain(|(k, _)| *k != "AVEMINT_DATABASE_URL");
    env.push(("AVEMINT_DATABASE_URL", &db_url));
    env.push(("AVEMINT_LISTEN", &listen));
    env.push(("AVEMINT_KEYS_DIR", keys.to_str().expect("utf8")));
    let out = run_with("check-config", &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("avemint: configuration OK: listen "), "{stdout}");
    assert!(stdout.contains(&listen), "{stdout}");
    assert!(stdout.contains("signing keys none yet in"), "{stdout}");
    assert!(
        !stdout.contains("KioqKioq") && !stdout.contains("a-client-secret"),
        "no secret: {stdout}"
    );
    assert!(!db.exists() && !keys.exists(), "nothing written");
    // With keys, it names them as the start-up line does.
    support::generate_key(&keys);
    let out = run_with("check-config", &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("(ES256, signing)"), "{stdout}");
}

/// `avemint check-config --config FILE` names each setting as it was written: the file's key for a value from the
/// file, the variable for one from the environment, and both for a missing one.
#[test]
fn check_config_names_each_setting_as_it_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:9000\"\nops_listen = \"127.0.0.1:9000\"\nsession_lifetime = 0\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config", cfg.to_str().expect("utf8")])
        .env_clear()
        .env("AVEMINT_TOKEN_TTL", "0")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    for expected in [
        "config file `ops_listen`: must differ from config file `listen`",
        "config file `session_lifetime`: ",
        "AVEMINT_TOKEN_TTL: ",
        "AVE_CLIENT_ID is required (or `client_id` in the config file)",
    ] {
        assert!(problems.iter().any(|l| l.contains(expected)), "{expected} in {err}");
    }
}
