//! `POST /oauth/introspect` (RFC 7662) over HTTP, on SQLite and PostgreSQL:
//! `active` follows the token's session (logout, the per-user cap), expired,
//! foreign, `alg: none` and garbage tokens are inactive, callers authenticate
//! per token profile and never see another profile's tokens.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::{Browser, Options, TestApp, error_code, on_both_stores};

use avemint_core::session::{DatabaseUrl, SessionSettings};

const ORDERS_SECRET: &str = "orders-introspection-secret-0123456789";
const WEB_SECRET: &str = "web+introspection:secret/0123456789%";

/// Three profiles: `orders` and `web` may introspect, `billing` may not; `short` tokens live 1 s.
fn profiles(dir: &tempfile::TempDir) -> String {
    let file = dir.path().join("orders.secret");
    std::fs::write(&file, format!("{ORDERS_SECRET}\n")).expect("write secret");
    format!(
        r#"
[[profiles]]
name = "orders"
audience = "orders-api"
default = true
[profiles.claims]
plan = "pro"
[profiles.introspection]
secret_file = "{}"

[[profiles]]
name = "web"
audience = "https://web.example"
ttl = 1
[profiles.introspection]
secret = "{WEB_SECRET}"

[[profiles]]
name = "billing"
audience = "billing-api"
"#,
        file.display()
    )
}

async fn spawn(db: Option<DatabaseUrl>, dir: &tempfile::TempDir, max_sessions_per_user: u32) -> TestApp {
    TestApp::spawn_with(Options {
        token_toml: Some(profiles(dir)),
        database_url: db,
        session: Some(SessionSettings {
            max_sessions_per_user,
            ..SessionSettings::default()
        }),
        ..Options::default()
    })
    .await
}

/// `Authorization: Basic` with the id and secret form-urlencoded, as RFC 6749 §2.3.1 says.
fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
}

async fn introspect_raw(app: &TestApp, auth: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.http.post(app.url("/oauth/introspect")).form(form);
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    req.send().await.expect("introspect")
}

/// Introspects as `orders`; asserts a 200 with `no-store`.
async fn introspect_as(app: &TestApp, id: &str, secret: &str, token: &str) -> Value {
    let resp = introspect_raw(app, Some(&basic(id, secret)), &[("token", token)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.expect("json")
}

async fn introspect(app: &TestApp, token: &str) -> Value {
    introspect_as(app, "orders", ORDERS_SECRET, token).await
}

async fn token_for(app: &TestApp, browser: &mut Browser, profile: &str) -> String {
    let resp = app.post_token_json(browser, &json!({"profile": profile})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

async fn active_follows_the_session_and_shows_the_claims(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(db, &dir, 0).await;
    let mut b = app.signed_in_browser().await;
    let token = token_for(&app, &mut b, "orders").await;
    let answer = introspect(&app, &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    // Every claim of the token, exactly.
    let mut expected = claims_of(&token);
    let map = expected.as_object_mut().expect("object");
    map.insert("active".into(), json!(true));
    map.insert("token_type".into(), json!("Bearer"));
    assert_eq!(answer, expected);
    assert_eq!(answer["plan"], "pro");
    assert_eq!(answer["aud"], "orders-api");
    // Asking again (cached) agrees; then the user logs out and the still-unexpired token is inactive.
    assert_eq!(introspect(&app, &token).await["active"], true);
    let resp = b
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert!(resp.status().is_success());
    assert_eq!(introspect(&app, &token).await, json!({"active": false}));
}

async fn the_per_user_cap_ends_the_session_and_its_tokens(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(db, &dir, 1).await;
    let mut first = app.signed_in_browser().await;
    let token = token_for(&app, &mut first, "orders").await;
    assert_eq!(introspect(&app, &token).await["active"], true);
    // The same user signs in again: the cap of one ends the first session.
    let mut second = app.signed_in_browser().await;
    assert_eq!(introspect(&app, &token).await, json!({"active": false}));
    let fresh = token_for(&app, &mut second, "orders").await;
    assert_eq!(introspect(&app, &fresh).await["active"], true);
}

async fn foreign_expired_and_garbage_tokens_are_inactive(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(db, &dir, 0).await;
    let mut b = app.signed_in_browser().await;
    let token = token_for(&app, &mut b, "orders").await;
    let claims = claims_of(&token);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());

    // The same claims signed by a key that is not avemint's: under its own kid, and under avemint's kid.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = avemint_core::mint::keys::LiveKeys::open(
        other_dir.path(),
        avemint_core::mint::keys::KeyPolicy::default(),
        avemint_base::clock::Clock::System,
    )
    .expect("other keys");
    let foreign = other
        .current()
        .signing_key()
        .sign(claims.to_string().as_bytes())
        .expect("sign");
    let signature = foreign.split('.').nth(2).expect("sig");
    let under_our_kid = format!("{}.{}.{signature}", enc(&header), enc(&claims));
    // `alg: none` under avemint's kid, and claims swapped under avemint's signature.
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let none = format!("{}.{}.", enc(&none_header), enc(&claims));
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("someone-else");
    let our_sig = token.split('.').nth(2).expect("sig");
    let forged = format!("{}.{}.{our_sig}", enc(&header), enc(&forged_claims));
    for bad in [
        foreign.as_str(),
        under_our_kid.as_str(),
        none.as_str(),
        forged.as_str(),
        "garbage",
        "a.b.c",
    ] {
        assert_eq!(introspect(&app, bad).await, json!({"active": false}), "{bad:.20}");
    }

    // A `web` token (1 s lifetime) is active, then expires.
    let short = token_for(&app, &mut b, "web").await;
    assert_eq!(introspect_as(&app, "web", WEB_SECRET, &short).await["active"], true);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        introspect_as(&app, "web", WEB_SECRET, &short).await,
        json!({"active": false})
    );
    // The session itself is still live.
    assert_eq!(introspect(&app, &token).await["active"], true);
}

async fn callers_authenticate_per_profile_and_see_only_their_tokens(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(db, &dir, 0).await;
    let mut b = app.signed_in_browser().await;
    let orders = token_for(&app, &mut b, "orders").await;
    let billing = token_for(&app, &mut b, "billing").await;
    let form = [("token", orders.as_str())];
    let refused = [
        None,
        Some(basic("orders", "wrong-secret-wrong-secret-wrong-secret")),
        Some(basic("orders", "")),
        Some(basic("billing", ORDERS_SECRET)),
        Some(basic("nobody", ORDERS_SECRET)),
        Some(basic("web", ORDERS_SECRET)),
        Some(format!("Bearer {orders}")),
        Some("Basic not-base64!".to_owned()),
    ];
    for auth in refused {
        let resp = introspect_raw(&app, auth.as_deref(), &form).await;
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .starts_with("Basic"),
        );
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(error_code(resp).await, "invalid_client");
    }
    // A profile sees only its own tokens: `web` asking about an `orders` token learns nothing.
    assert_eq!(
        introspect_as(&app, "web", WEB_SECRET, &orders).await,
        json!({"active": false})
    );
    assert_eq!(introspect(&app, &billing).await, json!({"active": false}));
    assert_eq!(introspect(&app, &orders).await["active"], true);
    // A missing token is a bad request (after authentication).
    let auth = basic("orders", ORDERS_SECRET);
    let resp = introspect_raw(&app, Some(&auth), &[("token_type_hint", "access_token")]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    let resp = introspect_raw(&app, Some(&auth), &[("token", "")]).await;
    assert_eq!(resp.status(), 400);
    // The hint is accepted and ignored.
    let resp = introspect_raw(
        &app,
        Some(&auth),
        &[("token", orders.as_str()), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // Discovery names the endpoint.
    let discovery = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["introspection_endpoint"], app.url("/oauth/introspect"));
}

on_both_stores!(
    active_follows_the_session_and_shows_the_claims,
    the_per_user_cap_ends_the_session_and_its_tokens,
    foreign_expired_and_garbage_tokens_are_inactive,
    callers_authenticate_per_profile_and_see_only_their_tokens,
);

#[test]
fn an_introspection_secret_is_checked_like_the_hook_secret() {
    for (table, expected) in [
        ("secret = \"short\"", "at least 32"),
        ("", "exactly one of `secret` and `secret_file`"),
        ("secret_file = \"/nonexistent/avemint-introspection\"", "cannot read"),
    ] {
        let toml = format!("[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.introspection]\n{table}\n");
        let e = support::token_settings_from_toml(&toml, &[]).expect_err(&toml);
        assert!(e.to_string().contains(expected), "{e}");
        assert!(e.to_string().contains("`introspection`"), "{e}");
    }
}

/// The sum of `avemint_credential_failures_total` for `endpoint` and `answer` in a `/metrics` text.
fn credential_failures(metrics: &str, endpoint: &str, answer: &str) -> u64 {
    let series = format!("avemint_credential_failures_total{{answer=\"{answer}\",endpoint=\"{endpoint}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 22 §6: wrong introspection credentials are limited per client network. 300 wrong secrets (they were 300
/// × 401 in 0.4 s) now get 429s with `Retry-After` once the network is past its limit, `/metrics` counts them, and
/// a caller with the right secret from the same address is still answered.
#[tokio::test]
async fn wrong_introspection_secrets_are_rate_limited_per_network_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(None, &dir, 0).await;
    let mut b = app.signed_in_browser().await;
    let token = token_for(&app, &mut b, "orders").await;
    let before = app.metrics().await;
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..300 {
        let auth = if i % 2 == 0 {
            basic("orders", &format!("wrong-secret-{i:04}-0123456789abcdef"))
        } else {
            basic("no-such-profile", ORDERS_SECRET)
        };
        let resp = introspect_raw(&app, Some(&auth), &[("token", &token)]).await;
        match resp.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                assert_eq!(support::error_code(resp).await, "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
        if i % 50 == 0 {
            // The right secret is never limited, whatever the network did.
            assert_eq!(introspect(&app, &token).await["active"], true);
        }
    }
    assert_eq!(unauthorized, 20, "the first 20 wrong ones are plain 401s");
    assert_eq!(limited, 280);
    let after = app.metrics().await;
    for (answer, n) in [("rejected", 20), ("rate_limited", 280)] {
        assert!(
            credential_failures(&after, "introspect", answer) >= credential_failures(&before, "introspect", answer) + n,
            "{answer} counted"
        );
    }
    app.stop().await;
}
