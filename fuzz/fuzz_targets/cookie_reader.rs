//! avemint's own `Cookie` header reader (`find`, `values`, `counted_len`).
//! The input is the raw bytes of one or more `Cookie` headers, one per line.
//! Arbitrary bytes must never panic, and the exact-name rules must hold: a
//! look-alike crumb sent first and a non-ASCII crumb sent last change nothing.
#![no_main]

use std::sync::OnceLock;

use avemint_core::session::SealingKeys;
use avemint::http::cookies::{LOGIN_COOKIE, SESSION_COOKIE, Sent, counted_len, find, values};
use avemint_core::session::{Purpose, Sealer};
use avemint_core::signin::decode_login;
use libfuzzer_sys::fuzz_target;

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::new(&SealingKeys::from_keys(vec![[42; 32]]), Purpose::LoginCookie))
}

fuzz_target!(|data: &[u8]| {
    let headers: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let raw_total: usize = headers.iter().map(|h| h.len() + 2).sum();
    assert!(counted_len(headers.iter().copied()) <= raw_total);
    for name in [SESSION_COOKIE, LOGIN_COOKIE] {
        let found = find(headers.iter().copied(), name);
        let all = values(headers.iter().copied(), name);
        match found {
            Sent::Absent => assert!(all.is_empty()),
            Sent::Once(v) => {
                assert_eq!(all, vec![v]);
                assert!(!v.contains(&b';'));
                if let Ok(s) = std::str::from_utf8(v) {
                    let _ = decode_login(s, sealer(), avemint_base::clock::UnixTime::from_secs(1_800_000_000));
                }
            }
            Sent::Ambiguous => assert!(all.len() > 1),
        }
        // A tossed look-alike sent first, and a non-ASCII crumb sent last, change nothing.
        let rest = name.strip_prefix("__Host-").unwrap_or(name);
        let mut first = format!("__Host%2D{rest}=tossed; %5F%5FHost-{rest}=x; __%48ost-{rest}=y; ").into_bytes();
        first.extend_from_slice(headers[0]);
        let mut last = headers[headers.len() - 1].to_vec();
        last.extend_from_slice(b"; pref=\xc3\xa9");
        let mut changed: Vec<&[u8]> = headers.clone();
        changed[0] = &first;
        assert_eq!(find(changed.iter().copied(), name), found);
        let n = changed.len();
        if n > 1 {
            changed[n - 1] = &last;
            assert_eq!(find(changed.iter().copied(), name), found);
        } else {
            let mut both = first.clone();
            both.extend_from_slice(b"; pref=\xc3\xa9");
            assert_eq!(find([both.as_slice()], name), found);
        }
    }
});
