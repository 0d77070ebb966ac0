//! Ave's token-endpoint answers: the success body parser and the error
//! classifier. Never a panic; tokens never show in `Debug`; error codes kept
//! from a body are always short code-like strings.
#![no_main]

use std::time::Duration;

use avemint_core::ave::client::classify_error;
use avemint_core::ave::{AveError, TokenResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = serde_json::from_slice::<TokenResponse>(data) {
        // `Debug` must not depend on any token's content: with every token
        // replaced, it prints exactly the same.
        let mut value: serde_json::Value = serde_json::from_slice(data).expect("parsed once already");
        for field in ["access_token", "access_token_jwt", "id_token", "refresh_token"] {
            if let Some(v) = value.get_mut(field).filter(|v| v.is_string()) {
                *v = serde_json::Value::String("X".into());
            }
        }
        let blanked: TokenResponse = serde_json::from_value(value).expect("still a token response");
        assert_eq!(format!("{parsed:?}"), format!("{blanked:?}"), "Debug shows token content");
    }
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) % 600, rest),
        _ => (400, data),
    };
    let retry = (status % 3 == 0).then(|| Duration::from_secs(u64::from(status)));
    let err = classify_error(status, body, retry);
    match &err {
        AveError::OAuth { status: s, code } => {
            assert!((400..500).contains(s));
            assert!(!code.is_empty() && code.len() <= 64);
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code:?}");
        }
        AveError::RateLimited { retry_after } => {
            assert_eq!(status, 429);
            assert_eq!(*retry_after, retry);
        }
        AveError::Server { status: s } => assert!(*s >= 500),
        _ => {}
    }
    let _ = err.to_string();
});
