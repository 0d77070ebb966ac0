//! Every id_token defect is refused at the callback: no session, no cookie, a 4xx JSON error.

mod support;

use avemint::ave::emulator::IdTokenDefect;
use support::{Browser, SESSION_COOKIE, TestApp, error_code};

async fn sign_in_fails(app: &TestApp, defect: IdTokenDefect) {
    let label = format!("{defect:?}");
    app.emulator.set_id_token_defect(Some(defect));
    let mut b = Browser::default();
    let resp = app.sign_in(&mut b, None).await;
    assert_eq!(resp.status(), 400, "{label}");
    assert_eq!(error_code(resp).await, "invalid_token", "{label}");
    assert!(b.get(SESSION_COOKIE).is_none(), "{label}: no session cookie");
    app.emulator.set_id_token_defect(None);
}

#[tokio::test]
async fn each_id_token_defect_is_refused() {
    let app = TestApp::spawn().await;
    for defect in [
        IdTokenDefect::BadSignature,
        IdTokenDefect::AlgNone,
        IdTokenDefect::Hs256WithPublicKey,
        IdTokenDefect::WrongIssuer,
        IdTokenDefect::IssuerPrefix,
        IdTokenDefect::WrongAudience,
        IdTokenDefect::AudienceArrayWithoutAzp,
        IdTokenDefect::Expired,
        IdTokenDefect::IssuedInFuture,
        IdTokenDefect::WrongNonce,
        IdTokenDefect::MissingNonce,
        IdTokenDefect::MissingSub,
    ] {
        sign_in_fails(&app, defect).await;
    }
    // After all that, a clean sign-in still works.
    app.signed_in_browser().await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_causes_exactly_one_jwks_refetch_and_then_succeeds() {
    let app = TestApp::spawn().await;
    let before = app.emulator.jwks_fetches();
    app.emulator.rotate_signing_key();
    let mut b = Browser::default();
    let resp = app.sign_in(&mut b, None).await;
    assert_eq!(resp.status(), 302, "sign-in succeeds after Ave rotated its key");
    assert_eq!(app.emulator.jwks_fetches() - before, 1);
    assert!(b.get(SESSION_COOKIE).is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_kid_that_is_never_published_fails_after_one_refetch_and_floods_do_not_refetch() {
    let app = TestApp::spawn().await;
    let before = app.emulator.jwks_fetches();
    app.emulator.set_id_token_defect(Some(IdTokenDefect::UnpublishedKid));
    for _ in 0..3 {
        let mut b = Browser::default();
        let resp = app.sign_in(&mut b, None).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(error_code(resp).await, "invalid_token");
        assert!(b.get(SESSION_COOKIE).is_none());
    }
    assert_eq!(
        app.emulator.jwks_fetches() - before,
        1,
        "one re-fetch per cooldown, however many unknown kids"
    );
    app.stop().await;
}
