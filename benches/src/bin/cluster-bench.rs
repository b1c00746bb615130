//! Cluster-scale benchmark, the shape of the published IPAM comparisons: `--nodes` simulated
//! nodes (10) each starting `--pods` pods, `--parallel` at a time on each node (4), every ADD
//! a real CNI plugin process, against one real etcd (Debian's, data in memory) and one real
//! kube-apiserver (built by `scripts/build-peers`). Calico's `calico-ipam` (also built there)
//! does the same work in the same run as the peer, on a fresh server of its own.
//!
//! The default is 60 pods a node, so that both plugins on both stores finish within two
//! minutes on two cores; `--pods 1000` is the published shape (10,000 pods), which takes
//! about half a minute for ours on etcd, several minutes through the kube-apiserver, and
//! several more for calico-ipam (`--no-calico` leaves it out).
//!
//! For each store and plugin it prints the total time, ADDs per second, p50 and p99 latency,
//! the datastore calls per ADD counted by the server itself (etcd's
//! `grpc_server_handled_total`, kube-apiserver's `apiserver_request_total`), and the check at
//! the end: every reported address distinct, and the allocator's consistency check over the
//! whole store clean with exactly one allocation per pod.
//!
//! Each simulated node has its own host lock (`ipam_lock_file`), as real nodes have; they
//! share the host's cores, so this measures the datastore and the plugins' work, not a
//! cluster's network.
//!
//! Usage: `cargo build --release -p ipam-cni --bins -p ipam-benches --bin cluster-bench &&
//! target/release/cluster-bench [--store etcd|kubernetes|both] [--nodes N] [--pods P]
//! [--parallel K] [--no-calico]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipam_benches::concurrent::{BoxError, Figures, ms};
use ipam_benches::plugin;
use ipam_core::check::{Live, Snapshot, check};
use ipam_core::{Datastore, IpPool, Ipam, OpCounts, SystemClock};
use ipam_etcd::{EtcdConfig, EtcdStore};
use ipam_tests::apiserver::{ADMIN, KubeApiServer, peer_binary, reads_and_writes};
use ipam_tests::etcd_server::LocalEtcd;
use serde_json::{Value, json};

/// No run may take longer than this, whatever the shape asked for.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The pool every pod draws from: room for 1,024 blocks of 64.
const POOL: &str = "10.128.0.0/16";

#[derive(Clone, Copy, Debug)]
struct Shape {
    nodes: usize,
    pods: usize,
    parallel: usize,
}

/// What one plugin's run measured.
struct Outcome {
    figures: Figures,
    addresses: Vec<String>,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |flag: &str, default: usize| -> Result<usize, BoxError> {
        match args.iter().position(|a| a == flag) {
            None => Ok(default),
            Some(i) => {
                let text = args.get(i + 1).ok_or(format!("{flag} needs a number"))?;
                match text.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("{flag} {text:?}: not a positive number").into()),
                }
            }
        }
    };
    let shape = Shape {
        nodes: number("--nodes", 10)?,
        pods: number("--pods", 60)?,
        parallel: number("--parallel", 4)?,
    };
    if shape.nodes * shape.pods > 60_000 {
        return Err("more pods than the benchmark's pool holds (60,000)".into());
    }
    let store = match args.iter().position(|a| a == "--store") {
        None => "both".to_owned(),
        Some(i) => args.get(i + 1).cloned().ok_or("--store needs a value")?,
    };
    if !["etcd", "kubernetes", "both"].contains(&store.as_str()) {
        return Err(format!("--store {store:?}: etcd, kubernetes or both").into());
    }
    let calico = !args.iter().any(|a| a == "--no-calico");
    // The peer first, so that our row can give the ratio.
    let mut plugins = Vec::new();
    if calico {
        let bin = peer_binary("CALICO_IPAM_BIN", "calico-ipam");
        plugins.push(("calico-ipam v3.31", bin, "calico-ipam"));
    }
    plugins.push(("ipam-cni (ours)", plugin::ours()?, "ipam-cni"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{} nodes x {} pods, {} at a time per node, one plugin process per ADD\n",
        shape.nodes, shape.pods, shape.parallel
    );
    println!(
        "| store | plugin | ADDs | total | ADD/s | p50 | p99 | server reads/ADD | \
         server writes/ADD | blocks | duplicates | check | total vs calico-ipam |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    if store != "kubernetes" {
        runtime.block_on(on_etcd(shape, &plugins))?;
    }
    if store != "etcd" {
        runtime.block_on(on_kubernetes(shape, &plugins))?;
    }
    Ok(())
}

/// Each plugin on a fresh etcd of its own.
async fn on_etcd(shape: Shape, plugins: &[(&str, PathBuf, &str)]) -> Result<(), BoxError> {
    let mut totals = Vec::new();
    for (name, bin, ipam_type) in plugins {
        let etcd = LocalEtcd::start()?;
        let admin = EtcdStore::connect(EtcdConfig::new([etcd.endpoint()])).await?;
        let admin = with_pool(admin).await?;
        if *ipam_type == "calico-ipam" {
            seed_calico_etcd(&etcd.endpoint(), shape.nodes).await?;
        }
        let endpoint = etcd.endpoint();
        let conf = |node: &str, lock: &Path| {
            json!({
                "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
                "datastore_type": "etcdv3", "etcd_endpoints": endpoint,
                "nodename": node, "ipam_lock_file": lock,
                "ipam": {"type": ipam_type, "assign_ipv4": "true", "assign_ipv6": "false"},
            })
        };
        let before = etcd.request_counts()?;
        let outcome = tokio::task::block_in_place(|| cluster(bin, shape, &conf))?;
        let calls = etcd.request_counts()?.reads_and_writes_since(&before);
        totals.push(outcome.figures.wall);
        let checked = if *ipam_type == "calico-ipam" {
            check_calico_etcd(&etcd.endpoint()).await?
        } else {
            check_store(admin.store(), outcome.figures.adds).await?
        };
        report("etcd", name, &outcome, calls, &checked, &totals)?;
    }
    Ok(())
}

/// Each plugin on a fresh kube-apiserver of its own, its nodes registered as kubelets would.
async fn on_kubernetes(shape: Shape, plugins: &[(&str, PathBuf, &str)]) -> Result<(), BoxError> {
    let mut totals = Vec::new();
    for (name, bin, ipam_type) in plugins {
        let server = KubeApiServer::start().await;
        server.install_crds().await;
        register_nodes(&server, shape.nodes)?;
        let admin = with_pool(server.store(ADMIN).await).await?;
        let kubeconfig = server.kubeconfig(ADMIN);
        let conf = |node: &str, lock: &Path| {
            json!({
                "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico",
                "datastore_type": "kubernetes", "kubernetes": {"kubeconfig": kubeconfig},
                "nodename": node, "ipam_lock_file": lock,
                "ipam": {"type": ipam_type, "assign_ipv4": "true", "assign_ipv6": "false"},
            })
        };
        let before = server.ipam_request_counts().await;
        let outcome = tokio::task::block_in_place(|| cluster(bin, shape, &conf))?;
        let after = server.ipam_request_counts().await;
        let calls = reads_and_writes(&before, &after);
        totals.push(outcome.figures.wall);
        let checked = check_store(admin.store(), outcome.figures.adds).await?;
        report("kube-apiserver", name, &outcome, calls, &checked, &totals)?;
    }
    Ok(())
}

/// An allocator on `store`, which now holds the benchmark's pool.
async fn with_pool<D: Datastore>(store: D) -> Result<Ipam<D>, BoxError> {
    let mut pool = IpPool::new(POOL.parse()?);
    pool.block_size = 26;
    let admin = Ipam::new(store, SystemClock);
    admin.create_pool("cluster", pool).await?;
    Ok(admin)
}

/// What calico-ipam reads from etcd in its own key layout (ours keeps its objects under
/// another prefix): the pool and the simulated nodes' Node objects, as `calicoctl` writes them.
async fn seed_calico_etcd(endpoint: &str, nodes: usize) -> Result<(), BoxError> {
    const ROOT: &str = "/calico/resources/v3/projectcalico.org";
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let pool = json!({
        "kind": "IPPool", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "cluster"},
        "spec": {"cidr": POOL, "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never",
                 "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"]},
    });
    client
        .put(format!("{ROOT}/ippools/cluster"), pool.to_string(), None)
        .await?;
    for n in 0..nodes {
        let node = json!({
            "kind": "Node", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": node_name(n)}, "spec": {},
        });
        client
            .put(
                format!("{ROOT}/nodes/{}", node_name(n)),
                node.to_string(),
                None,
            )
            .await?;
    }
    Ok(())
}

/// The simulated nodes' Node objects, which calico-ipam reads.
fn register_nodes(server: &KubeApiServer, nodes: usize) -> Result<(), BoxError> {
    let items: Vec<Value> = (0..nodes)
        .map(|n| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name(n)}}))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), list.to_string())?;
    let mut create = server.kubectl(ADMIN);
    create.args(["create", "-f"]).arg(file.path());
    let out = create.output()?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(format!("kubectl create nodes: {said}").into());
    }
    Ok(())
}

fn node_name(n: usize) -> String {
    format!("node-{n:02}")
}

/// Every node's pods, `parallel` at a time on each node, all nodes at once; fails at the
/// first refused ADD or when the run passes [`RUN_LIMIT`].
fn cluster(
    bin: &Path,
    shape: Shape,
    conf: &(dyn Fn(&str, &Path) -> Value + Sync),
) -> Result<Outcome, BoxError> {
    let locks = tempfile::tempdir()?;
    let results = Mutex::new((Vec::new(), Vec::new()));
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let started = Instant::now();
    let nodes: Vec<(String, Value)> = (0..shape.nodes)
        .map(|n| {
            let node = node_name(n);
            let conf = conf(&node, &locks.path().join(&node).join("ipam.lock"));
            (node, conf)
        })
        .collect();
    std::thread::scope(|scope| {
        for (node, conf) in &nodes {
            for worker in 0..shape.parallel {
                let (results, first_error) = (&results, &first_error);
                scope.spawn(move || {
                    for pod in (worker..shape.pods).step_by(shape.parallel) {
                        let stop = first_error.lock().map_or(true, |e| e.is_some());
                        if stop || started.elapsed() > RUN_LIMIT {
                            return;
                        }
                        let t = Instant::now();
                        let id = format!("{node}-pod-{pod:04}");
                        match plugin::call(bin, "ADD", &id, conf) {
                            Ok(result) => {
                                let latency = t.elapsed();
                                if let Ok(mut r) = results.lock() {
                                    r.0.push(latency);
                                    r.1.extend(plugin::addresses(&result));
                                }
                            }
                            Err(e) => {
                                if let Ok(mut first) = first_error.lock() {
                                    first.get_or_insert(e.to_string());
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    let wall = started.elapsed();
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e.into());
    }
    let (latencies, addresses) = results.into_inner().map_err(|_| "a worker panicked")?;
    if latencies.len() != shape.nodes * shape.pods {
        return Err(format!(
            "{} of {} ADDs done within {RUN_LIMIT:?}",
            latencies.len(),
            shape.nodes * shape.pods
        )
        .into());
    }
    Ok(Outcome {
        figures: Figures {
            adds: latencies.len(),
            wall,
            latencies,
            ops: OpCounts::default(),
        },
        addresses,
    })
}

/// What the end-of-run check of a store found.
struct Checked {
    blocks: usize,
    verdict: String,
    clean: bool,
}

/// The allocator's consistency check over the whole store: clean, one allocation per ADD.
async fn check_store<D: Datastore>(admin: &D, adds: usize) -> Result<Checked, BoxError> {
    let snapshot = Snapshot::read(admin).await?;
    let checked = check(&snapshot, &Live::default(), time::OffsetDateTime::now_utc());
    let clean = checked.is_clean() && checked.totals.allocations == adds;
    let verdict = if clean {
        "clean".to_owned()
    } else {
        format!(
            "{} findings, {} allocations",
            checked.findings.len(),
            checked.totals.allocations
        )
    };
    Ok(Checked {
        blocks: checked.totals.blocks,
        verdict,
        clean,
    })
}

/// calico-ipam's blocks on etcd, counted in its key layout, which our checker does not read:
/// its run is checked by its addresses alone.
async fn check_calico_etcd(endpoint: &str) -> Result<Checked, BoxError> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let blocks = client
        .get("/calico/ipam/v2/assignment/ipv4/block/", Some(options))
        .await?
        .count();
    Ok(Checked {
        blocks: usize::try_from(blocks).unwrap_or(0),
        verdict: "addresses only".to_owned(),
        clean: true,
    })
}

/// One row; an error if the run gave an address twice, or one per ADD not, or its check failed.
fn report(
    store: &str,
    plugin: &str,
    outcome: &Outcome,
    (reads, writes): (u64, u64),
    checked: &Checked,
    totals: &[Duration],
) -> Result<(), BoxError> {
    let f = &outcome.figures;
    let distinct: BTreeSet<&String> = outcome.addresses.iter().collect();
    let duplicates = outcome.addresses.len() - distinct.len();
    let per = |n: u64| n as f64 / f.adds.max(1) as f64;
    let ratio = f.wall.as_secs_f64() / totals[0].as_secs_f64();
    println!(
        "| {store} | {plugin} | {} | {:.1} s | {:.0} | {:.1} ms | {:.1} ms | {:.2} | {:.2} | {} \
         | {duplicates} | {} | {} |",
        f.adds,
        f.wall.as_secs_f64(),
        f.rate(),
        ms(f.quantile(0.5)),
        ms(f.quantile(0.99)),
        per(reads),
        per(writes),
        checked.blocks,
        checked.verdict,
        if totals.len() == 1 {
            "-".to_owned()
        } else {
            format!("{ratio:.2}x")
        },
    );
    if duplicates > 0 || !checked.clean || outcome.addresses.len() != f.adds {
        return Err(format!(
            "{plugin} on {store}: {duplicates} duplicate addresses, {} addresses for {} ADDs, \
             check: {}",
            outcome.addresses.len(),
            f.adds,
            checked.verdict
        )
        .into());
    }
    Ok(())
}
