//! Block affinities: the two-phase claim of a block by a node, finding a free block, and
//! releasing a node's or a pool's claims.
//!
//! A claim writes the affinity as `pending`, then creates (or adopts) the block, then marks
//! the affinity `confirmed`. A pending affinity owns nothing, so a crash at any step leaves
//! only something a later retry completes or `gc` removes. When a pool has no unclaimed
//! block left, another node's block that has stayed empty for a minute is reclaimed. The
//! claim and the search for a free block are in [`claim`]; the affinities' own API here.

use ipnet::IpNet;

use crate::cidr::{BlockCidr, blocks_in_pool, nth_block};
use crate::error::{Error, Result};
use crate::model::{AffinityState, BlockAffinity};
use crate::names::{NodeName, affinity_name};
use crate::store::{Datastore, Scope, StoreError};

use super::Ipam;

mod claim;

/// What releasing a set of affinities did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleasedAffinities {
    /// Blocks whose affinity was released.
    pub released: Vec<IpNet>,
    /// Blocks kept because they still hold addresses (with `must_be_empty`).
    pub not_empty: Vec<IpNet>,
}

impl<D: Datastore> Ipam<D> {
    /// Claims every block inside `cidr` for `node`; returns the blocks claimed and those
    /// refused: owned by another node, or wholly reserved (no address of it could ever be
    /// handed out, so no node may hold it).
    pub async fn claim_affinity(
        &self,
        cidr: IpNet,
        node: &NodeName,
    ) -> Result<(Vec<BlockCidr>, Vec<BlockCidr>)> {
        let pool = self
            .pool_for(cidr.network())
            .await?
            .ok_or(Error::NotInPool { ip: cidr.network() })?;
        let size = pool.value.effective_block_size();
        let span = if cidr.prefix_len() > size {
            BlockCidr::containing(cidr.network(), size)?.net()
        } else {
            cidr.trunc()
        };
        let reservations = self.reservations().await?;
        let (mut claimed, mut refused) = (Vec::new(), Vec::new());
        for i in 0..blocks_in_pool(&span, size) {
            let block = nth_block(&span, size, i)?;
            if reservations.covers_all(&block.net()) {
                refused.push(block);
                continue;
            }
            match self.claim_block(node, block).await {
                Ok(_) => claimed.push(block),
                Err(Error::BlockOwned { .. }) => refused.push(block),
                Err(e) => return Err(e),
            }
        }
        Ok((claimed, refused))
    }

    /// Releases `node`'s affinity for `block`. The block is deleted when empty; otherwise it
    /// stays without an owner, or with `must_be_empty` the release is refused.
    pub async fn release_affinity(
        &self,
        block: BlockCidr,
        node: &NodeName,
        must_be_empty: bool,
    ) -> Result<()> {
        self.release_affinity_unless_changed(block, node, must_be_empty, None)
            .await
    }

    /// [`Ipam::release_affinity`], refused as [`Error::BlockNotEmpty`] also when the block's
    /// sequence number is no longer `seen` (it changed since it was read, so it may be in
    /// use), as Calico's `RequiredBlockSequenceNumber` does.
    async fn release_affinity_unless_changed(
        &self,
        block: BlockCidr,
        node: &NodeName,
        must_be_empty: bool,
        seen: Option<u64>,
    ) -> Result<()> {
        let name = affinity_name(node.as_str(), &block);
        let name = &name;
        self.retry("releasing an affinity", move || async move {
            let mut aff = match self.store.get::<BlockAffinity>(name).await {
                Ok(a) => a,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if must_be_empty {
                // Refuse before writing anything; the check in `unown_block` still guards
                // against an assignment that lands in between.
                let b = self.block_by_cidr(&block.to_string()).await?;
                if b.is_some_and(|b| b.value.host() == Some(node.as_str()) && !b.value.is_empty()) {
                    return Err(Error::BlockNotEmpty { block: block.net() });
                }
            }
            let before = aff.value.state;
            aff.value.state = AffinityState::PendingDeletion;
            aff.revision = self
                .store
                .update(name, aff.value.clone(), &aff.revision)
                .await?;
            if let Err(e) = self
                .unown_block_once(block, node, must_be_empty, seen)
                .await
            {
                if matches!(e, Error::BlockNotEmpty { .. }) {
                    aff.value.state = before;
                    self.store.update(name, aff.value, &aff.revision).await?;
                }
                return Err(e);
            }
            aff.value.deleted = true;
            let rev = self.store.update(name, aff.value, &aff.revision).await?;
            ignore_gone(self.store.delete::<BlockAffinity>(name, &rev).await)
        })
        .await
    }

    /// Releases every affinity of `node`.
    pub async fn release_host_affinities(
        &self,
        node: &NodeName,
        must_be_empty: bool,
    ) -> Result<ReleasedAffinities> {
        let affinities = self
            .store
            .list::<BlockAffinity>(Scope::Node(node.as_str()))
            .await?;
        self.release_affinities(
            affinities.into_iter().map(|a| (a.value.cidr, node.clone())),
            must_be_empty,
        )
        .await
    }

    /// Releases every affinity for blocks inside `pool`, keeping non-empty blocks unowned.
    pub async fn release_pool_affinities(&self, pool: IpNet) -> Result<ReleasedAffinities> {
        let affinities = self.store.list::<BlockAffinity>(Scope::All).await?;
        let mut pairs = Vec::new();
        for a in affinities
            .into_iter()
            .filter(|a| pool.contains(&a.value.cidr))
        {
            pairs.push((a.value.cidr, NodeName::new(a.value.node)?));
        }
        self.release_affinities(pairs.into_iter(), false).await
    }

    /// Forgets a node: releases all its affinities; its non-empty blocks stay, unowned.
    pub async fn remove_host(&self, node: &NodeName) -> Result<ReleasedAffinities> {
        self.release_host_affinities(node, false).await
    }

    async fn release_affinities(
        &self,
        pairs: impl Iterator<Item = (IpNet, NodeName)>,
        must_be_empty: bool,
    ) -> Result<ReleasedAffinities> {
        let mut out = ReleasedAffinities::default();
        for (cidr, node) in pairs {
            match self
                .release_affinity(BlockCidr::new(cidr)?, &node, must_be_empty)
                .await
            {
                Ok(()) => out.released.push(cidr),
                Err(Error::BlockNotEmpty { block }) => out.not_empty.push(block),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// A delete that found the object gone or replaced: someone else finished or superseded it.
fn ignore_gone(r: Result<(), StoreError>) -> Result<()> {
    match r {
        Ok(()) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
