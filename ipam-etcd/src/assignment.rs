//! Writing a block and its handle in one transaction: the steady-state allocation's only
//! write, and no crash can leave the two disagreeing.
//!
//! It is what [`Datastore::commit`](ipam_core::Datastore::commit) does on etcd for the batch
//! the allocator writes. It writes both objects or neither.

use crate::wire::{Compare, KeyValue, Txn, TxnOp};
use ipam_core::store::Op;
use ipam_core::{BatchWrite, IpamBlock, IpamHandle, Revision, StoreError, Stored, Write};

use crate::client::{EtcdStore, committed, get_op, range_at};
use crate::keys::revision_number;

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
    ) -> Result<Revision, StoreError> {
        let hplan = self.plan(&handle.name, &handle.value)?;
        let bplan = self.plan(&block.name, &block.value)?;
        let hrev = handle.revision.as_ref().map(revision_number);
        let brev = revision_number(&block.revision);
        let handle_cmp = match hrev {
            Some(r) => Compare::mod_revision(hplan.primary.clone(), r),
            None => Compare::create_revision(hplan.primary.clone(), 0),
        };
        let block_cmp = Compare::mod_revision(bplan.primary.clone(), brev);
        let mut ops = hplan.ops;
        if hrev.is_none() && !hplan.deleted {
            ops.push(TxnOp::delete(hplan.tombstone));
        }
        ops.extend(bplan.ops.iter().cloned());
        let look = [get_op(&hplan.primary), get_op(&bplan.primary)];
        let mut when = vec![handle_cmp.clone(), block_cmp.clone()];
        when.extend(
            bplan
                .placement
                .clone()
                .map(|p| Compare::mod_revision(p, brev)),
        );
        let txn = Txn::new()
            .when(when)
            .and_then(ops.clone())
            .or_else(look.clone());
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.counter.count(Op::Update);
            return committed(&resp);
        }
        let kv = match diagnose(&handle, hrev, &block.name, brev, &resp) {
            Finding::Refused(e) => {
                self.counter.count(Op::Update);
                return Err(e);
            }
            Finding::Moved(kv) => kv,
        };
        self.counter.count(Op::Get);
        let old = self.placement_of::<IpamBlock>(&block.name, &kv)?;
        ops.extend(
            old.filter(|o| Some(o) != bplan.placement.as_ref())
                .map(TxnOp::delete),
        );
        let txn = Txn::new()
            .when([handle_cmp, block_cmp])
            .and_then(ops)
            .or_else(look);
        self.counter.count(Op::Update);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return committed(&resp);
        }
        match diagnose(&handle, hrev, &block.name, brev, &resp) {
            Finding::Refused(e) => Err(e),
            Finding::Moved(_) => Err(StoreError::conflict::<IpamBlock>(&block.name)),
        }
    }

    /// The assignment batch of [`ipam_core::Datastore::commit`]: a handle (create or update)
    /// and the block it counts, in one transaction. Other shapes are refused as `Invalid`.
    pub(crate) async fn commit_assignment(
        &self,
        writes: Vec<BatchWrite>,
    ) -> Result<Vec<Option<Revision>>, StoreError> {
        let mut writes = writes.into_iter();
        let (Some(BatchWrite::Handle(h)), Some(BatchWrite::Block(b)), None) =
            (writes.next(), writes.next(), writes.next())
        else {
            return Err(StoreError::Invalid {
                kind: ipam_core::Kind::IpamHandle,
                name: String::new(),
                reason: "etcd commits a handle write followed by a block update".into(),
            });
        };
        let handle = match h {
            Write::Create { name, value } => HandleWrite {
                name,
                value,
                revision: None,
            },
            Write::Update {
                name,
                value,
                revision,
            } => HandleWrite {
                name,
                value,
                revision: Some(revision),
            },
            Write::Delete { name, .. } => {
                return Err(StoreError::Invalid {
                    kind: ipam_core::Kind::IpamHandle,
                    name,
                    reason: "etcd commits do not delete handles".into(),
                });
            }
        };
        let Write::Update {
            name,
            value,
            revision,
        } = b
        else {
            return Err(StoreError::Invalid {
                kind: ipam_core::Kind::IpamBlock,
                name: b.name().to_owned(),
                reason: "etcd commits update an existing block".into(),
            });
        };
        let block = Stored {
            name,
            revision,
            value,
        };
        let rev = self.write_assignment(handle, block).await?;
        Ok(vec![Some(rev.clone()), Some(rev)])
    }
}

/// Which compare of a failed assignment transaction failed, from its reads of the handle's
/// and the block's primary keys.
fn diagnose(
    handle: &HandleWrite,
    hrev: Option<i64>,
    block: &str,
    brev: i64,
    resp: &crate::wire::TxnResponse,
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
