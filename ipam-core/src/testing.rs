//! Test helpers that are part of the public API, so every crate's tests can use them:
//! a datastore wrapper that injects CAS conflicts, and the invariant checker.

use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use crate::check::{self, Finding, Live, Snapshot};
pub use crate::hooked::{Hooked, Hooks};
use crate::store::{Datastore, Kind, Op, StoreError};

/// Wraps a store and fails a chosen fraction of CAS writes (updates, deletes and commits)
/// with [`StoreError::Conflict`] before they reach it, as a racing writer would.
pub type ConflictInjector<D> = Hooked<D, InjectConflicts>;

/// The [`Hooks`] of a [`ConflictInjector`].
pub struct InjectConflicts {
    per_million: u64,
    state: AtomicU64,
    injected: AtomicU64,
}

impl<D: Datastore> ConflictInjector<D> {
    /// Fails `fraction` (0.0..=1.0) of CAS writes; `seed` makes the choice repeatable.
    pub fn injecting(inner: D, fraction: f64, seed: u64) -> Self {
        let per_million = (fraction.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        let hooks = InjectConflicts {
            per_million,
            state: AtomicU64::new(seed | 1),
            injected: AtomicU64::new(0),
        };
        Hooked::new(inner, hooks)
    }

    /// How many conflicts were injected so far.
    pub fn injected(&self) -> u64 {
        self.hooks.injected.load(Ordering::Relaxed)
    }
}

impl Hooks for InjectConflicts {
    async fn before_write(&self, op: Op, kind: Kind, name: &str) -> Result<(), StoreError> {
        if op == Op::Create {
            return Ok(());
        }
        // xorshift64: cheap, lock-free enough for tests, and repeatable from the seed.
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        if x % 1_000_000 < self.per_million {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Conflict {
                kind,
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

/// Every broken invariant in a store's IPAM state; empty when consistent.
///
/// The findings of [`check::check`] that [`Finding::breaks_invariant`]: no two blocks overlap
/// and no address is held twice, every block's own arrays agree, handle counts equal what
/// the blocks hold, and only a confirmed affinity lets a block hold addresses (a pending
/// claim owns nothing). `Display` gives each one's sentence.
pub async fn check_invariants<D: Datastore>(store: &D) -> Result<Vec<Finding>, StoreError> {
    let snapshot = Snapshot::read(store).await?;
    let report = check::check(&snapshot, &Live::default(), OffsetDateTime::now_utc());
    Ok(report
        .findings
        .into_iter()
        .filter(Finding::breaks_invariant)
        .collect())
}
