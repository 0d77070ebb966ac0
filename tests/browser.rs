//! End-to-end in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/run`) driven over WebDriver with
//! `fantoccini`, against the `avemint demo` binary.
//!
//! What a hand-rolled cookie jar cannot prove: that Chromium stores and sends the
//! `__Host-` (Secure, HttpOnly, SameSite=Lax) cookie on `http://127.0.0.1`,
//! follows the redirects through the emulator's sign-in page, that the SPA helper
//! works in a page, that another origin can neither read `/auth/token` (CORS)
//! nor get a token with a form POST, and that in proxy mode (`apiFetch` through
//! the demo's `/api/demo` route) no token is anywhere page script can see: the
//! cookie jar script reads, web storage, the DOM, global strings, and every
//! response body and header the page's `fetch`/`XMLHttpRequest` saw (recorded
//! by a wrapper installed before any page script runs). The same scan finds the
//! token once the page's token-in-the-page side is used, so it can fail. Each
//! step saves a screenshot under `target/e2e/`. A second test drives two browsers (two profiles, so two cookie
//! jars) as the same user: one ends the other's session from the "Your sessions" panel and the other page shows
//! it is logged out (`avemint:logged-out`); then a logout in one tab shows in another tab without a reload
//! (screenshots under `target/e2e-sessions/`). A third serves a small SPA from `[spa] root` (in-process avemint, not
//! the demo): a deep link loads through the fallback with its module script under the default page CSP, signs in and
//! comes back to it; a sign-in denied at Ave shows avemint's failure page, whose link signs in again (screenshots
//! under `target/e2e-spa/`). A fourth serves the React example (`examples/react-app/`, Vite + React on the `avemint`
//! package, built by `npm ci && npm run build`) with `[spa] root` and drives it: a quiet signed-out deep link, sign-in
//! and back, a proxied API call, a sign-out in another tab, switching accounts (screenshots under
//! `target/e2e-react/`). Without Chromium or chromedriver the test skips with a message,
//! except under `CI=true`, where it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{DemoProcess, SESSION_COOKIE};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The demo page is signed in: the name it shows (falsy until then).
const SIGNED_IN_AS: &str = "location.pathname === '/' && !document.getElementById('signed-in').hidden && document.getElementById('user-name').textContent";
/// How long one step may take to render.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the whole scenario may take (it takes about 5 s).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// chromedriver as a child process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = r.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Screenshots, numbered in the order taken, under `target/e2e/`.
struct Shots {
    dir: PathBuf,
    taken: Vec<String>,
}

impl Shots {
    fn new() -> Self {
        Self::in_dir("e2e")
    }

    /// Screenshots under `target/<name>/` (each test its own, so parallel tests do not clear each other's).
    fn in_dir(name: &str) -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("target/e2e");
        Self { dir, taken: Vec::new() }
    }

    async fn take(&mut self, client: &Client, step: &str) {
        let name = format!("{:02}-{}.png", self.taken.len() + 1, step.replace(' ', "-"));
        match client.screenshot().await {
            Ok(png) => {
                std::fs::write(self.dir.join(&name), png).expect("screenshot written");
                self.taken.push(name);
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
    }
}

/// Runs `condition` (a JS expression) in the page until it is truthy and returns its value; on timeout
/// saves a screenshot and fails naming the step.
async fn wait_for(client: &Client, shots: &mut Shots, step: &str, condition: &str) -> Value {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let script = format!("return ({condition});");
    loop {
        let last = client.execute(&script, vec![]).await;
        if let Ok(v) = &last
            && !matches!(v, Value::Null | Value::Bool(false))
            && v != ""
        {
            return v.clone();
        }
        if Instant::now() > deadline {
            shots.take(client, &format!("{step}-FAILED")).await;
            let url = client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let text = client
                .execute("return document.body ? document.body.innerText : ''", vec![])
                .await
                .unwrap_or_default();
            panic!(
                "step `{step}` did not render within {STEP_TIMEOUT:?}: `{condition}` never became true \
                 (last: {last:?}) at {url}; page text: {text}; see {}",
                shots.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `<pre>` with id `id` shows JSON containing `needle`, and returns that JSON.
async fn shown_json(client: &Client, shots: &mut Shots, step: &str, id: &str, needle: &str) -> Value {
    let text = format!("document.getElementById('{id}').textContent");
    let shown = wait_for(client, shots, step, &format!("{text}.includes({needle:?}) && {text}")).await;
    serde_json::from_str(shown.as_str().unwrap_or_default())
        .unwrap_or_else(|_| panic!("step `{step}`: {shown} is JSON"))
}

async fn click(client: &Client, shots: &mut Shots, step: &str, css: &str) {
    wait_for(client, shots, step, &format!("document.querySelector('{css}')")).await;
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("step `{step}`: no `{css}`: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("step `{step}`: cannot click `{css}`: {e}"));
}

/// A Chrome DevTools Protocol command through chromedriver's `goog/cdp/execute` endpoint.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (poem::http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (poem::http::Method::POST, Some(body.to_string()))
    }
}

/// Runs in every new document before the page's own scripts: wraps `fetch` and `XMLHttpRequest` so that every
/// response the page's scripts get (status, headers, body) is recorded in `window.__seenResponses`.
const RECORDER: &str = r#"(() => {
  const seen = [];
  Object.defineProperty(window, '__seenResponses', { value: seen });
  const originalFetch = window.fetch;
  window.fetch = async function (...args) {
    const response = await originalFetch.apply(this, args);
    const entry = { via: 'fetch', url: response.url, status: response.status,
      headers: [...response.headers].map((h) => h.join(': ')).join('\n'), body: null };
    seen.push(entry);
    response.clone().text().then((t) => { entry.body = t; }, (e) => { entry.body = 'unreadable: ' + e; });
    return response;
  };
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    this.addEventListener('loadend', () => {
      let body;
      try { body = this.responseText; } catch (e) { body = String(this.response); }
      seen.push({ via: 'xhr', url: this.responseURL, status: this.status, headers: this.getAllResponseHeaders(), body });
    });
    return send.apply(this, args);
  };
})();"#;

/// Scans what script on the page can see for a JWT; returns `{found: [where…], responses: [{via, path, status}…],
/// pending}` (`pending`: recorded responses whose body is still being read).
const JWT_SCAN: &str = r#"
const jwt = /eyJ[\w-]+\.[\w-]+\.[\w-]+/;
const found = [];
const check = (where, text) => { if (typeof text === 'string' && jwt.test(text)) found.push(where); };
check('document.cookie', document.cookie);
for (const [name, store] of [['localStorage', window.localStorage], ['sessionStorage', window.sessionStorage]]) {
  for (let i = 0; i < store.length; i++) { const k = store.key(i); check(name + ' ' + k, k + '=' + store.getItem(k)); }
}
check('the DOM', document.documentElement.outerHTML);
check('the page text', document.body.innerText);
for (const k of Object.getOwnPropertyNames(window)) {
  try { if (typeof window[k] === 'string') check('window.' + k, window[k]); } catch (e) {}
}
const seen = window.__seenResponses || [];
const path = (url) => new URL(url, location.href).pathname;
seen.forEach((e) => {
  check(e.via + ' ' + path(e.url) + ' body', e.body);
  check(e.via + ' ' + path(e.url) + ' headers', e.headers);
});
return {
  found,
  responses: seen.map((e) => ({ via: e.via, path: path(e.url), status: e.status })),
  pending: seen.filter((e) => e.body === null).length,
};
"#;

/// The JWT scan once every recorded response body has been read.
async fn scan_for_jwts(client: &Client, shots: &mut Shots, step: &str) -> Value {
    let bodies_read = format!("(() => {{ {JWT_SCAN} }})().pending === 0");
    wait_for(client, shots, step, &bodies_read).await;
    client.execute(JWT_SCAN, vec![]).await.expect("the scan runs")
}

/// The places a scan found a JWT in.
fn jwt_places(scan: &Value) -> Vec<String> {
    scan["found"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The response paths a scan saw recorded.
fn seen_paths(scan: &Value) -> Vec<String> {
    scan["responses"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["path"].as_str()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A page on another loopback origin (another port) that tries to use the user's avemint session.
async fn serve_other_origin(avemint: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    use poem::listener::{Acceptor, TcpAcceptor};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>another origin</title></head><body>\
         <h1>A page on another origin</h1><p>It tries to read an app JWT from {avemint}.</p>\
         <p>fetch with credentials: <strong id=\"fetch-result\">not tried</strong></p>\
         <form id=\"steal\" method=\"post\" action=\"{avemint}/auth/token\"><button type=\"submit\">POST a form to /auth/token</button></form>\
         </body></html>"
    );
    let app = poem::endpoint::make(move |_| {
        let page = page.clone();
        async move { poem::web::Html(page) }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
    assert!(!acceptor.local_addr().is_empty());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        app,
        async move {
            let _ = rx.await;
        },
        Some(Duration::from_secs(1)),
    ));
    (format!("http://{addr}"), tx)
}

/// A `fetch` from the current page; `'blocked:<ErrorName>'` if the browser refuses to hand over the answer.
async fn cross_origin_fetch(client: &Client, url: &str, csrf: bool) -> String {
    let headers = if csrf { "{ 'X-CSRF': '1' }" } else { "{}" };
    let script = format!(
        "const done = arguments[arguments.length - 1];\
         const show = (s) => {{ document.getElementById('fetch-result').textContent = s; done(s); }};\
         fetch({url:?}, {{ method: 'POST', credentials: 'include', headers: {headers} }})\
           .then((r) => r.text().then((t) => show('read:' + r.status + ':' + t)))\
           .catch((e) => show('blocked:' + e.name));"
    );
    let v = client.execute_async(&script, vec![]).await.expect("fetch script runs");
    v.as_str().unwrap_or_default().to_owned()
}

/// A Chromium session through `driver` with its own profile (cookie jar) in `profile`.
async fn chromium(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--window-size=1000,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Whether the browser test can run here: Chromium and chromedriver installed (required under `CI=true`).
fn browser_available() -> bool {
    let chromium_present = Path::new(CHROMIUM).exists();
    if !chromium_present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{CHROMIUM} is required under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {CHROMIUM} is not installed (apt-get install chromium chromium-driver)");
        return false;
    }
    support::tool_available("chromedriver", "--version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_uses_the_token_and_other_origins_cannot() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let demo = DemoProcess::spawn();
    let base = demo.base.clone();
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = chromium(&driver, profile.path()).await;
    client
        .issue_cmd(Cdp {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({ "source": RECORDER }),
        })
        .await
        .expect("the response recorder is installed through chromedriver's CDP endpoint");
    let mut shots = Shots::new();
    let result = tokio::time::timeout(SCENARIO_TIMEOUT, scenario(&client, &mut shots, &base)).await;
    let _ = client.close().await;
    drop(driver);
    drop(demo);
    report("browser scenario", started, &shots, result);
}

async fn scenario(c: &Client, shots: &mut Shots, base: &str) -> Result<(), fantoccini::error::CmdError> {
    // Signed out: the demo page offers "Sign in".
    c.goto(&format!("{base}/")).await?;
    wait_for(
        c,
        shots,
        "signed-out page",
        "!document.getElementById('signed-out').hidden",
    )
    .await;
    shots.take(c, "signed-out").await;
    // Quietly: the page asked "am I signed in?" with the helper's getUser() (`GET /auth/session?optional=1`, 200
    // `{"authenticated": false}`), so no request of it failed with a 401 (which Chromium logs as a console error).
    let asked = c
        .execute(
            "return (window.__seenResponses || []).map((e) => { const u = new URL(e.url); return [u.pathname + u.search, e.status]; })",
            vec![],
        )
        .await?;
    let asked: Vec<(String, u16)> = serde_json::from_value(asked).expect("[path, status] pairs");
    assert!(
        asked.contains(&("/auth/session?optional=1".to_owned(), 200)),
        "{asked:?}"
    );
    assert!(!asked.iter().any(|(_, status)| *status == 401), "{asked:?}");

    // "Sign in" goes through /auth/login to the emulator's sign-in page.
    click(c, shots, "sign in", "#sign-in").await;
    wait_for(
        c,
        shots,
        "emulator sign-in page",
        "document.querySelector('button.approve')",
    )
    .await;
    let button = c.find(Locator::Css("button.approve")).await?.text().await?;
    let name = button
        .strip_prefix("Sign in as ")
        .unwrap_or_else(|| panic!("the emulator's button says `Sign in as …`: {button}"))
        .trim()
        .to_owned();
    shots.take(c, "ave-emulator-sign-in").await;

    // Back on the demo page, signed in, with the user's name shown.
    click(c, shots, "approve at the emulator", "button.approve").await;
    let shown = wait_for(c, shots, "signed-in page", SIGNED_IN_AS).await;
    assert_eq!(shown, Value::String(name.clone()), "the page shows the user's name");
    assert_eq!(c.current_url().await?.as_str(), format!("{base}/"));
    shots.take(c, "signed-in").await;

    // Chromium really stored the __Host- cookie: Secure, HttpOnly, SameSite=Lax, Path=/, no Domain.
    let cookie = c.get_named_cookie(SESSION_COOKIE).await?;
    assert_eq!(cookie.secure(), Some(true), "Secure");
    assert_eq!(cookie.http_only(), Some(true), "HttpOnly");
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Lax)", "SameSite=Lax");
    assert_eq!(cookie.path(), Some("/"));
    let script_visible = c.execute("return document.cookie", vec![]).await?;
    assert!(
        !script_visible.as_str().unwrap_or_default().contains(SESSION_COOKIE),
        "HttpOnly: scripts cannot see the session cookie"
    );

    // Proxy mode, on a fresh page load: apiFetch('/api/demo/hello') through the demo's `/api/demo` route reaches
    // the demo API (which verified the app JWT avemint attached), and no token is anywhere script can see.
    c.goto(&format!("{base}/")).await?;
    click(c, shots, "call the proxied API", "#call-proxied").await;
    let proxied = shown_json(c, shots, "proxied API answer", "proxied-answer", "hello").await;
    assert_eq!(proxied["hello"], name.as_str(), "{proxied}");
    let scan = scan_for_jwts(c, shots, "scan the proxied page").await;
    let paths = seen_paths(&scan);
    assert!(
        paths.iter().any(|p| p == "/api/demo/hello") && paths.iter().any(|p| p == "/auth/session"),
        "the recorder saw the page's responses: {scan}"
    );
    assert!(
        !paths.iter().any(|p| p == "/auth/token"),
        "the proxied side asks for no token: {scan}"
    );
    assert_eq!(
        jwt_places(&scan),
        Vec::<String>::new(),
        "no token in the proxied page: {scan}"
    );
    shots.take(c, "proxied-api-answer-no-token-in-page").await;

    // The token side of the same page: an app JWT through the SPA helper; its decoded claims are shown.
    click(c, shots, "get a token", "#get-token").await;
    let claims = shown_json(c, shots, "app JWT claims", "claims", "\"iss\"").await;
    assert_eq!(claims["iss"], base);
    assert_eq!(claims["aud"], base);
    assert_eq!(claims["name"], name.as_str());
    shots.take(c, "app-jwt").await;

    // The demo downstream API accepts the bearer from fetchWithToken and greets the user.
    click(c, shots, "call the demo API", "#call-api").await;
    let answer = shown_json(c, shots, "demo API answer", "api-answer", "hello").await;
    assert_eq!(answer["hello"], name.as_str());
    assert_eq!(answer["sub"], claims["sub"]);
    assert_eq!(
        answer["sub"], proxied["sub"],
        "both ways reach the API as the same user"
    );
    shots.take(c, "demo-api-answer").await;

    // The same scan now finds the token the page fetched: it can fail.
    let scan = scan_for_jwts(c, shots, "scan the token side").await;
    assert!(
        jwt_places(&scan).iter().any(|w| w == "fetch /auth/token body"),
        "the scan finds the app JWT once the page holds one: {scan}"
    );

    // A reload keeps the session: the cookie is sent back.
    c.refresh().await?;
    let shown = wait_for(
        c,
        shots,
        "signed in after reload",
        "!document.getElementById('signed-in').hidden && document.getElementById('user-name').textContent",
    )
    .await;
    assert_eq!(shown, Value::String(name.clone()));
    shots.take(c, "reloaded-still-signed-in").await;

    // Another origin (another loopback port, so same-site: the Lax cookie IS sent) cannot read a token.
    let (other, stop_other) = serve_other_origin(base).await;
    c.goto(&format!("{other}/")).await?;
    wait_for(c, shots, "cross-origin page", "document.getElementById('steal')").await;
    let with_csrf = cross_origin_fetch(c, &format!("{base}/auth/token"), true).await;
    assert_eq!(
        with_csrf, "blocked:TypeError",
        "CORS blocks a preflighted cross-origin token request"
    );
    let without_csrf = cross_origin_fetch(c, &format!("{base}/auth/token"), false).await;
    assert_eq!(
        without_csrf, "blocked:TypeError",
        "CORS hides a simple cross-origin POST's answer"
    );
    shots.take(c, "cross-origin-fetch-blocked").await;

    // A form POST from that origin reaches avemint with the cookie but without X-CSRF: refused, no token.
    click(c, shots, "cross-origin form POST", "#steal button").await;
    let text = wait_for(
        c,
        shots,
        "form POST answer",
        &format!(
            "location.href === {:?} && document.body && document.body.innerText",
            format!("{base}/auth/token")
        ),
    )
    .await;
    let text = text.as_str().unwrap_or_default();
    let json_start = text.find('{').unwrap_or_else(|| panic!("a JSON error page: {text}"));
    let refused: Value =
        serde_json::from_str(text[json_start..].trim()).unwrap_or_else(|_| panic!("a JSON error page: {text}"));
    let status = c
        .execute(
            "return performance.getEntriesByType('navigation')[0].responseStatus",
            vec![],
        )
        .await?;
    // 403 for the missing `X-CSRF` header, or 415 because `POST /auth/token` (which takes an optional JSON body)
    // refuses a form's content type before it looks at headers. Either way: refused, with a JSON error, no token.
    assert!(
        status == json!(403) || status == json!(415),
        "the form POST is refused with 403 or 415, not {status}: {refused}"
    );
    assert!(refused["error"].is_string(), "{refused}");
    assert!(refused.get("access_token").is_none(), "{refused}");
    shots.take(c, "cross-origin-form-post-refused").await;
    let _ = stop_other.send(());

    // Still signed in; "Sign out" ends the session and the page shows the signed-out state.
    c.goto(&format!("{base}/")).await?;
    wait_for(
        c,
        shots,
        "signed in before sign-out",
        "!document.getElementById('signed-in').hidden",
    )
    .await;
    click(c, shots, "sign out", "#sign-out").await;
    wait_for(
        c,
        shots,
        "signed-out page after sign-out",
        "!document.getElementById('signed-out').hidden && document.getElementById('signed-in').hidden",
    )
    .await;
    shots.take(c, "signed-out-again").await;
    assert!(
        c.get_named_cookie(SESSION_COOKIE).await.is_err(),
        "the session cookie is gone after sign-out"
    );
    c.refresh().await?;
    wait_for(
        c,
        shots,
        "still signed out after reload",
        "!document.getElementById('signed-out').hidden",
    )
    .await;
    Ok(())
}

/// Signs in on the demo page through the emulator and returns the name the page shows.
async fn sign_in(c: &Client, shots: &mut Shots, base: &str, who: &str) -> Result<String, fantoccini::error::CmdError> {
    c.goto(&format!("{base}/")).await?;
    click(c, shots, &format!("{who}: sign in"), "#sign-in").await;
    click(c, shots, &format!("{who}: approve at the emulator"), "button.approve").await;
    let shown = wait_for(c, shots, &format!("{who}: signed in"), SIGNED_IN_AS).await;
    Ok(shown.as_str().unwrap_or_default().to_owned())
}

/// Records, in the page, the `avemint:logged-out` events dispatched on `window` (`window.__loggedOut`), and marks
/// the page (`window.__notReloaded`) so a reload would show.
async fn record_logged_out(c: &Client) -> Result<(), fantoccini::error::CmdError> {
    c.execute(
        "window.__notReloaded = true; window.__loggedOut = []; \
         window.addEventListener('avemint:logged-out', (e) => window.__loggedOut.push(e.detail.reason));",
        vec![],
    )
    .await?;
    Ok(())
}

/// The number of rows in the demo's "Your sessions" table.
const SESSION_ROWS: &str = "document.querySelectorAll('#sessions tbody tr').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_from_another_browser_and_logging_out_in_another_tab_show_at_once() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let demo = DemoProcess::spawn();
    let base = demo.base.clone();
    let driver = Driver::start().await;
    let (profile_a, profile_b) = (
        tempfile::tempdir().expect("profile dir"),
        tempfile::tempdir().expect("profile dir"),
    );
    let a = chromium(&driver, profile_a.path()).await;
    let b = chromium(&driver, profile_b.path()).await;
    let mut shots = Shots::in_dir("e2e-sessions");
    let result = tokio::time::timeout(SCENARIO_TIMEOUT, two_browsers(&a, &b, &mut shots, &base)).await;
    let _ = a.close().await;
    let _ = b.close().await;
    drop(driver);
    drop(demo);
    report("two-browser scenario", started, &shots, result);
}

/// Prints how long a scenario took and where its screenshots are, then fails if it timed out or a command failed.
fn report(
    what: &str,
    started: Instant,
    shots: &Shots,
    result: Result<Result<(), fantoccini::error::CmdError>, tokio::time::error::Elapsed>,
) {
    eprintln!(
        "{what} took {:.1} s; screenshots in {}: {}",
        started.elapsed().as_secs_f64(),
        shots.dir.display(),
        shots.taken.join(", ")
    );
    let result = result.unwrap_or_else(|_| {
        panic!(
            "the {what} did not finish within {SCENARIO_TIMEOUT:?}; screenshots so far: {}",
            shots.taken.join(", ")
        )
    });
    result.expect("a WebDriver command failed");
}

async fn two_browsers(
    a: &Client,
    b: &Client,
    shots: &mut Shots,
    base: &str,
) -> Result<(), fantoccini::error::CmdError> {
    // Two browsers (separate profiles, so separate cookie jars) sign in as the same emulator user.
    let name_a = sign_in(a, shots, base, "A").await?;
    let name_b = sign_in(b, shots, base, "B").await?;
    assert_eq!(name_a, name_b, "both browsers are the same user");
    record_logged_out(b).await?;

    // A lists two sessions, its own marked current, and ends the other one.
    click(a, shots, "A: refresh sessions", "#refresh-sessions").await;
    wait_for(a, shots, "A: two sessions listed", &format!("{SESSION_ROWS} === 2")).await;
    let current = a
        .execute(
            "return document.querySelectorAll('#sessions tbody tr.current').length",
            vec![],
        )
        .await?;
    assert_eq!(current, json!(1), "exactly one session is this browser's");
    a.execute("document.getElementById('sessions-panel').scrollIntoView()", vec![])
        .await?;
    shots.take(a, "A-two-sessions").await;
    click(
        a,
        shots,
        "A: end the other session",
        "#sessions tbody tr:not(.current) button.end-session",
    )
    .await;
    wait_for(
        a,
        shots,
        "A: one session left",
        &format!("{SESSION_ROWS} === 1 && document.querySelector('#sessions tbody tr.current')"),
    )
    .await;
    a.execute("document.getElementById('sessions-panel').scrollIntoView()", vec![])
        .await?;
    shots.take(a, "A-other-session-ended").await;

    // B's next call gets login_required: its page fires avemint:logged-out and shows the signed-out view.
    click(b, shots, "B: call the proxied API", "#call-proxied").await;
    let reason = wait_for(
        b,
        shots,
        "B: logged out",
        "!document.getElementById('signed-out').hidden && window.__loggedOut.length && window.__loggedOut[0]",
    )
    .await;
    assert_eq!(reason, json!("login_required"));
    let status = b
        .execute_async(
            "const done = arguments[0]; fetch('/auth/session', { headers: { 'X-CSRF': '1' } }).then((r) => done(r.status));",
            vec![],
        )
        .await?;
    assert_eq!(status, json!(401), "B's session is gone on the server");
    shots.take(b, "B-logged-out-after-A-ended-it").await;

    // Cross-tab: a second tab of A, signed in through the shared cookie; "Sign out" in the first tab shows in the
    // second without a reload.
    let first = a.window().await?;
    let second = a.new_window(true).await?;
    a.switch_to_window(second.handle.clone()).await?;
    a.goto(&format!("{base}/")).await?;
    wait_for(
        a,
        shots,
        "A tab 2: signed in",
        "!document.getElementById('signed-in').hidden",
    )
    .await;
    record_logged_out(a).await?;
    shots.take(a, "A-tab2-signed-in").await;
    a.switch_to_window(first).await?;
    click(a, shots, "A tab 1: sign out", "#sign-out").await;
    wait_for(
        a,
        shots,
        "A tab 1: signed out",
        "!document.getElementById('signed-out').hidden",
    )
    .await;
    shots.take(a, "A-tab1-signed-out").await;
    a.switch_to_window(second.handle).await?;
    let reason = wait_for(
        a,
        shots,
        "A tab 2: logged out without a reload",
        "window.__notReloaded && !document.getElementById('signed-out').hidden \
         && document.getElementById('signed-in').hidden && window.__loggedOut.length && window.__loggedOut.join()",
    )
    .await;
    assert_eq!(reason, json!("logout"), "one event, from the other tab's logout");
    shots.take(a, "A-tab2-logged-out-by-tab1").await;
    Ok(())
}

/// The SPA's page as a build writes it: a module script (allowed by the default page CSP, `script-src 'self'`) that
/// shows the path it was loaded at and whether the session is signed in, and a sign-in link back to that path.
const SPA_INDEX: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>orders</title>\
<script type=\"module\" src=\"/assets/app-3f2a1b9c.js\"></script></head>\
<body><p id=\"path\"></p><p id=\"state\"></p><a id=\"sign-in\" href=\"/auth/login\">Sign in</a></body></html>";
const SPA_SCRIPT: &str = "const $ = (id) => document.getElementById(id);\n\
$('path').textContent = location.pathname;\n\
$('sign-in').href = '/auth/login?return_to=' + encodeURIComponent(location.pathname);\n\
const r = await fetch('/auth/session', { headers: { 'X-CSRF': '1' } });\n\
$('state').textContent = r.ok ? 'signed in as ' + (await r.json()).name : 'signed out';\n";

/// Issue 26 §1 and §4 in Chromium: an SPA served by `[spa] root` loads on a deep link (the fallback to
/// `index.html`, its module script under the default CSP), signs in and comes back to that link; a sign-in the user
/// denies at Ave shows avemint's page, whose "try again" link signs in and returns to where the sign-in started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_spa_served_from_its_root_signs_in_on_a_deep_link_and_a_denied_sign_in_is_a_page() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let dist = tempfile::tempdir().expect("dist");
    std::fs::create_dir_all(dist.path().join("assets")).expect("mkdir");
    std::fs::write(dist.path().join("index.html"), SPA_INDEX).expect("write");
    std::fs::write(dist.path().join("assets/app-3f2a1b9c.js"), SPA_SCRIPT).expect("write");
    let app = support::TestApp::spawn_with(support::Options {
        env: vec![("AVEMINT_SPA_ROOT", dist.path().display().to_string())],
        ..Default::default()
    })
    .await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = chromium(&driver, profile.path()).await;
    let mut shots = Shots::in_dir("e2e-spa");
    let result = tokio::time::timeout(SCENARIO_TIMEOUT, spa_scenario(&client, &mut shots, &app.address)).await;
    let _ = client.close().await;
    drop(driver);
    app.stop().await;
    report("SPA scenario", started, &shots, result);
}

async fn spa_scenario(c: &Client, shots: &mut Shots, base: &str) -> Result<(), fantoccini::error::CmdError> {
    const STATE: &str = "document.getElementById('state').textContent";
    c.goto(&format!("{base}/orders/7")).await?;
    wait_for(
        c,
        shots,
        "deep link, signed out",
        &format!("document.getElementById('path').textContent === '/orders/7' && {STATE} === 'signed out'"),
    )
    .await;
    shots.take(c, "spa-signed-out").await;
    click(c, shots, "sign in from the SPA", "#sign-in").await;
    click(c, shots, "approve at the emulator", "button.approve").await;
    let shown = wait_for(
        c,
        shots,
        "back on the deep link, signed in",
        &format!("location.pathname === '/orders/7' && {STATE}.startsWith('signed in as ') && {STATE}"),
    )
    .await;
    assert_eq!(shown, "signed in as Ada Lovelace");
    shots.take(c, "spa-signed-in").await;

    // Deny at Ave: avemint's page, not JSON; its link starts the sign-in again for the same page.
    c.goto(&format!("{base}/auth/login?return_to=/reports")).await?;
    click(c, shots, "deny at the emulator", "form:last-of-type button").await;
    wait_for(
        c,
        shots,
        "the sign-in failure page",
        "document.getElementById('headline') && document.getElementById('headline').textContent === 'You chose not to sign in at Ave.'",
    )
    .await;
    let retry = c.find(Locator::Id("retry")).await?.attr("href").await?;
    assert_eq!(retry.as_deref(), Some("/auth/login?return_to=%2Freports"));
    shots.take(c, "signin-denied-page").await;
    click(c, shots, "try again", "#retry").await;
    click(c, shots, "approve at the emulator again", "button.approve").await;
    wait_for(
        c,
        shots,
        "back where the sign-in started",
        &format!("location.pathname === '/reports' && {STATE}.startsWith('signed in as ')"),
    )
    .await;
    shots.take(c, "spa-after-retry").await;
    Ok(())
}

/// The status the React example shows is `status` (its `data-testid="status"` element).
fn example_status(status: &str) -> String {
    format!("document.querySelector('[data-testid=status]')?.textContent === '{status}'")
}

/// The React example (`examples/react-app/`, Vite + React on the `avemint` package) served by `[spa] root` on
/// avemint's origin: a deep link loads the signed-out page quietly (no 401 anywhere), "Sign in" goes through Ave and
/// back to the deep link, the proxied API gets the app JWT (never the page), a sign-out in another tab reaches this
/// one over the BroadcastChannel, and "Switch account" (`prompt=select_account`) lets the user become another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_react_example_on_spa_root_signs_in_calls_its_api_and_switches_accounts() {
    if !browser_available() || !support::tool_available("npm", "--version") {
        return;
    }
    let started = Instant::now();
    let (_build, dist) = support::build_example("/api/orders");
    let api = support::AudienceEcho::start().await;
    let app = support::TestApp::spawn_with(support::Options {
        env: vec![("AVEMINT_SPA_ROOT", dist.display().to_string())],
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/orders\"\nupstream = \"{}\"\n",
            api.base
        )),
        ..support::Options::default()
    })
    .await;
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = chromium(&driver, profile.path()).await;
    let mut shots = Shots::in_dir("e2e-react");
    let result = tokio::time::timeout(SCENARIO_TIMEOUT, react_scenario(&client, &mut shots, &app, &api)).await;
    let _ = client.close().await;
    drop(driver);
    report("React example scenario", started, &shots, result);
}

async fn react_scenario(
    c: &Client,
    shots: &mut Shots,
    app: &support::TestApp,
    api: &support::AudienceEcho,
) -> Result<(), fantoccini::error::CmdError> {
    let base = &app.address;
    let (ada, grace) = (&app.emulator.users()[0], &app.emulator.users()[1]);
    // A deep link, signed out: avemint serves the app's index.html, the app asks getUser() and shows "Sign in".
    c.goto(&format!("{base}/orders/7")).await?;
    wait_for(c, shots, "signed-out app", &example_status("unauthenticated")).await;
    shots.take(c, "react-signed-out").await;
    let path = c.find(Locator::Css("[data-testid=path]")).await?.text().await?;
    assert_eq!(path, "/orders/7");
    // Quietly: every request the page made succeeded (Chromium logs a failed one, a 401 included, to the console).
    let loaded = c
        .execute(
            "return performance.getEntriesByType('resource').map((e) => [new URL(e.name).pathname + new URL(e.name).search, e.responseStatus])",
            vec![],
        )
        .await?;
    let loaded: Vec<(String, u16)> = serde_json::from_value(loaded).expect("[path, status] pairs");
    assert!(
        loaded.contains(&("/auth/session?optional=1".to_owned(), 200)),
        "{loaded:?}"
    );
    assert!(loaded.iter().all(|(_, status)| *status < 400), "{loaded:?}");

    // "Sign in": through /auth/login to Ave's page, as Ada, and back to the deep link.
    click(c, shots, "sign in", "[data-testid=sign-in]").await;
    wait_for(
        c,
        shots,
        "Ave's sign-in page",
        "document.querySelector('button.approve')",
    )
    .await;
    shots.take(c, "react-ave").await;
    c.find(Locator::Css("button.approve")).await?.click().await?;
    wait_for(c, shots, "signed in", &example_status("authenticated")).await;
    assert_eq!(
        c.current_url().await?.path(),
        "/orders/7",
        "back where the user started"
    );
    let user = c.find(Locator::Css("[data-testid=user]")).await?.text().await?;
    assert_eq!(user, ada.display_name);
    shots.take(c, "react-signed-in").await;

    // The proxied API: avemint attached Ada's app JWT on the server; the page got the API's answer only.
    click(c, shots, "call the API", "[data-testid=call-api]").await;
    let shown = wait_for(
        c,
        shots,
        "API answer",
        "document.querySelector('[data-testid=api-result]').textContent.startsWith('200 ') && document.querySelector('[data-testid=api-result]').textContent",
    )
    .await;
    let shown = shown
        .as_str()
        .and_then(|s| s.strip_prefix("200 "))
        .expect("`200 <body>`");
    let answer: Value = serde_json::from_str(shown).expect("the API's JSON");
    assert_eq!(
        answer["aud"],
        app.audience(),
        "the default profile's app JWT went upstream"
    );
    let bearer = api.bearers().last().cloned().unwrap_or_default();
    let token = bearer.strip_prefix("Bearer ").expect("the upstream got a bearer");
    assert_eq!(app.verify(token).await.claims["sub"], ada.id.as_str());
    let html = c.source().await?;
    assert!(!html.contains(token), "the token is not in the page");

    // Another tab signs out; this tab follows at once (BroadcastChannel), without a reload.
    let first = c.window().await?;
    let second = c.new_window(true).await?;
    c.switch_to_window(second.handle).await?;
    c.goto(&format!("{base}/")).await?;
    wait_for(c, shots, "second tab signed in", &example_status("authenticated")).await;
    click(c, shots, "sign out in the second tab", "[data-testid=sign-out]").await;
    wait_for(c, shots, "second tab signed out", &example_status("unauthenticated")).await;
    c.close_window().await?;
    c.switch_to_window(first).await?;
    wait_for(c, shots, "first tab followed", &example_status("unauthenticated")).await;
    shots.take(c, "react-signed-out-by-other-tab").await;

    // Switching accounts: Ave signs Ada in without asking (the emulator's auto-approve, as Ave does for a user who
    // approved this app before), unless the sign-in asks for prompt=select_account.
    app.emulator.set_auto_approve(Some(ada.id.clone()));
    click(c, shots, "sign in again", "[data-testid=sign-in]").await;
    wait_for(c, shots, "signed in again, at once", &example_status("authenticated")).await;
    click(c, shots, "switch account", "[data-testid=switch-account]").await;
    let grace_button = format!("//button[contains(., '{}')]", grace.display_name);
    wait_for(
        c,
        shots,
        "Ave's account choice",
        &format!("document.evaluate(\"{grace_button}\", document, null, 9, null).singleNodeValue"),
    )
    .await;
    shots.take(c, "react-choose-account").await;
    c.find(Locator::XPath(&grace_button)).await?.click().await?;
    wait_for(c, shots, "signed in as Grace", &example_status("authenticated")).await;
    let user = c.find(Locator::Css("[data-testid=user]")).await?.text().await?;
    assert_eq!(user, grace.display_name);
    shots.take(c, "react-switched").await;
    Ok(())
}
