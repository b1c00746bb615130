//! Consistency checks over a whole datastore, for `ipamctl check`.
//!
//! [`Snapshot::read`] lists every kind once; [`check`] is a pure function of that snapshot,
//! the operator's lists of what is alive, and `now`. Every finding names what a later repair
//! needs (address, sequence number, handle), so that `ipamctl release --from-report` can
//! release exactly what was reported and skip whatever changed since.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cidr::ip_to_u128;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::model::{
    ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, AffinityState, AllocationAttribute, BlockAffinity, IpPool,
    IpamBlock, IpamConfig, IpamHandle,
};
use crate::store::{Datastore, Scope, StoreError, Stored};

mod finding;

pub use self::finding::{Finding, FindingKind};

/// Everything `check` looks at, read once.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every pool.
    pub pools: Vec<Stored<IpPool>>,
    /// Every block.
    pub blocks: Vec<Stored<IpamBlock>>,
    /// Every handle.
    pub handles: Vec<Stored<IpamHandle>>,
    /// Every affinity, in any state.
    pub affinities: Vec<Stored<BlockAffinity>>,
    /// The IPAM config (defaults when none is stored).
    pub config: IpamConfig,
}

/// The owners the operator says are alive: handle IDs, container IDs and `namespace/pod`s.
///
/// An allocation is alive when its handle is listed, when its handle ends in `.<id>` for a
/// listed container ID (handles are `<network>.<container id>`), or when its `namespace`
/// and `pod` attributes match a listed `namespace/pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveOwners {
    ids: BTreeSet<String>,
    pods: BTreeSet<(String, String)>,
}

/// What the operator says is alive; `None` skips the corresponding leak check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live<'a> {
    /// Live allocation owners.
    pub owners: Option<&'a LiveOwners>,
    /// Live node names.
    pub nodes: Option<&'a BTreeSet<String>>,
}

/// The result of a check: totals and every finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When the check ran (RFC 3339).
    pub checked_at: String,
    /// What was looked at.
    pub totals: Totals,
    /// Every inconsistency, in a stable order.
    pub findings: Vec<Finding>,
}

/// What a check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Pools.
    pub pools: usize,
    /// Blocks.
    pub blocks: usize,
    /// Affinities.
    pub affinities: usize,
    /// Handles.
    pub handles: usize,
    /// Allocated addresses, cooling-down ones included.
    pub allocations: usize,
    /// Whether a list of live owners was given (so leaks were looked for).
    pub live_owners_checked: bool,
    /// Whether a list of live nodes was given.
    pub live_nodes_checked: bool,
}

impl Snapshot {
    /// Reads every pool, block, handle and affinity, and the config, one list each.
    pub async fn read<D: Datastore>(store: &D) -> Result<Self, StoreError> {
        let config = match store.get::<IpamConfig>(IpamConfig::NAME).await {
            Ok(c) => c.value,
            Err(StoreError::NotFound { .. }) => IpamConfig::default(),
            Err(e) => return Err(e),
        };
        Ok(Snapshot {
            pools: store.list(Scope::All).await?,
            blocks: store.list(Scope::All).await?,
            handles: store.list(Scope::All).await?,
            affinities: store.list(Scope::All).await?,
            config,
        })
    }
}

impl LiveOwners {
    /// Parses one owner per line: a handle ID, a container ID, or `namespace/pod`.
    /// Blank lines and lines starting with `#` are ignored.
    ///
    /// ```
    /// use ipam_core::check::LiveOwners;
    /// let live = LiveOwners::parse("# live pods\nkube-system/coredns-1\nabc123\n").unwrap();
    /// assert_eq!(live.len(), 2);
    /// assert!(LiveOwners::parse("a/b/c").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let mut live = LiveOwners::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split('/').collect::<Vec<_>>().as_slice() {
                [id] => {
                    live.ids.insert((*id).to_owned());
                }
                [ns, pod] if !ns.is_empty() && !pod.is_empty() => {
                    live.pods.insert(((*ns).to_owned(), (*pod).to_owned()));
                }
                _ => {
                    return Err(Error::InvalidName {
                        kind: "live owner (handle, container ID or namespace/pod)",
                        name: line.to_owned(),
                    });
                }
            }
        }
        Ok(live)
    }

    /// How many owners are listed.
    pub fn len(&self) -> usize {
        self.ids.len() + self.pods.len()
    }

    /// Whether nothing is listed (then every owned allocation is a leak).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the owner of `attr` is listed.
    pub fn is_live(&self, attr: &AllocationAttribute) -> bool {
        if let Some(h) = attr.handle_id.as_deref() {
            if self.ids.contains(h) {
                return true;
            }
            if let Some((_, container)) = h.split_once('.') {
                if self.ids.contains(container) {
                    return true;
                }
            }
        }
        match (
            attr.secondary.get(ATTR_NAMESPACE),
            attr.secondary.get(ATTR_POD),
        ) {
            (Some(ns), Some(pod)) => self.pods.contains(&(ns.clone(), pod.clone())),
            _ => false,
        }
    }

    /// Whether an allocation can be judged at all: it names a handle or a pod. Allocations
    /// with neither (made by address, without an owner) are never reported as leaks.
    pub fn can_judge(attr: &AllocationAttribute) -> bool {
        attr.handle_id.is_some()
            || (attr.secondary.contains_key(ATTR_NAMESPACE)
                && attr.secondary.contains_key(ATTR_POD))
    }
}

impl Report {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// How many findings of each kind (kinds with none are left out).
    pub fn counts(&self) -> BTreeMap<FindingKind, usize> {
        let mut counts = BTreeMap::new();
        for f in &self.findings {
            *counts.entry(f.kind()).or_default() += 1;
        }
        counts
    }

    /// The findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.kind() == kind)
    }
}

/// Checks a snapshot: every inconsistency, and leaks against the live lists given.
pub fn check(snapshot: &Snapshot, live: &Live<'_>, now: OffsetDateTime) -> Report {
    let mut findings = overlaps(&snapshot.blocks);
    for b in &snapshot.blocks {
        findings.extend(
            b.value
                .problems()
                .into_iter()
                .map(|problem| Finding::BlockInconsistent {
                    block: b.value.cidr,
                    problem,
                }),
        );
    }
    findings.extend(handle_counts(&snapshot.blocks, &snapshot.handles));
    findings.extend(affinities(&snapshot.blocks, &snapshot.affinities));
    findings.extend(outside_pools(&snapshot.blocks, &snapshot.pools));
    findings.extend(expired_cooldowns(
        &snapshot.blocks,
        snapshot.config.ip_cooldown_seconds,
        now,
    ));
    if let Some(owners) = live.owners {
        findings.extend(leaks(&snapshot.blocks, owners));
    }
    if let Some(nodes) = live.nodes {
        findings.extend(dead_node_blocks(&snapshot.blocks, nodes));
    }
    findings.sort_by_key(Finding::kind);
    Report {
        checked_at: rfc3339(now),
        totals: Totals {
            pools: snapshot.pools.len(),
            blocks: snapshot.blocks.len(),
            affinities: snapshot.affinities.len(),
            handles: snapshot.handles.len(),
            allocations: snapshot.blocks.iter().map(|b| b.value.in_use()).sum(),
            live_owners_checked: live.owners.is_some(),
            live_nodes_checked: live.nodes.is_some(),
        },
        findings,
    }
}

/// Allocated ordinals of a block with their attributes, skipping malformed entries (which
/// `problems` reports).
fn allocated(b: &IpamBlock) -> impl Iterator<Item = (u32, IpAddr, &AllocationAttribute)> {
    let cidr = b.block_cidr().ok();
    let size = cidr.map_or(0, |c| c.size());
    (0..size.min(b.allocations.len() as u32)).filter_map(move |o| {
        let attr = b.attribute_of(o)?;
        Some((o, cidr?.addr(o), attr))
    })
}

/// Overlapping blocks (a sweep in address order) and the addresses both of a pair hold.
fn overlaps(blocks: &[Stored<IpamBlock>]) -> Vec<Finding> {
    let mut sorted: Vec<&IpamBlock> = blocks.iter().map(|b| &b.value).collect();
    sorted.sort_by_key(|b| (ip_to_u128(b.cidr.network()), b.cidr.prefix_len()));
    let mut out = Vec::new();
    let mut widest: Option<&IpamBlock> = None;
    for b in sorted {
        let Some(w) = widest else {
            widest = Some(b);
            continue;
        };
        if w.cidr.contains(&b.cidr) {
            out.push(Finding::OverlappingBlocks {
                block: w.cidr,
                other: b.cidr,
            });
            out.extend(held_twice(w, b));
        } else {
            widest = Some(b);
        }
    }
    out
}

/// Addresses allocated in both `outer` and `inner` (which lies inside it).
fn held_twice(outer: &IpamBlock, inner: &IpamBlock) -> Vec<Finding> {
    let Ok(outer_cidr) = outer.block_cidr() else {
        return Vec::new();
    };
    allocated(inner)
        .filter_map(|(_, ip, attr)| {
            let other = outer.attribute_of(outer_cidr.ordinal_of(ip)?)?;
            Some(Finding::AddressHeldTwice {
                ip,
                blocks: vec![outer.cidr, inner.cidr],
                handles: vec![other.handle_id.clone(), attr.handle_id.clone()],
            })
        })
        .collect()
}

/// Handle counts against what the blocks hold, both ways.
fn handle_counts(blocks: &[Stored<IpamBlock>], handles: &[Stored<IpamHandle>]) -> Vec<Finding> {
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

/// Affinities whose block is missing or not theirs, and host blocks with no confirmed
/// affinity.
fn affinities(blocks: &[Stored<IpamBlock>], affinities: &[Stored<BlockAffinity>]) -> Vec<Finding> {
    let owner: HashMap<IpNet, Option<&str>> = blocks
        .iter()
        .map(|b| (b.value.cidr, b.value.host()))
        .collect();
    let mut out = Vec::new();
    for a in affinities {
        if owner.get(&a.value.cidr).copied().flatten() != Some(a.value.node.as_str()) {
            out.push(Finding::AffinityWithoutBlock {
                affinity: a.name.clone(),
                node: a.value.node.clone(),
                block: a.value.cidr,
                state: a.value.state,
            });
        }
    }
    let confirmed: BTreeSet<(IpNet, &str)> = affinities
        .iter()
        .filter(|a| a.value.state == AffinityState::Confirmed)
        .map(|a| (a.value.cidr, a.value.node.as_str()))
        .collect();
    for b in blocks {
        let Some(node) = b.value.host() else {
            continue;
        };
        if !confirmed.contains(&(b.value.cidr, node)) {
            out.push(Finding::BlockWithoutAffinity {
                block: b.value.cidr,
                node: node.to_owned(),
                in_use: b.value.in_use(),
            });
        }
    }
    out
}

fn outside_pools(blocks: &[Stored<IpamBlock>], pools: &[Stored<IpPool>]) -> Vec<Finding> {
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

fn expired_cooldowns(
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

fn leaks(blocks: &[Stored<IpamBlock>], owners: &LiveOwners) -> Vec<Finding> {
    let mut out = Vec::new();
    for b in blocks {
        for (o, ip, attr) in allocated(&b.value) {
            // A cooling-down address has no owner any more; gc returns it.
            if attr.released_at.is_some() || !LiveOwners::can_judge(attr) || owners.is_live(attr) {
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

fn dead_node_blocks(blocks: &[Stored<IpamBlock>], nodes: &BTreeSet<String>) -> Vec<Finding> {
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

#[cfg(test)]
mod tests;
