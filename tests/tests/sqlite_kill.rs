//! Many plugin-like processes on one SQLite file while the test `kill -9`s them at random.
//!
//! Eight `sqlite_worker` processes run at all times, each doing `auto_assign`/release cycles
//! for its own node names; for a bounded time the test kills a random one every few hundred
//! milliseconds and starts a new one in its place. Then it checks the database against the
//! workers' logs (see the worker's docs for the log format):
//!
//! - every worker either finished or was killed; none failed;
//! - no address is held twice, and every held address belongs to a handle some worker asked
//!   for; a handle whose release returned holds nothing; an address whose assignment returned
//!   and was not being released is still held by its handle (nothing committed is lost);
//! - `check_invariants` is clean once exactly what a kill may leave is forgiven: a killed
//!   worker's one in-flight handle (its last log line is `ASK h` or `FREE h`) may count one
//!   address more than its block holds, in one block. The allocator writes the handle before
//!   the block on assignment and after it on release, so nothing else can be left.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ipam_core::testing::check_invariants;
use ipam_core::{BlockAffinity, Datastore, IpPool, IpamBlock, IpamHandle, MemoryStore, Scope};
use ipam_sqlite::SqliteStore;

/// Processes running at once.
const WORKERS: usize = 8;
/// Cycles each worker does if nobody kills it.
const CYCLES: u32 = 500;
/// How long workers are killed and replaced.
const CHAOS: Duration = Duration::from_secs(25);
/// How long the last workers get to finish their cycles once the killing stops.
const GRACE: Duration = Duration::from_secs(120);

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Done,
    Killed,
    Failed(String),
}

struct Worker {
    id: u32,
    child: Child,
}

/// The running workers; any still running when the test ends (or panics) are killed.
struct Fleet {
    exe: PathBuf,
    dir: PathBuf,
    db: PathBuf,
    next_id: u32,
    live: Vec<Worker>,
    ended: BTreeMap<u32, Outcome>,
}

impl Fleet {
    fn spawn(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let err = File::create(self.dir.join(format!("w{id}.err"))).unwrap();
        let child = Command::new(&self.exe)
            .arg(&self.db)
            .arg(self.log(id))
            .arg(id.to_string())
            .arg(CYCLES.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.exe));
        self.live.push(Worker { id, child });
    }

    fn log(&self, id: u32) -> PathBuf {
        self.dir.join(format!("w{id}.log"))
    }

    fn record(&mut self, id: u32, status: ExitStatus) {
        let outcome = match (status.success(), status.signal()) {
            (true, _) => Outcome::Done,
            (false, Some(9)) => Outcome::Killed,
            _ => {
                let err = std::fs::read_to_string(self.dir.join(format!("w{id}.err")));
                Outcome::Failed(format!("{status}: {}", err.unwrap_or_default()))
            }
        };
        self.ended.insert(id, outcome);
    }

    /// Collects workers that ended by themselves; returns how many did.
    fn reap(&mut self) -> usize {
        let mut ended = Vec::new();
        self.live.retain_mut(|w| match w.child.try_wait().unwrap() {
            Some(status) => {
                ended.push((w.id, status));
                false
            }
            None => true,
        });
        let n = ended.len();
        for (id, status) in ended {
            self.record(id, status);
        }
        n
    }

    /// `kill -9` of the worker at `index`, reaped at once.
    fn kill(&mut self, index: usize) {
        let mut w = self.live.swap_remove(index);
        // SIGKILL; if the worker exited just before, its real status is recorded instead.
        let _ = w.child.kill();
        let status = w.child.wait().unwrap();
        self.record(w.id, status);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for w in &mut self.live {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// A small xorshift generator: the test prints its seed so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one worker's log says.
#[derive(Debug, Default)]
struct Log {
    asked: BTreeSet<String>,
    got: BTreeMap<String, IpAddr>,
    freeing: BTreeSet<String>,
    freed: BTreeSet<String>,
    /// The handle of an operation begun and not finished (last line `ASK h` or `FREE h`).
    in_flight: Option<String>,
    done: bool,
}

fn read_log(path: &Path) -> Log {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = Log::default();
    // Lines are written whole, but only lines ending in a newline are trusted.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        log.in_flight = None;
        match words.as_slice() {
            ["ASK", h, _node] => {
                log.asked.insert(h.to_string());
                log.in_flight = Some(h.to_string());
            }
            ["GOT", h, ip] => {
                log.got.insert(h.to_string(), ip.parse().unwrap());
            }
            ["FREE", h] => {
                log.freeing.insert(h.to_string());
                log.in_flight = Some(h.to_string());
            }
            ["FREED", h] => {
                log.freed.insert(h.to_string());
            }
            ["DONE"] => log.done = true,
            _ => panic!("{path:?}: unexpected log line {line:?}"),
        }
    }
    log
}

fn seed() -> u64 {
    match std::env::var("IPAM_KILL_SEED") {
        Ok(s) => s.parse().expect("IPAM_KILL_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Runs the workers under `kill -9` for [`CHAOS`], then lets the last ones finish.
fn run_fleet(dir: &Path, db: &Path, rng: &mut Rng) -> Fleet {
    let mut fleet = Fleet {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_sqlite_worker")),
        dir: dir.to_owned(),
        db: db.to_owned(),
        next_id: 0,
        live: Vec::new(),
        ended: BTreeMap::new(),
    };
    for _ in 0..WORKERS {
        fleet.spawn();
    }
    let start = Instant::now();
    while start.elapsed() < CHAOS {
        std::thread::sleep(Duration::from_millis(50 + rng.below(350)));
        for _ in 0..fleet.reap() {
            fleet.spawn();
        }
        let victim = rng.below(fleet.live.len() as u64) as usize;
        fleet.kill(victim);
        fleet.spawn();
    }
    let grace = Instant::now();
    while !fleet.live.is_empty() && grace.elapsed() < GRACE {
        std::thread::sleep(Duration::from_millis(100));
        fleet.reap();
    }
    assert!(
        fleet.live.is_empty(),
        "{} workers did not finish {CYCLES} cycles within {GRACE:?}",
        fleet.live.len()
    );
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaks_at_most_the_operation_in_flight_and_never_corrupts() {
    let seed = seed();
    eprintln!("IPAM_KILL_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state/ipam.db");
    {
        let store = SqliteStore::open(&db).unwrap();
        let pool = IpPool::new("10.0.0.0/16".parse().unwrap());
        store.create("pool", pool).await.unwrap();
    }
    let dir = tmp.path().to_owned();
    let fleet = tokio::task::spawn_blocking(move || run_fleet(&dir, &db, &mut rng))
        .await
        .unwrap();

    let failed: Vec<_> = fleet
        .ended
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .collect();
    assert!(failed.is_empty(), "workers failed: {failed:?}");
    let killed: BTreeSet<u32> = fleet
        .ended
        .iter()
        .filter(|(_, o)| **o == Outcome::Killed)
        .map(|(id, _)| *id)
        .collect();
    let done = fleet.ended.len() - killed.len();
    eprintln!(
        "{} processes: {} killed, {done} finished {CYCLES} cycles",
        fleet.ended.len(),
        killed.len()
    );
    assert!(
        killed.len() >= 20,
        "the test killed too few workers to prove anything"
    );
    assert!(done >= WORKERS, "the last workers all finish");

    let logs: BTreeMap<u32, Log> = fleet
        .ended
        .keys()
        .map(|&id| (id, read_log(&fleet.log(id))))
        .collect();
    let cycles: usize = logs.values().map(|l| l.got.len()).sum();
    eprintln!(
        "{cycles} auto_assign calls returned ({} per process on average)",
        cycles / logs.len()
    );
    for (id, log) in &logs {
        assert_eq!(
            log.done,
            !killed.contains(id),
            "worker {id}: DONE iff not killed"
        );
    }
    let store = SqliteStore::open(&fleet.db).unwrap();
    check_against_logs(&store, &logs, &killed).await;
}

/// Who holds each address, from the blocks; panics on an address held twice.
fn holders(blocks: &[ipam_core::Stored<IpamBlock>]) -> HashMap<IpAddr, String> {
    let mut held = HashMap::new();
    for b in blocks {
        let cidr = b.value.block_cidr().unwrap();
        for o in 0..cidr.size() {
            if let Some(a) = b.value.attribute_of(o) {
                let h = a.handle_id.clone().expect("workers always give a handle");
                if let Some(prev) = held.insert(cidr.addr(o), h.clone()) {
                    panic!("{} is held by {prev} and by {h}", cidr.addr(o));
                }
            }
        }
    }
    held
}

async fn check_against_logs(
    store: &SqliteStore,
    logs: &BTreeMap<u32, Log>,
    killed: &BTreeSet<u32>,
) {
    let blocks = store.list::<IpamBlock>(Scope::All).await.unwrap();
    let affinities = store.list::<BlockAffinity>(Scope::All).await.unwrap();
    let handles = store.list::<IpamHandle>(Scope::All).await.unwrap();
    let held = holders(&blocks);
    let asker: HashMap<&str, u32> = logs
        .iter()
        .flat_map(|(id, l)| l.asked.iter().map(move |h| (h.as_str(), *id)))
        .collect();
    let mut per_handle: HashMap<&str, u32> = HashMap::new();
    for (ip, h) in &held {
        let id = *asker
            .get(h.as_str())
            .unwrap_or_else(|| panic!("{ip} held by {h}, which nobody asked for"));
        let log = &logs[&id];
        assert!(
            !log.freed.contains(h),
            "{ip} still held by {h}, whose release returned"
        );
        if let Some(got) = log.got.get(h) {
            assert_eq!(got, ip, "{h} holds another address than it was given");
        }
        *per_handle.entry(h).or_default() += 1;
    }
    assert!(
        per_handle.values().all(|&n| n == 1),
        "a handle holds more than it asked for"
    );
    let mut lost = Vec::new();
    for log in logs.values() {
        for (h, ip) in &log.got {
            if !log.freeing.contains(h) && held.get(ip) != Some(h) {
                lost.push(format!("{h} was given {ip}"));
            }
        }
    }
    assert!(lost.is_empty(), "committed allocations lost: {lost:?}");

    // Forgive exactly what a kill may leave, then the invariants must hold.
    let copy = MemoryStore::new();
    let mut forgiven = Vec::new();
    for h in handles {
        let id = *asker
            .get(h.name.as_str())
            .unwrap_or_else(|| panic!("handle {} nobody asked for", h.name));
        let in_flight = killed.contains(&id) && logs[&id].in_flight.as_deref() == Some(&h.name);
        let holds = per_handle.get(h.name.as_str()).copied().unwrap_or(0);
        // The one thing a kill may leave: the in-flight handle counting the address whose
        // block write (assign) never happened, or whose block write (release) did.
        if in_flight && holds == 0 && h.value.total() == 1 {
            forgiven.push(h.name.clone());
            continue;
        }
        copy.create(&h.name, h.value).await.unwrap();
    }
    for b in blocks {
        copy.create(&b.name, b.value).await.unwrap();
    }
    for a in affinities {
        copy.create(&a.name, a.value).await.unwrap();
    }
    eprintln!("forgiven in-flight handle counts: {}", forgiven.len());
    let problems = check_invariants(&copy).await.unwrap();
    assert!(
        problems.is_empty(),
        "after forgiving in-flight handles: {problems:#?}"
    );
}
