//! Nothing secret reaches the logs: every line avemint (and every library it
//! uses, and the in-process Ave emulator) writes at `trace` level during a full
//! sign-in, token, session and logout run is captured, then searched for each
//! secret that run handled, including the tokens of two silent renewals.
//!
//! Its own test binary, because it installs the process-wide subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use avemint_core::session::SealingKeys;
use avemint_core::session::{Purpose, Sealer};
use avemint_core::signin::decode_login;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;
use support::{Browser, LOGIN_COOKIE, Options, SESSION_COOKIE, TestApp, location};
use tracing_subscriber::fmt::MakeWriter;

/// The session key `TestApp` configures.
const SESSION_KEY: [u8; 32] = [42; 32];

/// An in-memory log sink.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Every secret seen during the run, with a label for failure messages.
#[derive(Default)]
struct Transcript {
    secrets: Vec<(String, String)>,
}

impl Transcript {
    fn add(&mut self, label: &str, value: &str) {
        assert!(value.len() >= 8, "{label} is too short to search for meaningfully");
        self.secrets.push((label.to_owned(), value.to_owned()));
        // A JWT may leak one part at a time: search for each part too.
        if value.split('.').count() == 3 {
            for (i, part) in value.split('.').enumerate() {
                if part.len() >= 16 {
                    self.secrets.push((format!("{label} (part {i})"), part.to_owned()));
                }
            }
        }
    }

    fn add_cookies(&mut self, browser: &Browser) {
        for raw in &browser.set_cookies {
            let (pair, _) = raw.split_once(';').unwrap_or((raw, ""));
            if let Some((name, value)) = pair.split_once('=')
                && !value.is_empty()
            {
                self.add(&format!("cookie {name}"), value);
            }
        }
    }

    /// `GET /auth/login`, Ave's sign-in, `GET /auth/callback`: state, nonce, the
    /// PKCE verifier (from the sealed login cookie), the code, both cookies, Ave's tokens.
    async fn sign_in(&mut self, app: &TestApp, browser: &mut Browser) {
        let login = app.login_start(browser, Some("/after")).await;
        let authorize = url::Url::parse(&location(&login)).expect("authorize url");
        for (k, v) in authorize.query_pairs() {
            if matches!(k.as_ref(), "state" | "nonce" | "code_challenge") {
                self.add(&k, &v);
            }
        }
        let login_cookie = browser.get(LOGIN_COOKIE).expect("login cookie").to_owned();
        let sealer = Sealer::new(&SealingKeys::from_keys(vec![SESSION_KEY]), Purpose::LoginCookie);
        let pending =
            decode_login(&login_cookie, &sealer, avemint_base::clock::Clock::System.now()).expect("login cookie opens");
        self.add("PKCE verifier", pending.verifier.expose());
        let callback = app.authorize(authorize.as_str()).await;
        let callback_url = url::Url::parse(&callback).expect("callback url");
        let code = callback_url
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("code");
        self.add("authorization code", &code);
        let resp = browser.send(app.http.get(callback)).await;
        assert_eq!(resp.status(), 302, "signed in");
        assert!(browser.get(SESSION_COOKIE).is_some());
        self.add_cookies(browser);
    }

    /// `POST /auth/token`: the app JWT.
    async fn app_token(&mut self, app: &TestApp, browser: &mut Browser) {
        let resp = app.post_token(browser, true).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        self.add("app JWT", body["access_token"].as_str().expect("token"));
    }

    /// `POST /auth/token` once more, with renewal due: avemint refreshes Ave's
    /// tokens (the new ones join the transcript through `issued_tokens`).
    async fn refresh(&mut self, app: &TestApp, browser: &mut Browser) {
        let refreshes = |app: &TestApp| {
            app.emulator
                .token_requests()
                .iter()
                .filter(|r| r.grant_type.as_deref() == Some("refresh_token") && r.status == 200)
                .count()
        };
        let before = refreshes(app);
        self.app_token(app, browser).await;
        assert_eq!(refreshes(app), before + 1, "the token call renewed Ave's tokens");
    }

    /// `GET /auth/session`.
    async fn session(&mut self, app: &TestApp, browser: &mut Browser) {
        let resp = browser
            .send(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"))
            .await;
        assert_eq!(resp.status(), 200);
    }

    /// `POST /auth/logout`.
    async fn logout(&mut self, app: &TestApp, browser: &mut Browser) {
        let resp = browser
            .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
            .await;
        assert_eq!(resp.status(), 204);
        self.add_cookies(browser);
    }

    /// Ave's tokens, the client secret and the session key in every encoding.
    fn add_static(&mut self, app: &TestApp) {
        for (i, t) in app.emulator.issued_tokens().iter().enumerate() {
            self.add(&format!("Ave token #{i}"), t);
        }
        self.add("client secret", &app.emulator.client_secret());
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            self.add("session key (base64)", &engine.encode(SESSION_KEY));
        }
        self.add("session key (raw)", &String::from_utf8_lossy(&SESSION_KEY));
        self.add("session key (Debug bytes)", &format!("{SESSION_KEY:?}")[..40]);
    }
}

/// The process-wide capture, installed once for every test of this binary (they run concurrently:
/// each finds its own lines by request id).
fn capture() -> Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            avemint::telemetry::init("trace", false, capture.clone());
            capture
        })
        .clone()
}

#[tokio::test]
async fn a_full_run_at_trace_level_logs_no_secret() {
    let capture = capture();

    // Renewal is always due (the margin exceeds Ave's access-token lifetime), so every app-token call refreshes.
    let app = TestApp::spawn_with(Options {
        renewal: Some(support::always_renew()),
        ..Options::default()
    })
    .await;
    let mut transcript = Transcript::default();
    let mut browser = Browser::default();
    transcript.sign_in(&app, &mut browser).await;
    transcript.app_token(&app, &mut browser).await;
    transcript.refresh(&app, &mut browser).await;
    transcript.refresh(&app, &mut browser).await;
    transcript.session(&app, &mut browser).await;
    transcript.logout(&app, &mut browser).await;
    transcript.add_static(&app);
    app.stop().await;

    let logs = capture.text();
    // The capture really saw the run, at trace level.
    assert!(logs.contains("signed in"), "avemint's own lines are captured");
    assert!(logs.contains("/auth/callback"), "request lines are captured");
    assert!(logs.contains("TRACE"), "trace-level lines are captured");
    assert!(transcript.secrets.len() > 15, "the run handled secrets");
    // Issue 22 §6: no call of this run found the token budget full, so none is logged as a budget wait (before,
    // every call "waited" a few nanoseconds and the first of each class logged a WARN with `waited_ms=0`).
    assert!(
        !logs.contains("budget made a request wait"),
        "a call that found room at once is not a budget wait"
    );
    let mut leaks = Vec::new();
    for (label, secret) in &transcript.secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line_start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            leaks.push(format!("{label}: {}", &logs[line_start..line_end]));
        }
    }
    assert!(leaks.is_empty(), "secrets in the logs:\n{}", leaks.join("\n"));
}

/// The request id (the client's, or a new one) is answered in `X-Request-Id` and is on every line the
/// request writes: the access line, the store's statements, the Ave call and the renewal, which runs in
/// its own task.
#[tokio::test]
async fn every_line_of_a_request_and_its_renewal_names_the_request_id() {
    let capture = capture();
    let app = TestApp::spawn_with(Options {
        renewal: Some(support::always_renew()),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let id = format!("renewal-{}", std::process::id());
    let resp = browser
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("X-Request-Id", &id),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-request-id"],
        id.as_str(),
        "the client's id is answered"
    );
    // A generated id when the client's is unusable.
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("X-Request-Id", "not acceptable: has spaces")
        .send()
        .await
        .expect("healthz");
    let generated = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    app.stop().await;

    let logs = capture.text();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&format!("request_id=\"{id}\"")) || l.contains(&format!("request_id={id}")))
        .collect();
    let has = |needle: &str| ours.iter().any(|l| l.contains(needle));
    for needle in [
        "session.refresh",         // the renewal task's span, under the request's
        "grant=\"refresh_token\"", // the Ave call
        "session renewed",         // the renewal's own line
        "db.statement=",           // the store
        "status=200",              // the access line
    ] {
        assert!(
            has(needle),
            "no line with {needle:?} names the request id; its lines:\n{}",
            ours.join("\n")
        );
    }
    assert!(
        logs.lines().any(|l| l.contains(&generated) && l.contains("/healthz")),
        "the generated id is on the request's lines"
    );
}

/// An upstream on loopback that answers every request with the `Authorization` it got in `X-Echo`; the bearers
/// it got, and its address.
async fn echoing_upstream() -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    let acceptor = poem::listener::TcpAcceptor::from_std(listener).expect("acceptor");
    let bearers: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = bearers.clone();
    let echo = poem::endpoint::make(move |req: poem::Request| {
        let seen = seen.clone();
        async move {
            let mut resp = poem::Response::builder().body("echoed");
            if let Some(v) = req.headers().get("authorization") {
                let bearer = v.to_str().unwrap_or_default().trim_start_matches("Bearer ").to_owned();
                seen.lock().expect("lock").push(bearer);
                resp.headers_mut().insert("x-echo", v.clone());
            }
            resp
        }
    });
    let task = tokio::spawn(async move {
        let _ = poem::Server::new_with_acceptor(acceptor).run(echo).await;
    });
    (base, bearers, task)
}

/// Proxied requests: the request's lines name the route (not `unmatched`); an unreachable upstream's warning
/// names the cause and the upstream's host and port; a client's malformed body is no upstream failure; an
/// upstream echoing the bearer is warned about without the bearer.
#[tokio::test]
async fn proxied_requests_log_their_route_and_the_cause_of_upstream_failures_never_the_bearer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let capture = capture();
    let (upstream, bearers, task) = echoing_upstream().await;
    let down = support::free_port();
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/echo\"\nupstream = \"{upstream}\"\n\
             [[routes]]\npath = \"/api/down\"\nupstream = \"http://127.0.0.1:{down}/v1\"\n"
        )),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let pid = std::process::id();
    let (down_id, echo_id, body_id) = (format!("down-{pid}"), format!("echo-{pid}"), format!("body-{pid}"));
    for (path, id, status) in [("/api/down/x?secret=1", &down_id, 502), ("/api/echo/x", &echo_id, 200)] {
        let req = app
            .http
            .get(app.url(path))
            .header("X-CSRF", "1")
            .header("X-Request-Id", id);
        assert_eq!(browser.send(req).await.status(), status, "{path}");
    }
    // A chunked body with bare-LF line ends.
    let session = browser.get(SESSION_COOKIE).expect("session");
    let host = app.address.trim_start_matches("http://");
    let head = format!(
        "POST /api/echo/body HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-CSRF: 1\r\nX-Request-Id: {body_id}\r\n\
         Transfer-Encoding: chunked\r\nCookie: {SESSION_COOKIE}={session}\r\n\r\n5\nhello\n0\n\n"
    );
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    app.stop().await;
    task.abort();

    let logs = capture.text();
    let lines_of = |id: &str| -> Vec<&str> {
        logs.lines()
            .filter(|l| l.contains(&format!("request_id=\"{id}\"")) || l.contains(&format!("request_id={id}")))
            .collect()
    };
    let down_lines = lines_of(&down_id);
    let all = down_lines.join("\n");
    let cause = format!("connection refused to 127.0.0.1:{down}");
    assert!(
        down_lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("upstream request failed") && l.contains(&cause)),
        "{all}"
    );
    assert!(
        !all.contains("error sending request") && !all.contains("secret=1") && !all.contains("unmatched"),
        "{all}"
    );
    assert!(
        down_lines
            .iter()
            .any(|l| l.contains("status=502") && (l.contains("route=\"/api/down\"") || l.contains("route=/api/down"))),
        "the access line names the route: {all}"
    );
    let echo_lines = lines_of(&echo_id).join("\n");
    assert!(
        echo_lines.contains("contained the bearer sent upstream"),
        "{echo_lines}"
    );
    let bearers = bearers.lock().expect("lock").clone();
    assert!(!bearers.is_empty());
    for bearer in bearers {
        let signature = bearer.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "the echoed bearer is not logged");
    }
    let body_lines = lines_of(&body_id).join("\n");
    assert!(body_lines.contains("status=400"), "{body_lines}");
    assert!(
        !body_lines.contains("upstream request failed") && !body_lines.contains("WARN"),
        "{body_lines}"
    );
}

/// A WebSocket upstream on loopback that echoes every message; its base URL.
async fn echo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if m.is_text() || m.is_binary() {
                        let _ = futures_util::SinkExt::send(&mut ws, m).await;
                    }
                }
            });
        }
    });
    base
}

/// tungstenite logs every message it reads or writes at `trace`: an app JWT sent through a proxied WebSocket and
/// echoed back by the upstream reaches no log line, at `trace` level.
#[tokio::test]
async fn a_token_echoed_through_a_proxied_websocket_is_not_logged_at_trace_level() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let capture = capture();
    let upstream = echo_upstream().await;
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!("[[routes]]\npath = \"/api/ws\"\nupstream = \"{upstream}\"\n")),
        // The test holds the route's token itself, to recognise it in the log.
        env: vec![("AVEMINT_TOKEN_BROWSER", "true".into())],
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let resp = app.post_token(&mut browser, true).await;
    let body: Value = resp.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token").to_owned();

    let mut req = format!("{}/api/ws", app.address.replacen("http://", "ws://", 1))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert("origin", app.address.parse().expect("origin"));
    let cookies: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    req.headers_mut()
        .insert("cookie", cookies.join("; ").parse().expect("cookie"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket opens");
    for m in [
        Message::text(token.clone()),
        Message::binary(token.clone().into_bytes()),
    ] {
        futures_util::SinkExt::send(&mut ws, m.clone()).await.expect("send");
        let echoed = futures_util::StreamExt::next(&mut ws).await;
        assert!(matches!(&echoed, Some(Ok(e)) if *e == m), "echoed: {echoed:?}");
    }
    let _ = ws.close(None).await;
    app.stop().await;

    let logs = capture.text();
    assert!(logs.contains("/api/ws"), "the WebSocket's request line is captured");
    let mut transcript = Transcript::default();
    transcript.add("app JWT sent through the WebSocket", &token);
    for (label, secret) in &transcript.secrets {
        assert!(!logs.contains(secret.as_str()), "{label} is in the logs");
    }
}

/// The JSON lines `avemint serve` (a child process at the default log level, `RUST_LOG` unset) wrote to `file`
/// after its first `from` bytes.
fn json_lines(file: &std::path::Path, from: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("log file");
    text[from.min(text.len())..]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// `avemint serve` at the default log level (no `RUST_LOG`), JSON lines to `log`.
fn serve_at_default_level(
    emulator: &ave_emulator::Emulator,
    database_url: &str,
    dir: &std::path::Path,
    log: &std::path::Path,
) -> (support::KillOnDrop, String) {
    let port = support::free_port();
    let mut cmd = support::serve_command(
        &support::AveClientEnv::of(emulator),
        port,
        database_url,
        &dir.join("keys"),
    );
    cmd.env_remove("RUST_LOG")
        .env("AVEMINT_LOG_FORMAT", "json")
        .env("AVEMINT_LOGIN_RATE_LIMIT", "0")
        .env("AVEMINT_MAX_SESSIONS_PER_USER", "100")
        .stderr(std::fs::File::create(log).expect("log file"));
    let child = support::KillOnDrop(cmd.spawn().expect("avemint serve starts"));
    (child, format!("http://127.0.0.1:{port}"))
}

/// Issue 23 §5: during an outage every expired session's request failed its refresh (two WARN lines) and was
/// answered 503 (an access line): ~130 lines/s at 150 sessions. Now each cause is logged once per interval with a
/// count: a burst of 200 failing requests from 20 sessions writes a handful of lines at the default level.
#[tokio::test]
async fn a_burst_of_failed_refreshes_writes_one_line_per_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ave's access tokens live 1 s (its shortest): they have expired when the burst starts, so failed refreshes
    // answer 503.
    let emulator = ave_emulator::Emulator::start(ave_emulator::EmulatorConfig {
        access_token_ttl: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let log = dir.path().join("avemint.log");
    let db = format!("sqlite://{}", dir.path().join("avemint.db").display());
    let (_avemint, base) = serve_at_default_level(&emulator, &db, dir.path(), &log);
    support::wait_ready(&base).await;
    emulator.set_redirect_uris(vec![format!("{base}/auth/callback")]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut browsers = Vec::new();
    for i in 0..20 {
        let mut browser = Browser::default();
        let user = emulator.users()[i % 2].id.clone();
        support::sign_in_as_at(&http, &emulator, &base, &mut browser, &user).await;
        browsers.push(browser);
    }
    emulator.set_token_failure(Some(ave_emulator::TokenFailure::Status(500)));
    // A child process has no injectable clock: wait out the 1-s access tokens.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let from = std::fs::metadata(&log).expect("log").len() as usize;

    let mut unavailable = 0;
    for _ in 0..10 {
        for browser in &mut browsers {
            let resp = browser
                .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
                .await;
            unavailable += usize::from(resp.status() == 503);
        }
    }
    assert!(unavailable >= 190, "the burst is answered 503: {unavailable} of 200");
    let attempts = emulator
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count();
    // Five failures in a row open the Ave client's circuit: after them only probes reach Ave, and the
    // refreshes held back are answered 503 without a call (outcome `not_started`).
    assert!(
        attempts >= 5,
        "the sessions tried to refresh until the circuit opened: {attempts}"
    );

    let lines = json_lines(&log, from);
    let shown: Vec<String> = lines.iter().map(Value::to_string).collect();
    let count = |pred: &dyn Fn(&Value) -> bool| lines.iter().filter(|l| pred(l)).count();
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        count(&|l| message(l) == "refresh failed; refresh token kept, retrying after a back-off"),
        1,
        "one line for {attempts} failed refreshes:\n{}",
        shown.join("\n")
    );
    assert_eq!(
        count(&|l| message(l) == "Ave token request failed"),
        1,
        "one line for {attempts} failed Ave calls:\n{}",
        shown.join("\n")
    );
    assert_eq!(
        count(&|l| l["target"] == "avemint::access" && l["fields"]["status"] == 503),
        1,
        "one access line for {unavailable} answers 503:\n{}",
        shown.join("\n")
    );
    assert!(
        lines.len() <= 5,
        "{} lines for a burst of 200 failing requests:\n{}",
        lines.len(),
        shown.join("\n")
    );
    for l in &lines {
        if l["level"] == "WARN" || l["target"] == "avemint::access" {
            assert_eq!(
                l["fields"]["similar_lines_held_back"], 0,
                "a gated line says how many were held back: {l}"
            );
        }
    }
}

/// Issue 23 §5: at the default level the database library adds nothing of its own below WARN (PostgreSQL's
/// notices, e.g. "relation \"_sqlx_migrations\" already exists, skipping" at every start, were sqlx INFO lines).
#[tokio::test]
async fn the_default_level_quiets_the_database_library() {
    let Some(url) = support::postgres_schema("the_default_level_quiets_the_database_library").await else {
        return;
    };
    let url = support::database_url_string(&url);
    let emulator = ave_emulator::Emulator::start(Default::default())
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    // Twice on one schema: the second start finds every table there.
    for run in ["first", "second"] {
        let log = dir.path().join(format!("{run}.log"));
        let (avemint, base) = serve_at_default_level(&emulator, &url, dir.path(), &log);
        support::wait_ready(&base).await;
        drop(avemint);
        let lines = json_lines(&log, 0);
        assert!(
            lines.iter().any(|l| l["fields"]["message"] == "avemint ready"),
            "{run} start logged"
        );
        let noise: Vec<String> = lines
            .iter()
            .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("sqlx")))
            .map(Value::to_string)
            .collect();
        assert!(
            noise.is_empty(),
            "{run} start: sqlx lines at the default level:\n{}",
            noise.join("\n")
        );
    }
}

/// The token service writes exactly one audit line per token it issues (grant, profile, `sub`, the `act` chain)
/// and never a token or a secret, at trace level, refusals included.
#[tokio::test]
async fn the_token_service_audits_each_token_and_logs_no_token_or_secret() {
    const WEB_SECRET: &str = "audit-web-exchange-secret-0123456789ab";
    const JOB_SECRET: &str = "audit-job-client-secret-0123456789abcd";
    let capture = capture();
    let app = TestApp::spawn_with(Options {
        token_toml: Some(format!(
            "[[profiles]]\nname = \"web\"\naudience = \"https://audit-web.example\"\ndefault = true\n\
             [profiles.exchange]\nsecret = \"{WEB_SECRET}\"\nmay_exchange_to = [\"orders\"]\n\
             [[profiles]]\nname = \"orders\"\naudience = \"audit-orders-api\"\n\
             [[profiles]]\nname = \"audit-job\"\naudience = \"audit-reports-api\"\nservice = true\n\
             [profiles.client]\nsecret = \"{JOB_SECRET}\"\n"
        )),
        ..Options::default()
    })
    .await;
    let mut transcript = Transcript::default();
    transcript.add("exchange secret", WEB_SECRET);
    transcript.add("client secret", JOB_SECRET);
    let mut browser = Browser::default();
    transcript.sign_in(&app, &mut browser).await;
    let resp = app.post_token(&mut browser, true).await;
    let web: Value = resp.json().await.expect("json");
    let web = web["access_token"].as_str().expect("token").to_owned();
    transcript.add("subject token", &web);
    let send = |id: &'static str, user: &'static str, secret: &str, form: Vec<(&'static str, String)>| {
        app.http
            .post(app.url("/oauth/token"))
            .header("X-Request-Id", id)
            .basic_auth(user, Some(secret.to_owned()))
            .form(&form)
            .send()
    };
    let exchange = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".to_owned(),
        ),
        ("subject_token", web.clone()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token".to_owned(),
        ),
        ("audience", "audit-orders-api".to_owned()),
    ];
    let cc = vec![("grant_type", "client_credentials".to_owned())];
    let delegated: Value = send("audit-delegation", "web", WEB_SECRET, exchange.clone())
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    transcript.add("delegated token", delegated["access_token"].as_str().expect("token"));
    let service: Value = send("audit-service", "audit-job", JOB_SECRET, cc.clone())
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    transcript.add("service token", service["access_token"].as_str().expect("token"));
    let refused = send("audit-refused", "audit-job", WEB_SECRET, cc).await.expect("send");
    assert_eq!(refused.status(), 401);
    transcript.add_static(&app);
    app.stop().await;

    let logs = capture.text();
    let audit = |id: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(id) && l.contains("token issued"))
            .map(str::to_owned)
            .collect()
    };
    let delegation = audit("audit-delegation");
    assert_eq!(delegation.len(), 1, "one audit line: {delegation:?}");
    for field in [
        "grant=\"token_exchange_delegation\"",
        "profile=\"orders\"",
        "from_profile=\"web\"",
        "act=https://audit-web.example",
    ] {
        assert!(delegation[0].contains(field), "{field} in {}", delegation[0]);
    }
    let service = audit("audit-service");
    assert_eq!(service.len(), 1, "{service:?}");
    assert!(service[0].contains("grant=\"client_credentials\"") && service[0].contains("sub=\"audit-job\""));
    assert!(audit("audit-refused").is_empty(), "a refusal issues nothing");
    assert!(
        logs.lines()
            .any(|l| l.contains("audit-refused") && l.contains("token request refused"))
    );
    let leaks: Vec<&str> = transcript
        .secrets
        .iter()
        .filter(|(_, secret)| logs.contains(secret.as_str()))
        .map(|(label, _)| label.as_str())
        .collect();
    assert!(leaks.is_empty(), "in the logs: {leaks:?}");
}
