//! The controller on the etcd datastore (a real etcd), with Pods and Nodes from a real
//! kube-apiserver: the plugin allocates on etcd, the controller releases on etcd what the
//! cluster's deleted pods and node left there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ipam_controller::Controller;
use ipam_core::{BlockAffinity, Datastore, IpPool, Ipam, IpamBlock, Scope};
use ipam_metrics::Metrics;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use ipam_tests::etcd::{self, DEFAULT_PREFIX};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_on_etcd_with_the_clusters_pods() {
    let server = KubeApiServer::start().await;
    namespace(&server, "apps").await;
    let etcd = etcd::start();
    let ipam = Ipam::new(
        etcd::store(&etcd, DEFAULT_PREFIX).await,
        ipam_core::SystemClock,
    );
    ipam.create_pool("e", IpPool::new("10.81.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    create_node(&server, "e-a").await;
    for pod in ["e-live", "e-doomed"] {
        create_pod(&server, "apps", pod, "e-a").await;
    }
    let on_etcd = json!({"datastore_type": "etcdv3", "etcd_endpoints": etcd.endpoint()});
    let live = plugin_add_on(on_etcd.clone(), "e", "e-a", "apps", "e-live").await;
    let doomed = plugin_add_on(on_etcd, "e", "e-a", "apps", "e-doomed").await;
    delete_pod(&server, "apps", "e-doomed").await;
    let ghost = plant_leak(&ipam, "e", "e-a", "e-ghost").await;

    let store = etcd::store(&etcd, DEFAULT_PREFIX).await;
    let c = Controller::start(
        store,
        server.client(ADMIN).await,
        settings("etcd", "etcd-1", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await
    .unwrap();
    let s = until_status(&c, "both leaks released", |s| {
        s.released.contains(&doomed) && s.released.contains(&ghost)
    })
    .await;
    assert_eq!(s.released.len(), 2, "{s:?}");
    assert_eq!(holder(&ipam, live).await.unwrap().1, "apps/e-live");

    delete_pod(&server, "apps", "e-live").await;
    delete_node(&server, "e-a").await;
    until(
        "the deleted node's block and affinity gone from etcd",
        || async {
            let blocks = ipam.store().list::<IpamBlock>(Scope::All).await.unwrap();
            let affinities = ipam
                .store()
                .list::<BlockAffinity>(Scope::All)
                .await
                .unwrap();
            blocks.is_empty() && affinities.is_empty()
        },
    )
    .await;
    assert!(c.status().borrow().released.contains(&live));
    c.stop().await;
}
