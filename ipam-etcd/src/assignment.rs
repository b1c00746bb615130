//! Writing a block and its handle in one transaction: the steady-state allocation's only
//! write, and no crash can leave the two disagreeing.
//!
//! This is the etcd side of a proposed `Datastore::write_assignment` (see the crate's
//! report): a store without multi-key transactions writes the handle, then the block, and
//! says in [`AssignmentWriteError::handle_written`] that the handle must be put back.

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use ipam_core::store::Op;
use ipam_core::{IpamBlock, IpamHandle, Revision, StoreError, Stored};

use crate::keys::revision_number;
use crate::store::{EtcdStore, committed, get_op, range_at};

/// The handle half of an assignment write.
#[derive(Clone, Debug, PartialEq)]
pub struct HandleWrite {
    /// The handle ID (the object's name).
    pub name: String,
    /// The handle's new value, counting the new addresses.
    pub value: IpamHandle,
    /// The revision it was read at; `None` creates it (replacing a soft-deleted one).
    pub revision: Option<Revision>,
}

/// Why an assignment write failed, and what of it was written.
#[derive(Debug, thiserror::Error)]
#[error("writing an assignment: {error}")]
pub struct AssignmentWriteError {
    /// The failure. Its kind says which object was refused: a `Conflict`, `AlreadyExists`
    /// or `NotFound` on [`ipam_core::Kind::IpamHandle`] or on
    /// [`ipam_core::Kind::IpamBlock`].
    #[source]
    pub error: StoreError,
    /// The handle's new revision if it was written although the block was not (only stores
    /// without multi-key transactions); the caller must take the count back. Always `None`
    /// here: etcd writes both or neither.
    pub handle_written: Option<Revision>,
}

/// What the failure branch of an assignment transaction showed.
enum Finding {
    Refused(StoreError),
    /// Both revisions still match: the block moves to another node (its placement changes).
    Moved(KeyValue),
}

impl EtcdStore {
    /// Writes `handle` and `block` in one transaction, each under compare-and-swap; returns
    /// the revision both now carry. One round trip unless the block changes node.
    pub async fn write_assignment(
        &self,
        handle: HandleWrite,
        block: Stored<IpamBlock>,
    ) -> Result<Revision, AssignmentWriteError> {
        let refused = |error| AssignmentWriteError {
            error,
            handle_written: None,
        };
        let hplan = self.plan(&handle.name, &handle.value).map_err(refused)?;
        let bplan = self.plan(&block.name, &block.value).map_err(refused)?;
        let hrev = handle.revision.as_ref().map(revision_number);
        let brev = revision_number(&block.revision);
        let handle_cmp = match hrev {
            Some(r) => Compare::mod_revision(hplan.primary.clone(), CompareOp::Equal, r),
            None => Compare::create_revision(hplan.primary.clone(), CompareOp::Equal, 0),
        };
        let block_cmp = Compare::mod_revision(bplan.primary.clone(), CompareOp::Equal, brev);
        let mut ops = hplan.ops;
        if hrev.is_none() && !hplan.deleted {
            ops.push(TxnOp::delete(hplan.tombstone, None));
        }
        ops.extend(bplan.ops.iter().cloned());
        let look = [get_op(&hplan.primary), get_op(&bplan.primary)];
        let mut when = vec![handle_cmp.clone(), block_cmp.clone()];
        when.extend(
            bplan
                .placement
                .clone()
                .map(|p| Compare::mod_revision(p, CompareOp::Equal, brev)),
        );
        let txn = Txn::new()
            .when(when)
            .and_then(ops.clone())
            .or_else(look.clone());
        let resp = self.txn(txn).await.map_err(refused)?;
        if resp.succeeded() {
            self.counter.count(Op::Update);
            return committed(&resp).map_err(refused);
        }
        let kv = match diagnose(&handle, hrev, &block.name, brev, &resp) {
            Finding::Refused(e) => {
                self.counter.count(Op::Update);
                return Err(refused(e));
            }
            Finding::Moved(kv) => kv,
        };
        self.counter.count(Op::Get);
        let old = self
            .placement_of::<IpamBlock>(&block.name, &kv)
            .map_err(refused)?;
        ops.extend(
            old.filter(|o| Some(o) != bplan.placement.as_ref())
                .map(|o| TxnOp::delete(o, None)),
        );
        let txn = Txn::new()
            .when([handle_cmp, block_cmp])
            .and_then(ops)
            .or_else(look);
        self.counter.count(Op::Update);
        let resp = self.txn(txn).await.map_err(refused)?;
        if resp.succeeded() {
            return committed(&resp).map_err(refused);
        }
        match diagnose(&handle, hrev, &block.name, brev, &resp) {
            Finding::Refused(e) => Err(refused(e)),
            Finding::Moved(_) => Err(refused(StoreError::conflict::<IpamBlock>(&block.name))),
        }
    }
}

/// Which compare of a failed assignment transaction failed, from its reads of the handle's
/// and the block's primary keys.
fn diagnose(
    handle: &HandleWrite,
    hrev: Option<i64>,
    block: &str,
    brev: i64,
    resp: &etcd_client::TxnResponse,
) -> Finding {
    let ops = resp.op_responses();
    let h = range_at(&ops, 0);
    let refused = match (hrev, h.first()) {
        (None, Some(_)) => Some(StoreError::already_exists::<IpamHandle>(&handle.name)),
        (Some(_), None) => Some(StoreError::not_found::<IpamHandle>(&handle.name)),
        (Some(r), Some(kv)) if kv.mod_revision() != r => {
            Some(StoreError::conflict::<IpamHandle>(&handle.name))
        }
        _ => None,
    };
    if let Some(e) = refused {
        return Finding::Refused(e);
    }
    match range_at(&ops, 1).into_iter().next() {
        None => Finding::Refused(StoreError::not_found::<IpamBlock>(block)),
        Some(kv) if kv.mod_revision() != brev => {
            Finding::Refused(StoreError::conflict::<IpamBlock>(block))
        }
        Some(kv) => Finding::Moved(kv),
    }
}
