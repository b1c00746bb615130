//! Running the built plugin as a container runtime would: environment and stdin in, exit
//! status and stdout JSON out; and dumping the SQLite store to compare before and after.

#![allow(dead_code, clippy::unwrap_used)]

pub mod netns;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The plugin binary cargo built for these tests.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_ipam-cni");

/// Every `cniVersion` the plugin supports.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What one plugin run produced.
#[derive(Debug)]
pub struct Reply {
    /// Exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Stdout parsed as JSON (`Null` when empty).
    pub json: Value,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
}

impl Reply {
    /// The error code of a failed run; panics (with the output) if it succeeded.
    pub fn code(&self) -> u64 {
        assert_ne!(self.status, Some(0), "expected a failure: {self:?}");
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code on stdout: {self:?}"))
    }

    /// Asserts success and returns the JSON.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, Some(0), "expected success: {self:?}");
        &self.json
    }

    /// The addresses of an ADD result.
    pub fn ips(&self) -> Vec<String> {
        self.ok()["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("no ips: {self:?}"))
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A test's private store and config.
pub struct Net {
    /// The temporary folder holding the database.
    pub dir: tempfile::TempDir,
    /// The database file.
    pub db: PathBuf,
    /// The network name.
    pub name: String,
}

impl Net {
    /// A fresh store in a temporary folder.
    pub fn new(name: &str) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        Net {
            dir,
            db,
            name: name.to_owned(),
        }
    }

    /// A network config for `version` with `ipam` keys merged over the defaults (type,
    /// this test's database, node `node-1`).
    pub fn conf(&self, version: &str, ipam: Value) -> Value {
        let mut section = json!({
            "type": "ipam-cni",
            "datastore_path": self.db,
        });
        merge(&mut section, ipam);
        json!({
            "cniVersion": version,
            "name": self.name,
            "type": "bridge",
            "nodename": "node-1",
            "ipam": section,
        })
    }

    /// Runs a verb for container `id` on `eth0`.
    pub fn run(&self, cmd: &str, id: &str, conf: &Value) -> Reply {
        run(&container_env(cmd, id, "eth0"), &conf.to_string())
    }

    /// Every stored object and the revision counter.
    pub fn dump(&self) -> Dump {
        dump(&self.db)
    }
}

/// The environment a runtime passes for `cmd` on one attachment.
pub fn container_env(cmd: &str, id: &str, ifname: &str) -> Vec<(String, String)> {
    vec![
        ("CNI_COMMAND".into(), cmd.into()),
        ("CNI_CONTAINERID".into(), id.into()),
        ("CNI_NETNS".into(), format!("/var/run/netns/{id}")),
        ("CNI_IFNAME".into(), ifname.into()),
        ("CNI_PATH".into(), "/usr/lib/cni".into()),
    ]
}

/// Runs the plugin with exactly `env` (nothing inherited but PATH) and `stdin`.
pub fn run(env: &[(String, String)], stdin: &str) -> Reply {
    run_plugin(Path::new(PLUGIN), env, stdin)
}

/// Runs the CNI plugin `binary` (ours or another) as [`run`] runs ours.
pub fn run_plugin(binary: &Path, env: &[(String, String)], stdin: &str) -> Reply {
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The plugin may exit before reading stdin (a missing CNI_COMMAND): a broken pipe is
    // not the test's concern, the reply is.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    Reply {
        status: out.status.code(),
        json: if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout {stdout:?}: {e}"))
        },
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Merges `patch`'s keys into `base` (one level deep, which is all configs here need).
pub fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        for (k, v) in p {
            b.insert(k, v);
        }
    }
}

/// The stored objects as `(kind, name) -> (revision, deleted, spec)`, plus the last
/// revision handed out; empty when the file does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The objects.
    pub objects: BTreeMap<(String, String), (i64, bool, Value)>,
    /// The revision counter: any write moves it.
    pub last_revision: i64,
}

impl Dump {
    /// The objects of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.objects
            .iter()
            .filter(move |((k, _), _)| k == kind)
            .map(|((_, n), (_, _, spec))| (n.as_str(), spec))
    }

    /// Addresses allocated in all blocks.
    pub fn allocated(&self) -> usize {
        self.of_kind("IPAMBlock")
            .map(|(_, b)| {
                b["allocations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| !a.is_null())
                    .count()
            })
            .sum()
    }
}

/// Reads every object of the database at `db`.
pub fn dump(db: &Path) -> Dump {
    if !db.exists() {
        return Dump {
            objects: BTreeMap::new(),
            last_revision: 0,
        };
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, name, revision, deleted, spec FROM objects ORDER BY kind, name")
        .unwrap();
    let objects = stmt
        .query_map([], |r| {
            let spec: String = r.get(4)?;
            Ok((
                (r.get(0)?, r.get(1)?),
                (
                    r.get(2)?,
                    r.get::<_, i64>(3)? != 0,
                    serde_json::from_str(&spec).unwrap(),
                ),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let last_revision = conn
        .query_row("SELECT last FROM revision", [], |r| r.get(0))
        .unwrap();
    Dump {
        objects,
        last_revision,
    }
}
