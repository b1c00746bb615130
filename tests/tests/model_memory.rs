//! The allocator's model-based property test on the in-memory store.
//!
//! `PROPTEST_CASES=20000 cargo test -p ipam-tests --test model_memory` runs more cases.

use ipam_core::MemoryStore;

#[test]
fn allocator_agrees_with_the_model_on_memory_store() {
    ipam_tests::model::run_model_test(MemoryStore::new, 2000);
}
