//! `GET /metrics`: Prometheus text after real traffic, labelled by route template.

mod support;

use support::TestApp;

/// The value of the sample line that starts with `series ` (0 if absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_sign_in_and_token_requests_by_route() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    assert_eq!(app.post_token(&mut b, false).await.status(), 403);
    let resp = app.http.get(app.url("/no/such/secret-path")).send().await.expect("req");
    assert_eq!(resp.status(), 404);

    let resp = app.http.get(app.url("/metrics")).send().await.expect("metrics");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.expect("body");

    // Other tests in this binary may share the process-wide registry: only lower bounds hold.
    for (series, at_least) in [
        (r#"avemint_http_requests_total{route="/auth/token",status="2xx"}"#, 1.0),
        (r#"avemint_http_requests_total{route="/auth/token",status="4xx"}"#, 1.0),
        (r#"avemint_http_requests_total{route="/auth/login",status="3xx"}"#, 1.0),
        (
            r#"avemint_http_requests_total{route="/auth/callback",status="3xx"}"#,
            1.0,
        ),
        (r#"avemint_http_requests_total{route="unmatched",status="4xx"}"#, 1.0),
        (
            r#"avemint_http_request_duration_seconds_count{route="/auth/token"}"#,
            2.0,
        ),
        (
            r#"avemint_ave_request_duration_seconds_count{call="authorization_code"}"#,
            1.0,
        ),
        (r#"avemint_ave_request_duration_seconds_count{call="discovery"}"#, 1.0),
        (r#"avemint_ave_request_duration_seconds_count{call="jwks"}"#, 1.0),
    ] {
        let v = sample(&text, series);
        assert!(v >= at_least, "{series} = {v}, expected ≥ {at_least}\n{text}");
    }
    // The token request looked its session up: through the cache or past it.
    let lookups =
        sample(&text, "avemint_session_cache_hits_total") + sample(&text, "avemint_session_cache_misses_total");
    assert!(lookups >= 1.0, "session lookups counted: {lookups}\n{text}");
    // Raw paths never become labels, and nothing secret is exported.
    assert!(!text.contains("secret-path"));
    let cookie = b.get(support::SESSION_COOKIE).expect("session cookie");
    assert!(!text.contains(cookie));
    for family in [
        "avemint_session_cache_hits_total",
        "avemint_session_cache_misses_total",
        "avemint_session_cache_hit_ratio",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing");
    }
    app.stop().await;
}
