//! Mint rate per signing algorithm: `Minter::mint` (claims, `jti`, signature)
//! and the bare signature, with keys parsed once as the service holds them.
//!
//! Run: `cargo bench --bench signing`; smoke mode (CI): `cargo bench --bench signing -- --test`.
//! The profile has no claims hook, so `mint` completes on its first poll.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use avemint::config::Settings;
use avemint_base::clock::{ManualClock, UnixTime};
use avemint_core::mint::keys::{Algorithm, KeyPolicy, LiveKeys};
use avemint_core::mint::{Minter, Profiles, Subject};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use serde_json::{Map, Value, json};

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn signing(c: &mut Criterion) {
    let id_token = object(json!({
        "sub": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "email": "ada@example.com",
        "name": "Ada Lovelace",
    }));
    let user = object(json!({"handle": "ada"}));
    // The token settings through the same loader as `serve`, over an in-memory environment.
    let env: std::collections::BTreeMap<String, String> = [
        ("AVE_CLIENT_ID", "app_0123"),
        ("AVE_CLIENT_SECRET", "bench-secret"),
        ("AVEMINT_PUBLIC_URL", "https://app.example.com"),
        ("AVEMINT_SESSION_KEYS", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio="),
        ("AVEMINT_TOKEN_AUDIENCE", "https://api.example.com"),
        (
            "AVEMINT_TOKEN_CLAIMS",
            r#"{"email":"{id_token.email}","handle":"{user.handle}","tier":"gold"}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let token = Settings::load(None, &env).expect("settings").token;
    let mut mint = c.benchmark_group("mint");
    mint.throughput(Throughput::Elements(1));
    mint.measurement_time(Duration::from_secs(3));
    let mut dirs = Vec::new();
    let mut minters = Vec::new();
    for alg in Algorithm::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000)).clock();
        let keys = Arc::new(
            LiveKeys::open(
                dir.path(),
                KeyPolicy {
                    algorithm: alg,
                    rotation: None,
                },
                clock.clone(),
            )
            .expect("keys"),
        );
        dirs.push(dir);
        let profiles = Profiles::build(&token).expect("profiles");
        let minter = Minter::new(
            keys,
            "https://app.example.com".into(),
            "app_0123".into(),
            profiles,
            token.max_token_bytes(),
            clock,
        );
        let subject = Subject {
            sub: "0f8fad5b-d9cb-469f-a165-70867728950e",
            sid: "sid_abc",
            id_token: &id_token,
            user: Some(&user),
        };
        let profiles = minter.profiles();
        let profile = profiles.default_profile();
        mint.bench_function(alg.jws(), |b| {
            b.iter(|| {
                let minted = minter
                    .mint(profile, black_box(&subject))
                    .now_or_never()
                    .expect("no hook: ready at once")
                    .expect("mint");
                black_box(minted)
            })
        });
        minters.push((alg, minter));
    }
    mint.finish();

    let payload = br#"{"iss":"https://app.example.com","sub":"0f8fad5b-d9cb-469f-a165-70867728950e","aud":"https://api.example.com","iat":1800000000,"exp":1800000300}"#;
    let mut sign = c.benchmark_group("sign");
    sign.throughput(Throughput::Elements(1));
    sign.measurement_time(Duration::from_secs(3));
    for (alg, minter) in &minters {
        let ring = minter.keys().current();
        let key = ring.signing_key();
        sign.bench_function(alg.jws(), |b| {
            b.iter(|| black_box(key.sign(black_box(payload)).expect("sign")))
        });
    }
    sign.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
