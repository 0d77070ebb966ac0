//! Ave's token budget cannot be drained by strangers (issue 13, item 2), and
//! it never makes a request wait without bound (issue 12, item 4).
//!
//! A flood of junk sign-in callbacks from many networks (40 IPv6 /64s of one
//! /48 plus IPv4 addresses in distinct /24s, given through `X-Forwarded-For`
//! from a trusted loopback proxy) must leave room for the renewal of an
//! existing session and for a sign-in from another network. Past the budget,
//! a sign-in is answered 503 with `Retry-After` at once, and nothing is sent
//! to Ave.

mod support;

use std::time::{Duration, Instant};

use ave_emulator::{Emulator, EmulatorConfig};
use avemint::config::SecuritySettings;
use avemint_core::ave::ClientOptions;
use avemint_core::session::RenewalSettings;
use avemint_core::traffic::client_ip::TrustedProxies;
use futures_util::StreamExt;
use serde_json::Value;
use support::{Browser, Options, SESSION_COOKIE, TestApp, location};

/// Ave access tokens live this long in these tests.
const ACCESS_TTL: u64 = 2;

async fn spawn(budget: u32) -> TestApp {
    TestApp::spawn_with(Options {
        emulator: Some(EmulatorConfig {
            access_token_ttl: Duration::from_secs(ACCESS_TTL),
            ..EmulatorConfig::default()
        }),
        renewal: Some(RenewalSettings {
            skew: Duration::ZERO,
            ..RenewalSettings::default()
        }),
        client: Some(ClientOptions {
            token_budget_per_minute: budget,
            ..ClientOptions::default()
        }),
        security: Some(SecuritySettings {
            trusted_proxies: TrustedProxies::parse("127.0.0.0/8, ::1").expect("loopback"),
            ..SecuritySettings::default()
        }),
        ..Options::default()
    })
    .await
}

fn grants(emulator: &Emulator, grant: &str) -> usize {
    emulator
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some(grant))
        .count()
}

/// `GET /auth/login` as `client`; returns the `state` sent to Ave (the browser keeps the login cookie).
async fn login_as(app: &TestApp, browser: &mut Browser, client: &str) -> (String, String) {
    let resp = browser
        .send(app.http.get(app.url("/auth/login")).header("X-Forwarded-For", client))
        .await;
    assert_eq!(resp.status(), 302, "login redirects for {client}");
    let authorize = location(&resp);
    let url = reqwest::Url::parse(&authorize).expect("authorize URL");
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state in the authorize URL");
    (authorize, state)
}

/// One junk callback: a real login (so `state` checks out), then `code=junk`. Returns the status.
async fn junk_callback(app: &TestApp, client: String) -> u16 {
    let mut browser = Browser::default();
    let (_, state) = login_as(app, &mut browser, &client).await;
    let resp = browser
        .send(
            app.http
                .get(app.url("/auth/callback"))
                .query(&[("code", "junk"), ("state", state.as_str())])
                .header("X-Forwarded-For", &client),
        )
        .await;
    let status = resp.status().as_u16();
    if matches!(status, 429 | 503) {
        let retry: u64 = resp
            .headers()
            .get("retry-after")
            .expect("Retry-After on a refusal")
            .to_str()
            .expect("ascii")
            .parse()
            .expect("whole seconds");
        assert!(retry >= 1);
    }
    let body: Value = resp.json().await.expect("a JSON error");
    assert!(
        body["error"].is_string() && body["error_description"].is_string(),
        "{body}"
    );
    if status == 429 {
        assert_eq!(body["error"], "rate_limited");
    }
    status
}

/// A whole sign-in as `client`, auto-approved at the emulator; returns the callback's response.
async fn sign_in_as(app: &TestApp, browser: &mut Browser, client: &str) -> reqwest::Response {
    let (authorize, _) = login_as(app, browser, client).await;
    let callback = app.authorize(&authorize).await;
    browser
        .send(app.http.get(callback).header("X-Forwarded-For", client))
        .await
}

#[tokio::test]
async fn junk_callbacks_from_many_networks_starve_neither_renewals_nor_other_networks() {
    let app = spawn(180).await;
    // An existing session, signed in before the flood.
    let victim = app.signed_in_browser().await;

    // The flood: 40 /64s of one /48 (6 callbacks each) and 6 IPv4 addresses in distinct /24s (10 each),
    // all under the per-client request limit, 24 at a time.
    let mut clients = Vec::new();
    for subnet in 0..40 {
        for host in 1..=6 {
            clients.push(format!("2001:db8:bad:{subnet:x}::{host:x}"));
        }
    }
    for net in 1..=6 {
        for _ in 0..10 {
            clients.push(format!("198.51.{net}.23"));
        }
    }
    let flood = clients.len();
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(clients)
        .map(|client| junk_callback(&app, client))
        .buffer_unordered(24)
        .collect()
        .await;
    let junk_exchanges = grants(&app.emulator, "authorization_code") - 1;
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    eprintln!(
        "measured: {flood} junk callbacks in {:?}: {} rejected by Ave (400), {} refused before Ave (429), {} budget (503); \
         {junk_exchanges} code exchanges reached Ave",
        started.elapsed(),
        count(400),
        count(429),
        count(503)
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 400 | 429 | 503)),
        "junk is refused, never a 5xx other than 503: {statuses:?}"
    );

    // The existing session's access token has expired: it renews, with exactly one refresh at Ave.
    tokio::time::sleep(Duration::from_millis(ACCESS_TTL * 1000 + 1100)).await;
    let mut b = victim.clone();
    let resp = app.post_token(&mut b, true).await;
    let status = resp.status();
    assert_eq!(status, 200, "the existing session renews: {:?}", resp.text().await.ok());
    assert_eq!(
        grants(&app.emulator, "refresh_token"),
        1,
        "exactly one refresh reached Ave"
    );
    assert_eq!(app.emulator.successful_refreshes(), 1);

    // A fresh client on another network signs in.
    let mut fresh = Browser::default();
    let resp = sign_in_as(&app, &mut fresh, "203.0.113.50").await;
    assert_eq!(
        resp.status(),
        302,
        "another network signs in: {:?}",
        resp.text().await.ok()
    );
    assert!(fresh.get(SESSION_COOKIE).is_some(), "session cookie set");

    // The junk was stopped per network, long before it could use up the sign-in share.
    assert!(count(429) > flood / 2, "most junk was refused before calling Ave");
    let health = app.get_json("/readyz").await;
    let budget = &health["ave_token_budget"];
    assert_eq!(budget["renewal"]["limit"], 180, "{health}");
    assert_eq!(budget["renewal"]["reserved"], 60, "{health}");
    assert_eq!(budget["sign_in"]["limit"], 120, "{health}");
    assert!(budget["sign_in"]["available"].as_u64().expect("number") > 0, "{health}");
    assert!(junk_exchanges < 60, "{junk_exchanges} junk code exchanges reached Ave");

    // A client of the flooding /48 (a /64 it never used) is refused before Ave, with Retry-After.
    let before = grants(&app.emulator, "authorization_code");
    assert_eq!(junk_callback(&app, "2001:db8:bad:ffff::1".into()).await, 429);
    assert_eq!(
        grants(&app.emulator, "authorization_code"),
        before,
        "nothing sent to Ave"
    );

    let metrics = app.http.get(app.url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("body");
    assert!(text.contains(r#"avemint_sign_in_exchange_refused_total{network="ipv6_48"}"#));
    app.stop().await;
}

#[tokio::test]
async fn past_the_budget_a_sign_in_gets_503_with_retry_after_at_once_and_renewals_keep_their_reserve() {
    // 3 calls a minute: 2 for sign-ins, 1 reserved for renewals.
    let app = spawn(3).await;
    let victim = app.signed_in_browser().await;
    let mut second = Browser::default();
    assert_eq!(sign_in_as(&app, &mut second, "203.0.113.7").await.status(), 302);
    assert_eq!(grants(&app.emulator, "authorization_code"), 2);

    // The sign-in share is used up for about a minute: more than the wait bound (10 s), so no waiting.
    let mut third = Browser::default();
    let started = Instant::now();
    let resp = sign_in_as(&app, &mut third, "203.0.113.8").await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once");
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((2..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(support::error_code(resp).await, "temporarily_unavailable");
    assert_eq!(grants(&app.emulator, "authorization_code"), 2, "nothing sent to Ave");
    assert!(third.get(SESSION_COOKIE).is_none());

    let health = app.get_json("/readyz").await;
    let budget = &health["ave_token_budget"];
    assert_eq!(budget["sign_in"]["available"], 0, "{health}");
    assert_eq!(budget["renewal"]["available"], 1, "{health}");

    // The reserve: the first session still renews.
    tokio::time::sleep(Duration::from_millis(ACCESS_TTL * 1000 + 1100)).await;
    let mut b = victim.clone();
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    assert_eq!(grants(&app.emulator, "refresh_token"), 1);

    let text = app.metrics().await;
    assert!(
        text.contains(r#"avemint_ave_budget_refused_total{class="sign_in"} "#),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn good_codes_between_junk_ones_do_not_keep_a_network_open() {
    let app = spawn(180).await;
    let attacker = "198.51.100.66";
    // The attacker's own Ave account: real sign-ins, each followed by a junk code.
    for _ in 0..10 {
        let mut b = Browser::default();
        assert_eq!(sign_in_as(&app, &mut b, attacker).await.status(), 302, "a real sign-in");
        assert_eq!(junk_callback(&app, attacker.into()).await, 400, "junk rejected by Ave");
    }
    let exchanges = grants(&app.emulator, "authorization_code");
    assert_eq!(exchanges, 20);
    // Ten failures within ten minutes close the /24, for junk and real codes alike, before Ave is called.
    assert_eq!(junk_callback(&app, "198.51.100.67".into()).await, 429);
    let mut b = Browser::default();
    let resp = sign_in_as(&app, &mut b, attacker).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (500..=600).contains(&retry),
        "open again when the failures age out: {retry}"
    );
    assert_eq!(support::error_code(resp).await, "rate_limited");
    assert!(b.get(SESSION_COOKIE).is_none());
    assert_eq!(
        grants(&app.emulator, "authorization_code"),
        exchanges,
        "nothing sent to Ave"
    );
    // The next /24 is another network.
    let mut b = Browser::default();
    assert_eq!(sign_in_as(&app, &mut b, "198.51.101.66").await.status(), 302);
    app.stop().await;
}

/// Issue 23 §1: the refresh timeout starts when the request is sent, not before the wait for budget room. Budget
/// 3 a minute, a 10 s refresh timeout, a fourth renewal arriving 51 s into the minute: it waits ~9 s for room,
/// Ave processes it at once and answers 2.5 s later. Before, the timeout (started before the wait) fired ~1 s
/// after the send, the answer was lost although Ave had rotated the token, and the next renewal re-sent the spent
/// token: family revoked, user signed out.
#[tokio::test]
async fn a_renewal_that_waited_for_the_budget_still_gets_the_whole_refresh_timeout() {
    let app = TestApp::spawn_with(Options {
        renewal: Some(RenewalSettings {
            // Every request renews; a request waits for its renewal longer than the budget wait.
            skew: Duration::from_secs(2 * 3600),
            wait: Duration::from_secs(15),
            ..RenewalSettings::default()
        }),
        client: Some(ClientOptions {
            token_budget_per_minute: 3,
            request_timeout: Duration::from_secs(10),
            refresh_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        }),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    // The sign-in's code exchange, the first call of the minute, was made just before.
    let minute = Instant::now();
    for _ in 0..2 {
        assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    }
    assert_eq!(grants(&app.emulator, "refresh_token"), 2, "the budget (3) is used up");

    tokio::time::sleep((minute + Duration::from_secs(51)).saturating_duration_since(Instant::now())).await;
    app.emulator
        .set_token_failure(Some(ave_emulator::TokenFailure::DelayAfterProcessing(
            Duration::from_millis(2500),
        )));
    let fourth = Instant::now();
    let status = app.post_token(&mut browser, true).await.status();
    let took = fourth.elapsed();
    app.emulator.set_token_failure(None);
    assert_eq!(status, 200, "the fourth renewal");
    assert!(took >= Duration::from_secs(8), "it waited for the budget: {took:?}");
    // Past the per-session back-off a failed renewal would start, the next renewal uses the token Ave rotated for
    // the fourth (before: the spent token again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = app.post_token(&mut browser, true).await.status();
    eprintln!(
        "measured: a renewal that waited {took:?} for the budget: next request {status}, families revoked {}",
        app.emulator.refresh_families_revoked()
    );
    assert_eq!(status, 200, "the session survives");
    assert_eq!(
        app.emulator.refresh_families_revoked(),
        0,
        "no refresh token was re-sent"
    );
    assert_eq!(app.emulator.successful_refreshes(), 4);
    app.stop().await;
}
