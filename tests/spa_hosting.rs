//! The SPA on avemint's origin (issue 26 §1), black-box over HTTP: `[spa] root` (built files with SPA fallback,
//! `ETag`/304, `immutable` for hashed assets, precompressed siblings, the page's CSP, the security headers, no
//! session needed, no path out of the root) and `[spa] upstream` (a development server, its HMR WebSocket
//! included).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, VARY,
};
use support::{Browser, Options, TestApp, WAYS_OUT, error_code, raw_answer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::Message;

const INDEX: &str =
    "<!doctype html><html><head><title>app</title></head><body><div id=\"root\">THE INDEX PAGE</div></body></html>";
const GUIDE: &str = "<!doctype html><title>guide</title><p>THE GUIDE PAGE</p>";
const SCRIPT: &str = "console.log('the app');";
const HASHED: &str = "/assets/index-B4f0aX9z.js";
const SECRET: &str = "TOP SECRET: outside the root";

/// A build output as Vite writes it, beside a file and a dotfile that must never be served, and symlinks out of it.
fn dist() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("dist");
    let write = |rel: &str, text: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(dir.path().join("outside-secret.txt"), SECRET).expect("write");
    write("index.html", INDEX);
    write("guide/index.html", GUIDE);
    write(&HASHED[1..], SCRIPT);
    write(&format!("{}.br", &HASHED[1..]), "BROTLI BYTES");
    write(&format!("{}.gz", &HASHED[1..]), "GZIP BYTES");
    write("robots.txt", "User-agent: *");
    write(".env", SECRET);
    std::os::unix::fs::symlink(dir.path().join("outside-secret.txt"), root.join("leak.txt")).expect("symlink");
    std::os::unix::fs::symlink(dir.path(), root.join("up")).expect("symlink");
    (dir, root)
}

/// avemint serving `root`, with a proxied route `/api/orders` (to a closed port) and `env` on top.
async fn spa_app(root: &Path, env: Vec<(&'static str, String)>) -> TestApp {
    let mut env = env;
    env.push(("AVEMINT_SPA_ROOT", root.display().to_string()));
    TestApp::spawn_with(Options {
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/orders\"\nupstream = \"http://127.0.0.1:{}\"\n",
            support::free_port()
        )),
        env,
        ..Options::default()
    })
    .await
}

/// `GET path` with `headers`, from a browser without a session.
async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request")
}

const NAVIGATE: (&str, &str) = ("Sec-Fetch-Mode", "navigate");
const HTML: (&str, &str) = ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8");

fn header(resp: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_signed_out_page_loads_and_navigations_fall_back_to_index_html() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    for (path, headers) in [
        ("/", vec![NAVIGATE]),
        ("/", vec![]),
        ("/index.html", vec![]),
        ("/orders/7", vec![NAVIGATE]),
        ("/orders/7", vec![HTML]),
        ("/users/ada.lovelace", vec![NAVIGATE]),
        ("/demo", vec![NAVIGATE]),
        ("/signin-error?error=access_denied", vec![NAVIGATE]),
    ] {
        let resp = get(&app, path, &headers).await;
        assert_eq!(resp.status(), 200, "{path} {headers:?}");
        assert_eq!(header(&resp, CONTENT_TYPE), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(header(&resp, CACHE_CONTROL), Some("no-cache"), "{path}");
        let csp = header(&resp, CONTENT_SECURITY_POLICY).expect("a CSP").to_owned();
        assert!(
            csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(header(&resp, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
        assert!(header(&resp, ETAG).is_some());
        assert_eq!(resp.text().await.expect("body"), INDEX, "{path}");
    }
    for path in ["/guide/", "/guide"] {
        let resp = get(&app, path, &[NAVIGATE]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), GUIDE, "{path}");
    }
    let spa = support::metric_at(
        &app.address,
        "avemint_http_requests_total{route=\"spa\",status=\"2xx\"}",
    )
    .await;
    assert!(
        spa.is_some_and(|n| n >= 9.0),
        "SPA answers have their own label: {spa:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_missing_asset_is_a_404_never_the_page() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    for (path, headers) in [
        ("/assets/index-Missing1.js", vec![("Sec-Fetch-Mode", "no-cors")]),
        ("/assets/index-Missing1.js", vec![("Accept", "*/*")]),
        (
            "/favicon.ico",
            vec![("Sec-Fetch-Mode", "no-cors"), ("Accept", "image/*")],
        ),
        (
            "/orders/7",
            vec![("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")],
        ),
        ("/orders/7", vec![]),
    ] {
        let resp = get(&app, path, &headers).await;
        assert_eq!(resp.status(), 404, "{path} {headers:?}");
        assert_eq!(error_code(resp).await, "not_found");
    }
    app.stop().await;
}

#[tokio::test]
async fn avemints_own_paths_and_proxied_routes_are_never_the_spa() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    for (path, status) in [
        ("/auth/session", 403),
        ("/auth/no-such-endpoint", 404),
        ("/.well-known/no-such-document", 404),
        ("/oauth/x", 404),
        ("/healthz", 200),
        ("/.well-known/jwks.json", 200),
        ("/api/orders/7", 403),
        ("/docs/no-such-asset", 404),
    ] {
        let resp = get(&app, path, &[NAVIGATE, HTML]).await;
        assert_eq!(resp.status(), status, "{path}");
        let body = resp.text().await.expect("body");
        assert!(!body.contains("THE INDEX PAGE"), "{path}: {body}");
        assert!(body.starts_with('{'), "{path}: JSON, not a page: {body}");
    }
    let docs = get(&app, "/docs", &[NAVIGATE]).await.text().await.expect("body");
    assert!(docs.contains("swagger") && !docs.contains("THE INDEX PAGE"));
    let helper = get(&app, "/avemint.js", &[]).await.text().await.expect("body");
    assert!(helper.contains("export"));
    // Only GET and HEAD are files: anything else is avemint's JSON 404.
    let resp = app.http.post(app.url("/orders/7")).send().await.expect("post");
    assert_eq!(resp.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn hashed_assets_are_immutable_the_rest_revalidates_and_a_matching_etag_is_304() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    let resp = get(&app, HASHED, &[("Sec-Fetch-Mode", "no-cors")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, CACHE_CONTROL),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&resp, CONTENT_TYPE), Some("text/javascript; charset=utf-8"));
    assert_eq!(
        header(&resp, CONTENT_ENCODING),
        None,
        "nothing accepted, nothing encoded"
    );
    assert_eq!(header(&resp, CONTENT_SECURITY_POLICY), None, "a script is not a page");
    let etag = header(&resp, ETAG).expect("ETag").to_owned();
    assert_eq!(resp.text().await.expect("body"), SCRIPT);
    let resp = get(&app, HASHED, &[("If-None-Match", &etag)]).await;
    assert_eq!(resp.status(), 304);
    assert_eq!(header(&resp, ETAG), Some(etag.as_str()));
    assert_eq!(
        header(&resp, CACHE_CONTROL),
        Some("public, max-age=31536000, immutable")
    );
    assert!(resp.bytes().await.expect("body").is_empty());
    let resp = get(&app, HASHED, &[("If-None-Match", "\"something-else\"")]).await;
    assert_eq!(resp.status(), 200);
    for path in ["/robots.txt", "/", "/index.html"] {
        let resp = get(&app, path, &[]).await;
        assert_eq!(header(&resp, CACHE_CONTROL), Some("no-cache"), "{path}");
        let etag = header(&resp, ETAG).expect("ETag").to_owned();
        assert_eq!(
            get(&app, path, &[("If-None-Match", &etag)]).await.status(),
            304,
            "{path}"
        );
    }
    let resp = app.http.head(app.url(HASHED)).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, CONTENT_LENGTH), Some(SCRIPT.len().to_string().as_str()));
    assert!(resp.bytes().await.expect("body").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn precompressed_siblings_are_served_to_browsers_that_accept_them() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    let mut etags = Vec::new();
    for (accept, encoding, body) in [
        ("gzip, deflate, br, zstd", Some("br"), "BROTLI BYTES"),
        ("gzip", Some("gzip"), "GZIP BYTES"),
        ("br;q=0, gzip;q=0.5", Some("gzip"), "GZIP BYTES"),
        ("identity", None, SCRIPT),
    ] {
        let resp = get(&app, HASHED, &[("Accept-Encoding", accept)]).await;
        assert_eq!(resp.status(), 200, "{accept}");
        assert_eq!(header(&resp, CONTENT_ENCODING), encoding, "{accept}");
        assert_eq!(header(&resp, VARY), Some("Accept-Encoding"), "{accept}");
        assert_eq!(header(&resp, CONTENT_TYPE), Some("text/javascript; charset=utf-8"));
        etags.push(header(&resp, ETAG).expect("ETag").to_owned());
        assert_eq!(resp.text().await.expect("body"), body, "{accept}");
    }
    assert!(
        etags[0] != etags[1] && etags[1] != etags[3],
        "each variant its own ETag: {etags:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn no_spelling_of_a_way_out_leaves_the_root() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    for below in ["/", "/assets/", "/guide/"] {
        for way_out in WAYS_OUT {
            let target = format!("{below}{way_out}").replace("admin", "outside-secret.txt");
            let head = format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Mode: navigate\r\nConnection: close\r\n\r\n"
            );
            let (status, body) = raw_answer(&app.address, &head).await;
            assert_eq!(status, 400, "{target}: {body}");
            assert!(!body.contains("TOP SECRET"), "{target}");
        }
    }
    // Symlinks out of the root and dotfiles are not files of the SPA: a 404, or the page for a navigation.
    for path in ["/leak.txt", "/up/outside-secret.txt", "/.env", "/%2eenv"] {
        let resp = get(&app, path, &[]).await;
        assert_eq!(resp.status(), 404, "{path}");
        let page = get(&app, path, &[NAVIGATE]).await.text().await.expect("body");
        assert_eq!(page, INDEX, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_pages_csp_is_configurable() {
    let (_dir, root) = dist();
    let csp = "default-src 'self'; script-src 'self' 'sha256-AbC'; frame-ancestors 'none'";
    let app = spa_app(&root, vec![("AVEMINT_SPA_CSP", csp.to_owned())]).await;
    let resp = get(&app, "/anywhere", &[NAVIGATE]).await;
    assert_eq!(header(&resp, CONTENT_SECURITY_POLICY), Some(csp));
    // avemint's own HTML keeps its own policy.
    let resp = get(&app, "/docs", &[]).await;
    assert_ne!(header(&resp, CONTENT_SECURITY_POLICY), Some(csp));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// `[spa] upstream`: a development server

/// A development server like Vite's on loopback: HTTP answers `DEV SERVER <path>` (HTML, or JavaScript under
/// `/src/`), a WebSocket handshake offering `vite-hmr` is accepted with it and echoes; every request line is logged.
struct DevServer {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DevServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(dev_connection(stream, seen.clone()));
            }
        });
        Self { base, log, task }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn dev_connection(mut stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    let head = loop {
        let Ok(n) = stream.peek(&mut buf).await else { return };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            break text[..end + 4].to_owned();
        }
        if n == 0 || n == buf.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let line = head.lines().next().unwrap_or_default().to_owned();
    log.lock()
        .expect("lock")
        .push(line.rsplit_once(' ').map(|(l, _)| l.to_owned()).unwrap_or_default());
    if head.to_ascii_lowercase().contains("upgrade: websocket") {
        #[allow(clippy::result_large_err)] // tungstenite's `Callback` signature
        let callback = |req: &WsRequest, mut resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
            let offered = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            if offered == Some("vite-hmr") {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", "vite-hmr".parse().expect("value"));
            }
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(_) = m {
                let _ = futures_util::SinkExt::send(&mut ws, m).await;
            }
        }
        return;
    }
    let mut consumed = vec![0u8; head.len()];
    if stream.read_exact(&mut consumed).await.is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let content_type = if path.starts_with("/src/") {
        "text/javascript"
    } else {
        "text/html"
    };
    let body = format!("DEV SERVER {path}");
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
}

#[tokio::test]
async fn the_dev_server_gets_navigations_assets_and_the_hmr_websocket() {
    let dev = DevServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![("AVEMINT_SPA_UPSTREAM", dev.base.clone())],
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let resp = browser
        .send(app.http.get(app.url("/orders/7?tab=2")).header(NAVIGATE.0, NAVIGATE.1))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, CONTENT_SECURITY_POLICY),
        None,
        "the dev server's page gets no CSP unless configured"
    );
    assert_eq!(header(&resp, "x-frame-options"), Some("DENY"));
    assert_eq!(resp.text().await.expect("body"), "DEV SERVER /orders/7?tab=2");
    let resp = get(&app, "/src/main.tsx", &[("Sec-Fetch-Mode", "no-cors")]).await;
    assert_eq!(header(&resp, CONTENT_TYPE), Some("text/javascript"));
    assert_eq!(resp.text().await.expect("body"), "DEV SERVER /src/main.tsx");
    // avemint's own paths stay avemint's.
    assert_eq!(get(&app, "/healthz", &[NAVIGATE]).await.status(), 200);
    assert_eq!(get(&app, "/auth/session", &[NAVIGATE]).await.status(), 403);
    assert_eq!(
        dev.requests(),
        ["GET /orders/7?tab=2", "GET /src/main.tsx"],
        "only the SPA's requests reach the dev server"
    );
    // Vite's HMR WebSocket: same origin only, the sub-protocol passes, messages pass both ways.
    let hmr = |origin: &str| {
        let mut req = format!("{}/?token=abc", app.address.replacen("http://", "ws://", 1))
            .into_client_request()
            .expect("request");
        req.headers_mut().insert("origin", origin.parse().expect("origin"));
        req.headers_mut()
            .insert("sec-websocket-protocol", "vite-hmr".parse().expect("protocol"));
        tokio_tungstenite::connect_async(req)
    };
    let (mut ws, resp) = hmr(&app.address).await.expect("the HMR socket opens");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii")),
        Some("vite-hmr")
    );
    futures_util::SinkExt::send(&mut ws, Message::text("{\"type\":\"ping\"}"))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("in time");
    assert!(matches!(echoed, Some(Ok(Message::Text(t))) if t.as_str() == "{\"type\":\"ping\"}"));
    assert_eq!(dev.requests().last().map(String::as_str), Some("GET /?token=abc"));
    let refused = hmr("https://evil.example")
        .await
        .expect_err("another origin is refused");
    assert!(refused.to_string().contains("403"), "{refused}");
    assert_eq!(
        dev.requests().len(),
        3,
        "a refused handshake never reaches the dev server"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_spa_needs_no_session_and_a_signed_in_browser_gets_the_same_files() {
    let (_dir, root) = dist();
    let app = spa_app(&root, vec![]).await;
    let mut browser: Browser = app.signed_in_browser().await;
    let resp = browser
        .send(app.http.get(app.url("/")).header(NAVIGATE.0, NAVIGATE.1))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "serving a file touches no cookie"
    );
    assert_eq!(resp.text().await.expect("body"), INDEX);
    app.stop().await;
}

/// The README's *Integrate your SPA* file is a configuration avemint accepts, and means what the README says.
#[test]
fn the_readmes_integration_example_loads() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split_once("<!-- integrate example: tests/spa_hosting.rs loads this config -->\n```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(toml, _)| toml.to_owned())
        .expect("the example block");
    let (dir, root) = dist();
    let secret = dir.path().join("client_secret");
    let keys = dir.path().join("session_keys");
    std::fs::write(&secret, "a-client-secret").expect("write");
    std::fs::write(&keys, support::TEST_SESSION_KEY).expect("write");
    let toml = block
        .replace("/run/secrets/ave_client_secret", &secret.display().to_string())
        .replace("/run/secrets/avemint_session_keys", &keys.display().to_string())
        .replace("/srv/app/dist", &root.display().to_string());
    let path = dir.path().join("avemint.toml");
    std::fs::write(&path, toml).expect("write");
    let env = std::collections::BTreeMap::<String, String>::new();
    let s = avemint::config::Settings::load(Some(&path), &env).expect("the README's example loads");
    assert_eq!(s.public_url.as_str(), "https://app.example.com");
    assert_eq!(s.error_path.as_ref().map(|p| p.as_str()), Some("/signin-error"));
    assert!(matches!(&s.spa.source, Some(avemint::config::SpaSource::Root(_))));
    let auth: Vec<_> = s.routes.all().iter().map(|r| (r.path.as_str(), r.auth)).collect();
    use avemint_core::proxy::RouteAuth;
    assert_eq!(
        auth,
        [("/api/orders", RouteAuth::Required), ("/api/catalog", RouteAuth::None)]
    );
}
