//! Test helpers that are part of the public API, so every crate's tests can use them:
//! a datastore wrapper that injects CAS conflicts, and the invariant checker.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{AffinityState, BlockAffinity, IpamBlock, IpamHandle};
use crate::store::{
    BatchWrite, Datastore, NodeSnapshot, OpCounts, Resource, Revision, Scope, StoreError, Stored,
};

/// Wraps a store and fails a chosen fraction of CAS writes (updates and deletes) with
/// [`StoreError::Conflict`] before they reach it, as a racing writer would.
pub struct ConflictInjector<D> {
    inner: D,
    per_million: u64,
    state: AtomicU64,
    injected: AtomicU64,
}

impl<D: Datastore> ConflictInjector<D> {
    /// Fails `fraction` (0.0..=1.0) of CAS writes; `seed` makes the choice repeatable.
    pub fn new(inner: D, fraction: f64, seed: u64) -> Self {
        let per_million = (fraction.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        ConflictInjector {
            inner,
            per_million,
            state: AtomicU64::new(seed | 1),
            injected: AtomicU64::new(0),
        }
    }

    /// How many conflicts were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn roll<R: Resource>(&self, name: &str) -> Result<(), StoreError> {
        // xorshift64: cheap, lock-free enough for tests, and repeatable from the seed.
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        if x % 1_000_000 < self.per_million {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::conflict::<R>(name));
        }
        Ok(())
    }
}

impl<D: Datastore> Datastore for ConflictInjector<D> {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.inner.get(name).await
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.inner.list(scope).await
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.inner.create(name, value).await
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.roll::<R>(name)?;
        self.inner.update(name, value, revision).await
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.roll::<R>(name)?;
        self.inner.delete::<R>(name, revision).await
    }

    fn op_counts(&self) -> OpCounts {
        self.inner.op_counts()
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.inner.node_snapshot(node).await
    }

    fn supports_commit(&self) -> bool {
        self.inner.supports_commit()
    }

    fn commits_releases(&self) -> bool {
        self.inner.commits_releases()
    }

    /// A batch is a CAS write too: it fails whole, as a racing writer would make it.
    async fn commit(&self, writes: Vec<BatchWrite>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.roll::<IpamBlock>("batch")?;
        self.inner.commit(writes).await
    }
}

/// Everything wrong with a store's IPAM state, one sentence each; empty when consistent.
///
/// Checks every block's own arrays, that no address is held twice, that handle counts equal
/// what the blocks hold, and that only blocks with a confirmed affinity carry an affinity
/// (a pending claim owns nothing).
pub async fn check_invariants<D: Datastore>(store: &D) -> Result<Vec<String>, StoreError> {
    let blocks = store.list::<IpamBlock>(Scope::All).await?;
    let handles = store.list::<IpamHandle>(Scope::All).await?;
    let affinities = store.list::<BlockAffinity>(Scope::All).await?;
    let mut problems = Vec::new();
    let mut holders: HashMap<IpAddr, String> = HashMap::new();
    let mut counted: HashMap<(String, String), u32> = HashMap::new();
    for b in &blocks {
        problems.extend(
            b.value
                .problems()
                .into_iter()
                .map(|p| format!("block {}: {p}", b.value.cidr)),
        );
        let Ok(cidr) = b.value.block_cidr() else {
            continue;
        };
        for o in 0..cidr.size() {
            let Some(a) = b.value.attribute_of(o) else {
                continue;
            };
            let h = a.handle_id.clone().unwrap_or_default();
            if let Some(prev) = holders.insert(cidr.addr(o), h.clone()) {
                problems.push(format!("{} is held twice ({prev} and {h})", cidr.addr(o)));
            }
            if a.released_at.is_none() && a.handle_id.is_some() {
                *counted.entry((h, cidr.to_string())).or_default() += 1;
            }
        }
        if let Some(node) = b.value.host() {
            let confirmed = affinities.iter().any(|a| {
                a.value.cidr == b.value.cidr
                    && a.value.node == node
                    && a.value.state == AffinityState::Confirmed
            });
            if !confirmed && !b.value.is_empty() {
                problems.push(format!(
                    "block {} holds addresses for {node} without a confirmed affinity",
                    b.value.cidr
                ));
            }
        }
    }
    for h in &handles {
        for (cidr, &n) in &h.value.block {
            let actual = counted.remove(&(h.name.clone(), cidr.clone())).unwrap_or(0);
            if actual != n {
                problems.push(format!(
                    "handle {} counts {n} in {cidr}, the block holds {actual}",
                    h.name
                ));
            }
        }
    }
    for ((h, cidr), n) in counted {
        problems.push(format!(
            "handle {h:?} holds {n} in {cidr} but its IPAMHandle does not say so"
        ));
    }
    Ok(problems)
}
