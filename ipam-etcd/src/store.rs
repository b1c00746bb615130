//! `EtcdStore` as a [`Datastore`]: reads are range requests, every write is one
//! transaction comparing mod revisions, and a soft delete moves the object to its tombstone.
//!
//! Round trips: a get, a list, a create and a CAS update or delete on an object that has not
//! changed node take one each; a node snapshot takes one. Only an update that moves a block
//! or affinity to another node (claiming, releasing) and a direct delete of a live block or
//! affinity take two, the first of which reads the old node and is counted as a get.

use crate::wire::{Compare, KeyValue, Txn, TxnOp, TxnOpResponse};
use ipam_core::store::Op;
use ipam_core::{
    BatchWrite, BlockAffinity, Datastore, HandleSnapshot, IpPool, IpReservation, IpamBlock,
    IpamConfig, NodeSnapshot, OpCounts, Resource, Revision, Scope, StoreError, Stored, Write,
};

use crate::client::{
    EtcdStore, committed, decode, decode_range, encode, get_op, range_at, range_op,
};
use crate::keys::{Keys, indexed, revision_number};

/// The writes that make `value` the state of one object.
pub(crate) struct WritePlan {
    /// The object's primary key.
    pub(crate) primary: String,
    /// Its tombstone key.
    pub(crate) tombstone: String,
    /// The placement key the new value implies (indexed kinds only).
    pub(crate) placement: Option<String>,
    /// Puts (or, for a soft-deleted value, the move to the tombstone).
    pub(crate) ops: Vec<TxnOp>,
    /// Whether the value is soft-deleted.
    pub(crate) deleted: bool,
}

impl EtcdStore {
    /// The writes for `value` as `name`'s new state.
    pub(crate) fn plan<R: Resource>(&self, name: &str, value: &R) -> Result<WritePlan, StoreError> {
        let bytes = encode(name, value)?;
        let node = value.node();
        let primary = self.keys.primary(R::KIND, name);
        let tombstone = self.keys.tombstone(R::KIND, name);
        let placement = self.keys.placement(R::KIND, name, node);
        let deleted = value.is_deleted();
        let mut ops = Vec::with_capacity(3);
        if deleted {
            ops.push(TxnOp::delete(primary.clone()));
            ops.push(TxnOp::put(tombstone.clone(), bytes));
            ops.extend(placement.clone().map(TxnOp::delete));
        } else {
            if let Some(p) = &placement {
                let copy = if Keys::placement_holds_copy(node) {
                    bytes.clone()
                } else {
                    Vec::new()
                };
                ops.push(TxnOp::put(p.clone(), copy));
            }
            ops.push(TxnOp::put(primary.clone(), bytes));
        }
        Ok(WritePlan {
            primary,
            tombstone,
            placement,
            ops,
            deleted,
        })
    }

    /// The placement key of the live object stored in `kv` (its primary key's pair).
    pub(crate) fn placement_of<R: Resource>(
        &self,
        name: &str,
        kv: &KeyValue,
    ) -> Result<Option<String>, StoreError> {
        let old: Stored<R> = decode(name, kv)?;
        Ok(self.keys.placement(R::KIND, name, old.value.node()))
    }

    async fn create_now<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        let plan = self.plan(name, &value)?;
        let mut ops = plan.ops;
        if !plan.deleted {
            // A soft-deleted object of that name is replaced: its tombstone goes.
            ops.push(TxnOp::delete(plan.tombstone));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(plan.primary, 0)])
            .and_then(ops);
        self.counter.count(Op::Create);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            committed(&resp)
        } else {
            Err(StoreError::already_exists::<R>(name))
        }
    }

    async fn update_now<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        let rev = revision_number(revision);
        let plan = self.plan(name, &value)?;
        let mut when = vec![Compare::mod_revision(plan.primary.clone(), rev)];
        // The new value's placement key carries `rev` only if the object stays where it was.
        when.extend(
            plan.placement
                .clone()
                .map(|p| Compare::mod_revision(p, rev)),
        );
        let txn = Txn::new()
            .when(when)
            .and_then(plan.ops.clone())
            .or_else([get_op(&plan.primary)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.counter.count(Op::Update);
            return committed(&resp);
        }
        let current = range_at(&resp.op_responses(), 0);
        let Some(kv) = current.first().filter(|kv| kv.mod_revision() == rev) else {
            self.counter.count(Op::Update);
            return Err(absent_or_conflict::<R>(name, current.is_empty()));
        };
        // Unchanged but placed elsewhere: the object moves to another node.
        self.counter.count(Op::Get);
        let old = self.placement_of::<R>(name, kv)?;
        self.counter.count(Op::Update);
        self.rewrite_moved::<R>(name, plan, old, rev).await
    }

    /// The second round trip of an update that moves an object: the same writes, plus the
    /// removal of the old placement key.
    async fn rewrite_moved<R: Resource>(
        &self,
        name: &str,
        plan: WritePlan,
        old: Option<String>,
        rev: i64,
    ) -> Result<Revision, StoreError> {
        let mut ops = plan.ops;
        ops.extend(
            old.filter(|o| Some(o) != plan.placement.as_ref())
                .map(TxnOp::delete),
        );
        let txn = Txn::new()
            .when([Compare::mod_revision(plan.primary.clone(), rev)])
            .and_then(ops)
            .or_else([get_op(&plan.primary)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return committed(&resp);
        }
        let current = range_at(&resp.op_responses(), 0);
        Err(absent_or_conflict::<R>(name, current.is_empty()))
    }

    async fn delete_now<R: Resource>(
        &self,
        name: &str,
        revision: &Revision,
    ) -> Result<(), StoreError> {
        let rev = revision_number(revision);
        let primary = self.keys.primary(R::KIND, name);
        let tombstone = self.keys.tombstone(R::KIND, name);
        let look = [get_op(&primary), get_op(&tombstone)];
        // The usual case is the end of a soft delete: the tombstone at `rev` goes. Otherwise a
        // live object at `rev` goes; without a placement key to remove, that fits in a nested
        // transaction of the same round trip.
        let otherwise = if indexed(R::KIND) {
            look.to_vec()
        } else {
            vec![TxnOp::txn(
                Txn::new()
                    .when([Compare::mod_revision(primary.clone(), rev)])
                    .and_then([TxnOp::delete(primary.clone())])
                    .or_else(look.clone()),
            )]
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(tombstone.clone(), rev)])
            .and_then([TxnOp::delete(tombstone.clone())])
            .or_else(otherwise);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.counter.count(Op::Delete);
            return Ok(());
        }
        let ops = resp.op_responses();
        if let Some(TxnOpResponse::Txn(nested)) = ops.first() {
            self.counter.count(Op::Delete);
            if nested.succeeded() {
                return Ok(());
            }
            return Err(present_conflict::<R>(name, &nested.op_responses()));
        }
        let live = range_at(&ops, 0);
        let Some(kv) = live.first().filter(|kv| kv.mod_revision() == rev) else {
            self.counter.count(Op::Delete);
            return Err(present_conflict::<R>(name, &ops));
        };
        self.counter.count(Op::Get);
        let mut deletes = vec![TxnOp::delete(primary.clone())];
        deletes.extend(self.placement_of::<R>(name, kv)?.map(TxnOp::delete));
        let txn = Txn::new()
            .when([Compare::mod_revision(primary, rev)])
            .and_then(deletes)
            .or_else(look);
        self.counter.count(Op::Delete);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(present_conflict::<R>(name, &resp.op_responses()))
        }
    }

    async fn list_now<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        let prefix = match scope {
            Scope::All => self.keys.kind_prefix(R::KIND),
            Scope::Node(node) if indexed(R::KIND) => self.keys.node_prefix(R::KIND, node),
            Scope::Node(_) => {
                // Kinds tied to no node have nothing on any node; no need to ask.
                self.counter.count(Op::List);
                return Ok(Vec::new());
            }
        };
        let kvs = self.get_prefix(prefix.clone()).await?;
        decode_range(&prefix, &kvs)
    }

    async fn snapshot_now(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        let config = self.keys.primary(IpamConfig::KIND, IpamConfig::NAME);
        let prefixes = [
            self.keys.kind_prefix(IpPool::KIND),
            self.keys.kind_prefix(IpReservation::KIND),
            self.keys.node_prefix(BlockAffinity::KIND, node),
            self.keys.node_prefix(IpamBlock::KIND, node),
        ];
        let mut reads = vec![get_op(&config)];
        reads.extend(prefixes.iter().map(|p| range_op(p)));
        self.counter.count(Op::List);
        let resp = self.txn(Txn::new().and_then(reads)).await?;
        let ops = resp.op_responses();
        let config = range_at(&ops, 0)
            .first()
            .map(|kv| decode::<IpamConfig>(IpamConfig::NAME, kv))
            .transpose()?;
        Ok(NodeSnapshot {
            config,
            pools: decode_range(&prefixes[0], &range_at(&ops, 1))?,
            reservations: decode_range(&prefixes[1], &range_at(&ops, 2))?,
            affinities: decode_range(&prefixes[2], &range_at(&ops, 3))?,
            blocks: decode_range(&prefixes[3], &range_at(&ops, 4))?,
        })
    }
}

/// The error for a CAS write that found the primary key absent or at another revision.
fn absent_or_conflict<R: Resource>(name: &str, absent: bool) -> StoreError {
    if absent {
        StoreError::not_found::<R>(name)
    } else {
        StoreError::conflict::<R>(name)
    }
}

/// The error for a delete that matched nothing: `ops` read the primary key and the tombstone.
fn present_conflict<R: Resource>(name: &str, ops: &[TxnOpResponse]) -> StoreError {
    let present = !range_at(ops, 0).is_empty() || !range_at(ops, 1).is_empty();
    absent_or_conflict::<R>(name, !present)
}

impl Datastore for EtcdStore {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        let kv = self.get_key(self.keys.primary(R::KIND, name)).await?;
        match kv.map(|kv| decode::<R>(name, &kv)).transpose()? {
            Some(s) if !s.value.is_deleted() => Ok(s),
            _ => Err(StoreError::not_found::<R>(name)),
        }
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.list_now(scope).await
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.create_now(name, value).await
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.update_now(name, value, revision).await
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.delete_now::<R>(name, revision).await
    }

    fn op_counts(&self) -> OpCounts {
        self.counter.snapshot()
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.snapshot_now(node).await
    }

    fn supports_commit(&self) -> bool {
        true
    }

    async fn handle_snapshot(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        self.handle_snapshot_now(handle).await
    }

    fn max_commit_writes(&self) -> usize {
        crate::release::MAX_RELEASE_WRITES
    }

    /// Takes the two batches the allocator writes: an assignment (a handle create or update,
    /// then the block it counts) and a release (block updates and deletes, then the handle's
    /// delete). Other shapes are refused as `Invalid`.
    async fn commit(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        if matches!(writes.first(), Some(BatchWrite::Handle(_))) {
            return self.commit_assignment(writes).await;
        }
        let mut blocks = Vec::with_capacity(writes.len());
        let mut handle = None;
        for write in writes {
            match (write, &handle) {
                (BatchWrite::Block(b), None) => blocks.push(b),
                (BatchWrite::Handle(Write::Delete { name, revision }), None) => {
                    handle = Some((name, revision));
                }
                (other, _) => {
                    return Err(StoreError::Invalid {
                        kind: ipam_core::Kind::IpamHandle,
                        name: other.name().to_owned(),
                        reason: "etcd commits block writes followed by the handle's delete, \
                                 or a handle write followed by a block update"
                            .into(),
                    });
                }
            }
        }
        let Some((name, revision)) = handle else {
            return Err(StoreError::Invalid {
                kind: ipam_core::Kind::IpamHandle,
                name: String::new(),
                reason: "a release commit ends with the handle's delete".into(),
            });
        };
        self.write_release(blocks, name, revision).await
    }
}
