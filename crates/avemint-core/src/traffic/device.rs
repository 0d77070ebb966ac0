//! What a session list shows about where a session was signed in: a short
//! device label from the `User-Agent` ("Firefox on Linux") and a coarse
//! network hint (the IPv4 /24 or IPv6 /48 of the client address).
//!
//! Why here, and why so coarse: users recognise their sessions by browser and
//! operating system, not by a full header, which fingerprints them; and a /24
//! or /48 says "home" or "office" without pinning one host. Only these labels
//! are kept (sealed inside the session record); the raw header and the exact
//! address are never stored. A tiny table of well-known tokens is enough for
//! a label: order matters, because browsers name their ancestors too (Edge
//! and Opera say "Chrome", Chrome says "Safari", Android says "Linux").

use std::net::IpAddr;

use super::rate_limit::Network;

/// Longest `User-Agent` looked at; the label never needs more.
const MAX_UA_LEN: usize = 1024;

/// Browsers, most specific token first: (token in the header, label).
const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("Opera", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Vivaldi/", "Vivaldi"),
    ("YaBrowser/", "Yandex Browser"),
    ("FxiOS/", "Firefox"),
    ("Firefox/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
];

/// Operating systems, most specific token first.
const SYSTEMS: &[(&str, &str)] = &[
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Android", "Android"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
    ("FreeBSD", "FreeBSD"),
];

/// A short label ("Firefox on Linux", "Safari", "Linux") for a `User-Agent`, or `None` when nothing in it is
/// recognised. Never echoes the header.
pub fn device_label(user_agent: &str) -> Option<String> {
    let ua = user_agent.get(..MAX_UA_LEN.min(user_agent.len())).unwrap_or(user_agent);
    let find = |table: &[(&str, &'static str)]| table.iter().find(|(token, _)| ua.contains(token)).map(|(_, l)| *l);
    match (find(BROWSERS), find(SYSTEMS)) {
        (Some(b), Some(s)) => Some(format!("{b} on {s}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    }
}

/// The network a client address belongs to, as a hint: its IPv4 /24 or IPv6 /48 (IPv4-mapped IPv6 counts as
/// IPv4), e.g. `198.51.100.0/24`.
pub fn network_hint(client: IpAddr) -> Option<String> {
    Network::of(client).first().map(ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_agents_get_browser_and_system() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0 Mobile/15E148 Safari/604.1",
                "Chrome on iOS",
            ),
            ("curl/8.5.0", "curl"),
        ];
        for (ua, label) in cases {
            assert_eq!(device_label(ua).as_deref(), Some(label), "{ua}");
        }
        assert_eq!(device_label(""), None);
        assert_eq!(device_label("secret-token-123"), None, "unknown text is never echoed");
        assert_eq!(
            device_label(&"é".repeat(2000)),
            None,
            "long and multibyte input is fine"
        );
    }

    #[test]
    fn networks_are_a_slash_24_or_a_slash_48() {
        let hint = |s: &str| network_hint(s.parse().expect("ip"));
        assert_eq!(hint("198.51.100.77").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hint("::ffff:198.51.100.77").as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hint("2001:db8:1:2::5").as_deref(), Some("2001:db8:1::/48"));
    }
}
