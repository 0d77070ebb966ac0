//! The session store keeps Ave's tokens encrypted: the database file holds none of them.

mod support;

use support::{SESSION_COOKIE, TestApp};

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
    let sessions = avemint::session::Sessions::open(
        &app.settings.database_url,
        &app.settings.session_keys,
        app.settings.session.clone(),
        std::time::Duration::ZERO,
    )
    .await
    .expect("open");
    let id = avemint::session::SessionId::parse(b.get(SESSION_COOKIE).expect("cookie")).expect("id");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let s = sessions.load(&id.key(), now).await.expect("load").expect("present");
    assert_eq!(s.data.sub, app.emulator.users()[0].id);
    // With a different key the row cannot be opened (and is reported absent, not deleted).
    let other = avemint::session::Sessions::open(
        &app.settings.database_url,
        &avemint::config::SessionKeys::from_keys(vec![[1; 32]]),
        app.settings.session.clone(),
        std::time::Duration::ZERO,
    )
    .await
    .expect("open");
    assert!(other.load(&id.key(), now).await.expect("load").is_none());
    assert!(
        sessions.load(&id.key(), now).await.expect("load").is_some(),
        "row untouched"
    );
    app.stop().await;
}
