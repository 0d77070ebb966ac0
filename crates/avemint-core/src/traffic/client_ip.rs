//! The client IP used for rate limiting and logs, and `AVEMINT_TRUSTED_PROXIES`.
//!
//! Forwarding headers are believed only when the TCP peer is a listed proxy,
//! and then only as far back as the chain stays inside listed proxies: the
//! first address (from the right) that is not a trusted proxy is the client.
//!
//! Two headers are read: `X-Forwarded-For` (comma-separated hops, each an
//! address with or without a port: `192.0.2.1`, `192.0.2.1:4444`,
//! `2001:db8::1`, `[2001:db8::1]:443`) and the standard `Forwarded` (RFC 7239:
//! the `for=` parameter of each element, quoted or not, with the same port
//! forms, and the obfuscated identifiers `unknown` and `_hidden`). When a
//! request carries both, `X-Forwarded-For` wins and `Forwarded` is ignored:
//! most proxies append to `X-Forwarded-For` and pass a client's own
//! `Forwarded` through untouched, so believing `Forwarded` first would let a
//! client pick its address. A proxy that writes only `Forwarded` must strip
//! any `X-Forwarded-For` it receives (and the other way round).
//!
//! The walk stops at the first hop that is not a trusted proxy. A hop that
//! cannot be parsed, or an obfuscated one, also stops it: the last trusted hop
//! is then the client (all such clients share that proxy's sign-in bucket). A
//! hop that cannot be parsed is logged at `warn`, at most once a minute.
//!
//! No forwarded header (`X-Forwarded-Host`, `-Proto`, `Forwarded`'s `host=` or
//! `proto=`) ever changes the redirect URI, cookie flags or origin
//! allow-lists: those come from configuration only.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use avemint_base::log_gate::LogGate;

/// Forwarding headers longer than this (all of one kind together) are ignored.
const MAX_FORWARDED_LEN: usize = 2048;
/// Longest part of an unparsable hop quoted in the warning.
const MAX_QUOTED_HOP: usize = 64;

/// One trusted proxy address or network (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`);
/// the prefix arithmetic is `ipnet`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Parses an address or an address with a `/prefix`.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let net = match raw.split_once('/') {
            None => raw.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| ()),
            Some(_) => raw.parse::<ipnet::IpNet>().map_err(|_| ()),
        };
        net.map(Self).map_err(|()| match raw.split_once('/') {
            Some((addr, _)) if addr.parse::<IpAddr>().is_ok() => {
                let max = if addr.contains(':') { 128 } else { 32 };
                format!("`{raw}` has an invalid prefix length (0 to {max})")
            }
            _ => format!("`{raw}` is not an IP address or CIDR network"),
        })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as plain IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose forwarding headers are believed. Empty by default: nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDR networks.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(IpNet::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// True when `ip` is a listed proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in
    /// which case the right-most hop of `X-Forwarded-For` (or, when the request
    /// has none, of `Forwarded`'s `for=`) that is not itself a trusted proxy.
    /// An unparsable or obfuscated hop ends the walk (the last trusted hop wins).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
        forwarded: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let (header, hops) = match joined(forwarded_for) {
            Joined::Empty => match joined(forwarded) {
                Joined::Empty => return peer,
                Joined::TooLong => return peer,
                Joined::Text(text) => ("forwarded", forwarded_hops(&text)),
            },
            Joined::TooLong => return peer,
            Joined::Text(text) => (
                "x-forwarded-for",
                text.split(',')
                    .map(|h| (parse_node(unquote_lenient(h)), h.to_owned()))
                    .collect(),
            ),
        };
        let mut client = peer;
        for (hop, raw) in hops.into_iter().rev() {
            match hop {
                Hop::Addr(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        break;
                    }
                }
                Hop::Hidden => break,
                Hop::Invalid => {
                    warn_unparsable(&UNPARSABLE_WARNINGS, header, client, &raw);
                    break;
                }
            }
        }
        client
    }
}

enum Joined {
    Empty,
    TooLong,
    Text(String),
}

/// All values of one header joined with `,` (how HTTP combines repeated list headers).
fn joined<'a>(values: impl Iterator<Item = &'a str>) -> Joined {
    let mut out = String::new();
    let mut any = false;
    for value in values {
        if out.len() + value.len() + 1 > MAX_FORWARDED_LEN {
            return Joined::TooLong;
        }
        if any {
            out.push(',');
        }
        any = true;
        out.push_str(value);
    }
    if any { Joined::Text(out) } else { Joined::Empty }
}

/// One hop of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// An address (a port, if any, stripped).
    Addr(IpAddr),
    /// `unknown`, an obfuscated `_identifier` (RFC 7239 section 6), or a
    /// `Forwarded` element without `for=`: a proxy saying it will not tell.
    Hidden,
    /// Not a node in any accepted form.
    Invalid,
}

/// Parses one node: an `X-Forwarded-For` hop or an (unquoted) `Forwarded`
/// `for=` value. Accepted: `192.0.2.1`, `192.0.2.1:4444`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443` (ports may be RFC 7239 obfuscated
/// ports such as `_p1`), `unknown` and `_hidden`.
pub(crate) fn parse_node(raw: &str) -> Hop {
    let s = raw.trim();
    if s.eq_ignore_ascii_case("unknown") || is_obfuscated(s) {
        return Hop::Hidden;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Hop::Invalid;
        };
        let Ok(v6) = inner.parse::<Ipv6Addr>() else {
            return Hop::Invalid;
        };
        return match after {
            "" => Hop::Addr(IpAddr::V6(v6)),
            _ => match after.strip_prefix(':') {
                Some(port) if is_port(port) => Hop::Addr(IpAddr::V6(v6)),
                _ => Hop::Invalid,
            },
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Addr(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        // `a.b.c.d:port` (the bracketed IPv6 form was handled above).
        return Hop::Addr(sa.ip());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if is_port(port) && !host.contains(':') => match host.parse::<std::net::Ipv4Addr>() {
            Ok(v4) => Hop::Addr(IpAddr::V4(v4)),
            Err(_) => Hop::Invalid,
        },
        _ => Hop::Invalid,
    }
}

/// RFC 7239 `obfnode` / `obfport`: `_` then one or more of ALPHA, DIGIT, `.`, `_`, `-`.
fn is_obfuscated(s: &str) -> bool {
    s.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    })
}

/// A decimal port (at most 5 digits, up to 65535) or an obfuscated one.
fn is_port(s: &str) -> bool {
    (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok())
        || is_obfuscated(s)
}

/// Some proxies quote `X-Forwarded-For` hops; a hop in matching double quotes is read without them.
fn unquote_lenient(hop: &str) -> &str {
    let t = hop.trim();
    t.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(t)
}

/// The `for=` node of each element of (comma-joined) `Forwarded` headers, in
/// order, with the element's raw text. A malformed element is `Invalid`; an
/// element without `for=` is `Hidden`.
fn forwarded_hops(text: &str) -> Vec<(Hop, String)> {
    split_outside_quotes(text, ',')
        .into_iter()
        .map(|element| (forwarded_element_for(element), element.trim().to_owned()))
        .collect()
}

/// Parses one `Forwarded` element (`pair *( ";" pair )`) and returns its `for` node.
fn forwarded_element_for(element: &str) -> Hop {
    let mut found = None;
    for pair in split_outside_quotes(element, ';') {
        let pair = pair.trim();
        if pair.is_empty() {
            // `for=x;` and `;for=x` are tolerated, as many parsers do.
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Hop::Invalid;
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Hop::Invalid;
        }
        let Some(value) = forwarded_value(value) else {
            return Hop::Invalid;
        };
        if name.eq_ignore_ascii_case("for") {
            if found.is_some() {
                // A parameter may occur once per element (RFC 7239 section 4).
                return Hop::Invalid;
            }
            found = Some(parse_node(&value));
        }
    }
    found.unwrap_or(Hop::Hidden)
}

/// A `token` or a `quoted-string` (escapes removed); `None` if it is neither.
fn forwarded_value(raw: &str) -> Option<String> {
    if let Some(inner) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        loop {
            match chars.next()? {
                '"' => return chars.next().is_none().then_some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
    }
    (!raw.is_empty() && raw.bytes().all(is_tchar)).then(|| raw.to_owned())
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits on `sep` where it is not inside a quoted string (backslash escapes honoured).
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// At most one warning about unparsable hops a minute.
pub static UNPARSABLE_WARNINGS: LogGate = LogGate::new(Duration::from_secs(60));

fn warn_unparsable(gate: &LogGate, header: &'static str, proxy: IpAddr, hop: &str) {
    let Some(suppressed) = gate.pass() else {
        return;
    };
    let quoted: String = hop.trim().chars().take(MAX_QUOTED_HOP).collect();
    tracing::warn!(
        header,
        proxy = %proxy,
        hop = ?quoted,
        suppressed,
        "a trusted proxy sent a forwarding hop that cannot be parsed; using the proxy's address as the client's"
    );
}

/// The resolved client address, stored in the request's extensions for handlers and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks() {
        let n = IpNet::parse("10.1.0.0/16").expect("net");
        assert!(n.contains(ip("10.1.255.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        assert!(IpNet::parse("0.0.0.0/0").expect("all").contains(ip("8.8.8.8")));
        assert!(IpNet::parse("fd00::/8").expect("v6").contains(ip("fd12::1")));
        assert!(!IpNet::parse("fd00::/8").expect("v6").contains(ip("10.0.0.1")));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("example.com").is_err());
        assert!(TrustedProxies::parse("10.0.0.1, ,192.168.0.0/24").is_ok());
        assert!(TrustedProxies::parse("10.0.0.1,nope").is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), std::iter::empty()),
            ip("203.0.113.9")
        );
        let some = TrustedProxies::parse("10.0.0.1").expect("parse");
        assert_eq!(
            some.client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), std::iter::empty()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_through_trusted_hops() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        // The client may put anything on the left; only the right-most untrusted hop counts.
        assert_eq!(
            t.client_ip(
                ip("10.0.0.1"),
                ["6.6.6.6, 198.51.100.7", "10.0.0.2"].into_iter(),
                std::iter::empty()
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), std::iter::empty(), std::iter::empty()),
            ip("10.0.0.1")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["garbage, 10.0.0.3"].into_iter(), std::iter::empty()),
            ip("10.0.0.3")
        );
        assert_eq!(
            t.client_ip(
                ip("10.0.0.1"),
                ["198.51.100.7, garbage"].into_iter(),
                std::iter::empty()
            ),
            ip("10.0.0.1")
        );
        let long = "1.1.1.1,".repeat(400);
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), [long.as_str()].into_iter(), std::iter::empty()),
            ip("10.0.0.1")
        );
    }

    fn xff(t: &TrustedProxies, peer: &str, values: &[&str]) -> IpAddr {
        t.client_ip(ip(peer), values.iter().copied(), std::iter::empty())
    }

    fn fwd(t: &TrustedProxies, peer: &str, values: &[&str]) -> IpAddr {
        t.client_ip(ip(peer), std::iter::empty(), values.iter().copied())
    }

    #[test]
    fn hops_with_ports_are_parsed() {
        for (raw, want) in [
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:4444", "192.0.2.1"),
            (" 192.0.2.1:4444 ", "192.0.2.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[::ffff:192.0.2.9]:80", "::ffff:192.0.2.9"),
            ("192.0.2.1:_port", "192.0.2.1"),
            ("[2001:db8::1]:_p-1", "2001:db8::1"),
        ] {
            assert_eq!(parse_node(raw), Hop::Addr(ip(want)), "{raw}");
        }
        for raw in ["unknown", "UNKNOWN", "_hidden", "_a.b-c_d"] {
            assert_eq!(parse_node(raw), Hop::Hidden, "{raw}");
        }
        for raw in [
            "",
            "garbage",
            "192.0.2.1:",
            "192.0.2.1:65536",
            "192.0.2.1:123456",
            "192.0.2.1:-1",
            "[2001:db8::1]:",
            "[2001:db8::1]443",
            "[2001:db8::1",
            "2001:db8::1]:443",
            "[192.0.2.1]:80",
            "192.0.2.1:80:80",
            "_",
            "_bad!",
            "example.com:80",
            "fe80::1%eth0",
        ] {
            assert_eq!(parse_node(raw), Hop::Invalid, "{raw:?}");
        }
    }

    #[test]
    fn forwarded_for_with_ports_gets_each_client_its_own_address() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        assert_eq!(xff(&t, "10.0.0.1", &["192.0.2.1:4444"]), ip("192.0.2.1"));
        assert_eq!(xff(&t, "10.0.0.1", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(
            xff(&t, "10.0.0.1", &["6.6.6.6, 198.51.100.7:1234, 10.0.0.2:80"]),
            ip("198.51.100.7")
        );
        assert_eq!(xff(&t, "10.0.0.1", &["\"[2001:db8::2]:443\""]), ip("2001:db8::2"));
        // `unknown` from a trusted proxy: the proxy is all that is known.
        assert_eq!(xff(&t, "10.0.0.1", &["198.51.100.7, unknown"]), ip("10.0.0.1"));
    }

    #[test]
    fn the_standard_forwarded_header() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        assert_eq!(fwd(&t, "10.0.0.1", &["for=192.0.2.60"]), ip("192.0.2.60"));
        assert_eq!(
            fwd(&t, "10.0.0.1", &["for=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(&t, "10.0.0.1", &["For=\"192.0.2.43:47011\";proto=https;by=10.0.0.1"]),
            ip("192.0.2.43")
        );
        // Several elements and several headers: the walk goes from the right.
        assert_eq!(
            fwd(
                &t,
                "10.0.0.1",
                &["for=6.6.6.6, for=198.51.100.7", "for=10.0.0.3;proto=http"]
            ),
            ip("198.51.100.7")
        );
        // Commas and semicolons inside quoted strings do not split.
        assert_eq!(
            fwd(&t, "10.0.0.1", &["for=198.51.100.8;host=\"a,b;c\""]),
            ip("198.51.100.8")
        );
        // Obfuscated identifiers and elements without `for` stop the walk at the last trusted hop.
        assert_eq!(fwd(&t, "10.0.0.1", &["for=198.51.100.7, for=_hidden"]), ip("10.0.0.1"));
        assert_eq!(fwd(&t, "10.0.0.1", &["for=198.51.100.7, for=unknown"]), ip("10.0.0.1"));
        assert_eq!(
            fwd(&t, "10.0.0.1", &["for=198.51.100.7, for=10.0.0.9, proto=https"]),
            ip("10.0.0.1")
        );
        // Malformed elements stop it too.
        for bad in [
            "for=[2001:db8::1]:443",
            "for=\"192.0.2.1",
            "for=192.0.2.1;for=192.0.2.2",
            "for",
            "=192.0.2.1",
            "for=\"192.0.2.1\"x",
        ] {
            assert_eq!(fwd(&t, "10.0.0.1", &[bad]), ip("10.0.0.1"), "{bad}");
        }
        // From an untrusted peer, nothing is believed.
        assert_eq!(fwd(&t, "203.0.113.9", &["for=192.0.2.60"]), ip("203.0.113.9"));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        assert_eq!(
            t.client_ip(
                ip("10.0.0.1"),
                ["198.51.100.1"].into_iter(),
                ["for=198.51.100.2"].into_iter()
            ),
            ip("198.51.100.1")
        );
        let long = format!("for=1.1.1.1,{}", "for=10.0.0.2,".repeat(300));
        assert_eq!(fwd(&t, "10.0.0.1", &[long.as_str()]), ip("10.0.0.1"));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        #[test]
        fn node_parser_never_panics(s in "\\PC{0,60}") {
            let _ = parse_node(&s);
            let _ = forwarded_hops(&s);
        }

        #[test]
        fn every_address_form_parses_back(addr in any_ip(), port in any::<u16>()) {
            let forms = match addr {
                IpAddr::V4(v4) => vec![v4.to_string(), format!("{v4}:{port}")],
                IpAddr::V6(v6) => vec![v6.to_string(), format!("[{v6}]"), format!("[{v6}]:{port}")],
            };
            for form in forms {
                prop_assert_eq!(parse_node(&form), Hop::Addr(addr));
                prop_assert_eq!(forwarded_element_for(&format!("for=\"{form}\"")), Hop::Addr(addr));
            }
        }

        #[test]
        fn the_client_is_the_rightmost_untrusted_hop(
            client in any::<[u8; 4]>(),
            port in any::<u16>(),
            junk in "[ -~]{0,20}",
            proxies in 0usize..4,
        ) {
            let client = IpAddr::from(client);
            prop_assume!(!matches!(client, IpAddr::V4(v4) if v4.octets()[0] == 10));
            let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
            let mut chain = vec![junk.replace(',', " "), format!("{client}:{port}")];
            chain.extend((0..proxies).map(|i| format!("10.0.0.{i}:80")));
            let joined = chain.join(", ");
            prop_assert_eq!(xff(&t, "10.0.0.1", &[joined.as_str()]), client);
            let elements: Vec<String> = chain[1..].iter().map(|h| format!("for=\"{h}\"")).collect();
            prop_assert_eq!(fwd(&t, "10.0.0.1", &[elements.join(", ").as_str()]), client);
        }
    }
}
