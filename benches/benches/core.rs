//! The allocator against `MemoryStore`: steady-state auto_assign and release on a node that
//! owns a non-full block, and the claim of a fresh block, in a /16 and a /8 pool.
//!
//! Both pools use /24 blocks (256 and 65,536 of them) and are three quarters full of other
//! nodes' blocks, so that any per-allocation walk over the cluster's blocks shows as a gap
//! between the two figures. A failed setup or operation aborts the run: there would be
//! nothing meaningful left to measure.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipam_benches::{
    Held, OpsPer, add_pool, assign_one, count_ops, fill_pool, handles, release_handle, release_ip,
    warm_node,
};
use ipam_core::{Datastore, HandleId, Ipam, MemoryStore, NodeName, OpCounts};
use ipnet::IpNet;
use pollster::block_on;

/// Addresses held at once in the batched benchmarks; well under a /24 block's 256.
const BATCH: usize = 128;

/// Share of each pool's blocks owned by other nodes before measuring.
const FILL_NUM: u32 = 3;
const FILL_DEN: u32 = 4;

/// Blocks each other node owns while filling (so a /8 has 4,096 other nodes).
const BLOCKS_PER_OTHER_NODE: u32 = 12;

/// One pool under test.
struct Setup {
    label: &'static str,
    ipam: Ipam<MemoryStore>,
    node: NodeName,
    handles: Vec<HandleId>,
}

fn setup(label: &'static str, cidr: &str) -> Setup {
    let cidr: IpNet = cidr.parse().expect("benchmark pool CIDR is valid");
    let ipam = Ipam::new(MemoryStore::new(), ipam_core::SystemClock);
    let total = ipam_core::cidr::blocks_in_pool(&cidr, ipam_benches::BLOCK_SIZE) as u32;
    let blocks = total / FILL_DEN * FILL_NUM;
    let started = Instant::now();
    let node = block_on(async {
        add_pool(&ipam, cidr).await?;
        fill_pool(ipam.store(), cidr, blocks, blocks / BLOCKS_PER_OTHER_NODE).await?;
        warm_node(&ipam).await
    })
    .expect("benchmark setup");
    eprintln!(
        "[{label}] pool {cidr}: {total} blocks, {blocks} owned by {} other nodes (setup {:.1?})",
        blocks / BLOCKS_PER_OTHER_NODE,
        started.elapsed()
    );
    Setup {
        label,
        ipam,
        node,
        handles: handles("steady", BATCH).expect("benchmark handles are valid"),
    }
}

fn report(label: &str, what: &str, ops: OpsPer) {
    eprintln!("[{label}] datastore {what}: {ops}");
}

/// Prints round trips per operation for the steady state, outside any timing.
fn report_ops(s: &Setup) {
    let (ipam, node) = (&s.ipam, &s.node);
    let h = &s.handles[0];
    let mut held: Option<Held> = None;
    let assign = block_on(count_ops(ipam.store(), 1, async |_| {
        held = Some(assign_one(ipam, node, h).await?);
        Ok(())
    }))
    .expect("counting auto_assign");
    let held = held.expect("auto_assign returned an address");
    let release = block_on(count_ops(ipam.store(), 1, async |_| {
        release_handle(ipam, &held).await
    }))
    .expect("counting release_by_handle");
    let pair = block_on(count_ops(ipam.store(), 1000, async |_| {
        let held = assign_one(ipam, node, h).await?;
        release_ip(ipam, &held).await
    }))
    .expect("counting assign + release_ips");
    report(s.label, "per auto_assign (node owns a block)", assign);
    report(s.label, "per release_by_handle", release);
    report(s.label, "per auto_assign + release_ips pair", pair);
}

fn batched(
    s: &Setup,
    iters: u64,
    assign_timed: bool,
    release: impl Fn(&Ipam<MemoryStore>, &Held) -> ipam_benches::Result<()>,
) -> Duration {
    ipam_benches::batched(&s.ipam, &s.node, &s.handles, iters, assign_timed, release)
        .expect("steady-state batch")
}

/// auto_assign on a node with no block: claims a fresh block of the pool, then assigns.
/// Each iteration uses a new node and returns the block afterwards (untimed).
fn claim_iterations(
    s: &Setup,
    iters: u64,
    next: &mut u64,
    ops: &mut OpCounts,
    each: &mut Vec<Duration>,
) -> Duration {
    let mut total = Duration::ZERO;
    let handle = HandleId::new("bench.claim").expect("valid handle");
    for _ in 0..iters {
        let node = NodeName::new(format!("claimer-{next}")).expect("valid node name");
        *next += 1;
        let before = s.ipam.store().op_counts();
        let t = Instant::now();
        let held = block_on(assign_one(&s.ipam, &node, &handle)).expect("claiming auto_assign");
        let took = t.elapsed();
        total += took;
        each.push(took);
        let spent = s.ipam.store().op_counts().since(&before);
        add_counts(ops, &spent);
        block_on(async {
            release_handle(&s.ipam, &held).await?;
            s.ipam.remove_host(&node).await?;
            Ok::<_, ipam_benches::Error>(())
        })
        .expect("returning the claimed block");
    }
    total
}

/// Criterion's figures are means of batches; a claim's cost is skewed (most are quick, a few
/// walk the pool), so the spread of single claims is printed too.
fn report_spread(label: &str, each: &mut [Duration]) {
    each.sort();
    let n = each.len();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let median = us(each[n / 2]);
    let mean = each.iter().map(|d| us(*d)).sum::<f64>() / n as f64;
    println!(
        "core/claim_block/{label}: {n} claims, median {median:.1} us, mean {mean:.1} us \
         (mean/median {:.2}x), p99 {:.1} us, max {:.1} us",
        mean / median,
        us(each[(n * 99 / 100).min(n - 1)]),
        us(each[n - 1])
    );
}

fn add_counts(into: &mut OpCounts, c: &OpCounts) {
    into.gets += c.gets;
    into.lists += c.lists;
    into.creates += c.creates;
    into.updates += c.updates;
    into.deletes += c.deletes;
}

fn bench_pool(c: &mut Criterion, label: &'static str, cidr: &str) {
    let s = setup(label, cidr);
    report_ops(&s);
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("auto_assign", label), |b| {
        b.iter_custom(|iters| batched(&s, iters, true, |i, h| block_on(release_handle(i, h))));
    });
    group.bench_function(BenchmarkId::new("release_by_handle", label), |b| {
        b.iter_custom(|iters| batched(&s, iters, false, |i, h| block_on(release_handle(i, h))));
    });
    group.bench_function(BenchmarkId::new("release_ips", label), |b| {
        b.iter_custom(|iters| batched(&s, iters, false, |i, h| block_on(release_ip(i, h))));
    });
    group.bench_function(BenchmarkId::new("assign_release_pair", label), |b| {
        let h = &s.handles[0];
        b.iter(|| {
            let held = block_on(assign_one(&s.ipam, &s.node, h)).expect("auto_assign");
            block_on(release_handle(&s.ipam, black_box(&held))).expect("release_by_handle");
        });
    });
    let mut next = 0u64;
    let mut ops = OpCounts::default();
    let mut each = Vec::new();
    group.bench_function(BenchmarkId::new("claim_block", label), |b| {
        b.iter_custom(|iters| claim_iterations(&s, iters, &mut next, &mut ops, &mut each));
    });
    group.finish();
    if next == 0 {
        return;
    }
    report_spread(label, &mut each);
    report(
        label,
        "per auto_assign that claims a block",
        OpsPer {
            operations: next,
            counts: ops,
        },
    );
}

fn core(c: &mut Criterion) {
    bench_pool(c, "pool_16", "10.0.0.0/16");
    bench_pool(c, "pool_8", "10.0.0.0/8");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = core
}
criterion_main!(benches);
