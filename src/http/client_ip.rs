//! The client IP used for rate limiting and logs, and `AVEMINT_TRUSTED_PROXIES`.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a listed proxy, and
//! then only as far back as the chain stays inside listed proxies: the first
//! address (from the right) that is not a trusted proxy is the client. No
//! forwarded header (`X-Forwarded-Host`, `-Proto`, `Forwarded`) ever changes
//! the redirect URI, cookie flags or origin allow-lists: those come from
//! configuration only.

use std::net::IpAddr;

/// `X-Forwarded-For` values longer than this (all headers together) are ignored.
const MAX_FORWARDED_LEN: usize = 2048;

/// One trusted proxy address or network (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses an address or an address with a `/prefix`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{raw}` has an invalid prefix length (0 to {max})")),
            },
        };
        Ok(Self { addr, prefix })
    }

    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 { 0 } else { bits >> (width - prefix) }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed. Empty by default: nothing is.
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
    /// which case the right-most `X-Forwarded-For` entry that is not itself a
    /// trusted proxy. Malformed entries end the walk (the last trusted hop wins).
    pub fn client_ip<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut joined = String::new();
        for value in forwarded_for {
            if joined.len() + value.len() > MAX_FORWARDED_LEN {
                return peer;
            }
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(value);
        }
        let mut client = peer;
        for hop in joined.rsplit(',').map(str::trim) {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = canonical(ip);
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// The resolved client address, stored in the request's extensions for handlers and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;

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
            none.client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter()),
            ip("203.0.113.9")
        );
        let some = TrustedProxies::parse("10.0.0.1").expect("parse");
        assert_eq!(
            some.client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_through_trusted_hops() {
        let t = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        // The client may put anything on the left; only the right-most untrusted hop counts.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["6.6.6.6, 198.51.100.7", "10.0.0.2"].into_iter()),
            ip("198.51.100.7")
        );
        assert_eq!(t.client_ip(ip("10.0.0.1"), std::iter::empty()), ip("10.0.0.1"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["garbage, 10.0.0.3"].into_iter()),
            ip("10.0.0.3")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["198.51.100.7, garbage"].into_iter()),
            ip("10.0.0.1")
        );
        let long = "1.1.1.1,".repeat(400);
        assert_eq!(t.client_ip(ip("10.0.0.1"), [long.as_str()].into_iter()), ip("10.0.0.1"));
    }
}
