//! Test harness: spawns avemint on a random port against a fresh Ave emulator
//! and a fresh SQLite file, and drives it over HTTP like a browser would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use avemint::ave::ClientOptions;
use avemint::ave::emulator::{Emulator, EmulatorConfig};
use avemint::config::{
    AveSettings, ConfigErrors, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_SCOPES, DatabaseUrl, Issuer, PublicUrl, SessionKeys,
    SessionSettings, Settings, TokenSettings,
};
use avemint::mint::claims::ClaimTemplate;
use avemint::secret::Secret;
use avemint::startup::{Application, Mode};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

pub const SESSION_COOKIE: &str = "__Host-avemint";
pub const LOGIN_COOKIE: &str = "__Host-avemint-login";

/// A running avemint plus its emulator.
pub struct TestApp {
    pub address: String,
    pub emulator: Emulator,
    pub http: reqwest::Client,
    pub db_path: PathBuf,
    pub keys_dir: PathBuf,
    pub settings: Settings,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Knobs for `TestApp::spawn_with`.
#[derive(Default)]
pub struct Options {
    pub claims: Option<&'static str>,
    pub emulator: Option<EmulatorConfig>,
    pub token_ttl: Option<u64>,
    pub refetch_cooldown: Option<Duration>,
    /// Token settings as config-file TOML (`max_token_bytes`, `[[profiles]]`, …),
    /// read by the real loader; replaces `claims` and `token_ttl`.
    pub token_toml: Option<String>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let address = format!("http://{addr}");
        let public_url = PublicUrl::parse(&address).expect("public url");
        let emulator = Emulator::start(EmulatorConfig {
            redirect_uris: vec![public_url.redirect_uri()],
            ..opts.emulator.unwrap_or_default()
        })
        .await
        .expect("emulator starts");
        let db_path = dir.path().join("avemint.db");
        let keys_dir = dir.path().join("keys");
        let mut settings = Settings {
            ave: AveSettings {
                client_id: emulator.client_id().to_owned(),
                client_secret: Secret::new(emulator.client_secret().to_owned()),
                issuer: Issuer::parse(&emulator.issuer()).expect("issuer"),
                scopes: DEFAULT_SCOPES.to_owned(),
            },
            public_url: public_url.clone(),
            listen: addr,
            database_url: DatabaseUrl::Sqlite(format!("sqlite://{}", db_path.display())),
            session_keys: SessionKeys::from_keys(vec![[42; 32]]),
            keys_dir: keys_dir.clone(),
            token: TokenSettings {
                ttl: Duration::from_secs(opts.token_ttl.unwrap_or(300)),
                audience: "https://api.example.com".into(),
                claims: ClaimTemplate::parse_json(opts.claims.unwrap_or("{}")).expect("claims"),
                profiles: Vec::new(),
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            },
            session: SessionSettings::default(),
        };
        if let Some(toml) = &opts.token_toml {
            settings.token = token_settings_from_toml(toml, &[]).expect("token settings load");
        }
        let options = ClientOptions {
            jwks_refetch_cooldown: opts.refetch_cooldown.unwrap_or(Duration::from_secs(5)),
            ..ClientOptions::default()
        };
        let app = Application::with_listener(settings.clone(), Mode::Serve, listener, options)
            .await
            .expect("app builds");
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
            emulator,
            http,
            db_path,
            keys_dir,
            settings,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        };
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.address)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("avemint did not become ready");
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
        let mut req = self.http.get(self.url("/auth/login"));
        if let Some(r) = return_to {
            req = req.query(&[("return_to", r)]);
        }
        let resp = browser.send(req).await;
        assert_eq!(resp.status(), 302, "login redirects");
        resp
    }

    /// Follows Ave's sign-in with auto-approve as the first user; returns the callback URL Ave redirects to.
    pub async fn authorize(&self, authorize_url: &str) -> String {
        let user = self.emulator.users()[0].id.clone();
        self.emulator.set_auto_approve(Some(user));
        let resp = self.http.get(authorize_url).send().await.expect("ave signin");
        assert_eq!(resp.status(), 302, "emulator approves");
        location(&resp)
    }

    /// The whole sign-in; returns the callback response.
    pub async fn sign_in(&self, browser: &mut Browser, return_to: Option<&str>) -> reqwest::Response {
        let resp = self.login_start(browser, return_to).await;
        let callback = self.authorize(&location(&resp)).await;
        browser.send(self.http.get(callback)).await
    }

    /// Signs in and asserts success.
    pub async fn signed_in_browser(&self) -> Browser {
        let mut b = Browser::default();
        let resp = self.sign_in(&mut b, None).await;
        assert_eq!(resp.status(), 302, "callback succeeds: {:?}", resp.text().await.ok());
        assert!(b.get(SESSION_COOKIE).is_some(), "session cookie set");
        b
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

    pub async fn jwks(&self) -> Value {
        self.http
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json")
    }

    /// Verifies an app JWT using only the served JWKS.
    pub async fn verify(&self, token: &str) -> jsonwebtoken::TokenData<Value> {
        verify_with(&self.jwks().await, token, &self.settings.token.audience, &self.address)
    }
}

/// Verifies with `jsonwebtoken` against a JWKS document: ES256 pinned, `iss`, `aud`, `exp` checked.
pub fn verify_with(jwks: &Value, token: &str, audience: &str, issuer: &str) -> jsonwebtoken::TokenData<Value> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("jwks parses");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &v).expect("app JWT verifies")
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

/// Reads an `{error, error_description}` body and returns the code.
pub async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("JSON error body");
    assert!(
        body["error_description"].is_string(),
        "error_description present: {body}"
    );
    body["error"].as_str().expect("error code").to_owned()
}
