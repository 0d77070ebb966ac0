//! The SPA helper `/avemint.js` and the npm package `avemint` it comes from (`clients/js/`): served by avemint
//! (`serve` mode) from the package's own source, tested with Node's built-in test runner, its TypeScript
//! declarations compiled with `tsc --strict`, packed with `npm pack`; and the server side of what the helper
//! adds: the quiet signed-in probe `GET /auth/session?optional=1` and `prompt` on `GET /auth/login`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use avemint_core::session::DatabaseUrl;
use serde_json::{Value, json};
use support::{Browser, Options, SESSION_COOKIE, TestApp, location};

/// The package's directory in the repository.
fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// Runs `cmd`; fails the test with its output unless it succeeds.
fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts that a `node --test` run ran tests and none failed.
fn assert_node_tests_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "no node test ran:\n{stdout}");
}

#[test]
fn the_helper_passes_its_node_tests() {
    if !support::tool_available("node", "--version") {
        return;
    }
    // The helper itself needs nothing installed: its tests run straight from the repository.
    let mut node = Command::new("node");
    node.current_dir(package_dir())
        .args(["--test", "test/avemint.test.mjs"]);
    assert_node_tests_passed(&run(node, "node --test"));
}

/// Copies the package's sources (not `node_modules`, not tarballs) into `to`.
fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "node_modules" || name.ends_with(".tgz") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_package(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).expect("copy");
        }
    }
}

/// The whole package in a copy of it: `npm ci` from the committed lock file, every Node test (the React entry's
/// included), `tsc --strict` over the declarations, and `npm pack`, whose tarball holds exactly the module, the
/// React entry, their declarations and the README, and installs into an empty project that imports it by name.
#[test]
fn the_package_installs_tests_type_checks_and_packs() {
    if !support::tool_available("node", "--version") || !support::tool_available("npm", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = dir.path().join("avemint");
    copy_package(&package_dir(), &pkg);
    let npm = |args: &[&str], at: &Path| {
        let mut cmd = Command::new("npm");
        cmd.current_dir(at).args(args).args(["--no-audit", "--no-fund"]);
        cmd
    };
    run(npm(&["ci"], &pkg), "npm ci");
    assert_node_tests_passed(&run(npm(&["test"], &pkg), "npm test"));
    run(npm(&["run", "typecheck"], &pkg), "npm run typecheck (tsc --strict)");

    let packed = run(npm(&["pack", "--json"], &pkg), "npm pack");
    let listing: Value = serde_json::from_slice(&packed.stdout).expect("npm pack --json");
    let mut files: Vec<&str> = listing[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "README.md",
            "avemint.d.ts",
            "avemint.js",
            "package.json",
            "react.d.ts",
            "react.js"
        ]
    );
    let tarball = pkg.join(listing[0]["filename"].as_str().expect("filename"));

    // An app installs the tarball and imports the package by name (no React needed for the main entry).
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","private":true,"type":"module"}"#,
    )
    .expect("write");
    run(
        npm(&["install", &tarball.to_string_lossy()], &app),
        "npm install avemint-*.tgz",
    );
    let mut node = Command::new("node");
    node.current_dir(&app).args([
        "--input-type=module",
        "-e",
        "const m = await import('avemint'); console.log(typeof m.getUser, typeof m.signIn, typeof m.signOut, m.CHANNEL_NAME);",
    ]);
    let out = run(node, "import 'avemint'");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "function function function avemint"
    );
}

#[tokio::test]
async fn avemint_serves_the_helper_as_a_cacheable_module() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/avemint.js")).send().await.expect("helper");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/javascript; charset=utf-8");
    let cache = resp.headers()["cache-control"].to_str().expect("ascii");
    assert!(cache.contains("max-age=") && !cache.contains("no-store"), "{cache}");
    let body = resp.text().await.expect("text");
    let package_copy = std::fs::read_to_string(package_dir().join("avemint.js")).expect("helper source");
    assert_eq!(
        body, package_copy,
        "the served helper is the package's module, byte for byte"
    );
    for export in [
        "export function getToken",
        "export async function fetchWithToken",
        "export async function apiFetch",
        "export function configure",
        "export async function sessions",
        "export async function endSession",
        "export async function logout",
        "export async function watchSession",
        "export const events",
        "export const CHANNEL_NAME = 'avemint'",
        "export async function getUser",
        "export function signIn",
        "export function signOut",
    ] {
        assert!(body.contains(export), "{export}");
    }
    // Only GET: other methods fall through to the API's error shape.
    let post = app.http.post(app.url("/avemint.js")).send().await.expect("post");
    assert!(post.status().is_client_error(), "{}", post.status());
}

/// `GET /auth/session` (with `X-CSRF: 1` and `optional` as given) in `browser`.
async fn session_probe(app: &TestApp, browser: &mut Browser, optional: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url("/auth/session")).header("X-CSRF", "1");
    if let Some(value) = optional {
        req = req.query(&[("optional", value)]);
    }
    browser.send(req).await
}

/// Whether `resp` expires the session cookie.
fn expires_session_cookie(resp: &reqwest::Response) -> bool {
    resp.headers().get_all("set-cookie").iter().any(|v| {
        let v = v.to_str().unwrap_or_default();
        v.starts_with(&format!("{SESSION_COOKIE}=;")) && v.contains("Max-Age=0")
    })
}

/// `getUser()`'s probe: `optional=1` answers a signed-out caller 200 `{"authenticated": false}` (the ended
/// session's cookie expired along with it) and a signed-in one exactly what `GET /auth/session` answers; the
/// CSRF rule still holds, another `optional` value is 400, and without it a signed-out caller still gets 401.
async fn the_optional_session_probe_answers_signed_out_without_an_error(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(Options {
        database_url: db,
        ..Options::default()
    })
    .await;
    let mut stranger = Browser::default();
    let resp = session_probe(&app, &mut stranger, Some("1")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_none(), "nothing to expire");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(
        resp.json::<Value>().await.expect("JSON"),
        json!({ "authenticated": false })
    );
    let resp = session_probe(&app, &mut stranger, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(support::error_code(resp).await, "login_required");
    for bad in ["0", "true", "", "11"] {
        let resp = session_probe(&app, &mut stranger, Some(bad)).await;
        assert_eq!(resp.status(), 400, "optional={bad}");
        assert_eq!(support::error_code(resp).await, "invalid_request");
    }
    let no_csrf = stranger.send(app.http.get(app.url("/auth/session?optional=1"))).await;
    assert_eq!(no_csrf.status(), 403);
    assert_eq!(support::error_code(no_csrf).await, "invalid_request");

    let mut browser = app.signed_in_browser().await;
    let probed: Value = session_probe(&app, &mut browser, Some("1"))
        .await
        .json()
        .await
        .expect("JSON");
    let plain: Value = session_probe(&app, &mut browser, None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(probed["authenticated"], true, "{probed}");
    assert_eq!(probed["sub"], app.emulator.users()[0].id.as_str(), "{probed}");
    assert_eq!(
        probed["name"],
        app.emulator.users()[0].display_name.as_str(),
        "{probed}"
    );
    assert!(probed["expires_in"].as_u64().is_some_and(|s| s > 0), "{probed}");
    assert_eq!(probed.get("access_token"), None, "never a token");
    let without_timing = |mut v: Value| {
        let o = v.as_object_mut().expect("object");
        o.remove("expires_in");
        o.remove("expires_at");
        v
    };
    assert_eq!(
        without_timing(probed),
        without_timing(plain),
        "the same answer either way"
    );

    // Signed out elsewhere (this session ended): the probe says so, quietly, and expires the stale cookie.
    let mut elsewhere = browser.clone();
    let resp = elsewhere
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 204);
    let resp = session_probe(&app, &mut browser, Some("1")).await;
    assert_eq!(resp.status(), 200);
    assert!(expires_session_cookie(&resp), "{:?}", resp.headers());
    assert_eq!(
        resp.json::<Value>().await.expect("JSON"),
        json!({ "authenticated": false })
    );
    app.stop().await;
}

support::on_both_stores!(the_optional_session_probe_answers_signed_out_without_an_error);

/// The query of a URL as pairs.
fn query_of(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `signIn({ prompt: 'select_account' })`: `/auth/login` passes `prompt` on to Ave, whose page then asks which
/// account instead of signing in again as the last one (docs/ave-protocol.md §1.1), and the user switches.
#[tokio::test]
async fn sign_in_with_select_account_lets_the_user_switch_accounts() {
    let app = TestApp::spawn().await;
    let (ada, grace) = (&app.emulator.users()[0], &app.emulator.users()[1]);
    // Signed in as Ada; Ave remembers her and approves at once (the emulator's auto-approve, as Ave does).
    let mut browser = app.signed_in_as(0).await;
    let resp = app.login_start(&mut browser, Some("/")).await;
    let plain = location(&resp);
    assert!(!query_of(&plain).iter().any(|(k, _)| k == "prompt"), "{plain}");
    assert_eq!(
        app.http.get(&plain).send().await.expect("ave").status(),
        302,
        "no prompt: approved at once"
    );

    let resp = browser
        .send(
            app.http
                .get(app.url("/auth/login"))
                .query(&[("return_to", "/orders"), ("prompt", "select_account")]),
        )
        .await;
    assert_eq!(resp.status(), 302);
    let authorize = location(&resp);
    let query = query_of(&authorize);
    let prompts: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "prompt")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(prompts, ["select_account"], "{authorize}");
    let page = app.http.get(&authorize).send().await.expect("ave page");
    assert_eq!(
        page.status(),
        200,
        "Ave shows its account choice instead of approving as Ada"
    );
    let html = page.text().await.expect("html");
    assert!(html.contains(&grace.display_name), "{html}");

    // The user picks Grace on Ave's page (its form fields, posted as the page would).
    let mut form: Vec<(String, String)> = query
        .into_iter()
        .filter(|(k, _)| k != "response_type" && k != "prompt")
        .collect();
    form.push(("user_id".into(), grace.id.clone()));
    form.push(("decision".into(), "approve".into()));
    let origin = url::Url::parse(&authorize).expect("url").origin().ascii_serialization();
    let decided = app
        .http
        .post(format!("{origin}/signin/decide"))
        .form(&form)
        .send()
        .await
        .expect("decide");
    assert_eq!(decided.status(), 302);
    let done = browser.send(app.http.get(location(&decided))).await;
    assert_eq!(done.status(), 302);
    assert_eq!(location(&done), "/orders");
    let user: Value = session_probe(&app, &mut browser, Some("1"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        user["sub"],
        grace.id.as_str(),
        "switched from {} to Grace: {user}",
        ada.id
    );

    // `consent` goes through the same way.
    let resp = browser
        .send(app.http.get(app.url("/auth/login")).query(&[("prompt", "consent")]))
        .await;
    assert_eq!(resp.status(), 302);
    let consent = location(&resp);
    assert!(
        query_of(&consent).contains(&("prompt".into(), "consent".into())),
        "{consent}"
    );
    assert_eq!(app.http.get(&consent).send().await.expect("ave").status(), 200);
}

/// Only the prompts Ave acts on: `none` and `login` (no-ops at Ave), combinations, other spellings and an empty
/// value are a typed 400 before anything is started (no login cookie, no redirect).
#[tokio::test]
async fn sign_in_refuses_a_prompt_ave_would_ignore() {
    let app = TestApp::spawn().await;
    for bad in [
        "none",
        "login",
        "select_account consent",
        "SELECT_ACCOUNT",
        "",
        "consent,login",
    ] {
        let mut browser = Browser::default();
        let resp = browser
            .send(app.http.get(app.url("/auth/login")).query(&[("prompt", bad)]))
            .await;
        assert_eq!(resp.status(), 400, "prompt={bad:?}");
        assert!(resp.headers().get("location").is_none());
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "prompt={bad:?}: no pending sign-in"
        );
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(
            body["error_description"].as_str().is_some_and(|d| d.contains("prompt")),
            "{body}"
        );
    }
}
