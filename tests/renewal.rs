//! Silent renewal: single-flight in a process, one refresh at a time across
//! instances (the row's refresh marker), an unknown outcome keeps the refresh
//! token and retries it after a back-off, `invalid_grant` ends the session,
//! and transient failures lose nothing. Runs against SQLite and PostgreSQL
//! (`AVEMINT_TEST_DATABASE_URL`).

mod support;

use std::time::Duration;

use ave_emulator::{Emulator, EmulatorConfig, TokenFailure};
use avemint_base::clock::UnixTime;
use avemint_core::ave::ClientOptions;
use avemint_core::session::{DatabaseUrl, RenewalSettings};
use futures_util::future::join_all;
use support::{Browser, Options, SESSION_COOKIE, ServeProcess, TestApp, database_url_string, error_code, sign_in_at};

/// Ave access tokens live this long in these tests.
const ACCESS_TTL: u64 = 2;

fn short_lived_emulator() -> EmulatorConfig {
    EmulatorConfig {
        access_token_ttl: Duration::from_secs(ACCESS_TTL),
        ..EmulatorConfig::default()
    }
}

fn renewal(skew: u64) -> RenewalSettings {
    RenewalSettings {
        skew: Duration::from_secs(skew),
        ..RenewalSettings::default()
    }
}

async fn spawn(db: Option<DatabaseUrl>, renewal: RenewalSettings, client: ClientOptions) -> TestApp {
    TestApp::spawn_with(Options {
        emulator: Some(short_lived_emulator()),
        database_url: db,
        renewal: Some(renewal),
        client: Some(client),
        ..Options::default()
    })
    .await
}

async fn wait_for_access_expiry() {
    tokio::time::sleep(Duration::from_millis(ACCESS_TTL * 1000 + 1100)).await;
}

fn refresh_calls(emulator: &Emulator) -> usize {
    emulator
        .token_requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .count()
}

async fn concurrent_tokens(app: &TestApp, browser: &Browser, n: usize) -> Vec<u16> {
    join_all((0..n).map(|_| {
        let mut b = browser.clone();
        async move { app.post_token(&mut b, true).await.status().as_u16() }
    }))
    .await
}

async fn fifty_concurrent_requests_share_one_refresh(db: Option<DatabaseUrl>) {
    let app = spawn(db, renewal(0), ClientOptions::default()).await;
    let browser = app.signed_in_browser().await;
    wait_for_access_expiry().await;
    let statuses = concurrent_tokens(&app, &browser, 50).await;
    assert!(statuses.iter().all(|s| *s == 200), "all 50 succeed: {statuses:?}");
    assert_eq!(refresh_calls(&app.emulator), 1, "exactly one refresh reached Ave");
    assert_eq!(app.emulator.successful_refreshes(), 1);
    assert_eq!(
        app.emulator.refresh_families_revoked(),
        0,
        "no refresh token was reused"
    );
    eprintln!(
        "measured: 50 concurrent requests -> {} refresh call(s)",
        refresh_calls(&app.emulator)
    );
    // The renewed session keeps working without another refresh.
    let mut b = browser.clone();
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    assert_eq!(refresh_calls(&app.emulator), 1);
    app.stop().await;
}

support::on_both_stores!(fifty_concurrent_requests_share_one_refresh);

#[tokio::test]
async fn postgres_two_processes_refresh_once_and_never_reuse_a_token() {
    let Some(db) = support::postgres_schema("postgres_two_processes_refresh_once_and_never_reuse_a_token").await else {
        return;
    };
    let emulator = Emulator::start(short_lived_emulator()).await.expect("emulator");
    let keys = tempfile::tempdir().expect("keys dir");
    let url = database_url_string(&db);
    let env = [("AVEMINT_REFRESH_SKEW", "0")];
    let a = ServeProcess::start(&emulator, &url, keys.path(), &env).await;
    let b = ServeProcess::start(&emulator, &url, keys.path(), &env).await;
    emulator.set_redirect_uris(vec![format!("{}/auth/callback", a.base)]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut browser = Browser::default();
    sign_in_at(&http, &emulator, &a.base, &mut browser).await;
    wait_for_access_expiry().await;

    let statuses = join_all((0..50).map(|i| {
        let base = if i % 2 == 0 { a.base.clone() } else { b.base.clone() };
        let mut br = browser.clone();
        let http = http.clone();
        async move {
            br.send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "all succeed on both instances: {statuses:?}"
    );
    assert_eq!(refresh_calls(&emulator), 1, "one refresh across both processes");
    assert_eq!(
        emulator.refresh_families_revoked(),
        0,
        "Ave never saw a reused refresh token"
    );
    eprintln!(
        "measured: 50 requests over 2 processes -> {} refresh call(s)",
        refresh_calls(&emulator)
    );
}

#[tokio::test]
async fn a_slow_refresh_is_still_a_single_refresh() {
    let app = spawn(None, renewal(0), ClientOptions::default()).await;
    let browser = app.signed_in_browser().await;
    wait_for_access_expiry().await;
    app.emulator
        .set_token_failure(Some(TokenFailure::Delay(Duration::from_secs(2))));
    let statuses = concurrent_tokens(&app, &browser, 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(refresh_calls(&app.emulator), 1);
    app.stop().await;
}

async fn invalid_grant_ends_the_session(db: Option<DatabaseUrl>) {
    let app = spawn(db, renewal(0), ClientOptions::default()).await;
    let mut browser = app.signed_in_browser().await;
    let id = avemint_core::session::SessionId::parse(browser.get(SESSION_COOKIE).expect("cookie")).expect("id");
    wait_for_access_expiry().await;
    app.emulator.revoke_all_refresh_families();
    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "login_required");
    assert_eq!(refresh_calls(&app.emulator), 1);
    let sessions = avemint_core::session::Sessions::open(
        &app.settings.store.database_url,
        &app.settings.store.keys,
        app.settings.session.clone(),
        Duration::ZERO,
        avemint_base::clock::Clock::System,
    )
    .await
    .expect("open");
    assert!(
        sessions.store().get(&id.key()).await.expect("get").is_none(),
        "session row gone"
    );
    // No retry, ever: the old cookie gets 401 without another call to Ave.
    let mut old = Browser::default();
    old.cookies
        .insert(SESSION_COOKIE.into(), id.to_cookie_value().expose().clone());
    assert_eq!(app.post_token(&mut old, true).await.status(), 401);
    assert_eq!(refresh_calls(&app.emulator), 1);
    app.stop().await;
}

support::on_both_stores!(invalid_grant_ends_the_session);

#[tokio::test]
async fn transient_failures_lose_nothing_and_recovery_uses_the_rotated_token() {
    let app = spawn(None, renewal(0), ClientOptions::default()).await;
    let mut browser = app.signed_in_browser().await;
    wait_for_access_expiry().await;
    for (failure, retry_after) in [
        (TokenFailure::Status(500), None),
        (TokenFailure::Status(503), None),
        (TokenFailure::RateLimited { retry_after_secs: 7 }, Some("7")),
    ] {
        app.emulator.set_token_failure(Some(failure));
        // Requests within the previous failure's back-off get 503 without calling Ave.
        let calls = refresh_calls(&app.emulator);
        let resp = loop {
            let resp = app.post_token(&mut browser, true).await;
            assert_eq!(resp.status(), 503, "{failure:?}");
            assert!(resp.headers().contains_key("retry-after"), "{failure:?}");
            if refresh_calls(&app.emulator) > calls {
                break resp;
            }
            assert_eq!(error_code(resp).await, "temporarily_unavailable");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let header = resp
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .expect("ascii")
            .to_owned();
        if let Some(expected) = retry_after {
            assert_eq!(header, expected, "Ave's Retry-After is honoured");
        }
        assert_eq!(error_code(resp).await, "temporarily_unavailable");
    }
    app.emulator.set_token_failure(None);
    let healed = std::time::Instant::now();
    loop {
        let status = app.post_token(&mut browser, true).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "recovered after the back-off"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.emulator.successful_refreshes(), 1);
    assert_eq!(
        app.emulator.refresh_families_revoked(),
        0,
        "failed attempts did not burn the token"
    );
    // The rotated token works for the next renewal too.
    wait_for_access_expiry().await;
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    assert_eq!(app.emulator.successful_refreshes(), 2);
    assert_eq!(app.emulator.refresh_families_revoked(), 0);
    app.stop().await;
}

#[tokio::test]
async fn while_the_access_token_is_valid_a_failed_refresh_still_mints() {
    // Skew (60 s) larger than the access lifetime (30 s): every request wants a refresh, but the
    // token is valid for long enough that a slow machine cannot make it expire mid-test.
    let app = TestApp::spawn_with(Options {
        emulator: Some(EmulatorConfig {
            access_token_ttl: Duration::from_secs(30),
            ..EmulatorConfig::default()
        }),
        renewal: Some(renewal(60)),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    app.emulator.set_token_failure(Some(TokenFailure::Status(500)));
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    app.emulator
        .set_token_failure(Some(TokenFailure::RateLimited { retry_after_secs: 3 }));
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_slow_answer_is_stored_when_it_arrives_instead_of_being_retried() {
    let app = spawn(
        None,
        RenewalSettings {
            wait: Duration::from_millis(300),
            ..renewal(0)
        },
        ClientOptions::default(),
    )
    .await;
    let mut browser = app.signed_in_browser().await;
    wait_for_access_expiry().await;
    app.emulator
        .set_token_failure(Some(TokenFailure::Delay(Duration::from_secs(2))));
    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 503, "the request stops waiting; the refresh goes on");
    assert!(resp.headers().contains_key("retry-after"));
    app.emulator.set_token_failure(None);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.post_token(&mut browser, true).await.status(),
        200,
        "the late answer was stored"
    );
    assert_eq!(refresh_calls(&app.emulator), 1, "nothing was re-sent");
    assert_eq!(app.emulator.refresh_families_revoked(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_lost_answer_keeps_the_refresh_token_and_the_retry_learns_the_outcome() {
    let app = spawn(
        None,
        renewal(0),
        ClientOptions {
            refresh_timeout: Duration::from_millis(700),
            ..ClientOptions::default()
        },
    )
    .await;
    let mut browser = app.signed_in_browser().await;
    wait_for_access_expiry().await;
    // Ave rotates the token, but its answer comes after avemint gave up: the outcome is unknown.
    app.emulator
        .set_token_failure(Some(TokenFailure::DelayAfterProcessing(Duration::from_secs(2))));
    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(
        resp.status(),
        503,
        "outcome unknown: the token is kept, the client retries"
    );
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "temporarily_unavailable");
    app.emulator.set_token_failure(None);
    // Within the back-off, Ave is not asked again.
    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(refresh_calls(&app.emulator), 1, "no retry on every request");
    // Ave may still be processing the call: the token is not sent again before the marker's deadline (the send +
    // the refresh timeout + a 10 s margin). After it, the same token is sent again; Ave did use it, so the session
    // is over.
    let lost_at = std::time::Instant::now();
    let resp = loop {
        let resp = app.post_token(&mut browser, true).await;
        if resp.status() != 503 {
            break resp;
        }
        assert_eq!(refresh_calls(&app.emulator), 1, "not re-sent before the deadline");
        assert!(
            lost_at.elapsed() < Duration::from_secs(20),
            "retried after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        lost_at.elapsed() >= Duration::from_secs(8),
        "not before the deadline: {:?}",
        lost_at.elapsed()
    );
    assert_eq!(resp.status(), 401, "Ave consumed the token: the retry learns it");
    assert_eq!(error_code(resp).await, "login_required");
    assert_eq!(refresh_calls(&app.emulator), 2, "the kept token was retried once");
    assert_eq!(app.post_token(&mut browser, true).await.status(), 401, "and no loop");
    assert_eq!(refresh_calls(&app.emulator), 2);
    app.stop().await;
}

/// A process dies while its refresh is stuck on the way to Ave (which never
/// sees it). Its marker blocks others for the refresh lease (the dead
/// holder's call might still be in flight), then the next instance retries
/// with the same refresh token, and the session lives on. Both processes
/// share the database: on SQLite, a file in a temp dir.
async fn a_crash_mid_refresh_is_retried_with_the_same_token(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db.unwrap_or_else(|| DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("crash.db").display())));
    let emulator = Emulator::start(short_lived_emulator()).await.expect("emulator");
    let proxy = support::fault_proxy::FaultProxy::start(&emulator.base_url()).await;
    emulator.set_advertised_base_url(Some(proxy.url()));
    let keys = tempfile::tempdir().expect("keys dir");
    let url = database_url_string(&db);
    // Refresh lease: the 2 s refresh timeout plus a 10 s margin.
    let env = [("AVEMINT_REFRESH_SKEW", "0"), ("AVEMINT_AVE_REFRESH_TIMEOUT", "2")];
    let mut a = ServeProcess::start(&emulator, &url, keys.path(), &env).await;
    emulator.set_redirect_uris(vec![format!("{}/auth/callback", a.base)]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut browser = Browser::default();
    sign_in_at(&http, &emulator, &a.base, &mut browser).await;
    wait_for_access_expiry().await;

    // The refresh request stalls on the way; the process dies before any outcome.
    proxy.set_fault(support::fault_proxy::Fault::Stall).await;
    let seen = proxy.token_requests();
    let pending = {
        let mut br = browser.clone();
        let http = http.clone();
        let base = a.base.clone();
        tokio::spawn(async move {
            br.send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
                .await
        })
    };
    for _ in 0..200 {
        if proxy.token_requests() > seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.token_requests() > seen, "the refresh was on its way");
    let killed_at = std::time::Instant::now();
    a.kill();
    pending.abort();
    proxy.set_fault(support::fault_proxy::Fault::None).await;

    let b = ServeProcess::start(&emulator, &url, keys.path(), &env).await;
    let mut answers = Vec::new();
    loop {
        let resp = browser
            .send(http.post(format!("{}/auth/token", b.base)).header("X-CSRF", "1"))
            .await;
        let status = resp.status().as_u16();
        answers.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "meanwhile: 503, never a sign-out: {answers:?}");
        assert!(resp.headers().contains_key("retry-after"));
        assert!(
            killed_at.elapsed() < Duration::from_secs(40),
            "retried within the lease: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "measured: after a crash mid-refresh the session was renewed by the next instance {:?} later",
        killed_at.elapsed()
    );
    assert_eq!(refresh_calls(&emulator), 1, "the one retry reached Ave");
    assert_eq!(emulator.successful_refreshes(), 1);
    assert_eq!(emulator.refresh_families_revoked(), 0);
    assert_eq!(emulator.concurrent_refresh_presentations(), 0);
}

support::on_both_stores!(a_crash_mid_refresh_is_retried_with_the_same_token);

#[tokio::test]
async fn postgres_logout_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(db) = support::postgres_schema("postgres_logout_on_one_instance").await else {
        return;
    };
    let a = TestApp::spawn_with(Options {
        database_url: Some(db.clone()),
        ..Options::default()
    })
    .await;
    let b = TestApp::spawn_with(Options {
        database_url: Some(db),
        shared_emulator: Some(a.emulator.clone()),
        ..Options::default()
    })
    .await;
    let mut browser = a.signed_in_browser().await;
    // Instance B serves the session (and caches it).
    for _ in 0..3 {
        assert_eq!(b.post_token(&mut browser, true).await.status(), 200);
    }
    let resp = browser
        .send(a.http.post(a.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 204);
    let mut stolen = Browser::default();
    let logged_out_at = std::time::Instant::now();
    // The cookie value from before logout, replayed against B.
    stolen.cookies = browser.cookies.clone();
    stolen
        .cookies
        .insert(SESSION_COOKIE.into(), browser_cookie_before(&browser));
    loop {
        let status = b.post_token(&mut stolen.clone(), true).await.status();
        if status == 401 {
            break;
        }
        assert!(
            logged_out_at.elapsed() < Duration::from_secs(1),
            "B still minted after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "measured: B refused {:?} after the logout on A",
        logged_out_at.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

/// The session cookie value the browser held before logout expired it.
fn browser_cookie_before(browser: &Browser) -> String {
    browser
        .set_cookies
        .iter()
        .filter_map(|c| c.strip_prefix(&format!("{SESSION_COOKIE}=")))
        .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
        .rfind(|v| !v.is_empty())
        .expect("a session cookie was set")
}

#[tokio::test]
async fn sessions_expire_by_idle_timeout_and_lifetime_and_are_swept() {
    use avemint_core::session::SessionSettings;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("s.db").display()));
    let keys = avemint_core::session::SealingKeys::from_keys(vec![[3; 32]]);
    let settings = SessionSettings {
        idle_timeout: Duration::from_secs(100),
        lifetime: Duration::from_secs(1000),
        ..SessionSettings::default()
    };
    let clock = avemint_base::clock::ManualClock::new(UnixTime::EPOCH);
    let sessions = avemint_core::session::Sessions::open(&url, &keys, settings, Duration::ZERO, clock.clock())
        .await
        .expect("open");
    // Reads the session at `secs` by the manual clock.
    let load_at = |key, secs| {
        clock.set(UnixTime::from_secs(secs));
        let sessions = &sessions;
        async move { sessions.load(&key).await.expect("load") }
    };
    let data = || avemint_core::session::SessionData {
        sid: avemint_core::session::SessionHandle::generate(),
        sub: "u".into(),
        scope: "openid".into(),
        tokens: avemint_core::session::AveTokens {
            access_token: avemint_base::secret::Secret::new("a".into()),
            access_token_jwt: None,
            id_token: avemint_base::secret::Secret::new("i".into()),
            refresh_token: None,
            access_expires_at: UnixTime::from_secs(10_000),
        },
        id_token_claims: Default::default(),
        user: None,
        signed_in_from: Default::default(),
    };
    let idle = sessions.create(&data()).await.expect("create");
    // Activity is recorded at most once a minute.
    assert!(load_at(idle.key(), 70).await.is_some());
    assert!(
        load_at(idle.key(), 165).await.is_some(),
        "active at 70, so alive at 165"
    );
    assert!(load_at(idle.key(), 266).await.is_none(), "idle for over 100 s");
    assert!(
        sessions.store().get(&idle.key()).await.expect("get").is_none(),
        "the expired row is deleted"
    );
    clock.set(UnixTime::EPOCH);
    let old = sessions.create(&data()).await.expect("create");
    for t in (60..1000).step_by(60) {
        assert!(load_at(old.key(), t).await.is_some(), "active at {t}");
    }
    assert!(load_at(old.key(), 1001).await.is_none(), "past the absolute lifetime");
    clock.set(UnixTime::EPOCH);
    let swept_one = sessions.create(&data()).await.expect("create");
    clock.set(UnixTime::from_secs(500));
    assert_eq!(sessions.sweep().await.expect("sweep"), 1);
    assert!(sessions.store().get(&swept_one.key()).await.expect("get").is_none());
}
