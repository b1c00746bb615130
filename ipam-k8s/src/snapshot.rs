//! What an assignment reads for a node, the way Calico reads it on Kubernetes: the node's
//! affinities by Calico's hostname-hash label, and its blocks by the names those affinities
//! give, so blocks that Calico created (which carry no label of ours) are found too.
//!
//! The four cluster reads are sent at once and the block reads after them, also at once: a
//! steady ADD waits for two round trips, not five. Like the generic snapshot, the reads are
//! not one consistent view; every write after them is a compare-and-swap.

use futures::future::try_join_all;
use ipam_core::store::present;
use ipam_core::{
    BlockAffinity, BlockCidr, Datastore, IpamBlock, IpamConfig, NodeSnapshot, Resource, Scope,
    StoreError, Stored,
};

use crate::KubeStore;

impl KubeStore {
    /// [`Datastore::node_snapshot`] for this store.
    pub(crate) async fn read_node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        let (config, pools, reservations, affinities) = futures::try_join!(
            async { present(self.get::<IpamConfig>(IpamConfig::NAME).await) },
            self.list(Scope::All),
            self.list(Scope::All),
            self.list::<BlockAffinity>(Scope::Node(node)),
        )?;
        let blocks = self.affine_blocks(node, &affinities).await?;
        Ok(NodeSnapshot {
            config,
            pools,
            reservations,
            affinities,
            blocks,
        })
    }

    /// The blocks named by `affinities` that are affine to `node` and have room, sorted by
    /// name as a list returns them. A block that is gone is left out: the allocator
    /// recreates the block of a confirmed affinity, as Calico does.
    async fn affine_blocks(
        &self,
        node: &str,
        affinities: &[Stored<BlockAffinity>],
    ) -> Result<Vec<Stored<IpamBlock>>, StoreError> {
        let names = affinities
            .iter()
            .filter_map(|a| match BlockCidr::new(a.value.cidr) {
                Ok(cidr) => Some(cidr.name()),
                // Not a block-shaped CIDR: no block can have that name.
                Err(_) => None,
            });
        let reads = names.map(|name| async move { present(self.get(&name).await) });
        let mut blocks: Vec<Stored<IpamBlock>> = try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .filter(|b: &Stored<IpamBlock>| b.value.node() == Some(node) && b.value.has_room())
            .collect();
        blocks.sort_by(|a, b| a.name.cmp(&b.name));
        blocks.dedup_by(|a, b| a.name == b.name);
        Ok(blocks)
    }
}
