//! The allocator's model-based property test on the in-memory store, plain and with
//! conflicts injected into block writes (another writer winning the race): retries must
//! hide them completely.
//!
//! `PROPTEST_CASES=20000 cargo test -p ipam-tests --test model_memory` runs more cases.

use std::sync::atomic::{AtomicU64, Ordering};

use ipam_core::testing::{Hooked, Hooks};
use ipam_core::{Kind, MemoryStore, StoreError, store::Op};

#[test]
fn allocator_agrees_with_the_model_on_memory_store() {
    ipam_tests::model::run_model_test(MemoryStore::new, 2000);
}

/// Refuses every third block update as a conflict, as if another writer got there first.
#[derive(Default)]
struct EveryThirdBlockUpdateConflicts(AtomicU64);

impl Hooks for EveryThirdBlockUpdateConflicts {
    async fn before_write(&self, op: Op, kind: Kind, name: &str) -> Result<(), StoreError> {
        let blocks = kind == Kind::IpamBlock && op == Op::Update;
        if blocks && self.0.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
            return Err(StoreError::Conflict {
                kind,
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

#[test]
fn conflicts_change_nothing_the_model_can_see() {
    ipam_tests::model::run_model_test(
        || {
            Hooked::new(
                MemoryStore::new(),
                EveryThirdBlockUpdateConflicts::default(),
            )
        },
        500,
    );
}
