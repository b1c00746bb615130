//! Many allocating processes on one real etcd, with a worker killed (`SIGKILL`) and etcd itself
//! killed and restarted in the middle.
//!
//! What must hold afterwards:
//! - no address is held twice, and every address a worker was told it got is in the store
//!   under its handle;
//! - the surviving workers finish every allocation, and every failure they saw was
//!   `Unavailable` (etcd down), never anything else;
//! - `check_invariants` finds nothing but handles that count more than their blocks hold,
//!   and only for handles with an attempt that failed or was in flight at the kill (the
//!   handle is written before the block; etcd can die between the two, or a worker can);
//! - addresses held beyond those reported are likewise only for such handles, at most one
//!   per failed or interrupted attempt (an attempt whose reply was lost with etcd).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipam_core::check::Finding;
use ipam_core::{Datastore, IpPool, Ipam, IpamBlock, Scope};

const WORKERS: u32 = 4;
const NODES: u32 = 3;
const ALLOCS: u32 = 20;
const PREFIX: &str = "/kill-test/";

/// Running worker processes, killed on drop.
struct Fleet {
    children: Vec<Option<Child>>,
    statuses: Vec<Option<ExitStatus>>,
    logs: Vec<PathBuf>,
}

/// What one worker's log says.
#[derive(Default, Debug)]
struct Log {
    attempts: HashMap<String, u32>,
    got: HashMap<String, IpAddr>,
    /// Handles with a failed attempt, or an attempt with no outcome (in flight at a kill).
    unsure: HashSet<String>,
    unavailable: u32,
    other: Vec<String>,
    done: bool,
}

impl Fleet {
    fn spawn(dir: &Path, endpoint: &str) -> Fleet {
        let mut fleet = Fleet {
            children: Vec::new(),
            statuses: Vec::new(),
            logs: Vec::new(),
        };
        for id in 0..WORKERS {
            let log = dir.join(format!("worker-{id}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_etcd_worker"))
                .args([endpoint, PREFIX, &log.display().to_string()])
                .args([id.to_string(), NODES.to_string(), ALLOCS.to_string()])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn etcd_worker");
            fleet.children.push(Some(child));
            fleet.statuses.push(None);
            fleet.logs.push(log);
        }
        fleet
    }

    fn got_so_far(&self) -> usize {
        self.logs.iter().map(|l| read_log(l).got.len()).sum()
    }

    fn kill(&mut self, id: usize) {
        if let Some(mut c) = self.children[id].take() {
            c.kill().expect("kill -9 a worker");
            self.statuses[id] = Some(c.wait().expect("reap a worker"));
        }
    }

    /// Waits for every worker to exit, up to `limit`.
    fn wait_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.children.iter().any(Option::is_some) {
            assert!(
                Instant::now() < deadline,
                "workers still running after {limit:?}"
            );
            for (i, slot) in self.children.iter_mut().enumerate() {
                if let Some(c) = slot {
                    if let Some(status) = c.try_wait().expect("poll a worker") {
                        self.statuses[i] = Some(status);
                        *slot = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_log(path: &Path) -> Log {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = Log::default();
    let mut open = HashSet::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("ASK"), Some(h), _) => {
                *log.attempts.entry(h.to_owned()).or_default() += 1;
                open.insert(h.to_owned());
            }
            (Some("GOT"), Some(h), Some(ip)) => {
                open.remove(h);
                let ip = ip.parse().expect("GOT line has an address");
                assert!(log.got.insert(h.to_owned(), ip).is_none(), "{h} got twice");
            }
            (Some("FAIL"), Some(h), Some(why)) => {
                open.remove(h);
                log.unsure.insert(h.to_owned());
                if why == "unavailable" {
                    log.unavailable += 1;
                } else {
                    log.other.push(line.to_owned());
                }
            }
            (Some("DONE"), None, None) => log.done = true,
            _ => panic!("unexpected log line {line:?} in {}", path.display()),
        }
    }
    log.unsure.extend(open);
    log
}

/// Waits until the workers together report `n` addresses, up to a minute.
fn wait_for_progress(fleet: &Fleet, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.got_so_far() < n {
        assert!(
            Instant::now() < deadline,
            "workers did not reach {n} addresses"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_under_many_processes() {
    let mut server = ipam_tests::etcd::start();
    let dir = tempfile::tempdir().expect("temporary folder");
    {
        let ipam = Ipam::new(
            ipam_tests::etcd::store(&server, PREFIX).await,
            ipam_core::SystemClock,
        );
        let mut pool = IpPool::new("10.128.0.0/16".parse().expect("pool CIDR"));
        pool.block_size = 28; // 16 addresses: every node claims a second block mid-run
        ipam.create_pool("pool", pool)
            .await
            .expect("create the pool");
    }
    let total = (WORKERS * NODES * ALLOCS) as usize;
    let mut fleet = Fleet::spawn(dir.path(), &server.endpoint());
    wait_for_progress(&fleet, total / 5);
    fleet.kill(0);
    wait_for_progress(&fleet, total * 2 / 5);
    server.kill();
    std::thread::sleep(Duration::from_millis(1500));
    server.restart().expect("etcd restarts on its data");
    fleet.wait_all(Duration::from_secs(100));

    let logs: Vec<Log> = fleet.logs.iter().map(|l| read_log(l)).collect();
    for (id, log) in logs.iter().enumerate() {
        assert!(
            log.other.is_empty(),
            "worker {id} failed otherwise: {:?}",
            log.other
        );
        if id == 0 {
            continue;
        }
        let status = fleet.statuses[id].expect("survivor exited");
        assert!(status.success(), "worker {id} exited with {status}");
        assert!(log.done, "worker {id} finished");
        assert_eq!(log.got.len(), (NODES * ALLOCS) as usize, "worker {id}");
    }
    let outages: u32 = logs.iter().map(|l| l.unavailable).sum();
    assert!(outages > 0, "no worker noticed etcd going away");
    check_store(&server, &logs).await;
}

/// The store against the logs (see the module docs).
async fn check_store(server: &ipam_tests::etcd::EtcdServer, logs: &[Log]) {
    let store = ipam_tests::etcd::store(server, PREFIX).await;
    let blocks = store
        .list::<IpamBlock>(Scope::All)
        .await
        .expect("list blocks");
    let mut held: HashMap<IpAddr, String> = HashMap::new();
    let mut per_handle: HashMap<String, u32> = HashMap::new();
    for b in &blocks {
        let cidr = b.value.block_cidr().expect("stored block CIDR");
        for o in 0..cidr.size() {
            if let Some(h) = b.value.attribute_of(o).and_then(|a| a.handle_id.clone()) {
                assert!(held.insert(cidr.addr(o), h.clone()).is_none(), "held twice");
                *per_handle.entry(h).or_default() += 1;
            }
        }
    }
    let unsure: HashSet<&String> = logs.iter().flat_map(|l| &l.unsure).collect();
    let attempts: HashMap<&String, u32> = logs
        .iter()
        .flat_map(|l| &l.attempts)
        .map(|(h, n)| (h, *n))
        .collect();
    let got: HashMap<&String, &IpAddr> = logs.iter().flat_map(|l| &l.got).collect();
    for (h, ip) in &got {
        assert_eq!(held.get(*ip), Some(*h), "{h} was told it got {ip}");
    }
    for (h, n) in &per_handle {
        let asked = attempts.get(h).copied().unwrap_or(0);
        let extra = n - u32::from(got.contains_key(h));
        assert!(
            extra == 0 || unsure.contains(h),
            "{h} holds {n} with no doubtful attempt"
        );
        assert!(
            *n <= asked,
            "{h} holds {n} addresses after {asked} attempts"
        );
    }
    let problems = ipam_core::testing::check_invariants(&store)
        .await
        .expect("read the store");
    for p in &problems {
        let over = match p {
            Finding::HandleCountMismatch {
                handle,
                recorded,
                actual,
                ..
            } => recorded > actual && unsure.contains(handle),
            _ => false,
        };
        assert!(over, "unexpected inconsistency: {p}");
    }
    eprintln!(
        "{} addresses held, {} reported; {} handle over-counts: {problems:?}",
        held.len(),
        got.len(),
        problems.len()
    );
}
