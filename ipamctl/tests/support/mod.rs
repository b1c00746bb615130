//! Shared by the ipamctl tests: a SQLite store in a temporary folder, prepared through the
//! library, and the built `ipamctl` binary run against it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod server;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use ipam_core::model::{ATTR_NAMESPACE, ATTR_NODE, ATTR_POD};
use ipam_core::{AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, NodeName, Resource, Stored};
use ipam_sqlite::SqliteStore;
use ipnet::IpNet;
use serde_json::Value;

/// A temporary SQLite datastore.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        Fixture { _dir: dir, db }
    }

    pub fn state_file(&self) -> PathBuf {
        self.db.with_extension("gc-state.json")
    }

    /// The allocator over a fresh connection to the database.
    pub fn ipam(&self) -> Ipam<SqliteStore> {
        Ipam::new(SqliteStore::open(&self.db).unwrap(), ipam_core::SystemClock)
    }

    /// Runs `ipamctl --datastore sqlite:DB ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
            .arg("--datastore")
            .arg(format!("sqlite:{}", self.db.display()))
            .args(args)
            .env_remove("IPAM_DATASTORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ipamctl binary should have been built by cargo test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must exit with `code`; returns its stdout.
    pub fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "ipamctl {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command with `-o json` that must exit with `code`; parses its output.
    pub fn json(&self, code: i32, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.expect(code, &all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Creates pool `p` over `cidr` with blocks of `block_size`.
    pub fn pool(&self, cidr: &str, block_size: u8) {
        let mut pool = IpPool::new(cidr.parse().unwrap());
        pool.block_size = block_size;
        block_on(self.ipam().create_pool("p", pool)).unwrap();
    }

    /// Assigns `n` addresses on `node` to handle `k8s-pod-network.<container>` for pod
    /// `default/<pod>`.
    pub fn assign(&self, node: &str, n: u32, container: &str, pod: &str) -> Vec<IpNet> {
        let mut args = AutoAssignArgs::new(NodeName::new(node).unwrap(), n, 0)
            .with_handle(HandleId::new(format!("k8s-pod-network.{container}")).unwrap());
        args.attrs = BTreeMap::from([
            (ATTR_NAMESPACE.to_owned(), "default".to_owned()),
            (ATTR_POD.to_owned(), pod.to_owned()),
            (ATTR_NODE.to_owned(), node.to_owned()),
        ]);
        block_on(self.ipam().auto_assign(&args)).unwrap().ipv4
    }

    /// Reads, changes and writes back one object, as a corrupting tool would.
    pub fn tamper<R: Resource>(&self, name: &str, change: impl FnOnce(&mut R)) {
        block_on(async {
            let store = SqliteStore::open(&self.db).unwrap();
            let mut s: Stored<R> = store.get(name).await.unwrap();
            change(&mut s.value);
            store.update(name, s.value, &s.revision).await.unwrap();
        })
    }

    /// Every object of a kind.
    pub fn list<R: Resource>(&self) -> Vec<Stored<R>> {
        block_on(async {
            let store = SqliteStore::open(&self.db).unwrap();
            store.list(ipam_core::Scope::All).await.unwrap()
        })
    }

    pub fn create<R: Resource>(&self, name: &str, value: R) {
        block_on(async {
            let store = SqliteStore::open(&self.db).unwrap();
            store.create(name, value).await.unwrap();
        });
    }
}

/// The kinds of findings in a `check -o json` report.
pub fn kinds(report: &Value) -> std::collections::BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect()
}
