//! The callback's query handling: form-urlencoded parsing, `state` checked
//! against the pending sign-in, and the return path. Whatever the query says,
//! the state check passes only for the exact state, and the return path stays
//! on this origin.
#![no_main]

use avemint_base::secret::Secret;
use avemint_core::signin::{Callback, PendingLogin, ReturnPath, SignInError, check_state};
use libfuzzer_sys::fuzz_target;

const STATE: &str = "Zm9vYmFyLXN0YXRlLWZvci1mdXp6aW5nLTEyMzQ1Njc4OTA";

fuzz_target!(|data: &[u8]| {
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut return_to = None;
    // First occurrence wins, as in the HTTP layer's query extraction.
    for (k, v) in url::form_urlencoded::parse(data) {
        let slot = match k.as_ref() {
            "code" => &mut code,
            "state" => &mut state,
            "error" => &mut error,
            "return_to" => &mut return_to,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    let return_path = ReturnPath::parse(return_to.as_deref());
    let p = return_path.as_str();
    assert!(p.starts_with('/'), "{p:?}");
    assert!(!p.starts_with("//") && !p.starts_with("/\\"), "{p:?}");
    assert!(p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'), "{p:?}");
    let joined = url::Url::parse("https://avemint.example/")
        .and_then(|base| base.join(p))
        .expect("a return path joins");
    assert_eq!(joined.host_str(), Some("avemint.example"));

    let pending = PendingLogin {
        state: Secret::new(STATE.to_owned()),
        nonce: Secret::new("nonce".to_owned()),
        verifier: Secret::new("verifier".to_owned()),
        return_to: return_path,
        started_at: avemint_base::clock::UnixTime::EPOCH,
    };
    let callback = Callback {
        code: code.as_deref(),
        state: state.as_deref(),
        error: error.as_deref(),
    };
    match check_state(&pending, &callback) {
        Ok(()) => {
            assert_eq!(state.as_deref(), Some(STATE));
            assert!(error.is_none());
        }
        Err(SignInError::AccessDenied | SignInError::ProviderError) => assert_eq!(state.as_deref(), Some(STATE)),
        Err(e) => {
            assert_ne!(state.as_deref(), Some(STATE), "{e}");
            // Messages never echo what the query carried: each is one of a fixed set.
            let text = e.to_string();
            let fixed = [
                SignInError::MissingParameter("state").to_string(),
                SignInError::MalformedParameter("state").to_string(),
                SignInError::StateMismatch.to_string(),
            ];
            assert!(fixed.contains(&text), "{text}");
        }
    }
});
