//! The sign-in flow end to end: login → Ave (emulator) → callback → session → app JWT.

mod support;

use support::{Browser, LOGIN_COOKIE, SESSION_COOKIE, TestApp, error_code, location};

#[tokio::test]
async fn happy_path_ends_in_an_app_jwt_that_verifies_against_the_served_jwks() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::default();

    let resp = app.login_start(&mut browser, Some("/dashboard?tab=1")).await;
    let authorize = url::Url::parse(&location(&resp)).expect("absolute URL");
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}/signin?", app.emulator.issuer()))
    );
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], app.emulator.client_id());
    assert_eq!(q["redirect_uri"], format!("{}/auth/callback", app.address));
    assert_eq!(q["scope"], "openid profile email offline_access");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert!(browser.get(LOGIN_COOKIE).is_some());

    let callback = app.authorize(authorize.as_str()).await;
    let resp = browser.send(app.http.get(callback)).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), "/dashboard?tab=1");
    assert!(browser.get(LOGIN_COOKIE).is_none(), "login cookie is single use");
    let session_cookie = browser.get(SESSION_COOKIE).expect("session cookie").to_owned();
    assert_eq!(session_cookie.len(), 43);

    // The code exchange was JSON with the client secret and the PKCE verifier.
    let exchange = app
        .emulator
        .token_requests()
        .into_iter()
        .find(|r| r.grant_type.as_deref() == Some("authorization_code"))
        .expect("a code exchange");
    assert!(
        exchange
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))
    );
    for key in ["clientSecret", "codeVerifier", "clientId", "redirectUri", "code"] {
        assert!(
            exchange.keys.iter().any(|k| k == key),
            "{key} sent: {:?}",
            exchange.keys
        );
    }
    assert_eq!(exchange.status, 200);

    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    let token = body["access_token"].as_str().expect("token");
    let data = app.verify(token).await;
    assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(data.header.alg, jsonwebtoken::Algorithm::ES256);
    let c = &data.claims;
    assert_eq!(c["iss"], app.address);
    assert_eq!(c["aud"], "https://api.example.com");
    assert_eq!(c["sub"], app.emulator.users()[0].id);
    assert_eq!(c["client_id"], app.emulator.client_id());
    assert_eq!(c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"), 300);
    let sid = c["sid"].as_str().expect("sid");
    assert!(!sid.is_empty() && sid != session_cookie);
    assert!(!token.contains(&session_cookie));

    // jti is unique per token.
    let second: serde_json::Value = app.post_token(&mut browser, true).await.json().await.expect("json");
    let second = app.verify(second["access_token"].as_str().expect("token")).await;
    assert_ne!(second.claims["jti"], c["jti"]);
    assert_eq!(second.claims["sid"], c["sid"]);

    // No Ave token ever reaches the browser.
    let session: serde_json::Value = browser
        .send(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(session["sub"], app.emulator.users()[0].id);
    assert_eq!(session["name"], app.emulator.users()[0].display_name);
    assert!(session["expires_at"].as_i64().is_some());
    for tokenish in ["access_token", "id_token", "refresh_token", "access_token_jwt"] {
        assert!(session.get(tokenish).is_none());
    }
    app.stop().await;
}

#[tokio::test]
async fn cookies_have_the_required_attributes() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::default();
    let resp = app.sign_in(&mut browser, None).await;
    assert_eq!(resp.status(), 302);
    let session_sets: Vec<_> = browser
        .set_cookies
        .iter()
        .filter(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .collect();
    let login_sets: Vec<_> = browser
        .set_cookies
        .iter()
        .filter(|c| c.starts_with(&format!("{LOGIN_COOKIE}=")))
        .collect();
    assert_eq!(session_sets.len(), 1);
    assert_eq!(login_sets.len(), 2, "set at login, expired at callback");
    for raw in session_sets.iter().chain(login_sets.iter()) {
        let lower = raw.to_ascii_lowercase();
        for attr in ["httponly", "secure", "samesite=lax", "path=/"] {
            assert!(lower.split(';').any(|a| a.trim() == attr), "{attr} missing in {raw}");
        }
        assert!(!lower.contains("domain="), "__Host- cookies carry no Domain: {raw}");
    }
    app.stop().await;
}

#[tokio::test]
async fn open_redirect_payloads_fall_back_to_root() {
    let app = TestApp::spawn().await;
    for payload in [
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "/\t/evil.example",
        "https:evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "//user@evil.example",
        "/%2F%2Fevil.example",
        "/x\r\nSet-Cookie: a=b",
        "evil.example",
    ] {
        let mut browser = Browser::default();
        let resp = app.sign_in(&mut browser, Some(payload)).await;
        assert_eq!(resp.status(), 302, "{payload:?}");
        assert_eq!(location(&resp), "/", "{payload:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn state_missing_mismatched_or_replayed_is_refused_without_a_session() {
    let app = TestApp::spawn().await;

    // Missing state.
    let mut b = Browser::default();
    let resp = app.login_start(&mut b, None).await;
    let callback = url::Url::parse(&app.authorize(&location(&resp)).await).expect("url");
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("code")
        .1
        .into_owned();
    let resp = b
        .send(
            app.http
                .get(app.url("/auth/callback"))
                .query(&[("code", code.as_str())]),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    assert!(b.get(SESSION_COOKIE).is_none());

    // Mismatched state.
    let mut b = Browser::default();
    let resp = app.login_start(&mut b, None).await;
    let callback = url::Url::parse(&app.authorize(&location(&resp)).await).expect("url");
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("code")
        .1
        .into_owned();
    let resp = b
        .send(
            app.http
                .get(app.url("/auth/callback"))
                .query(&[("code", code.as_str()), ("state", "forged")]),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    assert!(b.get(SESSION_COOKIE).is_none());

    // No login cookie at all (another browser).
    let mut b = Browser::default();
    let mut other = Browser::default();
    let resp = app.login_start(&mut b, None).await;
    let callback = app.authorize(&location(&resp)).await;
    let resp = other.send(app.http.get(&callback)).await;
    assert_eq!(resp.status(), 400);
    assert!(other.get(SESSION_COOKIE).is_none());

    // Replay: the same callback with the same (captured) login cookie after it succeeded once.
    let mut b = Browser::default();
    let resp = app.login_start(&mut b, None).await;
    let captured = b.clone();
    let callback = app.authorize(&location(&resp)).await;
    assert_eq!(b.send(app.http.get(&callback)).await.status(), 302);
    let mut replayer = captured;
    let resp = replayer.send(app.http.get(&callback)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    assert!(replayer.get(SESSION_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_code_is_rejected_by_ave_and_creates_no_session() {
    let app = TestApp::spawn().await;
    let mut first = Browser::default();
    let resp = app.login_start(&mut first, None).await;
    let callback = url::Url::parse(&app.authorize(&location(&resp)).await).expect("url");
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("code")
        .1
        .into_owned();
    assert_eq!(first.send(app.http.get(callback.as_str())).await.status(), 302);

    // A fresh sign-in in another browser, answered with the already used code.
    let mut second = Browser::default();
    let resp = app.login_start(&mut second, None).await;
    let authorize = url::Url::parse(&location(&resp)).expect("url");
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    let resp = second
        .send(
            app.http
                .get(app.url("/auth/callback"))
                .query(&[("code", code.as_str()), ("state", state.as_str())]),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_grant");
    assert!(second.get(SESSION_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn access_denied_at_ave_is_a_clear_403() {
    let app = TestApp::spawn().await;
    let mut b = Browser::default();
    let resp = app.login_start(&mut b, None).await;
    let authorize = url::Url::parse(&location(&resp)).expect("url");
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    let resp = b
        .send(
            app.http
                .get(app.url("/auth/callback"))
                .query(&[("error", "access_denied"), ("state", state.as_str())]),
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "access_denied");
    assert!(b.get(SESSION_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_planted_session_cookie_is_never_promoted() {
    let app = TestApp::spawn().await;
    // The attacker's own valid session, planted in the victim's browser.
    let attacker = app.signed_in_browser().await;
    let planted = attacker.get(SESSION_COOKIE).expect("cookie").to_owned();
    let mut victim = Browser::default();
    victim.cookies.insert(SESSION_COOKIE.into(), planted.clone());
    let resp = app.sign_in(&mut victim, None).await;
    assert_eq!(resp.status(), 302);
    let fresh = victim.get(SESSION_COOKIE).expect("cookie").to_owned();
    assert_ne!(fresh, planted, "sign-in issues a fresh session id");
    let mut attacker = attacker;
    assert_eq!(
        app.post_token(&mut attacker, true).await.status(),
        401,
        "the replaced session is gone"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Sign-in failures a person can read (issue 26 §4)

/// A browser's top-level navigation.
const NAVIGATE: [(&str, &str); 2] = [
    ("Sec-Fetch-Mode", "navigate"),
    ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
];
/// A script's `fetch`.
const FETCH: [(&str, &str); 2] = [("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")];

/// Starts a sign-in in `browser` (returning to `return_to`) and comes back as Ave does when the user presses Deny.
async fn denied(app: &TestApp, browser: &mut Browser, return_to: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let resp = app.login_start(browser, Some(return_to)).await;
    let authorize = url::Url::parse(&location(&resp)).expect("url");
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    let mut req = app
        .http
        .get(app.url("/auth/callback"))
        .query(&[("error", "access_denied"), ("state", state.as_str())]);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    browser.send(req).await
}

fn header<'r>(resp: &'r reqwest::Response, name: &str) -> &'r str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_denied_consent_is_a_page_with_a_retry_link_for_a_person_and_json_for_script() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::default();
    let resp = denied(&app, &mut browser, "/orders/7", &NAVIGATE).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    assert!(header(&resp, "content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert!(
        resp.headers().get_all("set-cookie").iter().any(|c| c
            .to_str()
            .is_ok_and(|c| c.starts_with(LOGIN_COOKIE) && c.contains("Max-Age=0"))),
        "the login cookie is expired as on any callback"
    );
    let page = resp.text().await.expect("page");
    assert!(page.contains("You chose not to sign in at Ave."), "{page}");
    assert!(page.contains("href=\"/auth/login?return_to=%2Forders%2F7\""), "{page}");
    assert!(page.contains("<code id=\"code\">access_denied</code>"), "{page}");
    assert!(browser.get(SESSION_COOKIE).is_none());
    // Script keeps the JSON (and so does a client that says nothing about what it accepts).
    for headers in [&FETCH[..], &[]] {
        let resp = denied(&app, &mut Browser::default(), "/orders/7", headers).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(error_code(resp).await, "access_denied");
    }
    // Any other failure of the two navigations: a callback without its login cookie, a login while Ave is down.
    let resp = Browser::default()
        .send(
            app.http
                .get(app.url("/auth/callback?code=x&state=y"))
                .header(NAVIGATE[0].0, NAVIGATE[0].1),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let page = resp.text().await.expect("page");
    assert!(
        page.contains("could not be completed") && page.contains("return_to=%2F\""),
        "{page}"
    );
    app.stop().await;
    // The guard's refusals too: a login over `AVEMINT_LOGIN_RATE_LIMIT`.
    let app = TestApp::spawn_with(support::Options {
        env: vec![("AVEMINT_LOGIN_RATE_LIMIT", "1".to_owned())],
        ..Default::default()
    })
    .await;
    let login = || {
        app.http
            .get(app.url("/auth/login?return_to=/reports"))
            .header(NAVIGATE[0].0, NAVIGATE[0].1)
    };
    let mut b = Browser::default();
    assert_eq!(b.send(login()).await.status(), 302);
    let resp = b.send(login()).await;
    assert_eq!(resp.status(), 429);
    assert!(!header(&resp, "retry-after").is_empty());
    let page = resp.text().await.expect("page");
    assert!(page.contains("too many sign-in attempts"), "{page}");
    assert!(page.contains("href=\"/auth/login?return_to=%2Freports\""), "{page}");
    app.stop().await;
}

#[tokio::test]
async fn with_error_path_a_failed_sign_in_lands_on_the_spas_own_page() {
    let app = TestApp::spawn_with(support::Options {
        env: vec![("AVEMINT_ERROR_PATH", "/signin-error".to_owned())],
        ..Default::default()
    })
    .await;
    let resp = denied(&app, &mut Browser::default(), "/orders", &NAVIGATE).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), "/signin-error?error=access_denied");
    let resp = Browser::default()
        .send(
            app.http
                .get(app.url("/auth/callback?code=x&state=y"))
                .header(NAVIGATE[0].0, NAVIGATE[0].1),
        )
        .await;
    assert_eq!(location(&resp), "/signin-error?error=invalid_request");
    let resp = denied(&app, &mut Browser::default(), "/orders", &FETCH).await;
    assert_eq!(resp.status(), 403, "script still gets the JSON");
    app.stop().await;
}

/// A wrong client secret is a misconfiguration, named as one to the person (500, "Ave rejected avemint's client
/// credentials") and in the server's log with its cause, which never holds the secret or the code.
#[tokio::test]
async fn a_wrong_client_secret_is_named_as_a_misconfiguration_in_the_page_and_the_log() {
    use std::io::Read as _;
    let emulator = ave_emulator::Emulator::start(Default::default())
        .await
        .expect("emulator");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    emulator.set_redirect_uris(vec![format!("{base}/auth/callback")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ave = support::AveClientEnv::of(&emulator);
    let wrong = "wrong-secret-0123456789abcdef";
    ave.client_secret = wrong.to_owned();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let mut cmd = support::serve_command(&ave, port, &db, &dir.path().join("keys"));
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("serve starts");
    let mut process = support::KillOnDrop(child);
    support::wait_ready(&base).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut codes = Vec::new();
    for headers in [&NAVIGATE[..], &FETCH[..]] {
        let mut browser = Browser::default();
        let resp = support::login_start_at(&http, &base, &mut browser, Some("/app")).await;
        let callback = support::authorize_as(&http, &emulator, &location(&resp), &emulator.users()[0].id).await;
        codes.push(
            url::Url::parse(&callback)
                .expect("url")
                .query_pairs()
                .find(|(k, _)| k == "code")
                .expect("code")
                .1
                .into_owned(),
        );
        let mut req = http.get(&callback);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = browser.send(req).await;
        assert_eq!(resp.status(), 500);
        let text = resp.text().await.expect("body");
        assert!(
            text.contains("Ave rejected avemint&#39;s client credentials")
                || text.contains("Ave rejected avemint's client credentials"),
            "{text}"
        );
        assert!(text.contains("AVE_CLIENT_SECRET"), "{text}");
    }
    // A callback whose state does not match: the user's failure, logged as such.
    let resp = http
        .get(format!("{base}/auth/callback?code=x&state=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(resp.status(), 400);
    process.0.kill().expect("kill");
    let mut log = String::new();
    process
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    let misconfigured: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sign-in failed: avemint is misconfigured"))
        .collect();
    assert_eq!(misconfigured.len(), 1, "one line per cause per 10 s: {log}");
    assert!(
        misconfigured[0].contains("ERROR") && misconfigured[0].contains("invalid_client"),
        "{log}"
    );
    assert!(
        misconfigured[0].contains("Ave rejected avemint's client credentials"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("sign-in failed") && l.contains("login_cookie")),
        "{log}"
    );
    let real = emulator.client_secret().to_owned();
    for secret in codes.iter().map(String::as_str).chain([wrong, real.as_str()]) {
        assert!(!log.contains(secret), "the log holds a secret or a code: {log}");
    }
}
