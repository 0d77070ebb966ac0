//! Proxy mode, black-box: avemint against the emulator, forwarding to a real
//! upstream HTTP server on loopback that records what it received. Bearers
//! are verified against avemint's published JWKS.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use poem::http::{HeaderMap, StatusCode};
use poem::listener::TcpAcceptor;
use poem::{Body, Endpoint, Request, Response, Server};
use serde_json::Value;
use support::{Browser, Options, SESSION_COOKIE, TestApp, error_code, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the upstream received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body_len: usize,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The app JWT of the `Authorization: Bearer` header (there must be exactly one).
    fn bearer(&self) -> String {
        assert_eq!(self.headers.get_all("authorization").iter().count(), 1, "{self:?}");
        let value = self.header("authorization").expect("authorization");
        value.strip_prefix("Bearer ").expect("a bearer").to_owned()
    }
}

/// An upstream API on loopback. Under any base path: `…/sse` streams two events 1.5 s apart, `…/slow` answers
/// after 3 s, `…/unauthorized` answers 401 with a challenge; everything else reads the body and answers
/// `{"ok": true}`.
struct Upstream {
    base: String,
    log: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
        let log = Arc::new(Mutex::new(Vec::new()));
        let endpoint = UpstreamEndpoint { log: log.clone() };
        let task = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(endpoint).await;
        });
        Self { base, log, task }
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().expect("lock").clone()
    }

    fn last(&self) -> Received {
        self.received().last().cloned().expect("the upstream was called")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct UpstreamEndpoint {
    log: Arc<Mutex<Vec<Received>>>,
}

impl Endpoint for UpstreamEndpoint {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        let body = req.take_body().into_bytes().await.unwrap_or_default();
        self.log.lock().expect("lock").push(Received {
            method: req.method().to_string(),
            path: path.clone(),
            query: req.uri().query().map(str::to_owned),
            headers: req.headers().clone(),
            body_len: body.len(),
        });
        Ok(if path.ends_with("/sse") {
            let events = futures_util::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"data: one\n\n")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        Some((Ok(Bytes::from_static(b"data: two\n\n")), 2))
                    }
                    _ => None,
                }
            });
            Response::builder()
                .content_type("text/event-stream")
                .body(Body::from_bytes_stream(events))
        } else if path.ends_with("/ticker") || path.ends_with("/stall") {
            // `ticker`: eight events 400 ms apart; `stall`: one event, then 4 s of silence, then another.
            let (count, gap) = match path.ends_with("/ticker") {
                true => (8, Duration::from_millis(400)),
                false => (2, Duration::from_secs(4)),
            };
            let events = futures_util::stream::unfold(0, move |i| async move {
                if i == count {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n"))), i + 1))
            });
            Response::builder()
                .content_type("text/event-stream")
                .body(Body::from_bytes_stream(events))
        } else if path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::builder().body("late")
        } else if path.ends_with("/unauthorized") {
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Bearer error=\"invalid_token\"")
                .content_type("application/json")
                .body(r#"{"upstream":"says no"}"#)
        } else {
            Response::builder()
                .content_type("application/json")
                .header("x-upstream", "yes")
                .header("connection", "x-upstream-private")
                .header("x-upstream-private", "hop")
                .header("set-cookie", "__Host-avemint=planted; Path=/")
                .header("set-cookie", "upstream=1; Path=/")
                .body(r#"{"ok":true}"#)
        })
    }
}

const PROFILES: &str = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\ndefault = true\n[[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n";

/// avemint with four routes to `upstream` (and one to a closed port), and a signed-in browser.
async fn proxy_app(upstream: &Upstream) -> (TestApp, Browser) {
    let base = &upstream.base;
    let down = free_port();
    let routes = format!(
        "[[routes]]\npath = \"/api/orders\"\nupstream = \"{base}/v1\"\nprofile = \"orders\"\nmethods = [\"GET\", \"POST\"]\nmax_request_bytes = 1024\n\
         [[routes]]\npath = \"/api/web\"\nupstream = \"{base}/web/\"\nstrip_cookies = true\n\
         [[routes]]\npath = \"/api/slow\"\nupstream = \"{base}\"\ntimeout_ms = 300\n\
         [[routes]]\npath = \"/api/down\"\nupstream = \"http://127.0.0.1:{down}\"\n"
    );
    let app = TestApp::spawn_with(Options {
        token_toml: Some(PROFILES.to_owned()),
        routes_toml: Some(routes),
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_browser().await;
    (app, browser)
}

/// `method path` with `X-CSRF: 1` (or not) from `browser`.
async fn call(app: &TestApp, browser: &mut Browser, method: &str, path: &str, csrf: bool) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app.http.request(method, app.url(path));
    if csrf {
        req = req.header("X-CSRF", "1");
    }
    browser.send(req).await
}

#[tokio::test]
async fn without_a_session_the_upstream_is_never_called() {
    let upstream = Upstream::start().await;
    let (app, _) = proxy_app(&upstream).await;
    let resp = call(&app, &mut Browser::default(), "GET", "/api/orders/items", true).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "login_required");
    let mut stale = Browser::default();
    stale.cookies.insert(SESSION_COOKIE.into(), "A".repeat(43));
    let resp = call(&app, &mut stale, "GET", "/api/orders/items", true).await;
    assert_eq!(resp.status(), 401);
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn the_upstream_gets_the_path_query_and_a_bearer_of_the_routes_profile() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    browser.cookies.insert("theme".into(), "dark".into());
    let req = app
        .http
        .get(app.url("/api/orders/items/7?a=1&b=x%20y&b=2"))
        .header("X-CSRF", "1")
        .header("Authorization", "Bearer from-the-browser");
    let resp = browser.send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert!(
        !resp.headers().contains_key("x-upstream-private"),
        "hop-by-hop stays upstream"
    );
    let set: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(set, ["upstream=1; Path=/"], "an upstream cannot set avemint's cookies");
    assert_eq!(resp.json::<Value>().await.expect("json")["ok"], true);
    let seen = upstream.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/v1/items/7"));
    assert_eq!(seen.query.as_deref(), Some("a=1&b=x%20y&b=2"));
    let token = seen.bearer();
    let claims = app.verify_for(&token, "orders-api").await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id.as_str());
    let cookie = seen.header("cookie").expect("other cookies pass");
    assert!(
        cookie.contains("theme=dark") && !cookie.contains("__Host-avemint"),
        "{cookie}"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let host = app.address.trim_start_matches("http://");
    assert_eq!(seen.header("x-forwarded-host"), Some(host));
    assert_eq!(
        seen.header("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{host}\"").as_str())
    );

    // The prefix alone is the upstream path; the token is reused within its lifetime.
    assert_eq!(call(&app, &mut browser, "GET", "/api/orders", true).await.status(), 200);
    assert_eq!(upstream.last().path, "/v1");
    assert_eq!(upstream.last().bearer(), token);

    // Another route, the default profile, no cookie at all (`strip_cookies`).
    assert_eq!(call(&app, &mut browser, "POST", "/api/web/x", true).await.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.path, "/web/x");
    let web = app.verify_for(&seen.bearer(), "https://web").await.claims;
    assert_eq!(web["sub"], claims["sub"]);
    assert_eq!(seen.header("cookie"), None);
}

/// `method /api/orders/x` with exactly `headers` from `browser`.
async fn call_with(app: &TestApp, browser: &mut Browser, method: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app.http.request(method, app.url("/api/orders/x"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    browser.send(req).await
}

#[tokio::test]
async fn csrf_origin_and_navigation_are_checked_before_anything_else() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let csrf = ("X-CSRF", "1");
    let (cors, navigate) = (("Sec-Fetch-Mode", "cors"), ("Sec-Fetch-Mode", "navigate"));
    let (same_origin, cross_site) = (("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site"));
    for (method, headers, why) in [
        ("GET", vec![], "X-CSRF missing"),
        (
            "GET",
            vec![csrf, ("Origin", "https://evil.example")],
            "cross-site Origin",
        ),
        ("GET", vec![csrf, navigate, same_origin], "top-level navigation"),
        ("GET", vec![cors, cross_site], "cross-site fetch without X-CSRF"),
        ("POST", vec![cors, same_origin], "only GET may omit X-CSRF"),
    ] {
        let status = call_with(&app, &mut browser, method, &headers).await.status();
        assert_eq!(status, 403, "{why}");
    }
    assert!(upstream.received().is_empty());
    // EventSource: a same-origin GET that is not a navigation, without X-CSRF.
    let event_source = call_with(&app, &mut browser, "GET", &[cors, same_origin]).await;
    assert_eq!(event_source.status(), 200);
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test]
async fn methods_outside_the_allow_list_get_405() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let resp = call(&app, &mut browser, "DELETE", "/api/orders/7", true).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    assert_eq!(error_code(resp).await, "invalid_request");
    assert!(upstream.received().is_empty());
}

#[tokio::test]
async fn bodies_over_max_request_bytes_get_413_by_length_or_while_streaming() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let post = |body: reqwest::Body| {
        app.http
            .post(app.url("/api/orders/upload"))
            .header("X-CSRF", "1")
            .body(body)
    };
    let resp = browser.send(post(vec![b'x'; 100].into())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().body_len, 100, "the body arrives whole");
    let resp = browser.send(post(vec![b'x'; 2048].into())).await;
    assert_eq!(resp.status(), 413, "by Content-Length");
    assert_eq!(error_code(resp).await, "invalid_request");
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 256]))));
    let resp = browser.send(post(reqwest::Body::wrap_stream(chunks))).await;
    assert_eq!(resp.status(), 413, "while streaming (no Content-Length)");
    assert!(
        upstream.received().iter().all(|r| r.body_len <= 1024),
        "the upstream never got more than the limit"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504_without_detail() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    for (path, status) in [("/api/down/x", 502), ("/api/slow/slow", 504)] {
        let started = Instant::now();
        let resp = call(&app, &mut browser, "GET", path, true).await;
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "server_error", "{body}");
        let description = body["error_description"].as_str().expect("description");
        assert!(
            !description.contains("127.0.0.1") && !description.contains("/slow"),
            "{description}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{path} answered in time");
    }
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let started = Instant::now();
    let resp = call(&app, &mut browser, "GET", "/api/orders/sse", true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.expect("a first chunk").expect("bytes");
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: one\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("bytes"));
    }
    let ended_at = started.elapsed();
    assert_eq!(rest, b"data: two\n\n");
    assert!(first_at < Duration::from_secs(1), "first event after {first_at:?}");
    assert!(
        ended_at >= Duration::from_millis(1400),
        "stream ended after {ended_at:?}"
    );
}

/// Reads `resp`'s body to its end (or until the connection is cut), returning what arrived.
async fn read_all(resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return (got, false),
        }
    }
    (got, true)
}

#[tokio::test]
async fn a_streamed_answer_outlives_the_keep_alive_timeout_while_it_makes_progress_and_not_when_it_stalls() {
    let upstream = Upstream::start().await;
    let base = &upstream.base;
    let keep_alive = Duration::from_secs(1);
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!("[[routes]]\npath = \"/api/events\"\nupstream = \"{base}\"\n")),
        security: Some(avemint::testing::http::security::SecuritySettings {
            connection_timeouts: avemint::testing::server::ConnectionTimeouts {
                keep_alive,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;

    // Eight events over 2.8 s, each well within the keep-alive timeout of the one before: all arrive.
    let started = Instant::now();
    let resp = call(&app, &mut browser, "GET", "/api/events/ticker", true).await;
    assert_eq!(resp.status(), 200);
    let (got, complete) = read_all(resp).await;
    let expected: String = (0..8).map(|i| format!("data: {i}\n\n")).collect();
    assert!(complete, "the stream was cut after {:?}", started.elapsed());
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert!(started.elapsed() >= Duration::from_millis(2800));

    // An answer that makes no progress for the keep-alive timeout is closed: the second event (after 4 s) never
    // arrives, and the connection is closed long before it would have.
    let started = Instant::now();
    let resp = call(&app, &mut browser, "GET", "/api/events/stall", true).await;
    assert_eq!(resp.status(), 200);
    let (got, complete) = read_all(resp).await;
    let ended = started.elapsed();
    assert!(!complete, "a stalled answer is cut, not ended cleanly");
    assert_eq!(String::from_utf8_lossy(&got), "data: 0\n\n");
    assert!(
        ended >= keep_alive && ended < Duration::from_secs(3),
        "cut after {ended:?}"
    );
}

#[tokio::test]
async fn an_upstream_401_passes_through_unchanged() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let resp = call(&app, &mut browser, "GET", "/api/orders/unauthorized", true).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(resp.text().await.expect("body"), r#"{"upstream":"says no"}"#);
    assert!(browser.get(SESSION_COOKIE).is_some(), "the session is not touched");
}

#[tokio::test]
async fn dot_segments_cannot_leave_the_upstream_path() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    let session = browser.get(SESSION_COOKIE).expect("session");
    let host = app.address.trim_start_matches("http://");
    // Raw requests: an HTTP client library would normalise these paths before sending them.
    for path in ["/api/orders/%2e%2e/admin", "/api/orders/../admin", "/api/orders/a%2fb"] {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-CSRF: 1\r\nCookie: {SESSION_COOKIE}={session}\r\n\r\n"
        );
        assert_eq!(raw_request(&app.address, &head).await, 400, "{path}");
    }
    assert!(upstream.received().is_empty());
}

/// A raw HTTP/1.1 request (so nothing between the test and avemint rewrites its headers); the answer's status.
async fn raw_request(address: &str, head: &str) -> u16 {
    let mut socket = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .expect("connect");
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line")
}

#[tokio::test]
async fn a_connection_header_naming_authorization_cannot_remove_avemints_bearer() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    let session = browser.get(SESSION_COOKIE).expect("session");
    let host = app.address.trim_start_matches("http://");
    let head = format!(
        "GET /api/orders/smuggle HTTP/1.1\r\nHost: {host}\r\nConnection: close, Authorization, X-Forwarded-For\r\n\
         Authorization: Bearer from-the-browser\r\nX-Forwarded-For: 6.6.6.6\r\nX-CSRF: 1\r\n\
         Cookie: {SESSION_COOKIE}={session}\r\n\r\n"
    );
    assert_eq!(raw_request(&app.address, &head).await, 200);
    let seen = upstream.last();
    let token = seen.bearer();
    assert_ne!(token, "from-the-browser");
    app.verify_for(&token, "orders-api").await;
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}
