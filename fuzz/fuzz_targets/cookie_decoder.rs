//! The two cookie decoders: the sealed `__Host-avemint-login` value and the
//! `__Host-avemint` session id. Arbitrary bytes must never panic, and only a
//! value sealed under the key can ever open.
#![no_main]

use std::sync::OnceLock;

use avemint_base::clock::UnixTime;
use avemint::http::cookies::MAX_COOKIE_LEN;
use avemint_core::session::SealingKeys;
use avemint_core::session::{Purpose, Sealer, SessionId};
use avemint_core::signin::{PendingLoginError, decode_login};
use libfuzzer_sys::fuzz_target;

/// The key the seed corpus was sealed with.
const KEY: [u8; 32] = [42; 32];
/// The time the seed corpus was made (unix seconds), so seeds are fresh.
const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::new(&SealingKeys::from_keys(vec![KEY]), Purpose::LoginCookie))
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match decode_login(value, sealer(), NOW) {
        Ok(login) => {
            assert!(value.len() <= MAX_COOKIE_LEN);
            let back = login.return_to.as_str();
            assert!(back.starts_with('/') && !back.starts_with("//"), "return path escaped: {back:?}");
        }
        Err(PendingLoginError::Missing) => assert!(value.is_empty()),
        Err(_) => {}
    }
    if let Some(id) = SessionId::parse(value) {
        // A parsed id re-encodes to the value it came from.
        assert_eq!(id.to_cookie_value().expose(), value);
    }
});
