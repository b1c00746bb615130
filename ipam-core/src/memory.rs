//! `MemoryStore`: the in-process datastore, with real revisions and compare-and-swap.
//!
//! It is what tests and embedders use when nothing must outlive the process. Objects are kept
//! typed (no serialization) behind one mutex, with a per-node index so that node-scoped
//! listing costs what the node holds, not what the cluster holds.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{IpamBlock, IpamConfig, IpamHandle};
use crate::store::{
    BatchWrite, Datastore, HandleSnapshot, Kind, NodeSnapshot, Op, OpCounter, OpCounts, Resource,
    Revision, Scope, StoreError, Stored, Write, block_names,
};

/// An in-memory [`Datastore`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    counter: OpCounter,
}

#[derive(Default)]
struct Inner {
    next_revision: u64,
    tables: HashMap<Kind, Table>,
}

#[derive(Default)]
struct Table {
    objects: BTreeMap<String, Entry>,
    by_node: HashMap<String, BTreeSet<String>>,
}

struct Entry {
    revision: u64,
    deleted: bool,
    node: Option<String>,
    value: Arc<dyn Any + Send + Sync>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry (every write is a
        // single insert), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_now<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.counter.count(Op::Get);
        self.lock()
            .get(name)
            .ok_or_else(|| StoreError::not_found::<R>(name))
    }

    fn list_now<R: Resource>(&self, scope: Scope<'_>) -> Vec<Stored<R>> {
        self.counter.count(Op::List);
        self.lock().list(scope)
    }

    fn put_now<R: Resource>(
        &self,
        name: &str,
        value: R,
        expect: Expect<'_>,
    ) -> Result<Revision, StoreError> {
        self.counter.count(match expect {
            Expect::Absent => Op::Create,
            Expect::Revision(_) => Op::Update,
        });
        let mut inner = self.lock();
        inner.check_put::<R>(name, expect)?;
        Ok(inner.put(name, value))
    }

    fn delete_now<R: Resource>(&self, name: &str, rev: &Revision) -> Result<(), StoreError> {
        self.counter.count(Op::Delete);
        let mut inner = self.lock();
        inner.check_delete::<R>(name, rev)?;
        inner.remove::<R>(name);
        Ok(())
    }

    fn snapshot_now(&self, node: &str) -> NodeSnapshot {
        self.counter.count(Op::List);
        let inner = self.lock();
        NodeSnapshot {
            config: inner.get(IpamConfig::NAME),
            pools: inner.list(Scope::All),
            reservations: inner.list(Scope::All),
            affinities: inner.list(Scope::Node(node)),
            blocks: inner.list_where(Scope::Node(node), IpamBlock::has_room),
        }
    }

    fn handle_snapshot_now(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        self.counter.count(Op::Get);
        let inner = self.lock();
        let handle: Option<Stored<IpamHandle>> = inner.get(handle);
        let names = handle.as_ref().map(block_names).transpose()?;
        Ok(HandleSnapshot {
            config: inner.get(IpamConfig::NAME),
            blocks: names
                .iter()
                .flatten()
                .filter_map(|n| inner.get(n))
                .collect(),
            handle,
        })
    }

    fn commit_now(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.counter.count(Op::Update);
        let mut inner = self.lock();
        // Every precondition is checked before anything is applied, under the one lock: the
        // batch is atomic. Naming an object twice would make the checks stale, so it is refused.
        let mut seen = std::collections::HashSet::new();
        for w in &writes {
            let (kind, name) = match w {
                BatchWrite::Block(w) => (Kind::IpamBlock, w.name()),
                BatchWrite::Handle(w) => (Kind::IpamHandle, w.name()),
            };
            if !seen.insert((kind, name.to_owned())) {
                let reason = "a batch names the same object twice".into();
                return Err(StoreError::Invalid {
                    kind,
                    name: name.to_owned(),
                    reason,
                });
            }
            match w {
                BatchWrite::Block(w) => inner.check_write(w)?,
                BatchWrite::Handle(w) => inner.check_write(w)?,
            }
        }
        Ok(writes
            .into_iter()
            .map(|w| match w {
                BatchWrite::Block(w) => inner.apply(w),
                BatchWrite::Handle(w) => inner.apply(w),
            })
            .collect())
    }
}

impl Inner {
    fn get<R: Resource>(&self, name: &str) -> Option<Stored<R>> {
        match self.tables.get(&R::KIND).and_then(|t| t.objects.get(name)) {
            Some(e) if !e.deleted => Some(stored(name, e)),
            _ => None,
        }
    }

    fn list<R: Resource>(&self, scope: Scope<'_>) -> Vec<Stored<R>> {
        self.list_where(scope, |_: &R| true)
    }

    /// Lists the live objects that `keep` accepts, copying only those.
    fn list_where<R: Resource>(
        &self,
        scope: Scope<'_>,
        keep: impl Fn(&R) -> bool,
    ) -> Vec<Stored<R>> {
        let Some(table) = self.tables.get(&R::KIND) else {
            return Vec::new();
        };
        let live = |(name, e): (&String, &Entry)| {
            let wanted = !e.deleted && e.value.downcast_ref::<R>().is_some_and(&keep);
            wanted.then(|| stored(name, e))
        };
        match scope {
            Scope::All => table.objects.iter().filter_map(live).collect(),
            Scope::Node(node) => table
                .by_node
                .get(node)
                .into_iter()
                .flatten()
                .filter_map(|name| table.objects.get_key_value(name))
                .filter_map(live)
                .collect(),
        }
    }

    fn check_put<R: Resource>(&self, name: &str, expect: Expect<'_>) -> Result<(), StoreError> {
        let existing = self.tables.get(&R::KIND).and_then(|t| t.objects.get(name));
        match (existing, expect) {
            (Some(e), Expect::Absent) if !e.deleted => Err(StoreError::already_exists::<R>(name)),
            (Some(e), Expect::Revision(_)) if e.deleted => Err(StoreError::not_found::<R>(name)),
            (None, Expect::Revision(_)) => Err(StoreError::not_found::<R>(name)),
            (Some(e), Expect::Revision(rev)) if Revision::from_u64(e.revision) != *rev => {
                Err(StoreError::conflict::<R>(name))
            }
            _ => Ok(()),
        }
    }

    fn check_delete<R: Resource>(&self, name: &str, rev: &Revision) -> Result<(), StoreError> {
        match self.tables.get(&R::KIND).and_then(|t| t.objects.get(name)) {
            None => Err(StoreError::not_found::<R>(name)),
            Some(e) if Revision::from_u64(e.revision) != *rev => {
                Err(StoreError::conflict::<R>(name))
            }
            Some(_) => Ok(()),
        }
    }

    fn check_write<R: Resource>(&self, w: &Write<R>) -> Result<(), StoreError> {
        match w {
            Write::Create { name, .. } => self.check_put::<R>(name, Expect::Absent),
            Write::Update { name, revision, .. } => {
                self.check_put::<R>(name, Expect::Revision(revision))
            }
            Write::Delete { name, revision } => self.check_delete::<R>(name, revision),
        }
    }

    fn apply<R: Resource>(&mut self, w: Write<R>) -> Option<Revision> {
        match w {
            Write::Create { name, value } | Write::Update { name, value, .. } => {
                Some(self.put(&name, value))
            }
            Write::Delete { name, .. } => {
                self.remove::<R>(&name);
                None
            }
        }
    }

    /// Stores `value` under a new revision; preconditions were checked by the caller.
    fn put<R: Resource>(&mut self, name: &str, value: R) -> Revision {
        self.next_revision += 1;
        let revision = self.next_revision;
        let table = self.tables.entry(R::KIND).or_default();
        table.unindex(name);
        let node = value.node().map(str::to_owned);
        if let Some(node) = &node {
            table
                .by_node
                .entry(node.clone())
                .or_default()
                .insert(name.to_owned());
        }
        let entry = Entry {
            revision,
            deleted: value.is_deleted(),
            node,
            value: Arc::new(value),
        };
        table.objects.insert(name.to_owned(), entry);
        Revision::from_u64(revision)
    }

    fn remove<R: Resource>(&mut self, name: &str) {
        let table = self.tables.entry(R::KIND).or_default();
        table.unindex(name);
        table.objects.remove(name);
    }
}

enum Expect<'a> {
    Absent,
    Revision(&'a Revision),
}

impl Table {
    fn unindex(&mut self, name: &str) {
        let Some(node) = self.objects.get(name).and_then(|e| e.node.clone()) else {
            return;
        };
        if let Some(names) = self.by_node.get_mut(&node) {
            names.remove(name);
            if names.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }
}

fn stored<R: Resource>(name: &str, e: &Entry) -> Stored<R> {
    // Each table holds values of exactly one kind, inserted by `put_now::<R>` for the R whose
    // KIND keys the table, so the downcast cannot fail; fall back to a panic-free path anyway.
    let value = e.value.downcast_ref::<R>().cloned();
    match value {
        Some(value) => Stored {
            name: name.to_owned(),
            revision: Revision::from_u64(e.revision),
            value,
        },
        None => unreachable!("table for {} holds another type", R::KIND),
    }
}

impl Datastore for MemoryStore {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.get_now(name)
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        Ok(self.list_now(scope))
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.put_now(name, value, Expect::Absent)
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.put_now(name, value, Expect::Revision(revision))
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.delete_now::<R>(name, revision)
    }

    fn op_counts(&self) -> OpCounts {
        self.counter.snapshot()
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        Ok(self.snapshot_now(node))
    }

    /// One read under the one lock, as SQLite's read transaction.
    async fn handle_snapshot(&self, handle: &str) -> Result<HandleSnapshot, StoreError> {
        self.handle_snapshot_now(handle)
    }

    fn supports_commit(&self) -> bool {
        true
    }

    async fn commit(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.commit_now(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpamHandle;

    #[test]
    fn cas_and_soft_delete() {
        pollster::block_on(async {
            let s = MemoryStore::new();
            let r1 = s.create("h", IpamHandle::new("h")).await.unwrap();
            assert!(matches!(
                s.create("h", IpamHandle::new("h")).await,
                Err(StoreError::AlreadyExists { .. })
            ));
            let mut h = IpamHandle::new("h");
            h.block.insert("10.0.0.0/26".into(), 1);
            let r2 = s.update("h", h.clone(), &r1).await.unwrap();
            assert!(
                s.update("h", h.clone(), &r1)
                    .await
                    .unwrap_err()
                    .is_conflict()
            );
            h.deleted = true;
            let r3 = s.update("h", h, &r2).await.unwrap();
            assert!(s.get::<IpamHandle>("h").await.unwrap_err().is_not_found());
            assert!(
                s.delete::<IpamHandle>("h", &r2)
                    .await
                    .unwrap_err()
                    .is_conflict()
            );
            s.delete::<IpamHandle>("h", &r3).await.unwrap();
            assert!(
                s.delete::<IpamHandle>("h", &r3)
                    .await
                    .unwrap_err()
                    .is_not_found()
            );
            let c = s.op_counts();
            assert_eq!((c.creates, c.updates, c.deletes, c.gets), (2, 3, 3, 1));
        });
    }
}
