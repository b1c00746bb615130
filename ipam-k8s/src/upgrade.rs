//! Objects an older Calico wrote in a shape the lookups miss. Calico before v3.30 wrote
//! BlockAffinities without the labels that a node's affinities are listed by (the
//! hostname hash, the affinity type, the IP version); Calico's own plugin and calico-node
//! label a node's unlabelled affinities once (`UpgradeHost`), and so does ours.

use ipam_core::{BlockAffinity, Datastore, StoreError};

use crate::KubeStore;
use crate::resource::CALICO_AFFINITY_TYPE_LABEL;

impl KubeStore {
    /// Rewrites `node`'s affinities that lack Calico's labels, so that they carry them (every
    /// write sets the labels from the spec), and returns how many. As Calico does, the list
    /// selects the affinities without the affinity-type label (it cannot select by node: that
    /// is the label being added) and keeps `node`'s. One that changed since the list was
    /// rewritten by someone else, and so carries the labels now: it is passed over.
    pub(crate) async fn label_calico_affinities(&self, node: &str) -> Result<usize, StoreError> {
        let selector = format!("!{CALICO_AFFINITY_TYPE_LABEL}");
        let on_node = |a: &ipam_core::Stored<BlockAffinity>| a.value.node == node;
        let unlabelled = self.list_selected(Some(&selector), on_node).await?;
        let mut labelled = 0;
        for a in unlabelled {
            match self.update(&a.name, a.value, &a.revision).await {
                Ok(_) => labelled += 1,
                Err(e) if e.is_lost_race() || e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(labelled)
    }
}
