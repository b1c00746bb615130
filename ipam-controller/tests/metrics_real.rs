//! `/metrics` after a known sequence of allocations on a real kube-apiserver: the
//! controller's listener (behind a bearer token) and `ipamctl serve`'s, read with a plain
//! HTTP GET; names, types and values checked line by line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipam_apiserver::{Running, ServeOptions};
use ipam_controller::Error;
use ipam_controller::serve::MetricsListen;
use ipam_core::model::ATTR_NODE;
use ipam_core::{AutoAssignArgs, HandleId, IpPool, NodeName};
use ipam_metrics::Metrics;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use support::*;

const USAGE: [&str; 9] = [
    "# TYPE ipam_ippool_size gauge",
    "ipam_ippool_size{ippool=\"m\"} 256.0",
    "# TYPE ipam_allocations_in_use gauge",
    "ipam_allocations_in_use{ippool=\"m\",node=\"m-a\"} 2",
    "ipam_allocations_in_use{ippool=\"m\",node=\"m-b\"} 3",
    "ipam_allocations_borrowed{ippool=\"m\",node=\"m-b\"} 1",
    "ipam_blocks{ippool=\"m\",node=\"m-a\"} 1",
    "ipam_blocks_per_node{node=\"m-b\"} 1",
    "ipam_allocations_per_node{node=\"m-b\"} 3",
];

const CONTROLLER: [&str; 4] = [
    "# TYPE ipam_allocations_gc_candidates gauge",
    "ipam_allocations_gc_candidates{ippool=\"m\",node=\"m-b\"} 1",
    "# TYPE ipam_controller_leader gauge",
    "ipam_controller_leader 1",
];

/// After a controller with a short grace period released the leak.
const RELEASED: [&str; 5] = [
    "# TYPE ipam_allocations_gc_reclamations counter",
    "ipam_allocations_gc_reclamations_total{ippool=\"m\",node=\"m-b\"} 1",
    "# TYPE ipam_gc_releases counter",
    "ipam_gc_releases_total{reason=\"pod_deleted\"} 1",
    "ipam_allocations_in_use{ippool=\"m\",node=\"m-b\"} 2",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_allocations() {
    let server = KubeApiServer::start().await;
    server.install_crds().await;
    namespace(&server, "apps").await;
    allocate_known_sequence(&server).await;

    let metrics = Arc::new(Metrics::with_gc());
    let patient = settings("metrics", "metrics-1", Duration::from_secs(3600));
    let c = start(&server, patient, Arc::clone(&metrics)).await;
    until_status(&c, "a pass", |s| s.passes >= 1).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = MetricsListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        token_file: Some(token_file(dir.path(), "scrape-token-1")),
        tls: None,
    };
    let bound = listen.bind().await.unwrap();
    let addr = bound.local_addr().unwrap();
    let served = tokio::spawn(bound.serve(Arc::clone(&metrics), std::future::pending()));

    assert_eq!(get_metrics(addr, None).await.0, 401);
    assert_eq!(get_metrics(addr, Some("wrong")).await.0, 401);
    until("the leader gauge", || async {
        get_metrics(addr, Some("scrape-token-1"))
            .await
            .1
            .contains("ipam_controller_leader 1")
    })
    .await;
    let (code, body) = get_metrics(addr, Some("scrape-token-1")).await;
    assert_eq!(code, 200);
    assert_lines(&body, USAGE.iter().chain(&CONTROLLER));
    served.abort();
    c.stop().await;

    // `ipamctl serve`'s route: the same usage, read from the store per scrape, anonymous
    // like its other reads.
    let api = Running::start(
        "127.0.0.1:0",
        server.store(ADMIN).await,
        ServeOptions::default(),
    )
    .await
    .unwrap();
    let (code, body) = get_metrics(api.addr(), None).await;
    assert_eq!(code, 200, "{body}");
    assert_lines(&body, USAGE.iter());
    assert!(!body.contains("ipam_controller_leader"), "{body}");

    // A controller with a short grace period releases the leak and counts it.
    let metrics = Arc::new(Metrics::with_gc());
    let c = start(
        &server,
        settings("metrics", "metrics-2", GRACE),
        Arc::clone(&metrics),
    )
    .await;
    until_status(&c, "the leak released", |s| s.released.len() == 1).await;
    until("the released leak in the metrics", || async {
        let text = metrics.render();
        RELEASED.iter().all(|l| text.lines().any(|t| t == *l))
    })
    .await;
    assert!(!metrics.render().contains("ipam_allocations_gc_candidates{"));
    c.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_listener_off_loopback_is_refused() {
    let open = MetricsListen {
        addr: "0.0.0.0:0".parse().unwrap(),
        token_file: None,
        tls: None,
    };
    assert!(matches!(
        open.bind().await,
        Err(Error::UnauthenticatedListener { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let plain = MetricsListen {
        token_file: Some(token_file(dir.path(), "t")),
        ..open
    };
    // A token in clear text off the host authenticates nobody: TLS is required too.
    assert!(matches!(plain.bind().await, Err(Error::Serve(_))));
}

/// Pool `m` (/24, blocks /26); on node m-a pods m1 and m2, on m-b m3, plus m4 on m-b with
/// an address borrowed from m-a's block, plus a leak on m-b (a pod that never existed).
async fn allocate_known_sequence(server: &KubeApiServer) {
    let ipam = admin(server).await;
    ipam.create_pool("m", IpPool::new("10.71.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    for n in ["m-a", "m-b"] {
        create_node(server, n).await;
    }
    for (pod, node) in [("m1", "m-a"), ("m2", "m-a"), ("m3", "m-b"), ("m4", "m-b")] {
        create_pod(server, "apps", pod, node).await;
    }
    let m1 = plugin_add(server, "m", "m-a", "apps", "m1").await;
    plugin_add(server, "m", "m-a", "apps", "m2").await;
    plugin_add(server, "m", "m-b", "apps", "m3").await;
    let borrowed = match m1 {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4) + 10).into()),
        other => panic!("{other}"),
    };
    let attrs = |pod: &str| {
        BTreeMap::from([
            ("namespace".to_owned(), "apps".to_owned()),
            ("pod".to_owned(), pod.to_owned()),
            (ATTR_NODE.to_owned(), "m-b".to_owned()),
        ])
    };
    let node_b = NodeName::new("m-b").unwrap();
    let h4 = HandleId::new(format!("{NETWORK}.{}", container_id("m4"))).unwrap();
    ipam.assign_ip(borrowed, Some(&h4), attrs("m4"), &node_b)
        .await
        .unwrap();
    let mut ghost = AutoAssignArgs::new(node_b, 1, 0)
        .with_handle(HandleId::new(format!("{NETWORK}.ghost")).unwrap());
    ghost.attrs = attrs("m-ghost");
    ipam.auto_assign(&ghost).await.unwrap();
}

fn assert_lines<'a>(body: &str, expected: impl Iterator<Item = &'a &'a str>) {
    for line in expected {
        assert!(body.lines().any(|l| l == *line), "no {line:?} in\n{body}");
    }
}
