//! The real `kubectl` against the Kubernetes-style API server: printer columns, YAML, label
//! selectors, a delete with a stale resourceVersion precondition refused, a stale replace
//! refused, and a watch that sees a new object.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipam_apiserver::{Running, ServeOptions};
use ipam_core::{
    AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, IpamHandle, MemoryStore, NodeName,
};
use ipam_k8s::KubeStore;

/// kubectl with a kubeconfig for `server` and a private discovery cache.
struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &Running) -> Kubectl {
        let bin = find_kubectl();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n\
             users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    \
             cluster: local\n    user: nobody\ncurrent-context: local\n",
            server.url()
        );
        std::fs::write(dir.path().join("kubeconfig"), config).unwrap();
        Kubectl { bin, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs kubectl on a blocking thread (the server runs on this runtime).
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG");
        tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl"))
            .await
            .unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test on a non-zero exit.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn find_kubectl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubectl is not on PATH: install Debian's kubernetes-client (scripts/install-deps)"
            )
        })
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

/// A server holding what `Ipam<KubeStore>` made: a pool, a node's block and two handles.
async fn populated() -> (Running, Ipam<KubeStore>) {
    let server = Running::start(
        "127.0.0.1:0",
        MemoryStore::new(),
        ServeOptions::writable_for_tests(),
    )
    .await
    .unwrap();
    let ipam = Ipam::new(
        KubeStore::for_url(&server.url()).unwrap(),
        ipam_core::SystemClock,
    );
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
    (server, ipam)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_printer_columns_and_yaml() {
    let (server, _ipam) = populated().await;
    let k = Kubectl::new(&server);

    let pools = k.ok(&["get", "ippools"]).await;
    assert_eq!(
        header(&pools),
        ["NAME", "CIDR", "BLOCK SIZE", "DISABLED", "AGE"],
        "{pools}"
    );
    assert!(pools.contains("default-ipv4-ippool") && pools.contains("10.244.0.0/24"));

    let blocks = k.ok(&["get", "ipamblocks"]).await;
    assert_eq!(
        header(&blocks),
        ["NAME", "CIDR", "AFFINITY", "AGE"],
        "{blocks}"
    );
    // The node's block, whichever the per-node walk picked: the name is the CIDR spelled
    // with dashes.
    let row: Vec<&str> = blocks.lines().nth(1).unwrap().split_whitespace().collect();
    let cidr = row[1];
    assert!(
        cidr.starts_with("10.244.0.") && cidr.ends_with("/26"),
        "{blocks}"
    );
    assert_eq!(row[0], cidr.replace(['.', '/'], "-"), "{blocks}");
    assert_eq!(row[2], "host:node-1", "{blocks}");

    let affs = k.ok(&["get", "blockaffinities", "-o", "yaml"]).await;
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

    let handles = k.ok(&["get", "ipamhandles"]).await;
    assert_eq!(header(&handles), ["NAME", "AGE"], "{handles}");
    assert!(handles.contains("k8s-pod-network.aaa") && handles.contains("k8s-pod-network.bbb"));

    let on_node = k
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
    let elsewhere = k
        .run(&[
            "get",
            "blockaffinities",
            "-l",
            "crd.projectcalico.org/node=node-2",
        ])
        .await;
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("No resources found"));

    let missing = k.run(&["get", "ipamhandle", "nope"]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}

fn write(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
}

/// An object (kubectl's YAML of it) as JSON without its `metadata.resourceVersion`.
fn without_resource_version(yaml: &str) -> String {
    let mut object: serde_json::Value = serde_norway::from_str(yaml).unwrap();
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    object.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_preconditions_are_refused() {
    let (server, ipam) = populated().await;
    let k = Kubectl::new(&server);
    let name = "k8s-pod-network.aaa";
    let url = format!("/apis/crd.projectcalico.org/v1/ipamhandles/{name}");
    let rv_path = [
        "get",
        "ipamhandle",
        name,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ];
    let stale = k.ok(&rv_path).await;
    let old_yaml = k.ok(&["get", "ipamhandle", name, "-o", "yaml"]).await;

    // Someone writes the handle: the resourceVersion kubectl read is now stale.
    let store = ipam.store();
    let current = store.get::<IpamHandle>(name).await.unwrap();
    store
        .update(name, current.value.clone(), &current.revision)
        .await
        .unwrap();
    let fresh = k.ok(&rv_path).await;
    assert_ne!(stale, fresh);

    let body = |rv: &str| {
        format!(
            r#"{{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{{"resourceVersion":"{rv}"}}}}"#
        )
    };
    write(&k.path("stale.json"), &body(&stale));
    let refused = k
        .run(&[
            "delete",
            "--raw",
            &url,
            "-f",
            k.path("stale.json").to_str().unwrap(),
        ])
        .await;
    assert!(!refused.status.success(), "a stale delete succeeded");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Precondition failed") || err.contains("Conflict"),
        "{err}"
    );
    k.ok(&["get", "ipamhandle", name]).await;

    // A replace from the stale copy is refused too (409), and changes nothing.
    write(&k.path("old.yaml"), &old_yaml);
    let replaced = k
        .run(&[
            "replace",
            "--validate=false",
            "-f",
            k.path("old.yaml").to_str().unwrap(),
        ])
        .await;
    assert!(!replaced.status.success(), "a stale replace succeeded");
    assert!(
        String::from_utf8_lossy(&replaced.stderr).contains("the object has been modified"),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert_eq!(k.ok(&rv_path).await, fresh);

    // A PUT of a copy without any resourceVersion is refused (422), as the real server
    // refuses it (kubectl's own replace fills the version in; `--raw` sends the file).
    write(
        &k.path("unversioned.json"),
        &without_resource_version(&old_yaml),
    );
    let replaced = k
        .run(&[
            "replace",
            "--raw",
            &url,
            "-f",
            k.path("unversioned.json").to_str().unwrap(),
        ])
        .await;
    assert!(!replaced.status.success(), "an unversioned PUT succeeded");
    let err = String::from_utf8_lossy(&replaced.stderr);
    assert!(err.contains("must be specified for an update"), "{err}");
    assert_eq!(k.ok(&rv_path).await, fresh);

    // With the current resourceVersion the delete goes through.
    write(&k.path("fresh.json"), &body(&fresh));
    k.ok(&[
        "delete",
        "--raw",
        &url,
        "-f",
        k.path("fresh.json").to_str().unwrap(),
    ])
    .await;
    let gone = k.run(&["get", "ipamhandle", name]).await;
    assert!(!gone.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_a_new_object() {
    let (server, ipam) = populated().await;
    let k = Kubectl::new(&server);
    let watch = k.run(&[
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_follow_the_api_rules() {
    let (server, _ipam) = populated().await;
    let k = Kubectl::new(&server);

    // Merge patch (kubectl patch --type merge) changes the spec, seen in the printer columns.
    k.ok(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ])
    .await;
    let pools = k.ok(&["get", "ippools", "--no-headers"]).await;
    assert!(pools.contains("true"), "{pools}");
    // Strategic merge patch is not defined for custom resources: 415.
    let smp = k
        .run(&[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{}}"#,
        ])
        .await;
    assert!(!smp.status.success());
    let smp_err = String::from_utf8_lossy(&smp.stderr);
    assert!(
        smp_err.contains("UnsupportedMediaType") || smp_err.contains("unknown format"),
        "{smp_err}"
    );

    // Labels are derived from the spec; a label the datastore cannot keep is refused (422).
    let label = k
        .run(&["label", "ipamhandle", "k8s-pod-network.aaa", "team=x"])
        .await;
    assert!(!label.status.success(), "an unstorable label was accepted");
    assert!(String::from_utf8_lossy(&label.stderr).contains("is invalid"));

    // Create: 201, then AlreadyExists; a malformed spec is Invalid.
    let handle = r#"{"apiVersion":"crd.projectcalico.org/v1","kind":"IPAMHandle",
        "metadata":{"name":"made-by-kubectl"},"spec":{"handleID":"made-by-kubectl","block":{}}}"#;
    write(&k.path("h.json"), handle);
    let file = k.path("h.json");
    let create = ["create", "--validate=false", "-f", file.to_str().unwrap()];
    k.ok(&create).await;
    let again = k.run(&create).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"));
    write(
        &k.path("bad.json"),
        &handle.replace(r#""block":{}"#, r#""block":7"#),
    );
    let bad = k
        .run(&[
            "create",
            "--validate=false",
            "-f",
            k.path("bad.json").to_str().unwrap(),
        ])
        .await;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is invalid"));

    // Paged lists: one object per page still lists all three handles.
    let paged = k
        .ok(&["get", "ipamhandles", "--chunk-size=1", "-o", "name"])
        .await;
    assert_eq!(paged.lines().count(), 3, "{paged}");
}
