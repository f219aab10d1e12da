//! Source-address keys for per-address limits.

use std::net::{IpAddr, Ipv6Addr};

/// The key under which a per-address limit counts a source: an IPv4
/// address (an IPv4-mapped IPv6 one included) as itself, an IPv6 address as
/// its /64. One IPv6 host or home network usually holds a whole /64 (SLAAC,
/// privacy addresses), so a limit on single IPv6 addresses would let one
/// client take as many slots as it likes.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        limit_key(s.parse().unwrap()).to_string()
    }

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::1"), "::");
    }
}
