//! Helpers shared by the benchmarks: building an allocator with a pool, filling a pool with
//! other nodes' blocks, and counting datastore round trips per operation.
//!
//! The benchmarks drive the async API with `pollster`: `MemoryStore` never waits, and the
//! SQLite store blocks inside its calls, so an executor would only add its own overhead.

pub mod concurrent;
pub mod plugin;
pub mod sqlite;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipam_core::cidr::nth_block;
use ipam_core::names::affinity_name;
use ipam_core::{
    AffinityState, AutoAssignArgs, BlockAffinity, Datastore, HandleId, IpPool, Ipam, IpamBlock,
    NodeName, OpCounts, ReleaseRequest,
};
use ipnet::IpNet;

/// Errors of the benchmark helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The allocator refused an operation the benchmark relies on.
    #[error("allocator: {0}")]
    Ipam(#[from] ipam_core::Error),
    /// The datastore refused a write made while filling a pool.
    #[error("datastore: {0}")]
    Store(#[from] ipam_core::StoreError),
    /// An allocation returned no address although one was asked for.
    #[error("auto_assign returned no IPv4 address")]
    NoAddress,
    /// The SQLite store could not be opened.
    #[error("opening the SQLite store: {0}")]
    Open(#[from] ipam_sqlite::Error),
    /// A raw SQLite statement of the floor benchmark failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The floor's database did not switch to WAL, so it would not match the store.
    #[error("the benchmark database is in journal mode {mode}, not WAL")]
    NotWal {
        /// The mode SQLite reported.
        mode: String,
    },
}

/// Results of the benchmark helpers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The block size every benchmark pool uses: a /8 then holds 65,536 blocks.
pub const BLOCK_SIZE: u8 = 24;

/// The node whose steady state the benchmarks measure.
pub const BENCH_NODE: &str = "bench-node";

/// Datastore round trips per operation, averaged over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpsPer {
    /// Operations the average is over.
    pub operations: u64,
    /// The round trips of all of them.
    pub counts: OpCounts,
}

/// One allocation's worth of work for [`BENCH_NODE`]: an address and its handle.
#[derive(Clone, Debug)]
pub struct Held {
    /// The address handed out.
    pub ip: IpAddr,
    /// Its owner.
    pub handle: HandleId,
}

/// Creates the pool `default-ipv4-ippool` of `cidr` with [`BLOCK_SIZE`] blocks.
pub async fn add_pool<D: Datastore>(ipam: &Ipam<D>, cidr: IpNet) -> Result<()> {
    let mut pool = IpPool::new(cidr);
    pool.block_size = BLOCK_SIZE;
    ipam.create_pool("default-ipv4-ippool", pool).await?;
    Ok(())
}

/// Writes `blocks` confirmed, empty blocks of `pool` owned round-robin by `nodes` other
/// nodes, spread over the pool by a fixed odd stride so they are not all at its start.
/// Objects are written directly, as a long-running cluster would have left them.
pub async fn fill_pool<D: Datastore>(
    store: &D,
    pool: IpNet,
    blocks: u32,
    nodes: u32,
) -> Result<()> {
    let total = ipam_core::cidr::blocks_in_pool(&pool, BLOCK_SIZE);
    // An odd stride visits every block of a power-of-two pool once before repeating.
    let stride = (40_503u128 % total) | 1;
    for i in 0..u128::from(blocks) {
        let cidr = nth_block(&pool, BLOCK_SIZE, (i * stride) % total)?;
        let node = NodeName::new(format!("other-{:05}", i % u128::from(nodes.max(1))))?;
        let affinity = BlockAffinity {
            cidr: cidr.net(),
            node: node.to_string(),
            state: AffinityState::Confirmed,
            affinity_type: Some("host".into()),
            deleted: false,
            extra: Default::default(),
        };
        store
            .create(&affinity_name(node.as_str(), &cidr), affinity)
            .await?;
        let seq = 1_000_000 + i as u64;
        let block = IpamBlock::new(cidr, Some(node.host_affinity()), seq, None);
        store.create(&cidr.name(), block).await?;
    }
    Ok(())
}

/// Assigns one IPv4 address to `handle` on `node`.
pub async fn assign_one<D: Datastore>(
    ipam: &Ipam<D>,
    node: &NodeName,
    handle: &HandleId,
) -> Result<Held> {
    let args = AutoAssignArgs::new(node.clone(), 1, 0).with_handle(handle.clone());
    let got = ipam.auto_assign(&args).await?;
    let net = got.ipv4.first().ok_or(Error::NoAddress)?;
    Ok(Held {
        ip: net.addr(),
        handle: handle.clone(),
    })
}

/// Releases one address by address (what `release_ips` costs for a single address).
pub async fn release_ip<D: Datastore>(ipam: &Ipam<D>, held: &Held) -> Result<()> {
    ipam.release_ips(&[ReleaseRequest::new(held.ip)]).await?;
    Ok(())
}

/// Releases one address through its handle (the CNI DEL path).
pub async fn release_handle<D: Datastore>(ipam: &Ipam<D>, held: &Held) -> Result<()> {
    ipam.release_by_handle(&held.handle).await?;
    Ok(())
}

/// `n` distinct handles `bench.<prefix>.<i>`.
pub fn handles(prefix: &str, n: usize) -> Result<Vec<HandleId>> {
    (0..n)
        .map(|i| Ok(HandleId::new(format!("bench.{prefix}.{i}"))?))
        .collect()
}

/// The node [`BENCH_NODE`], after claiming its first block and keeping one address in it,
/// so that the steady state never empties or releases the block.
pub async fn warm_node<D: Datastore>(ipam: &Ipam<D>) -> Result<NodeName> {
    let node = NodeName::new(BENCH_NODE)?;
    assign_one(ipam, &node, &HandleId::new("bench.keep")?).await?;
    Ok(node)
}

/// Times `iters` allocations on `node` in batches of `handles.len()` addresses held at
/// once, each batch then released with `release`. With `assign_timed` only the assignments
/// are timed, otherwise only the releases; the other half keeps the node's block from
/// filling or emptying, so every timed operation sees the same steady state.
pub fn batched<D: Datastore>(
    ipam: &Ipam<D>,
    node: &NodeName,
    handles: &[HandleId],
    iters: u64,
    assign_timed: bool,
    release: impl Fn(&Ipam<D>, &Held) -> Result<()>,
) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut held = Vec::with_capacity(handles.len());
    while left > 0 {
        let k = left.min(handles.len().max(1) as u64) as usize;
        let t = Instant::now();
        for h in &handles[..k] {
            held.push(pollster::block_on(assign_one(ipam, node, h))?);
        }
        if assign_timed {
            total += t.elapsed();
        }
        let t = Instant::now();
        for h in held.drain(..) {
            release(ipam, std::hint::black_box(&h))?;
        }
        if !assign_timed {
            total += t.elapsed();
        }
        left -= k as u64;
    }
    Ok(total)
}

/// Counts the round trips of `n` runs of `op` on `store`.
pub async fn count_ops<D: Datastore, F: AsyncFnMut(u64) -> Result<()>>(
    store: &D,
    n: u64,
    mut op: F,
) -> Result<OpsPer> {
    let before = store.op_counts();
    for i in 0..n {
        op(i).await?;
    }
    Ok(OpsPer {
        operations: n,
        counts: store.op_counts().since(&before),
    })
}

impl OpsPer {
    /// Round trips per operation.
    pub fn per_op(&self) -> f64 {
        let total = self.counts.reads() + self.counts.writes();
        total as f64 / self.operations.max(1) as f64
    }
}

impl fmt::Display for OpsPer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.operations.max(1) as f64;
        let c = &self.counts;
        write!(
            f,
            "{:.2} round trips/op (gets {:.2}, lists {:.2}, creates {:.2}, updates {:.2}, deletes {:.2}; reads {:.2}, writes {:.2})",
            self.per_op(),
            c.gets as f64 / n,
            c.lists as f64 / n,
            c.creates as f64 / n,
            c.updates as f64 / n,
            c.deletes as f64 / n,
            c.reads() as f64 / n,
            c.writes() as f64 / n,
        )
    }
}
