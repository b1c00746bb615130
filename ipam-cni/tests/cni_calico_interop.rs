//! Side by side with Calico's own `calico-ipam` (v3.31, built from source by
//! `scripts/build-peers`), on one real kube-apiserver carrying Calico's own CRDs: addresses
//! Calico allocated are seen and released by ours, addresses ours allocated are released by
//! Calico's, nodes of both never share an address, and `ipamctl check` and `calicoctl ipam
//! check` agree on the cluster.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cni_support::{Reply, container_env};
use ipam_core::{HandleId, IpPool, Ipam};
use ipam_k8s::KubeStore;
use ipam_tests::apiserver::{ADMIN, KubeApiServer, peer_binary};
use serde_json::{Value, json};

const NETWORK: &str = "k8s-pod-network";
const POOL_CIDR: &str = "10.232.0.0/22";

/// Calico's CRDs as `scripts/build-peers` copied them from the Calico module.
fn calico_crds() -> PathBuf {
    let bin = peer_binary("CALICO_IPAM_BIN", "calico-ipam");
    let dir = bin.parent().unwrap().parent().unwrap().join("calico-crds");
    assert!(
        dir.is_dir(),
        "no {}: run scripts/build-peers",
        dir.display()
    );
    dir
}

/// The network config both plugins get; only `ipam.type` differs.
fn conf(server: &KubeApiServer, ipam_type: &str, node: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "calico",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": server.kubeconfig(ADMIN)},
        "nodename": node,
        "ipam": {"type": ipam_type, "assign_ipv4": "true", "assign_ipv6": "false"},
    })
}

/// The CNI_ARGS a kubelet sends for a pod named after the container.
fn pod_args(id: &str) -> (String, String) {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id};K8S_POD_INFRA_CONTAINER_ID={id}"
    );
    ("CNI_ARGS".into(), args)
}

/// Runs Calico's `calico-ipam` as a runtime would.
fn calico(cmd: &str, id: &str, conf: &Value) -> Reply {
    let bin = peer_binary("CALICO_IPAM_BIN", "calico-ipam");
    let mut env = container_env(cmd, id, "eth0");
    env.push(pod_args(id));
    cni_support::run_plugin(&bin, &env, &conf.to_string())
}

/// Runs this project's plugin as a runtime would.
fn ours(cmd: &str, id: &str, conf: &Value) -> Reply {
    let mut env = container_env(cmd, id, "eth0");
    env.push(pod_args(id));
    cni_support::run(&env, &conf.to_string())
}

async fn kubectl_ok(server: &KubeApiServer, args: &[&str]) -> String {
    let mut cmd = server.kubectl(ADMIN);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

async fn held(ipam: &Ipam<KubeStore>, id: &str) -> Vec<String> {
    let handle = HandleId::new(format!("{NETWORK}.{id}")).unwrap();
    match ipam.ips_by_handle(&handle).await {
        Ok(ips) => ips.iter().map(|ip| ip.addr().to_string()).collect(),
        Err(ipam_core::Error::HandleNotFound { .. }) => Vec::new(),
        Err(e) => panic!("reading {handle}: {e}"),
    }
}

/// `ipamctl -o json check --live <live>` on the cluster: its exit status and report.
async fn ipamctl_check(server: &KubeApiServer, live: &Path) -> (u8, Value) {
    use clap::Parser;
    let live = live.to_str().unwrap();
    let cli =
        ipamctl::Cli::try_parse_from(["ipamctl", "-o", "json", "check", "--live", live]).unwrap();
    let mut out = Vec::new();
    let code = ipamctl::run(
        &cli,
        server.store(ADMIN).await,
        &mut out,
        Default::default(),
    )
    .await
    .unwrap();
    (code, serde_json::from_slice(&out).unwrap())
}

/// What `calicoctl ipam check` says of the cluster.
fn calicoctl_check(server: &KubeApiServer, dir: &Path) -> String {
    let bin = peer_binary("CALICOCTL_BIN", "calicoctl");
    let report = dir.join("calico-report.json");
    let out = Command::new(bin)
        .env_clear()
        .env("DATASTORE_TYPE", "kubernetes")
        .env("KUBECONFIG", server.kubeconfig(ADMIN))
        .args(["ipam", "check", "--allow-version-mismatch", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "calicoctl ipam check: {text}");
    text
}

/// A real API server with Calico's CRDs, the given Nodes, what Calico's components write at
/// start-up, and one pool of /26 blocks.
async fn calico_cluster(
    node_names: &[&str],
) -> (KubeApiServer, Ipam<KubeStore>, tempfile::TempDir) {
    let server = KubeApiServer::start().await;
    kubectl_ok(&server, &["apply", "-f", calico_crds().to_str().unwrap()]).await;
    kubectl_ok(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.json");
    let mut items: Vec<Value> = node_names
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
        .collect();
    // What calico-node and calico-kube-controllers write at start-up, and calicoctl reads.
    items.push(json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "ClusterInformation",
        "metadata": {"name": "default"},
        "spec": {"datastoreReady": true, "calicoVersion": "v3.31.0", "clusterType": "k8s"},
    }));
    items.push(json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "KubeControllersConfiguration",
        "metadata": {"name": "default"}, "spec": {"controllers": {}},
    }));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&nodes, list.to_string()).unwrap();
    kubectl_ok(&server, &["create", "-f", nodes.to_str().unwrap()]).await;
    let admin = Ipam::new(server.store(ADMIN).await, ipam_core::SystemClock);
    let mut pool = IpPool::new(POOL_CIDR.parse().unwrap());
    pool.block_size = 26;
    admin
        .create_pool("default-ipv4-ippool", pool)
        .await
        .unwrap();
    (server, admin, dir)
}

/// The blocks affine to `node`, by CIDR.
async fn blocks_of(server: &KubeApiServer, node: &str) -> Vec<String> {
    let blocks = kubectl_ok(server, &["get", "ipamblocks", "-o", "json"]).await;
    let blocks: Value = serde_json::from_str(&blocks).unwrap();
    let affinity = format!("host:{node}");
    let all = blocks["items"].as_array().unwrap().iter();
    all.filter(|b| b["spec"]["affinity"] == affinity.as_str())
        .map(|b| b["spec"]["cidr"].as_str().unwrap().to_owned())
        .collect()
}

fn in_block(address: &str, block: &str) -> bool {
    let ip: std::net::IpAddr = address.split('/').next().unwrap().parse().unwrap();
    block.parse::<ipnet::IpNet>().unwrap().contains(&ip)
}

/// On one node, each plugin allocates from the block the other claimed: ours finds the
/// affinity Calico wrote (labelled Calico's way, without our label), and Calico finds ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_plugin_uses_the_block_the_other_claimed_on_a_node() {
    let (server, _admin, _dir) = calico_cluster(&["calico-first", "ours-first"]).await;

    let c = calico("ADD", "c1", &conf(&server, "calico-ipam", "calico-first"));
    assert_eq!(c.status, Some(0), "calico-ipam ADD: {c:?}");
    let blocks = blocks_of(&server, "calico-first").await;
    assert_eq!(blocks.len(), 1, "Calico claimed one block: {blocks:?}");
    let o = ours("ADD", "o1", &conf(&server, "ipam-cni", "calico-first")).ips()[0].clone();
    assert!(
        in_block(&o, &blocks[0]),
        "ours gave {o}, not from Calico's {blocks:?}"
    );
    assert_eq!(
        blocks_of(&server, "calico-first").await,
        blocks,
        "ours claimed another"
    );

    let o = ours("ADD", "o2", &conf(&server, "ipam-cni", "ours-first")).ips()[0].clone();
    let blocks = blocks_of(&server, "ours-first").await;
    assert_eq!(blocks.len(), 1, "ours claimed one block: {blocks:?}");
    assert!(in_block(&o, &blocks[0]));
    let c = calico("ADD", "c2", &conf(&server, "calico-ipam", "ours-first"));
    assert_eq!(c.status, Some(0), "calico-ipam ADD: {c:?}");
    let c = c.json["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(
        in_block(&c, &blocks[0]),
        "Calico gave {c}, not from our {blocks:?}"
    );
    assert_eq!(
        blocks_of(&server, "ours-first").await,
        blocks,
        "Calico claimed another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_ipam_and_ours_share_a_cluster() {
    let (server, admin, dir) = calico_cluster(&["node-calico", "node-ours"]).await;

    let calico_conf = conf(&server, "calico-ipam", "node-calico");
    let ours_conf = conf(&server, "ipam-cni", "node-ours");

    // Calico allocates; ours sees the allocation under Calico's handle and releases it.
    let reply = calico("ADD", "from-calico", &calico_conf);
    assert_eq!(reply.status, Some(0), "calico-ipam ADD: {reply:?}");
    let ip = reply.json["ips"][0]["address"].as_str().unwrap().to_owned();
    let addr = ip.split('/').next().unwrap().to_owned();
    assert_eq!(held(&admin, "from-calico").await, vec![addr.clone()]);
    let on_calico_node = conf(&server, "ipam-cni", "node-calico");
    ours("DEL", "from-calico", &on_calico_node).ok();
    assert!(
        held(&admin, "from-calico").await.is_empty(),
        "ours did not release {addr}"
    );

    // Ours allocates; Calico releases it.
    let ip = ours("ADD", "from-ours", &ours_conf).ips()[0].clone();
    let addr = ip.split('/').next().unwrap().to_owned();
    assert_eq!(held(&admin, "from-ours").await, vec![addr.clone()]);
    let on_our_node = conf(&server, "calico-ipam", "node-ours");
    let reply = calico("DEL", "from-ours", &on_our_node);
    assert_eq!(reply.status, Some(0), "calico-ipam DEL: {reply:?}");
    assert!(
        held(&admin, "from-ours").await.is_empty(),
        "Calico did not release {addr}"
    );

    // Both at once on their own nodes: no address twice.
    let mut seen = BTreeSet::new();
    for i in 0..6 {
        let c = calico("ADD", &format!("c{i}"), &calico_conf);
        assert_eq!(c.status, Some(0), "calico-ipam ADD: {c:?}");
        let c = c.json["ips"][0]["address"].as_str().unwrap().to_owned();
        let o = ours("ADD", &format!("o{i}"), &ours_conf).ips()[0].clone();
        assert!(seen.insert(c.clone()), "{c} handed out twice");
        assert!(seen.insert(o.clone()), "{o} handed out twice");
    }

    // Our node kept using its one block after Calico rewrote it (without our node label).
    let ours_blocks = blocks_of(&server, "node-ours").await;
    assert_eq!(ours_blocks.len(), 1, "{ours_blocks:?}");

    // Both checkers agree. No pod exists, so calicoctl (which looks for the pods' workload
    // endpoints) calls every allocation unused; `ipamctl check`, told that no owner is
    // alive, calls the same ones leaked, and neither finds anything else.
    let nobody = dir.path().join("nobody");
    std::fs::write(&nobody, "").unwrap();
    let (code, report) = ipamctl_check(&server, &nobody).await;
    assert_eq!(code, 1, "ipamctl check finds the leaks: {report}");
    let findings = report["findings"].as_array().unwrap();
    let others: Vec<_> = findings
        .iter()
        .filter(|f| f["kind"] != "leakedAllocation")
        .collect();
    assert!(others.is_empty(), "ours found more than leaks: {others:?}");
    let ours_leaked = findings.len();
    assert_eq!(ours_leaked, 12, "six addresses of each plugin");
    let calico_says = calicoctl_check(&server, dir.path());
    let unused =
        format!("Found {ours_leaked} IPs that are allocated in IPAM but not actually in use");
    let total = format!("found {ours_leaked} problems");
    assert!(
        calico_says.contains(&unused) && calico_says.contains(&total),
        "calicoctl disagrees with ours ({ours_leaked} leaked): {calico_says}"
    );
    // With every pod alive, ipamctl check finds nothing at all.
    let everyone = dir.path().join("everyone");
    let pods: String = (0..6)
        .map(|i| format!("default/c{i}\ndefault/o{i}\n"))
        .collect();
    std::fs::write(&everyone, pods).unwrap();
    let (code, report) = ipamctl_check(&server, &everyone).await;
    assert_eq!(code, 0, "ipamctl check with every pod alive: {report}");
    eprintln!("calicoctl ipam check:\n{calico_says}");
}

/// Strips Calico's labels from `node`'s affinities: what Calico before v3.30 wrote.
async fn as_older_calico_wrote(server: &KubeApiServer, node: &str) {
    let list = kubectl_ok(server, &["get", "blockaffinities", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["spec"]["node"] == node)
        .map(|a| a["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty(), "no affinity of {node}");
    for name in names {
        let object = format!("blockaffinities/{name}");
        kubectl_ok(
            server,
            &[
                "label",
                &object,
                "projectcalico.org/hostname-hash-",
                "projectcalico.org/affinity-type-",
                "projectcalico.org/ip-version-",
            ],
        )
        .await;
    }
}

/// A node whose affinity an older Calico wrote (no labels): before the node's first ADD
/// since boot ours labels it, as calico-ipam's upgrade does, and allocates from its block.
/// With the upgrade marked as done already, the same ADD misses the block and claims
/// another: the labelling is what finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinities_an_older_calico_wrote_are_labelled_and_used() {
    let (server, _admin, dir) = calico_cluster(&["old-node", "marked-node"]).await;
    for (node, id) in [("old-node", "c1"), ("marked-node", "c2")] {
        let c = calico("ADD", id, &conf(&server, "calico-ipam", node));
        assert_eq!(c.status, Some(0), "calico-ipam ADD: {c:?}");
        as_older_calico_wrote(&server, node).await;
    }
    let with_lock = |node: &str| {
        let mut c = conf(&server, "ipam-cni", node);
        c["ipam_lock_file"] = json!(dir.path().join(node).join("ipam.lock"));
        c
    };

    let marker = dir.path().join("marked-node/ipam.lock.upgraded");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, b"").unwrap();
    let before = blocks_of(&server, "marked-node").await;
    let o = ours("ADD", "o2", &with_lock("marked-node")).ips()[0].clone();
    assert!(!in_block(&o, &before[0]), "found without the labels?");
    assert_eq!(blocks_of(&server, "marked-node").await.len(), 2);

    let blocks = blocks_of(&server, "old-node").await;
    let o = ours("ADD", "o1", &with_lock("old-node")).ips()[0].clone();
    assert!(
        in_block(&o, &blocks[0]),
        "ours gave {o}, not from {blocks:?}"
    );
    assert_eq!(
        blocks_of(&server, "old-node").await,
        blocks,
        "claimed another"
    );
    assert!(dir.path().join("old-node/ipam.lock.upgraded").is_file());
    let selector = format!(
        "projectcalico.org/hostname-hash={}",
        ipam_k8s::resource::calico_hostname_hash("old-node")
    );
    let get = ["get", "blockaffinities", "-l", &selector, "-o", "name"];
    let labelled = kubectl_ok(&server, &get).await;
    assert_eq!(labelled.lines().count(), 1, "the affinity is labelled");
    // Calico's plugin finds it too.
    let c = calico("ADD", "c3", &conf(&server, "calico-ipam", "old-node"));
    assert_eq!(c.status, Some(0), "calico-ipam ADD: {c:?}");
    assert_eq!(blocks_of(&server, "old-node").await, blocks);
}
