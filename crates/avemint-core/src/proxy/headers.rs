//! Which headers cross the proxy, in each direction.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) never do: `Connection` and every
//! header it names, and the fixed list below. Upstream, avemint then removes
//! what it sets itself (the browser's `Authorization`, `Host`, `Forwarded`,
//! `X-Forwarded-*`, `X-Request-Id`), the look-alikes some frameworks read as
//! client address, URL or method (`X-Real-IP`, `X-Original-URL`,
//! `X-HTTP-Method-Override`, …, and every name with `_`, which WSGI and CGI
//! turn into `-`), and adds its own, in that order, so a `Connection` header
//! naming `Authorization` can remove only the browser's bearer, never the one
//! avemint attaches. avemint's cookies are removed by the HTTP layer, which
//! knows their names.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};

/// Hop-by-hop headers besides those `Connection` names.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "trailer",
];

/// Headers the browser may not send upstream because avemint sets them (or, for `Expect`, answers them itself).
const SET_BY_AVEMINT: [&str; 8] = [
    "authorization",
    "x-request-id",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "expect",
];

/// Headers a framework behind the proxy may read as the client's address, the original URL or the method, so a
/// browser could pick them (besides the `X-Forwarded-*` avemint sets): never forwarded.
const LOOK_ALIKES: [&str; 12] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-server",
];

/// Removes the hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |name| HOP_BY_HOP.contains(&name));
}

/// Removes the headers `Connection` names and those `drop` says, looking at each name once: the names are read
/// from the map (a few), never looked up one by one from the lists (many).
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok());
    let dropped: Vec<HeaderName> = named
        .chain(headers.keys().filter(|n| drop(n.as_str())).cloned())
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The headers avemint adds upstream (besides `Authorization`).
static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Who the request is forwarded for: the client and avemint's public origin.
pub(crate) struct ForwardedFor<'a> {
    pub client: IpAddr,
    /// `https` or `http`.
    pub proto: &'a str,
    /// The public URL's host (and port).
    pub host: &'a str,
    /// avemint's request id (the browser's `X-Request-Id` when it sent an acceptable one), sent as `X-Request-Id`.
    pub request_id: Option<&'a str>,
}

/// The browser's headers (avemint's cookies already removed) as the upstream gets them, with `bearer` as
/// `Authorization` (none: no `Authorization` at all, the browser's never passes).
pub(crate) fn upstream(
    mut headers: HeaderMap,
    bearer: Option<&str>,
    via: &ForwardedFor<'_>,
) -> Result<HeaderMap, InvalidHeaderValue> {
    // `X_Forwarded_For` is `X-Forwarded-For` to WSGI and CGI (nginx drops such names by default too).
    remove_where(&mut headers, |name| {
        HOP_BY_HOP.contains(&name)
            || SET_BY_AVEMINT.contains(&name)
            || LOOK_ALIKES.contains(&name)
            || name.contains('_')
    });
    if let Some(bearer) = bearer {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {bearer}"))?;
        authorization.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, authorization);
    }
    let client = via.client.to_string();
    let node = match via.client {
        IpAddr::V4(_) => client.clone(),
        IpAddr::V6(_) => format!("\"[{client}]\""),
    };
    let forwarded = format!("for={node};proto={};host=\"{}\"", via.proto, via.host);
    headers.insert(header::FORWARDED, HeaderValue::from_str(&forwarded)?);
    headers.insert(FORWARDED_FOR.clone(), HeaderValue::from_str(&client)?);
    headers.insert(FORWARDED_PROTO.clone(), HeaderValue::from_str(via.proto)?);
    headers.insert(FORWARDED_HOST.clone(), HeaderValue::from_str(via.host)?);
    if let Some(id) = via.request_id {
        headers.insert(REQUEST_ID.clone(), HeaderValue::from_str(id)?);
    }
    Ok(headers)
}

/// Removes from an upstream's answer every header with a value that contains `bearer` (the app JWT sent upstream)
/// or its signature, so an upstream that echoes it cannot hand it to page script; the names of those removed.
pub fn drop_echoes(headers: &mut HeaderMap, bearer: &str) -> Vec<HeaderName> {
    let signature = bearer.rsplit('.').next().filter(|s| s.len() >= 16).unwrap_or(bearer);
    let echoes = |v: &HeaderValue| {
        [bearer, signature]
            .iter()
            .any(|secret| v.as_bytes().windows(secret.len()).any(|w| w == secret.as_bytes()))
    };
    // Usually none: only then is anything copied.
    let mut dropped: Vec<HeaderName> = Vec::new();
    for (name, _) in headers.iter().filter(|(_, v)| echoes(v)) {
        if !dropped.contains(name) {
            dropped.push(name.clone());
        }
    }
    for name in &dropped {
        let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
        headers.remove(name);
        for value in values.into_iter().filter(|v| !echoes(v)) {
            headers.append(name.clone(), value);
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_go_and_avemint_sets_its_own() {
        let sent = map(&[
            ("connection", "keep-alive, Authorization, X-Secret"),
            ("connection", "x-other"),
            ("authorization", "Bearer browser"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "picked by the browser"),
            ("host", "evil.example"),
            ("accept", "application/json"),
            ("x-csrf", "1"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_forwarded_host", "evil.example"),
            ("my_header", "1"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-ssl", "on"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
        ]);
        let via = ForwardedFor {
            client: "203.0.113.9".parse().expect("ip"),
            proto: "https",
            host: "app.example.com",
            request_id: Some("f00d"),
        };
        let h = upstream(sent, Some("app.jwt.sig"), &via).expect("headers");
        assert_eq!(h["x-request-id"], "f00d");
        assert_eq!(h["authorization"], "Bearer app.jwt.sig");
        for gone in [
            "connection",
            "x-secret",
            "x-other",
            "te",
            "upgrade",
            "host",
            "my_header",
        ]
        .iter()
        .chain(&LOOK_ALIKES)
        {
            assert!(!h.contains_key(*gone), "{gone}");
        }
        assert!(h.keys().all(|n| !n.as_str().contains('_')), "{h:?}");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["forwarded"], "for=203.0.113.9;proto=https;host=\"app.example.com\"");
        assert_eq!(
            (&h["accept"], &h["x-csrf"]),
            (
                &HeaderValue::from_static("application/json"),
                &HeaderValue::from_static("1")
            )
        );
        let v6 = ForwardedFor {
            client: "::1".parse().expect("ip"),
            request_id: None,
            ..via
        };
        let h = upstream(HeaderMap::new(), Some("t"), &v6).expect("headers");
        assert!(!h.contains_key("x-request-id"));
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https;host=\"app.example.com\"");
        // No bearer (a route with `auth = "none"`, or `optional` without a session): no `Authorization` at all.
        let page = map(&[("authorization", "Bearer from-the-page")]);
        assert!(
            !upstream(page, None, &v6)
                .expect("headers")
                .contains_key("authorization")
        );
    }

    proptest::proptest! {
        /// Whatever the browser sends: nothing of the lists, no name with `_`, nothing `Connection` names goes
        /// upstream; every other header goes, with all its values in order; avemint's own are there once.
        #[test]
        fn only_what_may_pass_goes_upstream(
            sent in proptest::collection::vec((0usize..POOL.len(), "[a-z0-9]{0,6}"), 0..24),
            connection in proptest::collection::vec(0usize..POOL.len(), 0..3),
        ) {
            let mut headers = HeaderMap::new();
            for (i, value) in &sent {
                headers.append(HeaderName::from_static(POOL[*i]), HeaderValue::from_str(value).expect("value"));
            }
            let named: Vec<&str> = connection.iter().map(|i| POOL[*i]).collect();
            if !named.is_empty() {
                headers.append(header::CONNECTION, HeaderValue::from_str(&named.join(", ")).expect("value"));
            }
            let via = ForwardedFor { client: "192.0.2.1".parse().expect("ip"), proto: "https", host: "a.example", request_id: Some("id") };
            let out = upstream(headers.clone(), Some("b.e.arer"), &via).expect("headers");
            let ours = ["authorization", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"];
            for name in &POOL {
                let passes = !HOP_BY_HOP.contains(name)
                    && !SET_BY_AVEMINT.contains(name)
                    && !LOOK_ALIKES.contains(name)
                    && !name.contains('_')
                    && !named.contains(name);
                if ours.contains(name) {
                    proptest::prop_assert_eq!(out.get_all(*name).iter().count(), 1, "{}", name);
                } else if passes {
                    let want: Vec<_> = headers.get_all(*name).iter().collect();
                    let got: Vec<_> = out.get_all(*name).iter().collect();
                    proptest::prop_assert_eq!(got, want, "{}", name);
                } else {
                    proptest::prop_assert!(!out.contains_key(*name), "{} went upstream", name);
                }
            }
        }
    }

    /// Header names the property test draws from: ordinary ones, every listed one and underscored ones.
    const POOL: [&str; 14] = [
        "accept",
        "content-type",
        "x-csrf",
        "x-custom",
        "authorization",
        "host",
        "keep-alive",
        "te",
        "upgrade",
        "x-forwarded-for",
        "x-real-ip",
        "x-http-method-override",
        "x_forwarded_host",
        "my_header",
    ];

    #[test]
    fn answer_headers_that_echo_the_bearer_are_dropped() {
        let bearer = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        let mut h = map(&[("x-debug", "ok"), ("set-cookie", "a=1"), ("content-type", "text/plain")]);
        h.append(
            "x-debug",
            HeaderValue::from_str(&format!("got Bearer {bearer}")).expect("value"),
        );
        h.append(
            "set-cookie",
            HeaderValue::from_static("sig=c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"),
        );
        let dropped = drop_echoes(&mut h, bearer);
        assert_eq!(dropped, ["x-debug", "set-cookie"]);
        assert_eq!(h.get_all("x-debug").iter().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(h.get_all("set-cookie").iter().collect::<Vec<_>>(), ["a=1"]);
        assert_eq!(h["content-type"], "text/plain");
    }
}
