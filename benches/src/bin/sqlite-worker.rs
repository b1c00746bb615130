//! One process of the multi-process SQLite benchmark: steady-state auto_assign +
//! release_by_handle cycles for its own node against a shared database file.
//!
//! Usage: `sqlite-worker <db> <node> <cycles> <start-at-ns>`. The worker opens the store,
//! makes sure its node owns a block (keeping one address in it), waits until the wall clock
//! reaches `start-at-ns` (nanoseconds since the Unix epoch) so that every worker's timed loop
//! overlaps, runs `cycles` cycles and prints one [`WorkerReport`] line.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipam_benches::sqlite::WorkerReport;
use ipam_benches::{Error, assign_one, release_handle};
use ipam_core::{Datastore, HandleId, Ipam, NodeName};
use ipam_sqlite::SqliteStore;

/// Untimed cycles before the timed loop, so caches and prepared statements are warm.
const WARM_UP_CYCLES: u64 = 3;

struct Args {
    db: String,
    node: NodeName,
    cycles: u64,
    start_at_ns: u128,
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqlite-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, node, cycles, start] = args.as_slice() else {
        return Err("usage: sqlite-worker <db> <node> <cycles> <start-at-ns>".into());
    };
    Ok(Args {
        db: db.clone(),
        node: NodeName::new(node.as_str()).map_err(|e| e.to_string())?,
        cycles: cycles.parse().map_err(|e| format!("cycles: {e}"))?,
        start_at_ns: start.parse().map_err(|e| format!("start-at-ns: {e}"))?,
    })
}

fn run(args: Args) -> Result<WorkerReport, String> {
    pollster::block_on(work(&args)).map_err(|e| e.to_string())
}

async fn work(args: &Args) -> Result<WorkerReport, Error> {
    let ipam = Ipam::new(SqliteStore::open(&args.db)?, ipam_core::SystemClock);
    let node = &args.node;
    let keep = HandleId::new(format!("bench.keep.{node}"))?;
    if ipam.ips_by_handle(&keep).await.is_err() {
        assign_one(&ipam, node, &keep).await?;
    }
    let handle = HandleId::new(format!("bench.cycle.{node}"))?;
    for _ in 0..WARM_UP_CYCLES {
        cycle(&ipam, node, &handle).await?;
    }
    let wait = args.start_at_ns.saturating_sub(now_ns());
    std::thread::sleep(Duration::from_nanos(u64::try_from(wait).unwrap_or(0)));
    let before = ipam.store().op_counts();
    let start_ns = now_ns();
    for _ in 0..args.cycles {
        cycle(&ipam, node, &handle).await?;
    }
    let end_ns = now_ns();
    Ok(WorkerReport {
        cycles: args.cycles,
        start_ns,
        end_ns,
        ops: ipam.store().op_counts().since(&before),
    })
}

async fn cycle(ipam: &Ipam<SqliteStore>, node: &NodeName, handle: &HandleId) -> Result<(), Error> {
    let held = assign_one(ipam, node, handle).await?;
    release_handle(ipam, &held).await
}

fn now_ns() -> u128 {
    // A clock before 1970 would be a broken host; 0 only makes the worker start at once.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
