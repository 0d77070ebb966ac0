//! Test harness: spawns avemint on a random port against a fresh Ave emulator
//! and a fresh SQLite file, and drives it over HTTP like a browser would.
#![allow(dead_code)]

pub mod fault_proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ave_emulator::{Emulator, EmulatorConfig};
use avemint::config::SecuritySettings;
use avemint::config::{ConfigErrors, Settings};
use avemint::startup::{Application, Mode};
use avemint_base::web_url::PublicUrl;
use avemint_core::ave::ClientOptions;
use avemint_core::mint::profiles::TokenSettings;
use avemint_core::session::{DatabaseUrl, RenewalSettings, SessionSettings};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

pub const SESSION_COOKIE: &str = "__Host-avemint";
pub const LOGIN_COOKIE: &str = "__Host-avemint-login";
/// The session key of every test instance (`[42; 32]`, base64).
pub const TEST_SESSION_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A running avemint plus its emulator.
pub struct TestApp {
    pub address: String,
    /// The ops listener's base URL (`Options::ops_listener`).
    pub ops_address: Option<String>,
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub db_path: PathBuf,
    pub keys_dir: PathBuf,
    pub settings: Settings,
    /// The admin API's base URL, when `Options::admin_token` turned it on.
    pub admin_address: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Renewal settings under which every session is due for renewal on each use (the margin exceeds Ave's
/// access-token lifetime).
pub fn always_renew() -> RenewalSettings {
    RenewalSettings {
        skew: Duration::from_secs(2 * 3600),
        ..RenewalSettings::default()
    }
}

/// Knobs for `TestApp::spawn_with`.
#[derive(Default)]
pub struct Options {
    pub claims: Option<&'static str>,
    pub emulator: Option<EmulatorConfig>,
    /// Use this emulator instead of starting one (a second instance of the same deployment).
    pub shared_emulator: Option<Emulator>,
    pub token_ttl: Option<u64>,
    pub refetch_cooldown: Option<Duration>,
    /// Use this store (e.g. a PostgreSQL schema shared by two instances).
    pub database_url: Option<DatabaseUrl>,
    /// Refresh skew, how long a request waits for a refresh, the session cache.
    pub renewal: Option<RenewalSettings>,
    /// The Ave client's timeouts, token budget, refresh timeout and metadata lifetime.
    pub client: Option<ClientOptions>,
    /// Token settings as config-file TOML (`max_token_bytes`, `[[profiles]]`, …),
    /// read by the real loader; replaces `claims` and `token_ttl`.
    pub token_toml: Option<String>,
    /// Signing keys from this directory instead of a fresh one (key-rotation tests).
    pub keys_dir: Option<PathBuf>,
    /// Listen on this loopback port instead of a random one (restarting "the same" avemint).
    pub port: Option<u16>,
    /// Key algorithm and rotation (default: ES256, no automatic rotation).
    pub signing: Option<avemint_core::mint::keys::KeyPolicy>,
    /// Allowed origins, trusted proxies, sign-in rate limit (defaults as in production).
    pub security: Option<SecuritySettings>,
    /// Session lifetimes and the sessions-per-user cap (defaults as in production).
    pub session: Option<SessionSettings>,
    /// Start the ops listener (`AVEMINT_OPS_LISTEN`) on a random loopback port.
    pub ops_listener: bool,
    /// Proxied routes as config-file TOML (`[[routes]]` tables), read by the real loader next to `token_toml`.
    pub routes_toml: Option<String>,
    /// Environment for the loader on top of the defaults: each name replaces the default of that name; an empty
    /// value only removes it (e.g. `AVE_CLIENT_SECRET` when `AVE_CLIENT_SECRET_FILE` is given).
    pub env: Vec<(&'static str, String)>,
    /// Turns the admin API on with this token (`AVEMINT_ADMIN_TOKEN`), on a random loopback port.
    pub admin_token: Option<String>,
    /// The instance's wall clock (default: the system's); a `ManualClock` moves time without waiting.
    pub clock: Option<avemint_base::clock::Clock>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind(("127.0.0.1", opts.port.unwrap_or(0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let address = format!("http://{addr}");
        let public_url = PublicUrl::parse(&address).expect("public url");
        let emulator = match opts.shared_emulator {
            Some(e) => e,
            None => Emulator::start(EmulatorConfig {
                redirect_uris: vec![public_url.redirect_uri()],
                ..opts.emulator.unwrap_or_default()
            })
            .await
            .expect("emulator starts"),
        };
        let db_path = dir.path().join("avemint.db");
        let keys_dir = opts.keys_dir.clone().unwrap_or_else(|| dir.path().join("keys"));
        // The same loader as `serve`, over an in-memory environment (and the
        // token TOML as a file); whole components from `opts` replace the loaded ones.
        let mut env = vec![
            ("AVE_CLIENT_ID", emulator.client_id().to_owned()),
            ("AVE_CLIENT_SECRET", emulator.client_secret().to_owned()),
            ("AVE_ISSUER", emulator.issuer()),
            ("AVEMINT_PUBLIC_URL", public_url.to_string()),
            ("AVEMINT_LISTEN", addr.to_string()),
            ("AVEMINT_DATABASE_URL", format!("sqlite://{}", db_path.display())),
            ("AVEMINT_SESSION_KEYS", TEST_SESSION_KEY.to_owned()),
        ];
        if opts.ops_listener {
            env.push(("AVEMINT_OPS_LISTEN", "127.0.0.1:0".to_owned()));
        }
        if let Some(token) = &opts.admin_token {
            env.push(("AVEMINT_ADMIN_LISTEN", "127.0.0.1:0".to_owned()));
            env.push(("AVEMINT_ADMIN_TOKEN", token.clone()));
        }
        if opts.token_toml.is_none() {
            env.push(("AVEMINT_TOKEN_AUDIENCE", "https://api.example.com".to_owned()));
            env.push(("AVEMINT_TOKEN_TTL", opts.token_ttl.unwrap_or(300).to_string()));
            env.push(("AVEMINT_TOKEN_CLAIMS", opts.claims.unwrap_or("{}").to_owned()));
        }
        let file = match (&opts.token_toml, &opts.routes_toml) {
            (None, None) => None,
            (token, routes) => Some(format!(
                "{}\n{}",
                token.as_deref().unwrap_or(""),
                routes.as_deref().unwrap_or("")
            )),
        };
        let config = file.map(|toml| {
            let path = dir.path().join("avemint.toml");
            std::fs::write(&path, toml).expect("write config");
            path
        });
        for (name, value) in opts.env {
            env.retain(|(k, _)| *k != name);
            if !value.is_empty() {
                env.push((name, value));
            }
        }
        let env: BTreeMap<String, String> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mut settings = Settings::load(config.as_deref(), &env).expect("test settings load");
        settings.keys.dir = keys_dir.clone();
        if let Some(url) = opts.database_url {
            settings.store.database_url = url;
        }
        if let Some(policy) = opts.signing {
            settings.keys.policy = policy;
        }
        if let Some(session) = opts.session {
            settings.session = session;
        }
        if let Some(renewal) = opts.renewal {
            settings.renewal = renewal;
        }
        if let Some(security) = opts.security {
            settings.security = security;
        }
        if let Some(client) = opts.client {
            settings.ave.options = client;
        }
        settings.ave.options.jwks_refetch_cooldown = opts.refetch_cooldown.unwrap_or(Duration::from_secs(5));
        let clock = opts.clock.unwrap_or_default();
        let app = Application::with_listener_and_clock(settings.clone(), Mode::Serve, listener, clock)
            .await
            .expect("app builds");
        let ops_address = app.ops_addr().map(|a| format!("http://{a}"));
        let admin_address = app.admin_addr().map(|a| format!("http://{a}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let app = TestApp {
            address,
            ops_address,
            emulator,
            http,
            db_path,
            keys_dir,
            settings,
            admin_address,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        wait_ready(&self.address).await;
    }

    /// Stops the server gracefully and waits for it; returns the temporary
    /// directory (database, keys) so a test can inspect it afterwards.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("join").expect("server exits cleanly");
        }
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, placeholder)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `GET /auth/login`; returns the response.
    pub async fn login_start(&self, browser: &mut Browser, return_to: Option<&str>) -> reqwest::Response {
        login_start_at(&self.http, &self.address, browser, return_to).await
    }

    /// Follows Ave's sign-in with auto-approve as the first user; returns the callback URL Ave redirects to.
    pub async fn authorize(&self, authorize_url: &str) -> String {
        authorize_as(&self.http, &self.emulator, authorize_url, &self.emulator.users()[0].id).await
    }

    /// The whole sign-in; returns the callback response.
    pub async fn sign_in(&self, browser: &mut Browser, return_to: Option<&str>) -> reqwest::Response {
        let user = self.emulator.users()[0].id.clone();
        sign_in_response_at(&self.http, &self.emulator, &self.address, browser, return_to, &user).await
    }

    /// Signs in and asserts success.
    pub async fn signed_in_browser(&self) -> Browser {
        let mut b = Browser::default();
        sign_in_at(&self.http, &self.emulator, &self.address, &mut b).await;
        b
    }

    /// A browser signed in as the emulator's `user`-th user.
    pub async fn signed_in_as(&self, user: usize) -> Browser {
        let mut b = Browser::default();
        let id = self.emulator.users()[user].id.clone();
        sign_in_as_at(&self.http, &self.emulator, &self.address, &mut b, &id).await;
        b
    }

    /// The `sid` of `browser`'s session, from an app JWT.
    pub async fn sid_of(&self, browser: &Browser) -> String {
        let body: Value = self
            .post_token(&mut browser.clone(), true)
            .await
            .json()
            .await
            .expect("JSON");
        let token = body["access_token"].as_str().expect("token");
        self.verify(token).await.claims["sid"].as_str().expect("sid").to_owned()
    }

    pub async fn post_token(&self, browser: &mut Browser, csrf: bool) -> reqwest::Response {
        let mut req = self.http.post(self.url("/auth/token"));
        if csrf {
            req = req.header("X-CSRF", "1");
        }
        browser.send(req).await
    }

    /// `POST /auth/token` with `X-CSRF: 1` and a JSON body.
    pub async fn post_token_json(&self, browser: &mut Browser, body: &Value) -> reqwest::Response {
        let req = self.http.post(self.url("/auth/token")).header("X-CSRF", "1").json(body);
        browser.send(req).await
    }

    /// Verifies an app JWT for `audience` using only the served JWKS.
    pub async fn verify_for(&self, token: &str, audience: &str) -> jsonwebtoken::TokenData<Value> {
        verify_with(&self.jwks().await, token, audience, &self.address)
    }

    /// `GET path`, answered with JSON (any status).
    pub async fn get_json(&self, path: &str) -> Value {
        get_json(&self.http, &self.url(path)).await
    }

    pub async fn jwks(&self) -> Value {
        self.get_json("/.well-known/jwks.json").await
    }

    /// Verifies an app JWT (of the default profile) using only the served JWKS.
    pub async fn verify(&self, token: &str) -> jsonwebtoken::TokenData<Value> {
        verify_with(&self.jwks().await, token, self.audience(), &self.address)
    }

    /// `GET /metrics` on the public port, as text.
    pub async fn metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.expect("metrics");
        resp.text().await.expect("metrics body")
    }

    /// The default profile's audience.
    pub fn audience(&self) -> &str {
        &self.settings.token.default_profile().audience
    }
}

/// The value of the sample `series` (with labels, exactly as written) in `{base}/metrics`; `None` when absent.
pub async fn metric_at(base: &str, name: &str) -> Option<f64> {
    series(&metrics_text(base).await, name)
}

/// The Prometheus text `GET {base}/metrics` answers.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of `series` (name and labels, exactly as exposed) in a Prometheus text.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET url`, answered with JSON (any status).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Verifies with `jsonwebtoken` against a JWKS document: ES256 pinned, `iss`, `aud`, `exp` checked.
pub fn verify_with(jwks: &Value, token: &str, audience: &str, issuer: &str) -> jsonwebtoken::TokenData<Value> {
    verify_with_alg(jwks, token, audience, issuer, jsonwebtoken::Algorithm::ES256)
}

/// Like `verify_with`, pinning `alg` instead of ES256.
pub fn verify_with_alg(
    jwks: &Value,
    token: &str,
    audience: &str,
    issuer: &str,
    alg: jsonwebtoken::Algorithm,
) -> jsonwebtoken::TokenData<Value> {
    try_verify(jwks, token, audience, issuer, alg).expect("app JWT verifies")
}

/// Verification that reports failure instead of panicking (an unknown `kid` is `InvalidKeyFormat`).
pub fn try_verify(
    jwks: &Value,
    token: &str,
    audience: &str,
    issuer: &str,
    alg: jsonwebtoken::Algorithm,
) -> Result<jsonwebtoken::TokenData<Value>, jsonwebtoken::errors::Error> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("jwks parses");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let kid = header.kid.expect("kid");
    let Some(jwk) = set.find(&kid) else {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into());
    };
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)?;
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
}

/// Loads token settings from config-file TOML through `Settings::load`, with the
/// other required settings given as dummy environment values plus `env`.
pub fn token_settings_from_toml(toml: &str, env: &[(&str, &str)]) -> Result<TokenSettings, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("avemint.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut vars: BTreeMap<String, String> = [
        ("AVE_CLIENT_ID", "app_test"),
        ("AVE_CLIENT_SECRET", "test-secret"),
        ("AVEMINT_PUBLIC_URL", "http://127.0.0.1:1"),
        ("AVEMINT_SESSION_KEYS", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ]
    .iter()
    .chain(env)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    vars.retain(|_, v| !v.is_empty());
    Settings::load(Some(&path), &vars).map(|s| s.token)
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(LOCATION)
        .expect("Location")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// A minimal cookie jar that behaves like a browser for one origin.
#[derive(Default, Clone)]
pub struct Browser {
    pub cookies: BTreeMap<String, String>,
    /// Raw Set-Cookie headers seen, newest last.
    pub set_cookies: Vec<String>,
}

impl Browser {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    pub async fn send(&mut self, mut req: reqwest::RequestBuilder) -> reqwest::Response {
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(COOKIE, header);
        }
        let resp = req.send().await.expect("request");
        for value in resp.headers().get_all(SET_COOKIE) {
            let raw = value.to_str().expect("ascii").to_owned();
            let (pair, attrs) = raw.split_once(';').unwrap_or((&raw, ""));
            let (name, val) = pair.split_once('=').expect("name=value");
            let expired = attrs.to_ascii_lowercase().contains("max-age=0");
            if expired || val.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_owned(), val.trim().to_owned());
            }
            self.set_cookies.push(raw);
        }
        resp
    }
}

/// Runs test bodies on both session store backends, the one way to do so.
/// For each `async fn name(db: Option<DatabaseUrl>)` it generates `mod name`
/// with two `#[tokio::test]`s: `sqlite` runs `name(None)` (the default SQLite
/// file) and `postgres` runs `name(Some(url))` on a fresh schema from
/// [`postgres_schema`] (skipped with a message without
/// `AVEMINT_TEST_DATABASE_URL`, except under `CI=true`, where it fails).
/// `name(flavor = "multi_thread")` passes its arguments to both
/// `#[tokio::test]`s; `Fixture::open => name, …` hands each body
/// `Fixture::open(db).await` instead of `db`, for bodies that take their own
/// fixture.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    (@twin $name:ident [$($test:tt)*] $db:ident => $arg:expr) => {
        mod $name {
            #[tokio::test $($test)*]
            async fn sqlite() {
                let $db = None;
                super::$name($arg).await;
            }

            #[tokio::test $($test)*]
            async fn postgres() {
                let test = concat!(module_path!(), "::postgres");
                if let Some(url) = $crate::support::postgres_schema(test).await {
                    let $db = Some(url);
                    super::$name($arg).await;
                }
            }
        }
    };
    ($($name:ident $(($($test:tt)*))?),+ $(,)?) => {
        $($crate::support::on_both_stores!(@twin $name [$(($($test)*))?] db => db);)+
    };
    ($fixture:ident::$open:ident => $($name:ident $(($($test:tt)*))?),+ $(,)?) => {
        $($crate::support::on_both_stores!(@twin $name [$(($($test)*))?] db => super::$fixture::$open(db).await);)+
    };
}
#[allow(unused_imports)] // Test files without twins do not use it.
pub(crate) use on_both_stores;

/// A PostgreSQL URL for one fresh, empty schema, from `AVEMINT_TEST_DATABASE_URL`.
/// Without it the test is skipped with a message, except under `CI=true`, where it fails.
pub async fn postgres_schema(test: &str) -> Option<DatabaseUrl> {
    let Ok(base) = std::env::var("AVEMINT_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "AVEMINT_TEST_DATABASE_URL must be set under CI (PostgreSQL tests cannot be skipped there)"
        );
        eprintln!("skipped {test}: set AVEMINT_TEST_DATABASE_URL to run the PostgreSQL tests");
        return None;
    };
    let schema = format!("avemint_test_{}", hex(&rand_bytes()));
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable at AVEMINT_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .expect("create schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some(DatabaseUrl::parse(&url).expect("postgres url"))
}

fn rand_bytes() -> [u8; 8] {
    avemint_base::secret::random_bytes::<8>()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every row of the `sessions` table of a PostgreSQL store as JSON text (`bytea` columns hex-encoded): what
/// someone reading the database sees.
pub async fn postgres_session_rows(url: &DatabaseUrl) -> Vec<String> {
    let pool = sqlx::PgPool::connect(&database_url_string(url)).await.expect("connect");
    let rows = sqlx::query_scalar("SELECT row_to_json(s)::text FROM sessions s")
        .fetch_all(&pool)
        .await
        .expect("dump");
    pool.close().await;
    rows
}

/// Reads an `{error, error_description}` body and returns the code.
pub async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("JSON error body");
    assert!(
        body["error_description"].is_string(),
        "error_description present: {body}"
    );
    body["error"].as_str().expect("error code").to_owned()
}

/// `GET {base}/auth/login` (with `return_to`, if any) in `browser`; asserts the redirect to Ave.
pub async fn login_start_at(
    http: &reqwest::Client,
    base: &str,
    browser: &mut Browser,
    return_to: Option<&str>,
) -> reqwest::Response {
    let mut req = http.get(format!("{base}/auth/login"));
    if let Some(r) = return_to {
        req = req.query(&[("return_to", r)]);
    }
    let resp = browser.send(req).await;
    assert_eq!(resp.status(), 302, "login redirects");
    resp
}

/// Follows Ave's sign-in with auto-approve as `user`; returns the callback URL Ave redirects to.
pub async fn authorize_as(http: &reqwest::Client, emulator: &Emulator, authorize_url: &str, user: &str) -> String {
    emulator.set_auto_approve(Some(user.to_owned()));
    let resp = http.get(authorize_url).send().await.expect("ave signin");
    assert_eq!(resp.status(), 302, "emulator approves");
    location(&resp)
}

/// The whole sign-in as `user` at any avemint base URL; returns the callback response.
pub async fn sign_in_response_at(
    http: &reqwest::Client,
    emulator: &Emulator,
    base: &str,
    browser: &mut Browser,
    return_to: Option<&str>,
    user: &str,
) -> reqwest::Response {
    let resp = login_start_at(http, base, browser, return_to).await;
    let callback = authorize_as(http, emulator, &location(&resp), user).await;
    browser.send(http.get(callback)).await
}

/// Signs a browser in as `user` at any avemint base URL; asserts success.
pub async fn sign_in_as_at(http: &reqwest::Client, emulator: &Emulator, base: &str, browser: &mut Browser, user: &str) {
    let resp = sign_in_response_at(http, emulator, base, browser, None, user).await;
    assert_eq!(resp.status(), 302, "callback succeeds: {:?}", resp.text().await.ok());
    assert!(browser.get(SESSION_COOKIE).is_some(), "session cookie set");
}

/// Signs a browser in at any avemint base URL as the emulator's first user; asserts success.
pub async fn sign_in_at(http: &reqwest::Client, emulator: &Emulator, base: &str, browser: &mut Browser) {
    sign_in_as_at(http, emulator, base, browser, &emulator.users()[0].id).await;
}

/// Polls `url` (every 25 ms) until it answers `status`; fails with `what` once `within` has passed.
pub async fn wait_for_status(url: &str, status: u16, within: Duration, what: &str) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == status
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The one readiness wait for a spawned avemint: until `{base}/readyz` answers 200 (up to 10 s).
pub async fn wait_ready(base: &str) {
    wait_for_status(
        &format!("{base}/readyz"),
        200,
        Duration::from_secs(10),
        &format!("avemint at {base} did not become ready"),
    )
    .await;
}

/// The Ave client an `avemint serve` started by a test is configured with.
pub struct AveClientEnv {
    pub client_id: String,
    pub client_secret: String,
    pub issuer: String,
}

impl AveClientEnv {
    /// The client registered at `emulator`.
    pub fn of(emulator: &Emulator) -> Self {
        Self {
            client_id: emulator.client_id().to_owned(),
            client_secret: emulator.client_secret().to_owned(),
            issuer: emulator.issuer(),
        }
    }
}

/// A loopback port that was free a moment ago (bound, then released for the process started next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The one environment of every `avemint serve` a test starts, after clearing the rest: the Ave client, `port` on
/// loopback as listen address and public URL, fixed session keys, the store and keys directory, logs at `warn`,
/// stdout and stderr discarded. Tests add or override what they need (a later `.env`/`.stderr` wins). To debug a
/// test, `AVEMINT_TEST_SERVE_LOG=<filter>` (e.g. `info`) sets the child's `RUST_LOG` and shows its stderr.
pub fn serve_env<'c>(
    cmd: &'c mut std::process::Command,
    ave: &AveClientEnv,
    port: u16,
    database_url: &str,
    keys_dir: &std::path::Path,
) -> &'c mut std::process::Command {
    let serve_log = std::env::var("AVEMINT_TEST_SERVE_LOG").ok();
    cmd.env_clear()
        .env("AVE_CLIENT_ID", &ave.client_id)
        .env("AVE_CLIENT_SECRET", &ave.client_secret)
        .env("AVE_ISSUER", &ave.issuer)
        .env("AVEMINT_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("AVEMINT_LISTEN", format!("127.0.0.1:{port}"))
        .env("AVEMINT_SESSION_KEYS", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
        .env("AVEMINT_DATABASE_URL", database_url)
        .env("AVEMINT_KEYS_DIR", keys_dir)
        .env("RUST_LOG", serve_log.as_deref().unwrap_or("warn"))
        .stdout(std::process::Stdio::null())
        .stderr(match serve_log {
            Some(_) => std::process::Stdio::inherit(),
            None => std::process::Stdio::null(),
        })
}

/// `avemint serve` against `emulator` on `port`, its store (`a.db`) and keys directory (`keys`) in `dir` and its stderr
/// in `dir/stderr.log`, adjusted by `configure` (arguments, environment), started and ready: the process (killed on
/// drop) and the log's path. What a test reading the binary's log starts.
pub async fn serve_logged(
    emulator: &Emulator,
    port: u16,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut std::process::Command),
) -> (KillOnDrop, PathBuf) {
    let log = dir.join("stderr.log");
    let database_url = format!("sqlite://{}", dir.join("a.db").display());
    let mut cmd = serve_command(&AveClientEnv::of(emulator), port, &database_url, &dir.join("keys"));
    configure(&mut cmd);
    let child = cmd
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawns");
    let child = KillOnDrop(child);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;
    (child, log)
}

/// `avemint serve` with [`serve_env`].
pub fn serve_command(
    ave: &AveClientEnv,
    port: u16,
    database_url: &str,
    keys_dir: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"));
    cmd.arg("serve");
    serve_env(&mut cmd, ave, port, database_url, keys_dir);
    cmd
}

/// `avemint keys <args>` on `dir` (`AVEMINT_KEYS_DIR`), nothing else in its environment.
pub fn keys_cmd(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_avemint"))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("AVEMINT_KEYS_DIR", dir)
        .output()
        .expect("runs")
}

/// `avemint keys generate` on `dir`; asserts success.
pub fn generate_key(dir: &std::path::Path) {
    let out = keys_cmd(dir, &["generate"]);
    assert!(
        out.status.success(),
        "keys generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process (e.g. `avemint serve` with its own environment), killed and reaped on drop.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `avemint serve` child process, killed on drop.
pub struct ServeProcess {
    pub base: String,
    pub child: std::process::Child,
}

impl ServeProcess {
    /// Starts `avemint serve` against `emulator` with the given store and extra environment, and waits until ready.
    pub async fn start(
        emulator: &Emulator,
        database_url: &str,
        keys_dir: &std::path::Path,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = serve_command(&AveClientEnv::of(emulator), port, database_url, keys_dir);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("avemint serve starts");
        let process = Self { base, child };
        wait_ready(&process.base).await;
        process
    }

    /// Sends SIGTERM and waits for the process to exit: its exit status, and how long it took after the signal.
    pub async fn terminate(self) -> (std::process::ExitStatus, Duration) {
        let signalled = std::time::Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let mut process = self;
        let status = tokio::task::spawn_blocking(move || {
            let status = process.child.wait().expect("wait");
            (process, status)
        })
        .await
        .expect("join")
        .1;
        (status, signalled.elapsed())
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The database URL string of a `DatabaseUrl`, for a child process's environment.
pub fn database_url_string(url: &DatabaseUrl) -> String {
    match url {
        DatabaseUrl::Sqlite(u) => u.clone(),
        DatabaseUrl::Postgres(u) => u.expose().clone(),
    }
}

/// Whether an external program (node, python3, chromium …) can run. When it cannot, a test skips with a
/// printed message, except under `CI=true`, where `.ci/run` installs everything and a missing tool fails.
pub fn tool_available(program: &str, version_arg: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{program}` is required under CI=true (.ci/run installs it) but cannot be run"
        );
        eprintln!("SKIPPED: `{program}` is not installed; this test needs it (CI=true makes this a failure)");
    }
    ok
}

/// `avemint demo --listen 127.0.0.1:0` as a child process (the binary, its built-in emulator, the demo
/// page); killed on drop.
pub struct DemoProcess {
    child: std::process::Child,
    /// The URL the demo prints to open, without a trailing `/`.
    pub base: String,
    /// What the demo printed up to that URL.
    pub banner: String,
    _dir: tempfile::TempDir,
}

impl DemoProcess {
    pub fn spawn() -> Self {
        Self::spawn_with(&["demo", "--listen", "127.0.0.1:0"], |_| {})
    }

    /// `avemint <args>` (`demo` or `dev`) with an empty environment but what `configure` adds, in a temporary working
    /// directory, until it prints the URL to open.
    pub fn spawn_with(args: &[&str], configure: impl FnOnce(&mut std::process::Command)) -> Self {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"));
        cmd.args(args)
            .env_clear()
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawns");
        let stdout = child.stdout.take().expect("stdout");
        let mut banner = String::new();
        let mut base = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("line");
            banner.push_str(&line);
            banner.push('\n');
            if let Some(url) = line.trim().strip_prefix("Open:") {
                base = Some(url.trim().trim_end_matches('/').to_owned());
                break;
            }
        }
        // Keep reading: a closed pipe would make the demo's next `println!` fail and end the process.
        std::thread::spawn(move || lines.for_each(drop));
        let base = base.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the demo prints the URL to open; it printed:\n{banner}")
        });
        Self {
            child,
            base,
            banner,
            _dir: dir,
        }
    }
}

impl DemoProcess {
    /// The working directory it was started in.
    pub fn working_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (10 s at most) for the process to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 request (so nothing between the test and avemint rewrites its request line or headers): the
/// answer's status and the text after the head.
pub async fn raw_answer(address: &str, head: &str) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    // The server may close while the request is still being written (its body refused): what arrived counts.
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Path endings, each a way a normaliser behind a proxy (or a file server) could read the path as leaving the
/// directory it is below (the last, `//admin`, as a host by some): below `/api/orders` (upstream `/v1`) in
/// `tests/proxy.rs`, below the SPA's root in `tests/spa_hosting.rs`.
pub const WAYS_OUT: [&str; 23] = [
    "..;/admin",
    "..;a=b/admin",
    "%2e%2e;/admin",
    ".;/admin",
    "..%3b/admin",
    "%2e%2e%3b/admin",
    "%252e%252e/admin",
    "a%252f..%252f..%252fadmin",
    "..%00/admin",
    "..%09/admin",
    "..%20/admin",
    "%20../admin",
    "..\\admin",
    "%5c..%5cadmin",
    "a%2f..%2f..%2fadmin",
    "%2e%2e/admin",
    "../admin",
    "%c0%ae%c0%ae/admin",
    "%u002e%u002e/admin",
    "%ef%bc%8e%ef%bc%8e/admin",
    "\u{ff0e}\u{ff0e}/admin",
    "...;/admin",
    "/admin",
];

/// Copies `from` into `to`, leaving out installed modules, build output and tarballs.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "node_modules" || name == "dist" || name.ends_with(".tgz") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).expect("copy");
        }
    }
}

/// The React example (`examples/react-app/`, on the JS package `clients/js/`) built in a temporary copy of both
/// directories (so tests may build it side by side): `npm ci && npm run build` with `VITE_API_PATH=api_path`.
/// Returns the copy and its `dist/`.
pub fn build_example(api_path: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&root.join("clients/js"), &dir.path().join("clients/js"));
    let app = dir.path().join("examples/react-app");
    copy_tree(&root.join("examples/react-app"), &app);
    for args in [&["ci", "--no-audit", "--no-fund"][..], &["run", "build"][..]] {
        let out = std::process::Command::new("npm")
            .current_dir(&app)
            .args(args)
            .env("VITE_API_PATH", api_path)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dist = app.join("dist");
    (dir, dist)
}

/// An upstream API on loopback that answers every request with the `aud` of the bearer it got (and the path), so a
/// test sees which route and token profile a proxied call went through; it keeps each request's `Authorization`
/// (`bearers`).
pub struct AudienceEcho {
    pub base: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AudienceEcho {
    pub async fn start() -> Self {
        use poem::listener::TcpAcceptor;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let echo = poem::endpoint::make_sync(move |req: poem::Request| {
            use base64::Engine as _;
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            record.lock().expect("lock").push(authorization.to_owned());
            let aud = Some(authorization)
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|jwt| jwt.split('.').nth(1))
                .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                .map(|claims| claims["aud"].clone())
                .unwrap_or_default();
            poem::web::Json(serde_json::json!({ "path": req.uri().path(), "aud": aud }))
        });
        let task = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(echo).await;
        });
        Self { base, seen, task }
    }

    /// The `Authorization` header of each request so far (empty when it had none), in order.
    pub fn bearers(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for AudienceEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
