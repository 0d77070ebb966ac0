//! `examples/downstream.rs` against a live avemint: its verifier accepts real app
//! JWTs, refuses wrong `aud`/`iss`/`typ`/expired ones, caches the JWKS, follows a
//! key rotation and rate-limits re-fetches for unknown `kid`s; its poem API
//! answers over HTTP; with introspection on, it refuses a still-unexpired token
//! once its session is logged out (after its cached answer runs out).

mod support;

#[allow(dead_code)]
#[path = "../examples/downstream.rs"]
mod downstream;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use avemint_base::clock::Clock;
use downstream::{Verifier, VerifyError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Options, TestApp};

const AUDIENCE: &str = "https://api.example.com";

async fn app_jwt(app: &TestApp) -> String {
    let mut browser = app.signed_in_browser().await;
    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
}

/// The PKCS#8 PEM of the key that signs (the manifest's `current` key in `dir`).
fn current_key_pem(dir: &Path) -> String {
    let manifest = avemint_core::mint::keys::KeyDir::new(dir)
        .read_manifest()
        .expect("manifest");
    let current = manifest.current().expect("a current key");
    std::fs::read_to_string(dir.join(&current.file)).expect("pem")
}

/// Rotates the keys in `dir` as `avemint keys rotate --force` does: the next key signs, the old one is retired.
fn rotate_keys(dir: &Path) {
    avemint_core::mint::keys::KeyDir::new(dir)
        .rotate(avemint_core::mint::keys::Algorithm::Es256, Clock::System.now(), true)
        .expect("rotate");
}

/// Signs `claims` with the app's own key (as avemint would), with a chosen `typ` and `kid`.
fn sign(pem: &str, typ: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(typ.to_owned());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(pem.as_bytes()).expect("key")).expect("sign")
}

#[tokio::test]
async fn the_example_verifies_real_app_jwts_and_refuses_the_rest() {
    let app = TestApp::spawn().await;
    let token = app_jwt(&app).await;
    let verifier = Verifier::new(&app.address, AUDIENCE);
    let claims = verifier.verify(&token).await.expect("a real app JWT verifies");
    assert!(!claims.sub.is_empty());
    assert_eq!(claims.other["iss"], app.address.as_str());
    assert_eq!(verifier.jwks_fetches().await, 1);
    verifier.verify(&token).await.expect("verifies again");
    assert_eq!(verifier.jwks_fetches().await, 1, "keys are cached");

    let other_api = Verifier::new(&app.address, "https://other.example.com");
    assert!(matches!(
        other_api.verify(&token).await,
        Err(VerifyError::Invalid(ErrorKind::InvalidAudience))
    ));
    let other_issuer = Verifier::new(&app.address, AUDIENCE);
    // Same keys, but a token claiming another issuer.
    let pem = current_key_pem(&app.keys_dir);
    let now = Clock::System.now();
    let good =
        json!({"iss": app.address, "aud": AUDIENCE, "sub": "s", "iat": now, "exp": now + Duration::from_secs(60)});
    let k = kid(&token);
    other_issuer
        .verify(&sign(&pem, "at+jwt", &k, &good))
        .await
        .expect("a well-formed token signed by avemint's key verifies");
    let mut foreign = good.clone();
    foreign["iss"] = json!("https://evil.example.com");
    assert!(matches!(
        other_issuer.verify(&sign(&pem, "at+jwt", &k, &foreign)).await,
        Err(VerifyError::Invalid(ErrorKind::InvalidIssuer))
    ));
    assert!(matches!(
        other_issuer.verify(&sign(&pem, "JWT", &k, &good)).await,
        Err(VerifyError::WrongType)
    ));
    let mut expired = good.clone();
    expired["exp"] = json!(now - Duration::from_secs(120));
    assert!(matches!(
        other_issuer.verify(&sign(&pem, "at+jwt", &k, &expired)).await,
        Err(VerifyError::Invalid(ErrorKind::ExpiredSignature))
    ));
    let mut no_exp = good.clone();
    no_exp.as_object_mut().expect("object").remove("exp");
    let missing = other_issuer.verify(&sign(&pem, "at+jwt", &k, &no_exp)).await;
    assert!(
        matches!(missing, Err(VerifyError::Invalid(ErrorKind::MissingRequiredClaim(_)))),
        "{missing:?}"
    );
    assert!(matches!(
        other_issuer.verify("not.a.jwt").await,
        Err(VerifyError::Malformed)
    ));
    let hs256 = jsonwebtoken::encode(
        &Header {
            typ: Some("at+jwt".into()),
            kid: Some(k.clone()),
            ..Header::new(Algorithm::HS256)
        },
        &good,
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");
    assert!(matches!(
        other_issuer.verify(&hs256).await,
        Err(VerifyError::Invalid(ErrorKind::InvalidAlgorithm))
    ));

    // Unknown kids: at most one JWKS re-fetch per interval.
    let limited = Verifier::new(&app.address, AUDIENCE).with_min_refetch_interval(Duration::from_secs(60));
    limited.verify(&token).await.expect("verifies");
    for n in 0..5 {
        assert!(matches!(
            limited
                .verify(&sign(&pem, "at+jwt", &format!("made-up-{n}"), &good))
                .await,
            Err(VerifyError::UnknownKid)
        ));
    }
    assert_eq!(
        limited.jwks_fetches().await,
        1,
        "made-up kids do not trigger fetches within the interval"
    );
    let eager = Verifier::new(&app.address, AUDIENCE).with_min_refetch_interval(Duration::ZERO);
    eager.verify(&token).await.expect("verifies");
    assert!(eager.verify(&sign(&pem, "at+jwt", "made-up", &good)).await.is_err());
    assert_eq!(
        eager.jwks_fetches().await,
        2,
        "an unknown kid re-fetches once the interval has passed"
    );
}

#[tokio::test]
async fn the_example_follows_a_key_rotation() {
    let keys = tempfile::tempdir().expect("tempdir");
    let first = TestApp::spawn_with(Options {
        keys_dir: Some(keys.path().to_owned()),
        ..Options::default()
    })
    .await;
    let address = first.address.clone();
    let port = first.settings.listen.port();
    let old_token = app_jwt(&first).await;
    let verifier = Verifier::new(&address, AUDIENCE).with_min_refetch_interval(Duration::ZERO);
    verifier.verify(&old_token).await.expect("verifies");
    assert_eq!(verifier.jwks_fetches().await, 1);
    first.stop().await;

    // The keys rotate and avemint restarts: the former next key signs, the old one is still published.
    rotate_keys(keys.path());
    let second = TestApp::spawn_with(Options {
        keys_dir: Some(keys.path().to_owned()),
        port: Some(port),
        ..Options::default()
    })
    .await;
    assert_eq!(second.address, address);
    let new_token = app_jwt(&second).await;
    assert_ne!(kid(&new_token), kid(&old_token), "the new key signs");
    verifier
        .verify(&new_token)
        .await
        .expect("a token from the new key verifies");
    assert_eq!(
        verifier.jwks_fetches().await,
        1,
        "the new key was already published as `next`: no re-fetch needed"
    );
    verifier
        .verify(&old_token)
        .await
        .expect("tokens from the old key still verify");
    verifier.verify(&new_token).await.expect("verifies");
    assert_eq!(verifier.jwks_fetches().await, 1);
}

#[tokio::test]
async fn the_example_api_greets_the_bearer() {
    use poem::listener::{Acceptor, TcpAcceptor};
    let app = TestApp::spawn().await;
    let token = app_jwt(&app).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
    assert!(!acceptor.local_addr().is_empty());
    let api = downstream::app(Arc::new(Verifier::new(&app.address, AUDIENCE)));
    let server = tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(api));
    let url = format!("http://{addr}/hello");

    let resp = app.http.get(&url).bearer_auth(&token).send().await.expect("hello");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let claims = app.verify(&token).await.claims;
    assert_eq!(body["hello"], claims["sub"], "no name claim configured: greets the sub");

    let resp = app.http.get(&url).send().await.expect("hello");
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    assert_eq!(support::error_code(resp).await, "invalid_token");
    let resp = app
        .http
        .get(&url)
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .expect("hello");
    assert_eq!(resp.status(), 401);
    server.abort();
}

#[tokio::test]
async fn with_introspection_the_example_refuses_tokens_of_ended_sessions() {
    const SECRET: &str = "downstream-example-introspection-secret";
    let app = TestApp::spawn_with(Options {
        token_toml: Some(format!(
            "[[profiles]]\nname = \"api\"\naudience = \"{AUDIENCE}\"\n[profiles.introspection]\nsecret = \"{SECRET}\"\n"
        )),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let body: Value = app.post_token(&mut browser, true).await.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let cache_for = Duration::from_millis(700);
    let verifier = Verifier::new(&app.address, AUDIENCE).with_introspection("api", SECRET, cache_for);
    verifier.verify(&token).await.expect("active");
    verifier.verify(&token).await.expect("active, cached");
    assert_eq!(verifier.introspections(), 1, "the answer is reused");
    let resp = browser
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert!(resp.status().is_success());
    // Within the cache time the old answer stands (the documented trade-off); then the token is refused.
    verifier.verify(&token).await.expect("cached answer");
    tokio::time::sleep(cache_for).await;
    assert!(matches!(verifier.verify(&token).await, Err(VerifyError::Inactive)));
    assert_eq!(verifier.introspections(), 2);
    // A wrong secret is an error, never a pass.
    let wrong = Verifier::new(&app.address, AUDIENCE).with_introspection("api", "wrong", cache_for);
    assert!(matches!(wrong.verify(&token).await, Err(VerifyError::Introspection(_))));
}

/// A token delegated through the token service (RFC 8693) passes only when its actor (`act.sub`) is trusted.
#[tokio::test]
async fn the_example_checks_the_actor_of_delegated_tokens() {
    const SECRET: &str = "front-exchange-secret-0123456789abcdef";
    let app = TestApp::spawn_with(Options {
        token_toml: Some(format!(
            "[[profiles]]\nname = \"api\"\naudience = \"{AUDIENCE}\"\ndefault = true\n\n[[profiles]]\nname = \"front\"\n\
             audience = \"https://front.example\"\n[profiles.exchange]\nsecret = \"{SECRET}\"\nmay_exchange_to = [\"api\"]\n"
        )),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let resp = app.post_token_json(&mut browser, &json!({"profile": "front"})).await;
    let front: Value = resp.json().await.expect("json");
    let resp = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("front", Some(SECRET))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", front["access_token"].as_str().expect("token")),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("audience", AUDIENCE),
        ])
        .send()
        .await
        .expect("exchange");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token");
    let trusting = Verifier::new(&app.address, AUDIENCE).with_trusted_actors(["https://front.example".to_owned()]);
    let claims = trusting.verify(token).await.expect("a trusted actor's token verifies");
    assert_eq!(claims.other["act"], json!({"sub": "https://front.example"}));
    let wary = Verifier::new(&app.address, AUDIENCE);
    assert!(matches!(wary.verify(token).await, Err(VerifyError::UntrustedActor)));
    // A token of the user's own session (no `act`) passes either way.
    let own = app_jwt_of(&app, &mut browser).await;
    wary.verify(&own).await.expect("no act: verifies");
}

async fn app_jwt_of(app: &TestApp, browser: &mut support::Browser) -> String {
    let resp = app.post_token(browser, true).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}
