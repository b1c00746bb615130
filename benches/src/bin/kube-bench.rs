//! Benchmark of `Ipam<KubeStore>` on a real kube-apiserver (the one `scripts/build-peers`
//! builds, started on loopback with its own etcd): steady-state ADDs with 1 and 8
//! allocators on different nodes and a block-claim storm of 8 nodes, with the requests per
//! ADD counted by the client and by the server itself (`apiserver_request_total`), and a raw
//! GET of one object through the same client stack as the peer, all in the same run. Then
//! the CNI plugins side by side: Calico's `calico-ipam` (built by `scripts/build-peers`) and
//! ours (`ipam-cni`, next to this binary), each doing the same ADDs and DELs as a runtime
//! would, one process per call, on nodes of their own on the same server.
//!
//! Usage: `cargo build --release -p ipam-cni --bins -p ipam-benches --bin kube-bench &&
//! target/release/kube-bench [--quick]` (`--quick` runs a fifth of the work).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ipam_benches::concurrent::{BoxError, Figures, ms, steady_observed, storm};
use ipam_core::{IpPool, Ipam, OpCounts};
use ipam_tests::apiserver::{ADMIN, KubeApiServer, peer_binary, reads_and_writes};
use serde_json::json;

fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(quick))
}

async fn run(quick: bool) -> Result<(), BoxError> {
    let scale = if quick { 5 } else { 1 };
    let server = KubeApiServer::start().await;
    server.install_crds().await;
    let admin = Ipam::new(server.store(ADMIN).await, ipam_core::SystemClock);
    let mut pool = IpPool::new("10.0.0.0/8".parse()?);
    pool.block_size = 24;
    admin.create_pool("bench", pool).await?;
    let get = raw_get(&server, 200 / scale).await?;
    println!(
        "kube-apiserver at {}; raw GET of one IPPool (one round trip): mean {get:?}\n",
        server.url()
    );
    println!(
        "| scenario | ADDs | ADD/s | mean | p50 | p99 | client reads/ADD | client writes/ADD | \
         server reads/ADD | server writes/ADD | mean / raw GET |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let make = || async { Ok::<_, BoxError>(server.store(ADMIN).await) };
    for (c, each) in [(1usize, 200usize), (8, 50)] {
        let observe = || async { Ok::<_, BoxError>(server.ipam_request_counts().await) };
        let (f, before, after) = steady_observed(make, c, (each / scale).max(2), observe).await?;
        row(
            &format!("steady ADD, {c} allocators"),
            &f,
            &before,
            &after,
            get,
        );
    }
    let before = server.ipam_request_counts().await;
    let f = storm(make, 8, "claim").await?;
    let after = server.ipam_request_counts().await;
    row(
        "block claim (first ADD), 8 nodes at once",
        &f,
        &before,
        &after,
        get,
    );
    plugins(&server, (40 / scale).max(3)).await
}

/// The two plugins doing `n` ADDs then `n` DELs each on a node of their own, the first ADD
/// claiming the node's block.
async fn plugins(server: &KubeApiServer, n: usize) -> Result<(), BoxError> {
    let ours = ipam_benches::plugin::ours()?;
    let calico = peer_binary("CALICO_IPAM_BIN", "calico-ipam");
    let pid = std::process::id();
    let nodes = std::env::temp_dir().join(format!("kube-bench-{pid}-nodes.json"));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "plugin-calico"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "plugin-ours"}},
    ]});
    std::fs::write(&nodes, list.to_string())?;
    let mut create = server.kubectl(ADMIN);
    create.args(["create", "-f"]).arg(&nodes);
    let created = create.output()?.status.success();
    std::fs::remove_file(&nodes)?;
    if !created {
        return Err("kubectl create nodes failed".into());
    }
    println!("\nCNI plugins, one process per call ({n} ADDs then {n} DELs each, one node each):\n");
    println!(
        "| plugin | verb | calls | mean | p50 | p99 | server reads/call | server writes/call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, bin, ipam_type, node) in [
        ("calico-ipam v3.31", &calico, "calico-ipam", "plugin-calico"),
        ("ipam-cni (ours)", &ours, "ipam-cni", "plugin-ours"),
    ] {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
            "datastore_type": "kubernetes",
            "kubernetes": {"kubeconfig": server.kubeconfig(ADMIN)},
            "nodename": node,
            "ipam": {"type": ipam_type, "assign_ipv4": "true", "assign_ipv6": "false"},
        });
        // The first ADD claims the node's block; the others are the steady state.
        for (verb, calls, label) in [
            ("ADD", 0..1, "ADD (block claim)"),
            ("ADD", 1..n, "ADD (steady)"),
            ("DEL", 0..n, "DEL"),
        ] {
            let before = server.ipam_request_counts().await;
            let mut lat = Vec::with_capacity(n);
            for i in calls {
                let t = Instant::now();
                ipam_benches::plugin::call(bin, verb, &format!("{node}-{i}"), &conf)?;
                lat.push(t.elapsed());
            }
            let after = server.ipam_request_counts().await;
            plugin_row(name, label, &lat, reads_and_writes(&before, &after));
        }
    }
    Ok(())
}

fn plugin_row(name: &str, verb: &str, lat: &[Duration], (reads, writes): (u64, u64)) {
    let f = Figures {
        adds: lat.len(),
        wall: lat.iter().sum(),
        latencies: lat.to_vec(),
        ops: OpCounts::default(),
    };
    let per = |x: u64| x as f64 / lat.len().max(1) as f64;
    println!(
        "| {name} | {verb} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {:.2} |",
        lat.len(),
        ms(f.mean()),
        ms(f.quantile(0.5)),
        ms(f.quantile(0.99)),
        per(reads),
        per(writes)
    );
}

/// Mean latency of `n` sequential GETs of the pool through kube-rs, as `KubeStore` sends them.
async fn raw_get(server: &KubeApiServer, n: usize) -> Result<Duration, BoxError> {
    let api = server.ipam_api(ADMIN, "ippools").await;
    let start = Instant::now();
    for _ in 0..n {
        api.get("bench").await?;
    }
    Ok(start.elapsed() / n.max(1) as u32)
}

fn row(
    name: &str,
    f: &Figures,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    get: Duration,
) {
    let (reads, writes) = f.per_add();
    let (server_reads, server_writes) = reads_and_writes(before, after);
    let per = |n: u64| n as f64 / f.adds.max(1) as f64;
    println!(
        "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {reads:.2} | {writes:.2} | \
         {:.2} | {:.2} | {:.1} |",
        f.adds,
        f.rate(),
        ms(f.mean()),
        ms(f.quantile(0.5)),
        ms(f.quantile(0.99)),
        per(server_reads),
        per(server_writes),
        f.mean().as_secs_f64() / get.as_secs_f64()
    );
}
