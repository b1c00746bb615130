//! The allocator's model-based property test on `KubeStore` against a real kube-apiserver
//! (built by `scripts/build-peers`): every case starts from an empty cluster.
//!
//! `PROPTEST_CASES=50 cargo test -p ipam-tests --test model_k8s_real` runs more cases.

use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use tokio::sync::OnceCell;

/// Few cases: each step is several HTTPS round trips to a server that writes etcd.
const CASES: u32 = 8;

#[test]
fn allocator_agrees_with_the_model_on_a_real_api_server() {
    let server: OnceCell<KubeApiServer> = OnceCell::new();
    let server = &server;
    ipam_tests::model::run_model_test_async(
        move || async move {
            let server = server
                .get_or_init(|| async {
                    let s = KubeApiServer::start().await;
                    s.install_crds().await;
                    s
                })
                .await;
            server.delete_all_objects().await;
            server.store(ADMIN).await
        },
        CASES,
    );
}
