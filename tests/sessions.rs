//! Sessions users can see and end (issue 16): `GET /auth/sessions`, `DELETE /auth/sessions/{id}`,
//! `POST /auth/logout` with a scope, `expires_in` in `GET /auth/session`, and what the store keeps about them.
//! Black-box over HTTP, on SQLite and PostgreSQL.

mod support;

use std::time::Duration;

use avemint_core::session::DatabaseUrl;
use serde_json::{Value, json};
use support::{Browser, Options, SESSION_COOKIE, TestApp};

const FIREFOX_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

fn on(db: Option<DatabaseUrl>) -> Options {
    Options {
        database_url: db,
        ..Options::default()
    }
}

/// Signs a new browser in as the emulator's user number `user`, with `user_agent` on every request.
async fn browser_of(app: &TestApp, user: usize, user_agent: &str) -> (reqwest::Client, Browser) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .build()
        .expect("client");
    let mut b = Browser::default();
    let id = app.emulator.users()[user].id.clone();
    support::sign_in_as_at(&http, &app.emulator, &app.address, &mut b, &id).await;
    (http, b)
}

async fn list(app: &TestApp, b: &mut Browser) -> Vec<Value> {
    let resp = b
        .send(app.http.get(app.url("/auth/sessions")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["sessions"].as_array().expect("sessions").clone()
}

async fn end(app: &TestApp, b: &mut Browser, id: &str) -> reqwest::Response {
    b.send(
        app.http
            .delete(app.url(&format!("/auth/sessions/{id}")))
            .header("X-CSRF", "1"),
    )
    .await
}

async fn logout(app: &TestApp, b: &mut Browser, body: Option<Value>) -> reqwest::Response {
    let mut req = app.http.post(app.url("/auth/logout")).header("X-CSRF", "1");
    if let Some(body) = body {
        req = req.json(&body);
    }
    b.send(req).await
}

/// The `sid` of the session a browser holds (from an app JWT minted for it).
async fn sid_of(app: &TestApp, b: &mut Browser) -> String {
    let resp = app.post_token(b, true).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let token = body["access_token"].as_str().expect("token");
    app.verify(token).await.claims["sid"].as_str().expect("sid").to_owned()
}

async fn token_status(app: &TestApp, b: &Browser) -> u16 {
    app.post_token(&mut b.clone(), true).await.status().as_u16()
}

fn ids(list: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = list.iter().map(|s| s["id"].as_str().expect("id").to_owned()).collect();
    ids.sort();
    ids
}

/// Two users with several sessions each: each lists exactly their own, with the caller's marked `current`,
/// its `id` the `sid` of its app JWTs, device and network from the sign-in, and consistent times.
async fn listing_shows_exactly_the_users_sessions(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(on(db)).await;
    let (_, mut ada1) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, mut ada2) = browser_of(&app, 0, SAFARI_IPHONE).await;
    let (_, mut ada3) = browser_of(&app, 0, "secret-agent/1.0").await;
    let (_, mut grace1) = browser_of(&app, 1, FIREFOX_LINUX).await;
    let (_, mut grace2) = browser_of(&app, 1, SAFARI_IPHONE).await;
    let ada_sids = {
        let mut v = vec![
            sid_of(&app, &mut ada1).await,
            sid_of(&app, &mut ada2).await,
            sid_of(&app, &mut ada3).await,
        ];
        v.sort();
        v
    };
    let grace_sids = {
        let mut v = vec![sid_of(&app, &mut grace1).await, sid_of(&app, &mut grace2).await];
        v.sort();
        v
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;

    let ada = list(&app, &mut ada2).await;
    assert_eq!(ids(&ada), ada_sids, "exactly Ada's sessions: {ada:?}");
    let grace = list(&app, &mut grace1).await;
    assert_eq!(ids(&grace), grace_sids, "exactly Grace's sessions");

    let current: Vec<&Value> = ada.iter().filter(|s| s["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1, "one current session");
    assert_eq!(current[0]["id"], json!(sid_of(&app, &mut ada2).await));
    assert_eq!(current[0]["device"], json!("Safari on iOS"));
    let by_device = |device: Value| ada.iter().filter(|s| s["device"] == device).count();
    assert_eq!(by_device(json!("Firefox on Linux")), 1);
    assert_eq!(
        by_device(Value::Null),
        1,
        "an unknown agent has no label (and is never echoed)"
    );
    for s in &ada {
        assert_eq!(s["network"], json!("127.0.0.0/24"), "the /24 of the loopback client");
        let created = s["created_at"].as_i64().expect("created_at");
        let seen = s["last_seen_at"].as_i64().expect("last_seen_at");
        let expires = s["expires_at"].as_i64().expect("expires_at");
        assert!((now - 60..=now + 1).contains(&created), "{s}");
        assert!(seen >= created);
        // Idle timeout (7 days) first: it ends before the 30-day lifetime.
        assert_eq!(expires, seen + 7 * 24 * 3600, "{s}");
    }
    // Without a session, or without the CSRF header: refused.
    let resp = Browser::default()
        .send(app.http.get(app.url("/auth/sessions")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 401);
    let resp = ada1.send(app.http.get(app.url("/auth/sessions"))).await;
    assert_eq!(resp.status(), 403);
    app.stop().await;
}

/// `DELETE /auth/sessions/{id}` ends one of the caller's own sessions only; another user's id, an unknown one
/// and a malformed one are the same 404; ending the current one signs out.
async fn a_user_ends_only_their_own_sessions(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(on(db)).await;
    let (_, mut ada1) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, mut ada2) = browser_of(&app, 0, SAFARI_IPHONE).await;
    let (_, mut grace) = browser_of(&app, 1, FIREFOX_LINUX).await;
    let grace_sid = sid_of(&app, &mut grace).await;
    let ada2_sid = sid_of(&app, &mut ada2).await;

    let mut bodies = Vec::new();
    for id in [
        grace_sid.as_str(),
        "AAAAAAAAAAAAAAAAAAAAAA",
        "not-a-session-id",
        &"x".repeat(300),
    ] {
        let resp = end(&app, &mut ada1, id).await;
        assert_eq!(resp.status(), 404, "{id}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"], "not_found");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "indistinguishable answers");
    assert_eq!(token_status(&app, &grace).await, 200, "Grace's session lives");

    let resp = end(&app, &mut ada1, &ada2_sid).await;
    assert_eq!(resp.status(), 204);
    assert!(
        ada1.get(SESSION_COOKIE).is_some(),
        "ending another session keeps this one's cookie"
    );
    assert_eq!(token_status(&app, &ada2).await, 401, "the ended session is refused");
    assert_eq!(end(&app, &mut ada1, &ada2_sid).await.status(), 404, "already ended");

    let ada1_sid = sid_of(&app, &mut ada1).await;
    let resp = end(&app, &mut ada1, &ada1_sid).await;
    assert_eq!(resp.status(), 204);
    assert!(
        ada1.get(SESSION_COOKIE).is_none(),
        "ending the current session expires its cookie"
    );
    app.stop().await;
}

/// `POST /auth/logout` with `scope: others` ends the user's other sessions and keeps this one; `scope: all`
/// ends every one; no body ends this one only; an unknown scope is 400.
async fn logout_scopes(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(on(db)).await;
    let (_, mut a) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, b) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, c) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, grace) = browser_of(&app, 1, FIREFOX_LINUX).await;

    for bad in [
        json!({"scope": "everything"}),
        json!({"scope": 1}),
        json!({"scope": "others", "x": 1}),
    ] {
        let resp = logout(&app, &mut a, Some(bad.clone())).await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(support::error_code(resp).await, "invalid_request");
    }
    let resp = logout(&app, &mut Browser::default(), Some(json!({"scope": "all"}))).await;
    assert_eq!(resp.status(), 401, "a scope needs a session");

    let resp = logout(&app, &mut a, Some(json!({"scope": "others"}))).await;
    assert_eq!(resp.status(), 204);
    assert!(a.get(SESSION_COOKIE).is_some());
    assert_eq!(token_status(&app, &a).await, 200, "this session stays");
    assert_eq!(token_status(&app, &b).await, 401);
    assert_eq!(token_status(&app, &c).await, 401);
    assert_eq!(token_status(&app, &grace).await, 200, "another user is untouched");
    assert_eq!(list(&app, &mut a).await.len(), 1);

    let (_, d) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let resp = logout(&app, &mut a, Some(json!({"scope": "all"}))).await;
    assert_eq!(resp.status(), 204);
    assert!(a.get(SESSION_COOKIE).is_none(), "cookie expired");
    assert_eq!(token_status(&app, &d).await, 401);
    assert_eq!(token_status(&app, &grace).await, 200);

    // No body (and `{}`): this session only, as before.
    let (_, mut e) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let (_, mut f) = browser_of(&app, 0, FIREFOX_LINUX).await;
    assert_eq!(logout(&app, &mut e, None).await.status(), 204);
    assert_eq!(logout(&app, &mut f, Some(json!({}))).await.status(), 204);
    let (_, g) = browser_of(&app, 0, FIREFOX_LINUX).await;
    assert_eq!(token_status(&app, &g).await, 200);
    assert_eq!(logout(&app, &mut Browser::default(), None).await.status(), 204);
    app.stop().await;
}

/// `GET /auth/session` says how long the session has left: the idle timeout here, being shorter than what is
/// left of the lifetime; and the lifetime once that is shorter.
async fn the_session_says_when_it_ends(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(Options {
        session: Some(avemint_core::session::SessionSettings {
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            max_sessions_per_user: 50,
        }),
        ..on(db.clone())
    })
    .await;
    let mut b = app.signed_in_browser().await;
    let resp = b
        .send(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    assert!((595..=600).contains(&expires_in), "idle timeout first: {body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let at = body["expires_at"].as_i64().expect("expires_at");
    assert!((at - now - expires_in as i64).abs() <= 2, "consistent with expires_at");
    app.stop().await;

    let app = TestApp::spawn_with(Options {
        session: Some(avemint_core::session::SessionSettings {
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(120),
            max_sessions_per_user: 50,
        }),
        ..on(db)
    })
    .await;
    let mut b = app.signed_in_browser().await;
    let body: Value = b
        .send(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"))
        .await
        .json()
        .await
        .expect("JSON");
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    assert!((115..=120).contains(&expires_in), "lifetime first: {body}");
    app.stop().await;
}

support::on_both_stores!(
    listing_shows_exactly_the_users_sessions,
    a_user_ends_only_their_own_sessions,
    logout_scopes,
    the_session_says_when_it_ends,
);

/// What the store keeps of a session is sealed: no `sub`, no User-Agent (nor its label), no client address
/// (nor its network) in clear in any row.
async fn the_store_holds_no_plaintext_sub_agent_or_address(db: Option<DatabaseUrl>) {
    let app = TestApp::spawn_with(on(db.clone())).await;
    let (_, mut b) = browser_of(&app, 0, FIREFOX_LINUX).await;
    let listed = list(&app, &mut b).await;
    assert_eq!(listed[0]["device"], "Firefox on Linux", "the labels are kept (sealed)");
    let sub = app.emulator.users()[0].id.clone();
    let needles = [
        sub.as_str(),
        FIREFOX_LINUX,
        "Firefox",
        "Linux",
        "127.0.0.1",
        "127.0.0.0/24",
    ];
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    match db {
        None => {
            let path = app.db_path.clone();
            let _dir = app.stop().await;
            let mut raw = std::fs::read(&path).expect("db file");
            if let Ok(wal) = std::fs::read(format!("{}-wal", path.display())) {
                raw.extend_from_slice(&wal);
            }
            for needle in needles {
                let found = raw.windows(needle.len()).any(|w| w == needle.as_bytes());
                assert!(!found, "`{needle}` is in the database file");
            }
        }
        Some(url) => {
            let dump = support::postgres_session_rows(&url).await;
            assert_eq!(dump.len(), 1);
            for row in &dump {
                for needle in needles {
                    assert!(!row.contains(needle), "`{needle}` stored in clear");
                    assert!(!row.contains(&hex(needle)), "`{needle}` stored hex-encoded");
                }
            }
            app.stop().await;
        }
    }
}

support::on_both_stores!(the_store_holds_no_plaintext_sub_agent_or_address);

/// Two instances on one PostgreSQL schema: a session ended on instance A through `DELETE /auth/sessions/{id}`
/// is refused by instance B within the session cache time (`AVEMINT_SESSION_CACHE_TTL_MS`, 500 ms by default).
#[tokio::test]
async fn postgres_a_session_ended_on_one_instance_is_refused_by_the_other_within_the_cache_time() {
    let Some(db) = support::postgres_schema("postgres_a_session_ended_on_one_instance").await else {
        return;
    };
    let a = TestApp::spawn_with(on(Some(db.clone()))).await;
    let b = TestApp::spawn_with(Options {
        shared_emulator: Some(a.emulator.clone()),
        ..on(Some(db))
    })
    .await;
    let (_, mut laptop) = browser_of(&a, 0, FIREFOX_LINUX).await;
    let (_, mut phone) = browser_of(&a, 0, SAFARI_IPHONE).await;
    let phone_sid = sid_of(&a, &mut phone).await;
    // Instance B serves the phone's session (and caches it).
    for _ in 0..3 {
        assert_eq!(token_status(&b, &phone).await, 200);
    }
    let resp = end(&a, &mut laptop, &phone_sid).await;
    assert_eq!(resp.status(), 204);
    let ended_at = std::time::Instant::now();
    loop {
        if token_status(&b, &phone).await == 401 {
            break;
        }
        assert!(
            ended_at.elapsed() < Duration::from_millis(1000),
            "B still served the ended session after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!(
        "measured: B refused the ended session {:?} after A ended it",
        ended_at.elapsed()
    );
    assert_eq!(token_status(&a, &phone).await, 401, "A forgot it at once");
    assert_eq!(list(&b, &mut laptop).await.len(), 1, "B lists the laptop only");
    a.stop().await;
    b.stop().await;
}

/// `AVEMINT_MAX_SESSIONS_PER_USER` ends the least recently used session, not merely the oldest: with a cap of
/// two, the older session used again survives a third sign-in and the younger idle one ends. Activity is recorded
/// at most once a minute, so the injected clock moves past that minute (no session cache: each request reads the row).
async fn the_cap_ends_the_least_recently_used(db: Option<DatabaseUrl>) {
    let start = avemint_base::clock::Clock::System.now();
    let clock = avemint_base::clock::ManualClock::new(start);
    let app = TestApp::spawn_with(Options {
        session: Some(avemint_core::session::SessionSettings {
            max_sessions_per_user: 2,
            ..Default::default()
        }),
        renewal: Some(avemint_core::session::RenewalSettings {
            session_cache_ttl: Duration::ZERO,
            ..Default::default()
        }),
        clock: Some(clock.clock()),
        ..on(db)
    })
    .await;
    let (_, older) = browser_of(&app, 0, FIREFOX_LINUX).await;
    clock.set(start + Duration::from_secs(2));
    let (_, younger) = browser_of(&app, 0, SAFARI_IPHONE).await;
    clock.set(start + Duration::from_secs(64));
    assert_eq!(token_status(&app, &older).await, 200, "the older session is used again");
    let (_, mut third) = browser_of(&app, 0, FIREFOX_LINUX).await;
    assert_eq!(
        token_status(&app, &younger).await,
        401,
        "the least recently used one ended"
    );
    assert_eq!(token_status(&app, &older).await, 200);
    assert_eq!(token_status(&app, &third).await, 200);
    assert_eq!(list(&app, &mut third).await.len(), 2);
    app.stop().await;
}

support::on_both_stores!(the_cap_ends_the_least_recently_used);

const OLD_KEY: &str = support::TEST_SESSION_KEY;
const NEW_KEY: &str = "ISEhISEhISEhISEhISEhISEhISEhISEhISEhISEhISE=";

/// An instance over `db` (a SQLite file or a PostgreSQL schema) with `keys` as `AVEMINT_SESSION_KEYS`, on the
/// shared `clock`, with no session cache (so each request reads the row).
async fn keyed(
    keys: &str,
    db: &DatabaseUrl,
    emulator: Option<&ave_emulator::Emulator>,
    clock: &avemint_base::clock::ManualClock,
) -> TestApp {
    TestApp::spawn_with(Options {
        database_url: Some(db.clone()),
        shared_emulator: emulator.cloned(),
        env: vec![("AVEMINT_SESSION_KEYS", keys.to_owned())],
        renewal: Some(avemint_core::session::RenewalSettings {
            session_cache_ttl: Duration::ZERO,
            ..Default::default()
        }),
        clock: Some(clock.clock()),
        ..Options::default()
    })
    .await
}

/// Runs `sql` on the store (what someone with write access to the database can do); returns the rows it changed.
async fn on_store(db: &DatabaseUrl, sql: &'static str) -> u64 {
    let url = support::database_url_string(db);
    match db {
        DatabaseUrl::Sqlite(_) => {
            let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
            let done = sqlx::query(sql).execute(&pool).await.expect("sql").rows_affected();
            pool.close().await;
            done
        }
        DatabaseUrl::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let done = sqlx::query(sql).execute(&pool).await.expect("sql").rows_affected();
            pool.close().await;
            done
        }
    }
}

async fn stored_sessions(db: &DatabaseUrl) -> i64 {
    let url = support::database_url_string(db);
    let sql = "SELECT COUNT(*) FROM sessions";
    match db {
        DatabaseUrl::Sqlite(_) => {
            let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.expect("count");
            pool.close().await;
            n
        }
        DatabaseUrl::Postgres(_) => {
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.expect("count");
            pool.close().await;
            n
        }
    }
}

/// Issue 22 §3: a rolling session-key rotation loses no session. Instance A knows `OLD`, instance B `NEW,OLD`
/// (B learnt the new key first, as pods do while Kubernetes propagates a Secret). B's activity write MACs the
/// session's `last_seen_at` with `NEW`; A cannot verify that MAC, so it answers 503 for that request and keeps
/// the row (it used to call the row tampered and delete it: 200, then 401 everywhere). Once A knows `NEW,OLD`
/// too, both serve it. A row that fails under a key the instance holds is still deleted.
async fn a_rolling_session_key_rotation_loses_no_session(db: Option<DatabaseUrl>) {
    let start = avemint_base::clock::Clock::System.now();
    let clock = avemint_base::clock::ManualClock::new(start);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db.unwrap_or_else(|| {
        DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("shared.db").display())).expect("sqlite url")
    });
    let a = keyed(OLD_KEY, &db, None, &clock).await;
    let b = keyed(&format!("{NEW_KEY},{OLD_KEY}"), &db, Some(&a.emulator), &clock).await;
    let (_, browser) = browser_of(&a, 0, FIREFOX_LINUX).await;
    assert_eq!(token_status(&a, &browser).await, 200);
    assert_eq!(token_status(&b, &browser).await, 200, "B opens what A sealed with OLD");
    // A minute later B records the activity, MAC'd with NEW.
    clock.set(start + Duration::from_secs(61));
    assert_eq!(token_status(&b, &browser).await, 200);
    for _ in 0..3 {
        let resp = a.post_token(&mut browser.clone(), true).await;
        assert_eq!(resp.status(), 503, "A lacks NEW: refused for now, not signed out");
        assert!(resp.headers().get("set-cookie").is_none(), "the session cookie is kept");
        assert_eq!(support::error_code(resp).await, "temporarily_unavailable");
    }
    assert_eq!(stored_sessions(&db).await, 1, "the row is kept");
    assert_eq!(
        token_status(&b, &browser).await,
        200,
        "the session is still served by B"
    );
    // A learns NEW second (a restart with the updated Secret): both serve the session.
    let emulator = a.emulator.clone();
    a.stop().await;
    let a = keyed(&format!("{NEW_KEY},{OLD_KEY}"), &db, Some(&emulator), &clock).await;
    assert_eq!(token_status(&a, &browser).await, 200, "A serves it with NEW,OLD");
    assert_eq!(token_status(&b, &browser).await, 200);
    // A row edited in the database fails under a key both hold: refused and deleted.
    assert_eq!(
        on_store(&db, "UPDATE sessions SET last_seen_at = last_seen_at + 30").await,
        1
    );
    assert_eq!(token_status(&a, &browser).await, 401, "tampered: refused");
    assert_eq!(stored_sessions(&db).await, 0, "and deleted");
    assert_eq!(token_status(&b, &browser).await, 401);
    a.stop().await;
    b.stop().await;
}

support::on_both_stores!(a_rolling_session_key_rotation_loses_no_session);
