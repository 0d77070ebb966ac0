//! `ReturnPath`: where the browser goes after sign-in. Same-origin relative
//! paths only; anything else becomes `/`.
//!
//! Parsing is strict on purpose: browsers normalise `\` to `/`, drop tabs and
//! newlines, and accept `//host` as a network path, so any of those (also
//! after each of up to three rounds of percent-decoding, for servers and
//! proxies that decode again) means "not ours". Dot segments (`/../`, also
//! encoded) are refused too, so no later normalisation can turn a path into
//! `//host`. Schemes (`https:`, `javascript:`), user-info (`//u@host`) and
//! look-alike hosts (`//app.example.evil`) never start with a single `/`
//! followed by a path character, so they fall back to `/` as well.

/// Longest return path kept (bytes); a longer one becomes `/`. It travels sealed in the login cookie, which
/// must stay small whatever a link puts in `return_to` (see `pending::MAX_LOGIN_VALUE`).
pub const MAX_RETURN_PATH: usize = 512;

/// A path on avemint's own origin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ReturnPath(String);

impl Default for ReturnPath {
    fn default() -> Self {
        Self("/".to_owned())
    }
}

impl ReturnPath {
    /// Parses a candidate; returns `/` for anything not clearly a local path.
    pub fn parse(raw: Option<&str>) -> Self {
        match raw {
            Some(s) if is_local_path(s) && decodes_to_local(s) => Self(s.to_owned()),
            _ => Self::default(),
        }
    }

    /// The path, for a `Location` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_local_path(s: &str) -> bool {
    let b = s.as_bytes();
    !s.is_empty()
        && s.len() <= MAX_RETURN_PATH
        && b[0] == b'/'
        && b.get(1).is_none_or(|c| *c != b'/' && *c != b'\\')
        && s.bytes().all(|c| c.is_ascii_graphic() && c != b'\\')
}

/// Every decoding stage (up to three rounds) must still be a local path without dot segments.
fn decodes_to_local(s: &str) -> bool {
    let mut current = s.to_owned();
    for _ in 0..3 {
        if has_dot_segment(&current) {
            return false;
        }
        let Some(decoded) = percent_decode(&current) else {
            return false;
        };
        if !is_local_decoded(&decoded) {
            return false;
        }
        if decoded == current {
            return true;
        }
        current = decoded;
    }
    // Still changing after three rounds: nobody legitimate encodes that deep.
    false
}

/// `.` or `..` as a whole path segment (before any query or fragment).
fn has_dot_segment(s: &str) -> bool {
    let path = s.split(['?', '#']).next().unwrap_or(s);
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// After decoding, spaces and most non-ASCII are harmless; controls,
/// invisible characters, `\\` and a leading `//` are not.
fn is_local_decoded(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && b.get(1).is_none_or(|c| *c != b'/' && *c != b'\\')
        && !s.chars().any(|c| c.is_control() || c == '\\' || invisible(c))
}

/// Line and paragraph separators, other non-space whitespace, zero-width and bidi controls.
fn invisible(c: char) -> bool {
    (c.is_whitespace() && c != ' ')
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// One round of percent-decoding; `None` if it is not valid UTF-8 or escapes are broken.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_local_paths() {
        for ok in [
            "/",
            "/app",
            "/app/page?x=1&y=%20#frag",
            "/a:b@c",
            "/%41",
            "/caf%C3%A9",
            "/https://evil.example",
            "/@evil.example",
            "/a/.well-known/x",
            "/a..b/c",
        ] {
            assert_eq!(ReturnPath::parse(Some(ok)).as_str(), ok);
        }
    }

    #[test]
    fn known_bypasses_fall_back_to_root() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%09/evil.example",
            "/%0a/evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/%2F/evil.example",
            "/%5Cevil.example",
            "https:evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "evil.example",
            "//user@evil.example",
            "/ /evil",
            "/x\r\nSet-Cookie:a=b",
            "/%0d%0aSet-Cookie:a=b",
            "/%zz",
            "/%C0%AF",
            "/%7F",
            "",
            "/é",
            // More network-path and backslash forms.
            "///evil.example",
            "////evil.example",
            "\\/evil.example",
            "/\\evil.example",
            "/%5C%5Cevil.example",
            "/%2F%2Fevil.example",
            "%2F%2Fevil.example",
            "/%252F%252Fevil.example",
            "/%25252F%25252Fevil.example",
            "/%09/%09/evil.example",
            "/%0d/evil.example",
            "/%00/evil.example",
            "/\u{0b}/evil.example",
            "/\u{ff0f}evil.example",
            "/\u{3002}evil.example",
            // Schemes.
            "https:/evil.example",
            "https:\\evil.example",
            "http:evil.example",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "\tjavascript:alert(1)",
            "javascript://%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox(1)",
            // User-info tricks.
            "https://avemint.example@evil.example",
            "//avemint.example@evil.example",
            "//avemint.example%40evil.example",
            "@evil.example",
            "/\\avemint.example@evil.example",
            // Suffix and look-alike hosts.
            "//avemint.example.evil.example",
            "https://avemint.example.evil.example/",
            "//evil.example/avemint.example",
            "//evil.example?avemint.example",
            "//evil.example#avemint.example",
            ".evil.example",
            // Dot segments, also encoded.
            "/../evil.example",
            "/..//evil.example",
            "/a/../../evil.example",
            "/%2e%2e//evil.example",
            "/%2E%2E%2F%2Fevil.example",
            "/.",
            // CRLF and header injection.
            "/\r\nLocation: https://evil.example",
            "/%0d%0aLocation:%20https://evil.example",
            "/%0D%0ASet-Cookie:%20x=y",
            "/%250d%250aSet-Cookie:x=y",
            "/\u{2028}evil",
            "/%E2%80%A8evil",
            "/%E2%80%AEevil",
            "/%C2%85evil",
        ] {
            assert_eq!(ReturnPath::parse(Some(bad)).as_str(), "/", "{bad:?}");
        }
        assert_eq!(ReturnPath::parse(None).as_str(), "/");
        assert_eq!(
            ReturnPath::parse(Some(&format!("/{}", "a".repeat(MAX_RETURN_PATH)))).as_str(),
            "/"
        );
    }

    /// Same-origin, no control characters or backslashes however often decoded, no dot segments.
    fn assert_safe(v: &str) -> Result<(), TestCaseError> {
        prop_assert!(v.starts_with('/'));
        let mut stage = v.to_owned();
        for _ in 0..3 {
            prop_assert!(!stage.starts_with("//") && !stage.starts_with("/\\"), "{v:?}");
            prop_assert!(!stage.chars().any(|c| c.is_control() || c == '\\'), "{v:?}");
            prop_assert!(!has_dot_segment(&stage), "{v:?}");
            match percent_decode(&stage) {
                Some(d) => stage = d,
                None => break,
            }
        }
        let base = url::Url::parse("https://avemint.example/").expect("base");
        let joined = base.join(v).expect("joins");
        prop_assert_eq!(joined.host_str(), Some("avemint.example"));
        prop_assert_eq!(joined.scheme(), "https");
        prop_assert_eq!(joined.username(), "");
        Ok(())
    }

    fn tricky() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/",
            "//",
            "\\",
            "%2f",
            "%2F",
            "%5c",
            "%252f",
            "%09",
            "%0a",
            "%0d",
            "\t",
            "\n",
            "\r",
            "@",
            ":",
            ".",
            "..",
            "%2e",
            "evil.example",
            "avemint.example",
            "https:",
            "javascript:",
            "?",
            "#",
            "%",
            "%25",
            " ",
            "\u{ff0f}",
            "a",
        ]);
        prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn tricky_compositions_are_safe_or_root(s in tricky()) {
            assert_safe(ReturnPath::parse(Some(&s)).as_str())?;
        }

        #[test]
        fn ordinary_paths_are_kept(
            segs in prop::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,11}", 0..5),
            query in proptest::option::of("[a-z]{1,8}=[a-zA-Z0-9]{0,8}"),
        ) {
            let mut path = format!("/{}", segs.join("/"));
            if let Some(q) = query {
                path = format!("{path}?{q}");
            }
            let parsed = ReturnPath::parse(Some(&path));
            prop_assert_eq!(parsed.as_str(), path.as_str());
        }

        #[test]
        fn result_is_always_a_same_origin_path(s in ".{0,40}") {
            let p = ReturnPath::parse(Some(&s));
            let v = p.as_str();
            assert_safe(v)?;
            prop_assert!(v.starts_with('/'));
            prop_assert!(!v.starts_with("//") && !v.starts_with("/\\"));
            prop_assert!(v.bytes().all(|c| c.is_ascii_graphic() && c != b'\\'));
            let base = url::Url::parse("https://avemint.example/").expect("base");
            let joined = base.join(v).expect("joins");
            prop_assert_eq!(joined.host_str(), Some("avemint.example"));
        }
    }
}
