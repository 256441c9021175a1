//! The unit a source address is counted in.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A source address as throttles count it: an IPv4 address as it is, an IPv6 address by its
/// /64 prefix (one subscriber usually holds a whole /64, so counting single IPv6 addresses
/// would give one attacker 2^64 budgets). An IPv4-mapped IPv6 address counts as its IPv4
/// address (a dual-stack socket reports IPv4 peers that way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_count_v4_exactly_and_v6_by_prefix() {
        let check = |address: &str, expected: &str| {
            let key = SourceKey::of(address.parse().unwrap());
            assert_eq!(key.to_string(), expected, "{address}");
        };
        check("192.0.2.7", "192.0.2.7");
        check("::ffff:192.0.2.7", "192.0.2.7");
        check("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64");
        check("2001:db8:1:2::ffff", "2001:db8:1:2::/64");
        check("::1", "::/64");
        assert_eq!(
            SourceKey::of("2001:db8::1".parse().unwrap()),
            SourceKey::of("2001:db8::2".parse().unwrap())
        );
        assert_ne!(
            SourceKey::of("2001:db8:0:1::1".parse().unwrap()),
            SourceKey::of("2001:db8:0:2::1".parse().unwrap())
        );
    }
}
