//! The two cookies avemint sets, always `__Host-`, `HttpOnly`, `Secure`,
//! `SameSite=Lax`, `Path=/`, and avemint's own reader and writer for them.
//!
//! - `__Host-avemint`: the opaque session id (256 random bits).
//! - `__Host-avemint-login`: the pending sign-in, sealed by `signin::pending`
//!   (this module carries the sealed text and never opens it).
//!
//! Why not a general cookie jar: browsers apply the `__Host-` rules (Secure,
//! `Path=/`, no `Domain`) to the literal name only, so a name that a jar
//! percent-decodes into `__Host-avemint` (`__Host%2Davemint`, `%5F%5FHost-…`)
//! can be planted by a sibling subdomain and shadow the genuine cookie; and a
//! jar that gives up on a whole `Cookie` header because one crumb is not ASCII
//! loses the session with it. So the reader here works on the raw header bytes
//! (every `Cookie` header: HTTP/2 may split them), splits on `;`, trims optional
//! whitespace, skips malformed crumbs without discarding the others, and
//! matches the exact raw names only, never after decoding.
//!
//! A name sent more than once (exact raw name, e.g. `__Host-avemint=a;
//! __Host-avemint=b`) is ambiguous: a browser holds at most one `__Host-`
//! cookie of a name for a host (no `Domain`, `Path=/` only), and no other site
//! can set one, so two mean the request did not come from a conforming browser
//! jar. avemint then picks neither: the session is treated as absent (401, and
//! the cookie is expired), the sign-in as invalid. Logout and a new sign-in end
//! the sessions that every exact-named crumb names, as the client holds them all.
//!
//! Writing: [`CookieChanges`] collects `Set-Cookie` lines during a request and
//! the HTTP layer adds them to whatever the answer is, errors included (a
//! failed callback expires the login cookie; a 401 for an unknown or ended
//! session clears the session cookie).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use poem::http::{HeaderMap, HeaderValue, header};
use poem::{FromRequest, Request, RequestBody, Response};

use avemint_core::session::SessionId;
use avemint_core::signin::pending::{LOGIN_TTL, MAX_LOGIN_VALUE};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "__Host-avemint";
/// The pending-login cookie's name.
pub const LOGIN_COOKIE: &str = "__Host-avemint-login";
/// Cookie values longer than this are ignored unread.
pub const MAX_COOKIE_LEN: usize = 4096;
/// The longest session cookie value avemint writes (256 bits in base64url: 43), with room to spare.
pub(crate) const MAX_SESSION_VALUE: usize = 64;

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// One `name=value` pair of a `Cookie` header, trimmed of optional whitespace.
struct Crumb<'a> {
    name: &'a [u8],
    value: &'a [u8],
    /// The whole trimmed crumb (`name=value`).
    whole: &'a [u8],
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The well-formed crumbs of one `Cookie` header value. A crumb without `=` or with an empty name is skipped;
/// the crumbs around it still count.
fn crumbs(header: &[u8]) -> impl Iterator<Item = Crumb<'_>> {
    header.split(|b| *b == b';').filter_map(|raw| {
        let whole = trim_ows(raw);
        let eq = whole.iter().position(|b| *b == b'=')?;
        let name = trim_ows(&whole[..eq]);
        if name.is_empty() {
            return None;
        }
        let mut value = trim_ows(&whole[eq + 1..]);
        // RFC 6265 §4.1.1: a value may be wrapped in one pair of double quotes.
        if let [b'"', inner @ .., b'"'] = value {
            value = inner;
        }
        Some(Crumb { name, value, whole })
    })
}

/// Every value sent under exactly the raw name `name`, in order, across all the given `Cookie` header values.
pub fn values<'a, I>(headers: I, name: &str) -> Vec<&'a [u8]>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    headers
        .into_iter()
        .flat_map(crumbs)
        .filter(|c| c.name == name.as_bytes())
        .map(|c| c.value)
        .collect()
}

/// What a request carries under one exact cookie name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent<'a> {
    /// Not sent.
    Absent,
    /// Sent exactly once, with this raw value.
    Once(&'a [u8]),
    /// Sent more than once: ambiguous, so neither is used (see the module documentation).
    Ambiguous,
}

/// What the given `Cookie` header values carry under exactly the raw name `name`.
pub fn find<'a, I>(headers: I, name: &str) -> Sent<'a>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut found = Sent::Absent;
    for crumb in headers.into_iter().flat_map(crumbs) {
        if crumb.name == name.as_bytes() {
            found = match found {
                Sent::Absent => Sent::Once(crumb.value),
                _ => return Sent::Ambiguous,
            };
        }
    }
    found
}

/// The raw values of every `Cookie` header of a request.
pub(crate) fn cookie_headers(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes)
}

/// The bytes of the `Cookie` headers that count against the size limit: all of them, less one crumb of each of
/// avemint's own cookies whose value is no longer than avemint ever writes, so avemint's own cookies are never
/// why a request is refused. Each header counts two bytes more (as if joined by `"; "`).
pub fn counted_len<'a, I>(headers: I) -> usize
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let (mut session_seen, mut login_seen) = (false, false);
    let mut total = 0usize;
    for header in headers {
        total = total.saturating_add(header.len() + 2);
        for crumb in crumbs(header) {
            let own = if crumb.name == SESSION_COOKIE.as_bytes() && !session_seen {
                session_seen = crumb.value.len() <= MAX_SESSION_VALUE;
                session_seen
            } else if crumb.name == LOGIN_COOKIE.as_bytes() && !login_seen {
                login_seen = crumb.value.len() <= MAX_LOGIN_VALUE;
                login_seen
            } else {
                false
            };
            if own {
                total = total.saturating_sub(crumb.whole.len() + 2);
            }
        }
    }
    total
}

/// Removes avemint's own cookies (exact raw names) from the `Cookie` headers, keeping every other well-formed
/// crumb in order; with `all`, removes every cookie. What a proxied request's upstream gets.
pub(crate) fn strip_own(headers: &mut HeaderMap, all: bool) {
    let kept: Vec<u8> = if all {
        Vec::new()
    } else {
        let own = |name: &[u8]| name == SESSION_COOKIE.as_bytes() || name == LOGIN_COOKIE.as_bytes();
        let crumbs: Vec<&[u8]> = cookie_headers(headers)
            .flat_map(crumbs)
            .filter(|c| !own(c.name))
            .map(|c| c.whole)
            .collect();
        crumbs.join(&b"; "[..])
    };
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_bytes(&kept)
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether a `Set-Cookie` value sets one of avemint's own cookies, or may be taken for one (an upstream may not):
/// its name in any case, or no name at all (`=__Host-avemint=x`, or a pair without `=`), which browsers keep and
/// send back as the value alone (`__Host-avemint=x`).
pub(crate) fn sets_own(set_cookie: &HeaderValue) -> bool {
    let pair = set_cookie.as_bytes().split(|b| *b == b';').next().unwrap_or_default();
    let Some(eq) = pair.iter().position(|b| *b == b'=') else {
        return true;
    };
    let name = trim_ows(&pair[..eq]);
    name.is_empty()
        || name.eq_ignore_ascii_case(SESSION_COOKIE.as_bytes())
        || name.eq_ignore_ascii_case(LOGIN_COOKIE.as_bytes())
}

/// The session cookie as sent.
pub(crate) enum SessionCookie {
    /// No `__Host-avemint` crumb.
    Absent,
    /// One well-formed session id.
    Valid(SessionId),
    /// Sent, but malformed or more than once: no session, and the cookie should be expired.
    Unusable,
}

/// Reads the session cookie from the request headers.
pub(crate) fn session_cookie(headers: &HeaderMap) -> SessionCookie {
    match find(cookie_headers(headers), SESSION_COOKIE) {
        Sent::Absent => SessionCookie::Absent,
        Sent::Ambiguous => SessionCookie::Unusable,
        Sent::Once(raw) => parse_session(raw).map_or(SessionCookie::Unusable, SessionCookie::Valid),
    }
}

fn parse_session(raw: &[u8]) -> Option<SessionId> {
    if raw.len() > MAX_COOKIE_LEN {
        return None;
    }
    SessionId::parse(std::str::from_utf8(raw).ok()?)
}

/// Every well-formed session id sent under the exact session cookie name (for logout and sign-in, which end them
/// all).
pub(crate) fn all_session_ids(headers: &HeaderMap) -> Vec<SessionId> {
    values(cookie_headers(headers), SESSION_COOKIE)
        .into_iter()
        .filter_map(parse_session)
        .collect()
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// The `Set-Cookie` lines a response will carry, whatever its status. The HTTP layer puts one in every request's
/// extensions and applies it to the answer (`apply`); handlers take it as `&CookieChanges`.
#[derive(Clone, Default)]
pub(crate) struct CookieChanges(Arc<Mutex<Vec<HeaderValue>>>);

impl CookieChanges {
    fn push(&self, name: &str, value: &str, max_age: Duration) {
        let line = format!(
            "{name}={value}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax",
            max_age.as_secs()
        );
        // Names are constants and values base64url: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&line) {
            let mut changes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            // A later change of the same cookie replaces an earlier one.
            let prefix = format!("{name}=");
            changes.retain(|c| !c.as_bytes().starts_with(prefix.as_bytes()));
            changes.push(v);
        }
    }

    /// Adds the collected `Set-Cookie` lines to `resp`.
    pub(crate) fn apply(&self, resp: &mut Response) {
        let changes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for c in changes.iter() {
            resp.headers_mut().append(header::SET_COOKIE, c.clone());
        }
    }

    #[cfg(test)]
    /// The collected lines (for tests).
    pub(crate) fn lines(&self) -> Vec<String> {
        let changes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        changes
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

impl<'a> FromRequest<'a> for &'a CookieChanges {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        req.extensions().get::<CookieChanges>().ok_or_else(|| {
            poem::Error::from_string(
                "cookie changes are not set up for this request",
                poem::http::StatusCode::INTERNAL_SERVER_ERROR,
            )
        })
    }
}

/// Sets the session cookie.
pub(crate) fn set_session(changes: &CookieChanges, id: &SessionId, max_age: Duration) {
    changes.push(SESSION_COOKIE, id.to_cookie_value().expose(), max_age);
}

/// Expires the session cookie (with the same attributes, or browsers ignore it).
pub(crate) fn clear_session(changes: &CookieChanges) {
    changes.push(SESSION_COOKIE, "", Duration::ZERO);
}

/// Sets the login cookie to `sealed`, a pending sign-in sealed by `signin::encode_login`.
pub(crate) fn set_login(changes: &CookieChanges, sealed: &str) {
    changes.push(LOGIN_COOKIE, sealed, LOGIN_TTL);
}

/// Expires the login cookie.
pub(crate) fn clear_login(changes: &CookieChanges) {
    changes.push(LOGIN_COOKIE, "", Duration::ZERO);
}

/// The login cookie as sent (its value is the sealed pending sign-in).
pub(crate) fn login_cookie(headers: &HeaderMap) -> Sent<'_> {
    find(cookie_headers(headers), LOGIN_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    /// The value set for `name` in `changes`.
    fn set_value(changes: &CookieChanges, name: &str) -> Option<String> {
        changes.lines().iter().find_map(|l| {
            let (pair, _) = l.split_once(';')?;
            let (n, v) = pair.split_once('=')?;
            (n == name).then(|| v.to_owned())
        })
    }

    #[test]
    fn login_cookie_round_trip() {
        let changes = CookieChanges::default();
        set_login(&changes, "c2VhbGVk");
        let line = changes.lines().pop().expect("set");
        for attr in ["; Max-Age=600", "; Path=/", "; Secure", "; HttpOnly", "; SameSite=Lax"] {
            assert!(line.contains(attr), "{attr} in {line}");
        }
        let value = set_value(&changes, LOGIN_COOKIE).expect("value");
        let h = headers(&[format!("{LOGIN_COOKIE}={value}").as_bytes()]);
        assert_eq!(login_cookie(&h), Sent::Once(b"c2VhbGVk"));
        // Clearing replaces the earlier change of the same cookie.
        clear_login(&changes);
        assert_eq!(changes.lines().len(), 1);
        assert!(changes.lines()[0].starts_with(&format!("{LOGIN_COOKIE}=; Max-Age=0;")));
    }

    #[test]
    fn names_match_exactly_never_after_decoding() {
        for look_alike in [
            "__Host%2Davemint",
            "%5F%5FHost-avemint",
            "__%48ost-avemint",
            "__host-avemint",
            "__Host-avemint\u{b}",
            "__Host-avemint\u{a0}",
            "__Host-avemint%00",
            "__Host-avemint-login",
            "x__Host-avemint",
        ] {
            let raw = format!("{look_alike}=v");
            assert_eq!(find([raw.as_bytes()], SESSION_COOKIE), Sent::Absent, "{look_alike}");
            for order in [
                format!("{raw}; {SESSION_COOKIE}=g"),
                format!("{SESSION_COOKIE}=g; {raw}"),
            ] {
                assert_eq!(find([order.as_bytes()], SESSION_COOKIE), Sent::Once(b"g"), "{order}");
            }
        }
        assert_eq!(
            find([b"__Host-avemint-login=l; __Host-avemint=s".as_slice()], LOGIN_COOKIE),
            Sent::Once(b"l")
        );
    }

    #[test]
    fn malformed_crumbs_are_skipped_and_whitespace_trimmed() {
        let h: &[u8] = b"pref=\xc3\xa9;junk;=nameless; ;;\xff\xfe=\x01 ;\t__Host-avemint = \"abc\" \t; other=1";
        assert_eq!(find([h], SESSION_COOKIE), Sent::Once(b"abc"));
        assert_eq!(find([h], "other"), Sent::Once(b"1"));
        assert_eq!(find([h], "junk"), Sent::Absent);
        assert_eq!(find([h], "pref"), Sent::Once("é".as_bytes()));
        // Value with `=` inside: everything after the first `=`.
        assert_eq!(find([b"a=b=c".as_slice()], "a"), Sent::Once(b"b=c"));
    }

    #[test]
    fn every_cookie_header_is_read_and_duplicates_are_ambiguous() {
        let split: [&[u8]; 3] = [b"a=1", b"\xc3\xa9", b"__Host-avemint=s"];
        assert_eq!(find(split, SESSION_COOKIE), Sent::Once(b"s"));
        let twice: [&[u8]; 2] = [b"__Host-avemint=s", b"__Host-avemint=t"];
        assert_eq!(find(twice, SESSION_COOKIE), Sent::Ambiguous);
        assert_eq!(values(twice, SESSION_COOKIE), vec![b"s".as_slice(), b"t".as_slice()]);
        assert_eq!(
            find([b"__Host-avemint=s; __Host-avemint=s".as_slice()], SESSION_COOKIE),
            Sent::Ambiguous
        );
    }

    #[test]
    fn proxied_requests_lose_exactly_avemints_cookies() {
        let mut h = headers(&[
            b"a=1; __Host-avemint=s; b=2",
            b"__Host-avemint-login=l;__Host-avemintx=3",
        ]);
        strip_own(&mut h, false);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; __Host-avemintx=3");
        let mut only_own = headers(&[b"__Host-avemint=s"]);
        strip_own(&mut only_own, false);
        assert!(!only_own.contains_key(header::COOKIE));
        let mut all = headers(&[b"a=1"]);
        strip_own(&mut all, true);
        assert!(!all.contains_key(header::COOKIE));
        assert!(sets_own(&HeaderValue::from_static("__Host-avemint=x; Path=/")));
        assert!(sets_own(&HeaderValue::from_static(" __Host-avemint-login =x")));
        assert!(!sets_own(&HeaderValue::from_static("__Host-avemint2=x")));
        assert!(!sets_own(&HeaderValue::from_static("theme=a=b; Path=/")));
        for nameless in [
            "=__Host-avemint=x; Path=/",
            " =__Host-avemint=x",
            "__Host-avemint",
            "__HOST-AVEMINT=x",
        ] {
            assert!(sets_own(&HeaderValue::from_static(nameless)), "{nameless}");
        }
    }

    #[test]
    fn session_cookie_states() {
        let id = SessionId::generate().to_cookie_value().expose().to_owned();
        let good = format!("{SESSION_COOKIE}={id}");
        assert!(matches!(session_cookie(&headers(&[b"a=1"])), SessionCookie::Absent));
        assert!(
            matches!(session_cookie(&headers(&[good.as_bytes()])), SessionCookie::Valid(s) if s.to_cookie_value().expose() == &id)
        );
        assert!(matches!(
            session_cookie(&headers(&[b"__Host-avemint=nope"])),
            SessionCookie::Unusable
        ));
        assert!(matches!(
            session_cookie(&headers(&[good.as_bytes(), good.as_bytes()])),
            SessionCookie::Unusable
        ));
        let all = all_session_ids(&headers(&[good.as_bytes(), b"__Host-avemint=nope"]));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].to_cookie_value().expose(), &id);
    }

    #[test]
    fn own_cookies_do_not_count_against_the_size_limit() {
        let others = "o=".to_owned() + &"x".repeat(1000);
        let session = format!("{SESSION_COOKIE}={}", "s".repeat(43));
        let login = format!("{LOGIN_COOKIE}={}", "l".repeat(MAX_LOGIN_VALUE));
        let all = format!("{others}; {session}; {login}");
        assert_eq!(counted_len([all.as_bytes()]), others.len() + 2);
        let split: [&[u8]; 3] = [others.as_bytes(), session.as_bytes(), login.as_bytes()];
        assert_eq!(counted_len(split), others.len() + 2);
        // Only one of each, and only as long as avemint writes them.
        let twice = format!("{session}; {session}");
        assert_eq!(counted_len([twice.as_bytes()]), session.len() + 2);
        let long = format!("{LOGIN_COOKIE}={}", "l".repeat(MAX_LOGIN_VALUE + 1));
        assert_eq!(counted_len([long.as_bytes()]), long.len() + 2);
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4)) {
            let slices: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            for name in [SESSION_COOKIE, LOGIN_COOKIE] {
                let found = find(slices.iter().copied(), name);
                let all = values(slices.iter().copied(), name);
                match found {
                    Sent::Absent => prop_assert!(all.is_empty()),
                    Sent::Once(v) => {
                        prop_assert_eq!(all.as_slice(), &[v]);
                        prop_assert!(!v.contains(&b';'));
                    }
                    Sent::Ambiguous => prop_assert!(all.len() > 1),
                }
            }
            prop_assert!(counted_len(slices.iter().copied()) <= slices.iter().map(|s| s.len() + 2).sum::<usize>());
        }

        /// The genuine crumb is found wherever it sits among arbitrary other crumbs whose names are not exactly its own.
        #[test]
        fn the_genuine_crumb_is_found_among_any_others(
            others in proptest::collection::vec(("[!-:<>-~]{0,20}", "[ -:<-~]{0,20}"), 0..6),
            at in 0usize..7,
            value in "[A-Za-z0-9_-]{0,50}",
        ) {
            let mut crumbs: Vec<String> = others
                .iter()
                .filter(|(n, _)| n != SESSION_COOKIE)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let at = at.min(crumbs.len());
            crumbs.insert(at, format!("{SESSION_COOKIE}={value}"));
            let header = crumbs.join("; ");
            prop_assert_eq!(find([header.as_bytes()], SESSION_COOKIE), Sent::Once(value.as_bytes()));
        }
    }
}
