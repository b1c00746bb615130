//! `MemoryStore`: the in-process datastore, with real revisions and compare-and-swap.
//!
//! It is what tests and embedders use when nothing must outlive the process. Objects are kept
//! typed (no serialization) behind one mutex, with a per-node index so that node-scoped
//! listing costs what the node holds, not what the cluster holds.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{
    Datastore, Kind, Op, OpCounter, OpCounts, Resource, Revision, Scope, StoreError, Stored,
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
        let inner = self.lock();
        match inner.tables.get(&R::KIND).and_then(|t| t.objects.get(name)) {
            Some(e) if !e.deleted => Ok(stored(name, e)),
            _ => Err(StoreError::not_found::<R>(name)),
        }
    }

    fn list_now<R: Resource>(&self, scope: Scope<'_>) -> Vec<Stored<R>> {
        self.counter.count(Op::List);
        let inner = self.lock();
        let Some(table) = inner.tables.get(&R::KIND) else {
            return Vec::new();
        };
        let live = |(name, e): (&String, &Entry)| (!e.deleted).then(|| stored(name, e));
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
        inner.next_revision += 1;
        let revision = inner.next_revision;
        let table = inner.tables.entry(R::KIND).or_default();
        match (table.objects.get(name), expect) {
            (Some(e), Expect::Absent) if !e.deleted => {
                return Err(StoreError::already_exists::<R>(name));
            }
            (Some(e), Expect::Revision(_)) if e.deleted => {
                return Err(StoreError::not_found::<R>(name));
            }
            (None, Expect::Revision(_)) => return Err(StoreError::not_found::<R>(name)),
            (Some(e), Expect::Revision(rev)) if Revision::from_u64(e.revision) != *rev => {
                return Err(StoreError::conflict::<R>(name));
            }
            _ => {}
        }
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
        Ok(Revision::from_u64(revision))
    }

    fn delete_now<R: Resource>(&self, name: &str, rev: &Revision) -> Result<(), StoreError> {
        self.counter.count(Op::Delete);
        let mut inner = self.lock();
        let table = inner.tables.entry(R::KIND).or_default();
        match table.objects.get(name) {
            None => Err(StoreError::not_found::<R>(name)),
            Some(e) if Revision::from_u64(e.revision) != *rev => {
                Err(StoreError::conflict::<R>(name))
            }
            Some(_) => {
                table.unindex(name);
                table.objects.remove(name);
                Ok(())
            }
        }
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
