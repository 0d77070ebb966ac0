//! The server side of `bench/load.sh` (not part of the test suite).
//!
//! - `serve`: starts the Ave emulator and avemint in this process (the same
//!   `Application::with_listener` path the tests use), waits until `/readyz`
//!   answers, signs in `--sessions` browsers over HTTP, writes their session
//!   cookie values to `--cookies` (one per line), prints `url=…` and
//!   `ready_ms=…`, and serves until SIGTERM / Ctrl-C.
//! - `populate`: stores `--count` sessions directly through
//!   `avemint_core::session::Sessions` into an SQLite file (or the PostgreSQL
//!   database `--db` names) and writes their cookies.
//! - `lookup`: times `Sessions::load` for distinct stored sessions (each one a
//!   store read, AEAD open and decode: what a session-cache miss costs) and
//!   prints p50/p99.
//! - `upstream`: the API behind the proxy benchmark: a small JSON answer on
//!   every path, and `GET /big?bytes=N`, N bytes streamed in 64 KiB chunks.
//!   `serve --proxy-upstream URL` puts it behind avemint's route `/api`.
//!
//! Cookie values written here belong to throw-away benchmark sessions.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ave_emulator::{Emulator, EmulatorConfig};
use avemint::config::Settings;
use avemint::startup::{Application, Mode, shutdown_signal};
use avemint_base::clock::{Clock, ManualClock, UnixTime};
use avemint_base::secret::{Secret, random_bytes};
use avemint_base::web_url::PublicUrl;
use avemint_core::ave::settings::DEFAULT_SCOPES;
use avemint_core::mint::keys::Algorithm;
use avemint_core::session::{
    AveTokens, DatabaseUrl, RenewalSettings, SealingKeys, SessionData, SessionHandle, SessionId, SessionSettings,
    Sessions,
};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

/// Session key shared by every mode, so `serve` can open what `populate` stored.
const SESSION_KEY: [u8; 32] = [42; 32];
/// `SESSION_KEY` in base64, as `AVEMINT_SESSION_KEYS` holds it.
const SESSION_KEY_BASE64: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
/// Custom claims rendered into every benchmark token.
const CLAIMS: &str =
    r#"{"roles":["reader"],"email":"{id_token.email}","name":"{id_token.name}","handle":"{user.handle}"}"#;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Emulator + avemint, N signed-in sessions, serve until SIGTERM.
    Serve {
        /// Sessions to sign in over HTTP.
        #[arg(long, default_value_t = 64)]
        sessions: usize,
        /// Where to write the session cookie values (appended after `--db`'s own, if any).
        #[arg(long)]
        cookies: Option<PathBuf>,
        /// The store: an SQLite file or a database URL (default: a temporary SQLite file).
        #[arg(long, value_parser = parse_store)]
        db: Option<DatabaseUrl>,
        /// After signing in, print what the sessions occupy in the store (`storage_*` lines) and exit
        /// instead of serving (`bench/storage.sh`).
        #[arg(long)]
        measure_storage: bool,
        /// Port on 127.0.0.1 (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Signing algorithm of the generated key: ES256, EdDSA or RS256.
        #[arg(long, default_value = "ES256")]
        alg: Algorithm,
        /// Session cache TTL in milliseconds (default: the production default).
        #[arg(long)]
        cache_ttl_ms: Option<u64>,
        /// Lets the token profile (`default`) introspect with this secret (`bench/introspect.sh`).
        #[arg(long)]
        introspection_secret: Option<String>,
        /// Proxy mode: the route `/api` forwards to this upstream URL (`AVEMINT_ROUTES`).
        #[arg(long)]
        proxy_upstream: Option<String>,
    },
    /// A small, fast upstream API for the proxy benchmark.
    Upstream {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The reference points of the issue's targets, on the same machine: a
    /// trivial poem endpoint (`GET /trivial`) and the minimal endpoint a team
    /// would hand-write to sign an ES256 JWT with a pre-parsed key
    /// (`POST /sign`: no session, no cookies, no middleware).
    Reference {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Store sessions directly into a store (an SQLite file, or a database URL).
    Populate {
        #[arg(long, value_parser = parse_store)]
        db: DatabaseUrl,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long)]
        cookies: PathBuf,
    },
    /// Time cache-missing session lookups.
    Lookup {
        #[arg(long, value_parser = parse_store)]
        db: DatabaseUrl,
        #[arg(long)]
        cookies: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        /// The clock to look up at (unix seconds; default now). `populate` prints
        /// `populated_at`: passing it keeps idle-time writes out of the figure.
        #[arg(long)]
        at: Option<i64>,
    },
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve {
            sessions,
            cookies,
            db,
            port,
            alg,
            cache_ttl_ms,
            proxy_upstream,
            introspection_secret,
            measure_storage,
        } => {
            let logs = avemint::telemetry::LogSettings::from_env("info")
                .and_then(|logs| avemint::telemetry::init_stderr(&logs, avemint::telemetry::Tracing::Off));
            if let Err(e) = logs {
                eprintln!("loadbench_server: {e}");
                std::process::exit(2);
            }
            let mut renewal = RenewalSettings::default();
            if let Some(ms) = cache_ttl_ms {
                renewal.session_cache_ttl = Duration::from_millis(ms);
            }
            runtime.block_on(serve(
                sessions,
                cookies,
                db,
                port,
                alg,
                renewal,
                Extras {
                    proxy_upstream,
                    introspection_secret,
                    measure_storage,
                },
            ))
        }
        Command::Reference { port } => runtime.block_on(reference(port)),
        // One thread: the upstream shares a CPU with the load generator and must stay cheap.
        Command::Upstream { port } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(upstream(port)),
        Command::Populate { db, count, cookies } => runtime.block_on(populate(&db, count, &cookies)),
        Command::Lookup {
            db,
            cookies,
            samples,
            at,
        } => runtime.block_on(lookup(&db, &cookies, samples, at)),
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn database_url(db: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(format!("sqlite://{}", db.display()))
}

/// `--db`: a database URL (`sqlite:…`, `postgres://…`) or an SQLite file path.
fn parse_store(raw: &str) -> Result<DatabaseUrl, String> {
    if raw.contains("://") || raw.starts_with("sqlite:") {
        DatabaseUrl::parse(raw).map_err(|e| e.to_string())
    } else {
        Ok(database_url(Path::new(raw)))
    }
}

fn session_keys() -> SealingKeys {
    SealingKeys::from_keys(vec![SESSION_KEY])
}

/// What `serve` turns on beyond the token hot path.
struct Extras {
    /// Proxy mode: the route `/api` forwards here.
    proxy_upstream: Option<String>,
    /// The default profile may introspect with this secret.
    introspection_secret: Option<String>,
    /// Print the store's size per session after signing in, then exit.
    measure_storage: bool,
}

async fn serve(
    sessions: usize,
    cookies: Option<PathBuf>,
    db: Option<DatabaseUrl>,
    port: u16,
    alg: Algorithm,
    renewal: RenewalSettings,
    Extras {
        proxy_upstream,
        introspection_secret,
        measure_storage,
    }: Extras,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    let address = format!("http://{addr}");
    let public_url = PublicUrl::parse(&address)?;
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![public_url.redirect_uri()],
        // Signing in many sessions must not trip Ave's per-minute limit.
        token_rate_limit_per_minute: u32::MAX,
        ..EmulatorConfig::default()
    })
    .await?;
    // The same loader as `serve`, over an in-memory environment; the store, key algorithm and renewal from the
    // command line replace the loaded ones.
    let env: std::collections::BTreeMap<String, String> = [
        ("AVE_CLIENT_ID", emulator.client_id().to_owned()),
        ("AVE_CLIENT_SECRET", emulator.client_secret().to_owned()),
        ("AVE_ISSUER", emulator.issuer()),
        ("AVEMINT_PUBLIC_URL", public_url.to_string()),
        ("AVEMINT_LISTEN", addr.to_string()),
        ("AVEMINT_SESSION_KEYS", SESSION_KEY_BASE64.to_owned()),
        ("AVEMINT_TOKEN_AUDIENCE", "https://api.example.com".to_owned()),
        ("AVEMINT_TOKEN_CLAIMS", CLAIMS.to_owned()),
        // Signing in many sessions from one address must not trip the sign-in rate limit.
        ("AVEMINT_LOGIN_RATE_LIMIT", "0".to_owned()),
        // All sessions are the emulator's first user's: none may end the others (`max_sessions_per_user`).
        ("AVEMINT_MAX_SESSIONS_PER_USER", "0".to_owned()),
        // Signing in thousands of sessions (`bench/storage.sh`) must not wait for Ave's token budget.
        ("AVEMINT_AVE_TOKEN_BUDGET", "10000".to_owned()),
    ]
    .into_iter()
    .chain(proxy_upstream.map(|url| ("AVEMINT_ROUTES", json!([{"path": "/api", "upstream": url}]).to_string())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Introspection is configured per profile in the file only: one profile, its audience and claims from `env`.
    let config = match introspection_secret {
        Some(secret) => {
            let path = dir.path().join("avemint.toml");
            std::fs::write(
                &path,
                format!(
                    "[[profiles]]\nname = \"default\"\naudience = \"https://api.example.com\"\n[profiles.introspection]\nsecret = {}\n",
                    toml_string(&secret)
                ),
            )?;
            Some(path)
        }
        None => None,
    };
    let mut settings = Settings::load(config.as_deref(), &env)?;
    settings.store.database_url = db.unwrap_or_else(|| database_url(&dir.path().join("avemint.db")));
    settings.keys.dir = dir.path().join("keys");
    settings.keys.policy.algorithm = alg;
    settings.renewal = renewal;

    let settings_url = settings.store.database_url.clone();
    let started = Instant::now();
    let app = Application::with_listener(settings, Mode::Serve, listener).await?;
    let server = tokio::spawn(app.run_until(shutdown_signal()));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let healthy = wait_for(&http, &format!("{address}/healthz")).await?;
    let ready = wait_for(&http, &format!("{address}/readyz")).await?;
    let healthy_ms = (healthy - started).as_secs_f64() * 1000.0;
    let ready_ms = (ready - started).as_secs_f64() * 1000.0;

    let mut out = match &cookies {
        Some(path) => Some(std::fs::File::create(path)?),
        None => None,
    };
    let user = emulator.users()[0].id.clone();
    emulator.set_auto_approve(Some(user));
    for _ in 0..sessions {
        let cookie = sign_in(&http, &address).await?;
        if let Some(f) = out.as_mut() {
            writeln!(f, "{cookie}")?;
        }
    }
    if let Some(f) = out.as_mut() {
        f.flush()?;
    }
    println!("url={address}");
    println!("healthy_ms={healthy_ms:.1}");
    println!("ready_ms={ready_ms:.1}");
    println!("signed_in={sessions}");
    if measure_storage {
        storage_figures(&settings_url, sessions).await?;
        std::io::stdout().flush()?;
        server.abort();
        emulator.shutdown().await;
        return Ok(());
    }
    std::io::stdout().flush()?;
    server.await??;
    emulator.shutdown().await;
    Ok(())
}

#[poem::handler]
fn trivial() -> &'static str {
    "ok"
}

#[poem::handler]
fn sign(key: poem::web::Data<&std::sync::Arc<aws_lc_rs::signature::EcdsaKeyPair>>) -> poem::Response {
    use aws_lc_rs::rand::SystemRandom;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use poem::IntoResponse as _;
    let now = Clock::System.now();
    let claims = json!({"iss": "https://app.example.com", "sub": "user", "aud": "https://api.example.com",
        "iat": now, "exp": now + Duration::from_secs(300), "jti": URL_SAFE_NO_PAD.encode(random_bytes::<16>())});
    let mut jwt = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jwt);
    match key.sign(&SystemRandom::new(), jwt.as_bytes()) {
        Ok(sig) => {
            jwt.push('.');
            URL_SAFE_NO_PAD.encode_string(sig, &mut jwt);
            poem::web::Json(json!({"access_token": jwt})).into_response()
        }
        Err(_) => poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn reference(port: u16) -> Result<(), BoxError> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use poem::EndpointExt as _;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| "key generation failed")?;
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).map_err(|_| "key parsing failed")?;
    let app = poem::Route::new()
        .at("/trivial", poem::get(trivial))
        .at("/sign", poem::post(sign))
        .data(std::sync::Arc::new(key));
    serve_plain(port, app).await
}

/// Serves `app` on 127.0.0.1:`port` until SIGTERM, printing `url=…` and `signed_in=0` (what `bench/load.sh`
/// waits for) once it listens.
async fn serve_plain(port: u16, app: impl poem::Endpoint + 'static) -> Result<(), BoxError> {
    use poem::listener::{Acceptor as _, Listener as _};
    let acceptor = poem::listener::TcpListener::bind(format!("127.0.0.1:{port}"))
        .into_acceptor()
        .await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .ok_or("no local address")?;
    println!("url=http://{addr}");
    println!("signed_in=0");
    std::io::stdout().flush()?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown_signal(), None)
        .await?;
    Ok(())
}

/// The small JSON answer of the benchmark upstream.
const UPSTREAM_JSON: &str = r#"{"id":42,"name":"widget","tags":["a","b"],"price":9.5,"in_stock":true}"#;
/// One chunk of `/big`.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

#[derive(serde::Deserialize)]
struct BigQuery {
    bytes: u64,
}

#[poem::handler]
fn big(poem::web::Query(BigQuery { bytes }): poem::web::Query<BigQuery>) -> poem::Response {
    let size = CHUNK.len() as u64;
    let chunks = (0..bytes.div_ceil(size)).map(move |i| {
        let len = (bytes - i * size).min(size) as usize;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(&CHUNK[..len]))
    });
    poem::Response::builder()
        .content_type("application/octet-stream")
        .body(poem::Body::from_bytes_stream(futures_util::stream::iter(chunks)))
}

#[poem::handler]
fn small() -> poem::Response {
    poem::Response::builder()
        .content_type("application/json")
        .body(UPSTREAM_JSON)
}

async fn upstream(port: u16) -> Result<(), BoxError> {
    let app = poem::Route::new()
        .at("/big", poem::get(big))
        .at("/*path", poem::get(small));
    serve_plain(port, app).await
}

async fn wait_for(http: &reqwest::Client, url: &str) -> Result<Instant, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("{url} did not answer 200 within 30 s").into())
}

fn set_cookie_value(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .find_map(|v| {
            let (pair, _) = v.to_str().ok()?.split_once(';')?;
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name && !value.is_empty()).then(|| value.to_owned())
        })
}

fn location(resp: &reqwest::Response) -> Result<String, BoxError> {
    Ok(resp
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or("no Location")?
        .to_str()?
        .to_owned())
}

/// One browser sign-in over HTTP: login → Ave (auto-approve) → callback.
async fn sign_in(http: &reqwest::Client, address: &str) -> Result<String, BoxError> {
    let login = http.get(format!("{address}/auth/login")).send().await?;
    let login_cookie = set_cookie_value(&login, "__Host-avemint-login").ok_or("no login cookie")?;
    let approved = http.get(location(&login)?).send().await?;
    let callback = http
        .get(location(&approved)?)
        .header(reqwest::header::COOKIE, format!("__Host-avemint-login={login_cookie}"))
        .send()
        .await?;
    if callback.status() != 302 {
        return Err(format!("callback answered {}", callback.status()).into());
    }
    Ok(set_cookie_value(&callback, "__Host-avemint").ok_or("no session cookie")?)
}

/// Prints what `sessions` signed-in sessions occupy in the store at `url`, per session: the average sealed record
/// (`storage_record_bytes`), the `sessions` table with its indexes (`storage_sessions_bytes`), and the whole
/// database (`storage_total_bytes`: the SQLite file after a WAL checkpoint, or every relation of the PostgreSQL
/// schema, with TOAST and indexes).
async fn storage_figures(url: &DatabaseUrl, sessions: usize) -> Result<(), BoxError> {
    let n = sessions.max(1) as f64;
    let (record, table, total, page) = match url {
        DatabaseUrl::Sqlite(u) => {
            let pool = sqlx::SqlitePool::connect(u).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&pool).await?;
            let record: f64 = sqlx::query_scalar("SELECT CAST(AVG(LENGTH(sealed)) AS REAL) FROM sessions")
                .fetch_one(&pool)
                .await?;
            let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&pool).await?;
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&pool).await?;
            let table: i64 = sqlx::query_scalar(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN \
                 (SELECT name FROM sqlite_master WHERE tbl_name = 'sessions')",
            )
            .fetch_one(&pool)
            .await?;
            pool.close().await;
            (record, table, page * pages, page)
        }
        DatabaseUrl::Postgres(u) => {
            let pool = sqlx::PgPool::connect(u.expose()).await?;
            let record: f64 = sqlx::query_scalar("SELECT AVG(LENGTH(sealed))::float8 FROM sessions")
                .fetch_one(&pool)
                .await?;
            let table: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('sessions')")
                .fetch_one(&pool)
                .await?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                 JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = current_schema() AND c.relkind = 'r'",
            )
            .fetch_one(&pool)
            .await?;
            let page: i64 = sqlx::query_scalar("SELECT current_setting('block_size')::bigint")
                .fetch_one(&pool)
                .await?;
            pool.close().await;
            (record, table, total, page)
        }
    };
    println!("storage_sessions={sessions}");
    println!("storage_page_size={page}");
    println!("storage_record_bytes={record:.0}");
    println!("storage_sessions_bytes={:.0}", table as f64 / n);
    println!("storage_total_bytes={:.0}", total as f64 / n);
    Ok(())
}

/// A session record shaped like one from a real sign-in (sizes of Ave's tokens included).
fn session_data(n: usize, now: UnixTime) -> SessionData {
    let filler = |prefix: &str, len: usize| {
        let mut s = String::from(prefix);
        while s.len() < len {
            s.push_str("eyJhbGciOiJSUzI1NiJ9");
        }
        s.truncate(len);
        s
    };
    let sub = format!("00000000-0000-4000-8000-{n:012}");
    let claims: Map<String, Value> = match json!({
        "iss": "https://aveid.net", "sub": sub, "aud": "app_bench", "azp": "app_bench",
        "exp": now + Duration::from_secs(3600), "iat": now, "name": format!("User {n}"),
        "preferred_username": format!("user{n}"), "email": format!("user{n}@example.com"), "email_verified": true
    }) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let user = match json!({"id": sub, "displayName": format!("User {n}"), "handle": format!("user{n}"), "email": format!("user{n}@example.com"), "avatarUrl": null})
    {
        Value::Object(m) => Some(m),
        _ => None,
    };
    SessionData {
        sid: SessionHandle::generate(),
        sub,
        scope: DEFAULT_SCOPES.to_owned(),
        tokens: AveTokens {
            access_token: Secret::new(filler("at_", 43)),
            access_token_jwt: Some(Secret::new(filler("eyJ", 760))),
            id_token: Secret::new(filler("eyJ", 900)),
            refresh_token: Some(Secret::new(filler("rt_", 64))),
            access_expires_at: now + Duration::from_secs(3600),
        },
        id_token_claims: claims,
        user,
        signed_in_from: Default::default(),
    }
}

async fn populate(db: &DatabaseUrl, count: usize, cookies: &Path) -> Result<(), BoxError> {
    let sessions = Sessions::open(
        db,
        &session_keys(),
        SessionSettings::default(),
        Duration::ZERO,
        Clock::System,
    )
    .await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(cookies)?);
    let started = Instant::now();
    let t = sessions.now();
    for n in 0..count {
        let id = sessions.create(&session_data(n, t)).await?;
        writeln!(out, "{}", id.to_cookie_value().expose())?;
    }
    out.flush()?;
    println!("populated={count}");
    println!("populated_at={t}");
    println!("populate_s={:.1}", started.elapsed().as_secs_f64());
    Ok(())
}

/// A small xorshift generator: shuffling benchmark keys needs no crypto.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn lookup(db: &DatabaseUrl, cookies: &Path, samples: usize, at: Option<i64>) -> Result<(), BoxError> {
    // Looked up as of `at` (when they were populated), so none has expired in between.
    let clock = match at {
        Some(t) => ManualClock::new(UnixTime::from_secs(t)).clock(),
        None => Clock::System,
    };
    let sessions = Sessions::open(db, &session_keys(), SessionSettings::default(), Duration::ZERO, clock).await?;
    let mut keys = Vec::new();
    for line in std::fs::read_to_string(cookies)?.lines() {
        keys.push(SessionId::parse(line.trim()).ok_or("bad cookie line")?.key());
    }
    // Distinct keys in random order: no lookup can be answered by a cache.
    let mut rng = XorShift(u64::from_le_bytes(random_bytes::<8>()) | 1);
    for i in (1..keys.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        keys.swap(i, j);
    }
    keys.truncate(samples);
    let mut micros = Vec::with_capacity(keys.len());
    for key in &keys {
        let started = Instant::now();
        let found = sessions.load(key).await?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        if found.is_none() {
            return Err("a stored session was not found".into());
        }
    }
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| micros[((micros.len() as f64 * p) as usize).min(micros.len() - 1)];
    println!("lookups={}", micros.len());
    println!("lookup_p50_us={:.1}", pct(0.50));
    println!("lookup_p99_us={:.1}", pct(0.99));
    Ok(())
}
