//! `PendingLogin`: a sign-in between "Sign in" and Ave's callback (state,
//! nonce, PKCE verifier, return path, when it started), and its sealed form.
//!
//! It needs no server row: it travels sealed with AES-256-GCM (the session
//! keys, purpose `LoginCookie`), so it is bound to the browser that started the
//! sign-in and nobody else can read or forge it. The HTTP layer carries the
//! sealed text in the `__Host-avemint-login` cookie; this module decides what
//! goes in, how long it is good for, and whether a value opens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::return_path::ReturnPath;
use crate::session::Sealer;
use avemint_base::clock::UnixTime;
use avemint_base::secret::Secret;

/// How long a sign-in may take (Ave's authorization codes live 600 s).
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// The longest sealed value `encode_login` writes, whatever `return_to` is (checked by a unit test;
/// `return_to` is capped at `MAX_RETURN_PATH`).
pub const MAX_LOGIN_VALUE: usize = 1800;
/// Values longer than this are refused unopened.
const MAX_OPENED_LEN: usize = 4096;
/// How far in the future a sign-in's start may lie (clock skew between instances).
const MAX_SKEW: Duration = Duration::from_secs(60);

const LOGIN_AAD: &[u8] = b"avemint login cookie v1";

/// A sign-in in progress.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: Secret<String>,
    pub nonce: Secret<String>,
    pub verifier: Secret<String>,
    pub return_to: ReturnPath,
    /// When the sign-in started.
    pub started_at: UnixTime,
}

/// Why no pending sign-in could be read. The messages are answered to the browser as they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PendingLoginError {
    #[error("no sign-in is in progress in this browser (the login cookie is missing)")]
    Missing,
    #[error("the sign-in cookie is invalid")]
    Invalid,
    #[error("more than one sign-in cookie was sent; start again")]
    Ambiguous,
    #[error("the sign-in took too long; start again")]
    Expired,
}

/// The sealed, base64url text of `login`.
pub fn encode_login(sealer: &Sealer, login: &PendingLogin) -> String {
    // PendingLogin holds only strings and an integer: encoding cannot fail.
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(login).unwrap_or_default());
    URL_SAFE_NO_PAD.encode(sealer.seal(LOGIN_AAD, &plain))
}

/// Opens a sealed value made by `encode_login`, if it is still fresh at `now`.
pub fn decode_login(value: &str, sealer: &Sealer, now: UnixTime) -> Result<PendingLogin, PendingLoginError> {
    if value.is_empty() {
        return Err(PendingLoginError::Missing);
    }
    if value.len() > MAX_OPENED_LEN {
        return Err(PendingLoginError::Invalid);
    }
    let sealed = URL_SAFE_NO_PAD.decode(value).map_err(|_| PendingLoginError::Invalid)?;
    let plain = sealer
        .open(LOGIN_AAD, &sealed)
        .map_err(|_| PendingLoginError::Invalid)?;
    let login: PendingLogin = serde_json::from_slice(&plain).map_err(|_| PendingLoginError::Invalid)?;
    if now.saturating_duration_since(login.started_at) > LOGIN_TTL || login.started_at > now + MAX_SKEW {
        return Err(PendingLoginError::Expired);
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Purpose;
    use crate::session::SealingKeys;
    use crate::signin::return_path::MAX_RETURN_PATH;
    use proptest::prelude::*;

    fn sealer() -> Sealer {
        Sealer::new(&SealingKeys::from_keys(vec![[7; 32]]), Purpose::LoginCookie)
    }

    fn pending(return_to: &str) -> PendingLogin {
        PendingLogin {
            state: Secret::new("st".into()),
            nonce: Secret::new("no".into()),
            verifier: Secret::new("ve".into()),
            return_to: ReturnPath::parse(Some(return_to)),
            started_at: UnixTime::from_secs(1000),
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let s = sealer();
        let value = encode_login(&s, &pending("/x"));
        let back = decode_login(&value, &s, UnixTime::from_secs(1100)).expect("opens");
        assert_eq!(back.state.expose(), "st");
        assert_eq!(back.return_to.as_str(), "/x");
        assert_eq!(
            decode_login(&value, &s, UnixTime::from_secs(1001) + LOGIN_TTL).err(),
            Some(PendingLoginError::Expired)
        );
        assert_eq!(
            decode_login("", &s, UnixTime::from_secs(1000)).err(),
            Some(PendingLoginError::Missing)
        );
    }

    #[test]
    fn the_sealed_value_stays_small_whatever_return_to_is() {
        let s = sealer();
        // Real state, nonce and verifier are 43 characters; `"` doubles in JSON.
        let worst = PendingLogin {
            state: Secret::new("s".repeat(43)),
            nonce: Secret::new("n".repeat(43)),
            verifier: Secret::new("v".repeat(43)),
            return_to: ReturnPath::parse(Some(&format!("/{}", "\"".repeat(MAX_RETURN_PATH - 1)))),
            started_at: UnixTime::MIN,
        };
        assert_eq!(worst.return_to.as_str().len(), MAX_RETURN_PATH, "kept");
        let len = encode_login(&s, &worst).len();
        eprintln!("measured: the longest login cookie value is {len} characters");
        assert!(len <= MAX_LOGIN_VALUE, "{len} > {MAX_LOGIN_VALUE}");
        // A longer one is not kept at all.
        let long = pending(&format!("/{}", "a".repeat(MAX_RETURN_PATH)));
        assert_eq!(long.return_to.as_str(), "/");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_values_never_panics(v in ".{0,200}") {
            let _ = decode_login(&v, &sealer(), UnixTime::EPOCH);
        }
    }
}
