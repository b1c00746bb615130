//! Releasing a handle in one transaction: every block it counts addresses in, updated or
//! deleted, and the handle's delete. It is what
//! [`Datastore::commit`](ipam_core::Datastore::commit) does on etcd for the batch a release
//! writes, and with [`EtcdStore::handle_snapshot`](ipam_core::Datastore::handle_snapshot) it
//! makes a release by handle two reads and one write.

use crate::wire::{Compare, KeyValue, Txn, TxnOp};
use ipam_core::store::Op;
use ipam_core::{
    HandleSnapshot, IpamBlock, IpamConfig, IpamHandle, Resource, Revision, StoreError, Stored,
    Write,
};

use crate::client::{EtcdStore, committed, decode, get_op, range_at};
use crate::keys::revision_number;

/// The most writes one release commit takes. Each block costs two operations and two
/// compares, and etcd refuses a transaction of more than `--max-txn-ops` (128 by default)
/// in any of its three lists; larger releases go object by object.
pub const MAX_RELEASE_WRITES: usize = 40;

/// One block's part of a release transaction.
struct BlockStep {
    name: String,
    primary: String,
    revision: i64,
    /// The placement key the store expects the block to have now: the new value's for an
    /// update, the unowned one for a delete (the allocator deletes only blocks without a
    /// host). Its revision proves it in the same transaction.
    expected: Option<String>,
    ops: Vec<TxnOp>,
    deleted: bool,
}

impl EtcdStore {
    /// Applies `blocks` (CAS updates and deletes of live blocks) and the CAS delete of the
    /// handle `handle` at `revision`, all or nothing. One round trip unless a block's
    /// placement key is not the expected one; then its current one is read and the writes
    /// are sent again with it removed.
    pub(crate) async fn write_release(
        &self,
        blocks: Vec<Write<IpamBlock>>,
        handle: String,
        revision: Revision,
    ) -> Result<Vec<Option<Revision>>, StoreError> {
        let steps = blocks
            .into_iter()
            .map(|w| self.block_step(w))
            .collect::<Result<Vec<_>, _>>()?;
        let handle_key = self.keys.primary(IpamHandle::KIND, &handle);
        let hrev = revision_number(&revision);
        let mut primaries: Vec<Compare> = steps
            .iter()
            .map(|s| Compare::mod_revision(s.primary.clone(), s.revision))
            .collect();
        primaries.push(Compare::mod_revision(handle_key.clone(), hrev));
        let mut ops: Vec<TxnOp> = steps.iter().flat_map(|s| s.ops.iter().cloned()).collect();
        ops.push(TxnOp::delete(handle_key.clone()));
        let mut look: Vec<TxnOp> = steps.iter().map(|s| get_op(&s.primary)).collect();
        look.push(get_op(&handle_key));
        let mut when = primaries.clone();
        when.extend(steps.iter().filter_map(|s| {
            let key = s.expected.clone()?;
            Some(Compare::mod_revision(key, s.revision))
        }));
        self.counter.count(Op::Update);
        let txn = Txn::new()
            .when(when)
            .and_then(ops.clone())
            .or_else(look.clone());
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return revisions(&steps, &committed(&resp)?);
        }
        let current = diagnose(&steps, &handle, hrev, &resp)?;
        // Every revision matched: some block's placement key is another than expected.
        self.counter.count(Op::Get);
        for (step, kv) in steps.iter().zip(&current) {
            let placed = self.placement_of::<IpamBlock>(&step.name, kv)?;
            if let Some(old) = placed.filter(|p| Some(p) != step.expected.as_ref()) {
                ops.push(TxnOp::delete(old));
            }
        }
        self.counter.count(Op::Update);
        let txn = Txn::new().when(primaries).and_then(ops).or_else(look);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return revisions(&steps, &committed(&resp)?);
        }
        diagnose(&steps, &handle, hrev, &resp)?;
        Err(match steps.first() {
            Some(step) => StoreError::conflict::<IpamBlock>(&step.name),
            None => StoreError::conflict::<IpamHandle>(&handle),
        })
    }

    fn block_step(&self, write: Write<IpamBlock>) -> Result<BlockStep, StoreError> {
        match write {
            Write::Update {
                name,
                value,
                revision,
            } => {
                let plan = self.plan(&name, &value)?;
                Ok(BlockStep {
                    name,
                    primary: plan.primary,
                    revision: revision_number(&revision),
                    expected: plan.placement,
                    ops: plan.ops,
                    deleted: false,
                })
            }
            Write::Delete { name, revision } => {
                let primary = self.keys.primary(IpamBlock::KIND, &name);
                let expected = self.keys.placement(IpamBlock::KIND, &name, None);
                let mut ops = vec![TxnOp::delete(primary.clone())];
                ops.extend(expected.clone().map(TxnOp::delete));
                Ok(BlockStep {
                    name,
                    primary,
                    revision: revision_number(&revision),
                    expected,
                    ops,
                    deleted: true,
                })
            }
            Write::Create { name, .. } => Err(StoreError::Invalid {
                kind: IpamBlock::KIND,
                name,
                reason: "a release commit updates or deletes blocks; it creates none".into(),
            }),
        }
    }

    /// [`ipam_core::Datastore::handle_snapshot`] in two round trips: the config and the
    /// handle in one transaction, then every block it names in another.
    pub(crate) async fn handle_snapshot_now(
        &self,
        handle: &str,
    ) -> Result<HandleSnapshot, StoreError> {
        let config_key = self.keys.primary(IpamConfig::KIND, IpamConfig::NAME);
        let handle_key = self.keys.primary(IpamHandle::KIND, handle);
        self.counter.count(Op::Get);
        let txn = Txn::new().and_then([get_op(&config_key), get_op(&handle_key)]);
        let ops = self.txn(txn).await?.op_responses();
        let config = live::<IpamConfig>(IpamConfig::NAME, range_at(&ops, 0).first())?;
        let Some(handle) = live::<IpamHandle>(handle, range_at(&ops, 1).first())? else {
            return Ok(HandleSnapshot {
                config,
                handle: None,
                blocks: Vec::new(),
            });
        };
        let names = ipam_core::store::block_names(&handle)?;
        let mut blocks = Vec::with_capacity(names.len());
        if !names.is_empty() {
            self.counter.count(Op::Get);
            let reads: Vec<TxnOp> = names
                .iter()
                .map(|n| get_op(&self.keys.primary(IpamBlock::KIND, n)))
                .collect();
            let ops = self.txn(Txn::new().and_then(reads)).await?.op_responses();
            for (i, name) in names.iter().enumerate() {
                blocks.extend(live::<IpamBlock>(name, range_at(&ops, i).first())?);
            }
        }
        Ok(HandleSnapshot {
            config,
            handle: Some(handle),
            blocks,
        })
    }
}

/// The object read from `kv`, unless it is absent or soft-deleted.
fn live<R: Resource>(name: &str, kv: Option<&KeyValue>) -> Result<Option<Stored<R>>, StoreError> {
    Ok(kv
        .map(|kv| decode::<R>(name, kv))
        .transpose()?
        .filter(|s| !s.value.is_deleted()))
}

/// Each write's new revision, in the batch's order: updated blocks carry `at`, deleted
/// blocks and the handle none.
fn revisions(steps: &[BlockStep], at: &Revision) -> Result<Vec<Option<Revision>>, StoreError> {
    let mut out: Vec<Option<Revision>> = steps
        .iter()
        .map(|s| (!s.deleted).then(|| at.clone()))
        .collect();
    out.push(None);
    Ok(out)
}

/// Which compare of a failed release failed, from its reads of every primary key: the
/// handle's or a block's absence or newer revision is the error; if none, the blocks' current
/// pairs, in the batch's order.
fn diagnose(
    steps: &[BlockStep],
    handle: &str,
    hrev: i64,
    resp: &crate::wire::TxnResponse,
) -> Result<Vec<KeyValue>, StoreError> {
    let ops = resp.op_responses();
    match range_at(&ops, steps.len()).first() {
        None => return Err(StoreError::not_found::<IpamHandle>(handle)),
        Some(kv) if kv.mod_revision() != hrev => {
            return Err(StoreError::conflict::<IpamHandle>(handle));
        }
        Some(_) => {}
    }
    let mut current = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        match range_at(&ops, i).into_iter().next() {
            None => return Err(StoreError::not_found::<IpamBlock>(&step.name)),
            Some(kv) if kv.mod_revision() != step.revision => {
                return Err(StoreError::conflict::<IpamBlock>(&step.name));
            }
            Some(kv) => current.push(kv),
        }
    }
    Ok(current)
}
