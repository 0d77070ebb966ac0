//! The id_token validator against a fixed in-memory key set (no network):
//! header checks, signature, `iss`/`aud`/`azp`/`exp`/`iat`/`nonce`/`sub`.
//! Never a panic, and anything accepted really is an RS256 token for this
//! client from this issuer with the expected nonce.
#![no_main]

use std::sync::OnceLock;

use avemint_core::ave::KeySet;
use avemint_core::ave::id_token::{NonceCheck, validate_with_keys};
use libfuzzer_sys::fuzz_target;

/// The public half of a throw-away RSA key that signed the seed corpus.
const JWKS: &str = include_str!("../fixtures/jwks.json");
const ISSUER: &str = "https://ave.fuzz.example";
const CLIENT_ID: &str = "app_fuzz";
const NONCE: &str = "fuzz-nonce";
/// The seeds are valid at this time (unix seconds).
const NOW: avemint_base::clock::UnixTime = avemint_base::clock::UnixTime::from_secs(1_800_000_000);

fn keys() -> &'static KeySet {
    static K: OnceLock<KeySet> = OnceLock::new();
    K.get_or_init(|| KeySet::parse(JWKS.as_bytes()).expect("fixture JWKS parses"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for nonce in [NonceCheck::Expect(NONCE), NonceCheck::NotExpected] {
        if let Ok(valid) = validate_with_keys(keys(), ISSUER, CLIENT_ID, token, nonce, NOW) {
            let claims = valid.claims();
            assert_eq!(claims.get("iss").and_then(|v| v.as_str()), Some(ISSUER));
            assert!(!valid.sub().is_empty());
            if let NonceCheck::Expect(n) = nonce {
                assert_eq!(claims.get("nonce").and_then(|v| v.as_str()), Some(n));
            }
        }
    }
});
