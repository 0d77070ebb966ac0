//! Secrets rotate without a restart, under load: the client secret (its file
//! changes while Ave rotates it with no overlap), the session keys (SIGHUP to an
//! `avemint serve` child process) and a hook secret (its file changes). Requests
//! keep running on several tasks meanwhile; none may fail, no session may be lost.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ave_emulator::{Emulator, EmulatorConfig};
use avemint_core::session::RenewalSettings;
use support::{Browser, Options, SESSION_COOKIE, TestApp};

/// Replaces `path` the way Kubernetes and systemd do: write aside, then rename over it.
fn replace_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// What the load tasks saw.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    ok: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `POST /auth/token` in a loop with `browser`'s session until told to stop.
async fn token_loop(http: reqwest::Client, base: String, mut browser: Browser, load: Arc<Load>) {
    while !load.stop.load(Ordering::Relaxed) {
        let resp = browser
            .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
            .await;
        match resp.status().as_u16() {
            200 => {
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            s => load.fail(format!("token status {s}: {}", resp.text().await.unwrap_or_default())),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whole sign-ins in a loop until told to stop. A sign-in holds `gate` for reading while it runs: see the client
/// secret test for why.
async fn sign_in_loop(
    http: reqwest::Client,
    emulator: Emulator,
    base: String,
    load: Arc<Load>,
    gate: Arc<tokio::sync::RwLock<()>>,
) {
    // The second user: the sessions under load are the first user's, and the per-user cap must not end them.
    let user = emulator.users()[1].id.clone();
    while !load.stop.load(Ordering::Relaxed) {
        let mut browser = Browser::default();
        let status = {
            let _held = gate.read().await;
            support::sign_in_response_at(&http, &emulator, &base, &mut browser, None, &user)
                .await
                .status()
        };
        if status == 302 && browser.get(SESSION_COOKIE).is_some() {
            load.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            load.fail(format!("sign-in callback status {status}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_secret_rotates_under_load_and_no_request_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_path = dir.path().join("client_secret");
    let old = "old-client-secret-0123456789abcdef".to_owned();
    let new = "new-client-secret-fedcba9876543210".to_owned();
    std::fs::write(&secret_path, format!("{old}\n")).expect("write");
    // Access tokens of 3 s refreshed 2 s before they expire: every session renews about once a second.
    let app = TestApp::spawn_with(Options {
        emulator: Some(EmulatorConfig {
            client_secret: old.clone(),
            access_token_ttl: Duration::from_secs(3),
            ..EmulatorConfig::default()
        }),
        renewal: Some(RenewalSettings {
            skew: Duration::from_secs(2),
            ..RenewalSettings::default()
        }),
        env: vec![
            // Sign-ins in a loop from one address: no per-IP sign-in limit.
            ("AVEMINT_LOGIN_RATE_LIMIT", "0".to_owned()),
            ("AVE_CLIENT_SECRET", String::new()),
            ("AVE_CLIENT_SECRET_FILE", secret_path.to_str().expect("utf8").to_owned()),
        ],
        ..Options::default()
    })
    .await;
    let load = Arc::new(Load::default());
    // Ave burns an authorization code before it checks the client secret (docs/ave-protocol.md §2.1), and a
    // rotation has no overlap: a code exchange in flight at the very instant of the rotation cannot be saved by
    // anyone. Sign-ins therefore pause for the instant of the rotation itself (the gate); everything else runs on.
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let browser = app.signed_in_browser().await;
        tasks.push(tokio::spawn(token_loop(
            app.http.clone(),
            app.address.clone(),
            browser,
            load.clone(),
        )));
    }
    tasks.push(tokio::spawn(sign_in_loop(
        app.http.clone(),
        app.emulator.clone(),
        app.address.clone(),
        load.clone(),
        gate.clone(),
    )));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refreshes_before = refreshes(&app.emulator);
    let rotated_at = app.emulator.token_requests().len();
    {
        let _rotating = gate.write().await;
        // The operator rotates the secret in Ave's portal, then writes it where avemint reads it.
        app.emulator.rotate_client_secret(new.clone());
        replace_atomically(&secret_path, &format!("{new}\n"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    assert_eq!(load.failures(), Vec::<String>::new(), "no request failed");
    assert!(load.ok.load(Ordering::Relaxed) > 50, "the load ran");
    let after: Vec<_> = app.emulator.token_requests().split_off(rotated_at);
    assert!(
        after.iter().filter(|r| r.status == 200).count() >= 3,
        "token calls succeeded after the rotation: {after:?}"
    );
    assert!(
        refreshes(&app.emulator) > refreshes_before + 2,
        "sessions renewed with the new secret"
    );
    assert_eq!(app.emulator.client_secret(), new);
}

fn refreshes(emulator: &Emulator) -> usize {
    emulator
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token") && r.status == 200)
        .count()
}

const OLD_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const NEW_KEY: &str = "ISEhISEhISEhISEhISEhISEhISEhISEhISEhISEhISE=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_rotate_on_sighup_under_load_and_no_session_is_lost() {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys_file = tmp.path().join("session_keys");
    std::fs::write(&keys_file, format!("{OLD_KEY}\n")).expect("write");
    let (child, log) = support::serve_logged(&emulator, port, tmp.path(), |cmd| {
        cmd.env_remove("AVEMINT_SESSION_KEYS")
            .env("AVEMINT_SESSION_KEYS_FILE", &keys_file)
            .env("RUST_LOG", "info")
            .env("AVEMINT_LOGIN_RATE_LIMIT", "0");
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut before = Vec::new();
    for _ in 0..2 {
        let mut b = Browser::default();
        support::sign_in_at(&http, &emulator, &base, &mut b).await;
        before.push(b);
    }
    let load = Arc::new(Load::default());
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let mut tasks = Vec::new();
    for b in &before {
        tasks.push(tokio::spawn(token_loop(
            http.clone(),
            base.clone(),
            b.clone(),
            load.clone(),
        )));
    }
    tasks.push(tokio::spawn(sign_in_loop(
        http.clone(),
        emulator.clone(),
        base.clone(),
        load.clone(),
        gate,
    )));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new key first: it seals from now on; the old one still opens. Written in place (no rename): SIGHUP tells.
    std::fs::write(&keys_file, format!("{NEW_KEY},{OLD_KEY}\n")).expect("write");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("secret reloaded")
    {
        assert!(std::time::Instant::now() < deadline, "the keys were never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A session made after the reload.
    let mut after = Browser::default();
    support::sign_in_at(&http, &emulator, &base, &mut after).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    assert_eq!(load.failures(), Vec::<String>::new(), "no request failed");
    assert!(load.ok.load(Ordering::Relaxed) > 20, "the load ran");
    for b in before.iter_mut().chain([&mut after]) {
        let r = b
            .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
            .await;
        assert_eq!(r.status(), 200, "every session still opens");
    }
    drop(child);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("SIGHUP: reloading the configuration, secrets and signing keys"),
        "{text}"
    );
    assert!(!text.contains(NEW_KEY) && !text.contains(OLD_KEY), "no key in the log");
    // The new key really seals: an instance that knows only the new key opens the session made after the reload,
    // and not one made before it. That one is refused with a 503, not ended: an instance cannot tell a key it no
    // longer holds from one it does not hold yet (a rolling rotation, issue 22 §3), so it keeps the session.
    let database_url = format!("sqlite://{}", tmp.path().join("a.db").display());
    let only_new = support::ServeProcess::start(
        &emulator,
        &database_url,
        &tmp.path().join("keys"),
        &[("AVEMINT_SESSION_KEYS", NEW_KEY)],
    )
    .await;
    let status_at = |b: &mut Browser| {
        let req = http.post(format!("{}/auth/token", only_new.base)).header("X-CSRF", "1");
        let mut b = b.clone();
        async move { b.send(req).await.status().as_u16() }
    };
    assert_eq!(status_at(&mut after).await, 200, "sealed with the new key");
    assert_eq!(status_at(&mut before[0]).await, 503, "sealed with the old key");
}

/// Waits until `log` holds `needle` at least `count` times (10 s at most).
async fn wait_for_log(log: &std::path::Path, needle: &str, count: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{needle}` ×{count} never logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sighup(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// SIGHUP reads the configuration file again: its routes and token profiles are put in use (a new route with a new
/// profile answers, a removed one is gone), and a file that does not validate keeps the running ones, saying why.
/// Settings a reload cannot apply are named, and apply at the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_profiles_reload_on_sighup_and_a_bad_file_keeps_the_running_ones() {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let upstream = support::AudienceEcho::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("avemint.toml");
    let profiles = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\ndefault = true\n";
    let first = format!(
        "{profiles}[[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n\
         [[routes]]\npath = \"/api/orders\"\nupstream = \"{}/orders\"\nprofile = \"orders\"\n",
        upstream.base
    );
    std::fs::write(&config, &first).expect("write");
    let (child, log) = support::serve_logged(&emulator, port, tmp.path(), |cmd| {
        cmd.args(["--config", config.to_str().expect("utf8")])
            .env("RUST_LOG", "info");
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut browser = Browser::default();
    support::sign_in_at(&http, &emulator, &base, &mut browser).await;
    let call = |path: &str| http.get(format!("{base}{path}")).header("X-CSRF", "1");
    let answer = browser.send(call("/api/orders/list")).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["aud"], "orders-api");

    // A new route with a new profile, the old route gone, and a setting only a restart applies.
    let second = format!(
        "session_idle_timeout = 600\n[exchange]\nave_client_ids = [\"native-app\"]\n{profiles}[[profiles]]\nname = \"billing\"\naudience = \"billing-api\"\n\
         [[routes]]\npath = \"/api/billing\"\nupstream = \"{}/billing\"\nprofile = \"billing\"\n",
        upstream.base
    );
    std::fs::write(&config, &second).expect("write");
    sighup(&child.0);
    let text = wait_for_log(&log, "configuration reloaded", 1).await;
    assert!(
        text.contains("billing (aud billing-api)"),
        "the profiles in use: {text}"
    );
    let text = wait_for_log(&log, "apply only at the next restart", 1).await;
    assert!(text.contains("sessions (session_*)"), "{text}");
    assert!(text.contains("token service ([exchange] ave_client_ids)"), "{text}");
    let answer = browser.send(call("/api/billing/x")).await;
    assert_eq!(answer.status(), 200, "the new route");
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["aud"], "billing-api");
    assert_eq!(body["path"], "/billing/x");
    assert_eq!(
        browser.send(call("/api/orders/list")).await.status(),
        404,
        "the removed route"
    );
    // The served OpenAPI document follows.
    let doc: serde_json::Value = support::get_json(&http, &format!("{base}/openapi.json")).await;
    assert!(doc["paths"]["/api/billing"]["get"].is_object(), "{doc}");
    assert!(doc["paths"]["/api/orders"].is_null());
    // The new route's profile is not mintable by page script (a route's profile), like at start.
    let minted = browser
        .send(
            http.post(format!("{base}/auth/token"))
                .header("X-CSRF", "1")
                .json(&serde_json::json!({"profile": "billing"})),
        )
        .await;
    assert_eq!(minted.status(), 403);

    // A file that does not validate (a route naming no profile, a bad value): nothing of it is used.
    let broken = format!(
        "session_lifetime = 0\n{profiles}[[routes]]\npath = \"/api/new\"\nupstream = \"{}/new\"\nprofile = \"nope\"\n",
        upstream.base
    );
    std::fs::write(&config, &broken).expect("write");
    sighup(&child.0);
    let text = wait_for_log(&log, "configuration not reloaded", 1).await;
    let line = text
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .expect("the line");
    assert!(line.contains("config file `routes`") && line.contains("nope"), "{line}");
    assert!(line.contains("config file `session_lifetime`"), "every problem: {line}");
    let answer = browser.send(call("/api/billing/x")).await;
    assert_eq!(answer.status(), 200, "the running routes stay");
    assert_eq!(browser.send(call("/api/new/x")).await.status(), 404);
    // A file that is not TOML at all.
    std::fs::write(&config, "[[routes]\n").expect("write");
    sighup(&child.0);
    wait_for_log(&log, "configuration not reloaded", 2).await;
    assert_eq!(browser.send(call("/api/billing/x")).await.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"avemint_secret_reloads_total{kind="configuration",outcome="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"avemint_secret_reloads_total{kind="configuration",outcome="failed"} 2"#),
        "{metrics}"
    );
    // The session survived every reload.
    assert_eq!(browser.send(call("/auth/session")).await.status(), 200);
}

/// SIGHUP puts the SPA settings in use with the routes and profiles: `[spa] root` switched to another build serves
/// its files (the fallback page and assets), with its `content_security_policy` and a new `error_path`; a `[spa]
/// root` without `index.html` keeps the running build and `error_path`, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_settings_reload_on_sighup_and_a_root_without_index_html_keeps_the_running_one() {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let tmp = tempfile::tempdir().expect("tempdir");
    let build = |name: &str, files: &[(&str, &str)]| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (file, text) in files {
            std::fs::write(dir.join(file), text).expect("write");
        }
        std::fs::canonicalize(&dir).expect("real path")
    };
    let old = build("old", &[("index.html", "<!doctype html><p>OLD BUILD</p>")]);
    let new = build(
        "new",
        &[
            ("index.html", "<!doctype html><p>NEW BUILD</p>"),
            ("only-new.txt", "a file of the new build"),
        ],
    );
    let broken = build("broken", &[("only-new.txt", "no index.html here")]);
    let config = tmp.path().join("avemint.toml");
    std::fs::write(&config, format!("[spa]\nroot = \"{}\"\n", old.display())).expect("write");
    let (child, log) = support::serve_logged(&emulator, port, tmp.path(), |cmd| {
        cmd.args(["--config", config.to_str().expect("utf8")])
            .env("RUST_LOG", "info");
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let navigate = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("Sec-Fetch-Mode", "navigate")
            .send()
    };
    // A failed sign-in, as a person's browser sees it: the page, or a redirect to `error_path`.
    let failed_sign_in = || async {
        let resp = navigate("/auth/callback?code=x&state=y").await.expect("request");
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (resp.status().as_u16(), location)
    };
    let page = navigate("/orders/7").await.expect("request");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(page.text().await.expect("text").contains("OLD BUILD"));
    let asset = http.get(format!("{base}/only-new.txt")).send().await.expect("request");
    assert_eq!(asset.status(), 404, "not in the running build");
    let (status, location) = failed_sign_in().await;
    assert_eq!((status, location), (400, None), "avemint's own page");

    // Another build, its own CSP and the SPA's page for failed sign-ins.
    std::fs::write(
        &config,
        format!(
            "error_path = \"/signin-error\"\n[spa]\nroot = \"{}\"\ncontent_security_policy = \"default-src 'self'\"\n",
            new.display()
        ),
    )
    .expect("write");
    sighup(&child.0);
    let text = wait_for_log(&log, "configuration reloaded", 1).await;
    let line = text
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("the line");
    assert!(line.contains(&format!("files from {}", new.display())), "{line}");
    let page = navigate("/orders/7").await.expect("request");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-security-policy"], "default-src 'self'");
    assert_ne!(csp, "default-src 'self'", "the CSP changed");
    assert!(page.text().await.expect("text").contains("NEW BUILD"));
    let asset = http.get(format!("{base}/only-new.txt")).send().await.expect("request");
    assert_eq!(asset.status(), 200);
    assert_eq!(asset.text().await.expect("text"), "a file of the new build");
    let (status, location) = failed_sign_in().await;
    assert_eq!(status, 302);
    assert_eq!(location.as_deref(), Some("/signin-error?error=invalid_request"));

    // A root that is no build (no index.html): nothing of the file is used, and the log says why.
    std::fs::write(&config, format!("[spa]\nroot = \"{}\"\n", broken.display())).expect("write");
    sighup(&child.0);
    let text = wait_for_log(&log, "configuration not reloaded", 1).await;
    let line = text
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .expect("the line");
    assert!(line.contains("no index.html") && line.contains("root"), "{line}");
    let page = navigate("/").await.expect("request");
    assert_eq!(page.headers()["content-security-policy"], "default-src 'self'");
    assert!(
        page.text().await.expect("text").contains("NEW BUILD"),
        "the running build stays"
    );
    let (status, location) = failed_sign_in().await;
    assert_eq!(status, 302, "the running error_path stays");
    assert_eq!(location.as_deref(), Some("/signin-error?error=invalid_request"));
}
