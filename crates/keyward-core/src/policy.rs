//! A key's policy: what a validation of an otherwise valid key must also
//! satisfy. Today the IP allowlist; rate limits and credits join it here.
//!
//! A policy is parsed once, at the edge (the admin API) or when read back from
//! storage, into its checking form: the warm path searches sorted ranges and
//! allocates nothing.

use std::net::IpAddr;
use std::sync::Arc;

use crate::fields::FieldError;
use crate::net::{Cidr, address_number};

/// Most CIDR ranges on one key.
pub const MAX_ALLOWED_CIDRS: usize = 64;
/// Longest text of one CIDR range (`ffff:…:ffff/128` is 43 characters).
pub const MAX_CIDR_CHARS: usize = 64;

/// A key's IP allowlist: at most 64 CIDR ranges, IPv4 and IPv6, kept in
/// canonical form (host bits cleared, sorted, without duplicates). Empty
/// means no restriction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedCidrs {
    /// Canonical, sorted, deduplicated: what is stored and shown.
    cidrs: Vec<Cidr>,
    /// The same ranges merged, sorted by first address, per family: what
    /// `contains` searches.
    ipv4: Vec<(u128, u128)>,
    ipv6: Vec<(u128, u128)>,
}

impl AllowedCidrs {
    /// No ranges: no restriction.
    pub const EMPTY: Self = Self {
        cidrs: Vec::new(),
        ipv4: Vec::new(),
        ipv6: Vec::new(),
    };

    /// Parses a list of CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`; a bare
    /// address is a range of one). On error, the index of the bad one, or
    /// `None` for a list over [`MAX_ALLOWED_CIDRS`].
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, (Option<usize>, FieldError)> {
        if raw.len() > MAX_ALLOWED_CIDRS {
            return Err((
                None,
                FieldError::new(format!("must hold at most {MAX_ALLOWED_CIDRS} CIDR ranges")),
            ));
        }
        let cidrs = raw
            .iter()
            .enumerate()
            .map(|(i, raw)| parse_cidr(raw.as_ref()).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(cidrs))
    }

    fn new(mut cidrs: Vec<Cidr>) -> Self {
        cidrs.sort();
        cidrs.dedup();
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for cidr in &cidrs {
            let (is_ipv4, first, last) = cidr.span();
            if is_ipv4 { &mut ipv4 } else { &mut ipv6 }.push((first, last));
        }
        Self {
            cidrs,
            ipv4: merged(ipv4),
            ipv6: merged(ipv6),
        }
    }

    /// Whether the list is empty: no restriction.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// Whether `ip` is in one of the ranges (an IPv4-mapped IPv6 address
    /// counts as IPv4). An empty list contains nothing; [`Policy::admits`]
    /// is the check that treats it as "no restriction".
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (is_ipv4, n) = address_number(ip);
        let ranges = if is_ipv4 { &self.ipv4 } else { &self.ipv6 };
        // The first range ending at or after `n`: the only one that may hold it.
        let at = ranges.partition_point(|&(_, last)| last < n);
        ranges.get(at).is_some_and(|&(first, _)| first <= n)
    }

    /// The ranges in canonical form.
    pub fn as_slice(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// The ranges as canonical text, as the wire and storage carry them.
    pub fn to_strings(&self) -> Vec<String> {
        self.cidrs.iter().map(ToString::to_string).collect()
    }
}

fn parse_cidr(raw: &str) -> Result<Cidr, FieldError> {
    if raw.len() > MAX_CIDR_CHARS {
        return Err(FieldError::new(format!(
            "must be at most {MAX_CIDR_CHARS} characters"
        )));
    }
    raw.parse::<Cidr>().map_err(|_| {
        FieldError::new(
            "must be an IP address or a CIDR range such as 203.0.113.0/24 or 2001:db8::/32",
        )
    })
}

/// Sorted ranges with overlapping and adjacent ones joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out
}

/// What a validation of a valid key must also satisfy. The default policy
/// restricts nothing; a key without restrictions carries no policy at all
/// (see [`Policy::shared`]), so the warm path pays one branch for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Client addresses the key may be used from; empty: any.
    pub allowed_cidrs: AllowedCidrs,
}

impl Policy {
    /// Whether the policy restricts nothing.
    pub fn is_unrestricted(&self) -> bool {
        self.allowed_cidrs.is_empty()
    }

    /// The policy as a key record carries it: `None` when it restricts
    /// nothing.
    pub fn shared(self) -> Option<Arc<Self>> {
        (!self.is_unrestricted()).then(|| Arc::new(self))
    }

    /// Whether a request from `client` passes the allowlist. It fails
    /// closed: with an allowlist, a request whose client address is unknown
    /// is refused.
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        self.allowed_cidrs.is_empty() || client.is_some_and(|ip| self.allowed_cidrs.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &[&str]) -> AllowedCidrs {
        AllowedCidrs::parse(raw).expect("valid ranges")
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    #[test]
    fn ranges_are_canonical_sorted_and_deduplicated() {
        let cidrs = list(&["10.9.8.7/8", "2001:db8::1/32", "10.0.0.0/8", "192.0.2.1"]);
        assert_eq!(
            cidrs.to_strings(),
            ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
        );
        assert_eq!(
            AllowedCidrs::parse(&cidrs.to_strings()).unwrap(),
            cidrs,
            "canonical text reparses"
        );
        assert!(list(&[] as &[&str]).is_empty());
    }

    #[test]
    fn bad_ranges_name_their_index_and_too_many_is_one_violation() {
        for (raw, index) in [
            (vec!["10.0.0.0/8", "10.0.0.0/33"], Some(1)),
            (vec!["host"], Some(0)),
            (vec!["1.2.3.4", ""], Some(1)),
            (vec!["::/129"], Some(0)),
        ] {
            assert_eq!(AllowedCidrs::parse(&raw).unwrap_err().0, index, "{raw:?}");
        }
        let long = "1".repeat(MAX_CIDR_CHARS + 1);
        assert_eq!(AllowedCidrs::parse(&[long]).unwrap_err().0, Some(0));
        let many: Vec<String> = (0..=MAX_ALLOWED_CIDRS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert_eq!(AllowedCidrs::parse(&many).unwrap_err().0, None);
        assert!(AllowedCidrs::parse(&many[..MAX_ALLOWED_CIDRS]).is_ok());
    }

    #[test]
    fn contains_agrees_with_each_cidr() {
        let raw = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "203.0.113.7",
            "2001:db8::/32",
            "::1",
        ];
        let cidrs = list(&raw);
        let probes = [
            "10.0.0.0",
            "10.255.255.255",
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.0",
            "192.0.2.127",
            "192.0.2.128",
            "192.0.2.255",
            "192.0.3.0",
            "203.0.113.7",
            "203.0.113.8",
            "::ffff:203.0.113.7",
            "2001:db8:ffff::1",
            "2001:db9::",
            "::1",
            "::2",
            "0.0.0.1",
            "::ffff:0:1",
        ];
        for probe in probes {
            let expected = raw
                .iter()
                .any(|c| c.parse::<Cidr>().expect("a cidr").contains(ip(probe)));
            assert_eq!(cidrs.contains(ip(probe)), expected, "{probe}");
        }
        // IPv6 everywhere does not admit IPv4 clients, and the reverse.
        assert!(!list(&["::/0"]).contains(ip("192.0.2.1")));
        assert!(!list(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(list(&["0.0.0.0/0"]).contains(ip("255.255.255.255")));
    }

    #[test]
    fn a_policy_fails_closed_without_an_address() {
        let open = Policy::default();
        assert!(open.is_unrestricted());
        assert!(open.admits(None));
        assert!(open.clone().shared().is_none());
        let office = Policy {
            allowed_cidrs: list(&["203.0.113.0/24"]),
        };
        assert!(office.admits(Some(ip("203.0.113.9"))));
        assert!(!office.admits(Some(ip("198.51.100.1"))));
        assert!(!office.admits(None));
        assert!(office.shared().is_some());
    }
}
