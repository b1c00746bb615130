//! The plugin with `datastore_type: kubernetes`: its kubeconfig points at `ipamctl serve`'s
//! API (the in-process `ipam_k8s` server over a MemoryStore), since no kube-apiserver can be
//! installed here. Plugins on several nodes run at once and never share an address; DEL of
//! all of them leaves no allocation behind.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use cni_support::{PLUGIN, container_env};
use ipam_apiserver::{Running, ServeOptions};
use ipam_core::{Datastore, IpPool, Ipam, IpamBlock, IpamHandle, MemoryStore, Scope};
use ipam_k8s::KubeStore;
use serde_json::{Value, json};

const NODES: usize = 4;
const PER_NODE: usize = 6;

fn kubeconfig(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {url}\n\
         users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    \
         cluster: local\n    user: nobody\ncurrent-context: local\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn conf(kubeconfig: &std::path::Path, node: usize) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "k8snet", "type": "ipam-cni",
        "datastore_type": "kubernetes",
        "kubernetes": {"kubeconfig": kubeconfig},
        "nodename": format!("node-{node}"),
        "ipam": {"type": "ipam-cni", "ipv4_pools": ["k8s-pool"]}
    })
}

/// Runs one plugin process per (node, container), all started before any is awaited.
fn burst(cmd: &str, kubeconfig: &std::path::Path) -> Vec<Output> {
    let children: Vec<_> = (0..NODES * PER_NODE)
        .map(|i| {
            let mut child = Command::new(PLUGIN)
                .env_clear()
                .envs(container_env(cmd, &format!("k8s{i}"), "eth0"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let text = conf(kubeconfig, i % NODES).to_string();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// Runs the real kubectl (fails clearly when it is missing: scripts/install-deps installs it).
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_file_name("kube-cache"))
        .args(args)
        .output()
        .expect("kubectl must be installed (Debian: kubernetes-client; scripts/install-deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// kubectl shows the blocks (with their printer columns), affinities, handles and pool that
/// the plugins created.
fn kubectl_sees(kubeconfig: &std::path::Path, addresses: &BTreeSet<String>) {
    let blocks = kubectl(kubeconfig, &["get", "ipamblocks"]);
    let header: Vec<&str> = blocks.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CIDR", "AFFINITY", "AGE"], "{blocks}");
    for node in 0..NODES {
        assert!(blocks.contains(&format!("host:node-{node}")), "{blocks}");
    }
    let affinities = kubectl(kubeconfig, &["get", "blockaffinities", "-o", "yaml"]);
    assert_eq!(
        affinities.matches("state: confirmed").count(),
        NODES,
        "{affinities}"
    );
    let handles = kubectl(kubeconfig, &["get", "ipamhandles", "-o", "name"]);
    assert_eq!(handles.lines().count(), addresses.len(), "{handles}");
    assert!(
        handles.contains("ipamhandle.crd.projectcalico.org/k8snet.k8s0"),
        "{handles}"
    );
    let pools = kubectl(kubeconfig, &["get", "ippools"]);
    assert!(
        pools.contains("k8s-pool") && pools.contains("10.98.0.0/24"),
        "{pools}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_on_several_nodes_share_nothing_through_the_kubernetes_api() {
    let server = Running::start(
        "127.0.0.1:0",
        MemoryStore::new(),
        ServeOptions::writable_for_tests(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &server.url());
    // The cluster's pool, created through the API as an operator would.
    let admin = Ipam::new(
        KubeStore::connect(Some(&kubeconfig)).await.unwrap(),
        ipam_core::SystemClock,
    );
    let mut pool = IpPool::new("10.98.0.0/24".parse().unwrap());
    pool.block_size = 28;
    admin.create_pool("k8s-pool", pool).await.unwrap();

    let k = kubeconfig.clone();
    let adds = tokio::task::spawn_blocking(move || burst("ADD", &k))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for out in &adds {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ADD: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Value = serde_json::from_str(&stdout).unwrap();
        let ip = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(ip.starts_with("10.98.0.") && ip.ends_with("/28"), "{ip}");
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    assert_eq!(seen.len(), NODES * PER_NODE);
    // Every node got its own blocks, and the stored state is consistent.
    let store = admin.store();
    let blocks = store.list::<IpamBlock>(Scope::All).await.unwrap();
    let owners: BTreeSet<_> = blocks
        .iter()
        .filter_map(|b| b.value.affinity.clone())
        .collect();
    assert_eq!(owners.len(), NODES, "{owners:?}");
    let problems = ipam_core::testing::check_invariants(store).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    // What the plugins wrote, as an operator sees it with the real kubectl.
    let k = kubeconfig.clone();
    let seen_by_kubectl = seen.clone();
    tokio::task::spawn_blocking(move || kubectl_sees(&k, &seen_by_kubectl))
        .await
        .unwrap();

    let k = kubeconfig.clone();
    let dels = tokio::task::spawn_blocking(move || burst("DEL", &k))
        .await
        .unwrap();
    for out in &dels {
        assert!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        store
            .list::<IpamHandle>(Scope::All)
            .await
            .unwrap()
            .is_empty()
    );
    let held: usize = store
        .list::<IpamBlock>(Scope::All)
        .await
        .unwrap()
        .iter()
        .map(|b| b.value.in_use())
        .sum();
    assert_eq!(held, 0, "DEL of every container releases every address");
}
