//! Which headers cross the proxy, in each direction.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) never do: `Connection` and every
//! header it names, and the fixed list below. Upstream, avemint then removes
//! what it sets itself (the browser's `Authorization`, `Host`, `Forwarded`,
//! `X-Forwarded-*`) and adds its own, in that order, so a `Connection` header
//! naming `Authorization` can remove only the browser's bearer, never the one
//! avemint attaches. avemint's cookies are removed by the HTTP layer, which
//! knows their names.

use std::net::IpAddr;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue};

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
const SET_BY_AVEMINT: [&str; 7] = [
    "authorization",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "expect",
];

/// Removes the hop-by-hop headers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Who the request is forwarded for: the client and avemint's public origin.
pub(crate) struct ForwardedFor<'a> {
    pub client: IpAddr,
    /// `https` or `http`.
    pub proto: &'a str,
    /// The public URL's host (and port).
    pub host: &'a str,
}

/// The browser's headers (avemint's cookies already removed) as the upstream gets them.
pub(crate) fn upstream(
    mut headers: HeaderMap,
    bearer: &str,
    via: &ForwardedFor<'_>,
) -> Result<HeaderMap, InvalidHeaderValue> {
    strip_hop_by_hop(&mut headers);
    for name in SET_BY_AVEMINT {
        headers.remove(name);
    }
    let mut authorization = HeaderValue::from_str(&format!("Bearer {bearer}"))?;
    authorization.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, authorization);
    let client = via.client.to_string();
    let node = match via.client {
        IpAddr::V4(_) => client.clone(),
        IpAddr::V6(_) => format!("\"[{client}]\""),
    };
    let forwarded = format!("for={node};proto={};host=\"{}\"", via.proto, via.host);
    headers.insert(header::FORWARDED, HeaderValue::from_str(&forwarded)?);
    headers.insert("x-forwarded-for", HeaderValue::from_str(&client)?);
    headers.insert("x-forwarded-proto", HeaderValue::from_str(via.proto)?);
    headers.insert("x-forwarded-host", HeaderValue::from_str(via.host)?);
    Ok(headers)
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
            ("host", "evil.example"),
            ("accept", "application/json"),
            ("x-csrf", "1"),
        ]);
        let via = ForwardedFor {
            client: "203.0.113.9".parse().expect("ip"),
            proto: "https",
            host: "app.example.com",
        };
        let h = upstream(sent, "app.jwt.sig", &via).expect("headers");
        assert_eq!(h["authorization"], "Bearer app.jwt.sig");
        for gone in ["connection", "x-secret", "x-other", "te", "upgrade", "host"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
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
            ..via
        };
        let h = upstream(HeaderMap::new(), "t", &v6).expect("headers");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https;host=\"app.example.com\"");
    }
}
