//! Consistency checks over a whole datastore, for `ipamctl check`.
//!
//! [`Snapshot::read`] lists every kind once; [`check`] is a pure function of that snapshot,
//! the operator's lists of what is alive, and `now`. Every finding names what a later repair
//! needs (address, sequence number, handle), so that `ipamctl release --from-report` can
//! release exactly what was reported and skip whatever changed since.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::rfc3339;
use crate::model::{BlockAffinity, IpPool, IpamBlock, IpamConfig, IpamHandle};
use crate::store::{Datastore, Scope, StoreError, Stored};

mod finding;
mod grace;
mod live;
mod rules;
mod tally;
mod tunnel;

pub use self::finding::{Finding, FindingKind};
pub use self::grace::{Observations, Seen};
pub use self::live::LiveOwners;
pub use self::rules::cooldown_over;
pub use self::tally::{NO_AFFINITY, NO_POOL, PoolNode, Tally, pool_of, tally};
pub use self::tunnel::{TunnelLeak, dead_node_tunnels};

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
        Self::read_with(store, |_| {}).await
    }

    /// How many times [`Snapshot::read_with`] calls its `step`.
    pub const READ_STEPS: u64 = 5;

    /// [`Snapshot::read`], telling `step` which kind it reads next (`"pools"`, `"blocks"`,
    /// `"handles"`, `"affinities"`) and `"done"` at the end, for a progress display.
    pub async fn read_with<D: Datastore>(
        store: &D,
        mut step: impl FnMut(&'static str),
    ) -> Result<Self, StoreError> {
        let config = match store.get::<IpamConfig>(IpamConfig::NAME).await {
            Ok(c) => c.value,
            Err(StoreError::NotFound { .. }) => IpamConfig::default(),
            Err(e) => return Err(e),
        };
        step("pools");
        let pools = store.list(Scope::All).await?;
        step("blocks");
        let blocks = store.list(Scope::All).await?;
        step("handles");
        let handles = store.list(Scope::All).await?;
        step("affinities");
        let affinities = store.list(Scope::All).await?;
        step("done");
        Ok(Snapshot {
            pools,
            blocks,
            handles,
            affinities,
            config,
        })
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
    let blocks = &snapshot.blocks;
    let mut findings = rules::overlapping_blocks(blocks);
    findings.extend(rules::addresses_held_twice(blocks));
    findings.extend(rules::block_problems(blocks));
    findings.extend(rules::handle_counts(blocks, &snapshot.handles));
    findings.extend(rules::affinities_without_block(
        blocks,
        &snapshot.affinities,
    ));
    findings.extend(rules::blocks_without_affinity(blocks, &snapshot.affinities));
    findings.extend(rules::outside_pools(blocks, &snapshot.pools));
    let cooldown = snapshot.config.ip_cooldown_seconds;
    findings.extend(rules::expired_cooldowns(blocks, cooldown, now));
    if let Some(owners) = live.owners {
        findings.extend(rules::leaks(blocks, owners));
    }
    if let Some(nodes) = live.nodes {
        findings.extend(rules::dead_node_blocks(blocks, nodes));
    }
    findings.sort_by_key(Finding::kind);
    Report {
        checked_at: rfc3339(now),
        totals: Totals {
            pools: snapshot.pools.len(),
            blocks: blocks.len(),
            affinities: snapshot.affinities.len(),
            handles: snapshot.handles.len(),
            allocations: blocks.iter().map(|b| b.value.in_use()).sum(),
            live_owners_checked: live.owners.is_some(),
            live_nodes_checked: live.nodes.is_some(),
        },
        findings,
    }
}

#[cfg(test)]
mod tests;
