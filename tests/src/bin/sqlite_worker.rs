//! A worker process for the multi-process SQLite test: `cycles` rounds of `auto_assign` and
//! release against one database file, for its own node names, logging what it asks for.
//!
//! Usage: `sqlite_worker DB LOG ID CYCLES`. Each line of LOG is written with one `write` call
//! before (ASK, FREE) or after (GOT, FREED, DONE) the operation it names, so a `kill -9` at
//! any instant leaves a log that says exactly which operation may have been in flight:
//!
//! ```text
//! ASK <handle> <node>   about to auto_assign one IPv4 address to <handle>
//! GOT <handle> <ip>     auto_assign returned <ip>
//! FREE <handle>         about to release_by_handle
//! FREED <handle>        release_by_handle returned
//! DONE                  every cycle finished
//! ```
//!
//! A worker keeps its last few addresses and releases the oldest when it holds more, so the
//! database ends with addresses held by finished and by killed workers alike.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;

use ipam_core::{AutoAssignArgs, HandleId, Ipam, NodeName};
use ipam_sqlite::SqliteStore;

/// Addresses a worker keeps before it releases the oldest.
const KEEP: usize = 3;
/// Node names per worker, used in turn.
const NODES: u32 = 2;

struct Args {
    db: String,
    log: String,
    id: String,
    cycles: u32,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Some(a) => a,
        None => {
            eprintln!("usage: sqlite_worker DB LOG ID CYCLES");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker {}: no runtime: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker {}: {e}", args.id);
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let args = Args {
        db: it.next()?,
        log: it.next()?,
        id: it.next()?,
        cycles: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(args)
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)?;
    let ipam = Ipam::new(SqliteStore::open(&args.db)?, ipam_core::SystemClock);
    let mut held = VecDeque::new();
    for cycle in 0..args.cycles {
        let handle = HandleId::new(format!("w{}-c{cycle}", args.id))?;
        let node = NodeName::new(format!("w{}-n{}", args.id, cycle % NODES))?;
        line(&mut log, &format!("ASK {handle} {node}"))?;
        let req = AutoAssignArgs::new(node, 1, 0).with_handle(handle.clone());
        let got = ipam.auto_assign(&req).await?;
        let ip = got.ipv4.first().ok_or("auto_assign returned no address")?;
        line(&mut log, &format!("GOT {handle} {}", ip.addr()))?;
        held.push_back(handle);
        if held.len() > KEEP {
            if let Some(old) = held.pop_front() {
                line(&mut log, &format!("FREE {old}"))?;
                ipam.release_by_handle(&old).await?;
                line(&mut log, &format!("FREED {old}"))?;
            }
        }
    }
    line(&mut log, "DONE")?;
    Ok(())
}

/// Appends one line with a single `write`, so a kill leaves it whole or absent.
fn line(log: &mut File, text: &str) -> std::io::Result<()> {
    log.write_all(format!("{text}\n").as_bytes())
}
