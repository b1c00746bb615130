//! Utilization per pool and per block. `available` counts addresses that are neither in
//! use nor reserved; it is not capacity minus the other two, since those can overlap.

use ipnet::IpNet;

use crate::cidr::ip_to_u128;
use crate::error::Result;
use crate::model::{IpPool, IpReservation, IpamBlock};
use crate::store::{Datastore, Scope, Stored};

use super::{Ipam, Reservations};

/// Address counts for a pool or a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Addresses in the range.
    pub capacity: u128,
    /// Allocated addresses (cooling-down ones included).
    pub in_use: u128,
    /// Addresses covered by reservations.
    pub reserved: u128,
    /// Addresses neither in use nor reserved.
    pub available: u128,
}

/// One block's use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUsage {
    /// The block.
    pub cidr: IpNet,
    /// Its affinity (`host:<node>`), if any.
    pub affinity: Option<String>,
    /// Its counts.
    pub usage: Usage,
}

/// One pool's use, with its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool name.
    pub name: String,
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// Its counts.
    pub usage: Usage,
    /// The blocks that exist in it, in address order.
    pub blocks: Vec<BlockUsage>,
}

impl<D: Datastore> Ipam<D> {
    /// Utilization of every pool (or of those named, by name or CIDR), from one read of
    /// pools, blocks and reservations.
    pub async fn utilization(&self, only: &[String]) -> Result<Vec<PoolUsage>> {
        let pools = self.store.list::<IpPool>(Scope::All).await?;
        let blocks = self.store.list::<IpamBlock>(Scope::All).await?;
        let reservations =
            Reservations::parse(&self.store.list::<IpReservation>(Scope::All).await?);
        let wanted = |p: &Stored<IpPool>| {
            only.is_empty()
                || only
                    .iter()
                    .any(|o| *o == p.name || o.parse() == Ok(p.value.cidr))
        };
        Ok(pools
            .iter()
            .filter(|p| wanted(p))
            .map(|p| pool_usage(p, &blocks, &reservations))
            .collect())
    }
}

fn pool_usage(
    pool: &Stored<IpPool>,
    blocks: &[Stored<IpamBlock>],
    reservations: &Reservations,
) -> PoolUsage {
    let mut mine: Vec<BlockUsage> = blocks
        .iter()
        .filter(|b| pool.value.cidr.contains(&b.value.cidr))
        .map(|b| block_usage(&b.value, reservations))
        .collect();
    mine.sort_by_key(|b| bounds(&b.cidr));
    let capacity = size(&pool.value.cidr);
    let reserved = reservations.count_in(&pool.value.cidr);
    let in_use: u128 = mine.iter().map(|b| b.usage.in_use).sum();
    // Reserved addresses in blocks were counted there; add those of unclaimed space.
    let reserved_in_blocks: u128 = mine.iter().map(|b| b.usage.reserved).sum();
    let in_blocks: u128 = mine.iter().map(|b| b.usage.capacity).sum();
    let available_in_blocks: u128 = mine.iter().map(|b| b.usage.available).sum();
    let unclaimed_free = (capacity - in_blocks) - (reserved - reserved_in_blocks);
    PoolUsage {
        name: pool.name.clone(),
        cidr: pool.value.cidr,
        usage: Usage {
            capacity,
            in_use,
            reserved,
            available: available_in_blocks + unclaimed_free,
        },
        blocks: mine,
    }
}

fn block_usage(block: &IpamBlock, reservations: &Reservations) -> BlockUsage {
    let capacity = size(&block.cidr);
    let in_use = block.in_use() as u128;
    let reserved = reservations.count_in(&block.cidr);
    let available = match block.block_cidr() {
        Ok(c) => block
            .unallocated
            .iter()
            .filter(|&&o| reservations.covering(c.addr(o)).is_none())
            .count() as u128,
        Err(_) => 0,
    };
    BlockUsage {
        cidr: block.cidr,
        affinity: block.affinity.clone(),
        usage: Usage {
            capacity,
            in_use,
            reserved,
            available,
        },
    }
}

fn size(net: &IpNet) -> u128 {
    let (lo, hi) = bounds(net);
    (hi - lo).saturating_add(1)
}

/// First and last address of a network, as integers.
pub(crate) fn bounds(net: &IpNet) -> (u128, u128) {
    (ip_to_u128(net.network()), ip_to_u128(net.broadcast()))
}
