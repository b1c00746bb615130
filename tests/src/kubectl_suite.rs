//! The kubectl checks, run against the real kube-apiserver (`k8s_real_kubectl.rs`) and the
//! project's own server (`k8s_kubectl.rs`): printer columns, YAML, label selectors, stale
//! preconditions refused, an unversioned update refused, watch, patch, create, paging. Where
//! the two answer differently a check asserts each one's answer and says so (the whole list:
//! `tests/peers/DIFFERENCES.md`).
//!
//! Each check takes a server holding what [`populate`] made.

// A failed unwrap is a failed check, which is what this module is for.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipam_core::{AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, IpamHandle, NodeName};
use ipam_k8s::KubeStore;

/// Which server a [`Target`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// A real kube-apiserver.
    Real,
    /// The project's own (`ipamctl serve`, `ipam_apiserver::Running`).
    Ours,
}

/// kubectl set up for one server (its kubeconfig, a private cache), and a folder for files.
pub struct Target {
    /// Which server it talks to.
    pub server: Server,
    program: PathBuf,
    args: Vec<OsString>,
    dir: tempfile::TempDir,
}

impl Target {
    /// kubectl as `base` runs it (program and leading arguments; `KUBECONFIG` is never
    /// inherited).
    pub fn new(server: Server, base: &Command) -> Target {
        Target {
            server,
            program: base.get_program().into(),
            args: base.get_args().map(OsString::from).collect(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A file in the target's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs kubectl with `args` on a blocking thread (a server may run on this runtime).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl"))
            .await
            .unwrap()
    }

    /// Runs kubectl and returns stdout, failing the check on a non-zero exit.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// kubectl's standard error.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn header(out: &str) -> Vec<String> {
    let first = out.lines().next().unwrap_or("");
    first
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn write(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
}

/// What `Ipam<KubeStore>` makes on an empty server: a pool, a node's block and two handles.
pub async fn populate(store: KubeStore) -> Ipam<KubeStore> {
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    ipam.create_pool(
        "default-ipv4-ippool",
        IpPool::new("10.244.0.0/24".parse().unwrap()),
    )
    .await
    .unwrap();
    for pod in ["k8s-pod-network.aaa", "k8s-pod-network.bbb"] {
        let args = AutoAssignArgs::new(NodeName::new("node-1").unwrap(), 1, 0)
            .with_handle(HandleId::new(pod).unwrap());
        ipam.auto_assign(&args).await.unwrap();
    }
    ipam
}

/// `get` shows the printer columns, `-o yaml` the objects, and label selectors pick a node's.
pub async fn get_shows_printer_columns_and_yaml(t: &Target) {
    let pools = t.ok(&["get", "ippools"]).await;
    assert_eq!(
        header(&pools),
        ["NAME", "CIDR", "BLOCK SIZE", "DISABLED", "AGE"],
        "{pools}"
    );
    assert!(pools.contains("default-ipv4-ippool") && pools.contains("10.244.0.0/24"));

    let blocks = t.ok(&["get", "ipamblocks"]).await;
    assert_eq!(
        header(&blocks),
        ["NAME", "CIDR", "AFFINITY", "AGE"],
        "{blocks}"
    );
    let row: Vec<&str> = blocks.lines().nth(1).unwrap().split_whitespace().collect();
    let cidr = row[1];
    assert!(
        cidr.starts_with("10.244.0.") && cidr.ends_with("/26"),
        "{blocks}"
    );
    assert_eq!(row[0], cidr.replace(['.', '/'], "-"), "{blocks}");
    assert_eq!(row[2], "host:node-1", "{blocks}");

    let affs = t.ok(&["get", "blockaffinities", "-o", "yaml"]).await;
    for want in [
        "kind: BlockAffinity".to_owned(),
        "node: node-1".to_owned(),
        "state: confirmed".to_owned(),
        format!("cidr: {cidr}"),
        "crd.projectcalico.org/node: node-1".to_owned(),
        "resourceVersion:".to_owned(),
        "uid:".to_owned(),
    ] {
        assert!(affs.contains(&want), "{want:?} missing from:\n{affs}");
    }

    let handles = t.ok(&["get", "ipamhandles"]).await;
    assert_eq!(header(&handles), ["NAME", "AGE"], "{handles}");
    assert!(handles.contains("k8s-pod-network.aaa") && handles.contains("k8s-pod-network.bbb"));

    let on_node = t
        .ok(&[
            "get",
            "blockaffinities",
            "-l",
            "crd.projectcalico.org/node=node-1",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(on_node.lines().count(), 1, "{on_node}");
    let elsewhere = t
        .run(&[
            "get",
            "blockaffinities",
            "-l",
            "crd.projectcalico.org/node=node-2",
        ])
        .await;
    assert!(stderr(&elsewhere).contains("No resources found"));

    let missing = t.run(&["get", "ipamhandle", "nope"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("NotFound"),
        "{}",
        stderr(&missing)
    );
}

/// A delete or replace from a stale copy is refused (409), as is an update without any
/// resourceVersion (422), and none of them changes anything.
pub async fn stale_preconditions_are_refused(t: &Target, ipam: &Ipam<KubeStore>) {
    let name = "k8s-pod-network.aaa";
    let url = format!("/apis/crd.projectcalico.org/v1/ipamhandles/{name}");
    let rv_path = [
        "get",
        "ipamhandle",
        name,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ];
    let stale = t.ok(&rv_path).await;
    let old_yaml = t.ok(&["get", "ipamhandle", name, "-o", "yaml"]).await;

    // Difference: a real server does not write an update that changes nothing, so the
    // resourceVersion stays; the project's server writes it and moves it on.
    let store = ipam.store();
    let current = store.get::<IpamHandle>(name).await.unwrap();
    let same = store
        .update(name, current.value.clone(), &current.revision)
        .await
        .unwrap();
    match t.server {
        Server::Real => {
            assert_eq!(same, current.revision, "a no-op update moved the revision");
            assert_eq!(t.ok(&rv_path).await, stale);
        }
        Server::Ours => assert_ne!(same, current.revision),
    }
    let stale = t.ok(&rv_path).await;

    // Someone writes the handle: the resourceVersion kubectl read is now stale.
    t.ok(&[
        "patch",
        "ipamhandle",
        name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"block":{"10.9.9.0/26":1}}}"#,
    ])
    .await;
    let fresh = t.ok(&rv_path).await;
    assert_ne!(stale, fresh);

    let body = |rv: &str| {
        format!(
            r#"{{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{{"resourceVersion":"{rv}"}}}}"#
        )
    };
    write(&t.path("stale.json"), &body(&stale));
    let stale_file = t.path("stale.json");
    let refused = t
        .run(&["delete", "--raw", &url, "-f", stale_file.to_str().unwrap()])
        .await;
    assert!(!refused.status.success(), "a stale delete succeeded");
    let err = stderr(&refused);
    assert!(
        err.contains("Precondition failed") || err.contains("Conflict"),
        "{err}"
    );
    t.ok(&["get", "ipamhandle", name]).await;

    let old = t.path("old.yaml");
    write(&old, &old_yaml);
    let replaced = t
        .run(&["replace", "--validate=false", "-f", old.to_str().unwrap()])
        .await;
    assert!(!replaced.status.success(), "a stale replace succeeded");
    assert!(
        stderr(&replaced).contains("the object has been modified"),
        "{}",
        stderr(&replaced)
    );
    assert_eq!(t.ok(&rv_path).await, fresh);

    // A PUT of a copy without any resourceVersion: custom resources take no unconditional
    // update (kubectl's own replace fills the version in; `--raw` sends the file).
    let unversioned = t.path("unversioned.json");
    let mut object: serde_json::Value = serde_yaml::from_str(&old_yaml).unwrap();
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    write(&unversioned, &object.to_string());
    let replaced = t
        .run(&[
            "replace",
            "--raw",
            &url,
            "-f",
            unversioned.to_str().unwrap(),
        ])
        .await;
    assert!(!replaced.status.success(), "an unversioned PUT succeeded");
    assert!(
        stderr(&replaced).contains("must be specified for an update"),
        "{}",
        stderr(&replaced)
    );
    assert_eq!(t.ok(&rv_path).await, fresh);

    let fresh_file = t.path("fresh.json");
    write(&fresh_file, &body(&fresh));
    t.ok(&["delete", "--raw", &url, "-f", fresh_file.to_str().unwrap()])
        .await;
    let gone = t.run(&["get", "ipamhandle", name]).await;
    assert!(!gone.status.success());
}

/// A watch streams what exists and then an object created while it runs.
pub async fn watch_streams_a_new_object(t: &Target, ipam: &Ipam<KubeStore>) {
    let watch = t.run(&[
        "get",
        "--raw",
        "/apis/crd.projectcalico.org/v1/ipamhandles?watch=true&timeoutSeconds=3",
    ]);
    let create = async {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        ipam.store()
            .create("late-handle", IpamHandle::new("late-handle"))
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(watch, create);
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        names.contains(&("ADDED", "k8s-pod-network.aaa")),
        "{names:?}"
    );
    assert!(names.contains(&("ADDED", "late-handle")), "{names:?}");

    // A streaming list (what client-go's WatchList and kube-rs's streaming_lists send): the
    // objects as ADDED, then a BOOKMARK marking the end of the initial events. This needs
    // etcd's RequestWatchProgress, which Debian's etcd 3.4.23 lacks; the project's server
    // sends it after its first poll.
    let out = t
        .run(&[
            "get",
            "--raw",
            "/apis/crd.projectcalico.org/v1/ipamhandles?watch=true&timeoutSeconds=2\
             &allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        ])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[..3], ["ADDED", "ADDED", "ADDED"], "{text}");
    let end = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .unwrap_or_else(|| panic!("no BOOKMARK after the initial events: {text}"));
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
        "{text}"
    );
}

/// Merge patches apply, strategic merge patches are refused, creates are 201 then
/// AlreadyExists, a malformed spec is Invalid, and lists page.
pub async fn writes_follow_the_api_rules(t: &Target) {
    t.ok(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ])
    .await;
    let pools = t.ok(&["get", "ippools", "--no-headers"]).await;
    assert!(pools.contains("true"), "{pools}");
    let smp = t
        .run(&[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{}}"#,
        ])
        .await;
    assert!(!smp.status.success());
    let smp_err = stderr(&smp);
    assert!(
        smp_err.contains("UnsupportedMediaType") || smp_err.contains("unknown format"),
        "{smp_err}"
    );

    // Difference: the project's server refuses a label it cannot store (422); a real server
    // stores any valid label. The next write through KubeStore replaces the labels with the
    // ones derived from the spec.
    let label = t
        .run(&["label", "ipamhandle", "k8s-pod-network.aaa", "team=x"])
        .await;
    if t.server == Server::Ours {
        assert!(!label.status.success(), "an unstorable label was accepted");
        assert!(stderr(&label).contains("is invalid"), "{}", stderr(&label));
    } else {
        assert!(label.status.success(), "{}", stderr(&label));
        let labels = t
            .ok(&[
                "get",
                "ipamhandle",
                "k8s-pod-network.aaa",
                "-o",
                "jsonpath={.metadata.labels}",
            ])
            .await;
        assert!(labels.contains("\"team\":\"x\""), "{labels}");
    }

    let handle = r#"{"apiVersion":"crd.projectcalico.org/v1","kind":"IPAMHandle",
        "metadata":{"name":"made-by-kubectl"},"spec":{"handleID":"made-by-kubectl","block":{}}}"#;
    let file = t.path("h.json");
    write(&file, handle);
    let create = ["create", "--validate=false", "-f", file.to_str().unwrap()];
    t.ok(&create).await;
    let again = t.run(&create).await;
    assert!(
        stderr(&again).contains("AlreadyExists"),
        "{}",
        stderr(&again)
    );
    let bad_file = t.path("bad.json");
    write(&bad_file, &handle.replace(r#""block":{}"#, r#""block":7"#));
    let bad = t
        .run(&[
            "create",
            "--validate=false",
            "-f",
            bad_file.to_str().unwrap(),
        ])
        .await;
    assert!(stderr(&bad).contains("is invalid"), "{}", stderr(&bad));
    // A name that is no lowercase RFC 1123 subdomain is Invalid on both servers.
    let upper = t.path("upper.json");
    write(
        &upper,
        &handle.replace(r#""name":"made-by-kubectl""#, r#""name":"Upper_Case""#),
    );
    let refused = t
        .run(&["create", "--validate=false", "-f", upper.to_str().unwrap()])
        .await;
    assert!(!refused.status.success(), "Upper_Case was created");
    assert!(
        stderr(&refused).contains("RFC 1123"),
        "{}",
        stderr(&refused)
    );

    let paged = t
        .ok(&["get", "ipamhandles", "--chunk-size=1", "-o", "name"])
        .await;
    assert_eq!(paged.lines().count(), 3, "{paged}");
}
