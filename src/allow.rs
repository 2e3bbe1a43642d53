//! `--allow CIDR`: which peer addresses may connect.
//!
//! A pure function of the peer's address and the configured networks, so
//! the reactor's accept filter is one call and the rules are unit-tested
//! here. An empty list allows everybody (the default, as the original).
//! IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`, what a dual-stack `::`
//! listener reports for IPv4 clients) are matched as the IPv4 address, so
//! `--allow 10.0.0.0/8` works whatever the bind address.
//!
//! CIDR parsing is hand-written (a dozen lines on `std::net`'s address
//! parsers): it needs no crate.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, host bits cleared.
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--allow` value is not a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/PREFIX` (IPv4 or IPv6), or a bare address (a single host:
    /// `/32` or `/128`). Host bits below the prefix are ignored
    /// (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError(format!("{s:?}: not an IPv4 or IPv6 address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                // Digits only: `u8::from_str` also takes a leading `+`.
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(CidrError(format!(
                        "{s:?}: the prefix length must be 0 to {max}"
                    )));
                }
            },
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `addr` with the bits below `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address counts
    /// as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// The `--allow` list: empty allows every peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn new(networks: Vec<Cidr>) -> Self {
        AllowList(networks)
    }

    /// Whether a peer at `ip` may connect. O(networks), a handful.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalizes() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("fd00::1/8").to_string(), "fd00::/8");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "host/8",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn contains_at_the_prefix_boundaries() {
        let n = cidr("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.0")) && n.contains(ip("10.255.255.255")));
        assert!(!n.contains(ip("11.0.0.0")) && !n.contains(ip("9.255.255.255")));
        assert!(n.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(
            !n.contains(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
        let one = cidr("127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(cidr("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(
            !cidr("0.0.0.0/0").contains(ip("::1")),
            "families do not mix"
        );
        let v6 = cidr("fd00::/8");
        assert!(v6.contains(ip("fdff:ffff::1")) && !v6.contains(ip("fe00::")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("10.0.0.1")));
        assert!(cidr("2001:db8::1/128").contains(ip("2001:db8::1")));
        assert!(!cidr("2001:db8::1/128").contains(ip("2001:db8::2")));
    }

    #[test]
    fn empty_list_allows_all() {
        assert!(AllowList::default().allows(ip("203.0.113.9")));
        let l = AllowList::new(vec![cidr("127.0.0.0/8"), cidr("::1")]);
        assert!(l.allows(ip("127.0.0.1")) && l.allows(ip("::1")));
        assert!(!l.allows(ip("10.0.0.1")) && !l.allows(ip("::2")));
    }
}
