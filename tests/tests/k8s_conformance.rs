//! The datastore conformance suite on `KubeStore`, over HTTP to the Kubernetes-style API
//! server, backed by `MemoryStore` and by `EtcdStore` (a real etcd per check).
//!
//! Every check runs but `operation_counters`, whose expectation that a refused create costs
//! one round trip does not hold here: the Kubernetes API answers a create of an existing name
//! with 409 and no object, so `KubeStore` reads the object to learn whether it is
//! soft-deleted (and must be replaced). `k8s_store.rs` checks KubeStore's exact counts.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use ipam_apiserver::{Running, ServeOptions};
use ipam_k8s::KubeStore;

/// A server over `backend` on a loopback ephemeral port and a `KubeStore` talking to it.
pub async fn over<D: ipam_core::Datastore + 'static>(backend: D) -> (KubeStore, Running) {
    let server = Running::start("127.0.0.1:0", backend, ServeOptions::writable_for_tests())
        .await
        .expect("start the API server on 127.0.0.1");
    let store = KubeStore::for_url(&server.url()).expect("a client for the local server");
    (store, server)
}

mod memory {
    ipam_tests::datastore_conformance!(@without_counters super::over(ipam_core::MemoryStore::new()).await);
}

mod etcd {
    /// The etcd server outlives the API server (dropped after it).
    async fn fresh() -> (
        ipam_k8s::KubeStore,
        (ipam_apiserver::Running, ipam_tests::etcd::EtcdServer),
    ) {
        let (backend, etcd) = ipam_tests::etcd::fresh().await;
        let (store, api) = super::over(backend).await;
        (store, (api, etcd))
    }

    ipam_tests::datastore_conformance!(@without_counters fresh().await);
}
