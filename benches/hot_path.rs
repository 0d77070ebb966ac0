//! Criterion benches for the pieces of `POST /auth/token` and sign-in that run per request:
//! claim rendering, the session record's AEAD seal/open (and JSON decode), id_token
//! validation (offline, RS256), cookie decoding, and a session lookup that misses
//! the cache and goes to SQLite, and one the in-process cache answers.
//!
//! The full mint (`Minter::mint`) and signing per algorithm live in `benches/signing.rs`. Smoke mode for CI:
//! `cargo bench --bench hot_path -- --test`.

use std::hint::black_box;
use std::time::Duration;

use avemint::http::cookies::{self, SESSION_COOKIE};
use avemint_base::clock::{Clock, ManualClock, UnixTime};
use avemint_base::secret::Secret;
use avemint_core::mint::claims::ClaimTemplate;
use avemint_core::session::{AveTokens, Purpose, Sealer, SessionData, SessionHandle, SessionId, Sessions};
use avemint_core::session::{DatabaseUrl, SealingKeys, SessionSettings};
use avemint_core::signin::{PendingLogin, ReturnPath, decode_login, encode_login};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

const NOW: u64 = 1_790_000_000;

/// `NOW` as a time.
fn at_now() -> UnixTime {
    UnixTime::from_unsigned(NOW)
}

/// A clock standing still at `NOW` (sessions never touch or expire while measured).
fn fixed_clock() -> Clock {
    ManualClock::new(at_now()).clock()
}
const CLIENT_ID: &str = "app_0123456789abcdef";
const ISSUER: &str = "https://aveid.net";

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("object literal"),
    }
}

/// The claims of a typical validated Ave id_token (profile + email scopes).
fn id_token_claims() -> Map<String, Value> {
    object(json!({
        "iss": ISSUER,
        "sub": "6f9619ff-8b86-d011-b42d-00cf4fc964ff",
        "aud": CLIENT_ID,
        "azp": CLIENT_ID,
        "exp": NOW + 600,
        "iat": NOW,
        "auth_time": NOW,
        "nonce": "n-0S6_WzA2Mj",
        "sid": "ave_session_7f3c2a",
        "name": "Ada Lovelace",
        "preferred_username": "ada",
        "email": "ada@example.com",
        "email_verified": true,
        "picture": "https://cdn.aveid.net/avatars/ada.png"
    }))
}

fn user() -> Map<String, Value> {
    object(
        json!({"id": "6f9619ff-8b86-d011-b42d-00cf4fc964ff", "displayName": "Ada Lovelace", "handle": "ada", "email": "ada@example.com", "avatarUrl": null}),
    )
}

const CLAIMS: &str = r#"{"tier":"gold","roles":["reader","writer"],"email":"{id_token.email}","name":"{id_token.name}","handle":"{user.handle}","avatar":"{user.avatarUrl}"}"#;

/// A session record of realistic size: Ave's opaque and JWT access tokens, an
/// RS256 id_token, a refresh token, the id_token's claims and the user object.
fn session_data() -> SessionData {
    let fake_jwt = |len: usize| {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str("eyJhbGciOiJSUzI1NiIsImtpZCI6ImF2ZS0yMDI2In0");
        }
        s.truncate(len);
        s
    };
    SessionData {
        sid: SessionHandle::generate(),
        sub: "6f9619ff-8b86-d011-b42d-00cf4fc964ff".into(),
        scope: "openid profile email offline_access".into(),
        tokens: AveTokens {
            access_token: Secret::new(format!("at_{}", "x".repeat(40))),
            access_token_jwt: Some(Secret::new(fake_jwt(760))),
            id_token: Secret::new(fake_jwt(900)),
            refresh_token: Some(Secret::new(format!("rt_{}", "y".repeat(60)))),
            access_expires_at: at_now() + Duration::from_secs(3600),
        },
        id_token_claims: id_token_claims(),
        user: Some(user()),
        signed_in_from: Default::default(),
    }
}

fn session_keys() -> SealingKeys {
    SealingKeys::from_keys(vec![[42; 32]])
}

fn claim_rendering(c: &mut Criterion) {
    let template = ClaimTemplate::parse_json(CLAIMS).expect("claims");
    let id = id_token_claims();
    let user = user();
    c.bench_function("claims/render_into (6 claims)", |b| {
        b.iter(|| {
            let mut out = Map::new();
            template.render_into(black_box(&id), Some(black_box(&user)), &mut out);
            out
        })
    });
}

fn randomness(c: &mut Criterion) {
    // What one call to the system CSPRNG costs: why `jti`s are drawn in batches (crates/avemint-core/src/mint/mod.rs).
    c.bench_function("random/16 bytes, one aws-lc call", |b| {
        b.iter(avemint_base::secret::random_bytes::<16>)
    });
}

fn session_record(c: &mut Criterion) {
    let sealer = Sealer::new(&session_keys(), Purpose::SessionStore);
    let data = session_data();
    let plain = serde_json::to_vec(&data).expect("json");
    let aad = SessionId::generate().key();
    let sealed = sealer.seal(aad.as_bytes(), &plain);
    let mut g = c.benchmark_group(format!("session_record ({} bytes JSON)", plain.len()));
    g.bench_function("seal", |b| b.iter(|| sealer.seal(aad.as_bytes(), black_box(&plain))));
    g.bench_function("open", |b| {
        b.iter(|| sealer.open(aad.as_bytes(), black_box(&sealed)).expect("opens"))
    });
    g.bench_function("open + decode SessionData", |b| {
        b.iter(|| {
            let plain = sealer.open(aad.as_bytes(), black_box(&sealed)).expect("opens");
            serde_json::from_slice::<SessionData>(&plain).expect("decodes")
        })
    });
    g.finish();
}

/// An RS256 id_token as Ave signs it, and the `jsonwebtoken` key and
/// validation that `ave::id_token::validate` uses (RS256 pinned, iss, aud,
/// exp, nbf, required claims, 30 s leeway), followed by the claim checks it
/// adds (`iat`, `sub`, `azp`, `nonce`).
fn id_token_validation(c: &mut Criterion) {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"ave-2026"}"#);
    let mut sig = vec![0u8; pair.public_modulus_len()];
    let public = pair.public_key();
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    let key = jsonwebtoken::DecodingKey::from_rsa_components(&n, &e).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.algorithms = vec![jsonwebtoken::Algorithm::RS256];
    v.leeway = 30;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[CLIENT_ID]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    // The token must be live for `validate_exp`: sign with the real clock's `exp`.
    let live = {
        let now = Clock::System.now();
        let mut claims = id_token_claims();
        claims.insert("exp".into(), json!(now + Duration::from_secs(600)));
        claims.insert("iat".into(), json!(now));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        let input = format!("{header}.{payload}");
        pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig))
    };
    c.bench_function("id_token/validate RS256 (jsonwebtoken + claim checks)", |b| {
        b.iter(|| {
            let data = jsonwebtoken::decode::<Map<String, Value>>(black_box(&live), &key, &v).expect("valid");
            let claims = data.claims;
            let ok = claims.get("iat").and_then(Value::as_f64).is_some()
                && claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
                && claims.get("azp").and_then(Value::as_str) == Some(CLIENT_ID)
                && claims.get("nonce").and_then(Value::as_str) == Some("n-0S6_WzA2Mj");
            assert!(ok);
            claims
        })
    });
}

fn cookie_decoding(c: &mut Criterion) {
    let id = SessionId::generate();
    let value = id.to_cookie_value();
    c.bench_function("cookies/session id parse + row key", |b| {
        b.iter(|| SessionId::parse(black_box(value.expose())).expect("parses").key())
    });

    let sealer = Sealer::new(&session_keys(), Purpose::LoginCookie);
    let pending = PendingLogin {
        state: Secret::new(URL_SAFE_NO_PAD.encode([1u8; 32])),
        nonce: Secret::new(URL_SAFE_NO_PAD.encode([2u8; 32])),
        verifier: Secret::new(URL_SAFE_NO_PAD.encode([3u8; 32])),
        return_to: ReturnPath::parse(Some("/app/settings")),
        started_at: at_now(),
    };
    let login = encode_login(&sealer, &pending);
    c.bench_function("cookies/decode_login", |b| {
        b.iter(|| decode_login(black_box(&login), &sealer, at_now() + Duration::from_secs(5)).expect("opens"))
    });

    // The session cookie last in a header of 4 KiB of other cookies (the most the size guard lets through).
    let mut header = (0..40)
        .map(|i| format!("app{i}={}", "v".repeat(90)))
        .collect::<Vec<_>>()
        .join("; ");
    header.push_str(&format!("; {SESSION_COOKIE}={}", value.expose()));
    c.bench_function("cookies/find the session cookie in 4 KiB of cookies", |b| {
        b.iter(|| cookies::find([black_box(header.as_bytes())], SESSION_COOKIE))
    });
}

/// `Sessions::load` with nothing cached: one SQLite read (WAL file, indexed by
/// key), AEAD open and JSON decode. This is what a session-cache miss adds.
fn session_lookup_miss(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("bench.db").display()));
    let (sessions, keys) = rt.block_on(async {
        // No in-process cache: every load below is a miss.
        let sessions = Sessions::open(
            &url,
            &session_keys(),
            SessionSettings::default(),
            Duration::ZERO,
            fixed_clock(),
        )
        .await
        .expect("store");
        let mut keys = Vec::new();
        for n in 0..1000 {
            // One user each: a user's sessions are capped (AVEMINT_MAX_SESSIONS_PER_USER).
            let data = SessionData {
                sub: format!("user-{n}"),
                ..session_data()
            };
            let id = sessions.create(&data).await.expect("create");
            keys.push(id.key());
        }
        (sessions, keys)
    });
    let mut i = 0usize;
    c.bench_function("session/load from SQLite (cache miss, 1000 rows)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            rt.block_on(sessions.load(&keys[i])).expect("store").expect("live")
        })
    });
}

/// `Sessions::get` answered by the in-process cache: what `POST /auth/token` pays per request on a hit.
fn session_lookup_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("bench.db").display()));
    let (sessions, key) = rt.block_on(async {
        let sessions = Sessions::open(
            &url,
            &session_keys(),
            SessionSettings::default(),
            Duration::from_secs(3600),
            fixed_clock(),
        )
        .await
        .expect("store");
        let id = sessions.create(&session_data()).await.expect("create");
        (sessions, id.key())
    });
    c.bench_function("session/get from the in-process cache (hit)", |b| {
        b.iter(|| {
            rt.block_on(sessions.get(black_box(&key)))
                .expect("store")
                .expect("live")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = claim_rendering, randomness, session_record, id_token_validation, cookie_decoding, session_lookup_miss, session_lookup_hit
}
criterion_main!(benches);
