//! Allocators running at once on a network datastore (etcd, a kube-apiserver): steady-state
//! ADDs with `c` allocators on `c` nodes, a block-claim storm, and the figures both report.
//! The datastore benchmarks (`etcd-bench`, `kube-bench`) share these so that their numbers
//! mean the same thing.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam_core::{AutoAssignArgs, Datastore, HandleId, Ipam, NodeName, OpCounts};

/// Any error of a benchmark run.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one scenario measured.
pub struct Figures {
    /// ADDs timed.
    pub adds: usize,
    /// Wall time of the scenario.
    pub wall: Duration,
    /// Each ADD's latency.
    pub latencies: Vec<Duration>,
    /// Datastore round trips, summed over the allocators.
    pub ops: OpCounts,
}

impl Figures {
    /// ADDs per second of wall time.
    pub fn rate(&self) -> f64 {
        self.adds as f64 / self.wall.as_secs_f64()
    }

    /// The `q` quantile of the latencies (0.5: the median).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut lat = self.latencies.clone();
        lat.sort();
        lat.get(((lat.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    /// The mean latency.
    pub fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32
    }

    /// Client-counted reads and writes per ADD.
    pub fn per_add(&self) -> (f64, f64) {
        let per = |n: u64| n as f64 / self.adds.max(1) as f64;
        (per(self.ops.reads()), per(self.ops.writes()))
    }
}

/// `c` allocators, each on its own node with its own store from `make`, each doing one
/// warm-up ADD (the block claim) and then `each` timed ADDs at once.
pub async fn steady<D, F, Fut>(make: F, c: usize, each: usize) -> Result<Figures, BoxError>
where
    D: Datastore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<D, BoxError>>,
{
    let nothing = || async { Ok(()) };
    Ok(steady_observed(make, c, each, nothing).await?.0)
}

/// [`steady`], calling `observe` just before and just after the timed ADDs (to read a
/// server's own counters, say); returns the figures and both observations.
pub async fn steady_observed<D, F, Fut, O, OFut, T>(
    make: F,
    c: usize,
    each: usize,
    mut observe: O,
) -> Result<(Figures, T, T), BoxError>
where
    D: Datastore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<D, BoxError>>,
    O: FnMut() -> OFut,
    OFut: Future<Output = Result<T, BoxError>>,
{
    let mut allocators = Vec::with_capacity(c);
    for i in 0..c {
        let ipam = Ipam::new(make().await?, ipam_core::SystemClock);
        let node = NodeName::new(format!("node-{i}"))?;
        add(&ipam, &node, "warm").await?;
        allocators.push((Arc::new(ipam), node));
    }
    let before: Vec<OpCounts> = allocators
        .iter()
        .map(|(a, _)| a.store().op_counts())
        .collect();
    let first = observe().await?;
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
    let last = observe().await?;
    let ops = allocators
        .iter()
        .zip(&before)
        .fold(OpCounts::default(), |sum, ((a, _), b)| {
            add_counts(sum, a.store().op_counts().since(b))
        });
    let figures = Figures {
        adds: latencies.len(),
        wall,
        latencies,
        ops,
    };
    Ok((figures, first, last))
}

/// `n` nodes named `<node_prefix>-<i>`, each with its own store from `make`, doing their
/// first ADD (a block claim) at once.
pub async fn storm<D, F, Fut>(make: F, n: usize, node_prefix: &str) -> Result<Figures, BoxError>
where
    D: Datastore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<D, BoxError>>,
{
    let mut allocators = Vec::with_capacity(n);
    for _ in 0..n {
        allocators.push(Arc::new(Ipam::new(make().await?, ipam_core::SystemClock)));
    }
    let start = Instant::now();
    let tasks: Vec<_> = allocators
        .iter()
        .enumerate()
        .map(|(i, ipam)| {
            let ipam = ipam.clone();
            let node = NodeName::new(format!("{node_prefix}-{i}"));
            tokio::spawn(async move {
                let node = node?;
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
pub async fn add<D: Datastore>(ipam: &Ipam<D>, node: &NodeName, tag: &str) -> Result<(), BoxError> {
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

/// Milliseconds, for tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
