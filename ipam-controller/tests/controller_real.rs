//! The controller on a real kube-apiserver (built by `scripts/build-peers`) with the
//! Kubernetes datastore: Pods and Nodes created and deleted through the API, addresses
//! allocated by the real plugin (handle `k8s-pod-network.<container id>`, attributes
//! `namespace`, `pod`, `node`), leaks planted directly in the store, the controller run in
//! this process with a 2 s grace period and a 1 s interval.
//!
//! Waits are bounded polls (`support::WITHIN`), never timed assertions: "released within
//! grace plus one interval" is checked as "released, and not before its grace period",
//! the latter by a controller whose grace period cannot pass during the test.
//!
//! One server for the file; each check has its own pool, nodes and lease.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipam_controller::Controller;
use ipam_core::model::ATTR_NODE;
use ipam_core::{
    AutoAssignArgs, BlockAffinity, Datastore, HandleId, IpPool, IpamBlock, NodeName, Scope,
};
use ipam_metrics::Metrics;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_on_a_real_api_server() {
    let server = KubeApiServer::start_with_users(&[(CONTROLLER_USER, &[])]).await;
    server.install_crds().await;
    namespace(&server, "apps").await;
    works_with_only_the_verbs_the_readme_lists(&server).await;
    releases_leaks_and_nothing_alive(&server).await;
    keeps_what_is_inside_the_grace_period(&server).await;
    releases_a_deleted_nodes_blocks(&server).await;
    two_replicas_never_act_at_once(&server).await;
}

/// A user with no rights but those the README says the controller needs.
const CONTROLLER_USER: &str = "ipam-controller";

async fn works_with_only_the_verbs_the_readme_lists(server: &KubeApiServer) {
    grant_controller_verbs(server).await;
    pool(server, "rbac", "10.65.0.0/24").await;
    create_node(server, "rbac-a").await;
    let leak = plant_leak(&admin(server).await, "rbac", "rbac-a", "rbac-ghost").await;
    let c = Controller::start(
        server.store(CONTROLLER_USER).await,
        server.client(CONTROLLER_USER).await,
        settings("rbac", "rbac-1", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await
    .unwrap();
    let s = until_status(&c, "the leak released by the restricted user", |s| {
        s.released.contains(&leak)
    })
    .await;
    assert_eq!(s.last.errors, 0, "{s:?}");
    c.stop().await;
}

/// The ClusterRole and Role of the README's list, bound to [`CONTROLLER_USER`].
async fn grant_controller_verbs(server: &KubeApiServer) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let client = server.client(ADMIN).await;
    let pp = kube::api::PostParams::default();
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| serde_json::json!({"apiGroups": [group], "resources": resources, "verbs": verbs});
    let subject = serde_json::json!([{"kind": "User", "name": CONTROLLER_USER,
                                      "apiGroup": "rbac.authorization.k8s.io"}]);
    let crd = "crd.projectcalico.org";
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
    "metadata": {"name": "ipam-controller"},
    "rules": [
        rule("", &["pods", "nodes"], &["get", "list", "watch"]),
        rule(crd, &["ipamblocks", "blockaffinities", "ipamhandles"],
             &["get", "list", "update", "delete"]),
        rule(crd, &["ippools", "ipamconfigs", "ipreservations"], &["get", "list"]),
    ]}))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ipam-controller"},
        "roleRef": {"kind": "ClusterRole", "name": "ipam-controller",
                    "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": subject}))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .unwrap();
    let lease_role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ipam-controller-lease"},
        "rules": [rule("coordination.k8s.io", &["leases"], &["get", "create", "update"])]
    }))
    .unwrap();
    let roles = Api::<Role>::namespaced(client.clone(), "kube-system");
    roles.create(&pp, &lease_role).await.unwrap();
    let lease_binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ipam-controller-lease"},
        "roleRef": {"kind": "Role", "name": "ipam-controller-lease",
                    "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": subject}))
    .unwrap();
    let bindings = Api::<RoleBinding>::namespaced(client, "kube-system");
    bindings.create(&pp, &lease_binding).await.unwrap();
}

async fn pool(server: &KubeApiServer, name: &str, cidr: &str) {
    admin(server)
        .await
        .create_pool(name, IpPool::new(cidr.parse().unwrap()))
        .await
        .unwrap();
}

async fn releases_leaks_and_nothing_alive(server: &KubeApiServer) {
    pool(server, "gc", "10.61.0.0/24").await;
    for n in ["gc-a", "gc-b"] {
        create_node(server, n).await;
    }
    for (pod, node) in [("web-1", "gc-a"), ("web-2", "gc-b"), ("doomed", "gc-a")] {
        create_pod(server, "apps", pod, node).await;
    }
    let live1 = plugin_add(server, "gc", "gc-a", "apps", "web-1").await;
    let live2 = plugin_add(server, "gc", "gc-b", "apps", "web-2").await;
    let doomed = plugin_add(server, "gc", "gc-a", "apps", "doomed").await;
    delete_pod(server, "apps", "doomed").await;
    let ghost = plant_leak(&admin(server).await, "gc", "gc-b", "ghost").await;
    // An owner that is no pod (a tunnel address): nothing says it is gone, so it stays.
    let ipam = admin(server).await;
    let tunnel = ipam
        .assign_ip(
            "10.61.0.200".parse().unwrap(),
            Some(&HandleId::new("ipip-tunnel-addr-gc-a").unwrap()),
            BTreeMap::from([(ATTR_NODE.to_owned(), "gc-a".to_owned())]),
            &NodeName::new("gc-a").unwrap(),
        )
        .await
        .unwrap()
        .addr();

    // One handle, two addresses: one of a live pod, one of a pod that is gone. As in
    // Calico, a handle with a valid address is left whole.
    let shared = shared_handle(&ipam).await;

    let c = start(
        server,
        settings("gc", "gc-1", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await;
    let s = until_status(&c, "both leaks released", |s| {
        s.released.contains(&doomed) && s.released.contains(&ghost)
    })
    .await;
    assert_eq!(s.released.len(), 2, "released more than the leaks: {s:?}");
    assert_eq!(holder(&ipam, doomed).await, None);
    assert_eq!(holder(&ipam, ghost).await, None);
    let web1 = Some(format!("{NETWORK}.{}", container_id("web-1")));
    assert_eq!(
        holder(&ipam, live1).await,
        Some((web1, "apps/web-1".into()))
    );
    assert_eq!(holder(&ipam, live2).await.unwrap().1, "apps/web-2");
    assert!(
        holder(&ipam, tunnel).await.is_some(),
        "the tunnel address was released"
    );
    for ip in shared {
        assert!(
            holder(&ipam, ip).await.is_some(),
            "{ip} of a handle still in use released"
        );
    }
    // The handles of the released addresses are gone with them.
    let handle = format!("{NETWORK}.{}", container_id("doomed"));
    assert!(
        ipam.store()
            .get::<ipam_core::IpamHandle>(&handle)
            .await
            .is_err()
    );
    c.stop().await;
}

/// Two addresses of handle `k8s-pod-network.shared` in pool `gc` on node gc-a: one naming
/// the live pod `apps/web-1`, one naming `apps/gone-shared`, which never existed.
async fn shared_handle(ipam: &ipam_core::Ipam<ipam_k8s::KubeStore>) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for pod in ["web-1", "gone-shared"] {
        let mut args = ipam_core::AutoAssignArgs::new(NodeName::new("gc-a").unwrap(), 1, 0)
            .with_handle(HandleId::new(format!("{NETWORK}.shared")).unwrap());
        args.pools4 = vec!["gc".to_owned()];
        args.attrs = BTreeMap::from([
            ("namespace".to_owned(), "apps".to_owned()),
            ("pod".to_owned(), pod.to_owned()),
            (ATTR_NODE.to_owned(), "gc-a".to_owned()),
        ]);
        out.push(ipam.auto_assign(&args).await.unwrap().ipv4[0].addr());
    }
    out
}

async fn keeps_what_is_inside_the_grace_period(server: &KubeApiServer) {
    pool(server, "young", "10.62.0.0/24").await;
    create_node(server, "young-a").await;
    let leak = plant_leak(&admin(server).await, "young", "young-a", "being-created").await;
    // A grace period that cannot pass during the test: the leak is seen, counted as a
    // candidate, and kept, pass after pass.
    let metrics = Arc::new(Metrics::with_gc());
    let c = start(
        server,
        settings("young", "young-1", Duration::from_secs(3600)),
        metrics,
    )
    .await;
    let s = until_status(&c, "three passes", |s| s.passes >= 3).await;
    assert!(
        s.released.is_empty(),
        "released inside the grace period: {s:?}"
    );
    let candidates: u64 = s.last.candidates.values().sum();
    assert!(candidates >= 1, "{s:?}");
    assert!(holder(&admin(server).await, leak).await.is_some());
    c.stop().await;
}

/// A node's tunnel address as calico-node allocates it: Calico's handle and `type`.
async fn tunnel_address(server: &KubeApiServer, pool: &str, node: &str) -> std::net::IpAddr {
    let handle = HandleId::new(format!("ipip-tunnel-addr-{node}")).unwrap();
    let mut args = AutoAssignArgs::new(NodeName::new(node).unwrap(), 1, 0).with_handle(handle);
    args.pools4 = vec![pool.to_owned()];
    args.attrs = BTreeMap::from([
        (ATTR_NODE.to_owned(), node.to_owned()),
        ("type".to_owned(), "ipipTunnelAddress".to_owned()),
    ]);
    admin(server).await.auto_assign(&args).await.unwrap().ipv4[0].addr()
}

async fn releases_a_deleted_nodes_blocks(server: &KubeApiServer) {
    pool(server, "gone", "10.63.0.0/24").await;
    create_node(server, "gone-a").await;
    create_pod(server, "apps", "on-gone", "gone-a").await;
    let ip = plugin_add(server, "gone", "gone-a", "apps", "on-gone").await;
    let tunnel = tunnel_address(server, "gone", "gone-a").await;
    // Node gone-b goes while a pod bound to it still exists: its tunnel address stays.
    create_node(server, "gone-b").await;
    create_pod(server, "apps", "on-gone-b", "gone-b").await;
    plugin_add(server, "gone", "gone-b", "apps", "on-gone-b").await;
    let kept_tunnel = tunnel_address(server, "gone", "gone-b").await;
    let store = server.store(ADMIN).await;
    let node_blocks = || async {
        let blocks = store.list::<IpamBlock>(Scope::All).await.unwrap();
        let affinities = store.list::<BlockAffinity>(Scope::All).await.unwrap();
        let b = blocks
            .iter()
            .filter(|b| b.value.host() == Some("gone-a"))
            .count();
        let a = affinities
            .iter()
            .filter(|a| a.value.node == "gone-a")
            .count();
        (b, a)
    };
    assert_eq!(node_blocks().await, (1, 1));
    let c = start(
        server,
        settings("gone", "gone-1", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await;
    // While the node and its pod exist, nothing of it goes.
    until_status(&c, "three passes", |s| s.passes >= 3).await;
    assert_eq!(node_blocks().await, (1, 1));
    assert!(holder(&admin(server).await, tunnel).await.is_some());
    delete_pod(server, "apps", "on-gone").await;
    delete_node(server, "gone-a").await;
    delete_node(server, "gone-b").await;
    // The tunnel address goes with the node's last pod; only then is its block empty and
    // the affinity released.
    let s = until_status(&c, "the node's affinity released", |s| {
        s.affinities_released
            .iter()
            .any(|a| a.starts_with("gone-a-"))
    })
    .await;
    assert!(s.released.contains(&ip), "{s:?}");
    assert!(s.released.contains(&tunnel), "{s:?}");
    until("the node's blocks and affinities gone", || async {
        node_blocks().await == (0, 0)
    })
    .await;
    assert!(
        holder(&admin(server).await, kept_tunnel).await.is_some(),
        "the tunnel address of a node whose pod still exists was released"
    );
    assert!(!s.released.contains(&kept_tunnel), "{s:?}");
    c.stop().await;
}

async fn two_replicas_never_act_at_once(server: &KubeApiServer) {
    pool(server, "race", "10.64.0.0/24").await;
    create_node(server, "race-a").await;
    let a = start(
        server,
        settings("race", "replica-a", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await;
    let b = start(
        server,
        settings("race", "replica-b", GRACE),
        Arc::new(Metrics::with_gc()),
    )
    .await;
    let first = plant_leak(&admin(server).await, "race", "race-a", "race-ghost-1").await;
    until("the first leak released", || async {
        let (sa, sb) = (a.status().borrow().clone(), b.status().borrow().clone());
        assert!(
            sa.passes == 0 || sb.passes == 0,
            "both replicas ran passes: {sa:?} {sb:?}"
        );
        sa.released.contains(&first) || sb.released.contains(&first)
    })
    .await;
    let (leader, follower) = if a.status().borrow().passes > 0 {
        (a, b)
    } else {
        (b, a)
    };
    let leases = Api::<Lease>::namespaced(server.client(ADMIN).await, "kube-system");
    let holder_id = |l: Lease| l.spec.and_then(|s| s.holder_identity);
    let held = holder_id(leases.get("race").await.unwrap()).unwrap();
    assert!(held.starts_with("replica-"), "{held}");
    assert_eq!(follower.status().borrow().passes, 0);
    // The leader dies without giving the lease up; the other takes over once it expires.
    drop(leader);
    let second = plant_leak(&admin(server).await, "race", "race-a", "race-ghost-2").await;
    let s = until_status(
        &follower,
        "the follower took over and released the leak",
        |s| s.released.contains(&second),
    )
    .await;
    assert!(
        !s.released.contains(&first),
        "the follower released the leader's leak too"
    );
    let now_held = holder_id(leases.get("race").await.unwrap()).unwrap();
    assert_ne!(now_held, held);
    follower.stop().await;
}
