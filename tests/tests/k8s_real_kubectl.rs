//! The kubectl built by `scripts/build-peers` against a real kube-apiserver: the checks of
//! `k8s_kubectl.rs` (printer columns, YAML, label selectors, stale preconditions refused,
//! watch, patch, create, paging), plus `deploy/crds.yaml` and `deploy/rbac.yaml` applied
//! with kubectl and the RBAC they grant. Where the real server answers differently from the
//! project's own server (`ipam_k8s::Running`) the check asserts the real answer and says so.
//!
//! One server for the file; each check starts from a clean slate holding what
//! `Ipam<KubeStore>` made.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use ipam_core::{
    AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, IpamHandle, NodeName, StoreError,
};
use ipam_k8s::KubeStore;
use ipam_tests::apiserver::{ADMIN, CNI, KubeApiServer, NOBODY};

/// Runs kubectl as `user` with `args` on a blocking thread.
async fn run(server: &KubeApiServer, user: &str, args: &[&str]) -> Output {
    let mut cmd = server.kubectl(user);
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl"))
        .await
        .unwrap()
}

/// Runs kubectl as the admin and returns stdout, failing the check on a non-zero exit.
async fn ok(server: &KubeApiServer, args: &[&str]) -> String {
    let out = run(server, ADMIN, args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
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

/// A clean slate holding what `Ipam<KubeStore>` made: a pool, a node's block and two handles.
async fn populate(server: &KubeApiServer) -> Ipam<KubeStore> {
    server.delete_all_objects().await;
    let ipam = Ipam::new(server.store(ADMIN).await, ipam_core::SystemClock);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_a_real_api_server() {
    let server = KubeApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();

    // The manifests as a user applies them; the CRDs become Established.
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds.yaml");
    ok(&server, &["apply", "-f", crds]).await;
    ok(
        &server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
    )
    .await;
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
    ok(&server, &["apply", "-f", rbac]).await;

    get_shows_printer_columns_and_yaml(&server).await;
    stale_preconditions_are_refused(&server, tmp.path()).await;
    watch_streams_a_new_object(&server).await;
    writes_follow_the_api_rules(&server, tmp.path()).await;
    rbac_grants_what_deploy_says(&server).await;
}

async fn get_shows_printer_columns_and_yaml(k: &KubeApiServer) {
    let _ipam = populate(k).await;
    let pools = ok(k, &["get", "ippools"]).await;
    assert_eq!(
        header(&pools),
        ["NAME", "CIDR", "BLOCK SIZE", "DISABLED", "AGE"],
        "{pools}"
    );
    assert!(pools.contains("default-ipv4-ippool") && pools.contains("10.244.0.0/24"));

    let blocks = ok(k, &["get", "ipamblocks"]).await;
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

    let affs = ok(k, &["get", "blockaffinities", "-o", "yaml"]).await;
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

    let handles = ok(k, &["get", "ipamhandles"]).await;
    assert_eq!(header(&handles), ["NAME", "AGE"], "{handles}");
    assert!(handles.contains("k8s-pod-network.aaa") && handles.contains("k8s-pod-network.bbb"));

    let on_node = ok(
        k,
        &[
            "get",
            "blockaffinities",
            "-l",
            "crd.projectcalico.org/node=node-1",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(on_node.lines().count(), 1, "{on_node}");
    let elsewhere = run(
        k,
        ADMIN,
        &[
            "get",
            "blockaffinities",
            "-l",
            "crd.projectcalico.org/node=node-2",
        ],
    )
    .await;
    assert!(stderr(&elsewhere).contains("No resources found"));

    let missing = run(k, ADMIN, &["get", "ipamhandle", "nope"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("NotFound"),
        "{}",
        stderr(&missing)
    );
}

async fn stale_preconditions_are_refused(k: &KubeApiServer, dir: &Path) {
    let ipam = populate(k).await;
    let name = "k8s-pod-network.aaa";
    let url = format!("/apis/crd.projectcalico.org/v1/ipamhandles/{name}");
    let rv_path = [
        "get",
        "ipamhandle",
        name,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ];
    let stale = ok(k, &rv_path).await;
    let old_yaml = ok(k, &["get", "ipamhandle", name, "-o", "yaml"]).await;

    // Difference: a real server does not write an update that changes nothing, so the
    // resourceVersion stays (the project's server writes it and moves it on).
    let store = ipam.store();
    let current = store.get::<IpamHandle>(name).await.unwrap();
    let same = store
        .update(name, current.value.clone(), &current.revision)
        .await
        .unwrap();
    assert_eq!(same, current.revision, "a no-op update moved the revision");
    assert_eq!(ok(k, &rv_path).await, stale);

    // Someone writes the handle: the resourceVersion kubectl read is now stale.
    ok(
        k,
        &[
            "patch",
            "ipamhandle",
            name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"block":{"10.9.9.0/26":1}}}"#,
        ],
    )
    .await;
    let fresh = ok(k, &rv_path).await;
    assert_ne!(stale, fresh);

    let body = |rv: &str| {
        format!(
            r#"{{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{{"resourceVersion":"{rv}"}}}}"#
        )
    };
    write(&dir.join("stale.json"), &body(&stale));
    let stale_file = dir.join("stale.json");
    let refused = run(
        k,
        ADMIN,
        &["delete", "--raw", &url, "-f", stale_file.to_str().unwrap()],
    )
    .await;
    assert!(!refused.status.success(), "a stale delete succeeded");
    let err = stderr(&refused);
    assert!(
        err.contains("Precondition failed") || err.contains("Conflict"),
        "{err}"
    );
    ok(k, &["get", "ipamhandle", name]).await;

    let old = dir.join("old.yaml");
    write(&old, &old_yaml);
    let replaced = run(
        k,
        ADMIN,
        &["replace", "--validate=false", "-f", old.to_str().unwrap()],
    )
    .await;
    assert!(!replaced.status.success(), "a stale replace succeeded");
    assert!(
        stderr(&replaced).contains("the object has been modified"),
        "{}",
        stderr(&replaced)
    );
    assert_eq!(ok(k, &rv_path).await, fresh);

    // A PUT of a copy without any resourceVersion: custom resources take no unconditional
    // update (kubectl's own replace fills the version in; `--raw` sends the file).
    let unversioned = dir.join("unversioned.json");
    let mut object: serde_json::Value = serde_norway::from_str(&old_yaml).unwrap();
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    write(&unversioned, &object.to_string());
    let replaced = run(
        k,
        ADMIN,
        &[
            "replace",
            "--raw",
            &url,
            "-f",
            unversioned.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!replaced.status.success(), "an unversioned PUT succeeded");
    assert!(
        stderr(&replaced).contains("must be specified for an update"),
        "{}",
        stderr(&replaced)
    );
    assert_eq!(ok(k, &rv_path).await, fresh);

    let fresh_file = dir.join("fresh.json");
    write(&fresh_file, &body(&fresh));
    ok(
        k,
        &["delete", "--raw", &url, "-f", fresh_file.to_str().unwrap()],
    )
    .await;
    let gone = run(k, ADMIN, &["get", "ipamhandle", name]).await;
    assert!(!gone.status.success());
}

async fn watch_streams_a_new_object(k: &KubeApiServer) {
    let ipam = populate(k).await;
    let watch = run(
        k,
        ADMIN,
        &[
            "get",
            "--raw",
            "/apis/crd.projectcalico.org/v1/ipamhandles?watch=true&timeoutSeconds=3",
        ],
    );
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
    // etcd's RequestWatchProgress, which Debian's etcd 3.4.23 lacks.
    let out = run(
        k,
        ADMIN,
        &[
            "get",
            "--raw",
            "/apis/crd.projectcalico.org/v1/ipamhandles?watch=true&timeoutSeconds=2\
             &allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        ],
    )
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

async fn writes_follow_the_api_rules(k: &KubeApiServer, dir: &Path) {
    let _ipam = populate(k).await;
    ok(
        k,
        &[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"disabled":true}}"#,
        ],
    )
    .await;
    let pools = ok(k, &["get", "ippools", "--no-headers"]).await;
    assert!(pools.contains("true"), "{pools}");
    let smp = run(
        k,
        ADMIN,
        &[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{}}"#,
        ],
    )
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
    let label = run(
        k,
        ADMIN,
        &["label", "ipamhandle", "k8s-pod-network.aaa", "team=x"],
    )
    .await;
    assert!(label.status.success(), "{}", stderr(&label));
    let labels = ok(
        k,
        &[
            "get",
            "ipamhandle",
            "k8s-pod-network.aaa",
            "-o",
            "jsonpath={.metadata.labels}",
        ],
    )
    .await;
    assert!(labels.contains("\"team\":\"x\""), "{labels}");

    let handle = r#"{"apiVersion":"crd.projectcalico.org/v1","kind":"IPAMHandle",
        "metadata":{"name":"made-by-kubectl"},"spec":{"handleID":"made-by-kubectl","block":{}}}"#;
    let file = dir.join("h.json");
    write(&file, handle);
    let create = ["create", "--validate=false", "-f", file.to_str().unwrap()];
    ok(k, &create).await;
    let again = run(k, ADMIN, &create).await;
    assert!(
        stderr(&again).contains("AlreadyExists"),
        "{}",
        stderr(&again)
    );
    let bad_file = dir.join("bad.json");
    write(&bad_file, &handle.replace(r#""block":{}"#, r#""block":7"#));
    let bad = run(
        k,
        ADMIN,
        &[
            "create",
            "--validate=false",
            "-f",
            bad_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(stderr(&bad).contains("is invalid"), "{}", stderr(&bad));

    let paged = ok(k, &["get", "ipamhandles", "--chunk-size=1", "-o", "name"]).await;
    assert_eq!(paged.lines().count(), 3, "{paged}");
}

/// `deploy/rbac.yaml`'s `ipam-cni` ClusterRole bound to the plugin's user lets it allocate
/// but not manage pools; a user with no binding is refused everything.
async fn rbac_grants_what_deploy_says(k: &KubeApiServer) {
    let _ipam = populate(k).await;
    ok(
        k,
        &[
            "create",
            "clusterrolebinding",
            "ipam-cni-user",
            "--clusterrole=ipam-cni",
            "--user=ipam-cni",
        ],
    )
    .await;
    // Role bindings take effect once the authorizer's cache has them: bounded wait.
    let cni = k.store(CNI).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cni.list::<IpPool>(ipam_core::Scope::All).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ipam-cni binding never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ipam = Ipam::new(cni, ipam_core::SystemClock);
    let args = AutoAssignArgs::new(NodeName::new("node-2").unwrap(), 1, 0)
        .with_handle(HandleId::new("k8s-pod-network.ccc").unwrap());
    ipam.auto_assign(&args).await.unwrap();
    let refused = ipam
        .create_pool("other", IpPool::new("10.245.0.0/24".parse().unwrap()))
        .await;
    assert!(refused.is_err(), "ipam-cni created a pool");

    let nobody = k.store(NOBODY).await;
    match nobody.list::<IpPool>(ipam_core::Scope::All).await {
        Err(StoreError::Denied { source }) => {
            assert!(source.to_string().contains("forbidden"), "{source}")
        }
        other => panic!("nobody listed pools: {other:?}"),
    }
    let out = run(k, NOBODY, &["get", "ipamblocks"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Forbidden"), "{}", stderr(&out));
}
