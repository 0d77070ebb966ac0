//! `ReturnPath`: where the browser goes after sign-in. Same-origin relative
//! paths only; anything else becomes `/`.
//!
//! Parsing is strict on purpose: browsers normalise `\` to `/`, drop tabs and
//! newlines, and accept `//host` as a network path, so any of those (also
//! after one percent-decoding) means "not ours".

/// Longest accepted return path.
pub const MAX_RETURN_PATH: usize = 2048;

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
            Some(s) if is_local_path(s) && percent_decode(s).is_some_and(|d| is_local_decoded(&d)) => {
                Self(s.to_owned())
            }
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

/// After decoding, spaces and non-ASCII are harmless; controls, `\\` and a
/// leading `//` are not.
fn is_local_decoded(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && b.get(1).is_none_or(|c| *c != b'/' && *c != b'\\')
        && !s.chars().any(|c| c.is_control() || c == '\\')
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
        for ok in ["/", "/app", "/app/page?x=1&y=%20#frag", "/a:b@c", "/%41", "/caf%C3%A9"] {
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
        ] {
            assert_eq!(ReturnPath::parse(Some(bad)).as_str(), "/", "{bad:?}");
        }
        assert_eq!(ReturnPath::parse(None).as_str(), "/");
        assert_eq!(
            ReturnPath::parse(Some(&format!("/{}", "a".repeat(MAX_RETURN_PATH)))).as_str(),
            "/"
        );
    }

    proptest! {
        #[test]
        fn result_is_always_a_same_origin_path(s in ".{0,40}") {
            let p = ReturnPath::parse(Some(&s));
            let v = p.as_str();
            prop_assert!(v.starts_with('/'));
            prop_assert!(!v.starts_with("//") && !v.starts_with("/\\"));
            prop_assert!(v.bytes().all(|c| c.is_ascii_graphic() && c != b'\\'));
            let base = url::Url::parse("https://avemint.example/").expect("base");
            let joined = base.join(v).expect("joins");
            prop_assert_eq!(joined.host_str(), Some("avemint.example"));
        }
    }
}
