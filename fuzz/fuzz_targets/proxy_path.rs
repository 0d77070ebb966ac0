//! The proxy's path check: whatever part of a path below a route's prefix it accepts is forwarded below the
//! route's upstream path, as the upstream receives it, under every reading of a reference normaliser (one or
//! repeated percent-decoding, Tomcat's `;` rule, backslash as slash, trimmed white space, NUL as an end).
#![no_main]

use std::time::Duration;

use avemint_core::proxy::{RequiredClaims, RouteAuth, RouteSettings};
use avemint_core::proxy::readings::escape;
use avemint_core::proxy::settings::check_rest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // What reaches the check is a path as an HTTP/1.1 request line carries it: text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rest = format!("/{text}");
    let route = RouteSettings {
        path: "/api".to_owned(),
        upstream: url::Url::parse("https://upstream.example/v1").expect("url"),
        profile: None,
        methods: None,
        timeout: Duration::from_secs(30),
        max_request_bytes: 1024,
        max_message_bytes: 1024,
        allow_http: false,
        strip_cookies: false,
        auth: RouteAuth::Required,
        require_claims: RequiredClaims::default(),
    };
    let accepted = check_rest(&rest).is_ok();
    let Ok(url) = route.target(&rest, Some("q=1")) else {
        return;
    };
    assert!(accepted, "{rest:?} was forwarded without passing the check");
    assert_eq!(url.host_str(), Some("upstream.example"));
    assert_eq!(url.query(), Some("q=1"));
    let sent = url.path();
    assert!(sent == "/v1" || sent.starts_with("/v1/"), "{rest:?} sent as {sent:?}");
    if let Some((reading, resolved)) = escape("/v1", sent) {
        panic!("{rest:?} sent as {sent:?} leaves /v1 under {reading}: {resolved}");
    }
});
