//! Benchmark of `Ipam<EtcdStore>` on a real etcd: steady-state ADD throughput and latency with
//! 1, 8 and 64 concurrent allocators on different nodes, a block-claim storm, datastore round
//! trips per allocation, and a raw etcd put as the peer, all in the same run.
//!
//! Usage: `etcd-bench [--endpoint URL] [--quick]`. Without `--endpoint` it starts its own etcd
//! (Debian's `etcd-server`, on loopback, data in memory). `--quick` runs a tenth of the work.

use std::time::{Duration, Instant};

use etcd_client::Client;
use ipam_benches::concurrent::{BoxError, Figures, ms, steady, storm};
use ipam_core::{IpPool, Ipam};
use ipam_etcd::{EtcdConfig, EtcdStore};
use ipam_tests::etcd_server::LocalEtcd;

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
        let prefix = format!("/bench/steady-{c}/");
        fresh_pool(endpoint, &prefix).await?;
        let f = steady(|| store(endpoint, &prefix), c, (each / scale).max(2)).await?;
        row(&format!("steady ADD, {c} allocators"), &f, put);
    }
    let prefix = "/bench/storm/";
    fresh_pool(endpoint, prefix).await?;
    let f = storm(|| store(endpoint, prefix), 64, "storm").await?;
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

fn row(name: &str, f: &Figures, put: Duration) {
    let (reads, writes) = f.per_add();
    println!(
        "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {reads:.2} | {writes:.2} | {:.1} |",
        f.adds,
        f.rate(),
        ms(f.mean()),
        ms(f.quantile(0.5)),
        ms(f.quantile(0.99)),
        f.mean().as_secs_f64() / put.as_secs_f64()
    );
}
