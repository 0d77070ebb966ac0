//! The token service's form parser (`POST /oauth/token`): any bytes are parsed or refused, never a panic; a parsed
//! form has unique, non-empty names and no empty values, and reads exactly as the `url` crate's (lenient) decoder
//! reads the same bytes, so two parties cannot see two different requests.
#![no_main]

use avemint_core::token_service::{Form, FormError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Form::parse(data) {
        Ok(form) => {
            let names: Vec<&str> = form.names().collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "a name twice");
            let lenient: Vec<(String, String)> = url::form_urlencoded::parse(data)
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(lenient.len(), names.len());
            for (name, value) in &lenient {
                assert!(!name.is_empty());
                assert_eq!(form.get(name), Some(value.as_str()));
            }
        }
        Err(FormError::Repeated(name)) => {
            // The name is one the body really repeats.
            let count = url::form_urlencoded::parse(data).filter(|(n, _)| *n == name).count();
            assert!(count >= 2, "{name} reported repeated");
        }
        Err(_) => {}
    }
});
