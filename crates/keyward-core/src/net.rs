//! Network addresses: CIDR ranges, and which address a request came from.

use std::net::IpAddr;

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address
/// is a network of one. Parsing clears the host bits (`10.1.2.3/8` is
/// `10.0.0.0/8`), and it prints in that canonical form, always with its
/// prefix length (`203.0.113.7/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The network's first and last address as numbers within its family
    /// (an IPv4 network's as `u32` values), and whether it is IPv4: the
    /// form [`AllowedCidrs`](crate::AllowedCidrs) searches.
    pub fn span(&self) -> (bool, u128, u128) {
        let (ipv4, first, bits) = match self.network {
            IpAddr::V4(network) => (true, u128::from(u32::from(network)), 32),
            IpAddr::V6(network) => (false, u128::from(network), 128),
        };
        let host_bits = bits - u32::from(self.prefix);
        let size = 1u128.checked_shl(host_bits).map_or(u128::MAX, |n| n - 1);
        (ipv4, first, first | size)
    }
}

/// `ip` as [`Cidr::span`] numbers it: whether it is IPv4 (an IPv4-mapped
/// IPv6 address counts as IPv4), and its number within its family.
pub fn address_number(ip: IpAddr) -> (bool, u128) {
    match ip.to_canonical() {
        IpAddr::V4(ip) => (true, u128::from(u32::from(ip))),
        IpAddr::V6(ip) => (false, u128::from(ip)),
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match raw.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or CIDR such as 10.0.0.0/8"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{raw:?} has a prefix length outside 0..={max}"))?,
        };
        // Clear the host bits: one network, one spelling.
        let network = match network {
            IpAddr::V4(ip) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(ip) & mask).into())
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(ip) & mask).into())
            }
        };
        Ok(Self { network, prefix })
    }
}

/// The client's address by the trust rule: the connection's peer, unless the
/// peer is a trusted proxy; then `x-forwarded-for` read from the right, the
/// first address that is not a trusted proxy (the leftmost if all are).
/// `None` when the connection has no peer address.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    let mut client = peer?;
    if !is_trusted(client) {
        return Some(client);
    }
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        // A hop a trusted proxy wrote but that is no address ends the chain.
        let Ok(hop) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let net = |raw: &str| raw.parse::<Cidr>().unwrap();
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.20.30.40")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(net("::1").contains(ip("::1")));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_print_canonically_and_span_their_family() {
        let net = |raw: &str| raw.parse::<Cidr>().unwrap();
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net(" 203.0.113.7 ").to_string(), "203.0.113.7/32");
        assert_eq!(net("::ffff:192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("10.1.2.3/8"), net("10.0.0.0/8"));
        for (cidr, inside, outside) in [
            ("10.0.0.0/8", "10.255.255.255", "11.0.0.0"),
            ("0.0.0.0/0", "255.255.255.255", "::1"),
            ("::/0", "::1", "0.0.0.0"),
            ("192.0.2.1", "::ffff:192.0.2.1", "192.0.2.2"),
            ("fd00::/8", "fdff::1", "fe00::"),
        ] {
            let (ipv4, first, last) = net(cidr).span();
            let within = |raw: &str| {
                let (family, n) = address_number(ip(raw));
                family == ipv4 && (first..=last).contains(&n)
            };
            for (raw, expected) in [(inside, true), (outside, false)] {
                assert_eq!(within(raw), expected, "{raw} in {cidr}");
                assert_eq!(net(cidr).contains(ip(raw)), expected, "{raw} in {cidr}");
            }
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        let nets = |raw: &[&str]| {
            raw.iter()
                .map(|n| n.parse::<Cidr>().unwrap())
                .collect::<Vec<_>>()
        };
        let peer = Some(ip("10.0.0.5"));
        let forged = Some("203.0.113.7");
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(client_address(peer, forged, &[]), peer);
        // An untrusted peer: still the peer.
        assert_eq!(
            client_address(peer, forged, &nets(&["192.168.0.0/16"])),
            peer
        );
        // A trusted peer: the first untrusted hop from the right.
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(peer, forged, &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(peer, Some("198.51.100.1, 203.0.113.7, 10.0.0.9"), &trusted),
            Some(ip("203.0.113.7")),
            "a client-written left part is not believed"
        );
        assert_eq!(
            client_address(peer, Some("10.1.1.1, 10.2.2.2"), &trusted),
            Some(ip("10.1.1.1"))
        );
        assert_eq!(
            client_address(peer, Some("junk, 203.0.113.7"), &trusted),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(client_address(peer, Some("junk"), &trusted), peer);
        assert_eq!(client_address(peer, None, &trusted), peer);
        assert_eq!(client_address(None, forged, &trusted), None);
    }
}
