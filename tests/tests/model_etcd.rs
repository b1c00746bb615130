//! The allocator's model-based property test on `EtcdStore` against a real etcd: every case
//! under a key prefix of its own on one server.
//!
//! `PROPTEST_CASES=200 cargo test -p ipam-tests --test model_etcd` runs more cases.

use std::sync::atomic::{AtomicU32, Ordering};

use ipam_etcd::EtcdStore;

/// Fewer cases than on `MemoryStore`: each step is several network round trips.
const CASES: u32 = 24;

#[test]
fn allocator_agrees_with_the_model_on_etcd_store() {
    let server = ipam_tests::etcd::start();
    let case = AtomicU32::new(0);
    let (server, case) = (&server, &case);
    ipam_tests::model::run_model_test_async(
        move || async move {
            let n = case.fetch_add(1, Ordering::Relaxed);
            let config = ipam_tests::etcd::config(server, &format!("/model/case-{n}/"));
            EtcdStore::connect(config)
                .await
                .expect("connect to the test etcd")
        },
        CASES,
    );
}
