//! The rules `check` applies, one function each; every rule is a pure function of what the
//! snapshot holds and returns its findings in a stable order.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Finding, LiveOwners};
use crate::cidr::ip_to_u128;
use crate::model::{
    ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, AffinityState, AllocationAttribute, BlockAffinity, IpPool,
    IpamBlock, IpamHandle,
};
use crate::store::Stored;

/// Allocated ordinals of a block with their attributes, skipping malformed entries (which
/// `problems` reports).
pub(super) fn allocated(
    b: &IpamBlock,
) -> impl Iterator<Item = (u32, IpAddr, &AllocationAttribute)> {
    let cidr = b.block_cidr().ok();
    let size = cidr.map_or(0, |c| c.size());
    (0..size.min(b.allocations.len() as u32)).filter_map(move |o| {
        let attr = b.attribute_of(o)?;
        Some((o, cidr?.addr(o), attr))
    })
}

/// The blocks in address order, a wider block before the narrower ones it contains.
fn in_address_order(blocks: &[Stored<IpamBlock>]) -> Vec<&IpamBlock> {
    let mut sorted: Vec<&IpamBlock> = blocks.iter().map(|b| &b.value).collect();
    sorted.sort_by_key(|b| (ip_to_u128(b.cidr.network()), b.cidr.prefix_len()));
    sorted
}

/// Blocks that cover some of the same addresses: a sweep in address order, each block paired
/// with the widest earlier block containing it (CIDRs either nest or are disjoint).
pub(super) fn overlapping_blocks(blocks: &[Stored<IpamBlock>]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut widest: Option<&IpamBlock> = None;
    for b in in_address_order(blocks) {
        match widest {
            Some(w) if w.cidr.contains(&b.cidr) => out.push(Finding::OverlappingBlocks {
                block: w.cidr,
                other: b.cidr,
            }),
            _ => widest = Some(b),
        }
    }
    out
}

/// Addresses allocated (cooling down or not) in more than one block, each reported against
/// the first block in address order that holds it.
pub(super) fn addresses_held_twice(blocks: &[Stored<IpamBlock>]) -> Vec<Finding> {
    let mut first: HashMap<IpAddr, (IpNet, &Option<String>)> = HashMap::new();
    let mut out = Vec::new();
    for b in in_address_order(blocks) {
        for (_, ip, attr) in allocated(b) {
            match first.entry(ip) {
                Entry::Vacant(e) => {
                    e.insert((b.cidr, &attr.handle_id));
                }
                Entry::Occupied(e) => {
                    let (block, handle) = *e.get();
                    out.push(Finding::AddressHeldTwice {
                        ip,
                        blocks: vec![block, b.cidr],
                        handles: vec![handle.clone(), attr.handle_id.clone()],
                    });
                }
            }
        }
    }
    out
}

/// Every block's own arrays (see [`IpamBlock::problems`]).
pub(super) fn block_problems(blocks: &[Stored<IpamBlock>]) -> Vec<Finding> {
    blocks
        .iter()
        .flat_map(|b| {
            b.value
                .problems()
                .into_iter()
                .map(|problem| Finding::BlockInconsistent {
                    block: b.value.cidr,
                    problem,
                })
        })
        .collect()
}

/// Handle counts against what the blocks hold, both ways.
pub(super) fn handle_counts(
    blocks: &[Stored<IpamBlock>],
    handles: &[Stored<IpamHandle>],
) -> Vec<Finding> {
    let mut actual: BTreeMap<(String, String), u32> = BTreeMap::new();
    for b in blocks {
        let Ok(cidr) = b.value.block_cidr() else {
            continue;
        };
        for (_, _, attr) in allocated(&b.value) {
            if let (Some(h), None) = (&attr.handle_id, &attr.released_at) {
                *actual.entry((h.clone(), cidr.to_string())).or_default() += 1;
            }
        }
    }
    let existing: HashMap<&str, &IpamHandle> = handles
        .iter()
        .map(|h| (h.name.as_str(), &h.value))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        for (block, &recorded) in &h.value.block {
            let held = actual.remove(&(h.name.clone(), block.clone())).unwrap_or(0);
            if held != recorded {
                out.push(Finding::HandleCountMismatch {
                    handle: h.name.clone(),
                    block: block.clone(),
                    recorded,
                    actual: held,
                    handle_exists: true,
                });
            }
        }
    }
    for ((handle, block), held) in actual {
        let handle_exists = existing.contains_key(handle.as_str());
        out.push(Finding::HandleCountMismatch {
            handle,
            block,
            recorded: 0,
            actual: held,
            handle_exists,
        });
    }
    out
}

/// Affinities whose block is missing or names another owner.
pub(super) fn affinities_without_block(
    blocks: &[Stored<IpamBlock>],
    affinities: &[Stored<BlockAffinity>],
) -> Vec<Finding> {
    let owner: HashMap<IpNet, Option<&str>> = blocks
        .iter()
        .map(|b| (b.value.cidr, b.value.host()))
        .collect();
    affinities
        .iter()
        .filter(|a| owner.get(&a.value.cidr).copied().flatten() != Some(a.value.node.as_str()))
        .map(|a| Finding::AffinityWithoutBlock {
            affinity: a.name.clone(),
            node: a.value.node.clone(),
            block: a.value.cidr,
            state: a.value.state,
        })
        .collect()
}

/// Host blocks that no confirmed affinity backs (a pending claim owns nothing).
pub(super) fn blocks_without_affinity(
    blocks: &[Stored<IpamBlock>],
    affinities: &[Stored<BlockAffinity>],
) -> Vec<Finding> {
    let confirmed: BTreeSet<(IpNet, &str)> = affinities
        .iter()
        .filter(|a| a.value.state == AffinityState::Confirmed)
        .map(|a| (a.value.cidr, a.value.node.as_str()))
        .collect();
    blocks
        .iter()
        .filter_map(|b| {
            let node = b.value.host()?;
            (!confirmed.contains(&(b.value.cidr, node))).then(|| Finding::BlockWithoutAffinity {
                block: b.value.cidr,
                node: node.to_owned(),
                in_use: b.value.in_use(),
            })
        })
        .collect()
}

/// Blocks that lie in no pool.
pub(super) fn outside_pools(
    blocks: &[Stored<IpamBlock>],
    pools: &[Stored<IpPool>],
) -> Vec<Finding> {
    blocks
        .iter()
        .filter(|b| !pools.iter().any(|p| p.value.cidr.contains(&b.value.cidr)))
        .map(|b| Finding::BlockOutsidePools {
            block: b.value.cidr,
            in_use: b.value.in_use(),
        })
        .collect()
}

/// Whether a release stamped `released_at` is past a cooldown of `seconds` at `now`. An
/// unparsable stamp counts as long past, as the allocator treats it.
pub fn cooldown_over(released_at: &str, seconds: u32, now: OffsetDateTime) -> bool {
    let at = OffsetDateTime::parse(released_at, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at + time::Duration::seconds(i64::from(seconds)) <= now
}

/// Addresses still held once their cooldown is over (gc returns them).
pub(super) fn expired_cooldowns(
    blocks: &[Stored<IpamBlock>],
    seconds: u32,
    now: OffsetDateTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for b in blocks {
        for (_, ip, attr) in allocated(&b.value) {
            let Some(at) = attr.released_at.as_deref() else {
                continue;
            };
            if cooldown_over(at, seconds, now) {
                out.push(Finding::CooldownExpired {
                    ip,
                    block: b.value.cidr,
                    handle: attr.handle_id.clone(),
                    released_at: at.to_owned(),
                });
            }
        }
    }
    out
}

/// Owned allocations whose owner is not live.
pub(super) fn leaks(blocks: &[Stored<IpamBlock>], owners: &LiveOwners) -> Vec<Finding> {
    let mut out = Vec::new();
    for b in blocks {
        for (o, ip, attr) in allocated(&b.value) {
            // A cooling-down address has no owner any more; gc returns it.
            if attr.released_at.is_some() || !owners.judges(attr) || owners.is_live(attr) {
                continue;
            }
            let get = |k: &str| attr.secondary.get(k).cloned();
            out.push(Finding::LeakedAllocation {
                ip,
                block: b.value.cidr,
                handle: attr.handle_id.clone(),
                sequence: b.value.sequence_number_for_allocation.get(&o).copied(),
                namespace: get(ATTR_NAMESPACE),
                pod: get(ATTR_POD),
                node: get(ATTR_NODE),
            });
        }
    }
    out
}

/// Host blocks of nodes that are not live.
pub(super) fn dead_node_blocks(
    blocks: &[Stored<IpamBlock>],
    nodes: &BTreeSet<String>,
) -> Vec<Finding> {
    blocks
        .iter()
        .filter_map(|b| {
            let node = b.value.host()?;
            (!nodes.contains(node)).then(|| Finding::DeadNodeBlock {
                block: b.value.cidr,
                node: node.to_owned(),
                in_use: b.value.in_use(),
            })
        })
        .collect()
}
