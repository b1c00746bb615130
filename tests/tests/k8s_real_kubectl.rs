//! The kubectl built by `scripts/build-peers` against a real kube-apiserver: the checks of
//! `ipam_tests::kubectl_suite`, which `k8s_kubectl.rs` runs against the project's own
//! server (printer columns, YAML, label selectors, stale preconditions refused, watch,
//! patch, create, paging), plus `deploy/crds.yaml` and `deploy/rbac.yaml` applied with
//! kubectl and the RBAC they grant.
//!
//! One server for the file; each check starts from a clean slate holding what
//! `Ipam<KubeStore>` made.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use ipam_core::{AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, NodeName, StoreError};
use ipam_k8s::KubeStore;
use ipam_tests::apiserver::{ADMIN, CNI, KubeApiServer, NOBODY};
use ipam_tests::kubectl_suite::{self as suite, Server, Target, stderr};

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
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A clean slate holding what [`suite::populate`] makes.
async fn populate(server: &KubeApiServer) -> Ipam<KubeStore> {
    server.delete_all_objects().await;
    suite::populate(server.store(ADMIN).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_a_real_api_server() {
    let server = KubeApiServer::start().await;

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

    let target = Target::new(Server::Real, &server.kubectl(ADMIN));
    populate(&server).await;
    suite::get_shows_printer_columns_and_yaml(&target).await;
    suite::stale_preconditions_are_refused(&target, &populate(&server).await).await;
    suite::watch_streams_a_new_object(&target, &populate(&server).await).await;
    populate(&server).await;
    suite::writes_follow_the_api_rules(&target).await;
    rbac_grants_what_deploy_says(&server).await;
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
