//! Block arithmetic and names, as plain functions over addresses and prefixes.
//!
//! Addresses of both families are handled as `u128` offsets so that every rule is written
//! once. [`BlockCidr`] is the only way into the allocator for a block: past it, a block is
//! known to be well formed. Owner and node names are in [`crate::names`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::{Error, Result};

/// Block prefix lengths allowed for IPv4 pools.
pub const V4_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 20..=32;
/// Block prefix lengths allowed for IPv6 pools.
pub const V6_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 116..=128;
/// The CIDR of one block: a network address with a block-sized prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockCidr(IpNet);

impl BlockCidr {
    /// Validates `net` as a block: no host bits, prefix in the family's block range.
    ///
    /// ```
    /// use ipam_core::BlockCidr;
    /// assert!(BlockCidr::new("10.0.0.0/26".parse().unwrap()).is_ok());
    /// assert!(BlockCidr::new("10.0.0.5/26".parse().unwrap()).is_err()); // host bits
    /// assert!(BlockCidr::new("10.0.0.0/16".parse().unwrap()).is_err()); // too large
    /// ```
    pub fn new(net: IpNet) -> Result<Self> {
        check_block_size(&net, net.prefix_len())?;
        if net.trunc() != net {
            return Err(Error::InvalidCidr {
                cidr: net.to_string(),
                reason: "host bits are set",
            });
        }
        Ok(BlockCidr(net))
    }

    /// The block of `prefix_len` bits that contains `ip`.
    pub fn containing(ip: IpAddr, prefix_len: u8) -> Result<Self> {
        let net = IpNet::new(ip, prefix_len).map_err(|_| Error::InvalidCidr {
            cidr: format!("{ip}/{prefix_len}"),
            reason: "prefix too long",
        })?;
        BlockCidr::new(net.trunc())
    }

    /// The block's network.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Number of addresses (ordinals) in the block.
    pub fn size(&self) -> u32 {
        1u32 << (max_prefix(&self.0) - self.0.prefix_len())
    }

    /// The ordinal of `ip` in this block, if it lies inside.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.0.contains(&ip) {
            return None;
        }
        // Inside a block of at most 2^12 addresses the difference fits in u32.
        Some((ip_to_u128(ip) - ip_to_u128(self.0.network())) as u32)
    }

    /// The address of `ordinal`; ordinals past the end wrap, so callers check `size` first.
    pub fn addr(&self, ordinal: u32) -> IpAddr {
        u128_to_ip(
            ip_to_u128(self.0.network()) + u128::from(ordinal % self.size()),
            &self.0,
        )
    }

    /// The address with the block's prefix, as CNI results carry it (`10.0.0.17/26`).
    pub fn addr_net(&self, ordinal: u32) -> IpNet {
        // The prefix came from a valid IpNet of the same family, so it is in range.
        IpNet::new(self.addr(ordinal), self.0.prefix_len()).unwrap_or(self.0)
    }

    /// The Kubernetes name of the block (`192-168-185-0-26`).
    pub fn name(&self) -> String {
        cidr_to_name(&self.0)
    }
}

impl fmt::Display for BlockCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Checks a block prefix length against the family's range.
pub fn check_block_size(net: &IpNet, size: u8) -> Result<()> {
    let (range, family) = match net {
        IpNet::V4(_) => (V4_BLOCK_SIZES, "IPv4"),
        IpNet::V6(_) => (V6_BLOCK_SIZES, "IPv6"),
    };
    if range.contains(&size) {
        Ok(())
    } else {
        Err(Error::BlockSizeOutOfRange {
            size,
            family,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

/// Calico's CIDR-to-name encoding: `.`, `:` and `/` become `-`.
pub fn cidr_to_name(net: &IpNet) -> String {
    net.to_string().replace(['.', ':', '/'], "-")
}

/// The number of blocks of `block_size` bits in `pool`, saturating at `u128::MAX`.
pub fn blocks_in_pool(pool: &IpNet, block_size: u8) -> u128 {
    let bits = u32::from(block_size.saturating_sub(pool.prefix_len()));
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

/// The `index`-th block of `block_size` bits in `pool`.
pub fn nth_block(pool: &IpNet, block_size: u8, index: u128) -> Result<BlockCidr> {
    let shift = u32::from(max_prefix(pool) - block_size);
    let offset = index.checked_shl(shift).unwrap_or(0);
    let base = ip_to_u128(pool.network()) + offset;
    let net = IpNet::new(u128_to_ip(base, pool), block_size).map_err(|_| Error::InvalidCidr {
        cidr: pool.to_string(),
        reason: "block size exceeds the family",
    })?;
    BlockCidr::new(net)
}

/// An address as an integer, IPv4 in the low 32 bits.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of the same family as `like` at integer `n`.
pub fn u128_to_ip(n: u128, like: &IpNet) -> IpAddr {
    match like {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses a CIDR or a bare address (as a host route) the way users write reservations.
pub fn parse_cidr_or_ip(text: &str) -> Result<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(IpNet::V4(Ipv4Net::from(a))),
        Ok(IpAddr::V6(a)) => Ok(IpNet::V6(Ipv6Net::from(a))),
        Err(_) => Err(Error::InvalidCidr {
            cidr: text.to_owned(),
            reason: "not a CIDR or an address",
        }),
    }
}

fn max_prefix(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(s: &str) -> BlockCidr {
        BlockCidr::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn ordinals_and_addresses_round_trip_v4_and_v6() {
        let b = block("192.168.185.0/26");
        assert_eq!(b.size(), 64);
        assert_eq!(b.ordinal_of("192.168.185.16".parse().unwrap()), Some(16));
        assert_eq!(b.ordinal_of("192.168.185.64".parse().unwrap()), None);
        assert_eq!(b.addr(63).to_string(), "192.168.185.63");
        assert_eq!(b.addr_net(17).to_string(), "192.168.185.17/26");
        let b6 = block("fd00:10:244::40/122");
        assert_eq!(b6.size(), 64);
        assert_eq!(b6.ordinal_of("fd00:10:244::41".parse().unwrap()), Some(1));
        assert_eq!(b6.addr(2).to_string(), "fd00:10:244::42");
    }

    #[test]
    fn block_for_an_address() {
        let b = BlockCidr::containing("10.244.3.17".parse().unwrap(), 26).unwrap();
        assert_eq!(b.to_string(), "10.244.3.0/26");
        let b = BlockCidr::containing("fd00::1:ff".parse().unwrap(), 112).unwrap_err();
        assert!(matches!(b, Error::BlockSizeOutOfRange { size: 112, .. }));
    }

    #[test]
    fn block_sizes_are_checked_per_family() {
        assert!(BlockCidr::new("10.0.0.0/19".parse().unwrap()).is_err());
        assert!(BlockCidr::new("10.0.0.0/20".parse().unwrap()).is_ok());
        assert!(BlockCidr::new("10.0.0.1/32".parse().unwrap()).is_ok());
        assert!(BlockCidr::new("fd00::/115".parse().unwrap()).is_err());
        assert!(BlockCidr::new("fd00::/128".parse().unwrap()).is_ok());
    }

    #[test]
    fn names_follow_calico() {
        assert_eq!(block("192.168.185.0/26").name(), "192-168-185-0-26");
        assert_eq!(block("fd00:10:244::40/122").name(), "fd00-10-244--40-122");
        assert_eq!(
            crate::names::affinity_name("mac-k8s", &block("192.168.185.0/26")),
            "mac-k8s-192-168-185-0-26"
        );
    }

    #[test]
    fn nth_block_walks_the_pool() {
        let pool: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(blocks_in_pool(&pool, 24), 65536);
        assert_eq!(nth_block(&pool, 24, 0).unwrap().to_string(), "10.0.0.0/24");
        assert_eq!(
            nth_block(&pool, 24, 65535).unwrap().to_string(),
            "10.255.255.0/24"
        );
        let pool6: IpNet = "fd00::/64".parse().unwrap();
        assert_eq!(
            nth_block(&pool6, 122, 1).unwrap().to_string(),
            "fd00::40/122"
        );
    }

    #[test]
    fn reservations_accept_addresses_and_cidrs() {
        assert_eq!(
            parse_cidr_or_ip("10.0.0.5").unwrap().to_string(),
            "10.0.0.5/32"
        );
        assert_eq!(
            parse_cidr_or_ip("10.0.0.5/30").unwrap().to_string(),
            "10.0.0.4/30"
        );
        assert!(parse_cidr_or_ip("10.0.0.500").is_err());
    }
}
