//! The admin API (issue 16): off unless `AVEMINT_ADMIN_LISTEN` is set, only on its own listener, behind a
//! bearer token; lists and ends users' sessions and counts them. Black-box over HTTP, on SQLite and PostgreSQL.

mod support;

use std::collections::BTreeMap;

use avemint::config::Settings;
use avemint_core::session::DatabaseUrl;
use serde_json::{Value, json};
use support::{Browser, Options, TestApp};

const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

fn with_admin(db: Option<DatabaseUrl>) -> Options {
    Options {
        database_url: db,
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    }
}

fn admin_url(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.admin_address.as_deref().expect("admin API on"))
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::Response {
    app.http
        .request(method, admin_url(app, path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin request")
}

async fn signed_in_as(app: &TestApp, user: usize) -> Browser {
    let mut b = Browser::default();
    let id = app.emulator.users()[user].id.clone();
    support::sign_in_as_at(&app.http, &app.emulator, &app.address, &mut b, &id).await;
    b
}

async fn token_status(app: &TestApp, b: &Browser) -> u16 {
    app.post_token(&mut b.clone(), true).await.status().as_u16()
}

async fn sid_of(app: &TestApp, b: &Browser) -> String {
    let body: Value = app.post_token(&mut b.clone(), true).await.json().await.expect("JSON");
    let token = body["access_token"].as_str().expect("token");
    app.verify(token).await.claims["sid"].as_str().expect("sid").to_owned()
}

/// Without `AVEMINT_ADMIN_LISTEN` nothing is bound; with it, `/admin/...` on the public port is still a 404 like
/// any unknown path, token or not.
#[tokio::test]
async fn the_admin_api_is_never_on_the_public_listener() {
    let app = TestApp::spawn().await;
    assert!(
        app.admin_address.is_none(),
        "no admin listener without AVEMINT_ADMIN_LISTEN"
    );
    let app2 = TestApp::spawn_with(with_admin(None)).await;
    for app in [&app, &app2] {
        for path in ["/admin/stats", "/admin/sessions/AAAAAAAAAAAAAAAAAAAAAA"] {
            let resp = app
                .http
                .get(app.url(path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 404, "{path}");
            assert_eq!(support::error_code(resp).await, "not_found");
        }
    }
    // And the public API is not on the admin listener.
    let resp = admin(&app2, reqwest::Method::GET, "/healthz").await;
    assert_eq!(resp.status(), 404);
    app.stop().await;
    app2.stop().await;
}

/// No token, another token, another scheme: 401 with `WWW-Authenticate: Bearer` and a JSON error, on every path
/// (known or not, so the API's shape is not revealed).
#[tokio::test]
async fn the_admin_api_refuses_without_the_token() {
    let app = TestApp::spawn_with(with_admin(None)).await;
    let stats = admin_url(&app, "/admin/stats");
    let wrong = format!("{TOKEN}x");
    let attempts = [
        app.http.get(&stats),
        app.http.get(&stats).bearer_auth(&wrong),
        app.http.get(&stats).bearer_auth(&TOKEN[..TOKEN.len() - 1]),
        app.http.get(&stats).bearer_auth(""),
        app.http.get(&stats).basic_auth("admin", Some(TOKEN)),
        app.http.get(&stats).header("Authorization", TOKEN),
        app.http.get(admin_url(&app, "/admin/nothing-here")),
        app.http.delete(admin_url(&app, "/admin/users/someone/sessions")),
    ];
    for req in attempts {
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "invalid_token");
        assert!(!body.to_string().contains(TOKEN), "the token is never echoed");
    }
    let resp = admin(&app, reqwest::Method::GET, "/admin/stats").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let resp = admin(&app, reqwest::Method::GET, "/admin/nothing-here").await;
    assert_eq!(resp.status(), 404, "with the token, an unknown path is 404");
    app.stop().await;
}

/// `GET` and `DELETE /admin/users/{sub}/sessions`: exactly that user's sessions, then none; others untouched.
async fn the_admin_api_ends_all_of_a_users_sessions(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(with_admin(db)).await;
    let ada = app.emulator.users()[0].id.clone();
    let a1 = signed_in_as(&app, 0).await;
    let a2 = signed_in_as(&app, 0).await;
    let grace = signed_in_as(&app, 1).await;
    let listed: Value = admin(&app, reqwest::Method::GET, &format!("/admin/users/{ada}/sessions"))
        .await
        .json()
        .await
        .expect("JSON");
    let mut ids: Vec<String> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![sid_of(&app, &a1).await, sid_of(&app, &a2).await];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(listed["sessions"][0]["network"], "127.0.0.0/24");

    let resp = admin(&app, reqwest::Method::DELETE, &format!("/admin/users/{ada}/sessions")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.expect("JSON"), json!({"ended": 2}));
    assert_eq!(token_status(&app, &a1).await, 401);
    assert_eq!(token_status(&app, &a2).await, 401);
    assert_eq!(token_status(&app, &grace).await, 200, "another user is untouched");
    let listed: Value = admin(&app, reqwest::Method::GET, &format!("/admin/users/{ada}/sessions"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed, json!({"sessions": []}));
    let resp = admin(&app, reqwest::Method::DELETE, "/admin/users/nobody/sessions").await;
    assert_eq!(resp.json::<Value>().await.expect("JSON"), json!({"ended": 0}));
    app.stop().await;
}

/// `DELETE /admin/sessions/{id}` ends exactly that session, by the `sid` its app JWTs carry; 404 after, and
/// for unknown or malformed ids.
async fn the_admin_api_ends_one_session_by_sid(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(with_admin(db)).await;
    let a1 = signed_in_as(&app, 0).await;
    let a2 = signed_in_as(&app, 0).await;
    let sid = sid_of(&app, &a1).await;
    let resp = admin(&app, reqwest::Method::DELETE, &format!("/admin/sessions/{sid}")).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(token_status(&app, &a1).await, 401);
    assert_eq!(token_status(&app, &a2).await, 200, "the user's other session lives");
    for id in [sid.as_str(), "AAAAAAAAAAAAAAAAAAAAAA", "malformed"] {
        let resp = admin(&app, reqwest::Method::DELETE, &format!("/admin/sessions/{id}")).await;
        assert_eq!(resp.status(), 404, "{id}");
        assert_eq!(support::error_code(resp).await, "not_found");
    }
    app.stop().await;
}

/// `GET /admin/stats` counts live sessions.
async fn the_admin_api_counts_sessions(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(with_admin(db)).await;
    let stats = |v: Value| v["sessions"].clone();
    let read = || async {
        stats(
            admin(&app, reqwest::Method::GET, "/admin/stats")
                .await
                .json()
                .await
                .expect("JSON"),
        )
    };
    assert_eq!(
        read().await,
        json!({"total": 0, "created_last_hour": 0, "created_last_day": 0, "active_last_hour": 0})
    );
    let a = signed_in_as(&app, 0).await;
    signed_in_as(&app, 0).await;
    signed_in_as(&app, 1).await;
    assert_eq!(
        read().await,
        json!({"total": 3, "created_last_hour": 3, "created_last_day": 3, "active_last_hour": 3})
    );
    let resp = a
        .clone()
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(read().await["total"], 2);
    app.stop().await;
}

support::on_both_stores!(
    the_admin_api_ends_all_of_a_users_sessions,
    the_admin_api_ends_one_session_by_sid,
    the_admin_api_counts_sessions,
);

/// Start-up (the same loader as `avemint serve`) refuses a token under 32 characters, a listener without a
/// token, and the public listener's address; a token alone turns nothing on.
#[test]
fn start_up_refuses_a_short_token_or_a_listener_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = [
        ("AVE_CLIENT_ID", "app_0123456789abcdef0123456789abcdef"),
        ("AVE_CLIENT_SECRET", "secret"),
        ("AVEMINT_PUBLIC_URL", "http://127.0.0.1:8080"),
        ("AVEMINT_SESSION_KEYS", support::TEST_SESSION_KEY),
    ];
    let load = |extra: &[(&str, &str)]| {
        let env: BTreeMap<String, String> = base
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load(None, &env)
    };
    let short = "x".repeat(31);
    let errors = load(&[
        ("AVEMINT_ADMIN_LISTEN", "127.0.0.1:9090"),
        ("AVEMINT_ADMIN_TOKEN", &short),
    ])
    .expect_err("short token refused")
    .0;
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("AVEMINT_ADMIN_TOKEN") && e.contains("32")),
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| !e.contains(&short)), "never echoed");
    let errors = load(&[("AVEMINT_ADMIN_LISTEN", "127.0.0.1:9090")])
        .expect_err("listener without a token refused")
        .0;
    assert!(errors.iter().any(|e| e.contains("AVEMINT_ADMIN_TOKEN")), "{errors:?}");
    let errors = load(&[
        ("AVEMINT_ADMIN_LISTEN", "127.0.0.1:8080"),
        ("AVEMINT_ADMIN_TOKEN", TOKEN),
    ])
    .expect_err("the public address refused")
    .0;
    assert!(errors.iter().any(|e| e.contains("AVEMINT_LISTEN")), "{errors:?}");
    let off = load(&[("AVEMINT_ADMIN_TOKEN", TOKEN)]).expect("a token alone is fine");
    assert!(off.admin.is_none());
    // From a file, like `client_secret_file`.
    let file = dir.path().join("admin_token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    let on = load(&[
        ("AVEMINT_ADMIN_LISTEN", "127.0.0.1:9090"),
        ("AVEMINT_ADMIN_TOKEN_FILE", file.to_str().expect("path")),
    ])
    .expect("token from a file");
    assert_eq!(on.admin.expect("admin on").listen.to_string(), "127.0.0.1:9090");
}

/// `avemint serve` exits 2 on a short admin token, naming the variable, never the token.
#[test]
fn serve_exits_2_on_a_short_admin_token() {
    let short = "y".repeat(20);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"))
        .arg("serve")
        .env_clear()
        .env("AVE_CLIENT_ID", "app_0123456789abcdef0123456789abcdef")
        .env("AVE_CLIENT_SECRET", "secret")
        .env("AVEMINT_PUBLIC_URL", "http://127.0.0.1:8080")
        .env("AVEMINT_SESSION_KEYS", support::TEST_SESSION_KEY)
        .env("AVEMINT_ADMIN_LISTEN", "127.0.0.1:9090")
        .env("AVEMINT_ADMIN_TOKEN", &short)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AVEMINT_ADMIN_TOKEN"), "{stderr}");
    assert!(!stderr.contains(&short));
}

#[test]
fn committed_admin_openapi_document_equals_avemint_openapi_admin() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"))
        .args(["openapi", "--admin"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("utf8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/admin.yaml")).expect("committed file");
    assert!(
        generated == committed,
        "openapi/admin.yaml is stale: run `cargo run -- openapi --admin > openapi/admin.yaml`"
    );
    for path in ["/admin/users/{sub}/sessions", "/admin/sessions/{id}", "/admin/stats"] {
        assert!(committed.contains(&format!("  {path}:")), "{path}");
    }
    assert!(
        !committed.contains("/auth/"),
        "the public API is not in the admin document"
    );
}

/// Issue 22 §6: wrong admin tokens are limited per client network like introspection secrets: 429 with
/// `Retry-After` past the limit, counted in `/metrics` (`endpoint="admin"`); the right token still works.
#[tokio::test]
async fn wrong_admin_tokens_are_rate_limited_per_network_and_counted() {
    let app = TestApp::spawn_with(with_admin(None)).await;
    let stats = admin_url(&app, "/admin/stats");
    let mut statuses = Vec::new();
    for i in 0..300 {
        let resp = app
            .http
            .get(&stats)
            .bearer_auth(format!("{TOKEN}-{i}"))
            .send()
            .await
            .expect("request");
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
            assert_eq!(support::error_code(resp).await, "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(resp.status().as_u16());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 280);
    assert_eq!(
        admin(&app, reqwest::Method::GET, "/admin/stats").await.status(),
        200,
        "the right token works"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("avemint_credential_failures_total{answer=\"rate_limited\",endpoint=\"admin\"}"),
        "counted"
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with("avemint_credential_failures_total{answer=\"rate_limited\",endpoint=\"admin\"}"))
        .expect("series");
    let n: u64 = line.rsplit(' ').next().expect("value").parse().expect("number");
    assert!(n >= 280, "{line}");
    app.stop().await;
}
