//! `avemint demo` as a newcomer runs it: the binary, its built-in emulator, the
//! emulator's sign-in page and the demo page, driven like a browser.

mod support;

use support::{Browser, DemoProcess, SESSION_COOKIE, location, verify_with};

/// The value of `name="…"` hidden inputs in the first form on the page.
fn form_fields(html: &str) -> Vec<(String, String)> {
    let form = html
        .split("<form")
        .nth(1)
        .expect("a form")
        .split("</form>")
        .next()
        .expect("form end");
    form.split("<input")
        .skip(1)
        .filter_map(|input| {
            let attr = |name: &str| {
                let start = input.find(&format!("{name}=\""))? + name.len() + 2;
                let end = input[start..].find('"')? + start;
                Some(html_unescape(&input[start..end]))
            };
            Some((attr("name")?, attr("value").unwrap_or_default()))
        })
        .collect()
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Signs `browser` in at the avemint at `base` through its emulator's sign-in page, as a person would.
async fn sign_in_on_the_emulator_page(http: &reqwest::Client, base: &str, browser: &mut Browser) {
    let resp = browser.send(http.get(format!("{base}/auth/login?return_to=/"))).await;
    assert_eq!(resp.status(), 302);
    let signin_url = location(&resp);
    let signin = http.get(&signin_url).send().await.expect("signin page");
    assert_eq!(signin.status(), 200);
    let html = signin.text().await.expect("html");
    assert!(html.contains("Sign in as"), "{html}");
    let fields = form_fields(&html);
    assert!(
        fields.iter().any(|(k, v)| k == "decision" && v == "approve"),
        "{fields:?}"
    );
    let origin = url::Url::parse(&signin_url)
        .expect("url")
        .origin()
        .ascii_serialization();
    let resp = http
        .post(format!("{origin}/signin/decide"))
        .form(&fields)
        .send()
        .await
        .expect("decide");
    assert_eq!(resp.status(), 302);
    let resp = browser.send(http.get(location(&resp))).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), "/");
    assert!(browser.get(SESSION_COOKIE).is_some());
}

#[tokio::test]
async fn the_demo_runs_the_whole_flow_from_the_binary() {
    let demo = DemoProcess::spawn();
    let base = demo.base.clone();
    assert!(demo.banner.contains("DEMO"), "{}", demo.banner);

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http.get(format!("{base}/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("frame-ancestors 'none'")
    );
    let page = page.text().await.expect("html");
    assert!(page.contains("DEMO MODE"));
    let script = http
        .get(format!("{base}/demo.js"))
        .send()
        .await
        .expect("js")
        .text()
        .await
        .expect("text");
    // The page gets its app JWT through the SPA helper, which POSTs /auth/token with `X-CSRF: 1`.
    assert!(script.contains(
        "import { apiFetch, getToken, fetchWithToken, configure, events, getUser, sessions, endSession, logout, watchSession } from '/avemint.js';"
    ));
    // Signed in or not, it asks quietly (`GET /auth/session?optional=1`): a signed-out visitor causes no 401.
    assert!(script.contains("s = await getUser()"));
    // The "Your sessions" panel: the list, end one, end all others, and the logged-out event.
    assert!(page.contains("<h2>Your sessions</h2>") && page.contains("id=\"end-others\""));
    for call in [
        "await sessions()",
        "endSession(s.id)",
        "logout({ scope: 'others' })",
        "'avemint:logged-out'",
    ] {
        assert!(script.contains(call), "{call}");
    }
    // …and, on the proxied side, calls the demo API through avemint with no token in the page.
    assert!(script.contains("apiFetch('/api/demo/hello')"));
    assert!(script.contains("await getToken()"));
    assert!(script.contains("fetchWithToken('/demo/api/hello')"));
    let helper = http.get(format!("{base}/avemint.js")).send().await.expect("helper");
    assert_eq!(helper.status(), 200);
    assert!(
        helper.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/javascript")
    );
    let helper = helper.text().await.expect("text");
    assert!(helper.contains("authCall('POST', '/auth/token'"));
    assert!(helper.contains("{ method, credentials: 'include', headers: { 'X-CSRF': '1' } }"));
    assert!(helper.contains("fetch(`${settings.base}${path}`, init)"));

    // Sign in through the emulator's page, as a person would.
    let mut browser = Browser::default();
    sign_in_on_the_emulator_page(&http, &base, &mut browser).await;

    let session: serde_json::Value = browser
        .send(http.get(format!("{base}/auth/session")).header("X-CSRF", "1"))
        .await
        .json()
        .await
        .expect("json");
    assert!(session["name"].is_string(), "{session}");
    let token: serde_json::Value = browser
        .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
        .await
        .json()
        .await
        .expect("json");
    let jwks: serde_json::Value = support::get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
    let data = verify_with(&jwks, token["access_token"].as_str().expect("token"), &base, &base);
    assert_eq!(data.claims["demo"], true);
    assert_eq!(data.claims["sub"], session["sub"]);

    // The demo downstream API accepts the app JWT and nothing else.
    let api = format!("{base}/demo/api/hello");
    let jwt = token["access_token"].as_str().expect("token");
    let hello = http.get(&api).bearer_auth(jwt).send().await.expect("api");
    assert_eq!(hello.status(), 200);
    let hello: serde_json::Value = hello.json().await.expect("json");
    assert_eq!(hello["hello"], session["name"], "{hello}");
    assert_eq!(hello["sub"], session["sub"]);
    let missing = http.get(&api).send().await.expect("api");
    assert_eq!(missing.status(), 401);
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    assert_eq!(support::error_code(missing).await, "invalid_token");
    let (head, sig) = jwt.rsplit_once('.').expect("jws");
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{head}.{flipped}{}", &sig[1..]);
    let bad = http.get(&api).bearer_auth(&tampered).send().await.expect("api");
    assert_eq!(bad.status(), 401);
    assert_eq!(support::error_code(bad).await, "invalid_token");

    // Proxy mode: the demo's route `/api/demo` forwards to the demo API with the app JWT attached by avemint.
    let proxied = format!("{base}/api/demo/hello");
    let hello = browser.send(http.get(&proxied).header("X-CSRF", "1")).await;
    assert_eq!(hello.status(), 200);
    let hello: serde_json::Value = hello.json().await.expect("json");
    assert_eq!(hello["hello"], session["name"], "{hello}");
    assert_eq!(hello["sub"], session["sub"]);
    let no_csrf = browser.send(http.get(&proxied)).await;
    assert_eq!(no_csrf.status(), 403);
    let post = browser.send(http.post(&proxied).header("X-CSRF", "1")).await;
    assert_eq!(post.status(), 405, "the demo route forwards GET only");
    let signed_out = http.get(&proxied).header("X-CSRF", "1").send().await.expect("proxied");
    assert_eq!(signed_out.status(), 401);
    assert_eq!(support::error_code(signed_out).await, "login_required");
    drop(demo);
}

/// The demo's signing keys are throw-away: in a temporary directory (never `./keys`, never `AVEMINT_KEYS_DIR`),
/// removed when the demo ends, so no later `serve` can pick them up.
#[test]
fn the_demo_keeps_no_signing_keys_after_it_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let production = tmp.path().join("production-keys");
    let mut demo = DemoProcess::spawn_with(&["demo", "--listen", "127.0.0.1:0"], |cmd| {
        cmd.env("TMPDIR", tmp.path()).env("AVEMINT_KEYS_DIR", &production);
    });
    let throwaway: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("avemint-throwaway-keys-"))
        })
        .collect();
    assert_eq!(throwaway.len(), 1, "one throw-away directory in TMPDIR");
    let keys = std::fs::read_dir(&throwaway[0]).expect("keys").count();
    assert!(keys >= 2, "the keys are in it");
    assert!(
        demo.banner.contains(&throwaway[0].display().to_string()),
        "{}",
        demo.banner
    );
    assert!(!demo.working_dir().join("keys").exists(), "nothing in ./keys");
    assert!(!production.exists(), "AVEMINT_KEYS_DIR is not the demo's");
    assert!(demo.terminate().success());
    assert!(!throwaway[0].exists(), "removed when the demo ends");
}

/// `avemint dev --config FILE`: the team's own routes and profiles, with the emulator in place of Ave, throw-away
/// keys and an in-memory store; the file's Ave client, public URL, store and keys directory are not used. SIGHUP
/// reloads the routes and profiles from the file.
#[tokio::test]
async fn dev_serves_your_configuration_with_the_emulator_and_reloads_it() {
    let upstream = support::AudienceEcho::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let production = tmp.path().join("production-keys");
    let config = tmp.path().join("avemint.toml");
    let write = |route: &str, audience: &str| {
        let toml = format!(
            "client_id = \"app_production\"\nclient_secret_file = \"/run/secrets/never-read\"\n\
             public_url = \"https://app.example.com\"\nkeys_dir = {:?}\n\
             database_url = \"postgres://avemint@db.invalid:5432/sessions\"\n\
             [[profiles]]\nname = \"web\"\naudience = \"https://web\"\ndefault = true\n\
             [[profiles]]\nname = \"api\"\naudience = \"{audience}\"\n\
             [[routes]]\npath = \"{route}\"\nupstream = \"{}/up\"\nprofile = \"api\"\n",
            production.display().to_string(),
            upstream.base
        );
        std::fs::write(&config, toml).expect("write");
    };
    write("/api/orders", "orders-api");
    let config_arg = config.to_str().expect("utf8").to_owned();
    let mut dev = DemoProcess::spawn_with(&["dev", "--config", &config_arg, "--listen", "127.0.0.1:0"], |cmd| {
        cmd.env("TMPDIR", tmp.path());
    });
    assert!(
        dev.banner.contains("DEV MODE") && dev.banner.contains(&config_arg),
        "{}",
        dev.banner
    );
    let base = dev.base.clone();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // No demo page: the user's own app is what is served.
    assert_eq!(http.get(format!("{base}/")).send().await.expect("root").status(), 404);
    let mut browser = Browser::default();
    sign_in_on_the_emulator_page(&http, &base, &mut browser).await;
    let answer = browser
        .send(http.get(format!("{base}/api/orders/list")).header("X-CSRF", "1"))
        .await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["aud"], "orders-api", "the file's route and profile");
    assert_eq!(body["path"], "/up/list");
    // The discovery document names the dev origin, not the file's public URL.
    let discovery = support::get_json(&http, &format!("{base}/.well-known/openid-configuration")).await;
    assert_eq!(discovery["issuer"], base.as_str());
    assert!(!production.exists(), "the file's keys directory is not touched");
    assert!(!dev.working_dir().join("keys").exists());

    write("/api/billing", "billing-api");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &dev.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = browser
            .send(http.get(format!("{base}/api/billing/x")).header("X-CSRF", "1"))
            .await;
        if answer.status() == 200 {
            let body: serde_json::Value = answer.json().await.expect("json");
            assert_eq!(body["aud"], "billing-api");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reloaded route never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(dev.terminate().success());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("avemint-throwaway-keys-"))
        .collect();
    assert!(left.is_empty(), "the throw-away keys are removed: {left:?}");
}

/// `avemint dev` refuses an invalid configuration like `serve` and `check-config`: status 2, one line per problem,
/// each naming the setting as the file wrote it.
#[test]
fn dev_refuses_an_invalid_configuration_with_one_line_per_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("avemint.toml");
    std::fs::write(
        &config,
        "session_lifetime = 0\n[[routes]]\npath = \"/api/x\"\nupstream = \"http://127.0.0.1:9\"\nprofile = \"nope\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"))
        .args([
            "dev",
            "--config",
            config.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("TMPDIR", tmp.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(problems.len(), 2, "{err}");
    assert!(
        problems.iter().any(|l| l.contains("config file `session_lifetime`")),
        "{err}"
    );
    assert!(
        problems
            .iter()
            .any(|l| l.contains("config file `routes`") && l.contains("nope")),
        "{err}"
    );
    // The emulator lets anyone sign in as anyone: the dev loop never listens beyond loopback.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"))
        .args(["dev", "--listen", "0.0.0.0:0"])
        .env_clear()
        .env("TMPDIR", tmp.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback only"),
        "{out:?}"
    );
}
