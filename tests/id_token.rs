//! Every id_token defect is refused at the callback: no session, no cookie, a 4xx JSON error.

mod support;

use ave_emulator::IdTokenDefect;
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

/// Ave replaced its key but kept the `kid`: the cached key fails the signature, one re-fetch finds the new key and
/// the sign-in succeeds. A bad signature that stays bad is refused after at most one re-fetch per cooldown.
#[tokio::test]
async fn a_bad_signature_with_a_known_kid_refetches_once_and_then_succeeds_or_is_refused() {
    let app = TestApp::spawn().await;
    // The JWKS is in avemint's cache now.
    app.signed_in_browser().await;
    let before = app.emulator.jwks_fetches();
    let kid = app.emulator.current_kid();
    app.emulator.replace_signing_key_keeping_kid();
    assert_eq!(app.emulator.current_kid(), kid, "the same kid");
    let mut b = Browser::default();
    let resp = app.sign_in(&mut b, None).await;
    assert_eq!(
        resp.status(),
        302,
        "sign-in succeeds after Ave replaced its key under the same kid"
    );
    assert!(b.get(SESSION_COOKIE).is_some());
    assert_eq!(app.emulator.jwks_fetches() - before, 1, "exactly one re-fetch");
    // A signature no key verifies: refused, and a flood of them re-fetches at most once per cooldown (5 s).
    let before = app.emulator.jwks_fetches();
    app.emulator.set_id_token_defect(Some(IdTokenDefect::BadSignature));
    for _ in 0..3 {
        let mut b = Browser::default();
        let resp = app.sign_in(&mut b, None).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(error_code(resp).await, "invalid_token");
        assert!(b.get(SESSION_COOKIE).is_none());
    }
    assert!(
        app.emulator.jwks_fetches() - before <= 1,
        "one re-fetch per cooldown at most"
    );
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

mod header_and_refetch_limits {
    use std::time::Duration;

    use ave_emulator::{Emulator, EmulatorConfig};
    use avemint_base::clock::Clock;
    use avemint_base::secret::Secret;
    use avemint_base::web_url::Issuer;
    use avemint_core::ave::id_token::{self, NonceCheck};
    use avemint_core::ave::{AveClient, ClientOptions, IdTokenError};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    /// A token with the given header and plausible claims; the signature is junk
    /// (every check here must refuse before a signature would matter).
    fn forged(emulator: &Emulator, header: Value) -> String {
        let claims = json!({
            "iss": emulator.issuer(), "aud": emulator.client_id(), "sub": "u1",
            "iat": Clock::System.now(), "exp": Clock::System.now() + std::time::Duration::from_secs(300), "nonce": "n",
        });
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
        format!(
            "{}.{}.{}",
            enc(&header),
            enc(&claims),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        )
    }

    async fn setup(cooldown: Duration) -> (Emulator, AveClient) {
        let emulator = Emulator::start(EmulatorConfig::default()).await.expect("emulator");
        let client = AveClient::new(
            Issuer::parse(&emulator.issuer()).expect("issuer"),
            emulator.client_id().to_owned(),
            Secret::new(emulator.client_secret().to_owned()),
            ClientOptions {
                jwks_refetch_cooldown: cooldown,
                ..ClientOptions::default()
            },
        )
        .expect("client");
        (emulator, client)
    }

    #[tokio::test]
    async fn key_pointing_headers_are_refused_without_any_outbound_fetch() {
        let (emulator, client) = setup(Duration::from_secs(60)).await;
        // A server the attacker's header points at: it must never see a connection.
        let bait = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        bait.set_nonblocking(true).expect("nonblocking");
        let bait_url = format!("http://{}/jwks.json", bait.local_addr().expect("addr"));
        for name in ["jku", "x5u", "jwk", "x5c", "crit"] {
            let value = match name {
                "jku" | "x5u" => json!(bait_url),
                "jwk" => json!({"kty":"RSA","n":"AQAB","e":"AQAB"}),
                "x5c" => json!(["MIIB"]),
                _ => json!(["exp"]),
            };
            // An unknown kid too: without the header check this would cause a JWKS re-fetch.
            let token = forged(&emulator, json!({"alg":"RS256","kid":"not-published", name: value}));
            let err = id_token::validate(&client, &token, NonceCheck::Expect("n"), Clock::System.now())
                .await
                .expect_err("refused");
            assert!(
                matches!(err, IdTokenError::ForbiddenHeader(ref h) if h == name),
                "{name}: {err}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            matches!(bait.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nobody connected to the URL named in jku/x5u"
        );
        assert_eq!(emulator.jwks_fetches(), 0, "not even Ave's own JWKS was fetched");
        emulator.shutdown().await;
    }

    #[tokio::test]
    async fn a_flood_of_random_kids_causes_at_most_one_jwks_fetch_per_interval() {
        let cooldown = Duration::from_millis(400);
        let (emulator, client) = setup(cooldown).await;
        client.key_set().await.expect("keys load");
        assert_eq!(emulator.jwks_fetches(), 1);
        for round in 1..=2usize {
            let tokens: Vec<String> = (0..100)
                .map(|i| forged(&emulator, json!({"alg":"RS256","kid": format!("random-{round}-{i}")})))
                .collect();
            let results = futures_util::future::join_all(
                tokens
                    .iter()
                    .map(|t| id_token::validate(&client, t, NonceCheck::Expect("n"), Clock::System.now())),
            )
            .await;
            for r in results {
                assert!(matches!(r, Err(IdTokenError::UnknownKey)), "{:?}", r.err());
            }
            assert_eq!(
                emulator.jwks_fetches(),
                1 + round,
                "round {round}: 100 unknown kids cost exactly one re-fetch"
            );
            // Sequential stragglers inside the same interval cost nothing.
            for i in 0..20 {
                let t = forged(&emulator, json!({"alg":"RS256","kid": format!("late-{round}-{i}")}));
                let r = id_token::validate(&client, &t, NonceCheck::Expect("n"), Clock::System.now()).await;
                assert!(matches!(r, Err(IdTokenError::UnknownKey)));
            }
            assert_eq!(emulator.jwks_fetches(), 1 + round);
            tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
        }
        emulator.shutdown().await;
    }
}

/// The pure validator against the fuzz fixture's key set: the committed seeds
/// mean what their names say (this keeps the fuzz corpus honest, too).
#[test]
fn validate_with_keys_on_the_fuzz_seeds() {
    use avemint_core::ave::IdTokenError as E;
    use avemint_core::ave::KeySet;
    use avemint_core::ave::id_token::{NonceCheck, validate_with_keys};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let keys = KeySet::parse(&std::fs::read(dir.join("fixtures/jwks.json")).expect("jwks")).expect("parses");
    let seed = |name: &str| std::fs::read_to_string(dir.join("corpus/id_token").join(name)).expect("seed");
    let check = |name: &str, nonce| {
        validate_with_keys(
            &keys,
            "https://ave.fuzz.example",
            "app_fuzz",
            &seed(name),
            nonce,
            avemint_base::clock::UnixTime::from_secs(1_800_000_000),
        )
    };
    let ok = check("valid", NonceCheck::Expect("fuzz-nonce")).expect("the valid seed validates");
    assert_eq!(ok.sub(), "6f1c2b9e-1d2a-4c55-9a0b-3f4e5d6c7b8a");
    assert!(check("valid_no_kid", NonceCheck::Expect("fuzz-nonce")).is_ok());
    assert!(check("valid_aud_array", NonceCheck::Expect("fuzz-nonce")).is_ok());
    assert!(check("no_nonce", NonceCheck::NotExpected).is_ok());
    assert!(matches!(check("valid", NonceCheck::Expect("other")), Err(E::Nonce)));
    assert!(matches!(
        check("no_nonce", NonceCheck::Expect("fuzz-nonce")),
        Err(E::Nonce)
    ));
    assert!(matches!(check("wrong_iss", NonceCheck::NotExpected), Err(E::Issuer)));
    assert!(matches!(check("expired", NonceCheck::NotExpected), Err(E::Expired)));
    assert!(matches!(
        check("future_iat", NonceCheck::NotExpected),
        Err(E::IssuedInFuture)
    ));
    assert!(check("string_exp", NonceCheck::NotExpected).is_err());
    assert!(matches!(
        check("unknown_kid", NonceCheck::NotExpected),
        Err(E::UnknownKey)
    ));
    assert!(matches!(
        check("jku", NonceCheck::NotExpected),
        Err(E::ForbiddenHeader(_))
    ));
    assert!(matches!(
        check("x5u", NonceCheck::NotExpected),
        Err(E::ForbiddenHeader(_))
    ));
    assert!(matches!(
        check("crit", NonceCheck::NotExpected),
        Err(E::ForbiddenHeader(_))
    ));
    assert!(matches!(
        check("alg_none", NonceCheck::NotExpected),
        Err(E::ForbiddenAlgorithm)
    ));
    assert!(matches!(
        check("hs256", NonceCheck::NotExpected),
        Err(E::ForbiddenAlgorithm)
    ));
    assert!(matches!(
        check("bad_sig", NonceCheck::NotExpected),
        Err(E::BadSignature)
    ));
    assert!(matches!(check("two_parts", NonceCheck::NotExpected), Err(E::Malformed)));
}
