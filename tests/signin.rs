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
