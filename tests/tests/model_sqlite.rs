//! The allocator's model-based property test on `SqliteStore`: every case on a new database
//! file, so the allocator runs over real serialization, transactions and revisions.
//!
//! `PROPTEST_CASES=1000 cargo test -p ipam-tests --test model_sqlite` runs more cases.

use std::sync::atomic::{AtomicU32, Ordering};

use ipam_sqlite::SqliteStore;

/// Fewer cases than on `MemoryStore`: each write is a durable commit.
const CASES: u32 = 64;

#[test]
fn allocator_agrees_with_the_model_on_sqlite_store() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let case = AtomicU32::new(0);
    ipam_tests::model::run_model_test(
        || {
            let n = case.fetch_add(1, Ordering::Relaxed);
            SqliteStore::open(dir.path().join(format!("case-{n}.db")))
                .expect("open a fresh SQLite store")
        },
        CASES,
    );
}
