//! `POST /oauth/token` (the token service) over HTTP against the emulator, on SQLite and PostgreSQL: client
//! credentials for service profiles, Ave access tokens exchanged for app JWTs (RFC 8693; the Ave token from a real
//! PKCE sign-in at the emulator, as a native app gets it), and delegation of a session's app JWT to another API
//! with `act`, bound to the session. Every refusal docs/token-service.md lists, the per-network limit of refusals, the
//! endpoint in discovery, and its metrics.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::{Browser, Options, TestApp, error_code, on_both_stores};

use avemint_base::clock::{ManualClock, UnixTime};
use avemint_core::session::DatabaseUrl;

const WEB_SECRET: &str = "web-exchange-secret-0123456789abcdef";
const ORDERS_SECRET: &str = "orders+exchange:secret/0123456789abcdef";
const BILLING_SECRET: &str = "billing-exchange-secret-0123456789abcdef";
const JOB_SECRET: &str = "reports-job-client-secret-0123456789ab";
const INTROSPECT_SECRET: &str = "orders-introspection-secret-012345678";
const NATIVE_APP: &str = "app_native0123456789abcdef0123456789ab";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TYPE_AT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Four profiles: `web` (default, may exchange to `orders`), `orders` (Ave tokens may be exchanged for it; may
/// exchange to `billing` and `web`), `billing` (may exchange to `web`), and the service `reports-job`.
fn config(dir: &tempfile::TempDir, ave_client_ids: &[&str]) -> String {
    let file = dir.path().join("orders.secret");
    std::fs::write(&file, format!("{ORDERS_SECRET}\n")).expect("write secret");
    format!(
        r#"
[exchange]
ave_client_ids = {ids}

[[profiles]]
name = "web"
audience = "https://web.example"
default = true
[profiles.claims]
email = "{{id_token.email}}"
[profiles.exchange]
secret = "{WEB_SECRET}"
may_exchange_to = ["orders"]

[[profiles]]
name = "orders"
audience = "orders-api"
ttl = 600
exchange_from_ave = true
[profiles.claims]
handle = "{{user.handle}}"
scope = "{{id_token.scope}}"
tier = "gold"
[profiles.exchange]
secret_file = "{file}"
may_exchange_to = ["billing", "web"]
[profiles.introspection]
secret = "{INTROSPECT_SECRET}"

[[profiles]]
name = "billing"
audience = "billing-api"
[profiles.exchange]
secret = "{BILLING_SECRET}"
may_exchange_to = ["web"]
[profiles.introspection]
secret = "{INTROSPECT_SECRET}"

[[profiles]]
name = "reports-job"
audience = "reports-api"
ttl = 120
service = true
[profiles.claims]
role = "batch"
[profiles.client]
secret = "{JOB_SECRET}"
"#,
        ids = serde_json::to_string(ave_client_ids).expect("json"),
        file = file.display(),
    )
}

async fn spawn_with(db: Option<DatabaseUrl>, dir: &tempfile::TempDir, clock: Option<ManualClock>) -> TestApp {
    // The emulator's client (a random id) is allowed: the native sign-in below uses it.
    let emulator = ave_emulator::EmulatorConfig::default();
    TestApp::spawn_with(Options {
        token_toml: Some(config(dir, &[&emulator.client_id, NATIVE_APP])),
        emulator: Some(emulator),
        database_url: db,
        clock: clock.map(|c| c.clock()),
        ..Options::default()
    })
    .await
}

/// `Authorization: Basic` with the id and secret form-urlencoded (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
}

async fn post(app: &TestApp, auth: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.http.post(app.url("/oauth/token")).form(form);
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    let resp = req.send().await.expect("token request");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["pragma"], "no-cache");
    resp
}

/// Asserts a 200 and returns the body.
async fn issued(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    body
}

/// Asserts `status` with the OAuth error `code`.
async fn refused(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status(), status);
    assert_eq!(error_code(resp).await, code);
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

/// `token` with its payload replaced by `claims` (the signature no longer matches).
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

async fn browser_token(app: &TestApp, browser: &mut Browser, profile: &str) -> String {
    let resp = app.post_token_json(browser, &json!({"profile": profile})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

fn exchange_form<'a>(subject: &'a str, kind: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", kind),
        ("audience", audience),
    ]
}

/// A native app's sign-in at the emulator: the authorization-code flow with PKCE and no client secret (a public
/// client), as Ave allows it (`docs/ave-protocol.md` §2.1); returns Ave's token response.
async fn native_sign_in(app: &TestApp) -> Value {
    let e = &app.emulator;
    let verifier = "native-app-pkce-verifier-0123456789abcdefghijklmnop";
    let redirect = app.settings.public_url.redirect_uri();
    let mut authorize = url::Url::parse(&e.signin_url()).expect("signin url");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", e.client_id())
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid profile")
        .append_pair("state", "native-state")
        .append_pair("code_challenge", verifier)
        .append_pair("code_challenge_method", "plain");
    let callback = support::authorize_as(&app.http, e, authorize.as_str(), &e.users()[0].id).await;
    let code = url::Url::parse(&callback)
        .expect("callback")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let resp = app
        .http
        .post(e.token_url())
        .json(&json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": e.client_id(),
            "code_verifier": verifier,
        }))
        .send()
        .await
        .expect("Ave token request");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

async fn client_credentials_mint_service_tokens_only(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(db, &dir, None).await;
    let job = basic("reports-job", JOB_SECRET);
    let body = issued(post(&app, Some(&job), &[("grant_type", "client_credentials")]).await).await;
    assert!(body.get("issued_token_type").is_none(), "{body}");
    let token = body["access_token"].as_str().expect("token");
    let claims = app.verify_for(token, "reports-api").await.claims;
    assert_eq!(claims["sub"], "reports-job");
    assert_eq!(claims["client_id"], "reports-job");
    assert_eq!(claims["role"], "batch");
    assert!(claims.get("sid").is_none(), "a service token has no session: {claims}");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        120
    );
    assert_eq!(body["expires_in"], 120);
    // client_secret_post, and its own audience named, work too.
    let posted = [
        ("grant_type", "client_credentials"),
        ("client_id", "reports-job"),
        ("client_secret", JOB_SECRET),
        ("audience", "reports-api"),
    ];
    issued(post(&app, None, &posted).await).await;

    // Refusals.
    let cc = [("grant_type", "client_credentials")];
    refused(post(&app, None, &cc).await, 401, "invalid_client").await;
    let wrong = post(
        &app,
        Some(&basic("reports-job", "wrong-secret-0123456789abcdef0123")),
        &cc,
    )
    .await;
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .expect("header")
            .starts_with("Basic")
    );
    refused(wrong, 401, "invalid_client").await;
    // Another profile's secret replayed under the service's name.
    refused(
        post(&app, Some(&basic("reports-job", WEB_SECRET)), &cc).await,
        401,
        "invalid_client",
    )
    .await;
    // A user profile, with its own right secret, never gets a token by client credentials.
    refused(
        post(&app, Some(&basic("web", WEB_SECRET)), &cc).await,
        400,
        "unauthorized_client",
    )
    .await;
    // A service asks only for its own audience.
    let other = [("grant_type", "client_credentials"), ("audience", "orders-api")];
    refused(post(&app, Some(&job), &other).await, 400, "invalid_target").await;
    // Two authentication methods at once.
    let both = [
        ("grant_type", "client_credentials"),
        ("client_id", "reports-job"),
        ("client_secret", JOB_SECRET),
    ];
    refused(post(&app, Some(&job), &both).await, 400, "invalid_request").await;
    // A service profile is never minted for a browser.
    let mut browser = app.signed_in_browser().await;
    let resp = app
        .post_token_json(&mut browser, &json!({"profile": "reports-job"}))
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "invalid_target");
}

async fn ave_access_tokens_are_exchanged_for_app_jwts(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(db, &dir, None).await;
    let ave = native_sign_in(&app).await;
    let ave_jwt = ave["access_token_jwt"].as_str().expect("access_token_jwt");
    let ave_claims = claims_of(ave_jwt);
    let body = issued(post(&app, None, &exchange_form(ave_jwt, TYPE_JWT, "orders-api")).await).await;
    assert_eq!(body["issued_token_type"], TYPE_AT);
    let token = body["access_token"].as_str().expect("token");
    let claims = app.verify_for(token, "orders-api").await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id);
    assert_eq!(claims["client_id"], app.emulator.client_id());
    assert_eq!(
        claims["scope"], "openid profile",
        "{{id_token.scope}} reads the Ave token's claims"
    );
    assert_eq!(claims["tier"], "gold");
    assert!(
        claims.get("handle").is_none(),
        "no `user` object without a sign-in: {claims}"
    );
    assert!(claims.get("sid").is_none(), "no session: {claims}");
    assert!(claims["exp"].as_u64() <= ave_claims["exp"].as_u64());
    // `resource` instead of `audience`, and the access-token type URI, work too.
    let form = [
        ("grant_type", EXCHANGE),
        ("subject_token", ave_jwt),
        ("subject_token_type", TYPE_AT),
        ("resource", "orders-api"),
    ];
    issued(post(&app, None, &form).await).await;
    // Introspection: a token of no session is active until it expires.
    let resp = app
        .http
        .post(app.url("/oauth/introspect"))
        .header("Authorization", basic("orders", INTROSPECT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspect");
    let answer: Value = resp.json().await.expect("json");
    assert_eq!(answer["active"], true, "{answer}");

    // Another allowed client (a native app of its own) whose Ave token lives 60 s: the app JWT lives no longer.
    let user = app.emulator.users()[1].id.clone();
    let short = app.emulator.access_token_jwt_for(&user, NATIVE_APP, "openid", 60);
    let body = issued(post(&app, None, &exchange_form(&short, TYPE_JWT, "orders-api")).await).await;
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["client_id"], NATIVE_APP);
    assert_eq!(claims["sub"], user);
    assert!(claims["exp"].as_u64() <= claims_of(&short)["exp"].as_u64());
    assert!(body["expires_in"].as_u64().expect("expires_in") <= 60);

    // Refusals.
    let not_allowed = app
        .emulator
        .access_token_jwt_for(&user, "app_someone_else_0123456789abcdef", "openid", 600);
    refused(
        post(&app, None, &exchange_form(&not_allowed, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    let expired = app.emulator.access_token_jwt_for(&user, NATIVE_APP, "openid", -30);
    refused(
        post(&app, None, &exchange_form(&expired, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    let mut forged = claims_of(ave_jwt);
    forged["sub"] = json!("someone-else");
    let forged = tampered(ave_jwt, &forged);
    refused(
        post(&app, None, &exchange_form(&forged, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    // `alg: none` and HS256 keyed with Ave's public key (the classic confusion), both with Ave's `kid`.
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let kid = app.emulator.current_kid();
    let payload = enc(&claims_of(ave_jwt));
    let none = format!("{}.{payload}.", enc(&json!({"alg": "none", "typ": "JWT", "kid": kid})));
    refused(
        post(&app, None, &exchange_form(&none, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    let signing_input = format!("{}.{payload}", enc(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, app.emulator.public_key_pem().as_bytes());
    let mac = URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, signing_input.as_bytes()).as_ref());
    let hs256 = format!("{signing_input}.{mac}");
    refused(
        post(&app, None, &exchange_form(&hs256, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    // Ave's id_token is not its access token (its `aud` is the client id).
    let id_token = ave["id_token"].as_str().expect("id_token");
    refused(
        post(&app, None, &exchange_form(id_token, TYPE_JWT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    // An app JWT is not an Ave token.
    let mut browser = app.signed_in_browser().await;
    let app_jwt = browser_token(&app, &mut browser, "web").await;
    refused(
        post(&app, None, &exchange_form(&app_jwt, TYPE_AT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
    // A profile without `exchange_from_ave`, and an audience no profile has: the same answer.
    refused(
        post(&app, None, &exchange_form(ave_jwt, TYPE_JWT, "https://web.example")).await,
        400,
        "invalid_target",
    )
    .await;
    refused(
        post(&app, None, &exchange_form(ave_jwt, TYPE_JWT, "nobody-api")).await,
        400,
        "invalid_target",
    )
    .await;
    // No target, a wrong token type, no subject token.
    let no_target = [
        ("grant_type", EXCHANGE),
        ("subject_token", ave_jwt),
        ("subject_token_type", TYPE_JWT),
    ];
    refused(post(&app, None, &no_target).await, 400, "invalid_request").await;
    let wrong_type = exchange_form(ave_jwt, "urn:ietf:params:oauth:token-type:id_token", "orders-api");
    refused(post(&app, None, &wrong_type).await, 400, "invalid_request").await;
    refused(
        post(&app, None, &[("grant_type", EXCHANGE), ("audience", "orders-api")]).await,
        400,
        "invalid_request",
    )
    .await;
}

async fn exchanging_ave_tokens_is_off_without_client_ids(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn_with(Options {
        token_toml: Some(config(&dir, &[])),
        database_url: db,
        ..Options::default()
    })
    .await;
    let ave = native_sign_in(&app).await;
    let ave_jwt = ave["access_token_jwt"].as_str().expect("access_token_jwt");
    refused(
        post(&app, None, &exchange_form(ave_jwt, TYPE_JWT, "orders-api")).await,
        401,
        "invalid_client",
    )
    .await;
}

async fn delegation_carries_act_and_follows_the_session(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(UnixTime::from_unsigned(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    ));
    let app = spawn_with(db, &dir, Some(clock.clone())).await;
    let mut browser = app.signed_in_browser().await;
    let web = browser_token(&app, &mut browser, "web").await;
    let web_claims = claims_of(&web);
    let as_web = basic("web", WEB_SECRET);
    let body = issued(post(&app, Some(&as_web), &exchange_form(&web, TYPE_AT, "orders-api")).await).await;
    assert_eq!(body["issued_token_type"], TYPE_AT);
    let orders = body["access_token"].as_str().expect("token").to_owned();
    let claims = app.verify_for(&orders, "orders-api").await.claims;
    assert_eq!(claims["act"], json!({"sub": "https://web.example"}));
    assert_eq!(claims["sub"], web_claims["sub"]);
    assert_eq!(claims["sid"], web_claims["sid"]);
    assert_eq!(claims["client_id"], web_claims["client_id"]);
    assert_eq!(
        claims["handle"],
        app.emulator.users()[0].handle,
        "B's claims, from the session"
    );
    assert_eq!(claims["tier"], "gold");
    assert!(
        claims["exp"].as_u64() <= web_claims["exp"].as_u64(),
        "never outlives its subject"
    );
    // Chained: the orders API asks for a billing token; `act` nests.
    let as_orders = basic("orders", ORDERS_SECRET);
    let body = issued(post(&app, Some(&as_orders), &exchange_form(&orders, TYPE_AT, "billing-api")).await).await;
    let billing = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        claims_of(&billing)["act"],
        json!({"sub": "orders-api", "act": {"sub": "https://web.example"}})
    );

    // Refusals: a target the allow-list does not name; another profile's subject token; a tampered one.
    refused(
        post(&app, Some(&as_web), &exchange_form(&web, TYPE_AT, "billing-api")).await,
        400,
        "invalid_target",
    )
    .await;
    refused(
        post(&app, Some(&as_orders), &exchange_form(&web, TYPE_AT, "billing-api")).await,
        400,
        "invalid_request",
    )
    .await;
    let mut forged = web_claims.clone();
    forged["sub"] = json!("admin");
    refused(
        post(
            &app,
            Some(&as_web),
            &exchange_form(&tampered(&web, &forged), TYPE_AT, "orders-api"),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    // Another profile's secret replayed under `web`'s name.
    refused(
        post(
            &app,
            Some(&basic("web", ORDERS_SECRET)),
            &exchange_form(&web, TYPE_AT, "orders-api"),
        )
        .await,
        401,
        "invalid_client",
    )
    .await;
    // A service profile's credentials do not delegate.
    refused(
        post(
            &app,
            Some(&basic("reports-job", JOB_SECRET)),
            &exchange_form(&web, TYPE_AT, "orders-api"),
        )
        .await,
        400,
        "unauthorized_client",
    )
    .await;
    // A loop beyond the depth: billing → web → orders → billing names five actors.
    let as_billing = basic("billing", BILLING_SECRET);
    let body = issued(
        post(
            &app,
            Some(&as_billing),
            &exchange_form(&billing, TYPE_AT, "https://web.example"),
        )
        .await,
    )
    .await;
    let web3 = body["access_token"].as_str().expect("token").to_owned();
    let body = issued(post(&app, Some(&as_web), &exchange_form(&web3, TYPE_AT, "orders-api")).await).await;
    let orders4 = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        claims_of(&orders4)["act"]["act"]["act"]["act"]["sub"],
        "https://web.example"
    );
    refused(
        post(&app, Some(&as_orders), &exchange_form(&orders4, TYPE_AT, "billing-api")).await,
        400,
        "invalid_request",
    )
    .await;

    // Introspection of the delegated tokens follows the session: active now, inactive after the logout.
    let introspect = |token: String| {
        let app = &app;
        async move {
            let resp = app
                .http
                .post(app.url("/oauth/introspect"))
                .header("Authorization", basic("billing", INTROSPECT_SECRET))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .expect("introspect");
            resp.json::<Value>().await.expect("json")
        }
    };
    assert_eq!(introspect(billing.clone()).await["active"], true);
    let resp = browser
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert!(resp.status().is_success());
    assert_eq!(introspect(billing.clone()).await, json!({"active": false}));
    // The ended session's tokens are exchanged no more.
    refused(
        post(&app, Some(&as_web), &exchange_form(&web, TYPE_AT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;

    // An expired subject token (a new session; the clock moves past the web token's `exp`).
    let mut browser = app.signed_in_browser().await;
    let web = browser_token(&app, &mut browser, "web").await;
    clock.advance(std::time::Duration::from_secs(301));
    refused(
        post(&app, Some(&as_web), &exchange_form(&web, TYPE_AT, "orders-api")).await,
        400,
        "invalid_request",
    )
    .await;
}

async fn refusals_are_limited_per_network(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(db, &dir, None).await;
    let cc = [("grant_type", "client_credentials")];
    let wrong = basic("reports-job", "not-the-secret-0123456789abcdef012345");
    for i in 0..20 {
        let resp = post(&app, Some(&wrong), &cc).await;
        assert_eq!(resp.status(), 401, "refusal #{i}");
    }
    let limited = post(&app, Some(&wrong), &cc).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_code(limited).await, "rate_limited");
    // Refused subject tokens count the same; good credentials are never limited.
    let garbage = exchange_form("a.b.c", TYPE_JWT, "orders-api");
    refused(post(&app, None, &garbage).await, 429, "rate_limited").await;
    issued(post(&app, Some(&basic("reports-job", JOB_SECRET)), &cc).await).await;
    // The counters are the process's (tests run side by side): at least this test's own.
    let at_least = |series: &'static str, n: f64| {
        let base = app.address.clone();
        async move {
            let value = support::metric_at(&base, series).await.unwrap_or(0.0);
            assert!(value >= n, "{series} = {value}");
        }
    };
    at_least(
        r#"avemint_token_service_requests_total{grant="client_credentials",outcome="rate_limited"}"#,
        1.0,
    )
    .await;
    at_least(
        r#"avemint_token_service_requests_total{grant="client_credentials",outcome="invalid_client"}"#,
        20.0,
    )
    .await;
    at_least(
        r#"avemint_token_service_requests_total{grant="client_credentials",outcome="issued"}"#,
        1.0,
    )
    .await;
    at_least(
        r#"avemint_credential_failures_total{answer="rate_limited",endpoint="token"}"#,
        2.0,
    )
    .await;
}

on_both_stores!(
    client_credentials_mint_service_tokens_only,
    ave_access_tokens_are_exchanged_for_app_jwts,
    exchanging_ave_tokens_is_off_without_client_ids,
    delegation_carries_act_and_follows_the_session,
    refusals_are_limited_per_network,
);

/// Runs `node token-service.mjs ARGS` (docs/token-service.md's oauth4webapi example) with `input` on stdin; returns the
/// printed token response.
async fn node_token_service(app: &TestApp, dir: &std::path::Path, args: &[&str], secret: &str, input: &str) -> Value {
    use std::io::Write;
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(dir)
        .arg("token-service.mjs")
        .args(args)
        .env("AVEMINT_URL", &app.address)
        .env("TOKEN_SERVICE_SECRET", secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let input = input.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("node starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        child.wait_with_output().expect("node ends")
    })
    .await
    .expect("node thread");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("token response JSON")
}

/// docs/token-service.md's Node example (`oauth4webapi`, a maintained OAuth client library) gets each kind of token: it
/// exchanges a native app's Ave access token, delegates an app JWT and asks for a service token.
#[tokio::test]
async fn the_node_oauth4webapi_example_uses_every_grant() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/token-service.md"))
        .expect("docs/token-service.md");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node/token-service.mjs"))
        .expect("example");
    assert!(
        doc.contains(&example),
        "docs/token-service.md must contain examples/node/token-service.mjs verbatim"
    );
    if !support::tool_available("node", "--version") || !support::tool_available("npm", "--version") {
        return;
    }
    let node_dir = tempfile::tempdir().expect("tempdir");
    let npm = std::process::Command::new("npm")
        .current_dir(node_dir.path())
        .args(["install", "--no-audit", "--no-fund", "--silent", "oauth4webapi@3"])
        .output()
        .expect("npm runs");
    assert!(
        npm.status.success(),
        "npm install oauth4webapi: {}",
        String::from_utf8_lossy(&npm.stderr)
    );
    std::fs::write(node_dir.path().join("token-service.mjs"), &example).expect("copy");
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(None, &dir, None).await;

    let ave = native_sign_in(&app).await;
    let ave_jwt = ave["access_token_jwt"].as_str().expect("access_token_jwt");
    let client_id = app.emulator.client_id().to_owned();
    let answer = node_token_service(&app, node_dir.path(), &["ave", &client_id, "orders-api"], "", ave_jwt).await;
    assert_eq!(answer["issued_token_type"], TYPE_AT);
    let token = answer["access_token"].as_str().expect("token");
    let claims = app.verify_for(token, "orders-api").await.claims;
    assert_eq!(claims["sub"], app.emulator.users()[0].id);

    let mut browser = app.signed_in_browser().await;
    let web = browser_token(&app, &mut browser, "web").await;
    let answer = node_token_service(
        &app,
        node_dir.path(),
        &["delegate", "web", "orders-api"],
        WEB_SECRET,
        &web,
    )
    .await;
    let claims = app
        .verify_for(answer["access_token"].as_str().expect("token"), "orders-api")
        .await
        .claims;
    assert_eq!(claims["act"], json!({"sub": "https://web.example"}));

    let answer = node_token_service(&app, node_dir.path(), &["service", "reports-job"], JOB_SECRET, "").await;
    let claims = app
        .verify_for(answer["access_token"].as_str().expect("token"), "reports-api")
        .await
        .claims;
    assert_eq!(claims["sub"], "reports-job");
}

/// Malformed requests get RFC 6749 §5.2 answers; discovery names the endpoint.
#[tokio::test]
async fn malformed_requests_and_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with(None, &dir, None).await;
    let raw = |body: &'static str| {
        app.http
            .post(app.url("/oauth/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let repeated = raw("grant_type=client_credentials&grant_type=client_credentials")
        .await
        .expect("send");
    refused(repeated, 400, "invalid_request").await;
    refused(raw("grant_type=%zz").await.expect("send"), 400, "invalid_request").await;
    refused(raw("scope=x").await.expect("send"), 400, "invalid_request").await;
    refused(
        raw("grant_type=password").await.expect("send"),
        400,
        "unsupported_grant_type",
    )
    .await;
    let json = app
        .http
        .post(app.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("send");
    assert_eq!(json.status(), 415);
    let discovery = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["token_endpoint"], app.url("/oauth/token"));
    assert_eq!(
        discovery["grant_types_supported"],
        json!(["client_credentials", EXCHANGE])
    );
    assert_eq!(
        discovery["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
}
