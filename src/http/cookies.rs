//! The two cookies avemint sets, always `__Host-`, `HttpOnly`, `Secure`,
//! `SameSite=Lax`, `Path=/`.
//!
//! - `__Host-avemint`: the opaque session id (256 random bits).
//! - `__Host-avemint-login`: the pending sign-in (state, nonce, PKCE verifier,
//!   return path), sealed with AES-256-GCM so it is bound to this browser and
//!   needs no server row.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::web::cookie::{Cookie, CookieJar, SameSite};
use serde::{Deserialize, Serialize};

use super::return_path::ReturnPath;
use crate::secret::Secret;
use crate::session::{Sealer, SessionId};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-avemint";
/// The pending-login cookie's name.
pub const LOGIN_COOKIE: &str = "__Host-avemint-login";
/// How long a sign-in may take (Ave's authorization codes live 600 s).
pub const LOGIN_TTL_SECS: i64 = 600;
/// Cookie values longer than this are ignored unread.
pub const MAX_COOKIE_LEN: usize = 4096;

const LOGIN_AAD: &[u8] = b"avemint login cookie v1";

fn base(name: &str, value: &str, max_age: Duration) -> Cookie {
    let mut c = Cookie::new_with_str(name, value);
    c.set_http_only(true);
    c.set_secure(true);
    c.set_same_site(SameSite::Lax);
    c.set_path("/");
    c.set_max_age(max_age);
    c
}

/// Sets the session cookie.
pub fn set_session(jar: &CookieJar, id: &SessionId, max_age: Duration) {
    jar.add(base(SESSION_COOKIE, id.to_cookie_value().expose(), max_age));
}

/// Expires the session cookie (with the same attributes, or browsers ignore it).
pub fn clear_session(jar: &CookieJar) {
    jar.add(base(SESSION_COOKIE, "", Duration::ZERO));
}

/// Reads the session id from the request, if present and well-formed.
pub fn session_id(jar: &CookieJar) -> Option<SessionId> {
    let c = jar.get(SESSION_COOKIE)?;
    let v = c.value_str();
    if v.len() > MAX_COOKIE_LEN {
        return None;
    }
    SessionId::parse(v)
}

/// A sign-in in progress, carried in the sealed login cookie.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: Secret<String>,
    pub nonce: Secret<String>,
    pub verifier: Secret<String>,
    pub return_to: ReturnPath,
    /// Unix seconds when the sign-in started.
    pub started_at: i64,
}

/// Why the login cookie was not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginCookieError {
    #[error("no sign-in is in progress in this browser (the login cookie is missing)")]
    Missing,
    #[error("the sign-in cookie is invalid")]
    Invalid,
    #[error("the sign-in took too long; start again")]
    Expired,
}

/// Sets the login cookie.
pub fn set_login(jar: &CookieJar, sealer: &Sealer, login: &PendingLogin) {
    // PendingLogin holds only strings and an integer: encoding cannot fail.
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(login).unwrap_or_default());
    let value = URL_SAFE_NO_PAD.encode(sealer.seal(LOGIN_AAD, &plain));
    jar.add(base(LOGIN_COOKIE, &value, Duration::from_secs(LOGIN_TTL_SECS as u64)));
}

/// Expires the login cookie.
pub fn clear_login(jar: &CookieJar) {
    jar.add(base(LOGIN_COOKIE, "", Duration::ZERO));
}

/// Opens the login cookie.
pub fn login(jar: &CookieJar, sealer: &Sealer, now: i64) -> Result<PendingLogin, LoginCookieError> {
    let c = jar.get(LOGIN_COOKIE).ok_or(LoginCookieError::Missing)?;
    decode_login(c.value_str(), sealer, now)
}

/// Decodes a login cookie value (separate for fuzzing and property tests).
pub fn decode_login(value: &str, sealer: &Sealer, now: i64) -> Result<PendingLogin, LoginCookieError> {
    if value.is_empty() {
        return Err(LoginCookieError::Missing);
    }
    if value.len() > MAX_COOKIE_LEN {
        return Err(LoginCookieError::Invalid);
    }
    let sealed = URL_SAFE_NO_PAD.decode(value).map_err(|_| LoginCookieError::Invalid)?;
    let plain = sealer.open(LOGIN_AAD, &sealed).map_err(|_| LoginCookieError::Invalid)?;
    let login: PendingLogin = serde_json::from_slice(&plain).map_err(|_| LoginCookieError::Invalid)?;
    if now - login.started_at > LOGIN_TTL_SECS || login.started_at > now + 60 {
        return Err(LoginCookieError::Expired);
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionKeys;
    use crate::session::Purpose;
    use proptest::prelude::*;

    fn sealer() -> Sealer {
        Sealer::new(&SessionKeys::from_keys(vec![[7; 32]]), Purpose::LoginCookie)
    }

    #[test]
    fn login_cookie_round_trip_and_expiry() {
        let jar = CookieJar::default();
        let s = sealer();
        let pending = PendingLogin {
            state: Secret::new("st".into()),
            nonce: Secret::new("no".into()),
            verifier: Secret::new("ve".into()),
            return_to: ReturnPath::parse(Some("/x")),
            started_at: 1000,
        };
        set_login(&jar, &s, &pending);
        let back = login(&jar, &s, 1100).expect("opens");
        assert_eq!(back.state.expose(), "st");
        assert_eq!(back.return_to.as_str(), "/x");
        assert!(matches!(
            login(&jar, &s, 1000 + LOGIN_TTL_SECS + 1),
            Err(LoginCookieError::Expired)
        ));
        let c = jar.get(LOGIN_COOKIE).expect("set");
        assert!(c.http_only() && c.secure());
        assert_eq!(c.path(), Some("/"));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_values_never_panics(v in ".{0,200}") {
            let _ = decode_login(&v, &sealer(), 0);
        }
    }
}
