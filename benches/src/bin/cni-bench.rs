//! `cni-bench`: ADD and DEL as whole processes, `ipam-cni` beside Debian's `host-local`, on
//! the same disk, at 0, 100, 300, 1,000 and 10,000 addresses already allocated; with the
//! floor (a process that only starts and exits, plus one durable SQLite commit), peak
//! memory, and `CNI_COMMAND=VERSION` beside `/bin/true`.
//!
//! ```text
//! cargo build --release -p ipam-cni --bins && target/release/cni-bench [--reps N] [--dir DIR]
//! ```
//!
//! Both plugins get a /16. Ours is pre-filled through the library (one handle per address,
//! with the attributes the plugin writes); host-local's through its own file layout (one file
//! per address). Our node may hold up to 1,000 blocks of /26 (strict affinity, as one host
//! owning its pool would set), since the default limit of 20 blocks caps a node at 1,280.
//! Peak memory comes from `/usr/bin/time -v` (Debian package `time`). Not a test: it
//! asserts nothing, it prints a table.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ipam_core::{
    AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, IpamConfig, IpamHandle, NodeName,
};
use ipam_sqlite::SqliteStore;
use serde_json::{Value, json};

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const LEVELS: [usize; 5] = [0, 100, 300, 1_000, 10_000];

struct Bench {
    dir: PathBuf,
    plugin: PathBuf,
    reps: usize,
    ours: Value,
    theirs: Value,
}

/// Medians of one level, in microseconds, and peak RSS in KiB.
#[derive(Default)]
struct Row {
    add: [f64; 2],
    del: [f64; 2],
    rss: [u64; 2],
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("noop") {
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let reps = flag("--reps").map_or(Ok(31), |r| r.parse().map_err(|e| format!("--reps: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let plugin = exe.with_file_name("ipam-cni");
    for (path, hint) in [
        (plugin.as_path(), "cargo build --release -p ipam-cni --bins"),
        (
            Path::new(HOST_LOCAL),
            "apt-get install containernetworking-plugins",
        ),
        (Path::new("/usr/bin/time"), "apt-get install time"),
    ] {
        if !path.exists() {
            return Err(format!("{} is missing: {hint}", path.display()));
        }
    }
    let base = flag("--dir").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("cni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = bench(Bench::new(dir.clone(), plugin, reps));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

impl Bench {
    fn new(dir: PathBuf, plugin: PathBuf, reps: usize) -> Bench {
        let ours = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
            "nodename": "bench-node",
            "ipam": {"type": "ipam-cni", "ipv4_pools": ["10.100.0.0/16"],
                     "datastore_path": dir.join("ipam.db")}});
        let theirs = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.200.0.0/16"}]],
                     "dataDir": dir.join("host-local")}});
        Bench {
            dir,
            plugin,
            reps,
            ours,
            theirs,
        }
    }

    /// One plugin process for `cmd` on container `id`; returns its wall time.
    fn call(&self, exe: &Path, conf: &Value, cmd: &str, id: &str) -> Result<Duration, String> {
        let start = Instant::now();
        let out = spawn(Command::new(exe), conf, cmd, id)?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{} {cmd} {id}: {}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(took)
    }

    /// Peak RSS (KiB) of one ADD and its DEL under `/usr/bin/time -v`.
    fn peak_rss(&self, exe: &Path, conf: &Value) -> Result<u64, String> {
        let mut peak = 0;
        for cmd in ["ADD", "DEL"] {
            let mut c = Command::new("/usr/bin/time");
            c.arg("-v").arg(exe);
            let out = spawn(c, conf, cmd, "rss-probe")?;
            let text = String::from_utf8_lossy(&out.stderr);
            let kib = text
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Maximum resident set size (kbytes): ")
                })
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no RSS in /usr/bin/time output: {text}"))?;
            peak = peak.max(kib);
        }
        Ok(peak)
    }

    fn measure(&self, level: usize) -> Result<Row, String> {
        let mut samples: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
        let exes = [self.plugin.clone(), PathBuf::from(HOST_LOCAL)];
        let confs = [&self.ours, &self.theirs];
        for rep in 0..self.reps {
            // Alternate who goes first so neither always runs on a warmer cache.
            for k in 0..2 {
                let which = (rep + k) % 2;
                let id = format!("bench-{level}-{rep}");
                let add = self.call(&exes[which], confs[which], "ADD", &id)?;
                let del = self.call(&exes[which], confs[which], "DEL", &id)?;
                samples.entry((which, "add")).or_default().push(micros(add));
                samples.entry((which, "del")).or_default().push(micros(del));
            }
        }
        let mut row = Row::default();
        for which in 0..2 {
            row.add[which] = median(samples.remove(&(which, "add")).unwrap_or_default());
            row.del[which] = median(samples.remove(&(which, "del")).unwrap_or_default());
            row.rss[which] = self.peak_rss(&exes[which], confs[which])?;
        }
        Ok(row)
    }

    /// The floor: spawning a process that only exits, plus one durable SQLite commit.
    fn floor(&self) -> Result<(f64, f64), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut spawns = Vec::new();
        for _ in 0..self.reps {
            let start = Instant::now();
            let status = Command::new(&exe)
                .arg("noop")
                .status()
                .map_err(|e| e.to_string())?;
            spawns.push(micros(start.elapsed()));
            if !status.success() {
                return Err("the no-op process failed".into());
            }
        }
        let store = SqliteStore::open(self.dir.join("floor.db")).map_err(|e| e.to_string())?;
        let mut commits = Vec::new();
        for i in 0..self.reps {
            let name = format!("floor-{i}");
            let start = Instant::now();
            block_on(store.create(&name, IpamHandle::new(&name)))?.map_err(|e| e.to_string())?;
            commits.push(micros(start.elapsed()));
        }
        Ok((median(spawns), median(commits)))
    }

    /// Medians of `CNI_COMMAND=VERSION` of ours and of `/bin/true`, alternating, in us.
    fn version_vs_true(&self) -> Result<(f64, f64), String> {
        let (mut version, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..self.reps.max(21) {
            version.push(micros(self.call(
                &self.plugin,
                &self.ours,
                "VERSION",
                "v",
            )?));
            let start = Instant::now();
            let status = Command::new("/bin/true")
                .status()
                .map_err(|e| e.to_string())?;
            truth.push(micros(start.elapsed()));
            if !status.success() {
                return Err("/bin/true failed".into());
            }
        }
        Ok((median(version), median(truth)))
    }

    /// Brings both stores from `from` to `to` allocations; `(0, 0)` sets up the pool.
    fn fill(&self, from: usize, to: usize) -> Result<(), String> {
        let store = SqliteStore::open(self.dir.join("ipam.db")).map_err(|e| e.to_string())?;
        let ipam = Ipam::new(store, ipam_core::SystemClock);
        let node = NodeName::new("bench-node").map_err(|e| e.to_string())?;
        let pool: ipnet::IpNet = "10.100.0.0/16".parse().map_err(|e| format!("{e}"))?;
        block_on(async {
            if from == 0 && to == 0 {
                let config = IpamConfig {
                    strict_affinity: true,
                    max_blocks_per_host: 1_000,
                    ..IpamConfig::default()
                };
                ipam.set_config(config).await?;
                ipam.create_pool("bench", IpPool::new(pool)).await?;
            }
            for i in from..to {
                let mut args = AutoAssignArgs::new(node.clone(), 1, 0)
                    .with_handle(HandleId::new(format!("bench.fill-{i}"))?);
                args.attrs.insert("node".into(), "bench-node".into());
                args.attrs.insert("ifname".into(), "eth0".into());
                args.attrs.insert(
                    "timestamp".into(),
                    "2025-01-01 00:00:00.123456789 +0000 UTC".into(),
                );
                ipam.auto_assign(&args).await?;
            }
            Ok::<(), ipam_core::Error>(())
        })?
        .map_err(|e| e.to_string())?;
        let data = self.dir.join("host-local/bench");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        for i in from..to {
            // host-local keeps one file per address, named by it, holding "id\r\nifname".
            let ip = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(10, 200, 0, 2)) + i as u32,
            );
            std::fs::write(data.join(ip.to_string()), format!("fill-{i}\r\neth0"))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn bench(b: Bench) -> Result<(), String> {
    let (spawn, commit) = b.floor()?;
    let floor = spawn + commit;
    println!(
        "cni-bench: {} reps per cell, data in {}",
        b.reps,
        b.dir.display()
    );
    println!(
        "floor: process start+exit {spawn:.0} us + durable SQLite commit {commit:.0} us = {floor:.0} us\n"
    );
    println!(
        "{:>9} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>8} | {:>9} {:>9}",
        "allocated",
        "ADD ours",
        "host-local",
        "ratio",
        "DEL ours",
        "host-local",
        "ratio",
        "ADD/floor",
        "RSS ours",
        "RSS h-l"
    );
    b.fill(0, 0)?; // the pool and the node's block limit
    let mut filled = 0;
    let mut adds = Vec::new();
    for level in LEVELS {
        if level > filled {
            b.fill(filled, level)?;
        }
        filled = level;
        let r = b.measure(level)?;
        println!(
            "{level:>9} | {:>8.0}us {:>8.0}us {:>5.2}x | {:>8.0}us {:>8.0}us {:>5.2}x | {:>7.2}x | {:>6}KiB {:>6}KiB",
            r.add[0],
            r.add[1],
            r.add[0] / r.add[1],
            r.del[0],
            r.del[1],
            r.del[0] / r.del[1],
            r.add[0] / floor,
            r.rss[0],
            r.rss[1]
        );
        adds.push(r.add[0]);
        let _ = std::io::stdout().flush();
    }
    if let (Some(first), Some(last)) = (adds.first(), adds.last()) {
        println!(
            "\nADD at {} vs at {}: {:.2}x",
            LEVELS[4],
            LEVELS[0],
            last / first
        );
    }
    let (version, truth) = b.version_vs_true()?;
    println!(
        "CNI_COMMAND=VERSION {version:.0} us vs /bin/true {truth:.0} us: {:.2}x",
        version / truth
    );
    Ok(())
}

fn spawn(
    mut c: Command,
    conf: &Value,
    cmd: &str,
    id: &str,
) -> Result<std::process::Output, String> {
    let mut child = c
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // VERSION is answered without reading stdin: the plugin may be gone already.
        match stdin.write_all(conf.to_string().as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.to_string()),
            _ => {}
        }
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a future on a current-thread runtime (the store's futures are plain async over
/// blocking SQLite calls).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(rt.block_on(f))
}
