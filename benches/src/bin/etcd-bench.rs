//! Benchmark of `Ipam<EtcdStore>` on a real etcd: steady-state ADD throughput and latency with
//! 1, 8 and 64 concurrent allocators on different nodes, a block-claim storm, datastore round
//! trips per allocation, and a raw etcd put as the peer, all in the same run.
//!
//! Usage: `etcd-bench [--endpoint URL] [--quick]`. Without `--endpoint` it starts its own etcd
//! (Debian's `etcd-server`, on loopback, data in memory). `--quick` runs a tenth of the work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use ipam_core::{AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, NodeName, OpCounts};
use ipam_etcd::{EtcdConfig, EtcdStore};
use ipam_tests::etcd_server::LocalEtcd;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one scenario measured.
struct Figures {
    adds: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    ops: OpCounts,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let endpoint = args
        .iter()
        .position(|a| a == "--endpoint")
        .and_then(|i| args.get(i + 1).cloned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _server;
    let endpoint = match endpoint {
        Some(e) => e,
        None => {
            let s = LocalEtcd::start()?;
            let e = s.endpoint();
            _server = s;
            e
        }
    };
    runtime.block_on(run(&endpoint, quick))
}

async fn run(endpoint: &str, quick: bool) -> Result<(), BoxError> {
    let scale = if quick { 10 } else { 1 };
    let put = raw_put(endpoint, 1000 / scale).await?;
    println!("etcd at {endpoint}; raw put (one round trip): mean {put:?}\n");
    println!(
        "| scenario | ADDs | ADD/s | mean | p50 | p99 | reads/ADD | writes/ADD | mean / raw put |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, each) in [(1usize, 250usize), (8, 100), (64, 20)] {
        let f = steady(endpoint, c, (each / scale).max(2)).await?;
        row(&format!("steady ADD, {c} allocators"), &f, put);
    }
    let f = storm(endpoint, 64).await?;
    row("block-claim storm, 64 nodes", &f, put);
    Ok(())
}

/// Mean latency of `n` sequential puts of a small value.
async fn raw_put(endpoint: &str, n: usize) -> Result<Duration, BoxError> {
    let mut client = Client::connect([endpoint], None).await?;
    let start = Instant::now();
    for i in 0..n {
        client.put("/bench/raw", format!("value-{i}"), None).await?;
    }
    Ok(start.elapsed() / n as u32)
}

async fn store(endpoint: &str, prefix: &str) -> Result<EtcdStore, BoxError> {
    let config = EtcdConfig::new([endpoint]).with_prefix(prefix);
    Ok(EtcdStore::connect(config).await?)
}

/// A fresh prefix with one /8 pool of /24 blocks (256 addresses: no allocator fills one).
async fn fresh_pool(endpoint: &str, prefix: &str) -> Result<(), BoxError> {
    let ipam = Ipam::new(store(endpoint, prefix).await?, ipam_core::SystemClock);
    let mut pool = IpPool::new("10.0.0.0/8".parse()?);
    pool.block_size = 24;
    ipam.create_pool("bench", pool).await?;
    Ok(())
}

/// `c` allocators, each on its own node with its own client, each doing one warm-up ADD (the
/// block claim) and then `each` timed ADDs.
async fn steady(endpoint: &str, c: usize, each: usize) -> Result<Figures, BoxError> {
    let prefix = format!("/bench/steady-{c}/");
    fresh_pool(endpoint, &prefix).await?;
    let mut allocators = Vec::with_capacity(c);
    for i in 0..c {
        let ipam = Ipam::new(store(endpoint, &prefix).await?, ipam_core::SystemClock);
        let node = NodeName::new(format!("node-{i}"))?;
        add(&ipam, &node, "warm").await?;
        allocators.push((Arc::new(ipam), node));
    }
    let before: Vec<OpCounts> = allocators
        .iter()
        .map(|(a, _)| a.store().op_counts())
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = allocators
        .iter()
        .map(|(ipam, node)| {
            let (ipam, node) = (ipam.clone(), node.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(each);
                for k in 0..each {
                    let t = Instant::now();
                    add(&ipam, &node, &k.to_string()).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, BoxError>(lat)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let wall = start.elapsed();
    let ops = allocators
        .iter()
        .zip(&before)
        .fold(OpCounts::default(), |sum, ((a, _), b)| {
            add_counts(sum, a.store().op_counts().since(b))
        });
    Ok(Figures {
        adds: latencies.len(),
        wall,
        latencies,
        ops,
    })
}

/// `n` nodes, each with its own client, doing their first ADD (a block claim) at once.
async fn storm(endpoint: &str, n: usize) -> Result<Figures, BoxError> {
    let prefix = "/bench/storm/";
    fresh_pool(endpoint, prefix).await?;
    let mut allocators = Vec::with_capacity(n);
    for _ in 0..n {
        allocators.push(Arc::new(Ipam::new(
            store(endpoint, prefix).await?,
            ipam_core::SystemClock,
        )));
    }
    let start = Instant::now();
    let tasks: Vec<_> = allocators
        .iter()
        .enumerate()
        .map(|(i, ipam)| {
            let ipam = ipam.clone();
            tokio::spawn(async move {
                let node = NodeName::new(format!("node-{i}"))?;
                let t = Instant::now();
                add(&ipam, &node, "first").await?;
                Ok::<_, BoxError>(t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await??);
    }
    let wall = start.elapsed();
    let ops = allocators.iter().fold(OpCounts::default(), |sum, a| {
        add_counts(sum, a.store().op_counts())
    });
    Ok(Figures {
        adds: n,
        wall,
        latencies,
        ops,
    })
}

/// One ADD of one IPv4 address for `node`, with a handle named after the node and `tag`.
async fn add(ipam: &Ipam<EtcdStore>, node: &NodeName, tag: &str) -> Result<(), BoxError> {
    let handle = HandleId::new(format!("bench.{node}.{tag}"))?;
    let args = AutoAssignArgs::new(node.clone(), 1, 0).with_handle(handle);
    ipam.auto_assign(&args).await?;
    Ok(())
}

fn add_counts(a: OpCounts, b: OpCounts) -> OpCounts {
    OpCounts {
        gets: a.gets + b.gets,
        lists: a.lists + b.lists,
        creates: a.creates + b.creates,
        updates: a.updates + b.updates,
        deletes: a.deletes + b.deletes,
    }
}

fn row(name: &str, f: &Figures, put: Duration) {
    let mut lat = f.latencies.clone();
    lat.sort();
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    let per = |n: u64| n as f64 / f.adds as f64;
    println!(
        "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {:.2} | {:.1} |",
        f.adds,
        f.adds as f64 / f.wall.as_secs_f64(),
        ms(mean),
        ms(pick(0.5)),
        ms(pick(0.99)),
        per(f.ops.reads()),
        per(f.ops.writes()),
        mean.as_secs_f64() / put.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
