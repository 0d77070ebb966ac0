//! The session store keeps Ave's tokens encrypted: the database file holds none of them.

mod support;

use std::time::Duration;

use avemint_core::session::SessionId;
use avemint_core::session::{RenewalSettings, SessionSettings};
use support::{Browser, Options, SESSION_COOKIE, TestApp};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_raw_token_or_cookie_is_in_the_database_files() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    let cookie = b.get(SESSION_COOKIE).expect("cookie").to_owned();
    let issued = app.emulator.issued_tokens();
    assert!(
        issued.len() >= 4,
        "access, access_token_jwt, id_token and refresh token were issued: {}",
        issued.len()
    );
    let db = app.db_path.clone();
    let users = app.emulator.users().to_vec();
    let _dir = app.stop().await;

    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = format!("{}{suffix}", db.display());
        if let Ok(b) = std::fs::read(&path) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(bytes.len() > 1000, "database files were read");
    for token in &issued {
        assert!(
            !contains(&bytes, token.as_bytes()),
            "a raw Ave token is stored in clear"
        );
        // Any 24-byte window of a token is enough to count as a leak.
        if token.len() > 24 {
            assert!(!contains(&bytes, &token.as_bytes()[token.len() - 24..]));
        }
    }
    assert!(
        !contains(&bytes, cookie.as_bytes()),
        "the session id is stored in clear"
    );
    assert!(!contains(&bytes, b"eyJ"), "something JWT-like is stored in clear");
    assert!(
        !contains(&bytes, users[0].id.as_bytes()),
        "the user's sub is stored in clear"
    );
    if let Some(email) = &users[0].email {
        assert!(
            !contains(&bytes, email.as_bytes()),
            "the user's email is stored in clear"
        );
    }
}

#[tokio::test]
async fn sessions_survive_a_restart_on_the_same_database_and_keys() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    // A second process on the same file and keys reads the session.
    let sessions = avemint_core::session::Sessions::open(
        &app.settings.store.database_url,
        &app.settings.store.keys,
        app.settings.session.clone(),
        std::time::Duration::ZERO,
        avemint_base::clock::Clock::System,
    )
    .await
    .expect("open");
    let id = avemint_core::session::SessionId::parse(b.get(SESSION_COOKIE).expect("cookie")).expect("id");
    let s = sessions.load(&id.key()).await.expect("load").expect("present");
    assert_eq!(s.data.sub, app.emulator.users()[0].id);
    // With a different key the row cannot be opened: refused as written under a key this instance does not hold
    // (it cannot tell a key it lacks yet from one it dropped, issue 22 §3), and not deleted.
    let other = avemint_core::session::Sessions::open(
        &app.settings.store.database_url,
        &avemint_core::session::SealingKeys::from_keys(vec![[1; 32]]),
        app.settings.session.clone(),
        std::time::Duration::ZERO,
        avemint_base::clock::Clock::System,
    )
    .await
    .expect("open");
    assert!(matches!(
        other.load(&id.key()).await,
        Err(avemint_core::session::StoreError::KeyNotHeld(_))
    ));
    assert!(sessions.load(&id.key()).await.expect("load").is_some(), "row untouched");
    app.stop().await;
}

/// No session cache, so every request reads the row (a tampered row is seen at once).
fn uncached(extra: Options) -> Options {
    Options {
        renewal: Some(RenewalSettings {
            session_cache_ttl: Duration::ZERO,
            ..RenewalSettings::default()
        }),
        ..extra
    }
}

async fn sqlite_pool(app: &TestApp) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", app.db_path.display()))
        .await
        .expect("open the test database")
}

fn row_key(b: &Browser) -> Vec<u8> {
    SessionId::parse(b.get(SESSION_COOKIE).expect("cookie"))
        .expect("id")
        .key()
        .as_bytes()
        .to_vec()
}

/// Issue 13 item 6 "Session timestamps are not authenticated": with write access to the database, moving
/// `created_at` or `last_seen_at` forward used to keep a session alive for ever. Now the row is refused (401).
#[tokio::test]
async fn edited_session_timestamps_are_refused() {
    let app = TestApp::spawn_with(uncached(Options::default())).await;
    let pool = sqlite_pool(&app).await;
    for column in ["created_at", "last_seen_at"] {
        let mut b = app.signed_in_browser().await;
        assert_eq!(app.post_token(&mut b, true).await.status(), 200);
        // The refusal expires the cookie: take the row key first.
        let key = row_key(&b);
        let sql = format!("UPDATE sessions SET {column} = {column} + 300 * 86400 WHERE key_hash = ?");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.clone())
            .execute(&pool)
            .await
            .expect("update");
        assert_eq!(done.rows_affected(), 1);
        let resp = app.post_token(&mut b, true).await;
        assert_eq!(resp.status(), 401, "{column} edited: the session is refused");
        assert_eq!(support::error_code(resp).await, "login_required");
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE key_hash = ?")
            .bind(key)
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(left, 0, "the tampered row is deleted");
    }
    // An untouched session still works.
    let mut ok = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut ok, true).await.status(), 200);
    pool.close().await;
    app.stop().await;
}

/// A row whose columns cannot be read is a 401 for that one session, not a 503.
#[tokio::test]
async fn an_unreadable_session_row_is_a_401_for_that_session_only() {
    let app = TestApp::spawn_with(uncached(Options::default())).await;
    let pool = sqlite_pool(&app).await;
    let mut broken = app.signed_in_browser().await;
    let mut fine = app.signed_in_browser().await;
    sqlx::query("UPDATE sessions SET last_seen_at = 'not a number' WHERE key_hash = ?")
        .bind(row_key(&broken))
        .execute(&pool)
        .await
        .expect("update");
    for _ in 0..3 {
        let resp = app.post_token(&mut broken, true).await;
        assert_eq!(resp.status(), 401);
        assert_eq!(support::error_code(resp).await, "login_required");
        assert_eq!(app.post_token(&mut fine, true).await.status(), 200);
    }
    assert_eq!(
        app.http.get(app.url("/readyz")).send().await.expect("readyz").status(),
        200
    );
    pool.close().await;
    app.stop().await;
}

/// Signs the emulator's first user in three times, a second apart; with a cap of two, the first session ends.
async fn cap_ends_the_oldest(app: &TestApp) -> Vec<Browser> {
    let mut browsers = Vec::new();
    for _ in 0..3 {
        browsers.push(app.signed_in_browser().await);
        // Timestamps are whole seconds: keep the three sign-ins apart.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let statuses = {
        let mut out = Vec::new();
        for b in browsers.iter_mut() {
            out.push(app.post_token(b, true).await.status().as_u16());
        }
        out
    };
    assert_eq!(statuses, vec![401, 200, 200], "the oldest of three sessions is ended");
    browsers
}

fn capped(max: u32, database_url: Option<avemint_core::session::DatabaseUrl>) -> Options {
    uncached(Options {
        session: Some(SessionSettings {
            max_sessions_per_user: max,
            ..SessionSettings::default()
        }),
        database_url,
        ..Options::default()
    })
}

/// Issue 13 item 6 "Sessions per user"; on PostgreSQL, the store also holds
/// no plaintext `sub` (nor its unkeyed hash).
async fn sessions_per_user_are_capped(db: Option<avemint_core::session::DatabaseUrl>) {
    let app = TestApp::spawn_with(capped(2, db.clone())).await;
    cap_ends_the_oldest(&app).await;
    match db {
        None => sqlite_owners_are_one_keyed_hash(&app).await,
        Some(url) => postgres_rows_hold_no_plaintext_sub(&app, &url).await,
    }
    app.stop().await;
}

support::on_both_stores!(sessions_per_user_are_capped);

async fn sqlite_owners_are_one_keyed_hash(app: &TestApp) {
    let pool = sqlite_pool(app).await;
    let owners: Vec<Option<Vec<u8>>> = sqlx::query_scalar("SELECT owner_hash FROM sessions")
        .fetch_all(&pool)
        .await
        .expect("owners");
    assert_eq!(owners.len(), 2);
    assert!(owners.iter().all(|o| o.as_ref().is_some_and(|o| o.len() == 32)));
    assert_eq!(owners[0], owners[1], "one user, one index value");
    pool.close().await;
}

async fn postgres_rows_hold_no_plaintext_sub(app: &TestApp, url: &avemint_core::session::DatabaseUrl) {
    let dump = support::postgres_session_rows(url).await;
    assert_eq!(dump.len(), 2);
    let sub = app.emulator.users()[0].id.clone();
    let sub_hex: String = sub.bytes().map(|b| format!("{b:02x}")).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sub.as_bytes());
    let digest_hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    for row in &dump {
        assert!(!row.contains(&sub), "plaintext sub stored: {row}");
        assert!(!row.contains(&sub_hex), "hex-encoded sub stored");
        assert!(!row.contains(&digest_hex), "the unkeyed SHA-256 of sub is guessable");
    }
    let pool = sqlx::PgPool::connect(&support::database_url_string(url))
        .await
        .expect("connect");
    let owners: Vec<Option<Vec<u8>>> = sqlx::query_scalar("SELECT owner_hash FROM sessions")
        .fetch_all(&pool)
        .await
        .expect("owners");
    assert!(owners.iter().all(|o| o.as_ref().is_some_and(|o| o.len() == 32)));
    pool.close().await;
}

/// Issue 13 item 6 "Database files are world-readable": `avemint serve` started with a permissive umask (000)
/// creates `avemint.db`, `-wal` and `-shm` readable by its owner only.
#[cfg(unix)]
#[tokio::test]
async fn database_files_are_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = ave_emulator::Emulator::start(ave_emulator::EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..Default::default()
    })
    .await
    .expect("emulator");
    let db = dir.path().join("avemint.db");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_avemint"));
    let database_url = format!("sqlite://{}", db.display());
    let mut child = support::serve_env(
        &mut cmd,
        &support::AveClientEnv::of(&emulator),
        port,
        &database_url,
        &dir.path().join("keys"),
    )
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .spawn()
    .expect("avemint serve starts");
    support::wait_ready(&base).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut b = Browser::default();
    support::sign_in_at(&http, &emulator, &base, &mut b).await;
    let modes: Vec<(String, Option<u32>)> = ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            let mode = std::fs::metadata(&path).ok().map(|m| m.permissions().mode() & 0o777);
            (format!("avemint.db{suffix}"), mode)
        })
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    // The control: with umask 000, a file created without care is world-writable.
    let control = dir.path().join("control");
    std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && : > \"$0\"")
        .arg(&control)
        .status()
        .expect("sh");
    assert_eq!(
        std::fs::metadata(&control).expect("control").permissions().mode() & 0o777,
        0o666
    );
    for (name, mode) in modes {
        assert_eq!(mode, Some(0o600), "{name}");
    }
}

/// A `sessions` row as someone reading the database sees it.
struct RawRow {
    key: Vec<u8>,
    created_at: i64,
    sealed: Vec<u8>,
    /// Every column's bytes, one after the other.
    all: Vec<u8>,
}

/// The rows of `sessions`, on either store.
async fn raw_session_rows(app: &TestApp, db: Option<&avemint_core::session::DatabaseUrl>) -> Vec<RawRow> {
    const SQL: &str = "SELECT key_hash, created_at, sealed, seen_mac, owner_hash, handle_hash FROM sessions";
    type Row = (Vec<u8>, i64, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Row> = match db {
        None => {
            let pool = sqlite_pool(app).await;
            let rows = sqlx::query_as(SQL).fetch_all(&pool).await.expect("rows");
            pool.close().await;
            rows
        }
        Some(url) => {
            let pool = sqlx::PgPool::connect(&support::database_url_string(url))
                .await
                .expect("connect");
            let rows = sqlx::query_as(SQL).fetch_all(&pool).await.expect("rows");
            pool.close().await;
            rows
        }
    };
    rows.into_iter()
        .map(|(key, created_at, sealed, mac, owner, handle)| {
            let mut all = key.clone();
            for column in [Some(sealed.clone()), mac, owner, handle].into_iter().flatten() {
                all.extend_from_slice(&column);
            }
            RawRow {
                key,
                created_at,
                sealed,
                all,
            }
        })
        .collect()
}

/// Replaces a row's sealed record (as an older avemint wrote it) on either store.
async fn set_sealed(app: &TestApp, db: Option<&avemint_core::session::DatabaseUrl>, key: &[u8], sealed: &[u8]) {
    const SQL: &str = "UPDATE sessions SET sealed = $1 WHERE key_hash = $2";
    let done = match db {
        None => {
            let pool = sqlite_pool(app).await;
            let done = sqlx::query(SQL)
                .bind(sealed)
                .bind(key)
                .execute(&pool)
                .await
                .expect("update");
            pool.close().await;
            done.rows_affected()
        }
        Some(url) => {
            let pool = sqlx::PgPool::connect(&support::database_url_string(url))
                .await
                .expect("connect");
            let done = sqlx::query(SQL)
                .bind(sealed)
                .bind(key)
                .execute(&pool)
                .await
                .expect("update");
            pool.close().await;
            done.rows_affected()
        }
    };
    assert_eq!(done, 1);
}

/// The associated data a stored session's record is sealed with: the row key and `created_at` (see
/// `avemint_core::session`).
fn record_aad(key: &[u8], created_at: i64) -> Vec<u8> {
    [key, b"|created_at|", &created_at.to_be_bytes()].concat()
}

/// The claims of the app JWT in a `POST /auth/token` answer that come from the session.
async fn claims_of(app: &TestApp, body: &serde_json::Value) -> [serde_json::Value; 5] {
    let claims = app
        .verify_for(body["access_token"].as_str().expect("token"), app.audience())
        .await
        .claims;
    ["sub", "sid", "email", "name", "handle"].map(|c| claims[c].clone())
}

/// Issue 25 (storage): a session's record is compact (version 2: binary, compressed, then sealed), every Ave token
/// stays sealed in the raw row, and a row whose record an older avemint wrote (version 1, JSON) keeps working.
async fn records_are_compact_sealed_and_old_ones_still_read(db: Option<avemint_core::session::DatabaseUrl>) {
    use base64::Engine as _;
    let app = TestApp::spawn_with(uncached(Options {
        claims: Some(r#"{"email":"{id_token.email}","name":"{id_token.name}","handle":"{user.handle}"}"#),
        database_url: db.clone(),
        ..Options::default()
    }))
    .await;
    let mut b = app.signed_in_browser().await;
    let first = app.post_token(&mut b, true).await;
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.expect("json");
    let expected = claims_of(&app, &first).await;
    assert!(expected.iter().all(|c| c.is_string()), "{expected:?}");

    // Every token Ave issued is sealed: neither its text nor the bytes its base64url encodes are in the row.
    let rows = raw_session_rows(&app, db.as_ref()).await;
    assert_eq!(rows.len(), 1);
    let RawRow {
        key,
        created_at,
        sealed,
        all: raw,
    } = &rows[0];
    let issued = app.emulator.issued_tokens();
    assert!(
        issued.len() >= 4,
        "access, access_token_jwt, id_token and refresh token: {}",
        issued.len()
    );
    for token in &issued {
        assert!(
            !contains(raw, &token.as_bytes()[token.len().saturating_sub(24)..]),
            "a token in clear"
        );
        for segment in token.split('.') {
            if let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment) {
                assert!(
                    !contains(raw, &bytes[..bytes.len().min(16)]),
                    "a token's decoded bytes in clear"
                );
            }
        }
    }
    assert!(
        !contains(raw, b"eyJ") && !contains(raw, b"\"alg\""),
        "nothing JWT-like in clear"
    );

    // The record is version 2, and much smaller than the same session as JSON (version 1).
    let sealer =
        avemint_core::session::Sealer::new(&app.settings.store.keys, avemint_core::session::Purpose::SessionStore);
    let aad = record_aad(key, *created_at);
    let opened = sealer
        .open(&aad, sealed)
        .expect("the record opens with its row key and created_at");
    assert_eq!(opened[0], 2, "version 2");
    let sessions = avemint_core::session::Sessions::open(
        &app.settings.store.database_url,
        &app.settings.store.keys,
        app.settings.session.clone(),
        Duration::ZERO,
        avemint_base::clock::Clock::System,
    )
    .await
    .expect("open");
    let session = sessions
        .load(
            &SessionId::parse(b.get(SESSION_COOKIE).expect("cookie"))
                .expect("id")
                .key(),
        )
        .await
        .expect("load")
        .expect("present");
    let v1 = serde_json::to_vec(&session.data).expect("json");
    assert_eq!(v1[0], b'{');
    assert!(
        opened.len() * 2 < v1.len(),
        "{} bytes as version 2, {} as JSON",
        opened.len(),
        v1.len()
    );

    // A record an older avemint wrote (JSON) is read as before.
    set_sealed(&app, db.as_ref(), key, &sealer.seal(&aad, &v1)).await;
    let again = app.post_token(&mut b, true).await;
    assert_eq!(again.status(), 200, "a version-1 record is served");
    let again: serde_json::Value = again.json().await.expect("json");
    assert_eq!(claims_of(&app, &again).await, expected, "with the same claims");
    app.stop().await;
}

support::on_both_stores!(records_are_compact_sealed_and_old_ones_still_read);
