//! The allocator through `SqliteStore`: steady-state auto_assign and release on a node that
//! owns a block, from one process and from 8 processes sharing one file, beside the floor of
//! a raw one-row durable commit on the same disk with the same pragmas.
//!
//! Databases live in `$IPAM_BENCH_DIR` (default: the target directory's `tmp/ipam-bench`),
//! all on one file system, and are recreated at the start of a run. The ratios to the floor
//! are printed at the end, from the same run. A failed setup or operation aborts the run.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_benches::sqlite::{RawCommit, WorkerReport, remove_db};
use ipam_benches::{
    Held, OpsPer, add_pool, assign_one, batched, count_ops, handles, release_handle, warm_node,
};
use ipam_core::{Ipam, OpCounts};
use ipam_sqlite::SqliteStore;
use pollster::block_on;

/// Addresses held at once in the batched benchmarks.
const BATCH: usize = 32;

/// Processes sharing one database in the multi-process benchmark.
const PROCESSES: u64 = 8;

/// Time the workers get to start, open the file and warm up before their loops begin.
const WORKER_HEAD_START: Duration = Duration::from_millis(700);

/// Total time and iterations measured for one benchmark (warm-up included), for the ratios.
#[derive(Default)]
struct Tally {
    time: Cell<Duration>,
    iters: Cell<u64>,
}

/// Kills and reaps worker processes still running when the benchmark unwinds.
struct Workers(Vec<Child>);

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("IPAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ipam-bench"));
    std::fs::create_dir_all(&dir).expect("creating the benchmark directory");
    dir
}

fn fresh_store(path: &Path) -> Ipam<SqliteStore> {
    remove_db(path).expect("removing an earlier benchmark database");
    let ipam = Ipam::new(
        SqliteStore::open(path).expect("opening the benchmark database"),
        ipam_core::SystemClock,
    );
    let pool = "10.0.0.0/16".parse().expect("valid pool CIDR");
    block_on(add_pool(&ipam, pool)).expect("creating the pool");
    ipam
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Tally {
    fn add(&self, d: Duration, iters: u64) -> Duration {
        self.time.set(self.time.get() + d);
        self.iters.set(self.iters.get() + iters);
        d
    }

    fn mean(&self) -> Duration {
        self.time.get() / u32::try_from(self.iters.get().max(1)).unwrap_or(u32::MAX)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `iters` cycles spread over [`PROCESSES`] workers; returns the wall time from the
/// first worker's start to the last one's end, and adds the workers' round trips to `ops`.
fn run_workers(db: &Path, iters: u64, ops: &mut OpsPer) -> Duration {
    let per = iters.div_ceil(PROCESSES);
    let start_at = now_ns() + WORKER_HEAD_START.as_nanos();
    let mut workers = Workers(Vec::new());
    for i in 0..PROCESSES {
        let child = Command::new(env!("CARGO_BIN_EXE_sqlite-worker"))
            .arg(db)
            .arg(format!("worker-{i}"))
            .arg(per.to_string())
            .arg(start_at.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting sqlite-worker");
        workers.0.push(child);
    }
    let mut reports = Vec::new();
    for child in std::mem::take(&mut workers.0) {
        let out = child.wait_with_output().expect("waiting for sqlite-worker");
        assert!(out.status.success(), "sqlite-worker failed: {}", out.status);
        let line = String::from_utf8_lossy(&out.stdout);
        reports.push(line.trim().parse::<WorkerReport>().expect("worker report"));
    }
    let first = reports.iter().map(|r| r.start_ns).min().unwrap_or(0);
    let last = reports.iter().map(|r| r.end_ns).max().unwrap_or(0);
    for r in &reports {
        ops.operations += r.cycles;
        add_counts(&mut ops.counts, &r.ops);
    }
    Duration::from_nanos(u64::try_from(last.saturating_sub(first)).unwrap_or(u64::MAX))
}

fn add_counts(into: &mut OpCounts, c: &OpCounts) {
    into.gets += c.gets;
    into.lists += c.lists;
    into.creates += c.creates;
    into.updates += c.updates;
    into.deletes += c.deletes;
}

fn report_ops(ipam: &Ipam<SqliteStore>, node: &ipam_core::NodeName) {
    let h = handles("ops", 1).expect("valid handle");
    let mut held: Option<Held> = None;
    let assign = block_on(count_ops(ipam.store(), 1, async |_| {
        held = Some(assign_one(ipam, node, &h[0]).await?);
        Ok(())
    }))
    .expect("counting auto_assign");
    let held = held.expect("auto_assign returned an address");
    let release = block_on(count_ops(ipam.store(), 1, async |_| {
        release_handle(ipam, &held).await
    }))
    .expect("counting release_by_handle");
    eprintln!("[sqlite] datastore per auto_assign (node owns a block): {assign}");
    eprintln!("[sqlite] datastore per release_by_handle: {release}");
}

fn sqlite(c: &mut Criterion) {
    let dir = bench_dir();
    eprintln!("[sqlite] databases in {}", dir.display());
    let [floor, assign, release, pair, multi] = <[Tally; 5]>::default();
    let mut group = c.benchmark_group("sqlite");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);

    let raw_path = dir.join("floor.db");
    remove_db(&raw_path).expect("removing an earlier floor database");
    let mut raw = RawCommit::open(&raw_path).expect("opening the floor database");
    group.bench_function("raw_commit_floor", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                raw.commit_one().expect("raw commit");
            }
            floor.add(t.elapsed(), iters)
        });
    });

    let ipam = fresh_store(&dir.join("single.db"));
    let node = block_on(warm_node(&ipam)).expect("warming the node");
    report_ops(&ipam, &node);
    let hs = handles("steady", BATCH).expect("valid handles");
    let by_handle = |i: &Ipam<SqliteStore>, h: &Held| block_on(release_handle(i, h));
    group.bench_function("auto_assign_1proc", |b| {
        b.iter_custom(|iters| {
            let d = batched(&ipam, &node, &hs, iters, true, by_handle).expect("batch");
            assign.add(d, iters)
        });
    });
    group.bench_function("release_by_handle_1proc", |b| {
        b.iter_custom(|iters| {
            let d = batched(&ipam, &node, &hs, iters, false, by_handle).expect("batch");
            release.add(d, iters)
        });
    });
    group.bench_function("assign_release_1proc", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let held = block_on(assign_one(&ipam, &node, &hs[0])).expect("auto_assign");
                block_on(release_handle(&ipam, &held)).expect("release_by_handle");
            }
            pair.add(t.elapsed(), iters)
        });
    });

    let multi_db = dir.join("multi.db");
    drop(fresh_store(&multi_db));
    let mut multi_ops = OpsPer::default();
    group.bench_function("assign_release_8proc", |b| {
        b.iter_custom(|iters| multi.add(run_workers(&multi_db, iters, &mut multi_ops), iters));
    });
    group.finish();

    let f = floor.mean();
    eprintln!("[sqlite] floor: one durable one-row commit = {f:.1?}");
    for (name, t) in [
        ("auto_assign, 1 process", &assign),
        ("release_by_handle, 1 process", &release),
        ("auto_assign + release_by_handle, 1 process", &pair),
        (
            "auto_assign + release_by_handle, 8 processes (aggregate)",
            &multi,
        ),
    ] {
        // A filtered run may have measured only some of them.
        if t.iters.get() == 0 || floor.iters.get() == 0 {
            continue;
        }
        let ratio = t.mean().as_secs_f64() / f.as_secs_f64();
        eprintln!(
            "[sqlite] {name}: {:.2?} per op = {ratio:.2}x the floor",
            t.mean()
        );
    }
    if multi_ops.operations > 0 {
        eprintln!("[sqlite] datastore per cycle, 8 processes: {multi_ops}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = sqlite
}
criterion_main!(benches);
