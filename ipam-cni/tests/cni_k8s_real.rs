//! The plugin on the Kubernetes datastore of a real kube-apiserver (built by
//! `scripts/build-peers`), configured as `deploy/` ships it: `deploy/crds.yaml` and
//! `deploy/rbac.yaml` applied with kubectl, and the plugin holding only the token of the
//! `ipam-cni` ServiceAccount that `deploy/rbac.yaml` binds.
//!
//! - `deploy/10-ipam.conflist` through Debian's `bridge`, in namespaces the test creates:
//!   only the bridge name, the kubeconfig path and the node name are changed.
//! - Several simulated nodes allocating at once: no address twice, each node in its own
//!   blocks, and the server's own request counters (`apiserver_request_total`) for a
//!   steady-state ADD.
//! - The role refuses what the plugin does not need (403).
//! - Pool selectors read the labels of the real Node and Namespace objects.
//!
//! One server for the file; addresses come from 10.231.40.0/22, which exists only inside
//! the test's namespaces and bridge.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use cni_support::netns::{BRIDGE_PLUGIN, Cleanup, addresses_in, bridge, require, sh};
use cni_support::{Reply, container_env};
use ipam_core::{IpPool, Ipam};
use ipam_tests::apiserver::{ADMIN, KubeApiServer, reads_and_writes};
use serde_json::{Value, json};

/// The user a ServiceAccount token authenticates as: the subject `deploy/rbac.yaml` binds.
const PLUGIN_USER: &str = "system:serviceaccount:kube-system:ipam-cni";
const PLUGIN_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
];
/// The pool the shipped conflist names.
const POOL: &str = "default-ipv4-ippool";
/// Room for a block per node (/26 blocks), so no node has to borrow.
const POOL_CIDR: &str = "10.231.40.0/22";
const NODES: usize = 4;
const PODS_PER_NODE: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_on_a_real_api_server_as_deploy_ships_it() {
    require(BRIDGE_PLUGIN, "containernetworking-plugins");
    require("/usr/sbin/ip", "iproute2");
    require("/usr/bin/ping", "iputils-ping");
    let server = KubeApiServer::start_with_users(&[(PLUGIN_USER, PLUGIN_GROUPS)]).await;
    server.install_crds().await;
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
    kubectl_ok(&server, ADMIN, &["apply", "-f", rbac]).await;
    let admin = Ipam::new(server.store(ADMIN).await, ipam_core::SystemClock);
    admin
        .create_pool(POOL, IpPool::new(POOL_CIDR.parse().unwrap()))
        .await
        .unwrap();

    shipped_conflist_through_bridge(&server).await;
    nodes_allocate_at_once(&server).await;
    the_role_refuses_what_the_plugin_does_not_need(&server).await;
    selectors_read_the_node_and_the_namespace(&server, &admin).await;
}

/// `deploy/10-ipam.conflist`'s first plugin as a runtime hands it over (the list's
/// `cniVersion` and `name` copied in), with only the bridge, kubeconfig and node changed.
fn shipped_conf(server: &KubeApiServer, bridge: &str, node: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/10-ipam.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut conf = list["plugins"][0].clone();
    assert_eq!(conf["ipam"]["ipv4_pools"], json!([POOL]), "{path} changed");
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["bridge"] = json!(bridge);
    conf["nodename"] = json!(node);
    conf["kubernetes"]["kubeconfig"] = json!(server.kubeconfig(PLUGIN_USER));
    conf
}

async fn shipped_conflist_through_bridge(server: &KubeApiServer) {
    let cleanup = Cleanup::with_bridge("ipk8s", "02:99:00:00:00:02");
    let br = cleanup.bridge.as_str();
    let conf = shipped_conf(server, br, "node-bridge");

    let mut added = Vec::new();
    for (i, ns) in cleanup.namespaces.iter().enumerate() {
        let container = format!("k8s-bridge-{i}");
        let (ns, c, conf) = (ns.clone(), container.clone(), conf.clone());
        let (ok, result, text) = blocking(move || bridge("ADD", &ns, &c, &conf)).await;
        assert!(ok, "bridge ADD: {text}");
        let ip = result["ips"][0]["address"].as_str().unwrap().to_owned();
        let pool: ipnet::IpNet = POOL_CIDR.parse().unwrap();
        let net: ipnet::IpNet = ip.parse().unwrap();
        assert!(
            pool.contains(&net.addr()) && net.prefix_len() == 26,
            "{result}"
        );
        assert_eq!(addresses_in(&cleanup.namespaces[i]), vec![ip.clone()]);
        added.push((container, result, ip));
    }
    assert_ne!(added[0].2, added[1].2);
    let peer = added[1].2.split('/').next().unwrap();
    let ns0 = &cleanup.namespaces[0];
    sh(
        "ip",
        &["netns", "exec", ns0, "ping", "-c", "1", "-W", "2", peer],
    );

    for ((container, result, _), ns) in added.iter().zip(&cleanup.namespaces) {
        for verb in ["CHECK", "DEL"] {
            let mut c = conf.clone();
            c["prevResult"] = result.clone();
            let (ns, container) = (ns.clone(), container.clone());
            let (ok, _, text) = blocking(move || bridge(verb, &ns, &container, &c)).await;
            assert!(ok, "bridge {verb}: {text}");
        }
        assert!(addresses_in(ns).is_empty(), "{ns} still has addresses");
    }
    let handles = kubectl_json(server, &["get", "ipamhandles"]).await;
    assert_eq!(handles["items"], json!([]), "handles left after DEL");
}

async fn nodes_allocate_at_once(server: &KubeApiServer) {
    let confs: Vec<Value> = (0..NODES)
        .map(|n| shipped_conf(server, "unused", &format!("node-{n}")))
        .collect();
    let runs = confs.iter().enumerate().map(|(n, conf)| {
        let conf = conf.clone();
        tokio::task::spawn_blocking(move || {
            (0..PODS_PER_NODE)
                .map(|p| plugin("ADD", &format!("ctr-{n}-{p}"), &conf).ips()[0].clone())
                .collect::<Vec<_>>()
        })
    });
    let mut by_node = BTreeMap::new();
    for (n, run) in runs.enumerate() {
        by_node.insert(format!("node-{n}"), run.await.unwrap());
    }
    let all: Vec<&String> = by_node.values().flatten().collect();
    let unique: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        NODES * PODS_PER_NODE,
        "an address twice: {by_node:?}"
    );

    // Each node's addresses lie in blocks affine to that node.
    let blocks = kubectl_json(server, &["get", "ipamblocks"]).await;
    for (node, ips) in &by_node {
        let own: Vec<ipnet::IpNet> = blocks["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["spec"]["affinity"] == format!("host:{node}"))
            .map(|b| b["spec"]["cidr"].as_str().unwrap().parse().unwrap())
            .collect();
        for ip in ips {
            let addr: ipnet::IpNet = ip.parse().unwrap();
            assert!(
                own.iter().any(|b| b.contains(&addr.addr())),
                "{ip} of {node} is not in its blocks {own:?}"
            );
        }
    }

    // A steady-state ADD on a node that has room, counted by the server itself.
    let before = server.ipam_request_counts().await;
    plugin("ADD", "ctr-steady", &confs[0]).ips();
    let after = server.ipam_request_counts().await;
    let (reads, writes) = reads_and_writes(&before, &after);
    eprintln!("steady-state ADD through the real server: {reads} reads, {writes} writes");
    // The handle, then the node's snapshot (config, pools, reservations, affinities,
    // blocks); no pool has a selector yet, so no Node or Namespace read.
    assert_eq!(
        reads, 6,
        "reads of a steady-state ADD: {before:?} -> {after:?}"
    );
    assert!(
        writes >= 2,
        "an ADD writes its block and its handle: {after:?}"
    );

    for (n, conf) in confs.iter().enumerate() {
        for p in 0..PODS_PER_NODE {
            plugin("DEL", &format!("ctr-{n}-{p}"), conf).ok();
        }
    }
    plugin("DEL", "ctr-steady", &confs[0]).ok();
    let handles = kubectl_json(server, &["get", "ipamhandles"]).await;
    assert_eq!(handles["items"], json!([]), "handles left after DEL");
    for block in blocks_now(server).await {
        let allocations = block["spec"]["allocations"].as_array().cloned();
        let held = allocations.into_iter().flatten().filter(|a| !a.is_null());
        assert_eq!(
            held.count(),
            0,
            "addresses left in {}",
            block["spec"]["cidr"]
        );
    }
}

async fn the_role_refuses_what_the_plugin_does_not_need(server: &KubeApiServer) {
    for args in [
        vec!["delete", "ippool", POOL],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["delete", "ipamconfig", "default"],
        vec!["get", "pods", "-A"],
    ] {
        let out = kubectl(server, PLUGIN_USER, &args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Forbidden"),
            "kubectl {args:?} as the plugin was not refused: {err}"
        );
    }
    // The pool is still there.
    kubectl_ok(server, ADMIN, &["get", "ippool", POOL]).await;
}

/// With the default pool disabled and no pool named in the config, a pool whose
/// `nodeSelector` names the Node's label serves that node only, and one whose
/// `namespaceSelector` names the Namespace's label serves that namespace's pods only.
async fn selectors_read_the_node_and_the_namespace(
    server: &KubeApiServer,
    admin: &Ipam<ipam_k8s::KubeStore>,
) {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-zone-b", "labels": {"zone": "b"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-plain"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-x", "labels": {"team": "x"}}},
    ]});
    std::fs::write(&objects, list.to_string()).unwrap();
    kubectl_ok(server, ADMIN, &["create", "-f", objects.to_str().unwrap()]).await;
    let mut default = admin.get_pool(POOL).await.unwrap().value;
    default.disabled = true;
    admin.update_pool(POOL, default).await.unwrap();
    let mut zone_b = IpPool::new("10.231.60.0/24".parse().unwrap());
    zone_b.node_selector = "zone == 'b'".into();
    admin.create_pool("zone-b", zone_b).await.unwrap();
    let mut team_x = IpPool::new("10.231.61.0/24".parse().unwrap());
    team_x.namespace_selector = "team == 'x'".into();
    admin.create_pool("team-x", team_x).await.unwrap();

    let add = |node: &str, namespace: &str, id: &str| {
        let mut conf = shipped_conf(server, "unused", node);
        conf["ipam"].as_object_mut().unwrap().remove("ipv4_pools");
        let mut env = container_env("ADD", id, "eth0");
        let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={id}");
        env.push(("CNI_ARGS".into(), args));
        cni_support::run(&env, &conf.to_string())
    };
    let ip = add("node-zone-b", "default", "sel-1").ips()[0].clone();
    assert!(ip.starts_with("10.231.60."), "zone b's node got {ip}");
    let ip = add("node-plain", "team-x", "sel-2").ips()[0].clone();
    assert!(ip.starts_with("10.231.61."), "team x's pod got {ip}");
    let none = add("node-plain", "default", "sel-3");
    assert_eq!(none.code(), 100, "no pool for this pod: {none:?}");
}

/// Runs the plugin itself (not through bridge), as a runtime would.
fn plugin(cmd: &str, id: &str, conf: &Value) -> Reply {
    cni_support::run(&container_env(cmd, id, "eth0"), &conf.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn kubectl(server: &KubeApiServer, user: &str, args: &[&str]) -> Output {
    let mut cmd = server.kubectl(user);
    cmd.args(args);
    blocking(move || cmd.output().unwrap()).await
}

async fn kubectl_ok(server: &KubeApiServer, user: &str, args: &[&str]) -> String {
    let out = kubectl(server, user, args).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} as {user}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

async fn kubectl_json(server: &KubeApiServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(server, ADMIN, &all).await).unwrap()
}

async fn blocks_now(server: &KubeApiServer) -> Vec<Value> {
    let blocks = kubectl_json(server, &["get", "ipamblocks"]).await;
    blocks["items"].as_array().cloned().unwrap_or_default()
}
