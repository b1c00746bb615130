//! A worker process for the multi-process etcd test: several nodes, one task each, each
//! allocating one IPv4 address per handle through `Ipam<EtcdStore>`, riding out etcd outages.
//!
//! Usage: `etcd_worker ENDPOINT PREFIX LOG ID NODES ALLOCS`. Node `k` of worker `ID` is
//! `wID-nk`; its handles are `wID-nk-i` for `i` in `0..ALLOCS`. A failed attempt is retried
//! with the same handle after a pause, until the worker's deadline. Each line of LOG is one
//! `write` call, made before (ASK) or after (GOT, FAIL, DONE) what it names, so a `kill -9`
//! leaves a log that says which attempts may have been in flight:
//!
//! ```text
//! ASK <handle> <node>        about to auto_assign one IPv4 address to <handle>
//! GOT <handle> <ip>          auto_assign returned <ip>
//! FAIL <handle> unavailable  auto_assign failed because etcd could not be reached
//! FAIL <handle> other <why>  auto_assign failed for another reason
//! DONE                       every node got every address
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipam_core::{AutoAssignArgs, HandleId, Ipam, NodeName};
use ipam_etcd::{EtcdConfig, EtcdStore};

/// How long a worker keeps retrying before it gives up.
const DEADLINE: Duration = Duration::from_secs(90);
/// Pause between a failed attempt and the next.
const PAUSE: Duration = Duration::from_millis(100);

struct Args {
    endpoint: String,
    prefix: String,
    log: String,
    id: String,
    nodes: u32,
    allocs: u32,
}

type Log = Arc<Mutex<File>>;

fn main() -> ExitCode {
    let Some(args) = parse_args() else {
        eprintln!("usage: etcd_worker ENDPOINT PREFIX LOG ID NODES ALLOCS");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker {}: no runtime: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let args = Args {
        endpoint: it.next()?,
        prefix: it.next()?,
        log: it.next()?,
        id: it.next()?,
        nodes: it.next()?.parse().ok()?,
        allocs: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(args)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let log: Log = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.log)?,
    ));
    let config = EtcdConfig::new([args.endpoint.clone()])
        .with_prefix(args.prefix.clone())
        .with_timeouts(Duration::from_secs(1), Duration::from_secs(2));
    let ipam = Arc::new(Ipam::new(
        EtcdStore::connect(config).await?,
        ipam_core::SystemClock,
    ));
    let deadline = Instant::now() + DEADLINE;
    let tasks: Vec<_> = (0..args.nodes)
        .map(|k| {
            let node = format!("w{}-n{k}", args.id);
            let (ipam, log, allocs) = (ipam.clone(), log.clone(), args.allocs);
            tokio::spawn(async move { node_loop(&ipam, &log, &node, allocs, deadline).await })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    line(&log, "DONE")?;
    Ok(())
}

/// Allocates `allocs` addresses for `node`, one per handle, retrying failures until
/// `deadline`.
async fn node_loop(
    ipam: &Ipam<EtcdStore>,
    log: &Log,
    node: &str,
    allocs: u32,
    deadline: Instant,
) -> Result<(), String> {
    let node_name = NodeName::new(node).map_err(|e| e.to_string())?;
    for i in 0..allocs {
        let handle = HandleId::new(format!("{node}-{i}")).map_err(|e| e.to_string())?;
        let req = AutoAssignArgs::new(node_name.clone(), 1, 0).with_handle(handle.clone());
        loop {
            line(log, &format!("ASK {handle} {node}")).map_err(|e| e.to_string())?;
            let text = match ipam.auto_assign(&req).await {
                Ok(got) => match got.ipv4.first() {
                    Some(ip) => format!("GOT {handle} {}", ip.addr()),
                    None => return Err(format!("{handle}: auto_assign returned nothing")),
                },
                Err(ipam_core::Error::Store(ipam_core::StoreError::Unavailable { .. })) => {
                    format!("FAIL {handle} unavailable")
                }
                Err(e) => format!("FAIL {handle} other {e}"),
            };
            line(log, &text).map_err(|e| e.to_string())?;
            if text.starts_with("GOT") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{handle}: still failing at the deadline: {text}"));
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(())
}

/// Appends one line with a single `write`, so a kill leaves it whole or absent.
fn line(log: &Log, text: &str) -> std::io::Result<()> {
    let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
    file.write_all(format!("{text}\n").as_bytes())
}
