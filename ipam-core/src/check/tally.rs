//! Counts over a snapshot, per pool and node: what a metrics endpoint shows. Labels follow
//! Calico's kube-controllers: an allocation counts for the node it was made on (its `node`
//! attribute, else its block's node), a block for the node it is affine to.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::Snapshot;
use crate::model::{ATTR_NODE, IpPool, IpamBlock};
use crate::store::Stored;

/// The pool label of a block that lies in no pool (Calico's value).
pub const NO_POOL: &str = "no_ippool";
/// The node label of a block with no node affinity (Calico's value).
pub const NO_AFFINITY: &str = "no_affinity";

/// A pool name and a node name: the labels of most counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolNode {
    /// The pool's name, or [`NO_POOL`].
    pub pool: String,
    /// The node's name, or [`NO_AFFINITY`].
    pub node: String,
}

/// Counts per pool and node, from one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Addresses in each pool's CIDR, by pool name.
    pub pool_size: BTreeMap<String, u128>,
    /// Addresses held by an owner (cooling-down ones are not).
    pub in_use: BTreeMap<PoolNode, u64>,
    /// Of those, addresses made on a node other than their block's.
    pub borrowed: BTreeMap<PoolNode, u64>,
    /// Blocks, by the node they are affine to.
    pub blocks: BTreeMap<PoolNode, u64>,
}

impl Tally {
    /// One count summed over pools, by node.
    pub fn per_node(counts: &BTreeMap<PoolNode, u64>) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for (k, n) in counts {
            *out.entry(k.node.as_str()).or_default() += n;
        }
        out
    }
}

/// The name of the pool `block` lies in, or [`NO_POOL`].
pub fn pool_of<'a>(pools: &'a [Stored<IpPool>], block: &IpNet) -> &'a str {
    pools
        .iter()
        .find(|p| p.value.cidr.contains(block))
        .map_or(NO_POOL, |p| p.name.as_str())
}

/// Counts what `snapshot` holds.
///
/// ```
/// use ipam_core::check::{Snapshot, tally};
/// let t = tally(&Snapshot::default());
/// assert!(t.pool_size.is_empty() && t.in_use.is_empty());
/// ```
pub fn tally(snapshot: &Snapshot) -> Tally {
    let mut t = Tally::default();
    for p in &snapshot.pools {
        let size = 1u128 << (p.value.cidr.max_prefix_len() - p.value.cidr.prefix_len()).min(127);
        t.pool_size.insert(p.name.clone(), size);
    }
    for b in &snapshot.blocks {
        let pool = pool_of(&snapshot.pools, &b.value.cidr);
        count_block(&mut t, pool, &b.value);
    }
    t
}

fn count_block(t: &mut Tally, pool: &str, b: &IpamBlock) {
    let host = b.host();
    let key = |node: &str| PoolNode {
        pool: pool.to_owned(),
        node: node.to_owned(),
    };
    *t.blocks
        .entry(key(host.unwrap_or(NO_AFFINITY)))
        .or_default() += 1;
    for o in 0..b.allocations.len() as u32 {
        let Some(attr) = b.attribute_of(o).filter(|a| a.released_at.is_none()) else {
            continue;
        };
        let made_on = attr.secondary.get(ATTR_NODE).map(String::as_str);
        let node = made_on.or(host).unwrap_or(NO_AFFINITY);
        *t.in_use.entry(key(node)).or_default() += 1;
        if made_on.is_some_and(|n| Some(n) != host) {
            *t.borrowed.entry(key(node)).or_default() += 1;
        }
    }
}
