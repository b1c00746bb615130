//! Claiming a block for a node, in two phases: the affinity written `pending`, the block
//! created (or adopted), the affinity `confirmed`; and finding a free block to claim, by
//! probing a per-node walk of each pool, then by reclaiming another node's block that has
//! stayed empty for a minute.

use std::collections::HashSet;
use std::time::Duration;

use ipnet::IpNet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ignore_gone;
use crate::cidr::{BlockCidr, blocks_in_pool, nth_block};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::ipam::{Ipam, Reservations};
use crate::model::{AffinityState, BlockAffinity, IpPool, IpamBlock};
use crate::names::{NodeName, affinity_name, fnv1a64};
use crate::store::{Datastore, Scope, StoreError, Stored};

/// Blocks probed one read at a time before listing the cluster's blocks once. At 75% full a
/// walk lists with odds of 0.75^32 (about 1 in 10,000); listing is for nearly full pools.
const PROBES_BEFORE_LIST: u128 = 32;

impl<D: Datastore> Ipam<D> {
    /// Claims `block` for `node` in two phases; adopts an existing block only if it is
    /// already the node's, or empty and unowned.
    pub(crate) async fn claim_block(
        &self,
        node: &NodeName,
        block: BlockCidr,
    ) -> Result<Stored<IpamBlock>> {
        self.retry("claiming a block", move || {
            self.claim_block_once(node, block)
        })
        .await
    }

    /// One attempt of [`Ipam::claim_block`]: a conflict is returned to the caller's retry.
    pub(crate) async fn claim_block_once(
        &self,
        node: &NodeName,
        block: BlockCidr,
    ) -> Result<Stored<IpamBlock>> {
        let aff_name = affinity_name(node.as_str(), &block);
        let pending = BlockAffinity {
            cidr: block.net(),
            node: node.to_string(),
            state: AffinityState::Pending,
            affinity_type: Some("host".into()),
            deleted: false,
            extra: Default::default(),
        };
        let aff = match self.store.create(&aff_name, pending.clone()).await {
            Ok(revision) => Stored {
                name: aff_name.clone(),
                revision,
                value: pending,
            },
            Err(StoreError::AlreadyExists { .. }) => {
                self.store.get(&aff_name).await.map_err(gone_is_conflict)?
            }
            Err(e) => return Err(e.into()),
        };
        let created = match self.create_or_adopt_block(node, block).await {
            Ok(b) => b,
            Err(e) => {
                if aff.value.state == AffinityState::Pending {
                    // Best effort: a pending affinity owns nothing, and a later claim or
                    // `gc` finishes or removes it.
                    let _ = self
                        .store
                        .delete::<BlockAffinity>(&aff_name, &aff.revision)
                        .await;
                }
                return Err(e);
            }
        };
        if aff.value.state != AffinityState::Confirmed {
            let mut confirmed = aff.value;
            confirmed.state = AffinityState::Confirmed;
            self.store
                .update(&aff_name, confirmed, &aff.revision)
                .await?;
        }
        Ok(created)
    }

    async fn create_or_adopt_block(
        &self,
        node: &NodeName,
        block: BlockCidr,
    ) -> Result<Stored<IpamBlock>> {
        let now = self.now();
        let seq = u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0);
        let fresh = IpamBlock::new(block, Some(node.host_affinity()), seq, Some(rfc3339(now)));
        let name = block.name();
        match self.store.create(&name, fresh.clone()).await {
            Ok(revision) => {
                return Ok(Stored {
                    name,
                    revision,
                    value: fresh,
                });
            }
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut existing = self
            .store
            .get::<IpamBlock>(&name)
            .await
            .map_err(gone_is_conflict)?;
        if existing.value.host() == Some(node.as_str()) {
            return Ok(existing);
        }
        if existing.value.affinity.is_some() || !existing.value.is_empty() {
            let owner = existing
                .value
                .affinity
                .clone()
                .unwrap_or_else(|| "(in use, unowned)".into());
            return Err(Error::BlockOwned {
                block: block.net(),
                owner,
            });
        }
        existing.value.affinity = Some(node.host_affinity());
        existing.value.affinity_claim_time = Some(rfc3339(now));
        existing.value.sequence_number += 1;
        existing.revision = self
            .store
            .update(&name, existing.value.clone(), &existing.revision)
            .await?;
        Ok(existing)
    }

    /// Takes the node's affinity off a block it owns: deletes it when empty. One attempt:
    /// it runs inside [`Ipam::release_affinity`]'s retry.
    pub(super) async fn unown_block_once(
        &self,
        block: BlockCidr,
        node: &NodeName,
        must_be_empty: bool,
        seen: Option<u64>,
    ) -> Result<()> {
        let mut b = match self.store.get::<IpamBlock>(&block.name()).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if b.value.host() != Some(node.as_str()) {
            return Ok(());
        }
        if seen.is_some_and(|s| s != b.value.sequence_number) {
            return Err(Error::BlockNotEmpty { block: block.net() });
        }
        if b.value.is_empty() {
            return self.delete_block(b).await;
        }
        if must_be_empty {
            return Err(Error::BlockNotEmpty { block: block.net() });
        }
        b.value.affinity = None;
        b.value.affinity_claim_time = None;
        b.value.sequence_number += 1;
        self.store.update(&b.name, b.value, &b.revision).await?;
        Ok(())
    }

    /// Soft-deletes then deletes a block read at `b.revision`.
    pub(crate) async fn delete_block(&self, mut b: Stored<IpamBlock>) -> Result<()> {
        b.value.deleted = true;
        b.value.sequence_number += 1;
        let cidr = b.value.cidr;
        let rev = self.store.update(&b.name, b.value, &b.revision).await?;
        self.free_blocks.mark_free(&cidr);
        ignore_gone(self.store.delete::<IpamBlock>(&b.name, &rev).await)
    }

    /// Claims a free block of one of `pools` for `node`, walking each pool's blocks in a
    /// per-node pseudo-random order so that nodes claiming at once pick different blocks.
    /// Blocks in `held` (the node's own) are passed over: the walk would otherwise meet the
    /// node's first block again and "claim" it although it is full.
    pub(crate) async fn claim_free_block(
        &self,
        node: &NodeName,
        pools: &[&Stored<IpPool>],
        reservations: &Reservations,
        held: &HashSet<IpNet>,
    ) -> Result<Option<Stored<IpamBlock>>> {
        let seed = fnv1a64(node.as_str().as_bytes());
        // Whether the hints were re-learnt from a list during this call: they are then fresh,
        // so a block they call free is claimed without a probe first.
        let mut listed = false;
        for pool in pools {
            if let Some(b) = self
                .claim_in_pool(node, pool, seed, reservations, held, &mut listed)
                .await?
            {
                return Ok(Some(b));
            }
        }
        self.reclaim_empty_block(node, pools, reservations, held)
            .await
    }

    /// With no unclaimed block left in `pools`, takes over another node's block that has
    /// been empty since it was claimed at least [`EMPTY_BLOCK_MIN_RECLAIM_AGE`] ago, as
    /// Calico's `findUsableBlock` does, so that small pools do not strand on nodes that no
    /// longer use them. The owner's affinity is released only if the block is still empty
    /// and unchanged since it was listed.
    async fn reclaim_empty_block(
        &self,
        node: &NodeName,
        pools: &[&Stored<IpPool>],
        reservations: &Reservations,
        held: &HashSet<IpNet>,
    ) -> Result<Option<Stored<IpamBlock>>> {
        let now = self.now();
        let blocks = self.store.list::<IpamBlock>(Scope::All).await?;
        for b in blocks {
            let net = b.value.cidr;
            let owner = match b.value.host() {
                Some(owner) if owner != node.as_str() => owner,
                _ => continue,
            };
            let reclaimable = b.value.is_empty()
                && !held.contains(&net)
                && !reservations.covers_all(&net)
                && pools.iter().any(|p| p.value.cidr.contains(&net))
                && claimed_before(b.value.affinity_claim_time.as_deref(), now);
            let (Ok(owner), Ok(cidr)) = (NodeName::new(owner), b.value.block_cidr()) else {
                continue;
            };
            if !reclaimable {
                continue;
            }
            let seen = Some(b.value.sequence_number);
            match self
                .release_affinity_unless_changed(cidr, &owner, true, seen)
                .await
            {
                Ok(()) => {}
                Err(Error::BlockNotEmpty { .. }) => continue,
                Err(e) => return Err(e),
            }
            match self.claim_block(node, cidr).await {
                Ok(b) => {
                    self.free_blocks.mark_taken(net);
                    return Ok(Some(b));
                }
                Err(Error::BlockOwned { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// One pool of [`Ipam::claim_free_block`]. The walk skips blocks the hints call taken;
    /// if it ends empty-handed on hints not re-learnt in this call, they are re-learnt from
    /// one list and the pool is walked once more, so a stale hint never hides a free block.
    async fn claim_in_pool(
        &self,
        node: &NodeName,
        pool: &Stored<IpPool>,
        seed: u64,
        reservations: &Reservations,
        held: &HashSet<IpNet>,
        listed: &mut bool,
    ) -> Result<Option<Stored<IpamBlock>>> {
        let size = pool.value.effective_block_size();
        let n = blocks_in_pool(&pool.value.cidr, size);
        let start = u128::from(seed) % n;
        let stride = (u128::from(seed >> 17) | 1) % n.max(2);
        let (mut k, mut missed) = (0u128, 0u128);
        let mut passes_left = 2u8;
        while passes_left > 0 {
            // Bounded for huge (IPv6) pools: past every known-taken block plus 65,536 more.
            if k >= n.min(self.free_blocks.len() as u128 + 65_536) {
                passes_left -= 1;
                if *listed || passes_left == 0 {
                    break;
                }
                self.learn_taken_blocks().await?;
                (*listed, k) = (true, 0);
                continue;
            }
            if missed == PROBES_BEFORE_LIST && !*listed {
                // The hints are stale (or empty): one list replaces a read per probe.
                self.learn_taken_blocks().await?;
                *listed = true;
            }
            let block = nth_block(&pool.value.cidr, size, (start + k * stride) % n)?;
            k += 1;
            let net = block.net();
            if held.contains(&net)
                || reservations.covers_all(&net)
                || self.free_blocks.is_taken(&net)
            {
                continue;
            }
            // Before hints fresh from a list, one read tells a taken block from a free one; a
            // claim attempt on a taken block would cost four round trips to learn the same.
            if !*listed && self.block_is_taken(&block).await? {
                self.free_blocks.mark_taken(net);
                missed += 1;
                continue;
            }
            match self.claim_block(node, block).await {
                Ok(b) => {
                    self.free_blocks.mark_taken(net);
                    return Ok(Some(b));
                }
                Err(Error::BlockOwned { .. }) => self.free_blocks.mark_taken(net),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Re-learns the taken blocks from one list of every block.
    async fn learn_taken_blocks(&self) -> Result<()> {
        let all = self.store.list::<IpamBlock>(Scope::All).await?;
        let taken = all
            .iter()
            .filter(|b| b.value.affinity.is_some() || !b.value.is_empty())
            .map(|b| b.value.cidr)
            .collect();
        self.free_blocks.replace(taken);
        Ok(())
    }
}

impl<D: Datastore> Ipam<D> {
    /// Whether a block exists with an owner or with addresses (so it cannot be claimed).
    async fn block_is_taken(&self, block: &BlockCidr) -> Result<bool> {
        match self.store.get::<IpamBlock>(&block.name()).await {
            Ok(b) => Ok(b.value.affinity.is_some() || !b.value.is_empty()),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// How long a claimed block must have been empty before another node may reclaim it
/// (Calico's `EmptyBlockMinReclaimAge`): a node that just claimed it is about to use it.
pub const EMPTY_BLOCK_MIN_RECLAIM_AGE: Duration = Duration::from_secs(60);

/// Whether a block claimed at `claim_time` was claimed at least
/// [`EMPTY_BLOCK_MIN_RECLAIM_AGE`] before `now`. A missing or unreadable time counts as
/// long ago, as Calico reads it (the zero time).
fn claimed_before(claim_time: Option<&str>, now: OffsetDateTime) -> bool {
    let Some(at) = claim_time.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else {
        return true;
    };
    now - at >= EMPTY_BLOCK_MIN_RECLAIM_AGE
}

/// An object that vanished between a failed create and the read after it: try again.
fn gone_is_conflict(e: StoreError) -> Error {
    match e {
        StoreError::NotFound { kind, name } => StoreError::Conflict { kind, name }.into(),
        e => e.into(),
    }
}
