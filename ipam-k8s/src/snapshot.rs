//! What an assignment reads for a node on Kubernetes: the node's affinities by Calico's
//! hostname-hash label, its blocks by our label and, for any block an affinity names that
//! carries no label of ours (Calico created or rewrote it), by name: so Calico's affinities
//! and blocks are found too, and our own steady state stays one list per kind.
//!
//! The reads go one after the other. Sending them at once saved nothing measurable (the API
//! server's consistent-list wait dominates each) and cost the short-lived plugin a TLS
//! connection per concurrent request (kube-bench: steady plugin ADD 110 ms at once against
//! about 100 ms in turn). Like the generic snapshot, the reads are not one consistent view;
//! every write after them is a compare-and-swap.

use std::collections::BTreeSet;

use ipam_core::store::present;
use ipam_core::{
    BlockAffinity, BlockCidr, Datastore, IpamBlock, IpamConfig, NodeSnapshot, Resource, Scope,
    StoreError, Stored,
};

use crate::KubeStore;

impl KubeStore {
    /// [`Datastore::node_snapshot`] for this store.
    pub(crate) async fn read_node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        let config = present(self.get::<IpamConfig>(IpamConfig::NAME).await)?;
        let pools = self.list(Scope::All).await?;
        let reservations = self.list(Scope::All).await?;
        let affinities = self.list::<BlockAffinity>(Scope::Node(node)).await?;
        let blocks = self.affine_blocks(node, &affinities).await?;
        Ok(NodeSnapshot {
            config,
            pools,
            reservations,
            affinities,
            blocks,
        })
    }

    /// The node's blocks with room, sorted by name as a list returns them: those carrying
    /// our node label in one list, then a GET for each block an affinity names that the
    /// list did not return (Calico creates and rewrites blocks without our label). A block
    /// that is gone is left out: the allocator recreates the block of a confirmed affinity,
    /// as Calico does.
    async fn affine_blocks(
        &self,
        node: &str,
        affinities: &[Stored<BlockAffinity>],
    ) -> Result<Vec<Stored<IpamBlock>>, StoreError> {
        let mut blocks: Vec<Stored<IpamBlock>> = self.list(Scope::Node(node)).await?;
        let listed: BTreeSet<String> = blocks.iter().map(|b| b.name.clone()).collect();
        let unlisted = affinities
            .iter()
            // Not a block-shaped CIDR: no block can have that name.
            .filter_map(|a| BlockCidr::new(a.value.cidr).ok().map(|c| c.name()))
            .filter(|name| !listed.contains(name))
            .collect::<BTreeSet<_>>();
        for name in unlisted {
            if let Some(b) = present(self.get::<IpamBlock>(&name).await)? {
                if b.value.node() == Some(node) {
                    blocks.push(b);
                }
            }
        }
        blocks.retain(|b| b.value.has_room());
        blocks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(blocks)
    }
}
