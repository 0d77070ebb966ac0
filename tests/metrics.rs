//! `GET /metrics`: Prometheus text after real traffic, labelled by route template.

mod support;

use support::{Options, TestApp};

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

/// The metrics of issue 17: store pool, Ave budget, readiness per dependency, key reloads, process,
/// build info, each with a sane value after real traffic.
#[tokio::test]
async fn pool_budget_dependency_process_and_build_metrics_have_sane_values() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    let text = app.metrics().await;
    let v = |series: &str| sample(&text, series);
    let max = v("avemint_store_pool_max_connections");
    assert!(max >= 1.0, "pool max {max}\n{text}");
    let (in_use, idle) = (
        v(r#"avemint_store_pool_connections{state="in_use"}"#),
        v(r#"avemint_store_pool_connections{state="idle"}"#),
    );
    assert!(
        in_use >= 0.0 && idle >= 0.0 && in_use + idle >= 1.0 && in_use + idle <= max,
        "{in_use} + {idle} of {max}"
    );
    // The sign-in's code exchange is in the last minute's budget use; nothing waits now.
    assert!(v(r#"avemint_ave_budget_used{class="sign_in"}"#) >= 1.0, "{text}");
    assert_eq!(v(r#"avemint_ave_budget_limit{class="renewal"}"#), 180.0);
    assert_eq!(v(r#"avemint_ave_budget_limit{class="sign_in"}"#), 120.0);
    assert_eq!(v(r#"avemint_ave_budget_waiting{class="renewal"}"#), 0.0);
    for dependency in ["ave_discovery", "ave_jwks", "store"] {
        let up = v(&format!(r#"avemint_dependency_up{{dependency="{dependency}"}}"#));
        assert_eq!(up, 1.0, "{dependency}\n{text}");
    }
    let jwks_age = v(r#"avemint_ave_metadata_age_seconds{document="jwks"}"#);
    assert!((0.0..60.0).contains(&jwks_age), "age of Ave's keys {jwks_age}");
    assert!(text.contains(r#"avemint_secret_reloads_total{kind="signing_keys",outcome="failed"}"#));
    // A key added to the directory is picked up by the watcher (polls every second): one reload more.
    let reloads = |text: &str| {
        sample(
            text,
            r#"avemint_secret_reloads_total{kind="signing_keys",outcome="ok"}"#,
        )
    };
    let before = reloads(&text);
    let dir = avemint::keys::KeyDir::new(app.keys_dir.clone());
    avemint::keys::commands::generate(&dir, avemint::keys::Algorithm::Es256, avemint::Clock::System.now())
        .expect("next key added");
    let mut after = before;
    for _ in 0..50 {
        let text = app.metrics().await;
        after = reloads(&text);
        if after > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(after > before, "key reloads ok: {before} -> {after}");
    let rss = v("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 4e9, "RSS {rss}");
    assert!(v("process_open_fds") >= 3.0);
    assert!(v("process_cpu_seconds_total") >= 0.0 && text.contains("process_cpu_seconds_total "));
    let build = format!(r#"avemint_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(v(&build), 1.0, "{text}");
    app.stop().await;
}

/// `AVEMINT_OPS_LISTEN`: `/metrics`, `/healthz` and `/readyz` on the ops port; `/metrics` leaves the public
/// port, the probes stay on both; the same shutdown stops both listeners.
#[tokio::test]
async fn the_ops_listener_takes_metrics_off_the_public_port() {
    let app = TestApp::spawn_with(Options {
        ops_listener: true,
        ..Options::default()
    })
    .await;
    let ops = app.ops_address.clone().expect("ops listener bound");
    let get = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.expect("request") }
    };
    let resp = get(format!("{ops}/metrics")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.expect("body").contains("avemint_http_requests_total"));
    let public = get(app.url("/metrics")).await;
    assert_eq!(public.status(), 404, "no /metrics on the public port");
    assert_eq!(public.headers()["content-type"], "application/json; charset=utf-8");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(format!("{ops}{path}")).await.status(), 200, "ops {path}");
        assert_eq!(get(app.url(path)).await.status(), 200, "public {path}");
    }
    let elsewhere = get(format!("{ops}/auth/session")).await;
    assert_eq!(elsewhere.status(), 404, "the ops port serves nothing else");
    let body: serde_json::Value = elsewhere.json().await.expect("JSON 404");
    assert!(body["error"].is_string());
    app.stop().await;
    assert!(
        reqwest::Client::new()
            .get(format!("{ops}/healthz"))
            .send()
            .await
            .is_err(),
        "the ops listener is closed by the same shutdown"
    );
}
