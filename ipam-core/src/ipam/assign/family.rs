//! One address family's part of `auto_assign`: the node's own blocks, its claims the
//! snapshot did not show, new claims up to the block limit, and borrowing.

use std::collections::HashSet;

use ipnet::IpNet;

use super::{Assigned, Request, Settled, affinity_state, candidate_pools};
use crate::error::{Error, Result};
use crate::ipam::{Family, Ipam};
use crate::model::{AffinityState, BlockAffinity, IpPool, IpamBlock};
use crate::store::{Datastore, NodeSnapshot, Stored};

/// One family's blocks of the node, as the snapshot shows them.
struct OwnBlocks {
    /// Its blocks with room, lowest address first, moved out of the snapshot.
    blocks: Vec<Stored<IpamBlock>>,
    /// Confirmed claims in the request's pools whose block the snapshot does not show:
    /// full, gone, or taken over.
    unseen: Vec<IpNet>,
    /// Blocks the claim walk must pass over: those shown, and every confirmed claim.
    held: HashSet<IpNet>,
    /// The node's blocks in the request's pools, as Calico counts them for the block limit.
    owned: u32,
}

impl OwnBlocks {
    fn take(
        snapshot_blocks: &mut Vec<Stored<IpamBlock>>,
        affinities: &[Stored<BlockAffinity>],
        family: Family,
        in_pools: &dyn Fn(&IpNet) -> bool,
    ) -> Self {
        // The node's blocks are counted, and kept out of the claim walk, by its affinities:
        // a snapshot may leave out full blocks, whose affinities it always carries.
        let live: Vec<&Stored<BlockAffinity>> = affinities
            .iter()
            .filter(|a| Family::of(&a.value.cidr) == family)
            .filter(|a| a.value.state != AffinityState::PendingDeletion)
            .collect();
        let owned = live.iter().filter(|a| in_pools(&a.value.cidr)).count() as u32;
        let mut held: HashSet<IpNet> = snapshot_blocks.iter().map(|b| b.value.cidr).collect();
        // Only confirmed claims are kept out of the walk: a pending one may have no block yet
        // (a crash before step 2), and claiming it again is how it gets finished.
        let confirmed = || {
            live.iter()
                .filter(|a| a.value.state == AffinityState::Confirmed)
                .map(|a| a.value.cidr)
        };
        held.extend(confirmed());
        // The family's blocks with room are moved out of the snapshot, not cloned: the copy
        // of a block is most of the cost of an assignment. Pending ones are claims to finish.
        let (mut blocks, others): (Vec<_>, Vec<_>) = std::mem::take(snapshot_blocks)
            .into_iter()
            .partition(|b| Family::of(&b.value.cidr) == family);
        let seen: HashSet<IpNet> = blocks.iter().map(|b| b.value.cidr).collect();
        let unseen = confirmed()
            .filter(|c| in_pools(c) && !seen.contains(c))
            .collect();
        blocks.sort_by_key(|b| {
            (
                crate::cidr::ip_to_u128(b.value.cidr.network()),
                b.value.cidr.prefix_len(),
            )
        });
        *snapshot_blocks = others;
        OwnBlocks {
            blocks,
            unseen,
            held,
            owned,
        }
    }
}

impl<D: Datastore> Ipam<D> {
    /// One family's part of `auto_assign`, in Calico's order: the node's own blocks, then
    /// its confirmed claims the snapshot did not show, then new claims up to the block
    /// limit, then (without strict affinity) addresses borrowed from other blocks.
    pub(super) async fn assign_family(
        &self,
        snapshot: &mut NodeSnapshot,
        req: &mut Request<'_>,
        family: Family,
        num: u32,
        requested: &[String],
        out: &mut Assigned,
    ) -> Result<()> {
        let node = &req.args.node;
        let pools = candidate_pools(&snapshot.pools, family, requested, req.args)?;
        let in_pools = |c: &IpNet| pools.iter().any(|p| p.value.cidr.contains(c));
        self.release_unselected_blocks(snapshot, req.args, family, &pools)
            .await;
        let mut own = OwnBlocks::take(
            &mut snapshot.blocks,
            &snapshot.affinities,
            family,
            &in_pools,
        );
        let mut got: Vec<IpNet> = Vec::new();
        self.assign_from_own(
            snapshot,
            req,
            std::mem::take(&mut own.blocks),
            num,
            &in_pools,
            &mut got,
        )
        .await?;
        if (got.len() as u32) < num && req.config.auto_allocate_blocks {
            self.assign_from_unseen(req, &mut own, num, &mut got)
                .await?;
        }
        let limit = req.config.block_limit(req.args.max_blocks_per_host);
        let hit_limit = self
            .claim_more(req, &pools, &mut own, limit, num, &mut got)
            .await?;
        // At the block limit Calico fails rather than borrow, strict affinity or not: where
        // a node's addresses land must not depend on which IPAM a cluster runs.
        if (got.len() as u32) < num && !req.config.strict_affinity && !hit_limit {
            got.extend(
                self.borrow(req, family, num - got.len() as u32, &in_pools)
                    .await?,
            );
        }
        let available = got.len() as u32;
        match family {
            Family::V4 => out.ipv4.extend(got),
            Family::V6 => out.ipv6.extend(got),
        }
        if available == num {
            Ok(())
        } else if hit_limit {
            Err(Error::BlockLimit {
                node: node.to_string(),
                limit,
            })
        } else {
            Err(Error::PoolExhausted {
                family: family.name(),
                requested: num,
                available,
            })
        }
    }

    /// Assigns from the node's own blocks with room, lowest address first, finishing this
    /// node's pending claims on the way.
    async fn assign_from_own(
        &self,
        snapshot: &NodeSnapshot,
        req: &mut Request<'_>,
        mine: Vec<Stored<IpamBlock>>,
        num: u32,
        in_pools: &(dyn Fn(&IpNet) -> bool + Sync),
        got: &mut Vec<IpNet>,
    ) -> Result<()> {
        let node = &req.args.node;
        for block in mine {
            let Some(state) = affinity_state(snapshot, node, &block.value.cidr) else {
                continue;
            };
            if got.len() as u32 == num || !in_pools(&block.value.cidr) {
                continue;
            }
            if state == AffinityState::Pending {
                let Ok(cidr) = block.value.block_cidr() else {
                    continue;
                };
                // Finishing our own pending claim; a node that took the block first keeps
                // it, and anything else (an unreachable store) is this request's failure.
                match self.claim_block(node, cidr).await {
                    Ok(_) => {}
                    Err(Error::BlockOwned { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            got.extend(
                self.assign_from_block(block, req, num - got.len() as u32, Some(node))
                    .await?,
            );
        }
        Ok(())
    }

    /// Settles the node's confirmed claims the snapshot did not show and assigns from those
    /// still usable; a stale claim no longer counts against the block limit.
    async fn assign_from_unseen(
        &self,
        req: &mut Request<'_>,
        own: &mut OwnBlocks,
        num: u32,
        got: &mut Vec<IpNet>,
    ) -> Result<()> {
        let node = &req.args.node;
        for cidr in std::mem::take(&mut own.unseen) {
            if got.len() as u32 == num {
                break;
            }
            match self.settle_affinity(node, cidr).await? {
                Settled::Usable(block) => got.extend(
                    self.assign_from_block(*block, req, num - got.len() as u32, Some(node))
                        .await?,
                ),
                Settled::Ours => {}
                Settled::Forgotten => own.owned = own.owned.saturating_sub(1),
            }
        }
        Ok(())
    }

    /// Claims free blocks and assigns from them until `num` are had or the node holds
    /// `limit` blocks; whether the limit stopped it.
    async fn claim_more(
        &self,
        req: &mut Request<'_>,
        pools: &[&Stored<IpPool>],
        own: &mut OwnBlocks,
        limit: u32,
        num: u32,
        got: &mut Vec<IpNet>,
    ) -> Result<bool> {
        let node = &req.args.node;
        while (got.len() as u32) < num && req.config.auto_allocate_blocks {
            if own.owned >= limit {
                return Ok(true);
            }
            let Some(block) = self
                .claim_free_block(node, pools, &req.reservations, &own.held)
                .await?
            else {
                break;
            };
            own.held.insert(block.value.cidr);
            own.owned += 1;
            got.extend(
                self.assign_from_block(block, req, num - got.len() as u32, Some(node))
                    .await?,
            );
        }
        Ok(false)
    }
}
