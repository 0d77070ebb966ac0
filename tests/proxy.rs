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
use support::{Browser, Options, SESSION_COOKIE, TestApp, WAYS_OUT, error_code, free_port, raw_answer};
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
        // `…/sink` counts its body as it streams by; everything else reads it whole.
        let body_len = if path.ends_with("/sink") {
            let mut body = req.take_body().into_bytes_stream();
            let mut n = 0;
            while let Some(Ok(chunk)) = body.next().await {
                n += chunk.len();
            }
            n
        } else {
            req.take_body().into_bytes().await.unwrap_or_default().len()
        };
        self.log.lock().expect("lock").push(Received {
            method: req.method().to_string(),
            path: path.clone(),
            query: req.uri().query().map(str::to_owned),
            headers: req.headers().clone(),
            body_len,
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
        } else if let Some(mib) = path
            .strip_suffix("-mib")
            .and_then(|p| p.rsplit('/').next()?.parse::<usize>().ok())
        {
            // `…/N-mib`: N MiB generated on the fly, in 64 KiB chunks, chunked (no Content-Length).
            let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
            let chunks = futures_util::stream::iter((0..mib * 16).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            Response::builder().body(Body::from_bytes_stream(chunks))
        } else if path.ends_with("/trickle") {
            // Ten bytes announced, five sent, then two seconds of silence before the rest.
            let halves = futures_util::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"01234")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Some((Ok(Bytes::from_static(b"56789")), 2))
                    }
                    _ => None,
                }
            });
            Response::builder()
                .header("content-length", "10")
                .body(Body::from_bytes_stream(halves))
        } else if path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::builder().body("late")
        } else if path.ends_with("/echo") {
            // Echoes the bearer it got, whole in one header and as its signature in a cookie.
            let authorization = req.headers().get("authorization").cloned();
            let bearer = authorization.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default();
            let signature = bearer.rsplit('.').next().unwrap_or_default();
            let mut resp = Response::builder()
                .header("x-kept", "yes")
                .header("set-cookie", format!("sig={signature}; Path=/"))
                .body("echoed");
            if let Some(v) = authorization {
                resp.headers_mut().insert("x-echo", v);
            }
            resp
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
                .header("set-cookie", "=__Host-avemint=planted; Path=/")
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
        security: Some(avemint::config::SecuritySettings {
            connection_timeouts: avemint::config::ConnectionTimeouts {
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

/// A raw HTTP/1.1 request (so nothing between the test and avemint rewrites its headers); the answer's status.
async fn raw_request(address: &str, head: &str) -> u16 {
    raw_answer(address, head).await.0
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

// ---------------------------------------------------------------------------------------------------------------
// WebSockets

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// What the WebSocket upstream saw of one connection.
#[derive(Debug, Clone, Default)]
struct WsSeen {
    path: String,
    headers: HeaderMap,
    pings: usize,
    /// The close frame the browser's side sent (code, reason), if any.
    closed_with: Option<(u16, String)>,
}

/// A WebSocket upstream on loopback: echoes text and binary messages; `close-me` makes it close with 4001;
/// a path ending in `/refuse` refuses the handshake with 403. It offers back `chat` when the client asks for it.
struct WsUpstream {
    base: String,
    seen: Arc<Mutex<Vec<Arc<Mutex<WsSeen>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsUpstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<Arc<Mutex<WsSeen>>>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = Arc::new(Mutex::new(WsSeen::default()));
                log.lock().expect("lock").push(this.clone());
                tokio::spawn(async move {
                    let record = this.clone();
                    // The signature is tungstenite's `Callback`.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &WsRequest, mut resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
                        let mut seen = record.lock().expect("lock");
                        seen.path = req.uri().path().to_owned();
                        seen.headers = req.headers().clone();
                        if seen.path.ends_with("/refuse") {
                            let mut refused = ErrorResponse::new(Some("no".into()));
                            *refused.status_mut() = StatusCode::FORBIDDEN;
                            return Err(refused);
                        }
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok());
                        if offered.is_some_and(|p| p.split(',').any(|p| p.trim() == "chat")) {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", "chat".parse().expect("value"));
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        match m {
                            Message::Text(t) if t.as_str() == "close-me" => {
                                let frame = CloseFrame {
                                    code: CloseCode::from(4001),
                                    reason: "upstream bye".into(),
                                };
                                let _ = ws.close(Some(frame)).await;
                            }
                            Message::Text(_) | Message::Binary(_) => {
                                let _ = futures_util::SinkExt::send(&mut ws, m).await;
                            }
                            Message::Ping(_) => this.lock().expect("lock").pings += 1,
                            Message::Close(frame) => {
                                this.lock().expect("lock").closed_with =
                                    frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Self { base, seen, task }
    }

    fn connections(&self) -> Vec<WsSeen> {
        let all = self.seen.lock().expect("lock");
        all.iter().map(|c| c.lock().expect("lock").clone()).collect()
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// avemint with a route `/api/ws` to `upstream` (allowing `allowed` as another origin, with `keep_alive`), and a
/// signed-in browser.
async fn ws_app(upstream: &WsUpstream, allowed: &str, keep_alive: Option<Duration>) -> (TestApp, Browser) {
    ws_app_with(upstream, allowed, keep_alive, "", Vec::new()).await
}

/// [`ws_app`] with more keys for the `/api/ws` route (`route_extra`, TOML lines) and environment (`env`).
async fn ws_app_with(
    upstream: &WsUpstream,
    allowed: &str,
    keep_alive: Option<Duration>,
    route_extra: &str,
    env: Vec<(&'static str, String)>,
) -> (TestApp, Browser) {
    let base = &upstream.base;
    let mut security = avemint::config::SecuritySettings {
        allowed_origins: avemint::config::AllowedOrigins::parse(allowed).expect("origins"),
        ..Default::default()
    };
    if let Some(keep_alive) = keep_alive {
        security.connection_timeouts.keep_alive = keep_alive;
    }
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/ws\"\nupstream = \"{base}/socket\"\nmethods = [\"GET\"]\n{route_extra}\
             [[routes]]\npath = \"/api/ws-down\"\nupstream = \"http://127.0.0.1:{}\"\n",
            free_port()
        )),
        security: Some(security),
        env,
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_browser().await;
    (app, browser)
}

/// Opens a WebSocket to `path` with `origin` (none: no `Origin` header) and the browser's cookies.
async fn ws_connect(app: &TestApp, browser: &Browser, path: &str, origin: Option<&str>) -> Result<Ws, WsError> {
    let url = format!("{}{path}", app.address.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    let headers = req.headers_mut();
    if let Some(origin) = origin {
        headers.insert("origin", origin.parse().expect("origin"));
    }
    headers.insert("sec-websocket-protocol", "chat, other".parse().expect("protocols"));
    let cookies: Vec<String> = browser.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !cookies.is_empty() {
        headers.insert("cookie", cookies.join("; ").parse().expect("cookie"));
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii")),
        Some("chat"),
        "the sub-protocol the upstream chose"
    );
    Ok(ws)
}

/// The next message that is not a ping or pong, within 10 s.
async fn next_message(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                _ => return None,
            }
        }
    })
    .await
    .expect("an answer within 10 s")
}

fn close_of(m: Option<Message>) -> (u16, String) {
    match m {
        Some(Message::Close(Some(f))) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_echoes_through_the_route_with_the_bearer_and_closes_from_the_browser() {
    let upstream = WsUpstream::start().await;
    let (app, browser) = ws_app(&upstream, "", None).await;
    let mut ws = ws_connect(&app, &browser, "/api/ws/room?x=1", Some(&app.address))
        .await
        .expect("the handshake succeeds");
    futures_util::SinkExt::send(&mut ws, Message::text("hello"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(Message::text("hello")));
    let blob = Bytes::from((0..=255u8).collect::<Vec<_>>());
    futures_util::SinkExt::send(&mut ws, Message::binary(blob.clone()))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(Message::Binary(blob)));
    futures_util::SinkExt::send(&mut ws, Message::Ping(Bytes::from_static(b"p")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Pong(_)))), "{pong:?}");

    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.close(Some(frame)).await.expect("close");
    assert_eq!(close_of(next_message(&mut ws).await), (1000, "bye".to_owned()));

    let seen = &upstream.connections()[0];
    assert_eq!(seen.path, "/socket/room");
    assert_eq!(seen.pings, 1, "the ping reached the upstream");
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.connections()[0].closed_with.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.connections()[0].closed_with, Some((1000, "bye".to_owned())));
    let token = seen.headers["authorization"].to_str().expect("ascii");
    let token = token.strip_prefix("Bearer ").expect("bearer");
    let claims = app.verify_for(token, app.audience()).await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id.as_str());
    let cookie = seen
        .headers
        .get("cookie")
        .map(|v| v.to_str().expect("ascii").to_owned());
    assert!(!cookie.unwrap_or_default().contains("__Host-avemint"));
    assert!(!seen.headers.contains_key("sec-websocket-extensions"));
}

#[tokio::test]
async fn a_websocket_closed_by_the_upstream_reaches_the_browser_with_its_code() {
    let upstream = WsUpstream::start().await;
    let (app, browser) = ws_app(&upstream, "", None).await;
    let mut ws = ws_connect(&app, &browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    futures_util::SinkExt::send(&mut ws, Message::text("close-me"))
        .await
        .expect("send");
    assert_eq!(close_of(next_message(&mut ws).await), (4001, "upstream bye".to_owned()));
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_session_ends() {
    let upstream = WsUpstream::start().await;
    let (app, mut browser) = ws_app(&upstream, "", None).await;
    let mut ws = ws_connect(&app, &browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    let mut other = ws_connect(&app, &browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    let session = browser.clone();
    let logout = app.http.post(app.url("/auth/logout")).header("X-CSRF", "1");
    assert!(browser.send(logout).await.status().is_success());
    let started = Instant::now();
    assert_eq!(
        close_of(next_message(&mut ws).await),
        (1008, "session ended".to_owned())
    );
    assert!(
        started.elapsed() <= Duration::from_secs(6),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(
        close_of(next_message(&mut other).await),
        (1008, "session ended".to_owned())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.connections().iter().any(|c| c.closed_with.is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in upstream.connections() {
        assert_eq!(c.closed_with, Some((1001, "session ended".to_owned())));
    }
    // And the ended session cannot open another.
    let refused = ws_connect(&app, &session, "/api/ws", Some(&app.address)).await;
    assert!(
        matches!(&refused, Err(WsError::Http(r)) if r.status() == 401),
        "{refused:?}"
    );
}

/// The status, `Retry-After` and error code of a refused handshake.
async fn refused_handshake(result: Result<Ws, WsError>) -> (u16, Option<String>, String) {
    match result {
        Err(WsError::Http(resp)) => {
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("a JSON body");
            (
                resp.status().as_u16(),
                retry,
                body["error"].as_str().expect("error").to_owned(),
            )
        }
        other => panic!(
            "expected a refused handshake, got {:?}",
            other.map(|_| "an open socket")
        ),
    }
}

#[tokio::test]
async fn a_session_gets_at_most_8_websockets_and_the_instance_max_websockets_each_refused_429_before_the_upstream() {
    let upstream = WsUpstream::start().await;
    let env = vec![("AVEMINT_MAX_WEBSOCKETS", "10".to_owned())];
    let (app, browser) = ws_app_with(&upstream, "", None, "", env).await;
    let mut open = Vec::new();
    for i in 0..8 {
        let ws = ws_connect(&app, &browser, "/api/ws", Some(&app.address)).await;
        open.push(ws.unwrap_or_else(|e| panic!("socket {i} opens: {e}")));
    }
    let ninth = ws_connect(&app, &browser, "/api/ws", Some(&app.address)).await;
    assert_eq!(
        refused_handshake(ninth).await,
        (429, Some("5".to_owned()), "rate_limited".to_owned())
    );
    assert_eq!(upstream.connections().len(), 8, "the upstream never saw the ninth");
    // One closes: its place is free again.
    let mut first = open.remove(0);
    first.close(None).await.expect("close");
    let _ = next_message(&mut first).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match ws_connect(&app, &browser, "/api/ws", Some(&app.address)).await {
            Ok(ws) => break ws,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("a freed place was not given back: {e}"),
        }
    };
    open.push(again);

    // Another user's session has its own 8, within the instance's 10.
    let other = app.signed_in_as(1).await;
    for _ in 0..2 {
        open.push(
            ws_connect(&app, &other, "/api/ws", Some(&app.address))
                .await
                .expect("open"),
        );
    }
    let before = upstream.connections().len();
    let eleventh = ws_connect(&app, &other, "/api/ws", Some(&app.address)).await;
    assert_eq!(
        refused_handshake(eleventh).await,
        (429, Some("5".to_owned()), "rate_limited".to_owned())
    );
    assert_eq!(
        upstream.connections().len(),
        before,
        "the upstream never saw the eleventh"
    );
}

/// Sends a text message of `fits` bytes (echoed back) and then one of `fits + 1`: the browser gets `1009`, and so
/// does the upstream.
async fn message_limit_is(upstream: &WsUpstream, app: &TestApp, browser: &Browser, fits: usize) {
    let mut ws = ws_connect(app, browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    let text = "x".repeat(fits);
    futures_util::SinkExt::send(&mut ws, Message::text(text.clone()))
        .await
        .expect("send");
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text(text)),
        "{fits} bytes pass"
    );
    futures_util::SinkExt::send(&mut ws, Message::text("y".repeat(fits + 1)))
        .await
        .expect("send");
    assert_eq!(
        close_of(next_message(&mut ws).await),
        (1009, "message too big".to_owned())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.connections()[0].closed_with.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstream.connections()[0].closed_with,
        Some((1009, "message too big".to_owned())),
        "the upstream is told too"
    );
}

#[tokio::test]
async fn a_websocket_message_over_max_message_bytes_closes_both_sides_with_1009() {
    // The default: 1 MiB.
    let upstream = WsUpstream::start().await;
    let (app, browser) = ws_app(&upstream, "", None).await;
    message_limit_is(&upstream, &app, &browser, 1024 * 1024).await;
    // The route's own.
    let upstream = WsUpstream::start().await;
    let (app, browser) = ws_app_with(&upstream, "", None, "max_message_bytes = 1024\n", Vec::new()).await;
    message_limit_is(&upstream, &app, &browser, 1024).await;
}

/// The session checks of an open WebSocket read the session without counting as the user's activity: a socket left
/// open does not keep its session from the idle timeout (the wall clock is a `ManualClock`).
#[tokio::test]
async fn an_open_websocket_does_not_keep_its_session_from_the_idle_timeout() {
    use avemint_base::clock::{ManualClock, UnixTime};
    const MINUTE: i64 = 60;
    let upstream = WsUpstream::start().await;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let clock = ManualClock::new(UnixTime::from_unsigned(start));
    let at = |minutes: i64| UnixTime::from_secs(UnixTime::from_unsigned(start).as_secs() + minutes * MINUTE);
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/ws\"\nupstream = \"{}/socket\"\n",
            upstream.base
        )),
        session: Some(avemint_core::session::SessionSettings {
            idle_timeout: Duration::from_secs(60 * 60),
            ..Default::default()
        }),
        clock: Some(clock.clock()),
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_browser().await;
    let mut ws = ws_connect(&app, &browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    // 40 minutes pass with the socket open, and a session check (every 5 s) sees them: the session is live.
    clock.set(at(40));
    tokio::time::sleep(Duration::from_millis(5500)).await;
    futures_util::SinkExt::send(&mut ws, Message::text("still here"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(Message::text("still here")));
    // 70 minutes after the last request: the idle timeout has passed, whatever the socket's checks did.
    clock.set(at(70));
    assert_eq!(
        close_of(next_message(&mut ws).await),
        (1008, "session ended".to_owned())
    );
}

#[tokio::test]
async fn a_websocket_handshake_needs_an_origin_that_is_ours_or_allowed() {
    let upstream = WsUpstream::start().await;
    let allowed = "http://localhost:5173";
    let (app, browser) = ws_app(&upstream, allowed, None).await;
    for origin in [Some("https://evil.example"), None, Some("null")] {
        let refused = ws_connect(&app, &browser, "/api/ws", origin).await;
        match refused {
            Err(WsError::Http(r)) => {
                assert_eq!(r.status(), 403, "{origin:?}");
                let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or_default()).expect("JSON");
                assert_eq!(body["error"], "invalid_request", "{origin:?}");
            }
            other => panic!("{origin:?}: {other:?}"),
        }
    }
    assert!(upstream.connections().is_empty(), "the upstream was never contacted");
    let mut ws = ws_connect(&app, &browser, "/api/ws", Some(allowed))
        .await
        .expect("an allowed origin");
    futures_util::SinkExt::send(&mut ws, Message::text("hi"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(Message::text("hi")));
    // Without a session: 401, upstream not called either.
    let before = upstream.connections().len();
    let anonymous = ws_connect(&app, &Browser::default(), "/api/ws", Some(&app.address)).await;
    assert!(
        matches!(&anonymous, Err(WsError::Http(r)) if r.status() == 401),
        "{anonymous:?}"
    );
    assert_eq!(upstream.connections().len(), before);
}

#[tokio::test]
async fn a_refused_or_unreachable_websocket_upstream_answers_like_http() {
    let upstream = WsUpstream::start().await;
    let (app, browser) = ws_app(&upstream, "", None).await;
    let refused = ws_connect(&app, &browser, "/api/ws/refuse", Some(&app.address)).await;
    assert!(
        matches!(&refused, Err(WsError::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    let down = ws_connect(&app, &browser, "/api/ws-down", Some(&app.address)).await;
    assert!(matches!(&down, Err(WsError::Http(r)) if r.status() == 502), "{down:?}");
}

#[tokio::test]
async fn an_idle_websocket_outlives_the_keep_alive_timeout() {
    let upstream = WsUpstream::start().await;
    let keep_alive = Duration::from_secs(1);
    let (app, browser) = ws_app(&upstream, "", Some(keep_alive)).await;
    let mut ws = ws_connect(&app, &browser, "/api/ws", Some(&app.address))
        .await
        .expect("open");
    tokio::time::sleep(keep_alive * 3).await;
    futures_util::SinkExt::send(&mut ws, Message::text("still here"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(Message::text("still here")));
}

// ---------------------------------------------------------------------------------------------------------------
// Whole-response bound, header smuggling

#[tokio::test]
async fn a_non_streaming_answer_must_arrive_whole_within_timeout_ms_and_streams_are_exempt() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    // `/api/slow` has `timeout_ms = 300`: ten bytes announced, five arrive, the rest only after 2 s: cut.
    let started = Instant::now();
    let resp = call(&app, &mut browser, "GET", "/api/slow/trickle", true).await;
    assert_eq!(resp.status(), 200, "the status was already sent");
    let (got, complete) = read_all(resp).await;
    assert!(!complete, "the body is cut, not ended cleanly");
    assert_eq!(got, b"01234");
    let cut = started.elapsed();
    assert!(cut < Duration::from_millis(1500), "cut after {cut:?}");
    // Server-sent events take 1.5 s on the same route: a stream, so not bounded.
    let resp = call(&app, &mut browser, "GET", "/api/slow/sse", true).await;
    let (got, complete) = read_all(resp).await;
    assert!(complete);
    assert_eq!(got, b"data: one\n\ndata: two\n\n");
}

/// A raw request to `/api/orders/…` with the session cookie; `extra` is more header lines (each ending in CRLF)
/// and `body` follows the head.
async fn raw_proxied(app: &TestApp, browser: &Browser, line: &str, extra: &str, body: &str) -> u16 {
    raw_proxied_answer(app, browser, line, extra, body).await.0
}

/// [`raw_proxied`]'s answer: its status and the text after the head.
async fn raw_proxied_answer(app: &TestApp, browser: &Browser, line: &str, extra: &str, body: &str) -> (u16, String) {
    let session = browser.get(SESSION_COOKIE).expect("session");
    let host = app.address.trim_start_matches("http://");
    let head = format!(
        "{line} HTTP/1.1\r\nHost: {host}\r\n{extra}Cookie: {SESSION_COOKIE}={session}; theme=dark\r\n\r\n{body}"
    );
    raw_answer(&app.address, &head).await
}

#[tokio::test]
async fn headers_named_in_connection_are_addressed_to_avemint_and_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    // `X-CSRF` named in `Connection`: avemint reads it (the request is accepted), the upstream never sees it.
    let status = raw_proxied(
        &app,
        &browser,
        "GET /api/orders/a",
        "Connection: close, X-CSRF\r\nX-CSRF: 1\r\n",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    assert_eq!(seen.header("x-csrf"), None);
    app.verify_for(&seen.bearer(), "orders-api").await;
    // `Cookie` named in `Connection`: avemint still reads its session; no cookie at all goes upstream.
    let status = raw_proxied(
        &app,
        &browser,
        "GET /api/orders/b",
        "Connection: close, Cookie\r\nX-CSRF: 1\r\n",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/b");
    assert_eq!(seen.header("cookie"), None);
    app.verify_for(&seen.bearer(), "orders-api").await;
}

#[tokio::test]
async fn ambiguous_body_framing_never_desynchronises_the_upstream() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    let two_lengths = "Connection: close\r\nX-CSRF: 1\r\nContent-Length: 5\r\nContent-Length: 6\r\n";
    let status = raw_proxied(&app, &browser, "POST /api/orders/cl", two_lengths, "hello!").await;
    assert_eq!(status, 400, "two different Content-Length values");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
    // Transfer-Encoding and Content-Length together (RFC 9112 §6.1): the chunked body says 5 bytes, the length 3.
    // A proxy believing the length would leave `lo\r\n0…` to be read as the next request. The chunked framing
    // wins, the length is dropped, and the upstream gets exactly the five bytes as one request.
    let both = "Connection: close\r\nX-CSRF: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n";
    let smuggled = "5\r\nhello\r\n0\r\n\r\nGET /api/orders/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let status = raw_proxied(&app, &browser, "POST /api/orders/te", both, smuggled).await;
    assert_eq!(status, 200);
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!((received[0].path.as_str(), received[0].body_len), ("/v1/te", 5));
    assert_ne!(received[0].header("content-length"), Some("3"));
}

// ---------------------------------------------------------------------------------------------------------------
// Metrics, renewal

/// The value of the sample line `series value` in `/metrics` (0 if absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    support::metric_at(&app.address, series).await.unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_proxied_requests_upstream_latency_and_open_streams_per_route() {
    let (http, ws) = (Upstream::start().await, WsUpstream::start().await);
    let app = TestApp::spawn_with(Options {
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/metered\"\nupstream = \"{}\"\n[[routes]]\npath = \"/api/metered-ws\"\nupstream = \"{}\"\n",
            http.base, ws.base
        )),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let requests = |status: &str| format!(r#"avemint_proxy_requests_total{{route="/api/metered",status="{status}"}}"#);
    let streams =
        |route: &str, kind: &str| format!(r#"avemint_proxy_streams_in_flight{{kind="{kind}",route="{route}"}}"#);
    // Children exist from start-up, at zero.
    assert_eq!(metric(&app, &requests("2xx")).await, 0.0);
    assert_eq!(metric(&app, &streams("/api/metered", "http")).await, 0.0);

    assert_eq!(
        call(&app, &mut browser, "GET", "/api/metered/x", true).await.status(),
        200
    );
    assert_eq!(
        call(&app, &mut browser, "GET", "/api/metered/x", false).await.status(),
        403
    );
    assert_eq!(
        call(&app, &mut browser, "GET", "/api/metered/unauthorized", true)
            .await
            .status(),
        401
    );
    assert_eq!(metric(&app, &requests("2xx")).await, 1.0);
    assert_eq!(metric(&app, &requests("4xx")).await, 2.0);
    let upstream_count = r#"avemint_proxy_upstream_duration_seconds_count{route="/api/metered"}"#;
    assert_eq!(metric(&app, upstream_count).await, 2.0, "the 403 never went upstream");
    assert!(metric(&app, r#"avemint_http_requests_total{route="proxied",status="2xx"}"#).await >= 1.0);

    // A server-sent event stream is in flight between its two events; a WebSocket while open.
    let sse = call(&app, &mut browser, "GET", "/api/metered/sse", true).await;
    let mut events = sse.bytes_stream();
    events.next().await.expect("first event").expect("bytes");
    assert_eq!(metric(&app, &streams("/api/metered", "http")).await, 1.0);
    while events.next().await.is_some() {}
    drop(events);
    let mut socket = ws_connect(&app, &browser, "/api/metered-ws", Some(&app.address))
        .await
        .expect("open");
    assert_eq!(metric(&app, &streams("/api/metered-ws", "websocket")).await, 1.0);
    socket.close(None).await.expect("close");
    while next_message(&mut socket).await.is_some_and(|m| !m.is_close()) {}
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (h, w) = (
            metric(&app, &streams("/api/metered", "http")).await,
            metric(&app, &streams("/api/metered-ws", "websocket")).await,
        );
        if (h, w) == (0.0, 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams still counted: http {h}, websocket {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !text.contains("/api/metered/x") && !text.contains("/api/metered/sse"),
        "raw paths never become labels"
    );
}

#[tokio::test]
async fn an_expiring_session_is_renewed_once_during_proxied_calls_and_the_upstream_gets_a_fresh_bearer() {
    let upstream = Upstream::start().await;
    let app = TestApp::spawn_with(Options {
        emulator: Some(ave_emulator::EmulatorConfig {
            access_token_ttl: Duration::from_secs(2),
            ..Default::default()
        }),
        renewal: Some(avemint_core::session::RenewalSettings {
            skew: Duration::ZERO,
            ..Default::default()
        }),
        token_ttl: Some(2),
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/r\"\nupstream = \"{}\"\n",
            upstream.base
        )),
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_browser().await;
    let mut b = browser.clone();
    assert_eq!(call(&app, &mut b, "GET", "/api/r/first", true).await.status(), 200);
    let first = upstream.last().bearer();
    let refreshes = || {
        app.emulator
            .token_requests()
            .iter()
            .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
            .count()
    };
    assert_eq!(refreshes(), 0);
    // Ave's access token (2 s) and the app JWT (2 s) have run out; ten proxied calls at once.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let statuses = futures_util::future::join_all((0..10).map(|_| {
        let mut b = browser.clone();
        let app = &app;
        async move { call(app, &mut b, "GET", "/api/r/again", true).await.status().as_u16() }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(refreshes(), 1, "Ave saw exactly one refresh");
    let fresh = upstream.last().bearer();
    assert_ne!(fresh, first, "a new app JWT");
    let claims = app.verify_for(&fresh, app.audience()).await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id.as_str());
}

// ---------------------------------------------------------------------------------------------------------------
// Memory

/// The resident set of process `pid`, in bytes (from `/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// avemint as a child process (so its memory is measured apart from the test's) with `AVEMINT_ROUTES`, on SQLite,
/// with its emulator and an HTTP client.
struct ChildApp {
    emulator: ave_emulator::Emulator,
    avemint: support::ServeProcess,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ChildApp {
    async fn start(routes: &str) -> Self {
        let emulator = ave_emulator::Emulator::start(ave_emulator::EmulatorConfig::default())
            .await
            .expect("emulator");
        let dir = tempfile::tempdir().expect("dir");
        let database_url = format!("sqlite://{}", dir.path().join("a.db").display());
        let env = [
            ("AVEMINT_ROUTES", routes),
            ("AVEMINT_TOKEN_AUDIENCE", "https://api.example.com"),
        ];
        let avemint = support::ServeProcess::start(&emulator, &database_url, &dir.path().join("keys"), &env).await;
        emulator.set_redirect_uris(vec![format!("{}/auth/callback", avemint.base)]);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            emulator,
            avemint,
            http,
            _dir: dir,
        }
    }
}

/// Samples `pid`'s resident set every 50 ms while `work` runs; the largest seen.
async fn peak_rss_during<T>(pid: u32, work: impl Future<Output = T>) -> (T, u64) {
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss(pid)));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let out = work.await;
    sampler.abort();
    (out, peak.load(std::sync::atomic::Ordering::Relaxed).max(rss(pid)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_and_download_pass_with_avemints_memory_flat() {
    const UPLOAD_MIB: usize = 256;
    const DOWNLOAD_MIB: usize = 1024;
    const MAX_GROWTH: u64 = 64 * 1024 * 1024;
    let upstream = Upstream::start().await;
    let routes = format!(
        r#"[{{"path": "/api/files", "upstream": "{}", "max_request_bytes": {}, "timeout_ms": 300000}}]"#,
        upstream.base,
        (UPLOAD_MIB + 1) * 1024 * 1024
    );
    let child = ChildApp::start(&routes).await;
    let (emulator, avemint, http) = (&child.emulator, &child.avemint, &child.http);
    let mut browser = Browser::default();
    support::sign_in_at(http, emulator, &avemint.base, &mut browser).await;
    let pid = avemint.child.id();
    let url = |path: &str| format!("{}{path}", avemint.base);
    // Warm up: one small call of each kind, so the baseline has the connection pools and buffers in it.
    let warm = browser
        .send(http.get(url("/api/files/1-mib")).header("X-CSRF", "1"))
        .await;
    assert_eq!(read_all(warm).await.0.len(), 1024 * 1024);
    let before = rss(pid);

    let started = Instant::now();
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = futures_util::stream::iter((0..UPLOAD_MIB * 16).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let upload = http
        .post(url("/api/files/sink"))
        .header("X-CSRF", "1")
        .body(reqwest::Body::wrap_stream(chunks));
    let (status, upload_peak) = peak_rss_during(pid, async { browser.send(upload).await.status() }).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.last().body_len,
        UPLOAD_MIB * 1024 * 1024,
        "the whole upload arrived"
    );
    let upload_time = started.elapsed();

    let started = Instant::now();
    let download = http
        .get(url(&format!("/api/files/{DOWNLOAD_MIB}-mib")))
        .header("X-CSRF", "1");
    let ((len, complete), download_peak) = peak_rss_during(pid, async {
        let resp = browser.clone().send(download).await;
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut len = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => len += c.len(),
                Err(_) => return (len, false),
            }
        }
        (len, true)
    })
    .await;
    let download_time = started.elapsed();
    assert!(complete);
    assert_eq!(len, DOWNLOAD_MIB * 1024 * 1024);
    let after = rss(pid);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "measured: avemint RSS before {:.1} MiB, peak during a {UPLOAD_MIB} MiB upload {:.1} MiB ({upload_time:?}), \
         peak during a {DOWNLOAD_MIB} MiB download {:.1} MiB ({download_time:?}), after {:.1} MiB",
        mib(before),
        mib(upload_peak),
        mib(download_peak),
        mib(after)
    );
    for (what, peak) in [("upload", upload_peak), ("download", download_peak)] {
        assert!(
            peak.saturating_sub(before) < MAX_GROWTH,
            "{what}: RSS grew from {:.1} MiB to {:.1} MiB",
            mib(before),
            mib(peak)
        );
    }
}

/// Opens a WebSocket to `path` at `base` over a raw connection, the handshake written by hand (with `cookies` and
/// avemint's own `Origin`): the connection once switched, or the status of a refused handshake.
async fn raw_websocket(base: &str, path: &str, cookies: &str) -> Result<tokio::net::TcpStream, u16> {
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {base}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookies}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.expect("read") == 1 {
        got.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&got)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .expect("a status line");
    if status == 101 { Ok(stream) } else { Err(status) }
}

/// Writes the header of one masked binary frame of `len` bytes and then all of it but the last byte, as fast as the
/// other side takes it: a frame that never ends. The connection is kept (returned) until the caller drops it.
async fn unfinished_frame(mut stream: tokio::net::TcpStream, len: u64) -> tokio::net::TcpStream {
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    if stream.write_all(&head).await.is_err() {
        return stream;
    }
    let chunk = vec![b'm'; 64 * 1024];
    let mut left = len - 1;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        left -= n as u64;
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_websockets_of_one_session_each_sending_an_unfinished_14_mib_frame_keep_memory_bounded() {
    const SOCKETS: usize = 20;
    const FRAME: u64 = 14 * 1024 * 1024;
    const MAX_GROWTH: u64 = 64 * 1024 * 1024;
    let upstream = WsUpstream::start().await;
    let routes = format!(r#"[{{"path": "/api/ws", "upstream": "{}/socket"}}]"#, upstream.base);
    let child = ChildApp::start(&routes).await;
    let (emulator, avemint, http) = (&child.emulator, &child.avemint, &child.http);
    let mut attacker = Browser::default();
    support::sign_in_at(http, emulator, &avemint.base, &mut attacker).await;
    let mut bystander = Browser::default();
    support::sign_in_as_at(http, emulator, &avemint.base, &mut bystander, &emulator.users()[1].id).await;
    let session = |browser: &mut Browser| {
        let req = http.get(format!("{}/auth/session", avemint.base)).header("X-CSRF", "1");
        let mut browser = browser.clone();
        async move { browser.send(req).await.status() }
    };
    assert_eq!(session(&mut bystander).await, 200);
    let pid = avemint.child.id();
    let before = rss(pid);

    let cookies: Vec<String> = attacker.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cookies = cookies.join("; ");
    let ((writers, refused, answered_in), peak) = peak_rss_during(pid, async {
        // All handshakes first, then the frames, all at once.
        let mut open = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..SOCKETS {
            match raw_websocket(&avemint.base, "/api/ws", &cookies).await {
                Ok(stream) => open.push(stream),
                Err(status) => refused.push(status),
            }
        }
        let writers: Vec<_> = open
            .into_iter()
            .map(|stream| tokio::spawn(unfinished_frame(stream, FRAME)))
            .collect();
        // Whatever avemint does with the frames, it has had them (or refused them) for a second.
        let mut held = Vec::new();
        for w in writers {
            held.push(w.await.expect("writer"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let status = session(&mut bystander).await;
        assert_eq!(status, 200, "another user is still served");
        (held, refused, started.elapsed())
    })
    .await;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "measured: avemint RSS before {:.1} MiB, peak with {} sockets open ({} refused) each sent an unfinished \
         {} MiB frame {:.1} MiB; another user's request answered in {answered_in:?}",
        mib(before),
        writers.len(),
        refused.len(),
        FRAME / 1024 / 1024,
        mib(peak)
    );
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(before),
        mib(peak)
    );
    assert_eq!(writers.len(), 8, "AVEMINT_MAX_WEBSOCKETS_PER_SESSION's default");
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
    assert!(answered_in < Duration::from_secs(1), "answered in {answered_in:?}");
    drop(writers);
}

// ---------------------------------------------------------------------------------------------------------------
// Path confinement, look-alike headers, client framing errors, answer filtering (issue 22)

#[tokio::test]
async fn no_spelling_of_a_dot_segment_or_separator_reaches_the_upstream_and_ordinary_paths_do() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    // Raw requests: an HTTP client library would normalise these paths before sending them.
    let (app, browser) = (&app, &browser);
    let get = |path: &str| {
        let line = format!("GET {path}");
        async move { raw_proxied_answer(app, browser, &line, "Connection: close\r\nX-CSRF: 1\r\n", "").await }
    };
    for way_out in WAYS_OUT {
        let path = format!("/api/orders/{way_out}");
        let (status, body) = get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(body["error"], "invalid_request", "{path}");
        assert!(
            upstream.received().is_empty(),
            "{path} reached the upstream: {:?}",
            upstream.received()
        );
    }
    for (path, sent) in [
        ("/api/orders/caf%C3%A9/a%20b", "/v1/caf%C3%A9/a%20b"),
        ("/api/orders/café", "/v1/caf%C3%A9"),
        ("/api/orders/items;v=1/7", "/v1/items;v=1/7"),
        ("/api/orders/a..b/.hidden/..x", "/v1/a..b/.hidden/..x"),
        ("/api/orders/100%25", "/v1/100%25"),
        ("/api/orders/", "/v1/"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(upstream.last().path, sent, "{path}");
    }
}

#[tokio::test]
async fn look_alike_forwarded_headers_never_reach_the_upstream_and_the_request_id_does() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let look_alikes = [
        "X_Forwarded_For",
        "X_Forwarded_Host",
        "Custom_Header",
        "X-Real-IP",
        "True-Client-IP",
        "X-Client-IP",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Forwarded-Ssl",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ];
    let mut req = app
        .http
        .get(app.url("/api/orders/headers"))
        .header("X-CSRF", "1")
        .header("X-Custom", "kept");
    for name in look_alikes {
        req = req.header(name, "6.6.6.6");
    }
    let resp = browser.send(req).await;
    assert_eq!(resp.status(), 200);
    let answered_id = resp.headers()["x-request-id"].to_str().expect("id").to_owned();
    let seen = upstream.last();
    for name in look_alikes {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    assert!(
        seen.headers.keys().all(|n| !n.as_str().contains('_')),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    // avemint's request id goes upstream: a new one when the browser sent none, the browser's when it sent one.
    assert_eq!(seen.header("x-request-id"), Some(answered_id.as_str()));
    let req = app
        .http
        .get(app.url("/api/orders/headers"))
        .header("X-CSRF", "1")
        .header("X-Request-Id", "trace-42");
    assert_eq!(browser.send(req).await.status(), 200);
    assert_eq!(upstream.last().header("x-request-id"), Some("trace-42"));
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_error_not_the_upstreams() {
    let upstream = Upstream::start().await;
    let (app, browser) = proxy_app(&upstream).await;
    // A chunked body whose lines end in a bare LF.
    let chunked = "Connection: close\r\nX-CSRF: 1\r\nTransfer-Encoding: chunked\r\n";
    let (status, body) = raw_proxied_answer(&app, &browser, "POST /api/orders/body", chunked, "5\nhello\n0\n\n").await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"], "invalid_request");
    let series = r#"avemint_proxy_requests_total{route="/api/orders",status="5xx"}"#;
    assert_eq!(metric(&app, series).await, 0.0, "not counted against the upstream");
    assert_eq!(
        metric(
            &app,
            r#"avemint_proxy_requests_total{route="/api/orders",status="4xx"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn an_upstream_cannot_set_a_nameless_cookie_or_hand_the_bearer_to_the_browser() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = proxy_app(&upstream).await;
    let resp = call(&app, &mut browser, "GET", "/api/orders/echo", true).await;
    assert_eq!(resp.status(), 200);
    let bearer = upstream.last().bearer();
    let headers = resp.headers().clone();
    assert_eq!(headers["x-kept"], "yes");
    assert!(!headers.contains_key("x-echo"), "{headers:?}");
    assert!(!headers.contains_key("set-cookie"), "{headers:?}");
    let signature = bearer.rsplit('.').next().expect("signature");
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(!value.contains(signature), "{name}: {value}");
    }
    // The nameless `=__Host-avemint=…` of the ordinary answer is dropped too.
    let resp = call(&app, &mut browser, "GET", "/api/orders/plain", true).await;
    let set: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(set, ["upstream=1; Path=/"]);
}

#[tokio::test]
async fn a_websocket_origin_must_be_written_exactly_as_a_browser_serialises_it() {
    let upstream = WsUpstream::start().await;
    let allowed = "http://localhost:5173";
    let (app, browser) = ws_app(&upstream, allowed, None).await;
    let ours = app.address.as_str();
    let port = ours.rsplit(':').next().expect("port");
    let refused = [
        ours.replacen("http://", "HTTP://", 1),
        format!("{ours}/"),
        ours.replacen("http://", "http://user@", 1),
        ours.replacen("http://", "http://user:pw@", 1),
        format!("http://2130706433:{port}"),
        format!("http://0x7f000001:{port}"),
        format!("http://0177.0.0.1:{port}"),
        format!("http://127.1:{port}"),
        format!("{ours}/path"),
        "http://LOCALHOST:5173".to_owned(),
        "http://localhost.:5173".to_owned(),
        "http://localhost:5173/".to_owned(),
        "http://localhost:05173".to_owned(),
    ];
    for origin in &refused {
        match ws_connect(&app, &browser, "/api/ws", Some(origin)).await {
            Err(WsError::Http(r)) => assert_eq!(r.status(), 403, "{origin}"),
            other => panic!("{origin}: {other:?}"),
        }
    }
    assert!(upstream.connections().is_empty(), "the upstream was never contacted");
    for origin in [ours, allowed] {
        let mut ws = ws_connect(&app, &browser, "/api/ws", Some(origin)).await.expect(origin);
        futures_util::SinkExt::send(&mut ws, Message::text("hi"))
            .await
            .expect("send");
        assert_eq!(next_message(&mut ws).await, Some(Message::text("hi")), "{origin}");
    }
}

/// Profiles for the `browser` tests: `web` (the default, no route), `orders` (a route's, says nothing) and `reports`
/// (a route's, `browser = true`).
const BROWSER_PROFILES: &str = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\ndefault = true\n\
     [[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n\
     [[profiles]]\nname = \"reports\"\naudience = \"reports-api\"\nbrowser = true\n";

async fn browser_profiles_app(upstream: &Upstream, env: Vec<(&'static str, String)>) -> (TestApp, Browser) {
    let base = &upstream.base;
    let app = TestApp::spawn_with(Options {
        token_toml: Some(BROWSER_PROFILES.to_owned()),
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/orders\"\nupstream = \"{base}/v1\"\nprofile = \"orders\"\n\
             [[routes]]\npath = \"/api/reports\"\nupstream = \"{base}/r\"\nprofile = \"reports\"\n"
        )),
        env,
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_browser().await;
    (app, browser)
}

/// Issue 22 §4: page script cannot mint the token of a route's profile (`{"profile":"orders"}` returned the
/// orders-api JWT proxy mode promises never to expose). The refusal is 403 `invalid_target`, the very answer of an
/// unknown profile or audience; a route's profile that says `browser = true` stays mintable, and the proxy still
/// attaches the route's token.
#[tokio::test]
async fn page_script_cannot_mint_a_routes_profile_unless_it_says_browser() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = browser_profiles_app(&upstream, vec![]).await;
    let mut refusals = Vec::new();
    for body in [
        serde_json::json!({"profile": "orders"}),
        serde_json::json!({"audience": "orders-api"}),
        serde_json::json!({"profile": "web", "audience": "orders-api"}),
        serde_json::json!({"profile": "no-such-profile"}),
        serde_json::json!({"audience": "https://nowhere"}),
    ] {
        let resp = app.post_token_json(&mut browser, &body).await;
        assert_eq!(resp.status(), 403, "{body}");
        refusals.push(resp.json::<Value>().await.expect("json"));
    }
    assert_eq!(refusals[0]["error"], "invalid_target");
    assert!(
        refusals.iter().all(|r| *r == refusals[0]),
        "a route's profile and an unknown one get the same answer: {refusals:?}"
    );
    for (body, audience) in [
        (serde_json::json!({}), "https://web"),
        (serde_json::json!({"profile": "reports"}), "reports-api"),
    ] {
        let resp = app.post_token_json(&mut browser, &body).await;
        assert_eq!(resp.status(), 200, "{body}");
        let token = resp.json::<Value>().await.expect("json")["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        app.verify_for(&token, audience).await;
    }
    // The proxy still attaches the orders-api token.
    assert_eq!(
        call(&app, &mut browser, "GET", "/api/orders/items", true)
            .await
            .status(),
        200
    );
    app.verify_for(&upstream.last().bearer(), "orders-api").await;
    app.stop().await;
}

/// Issue 22 §4: `AVEMINT_TOKEN_ENDPOINT=off` removes `POST /auth/token` (a JSON 404, whatever the profile) for
/// proxy-only deployments; the proxied routes and the rest of `/auth` work as before.
#[tokio::test]
async fn the_token_endpoint_can_be_turned_off_for_proxy_only_deployments() {
    let upstream = Upstream::start().await;
    let (app, mut browser) = browser_profiles_app(&upstream, vec![("AVEMINT_TOKEN_ENDPOINT", "off".to_owned())]).await;
    for body in [serde_json::json!({}), serde_json::json!({"profile": "reports"})] {
        let resp = app.post_token_json(&mut browser, &body).await;
        assert_eq!(resp.status(), 404, "{body}");
        assert_eq!(error_code(resp).await, "not_found");
    }
    assert_eq!(
        call(&app, &mut browser, "GET", "/api/reports/x", true).await.status(),
        200
    );
    app.verify_for(&upstream.last().bearer(), "reports-api").await;
    assert_eq!(
        call(&app, &mut browser, "GET", "/auth/session", true).await.status(),
        200
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Public, optional and claim-guarded routes (issue 26 §2)

/// Profiles whose claims the claim-guarded routes check: `tier` and `roles` literals, `email` from Ave.
const CLAIM_PROFILES: &str = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\ndefault = true\n\
     [profiles.claims]\ntier = \"gold\"\nroles = [\"reader\", \"writer\"]\nemail = \"{id_token.email}\"\n";

/// avemint with a public route (`auth = "none"`), an optional one, and claim-guarded ones to `upstream`.
async fn access_app(upstream: &Upstream, env: Vec<(&'static str, String)>) -> TestApp {
    let base = &upstream.base;
    TestApp::spawn_with(Options {
        token_toml: Some(CLAIM_PROFILES.to_owned()),
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/public\"\nupstream = \"{base}/public\"\nauth = \"none\"\n\
             [[routes]]\npath = \"/api/maybe\"\nupstream = \"{base}/maybe\"\nauth = \"optional\"\n\
             [[routes]]\npath = \"/api/gold\"\nupstream = \"{base}/gold\"\nrequire_claims = {{ tier = [\"gold\", \"platinum\"], roles = \"writer\" }}\n\
             [[routes]]\npath = \"/api/admin\"\nupstream = \"{base}/admin\"\nrequire_claims = {{ roles = \"admin\" }}\n\
             [[routes]]\npath = \"/api/ada\"\nupstream = \"{base}/ada\"\nrequire_claims = {{ email = \"ada@example.com\" }}\n"
        )),
        env,
        ..Options::default()
    })
    .await
}

/// `method path` from `browser` with exactly `headers`.
async fn send_with(
    app: &TestApp,
    browser: &mut Browser,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app.http.request(method, app.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    browser.send(req).await
}

/// `auth = "none"`: no session needed and none read, never a bearer (not even the browser's own), avemint's cookie
/// stays home; safe methods need neither `X-CSRF` nor a same-origin `Origin` (a navigation is fine too), unsafe
/// ones still need both.
#[tokio::test]
async fn a_public_route_needs_no_session_and_never_carries_a_bearer() {
    let upstream = Upstream::start().await;
    let app = access_app(&upstream, vec![]).await;
    let mut anonymous = Browser::default();
    let evil = ("Origin", "https://evil.example");
    for (method, headers, why) in [
        ("GET", vec![], "a GET without X-CSRF"),
        ("GET", vec![evil], "a cross-origin GET"),
        ("GET", vec![("Sec-Fetch-Mode", "navigate")], "a navigation"),
        ("HEAD", vec![], "a HEAD"),
        ("POST", vec![("X-CSRF", "1")], "a POST with X-CSRF"),
    ] {
        let resp = send_with(&app, &mut anonymous, method, "/api/public/x", &headers).await;
        assert_eq!(resp.status(), 200, "{why}");
        let seen = upstream.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, "/public/x"),
            "{why}"
        );
        assert_eq!(seen.header("authorization"), None, "{why}");
    }
    let calls = upstream.received().len();
    for (headers, why) in [
        (vec![], "a POST without X-CSRF"),
        (vec![("X-CSRF", "1"), evil], "a cross-origin POST"),
    ] {
        let resp = send_with(&app, &mut anonymous, "POST", "/api/public/x", &headers).await;
        assert_eq!(resp.status(), 403, "{why}");
        assert_eq!(error_code(resp).await, "invalid_request", "{why}");
    }
    assert_eq!(upstream.received().len(), calls, "refused before the upstream");
    // Signed in: still no bearer, the browser's own `Authorization` dropped, avemint's cookie not forwarded.
    let mut browser = app.signed_in_browser().await;
    let resp = send_with(
        &app,
        &mut browser,
        "GET",
        "/api/public/y",
        &[("Authorization", "Bearer mine")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.header("authorization"), None);
    assert!(!seen.header("cookie").unwrap_or_default().contains(SESSION_COOKIE));
    app.stop().await;
}

/// `auth = "optional"`: the bearer only when signed in; without a session (or with a stale cookie) the call still
/// reaches the upstream, without `Authorization`.
#[tokio::test]
async fn an_optional_route_attaches_the_bearer_only_when_signed_in() {
    let upstream = Upstream::start().await;
    let app = access_app(&upstream, vec![]).await;
    let csrf = [("X-CSRF", "1")];
    let resp = send_with(&app, &mut Browser::default(), "GET", "/api/maybe/a", &csrf).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("authorization"), None);
    let mut stale = Browser::default();
    stale.cookies.insert(SESSION_COOKIE.into(), "A".repeat(43));
    let resp = send_with(&app, &mut stale, "GET", "/api/maybe/b", &csrf).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("authorization"), None);
    let mut browser = app.signed_in_browser().await;
    let resp = send_with(&app, &mut browser, "GET", "/api/maybe/c", &csrf).await;
    assert_eq!(resp.status(), 200);
    let claims = app.verify_for(&upstream.last().bearer(), "https://web").await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id.as_str());
    // The CSRF rules of a session route apply: no X-CSRF, no call.
    let calls = upstream.received().len();
    assert_eq!(
        send_with(&app, &mut browser, "POST", "/api/maybe/d", &[])
            .await
            .status(),
        403
    );
    assert_eq!(upstream.received().len(), calls);
    app.stop().await;
}

/// `require_claims`: every key must hold on the route profile's app JWT (a value in the claim, an array meaning any
/// of); otherwise 403 `access_denied` before the upstream is called. Two users, one claim from Ave (`email`).
#[tokio::test]
async fn required_claims_are_checked_on_the_routes_token_before_the_upstream() {
    let upstream = Upstream::start().await;
    let app = access_app(&upstream, vec![]).await;
    let browsers = [app.signed_in_as(0).await, app.signed_in_as(1).await];
    let csrf = [("X-CSRF", "1")];
    // Ada and Grace: the first user (`ada@example.com`) and the second.
    for (user, path) in [(0, "/api/gold/x"), (0, "/api/ada/x"), (1, "/api/gold/y")] {
        let resp = send_with(&app, &mut browsers[user].clone(), "GET", path, &csrf).await;
        assert_eq!(resp.status(), 200, "{path}");
        app.verify_for(&upstream.last().bearer(), "https://web").await;
    }
    let calls = upstream.received().len();
    for (user, path) in [(0, "/api/admin/x"), (1, "/api/ada/x")] {
        let resp = send_with(&app, &mut browsers[user].clone(), "GET", path, &csrf).await;
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(error_code(resp).await, "access_denied", "{path}");
    }
    assert_eq!(upstream.received().len(), calls, "refused before the upstream");
    // Without a session: 401 first, as on any session route.
    let resp = send_with(&app, &mut Browser::default(), "GET", "/api/admin/x", &csrf).await;
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

/// The same keys in `AVEMINT_ROUTES` (JSON), which wins over the file.
#[tokio::test]
async fn auth_and_require_claims_in_avemint_routes_json() {
    let upstream = Upstream::start().await;
    let base = &upstream.base;
    let routes = serde_json::json!([
        {"path": "/api/public", "upstream": format!("{base}/p"), "auth": "none"},
        {"path": "/api/silver", "upstream": format!("{base}/s"), "require_claims": {"tier": ["silver"]}},
        {"path": "/api/writers", "upstream": format!("{base}/w"), "require_claims": {"roles": ["admin", "writer"]}},
    ]);
    let app = access_app(&upstream, vec![("AVEMINT_ROUTES", routes.to_string())]).await;
    assert_eq!(app.settings.routes.all().len(), 3, "the environment wins over the file");
    let resp = send_with(&app, &mut Browser::default(), "GET", "/api/public/x", &[]).await;
    assert_eq!((resp.status().as_u16(), upstream.last().path), (200, "/p/x".to_owned()));
    let mut browser = app.signed_in_browser().await;
    let csrf = [("X-CSRF", "1")];
    let resp = send_with(&app, &mut browser, "GET", "/api/silver/x", &csrf).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "access_denied");
    let resp = send_with(&app, &mut browser, "GET", "/api/writers/x", &csrf).await;
    assert_eq!((resp.status().as_u16(), upstream.last().path), (200, "/w/x".to_owned()));
    app.stop().await;
}

/// The served OpenAPI document (`/openapi.json`, what `/docs` shows) lists each configured route under the `Proxy`
/// tag with the methods it forwards and avemint's own answers, and never its upstream URL or token profile.
#[tokio::test]
async fn the_served_document_lists_the_configured_routes_under_the_proxy_tag() {
    let upstream = Upstream::start().await;
    let (app, _browser) = proxy_app(&upstream).await;
    let doc = app.get_json("/openapi.json").await;
    let orders = &doc["paths"]["/api/orders"];
    let methods: Vec<&str> = orders
        .as_object()
        .expect("a path item")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(methods, ["get", "post"], "the route's methods");
    let get = &orders["get"];
    assert_eq!(get["tags"], serde_json::json!(["Proxy"]));
    for status in ["401", "403", "405", "413", "502", "504", "default"] {
        assert!(get["responses"][status]["description"].is_string(), "{status}: {get}");
    }
    assert_eq!(
        get["responses"]["401"]["content"]["application/json; charset=utf-8"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(get["description"].as_str().expect("text").contains("1024 bytes"));
    // A route without `methods` forwards every method.
    assert_eq!(doc["paths"]["/api/web"].as_object().expect("item").len(), 6);
    assert!(doc["paths"]["/api/down"]["get"].is_object());
    let text = doc.to_string();
    assert!(!text.contains(&upstream.base), "no upstream URL in the document");
    assert!(!text.contains("\"orders\""), "no token profile name in the document");
    // The auth endpoints are still there, with `X-CSRF` required.
    let session = &doc["paths"]["/auth/session"]["get"];
    assert_eq!(session["parameters"][0]["name"], "X-CSRF");
    assert_eq!(session["parameters"][0]["required"], true);
    assert!(session["responses"].get("500").is_none(), "no answer it cannot give");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml"))
        .expect("committed document");
    assert!(
        !committed.contains("/api/orders"),
        "the committed document is the default configuration's"
    );
}
