//! Many plugin processes at once on one host, as a runtime starting a burst of pods does.

#![allow(clippy::unwrap_used)]

mod cni_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};

use cni_support::{Net, PLUGIN, container_env};
use serde_json::{Value, json};

const PROCESSES: usize = 32;

/// Starts one plugin process per container, all before waiting for any.
fn spawn_all(cmd: &str, conf: &Value) -> Vec<Child> {
    (0..PROCESSES)
        .map(|i| {
            let mut child = Command::new(PLUGIN)
                .env_clear()
                .envs(container_env(cmd, &format!("burst{i}"), "eth0"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(conf.to_string().as_bytes()).unwrap();
            drop(stdin);
            child
        })
        .collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Value> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "stdout {stdout} stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if stdout.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&stdout).unwrap()
            }
        })
        .collect()
}

#[test]
fn a_burst_of_adds_gets_distinct_addresses_and_dels_empty_the_store() {
    let net = Net::new("burst");
    // A fresh store: the burst also races on creating the database and the pool.
    let conf = net.conf("1.0.0", json!({"ipv4_pools": ["10.99.0.0/24"]}));
    let results = wait_all(spawn_all("ADD", &conf));
    let addresses: BTreeSet<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addresses.len(), PROCESSES, "{addresses:?}");
    let dump = net.dump();
    assert_eq!(dump.allocated(), PROCESSES);
    assert_eq!(dump.of_kind("IPAMHandle").count(), PROCESSES);

    wait_all(spawn_all("DEL", &conf));
    let dump = net.dump();
    assert_eq!(dump.allocated(), 0);
    assert_eq!(dump.of_kind("IPAMHandle").count(), 0);
    // And the consistency check `ipamctl check` runs finds nothing wrong.
    let store = ipam_sqlite::SqliteStore::open(&net.db).unwrap();
    let snapshot = pollster::block_on(ipam_core::check::Snapshot::read(&store)).unwrap();
    let report = ipam_core::check::check(
        &snapshot,
        &ipam_core::check::Live::default(),
        time::OffsetDateTime::now_utc(),
    );
    assert!(report.is_clean(), "{report:?}");
}

/// `ipam_lock_file` (Calico's key) moves the host lock: the plugin makes its directory, and
/// an ADD waits while another holder has the lock.
#[test]
fn the_named_lock_file_is_the_host_lock() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    let net = Net::new("locked");
    let lock = net.dir.path().join("calico/ipam.lock");
    let mut conf = net.conf("1.0.0", json!({"ipv4_pools": ["10.99.0.0/24"]}));
    conf["ipam_lock_file"] = json!(lock);
    assert!(net.run("ADD", "first", &conf).ok()["ips"].is_array());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(mode(lock.parent().unwrap()), 0o700);

    let held = std::fs::File::open(&lock).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(container_env("ADD", "second", "eth0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    // A first ADD here took well under a second; with the lock held it must not finish.
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(1) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ADD finished while the lock was held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    let results = wait_all(vec![child]);
    assert!(results[0]["ips"].is_array(), "{results:?}");
    assert_eq!(net.dump().allocated(), 2);
}
