//! `POST /auth/token`, `/auth/session` and `/auth/logout`: CSRF, sessions, claims.

mod support;

use support::{Browser, Options, SESSION_COOKIE, TestApp, error_code};

#[tokio::test]
async fn token_requires_the_csrf_header() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    let resp = app.post_token(&mut b, false).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "invalid_request");
    let resp = b
        .send(app.http.post(app.url("/auth/token")).header("X-CSRF", "0"))
        .await;
    assert_eq!(resp.status(), 403);
    for path in ["/auth/session"] {
        let resp = b.send(app.http.get(app.url(path))).await;
        assert_eq!(resp.status(), 403, "{path}");
    }
    let resp = b.send(app.http.post(app.url("/auth/logout"))).await;
    assert_eq!(resp.status(), 403);
    // The session survived all of that.
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn no_or_unknown_or_malformed_session_is_401_login_required_json() {
    let app = TestApp::spawn().await;
    let mut none = Browser::default();
    let resp = app.post_token(&mut none, true).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("location").is_none());
    assert_eq!(error_code(resp).await, "login_required");

    for value in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "short", "%%%"] {
        let mut b = Browser::default();
        b.cookies.insert(SESSION_COOKIE.into(), value.to_owned());
        let resp = app.post_token(&mut b, true).await;
        assert_eq!(resp.status(), 401, "{}", &value[..value.len().min(20)]);
        assert_eq!(error_code(resp).await, "login_required");
    }
    // A cookie header over 4 KiB is refused before anything reads it (tests/hardening.rs has the details).
    let mut b = Browser::default();
    b.cookies.insert(SESSION_COOKIE.into(), "x".repeat(5000));
    let resp = app.post_token(&mut b, true).await;
    assert_eq!(resp.status(), 431);
    assert_eq!(error_code(resp).await, "invalid_request");
    let resp = none
        .send(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn logout_deletes_the_session_and_expires_the_cookie() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    let stolen = b.clone();
    let resp = b
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 204);
    let expired = b.set_cookies.last().expect("set-cookie").to_ascii_lowercase();
    assert!(
        expired.starts_with(&SESSION_COOKIE.to_ascii_lowercase()) && expired.contains("max-age=0"),
        "{expired}"
    );
    assert!(expired.contains("secure") && expired.contains("path=/"));
    assert!(b.get(SESSION_COOKIE).is_none());
    assert_eq!(app.post_token(&mut b, true).await.status(), 401);
    // The old cookie value no longer works either: the row is gone.
    let mut stolen = stolen;
    let resp = app.post_token(&mut stolen, true).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "login_required");
    // Logging out twice is harmless.
    let resp = stolen
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn configured_claims_are_rendered_from_the_id_token() {
    let app = TestApp::spawn_with(Options {
        claims: Some(r#"{"tier":"gold","roles":["reader"],"email":"{id_token.email}","avatar":"{id_token.picture}","nope":"{id_token.missing}","handle":"{user.handle}"}"#),
        token_ttl: Some(120),
        ..Options::default()
    })
    .await;
    let mut b = app.signed_in_browser().await;
    let body: serde_json::Value = app.post_token(&mut b, true).await.json().await.expect("json");
    assert_eq!(body["expires_in"], 120);
    let data = app.verify(body["access_token"].as_str().expect("token")).await;
    let user = &app.emulator.users()[0];
    assert_eq!(data.claims["tier"], "gold");
    assert_eq!(data.claims["roles"], serde_json::json!(["reader"]));
    assert_eq!(data.claims["email"].as_str(), user.email.as_deref());
    assert_eq!(data.claims["handle"], user.handle);
    // The first emulated user has no avatar: Ave sends `picture: null`, so the claim is omitted.
    assert!(user.avatar_url.is_none());
    assert!(data.claims.get("avatar").is_none(), "null source omitted, not \"null\"");
    assert!(data.claims.get("nope").is_none());
    app.stop().await;
}

#[tokio::test]
async fn errors_are_json_everywhere() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/no/such/path")).send().await.expect("req");
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "not_found");
    let resp = app.http.get(app.url("/auth/token")).send().await.expect("req");
    assert_eq!(resp.status(), 405);
    assert_eq!(error_code(resp).await, "invalid_request");
    let resp = app.http.get(app.url("/auth/callback")).send().await.expect("req");
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn readiness_reports_the_checks_and_the_token_budget() {
    let app = TestApp::spawn().await;
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["ave_discovery"], true);
    assert_eq!(ready["ave_jwks"], true);
    assert_eq!(ready["store"], true);
    assert_eq!(ready["ave_token_budget_per_minute"], 180);
    let spec: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert!(spec["paths"]["/auth/token"].is_object());
    let docs = app.http.get(app.url("/docs")).send().await.expect("req");
    assert_eq!(docs.status(), 200);
    app.stop().await;
}

/// The token request body is what the OpenAPI document says: left out, empty or `{}` for the
/// default profile; `null` properties count as left out (`nullable`); anything else, including
/// `null` as the whole body or an unknown property (a typo must not fall back to the default
/// profile), is 400 `invalid_request`.
#[tokio::test]
async fn the_token_request_body_is_as_documented() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    let post = |body: &'static str| {
        app.http
            .post(app.url("/auth/token"))
            .header("X-CSRF", "1")
            .header("Content-Type", "application/json")
            .body(body)
    };
    for ok in [
        "",
        "{}",
        r#"{"profile": null}"#,
        r#"{"audience": null, "profile": null}"#,
    ] {
        let resp = b.send(post(ok)).await;
        assert_eq!(resp.status(), 200, "{ok:?}");
    }
    for bad in ["null", "[]", "1", r#"{"audiance": "https://api.example.com"}"#, "{"] {
        let resp = b.send(post(bad)).await;
        assert_eq!(resp.status(), 400, "{bad:?}");
        assert_eq!(error_code(resp).await, "invalid_request", "{bad:?}");
    }
    let spec = app.get_json("/openapi.json").await;
    let schema = &spec["components"]["schemas"]["TokenRequest"];
    let extra = &schema["additionalProperties"];
    assert!(
        extra["minLength"].as_u64() > extra["maxLength"].as_u64(),
        "no additional property is valid: {schema}"
    );
    assert_eq!(schema["properties"]["profile"]["nullable"], true, "{schema}");
    app.stop().await;
}
