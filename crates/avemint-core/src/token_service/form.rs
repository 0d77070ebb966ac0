//! The token endpoint's request body: `application/x-www-form-urlencoded` (RFC 6749 §3.2, Appendix B).
//!
//! Why its own parser: the framework's form decoding replaces invalid UTF-8 and keeps the last of a repeated
//! parameter, while RFC 6749 §3.1 says a parameter MUST NOT be sent more than once (the answer is
//! `invalid_request`) and that one sent without a value counts as omitted. This parser is strict where a lenient
//! reading could make two parties see two different requests: a malformed `%` escape, bytes that are not UTF-8
//! after decoding, a name sent twice, an empty name, more than [`MAX_PARAMETERS`] pairs are refused. `+` is a
//! space. Values are kept in `Zeroizing` strings (a form carries secrets and tokens).

use zeroize::Zeroizing;

/// The most `name=value` pairs one request may carry (the token endpoint knows about ten names).
pub const MAX_PARAMETERS: usize = 64;

/// Why a body is not a usable form. Messages name the parameter, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the form has a malformed `%` escape")]
    BadEscape,
    #[error("the form is not UTF-8 once decoded")]
    NotUtf8,
    #[error("the form has a parameter without a name")]
    EmptyName,
    #[error("the form has more than {MAX_PARAMETERS} parameters")]
    TooMany,
    #[error("parameter `{0}` is sent more than once (RFC 6749 §3.1)")]
    Repeated(String),
}

/// A parsed form: unique names, in the order sent; parameters sent without a value are left out.
#[derive(Debug, Default)]
pub struct Form {
    pairs: Vec<(String, Zeroizing<String>)>,
}

impl Form {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        let mut pairs: Vec<(String, Zeroizing<String>)> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for piece in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            if seen.len() == MAX_PARAMETERS {
                return Err(FormError::TooMany);
            }
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &[][..]),
            };
            let name = decode(name)?;
            let value = Zeroizing::new(decode(value)?);
            if name.is_empty() {
                return Err(FormError::EmptyName);
            }
            if seen.contains(&name) {
                return Err(FormError::Repeated(name));
            }
            seen.push(name.clone());
            if !value.is_empty() {
                pairs.push((name, value));
            }
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if it was sent with one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The names sent with a value, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }
}

/// One component: `+` is a space, `%XX` a byte (two hex digits, else refused), the result UTF-8.
fn decode(raw: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3).ok_or(FormError::BadEscape)?;
                let hi = (hex[0] as char).to_digit(16).ok_or(FormError::BadEscape)?;
                let lo = (hex[1] as char).to_digit(16).ok_or(FormError::BadEscape)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|e| {
        // The bytes may be a secret: wipe them.
        let mut bytes = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut bytes);
        FormError::NotUtf8
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(form: &Form) -> Vec<(&str, &str)> {
        form.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    #[test]
    fn rfc_6749_forms_parse() {
        let f = Form::parse(b"grant_type=client_credentials&scope=a+b%20c&x=&y").expect("parses");
        assert_eq!(pairs(&f), [("grant_type", "client_credentials"), ("scope", "a b c")]);
        assert_eq!(f.get("x"), None, "sent without a value: omitted");
        assert_eq!(f.get("y"), None);
        let f = Form::parse(b"a=%3D%26%2B&&b=%e2%82%ac").expect("parses");
        assert_eq!(pairs(&f), [("a", "=&+"), ("b", "€")]);
        assert!(Form::parse(b"").expect("empty").names().next().is_none());
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        assert_eq!(Form::parse(b"a=1&a=2").err(), Some(FormError::Repeated("a".into())));
        // A repeat is a repeat even when one of them is empty or spelled with escapes.
        assert_eq!(Form::parse(b"a=&a=2").err(), Some(FormError::Repeated("a".into())));
        assert_eq!(Form::parse(b"a=1&%61=2").err(), Some(FormError::Repeated("a".into())));
        assert_eq!(Form::parse(b"=1").err(), Some(FormError::EmptyName));
        for bad in [&b"a=%"[..], b"a=%4", b"a=%zz", b"%g1=x"] {
            assert_eq!(Form::parse(bad).err(), Some(FormError::BadEscape), "{bad:?}");
        }
        assert_eq!(Form::parse(b"a=%ff").err(), Some(FormError::NotUtf8));
        assert_eq!(Form::parse(b"a=\xff").err(), Some(FormError::NotUtf8));
        let many: Vec<String> = (0..=MAX_PARAMETERS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(Form::parse(many.join("&").as_bytes()).err(), Some(FormError::TooMany));
    }

    proptest! {
        /// Whatever names and values a client encodes as RFC 6749 Appendix B says, parsing gives them back.
        #[test]
        fn encoded_forms_round_trip(
            entries in prop::collection::btree_map("\\PC{1,12}", "\\PC{0,40}", 0..12),
        ) {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(entries.iter())
                .finish();
            let form = Form::parse(body.as_bytes()).expect("an encoded form parses");
            let expected: Vec<(&str, &str)> = entries
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut got = pairs(&form);
            got.sort();
            prop_assert_eq!(got, expected);
        }

        /// Any bytes are parsed or refused, never a panic; what parses has unique, non-empty names and no empty
        /// values, and agrees with the `url` crate's reading wherever that one is not lenient.
        #[test]
        fn any_body_is_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(form) = Form::parse(&body) {
                let names: Vec<&str> = form.names().collect();
                let mut unique = names.clone();
                unique.sort();
                unique.dedup();
                prop_assert_eq!(unique.len(), names.len());
                prop_assert!(names.iter().all(|n| !n.is_empty()));
                prop_assert!(form.pairs.iter().all(|(_, v)| !v.is_empty()));
                let lenient: Vec<(String, String)> = url::form_urlencoded::parse(&body)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(n, v)| (n.into_owned(), v.into_owned()))
                    .collect();
                let strict: Vec<(String, String)> =
                    form.pairs.iter().map(|(n, v)| (n.clone(), v.to_string())).collect();
                prop_assert_eq!(strict, lenient);
            }
        }

        /// A form with a name sent twice is always refused, wherever the repeat is.
        #[test]
        fn repeats_are_always_refused(
            name in "[a-z_]{1,10}",
            before in prop::collection::vec("[A-Z]{1,4}=[a-z]{0,4}", 0..4),
            between in prop::collection::vec("[A-Z]{1,4}=[a-z]{0,4}", 0..4),
            v1 in "[a-z0-9]{0,6}",
            v2 in "[a-z0-9]{0,6}",
        ) {
            let mut parts = before.clone();
            parts.push(format!("{name}={v1}"));
            parts.extend(between);
            parts.push(format!("{name}={v2}"));
            let body = parts.join("&");
            // Upper-case names of the other parts may repeat among themselves; the first repeat is reported.
            prop_assert!(matches!(Form::parse(body.as_bytes()), Err(FormError::Repeated(_))));
        }
    }
}
