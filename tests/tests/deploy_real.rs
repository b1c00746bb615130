//! `deploy/` as an operator applies it: `kubectl apply -k deploy/ --server-side`, first as a
//! server-side dry run, then for real, on a real kube-apiserver; then the RBAC it grants,
//! asked of the server with `kubectl auth can-i --as=<ServiceAccount>`.
//!
//! No kubelet, scheduler or controller manager runs, so no pod starts: the DaemonSet and the
//! Deployment are checked as objects the server accepted (schema, defaults, admission).

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::process::Output;

use ipam_tests::apiserver::{ADMIN, KubeApiServer};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const PLUGIN: &str = "system:serviceaccount:kube-system:ipam-cni";
const CONTROLLER: &str = "system:serviceaccount:ipam-system:ipam-controller";

/// Runs kubectl as the admin with `args` on a blocking thread.
async fn kubectl(server: &KubeApiServer, args: &[&str]) -> Output {
    let mut cmd = server.kubectl(ADMIN);
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl"))
        .await
        .unwrap()
}

/// Runs kubectl as the admin and returns stdout; a non-zero exit or a warning fails.
async fn ok(server: &KubeApiServer, args: &[&str]) -> String {
    let out = kubectl(server, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    // The server warns of pod security violations and deprecated fields; there must be none.
    assert!(
        !stderr.contains("Warning"),
        "kubectl {args:?} warned: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_apply_and_grant_only_what_each_needs() {
    let server = KubeApiServer::start().await;
    applies_as_a_dry_run_then_for_real(&server).await;
    the_plugin_may_do_what_it_needs_and_no_more(&server).await;
    the_controller_may_do_what_it_needs_and_no_more(&server).await;
}

async fn applies_as_a_dry_run_then_for_real(server: &KubeApiServer) {
    // A dry run persists nothing, so objects in a namespace it would create are refused
    // ("namespaces not found"); the Namespace goes first, for real.
    let namespace = format!("{DEPLOY}/namespace.yaml");
    ok(server, &["apply", "--server-side", "-f", &namespace]).await;
    let dry = ok(
        server,
        &["apply", "-k", DEPLOY, "--server-side", "--dry-run=server"],
    )
    .await;
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/ippools.crd.projectcalico.org",
        "daemonset.apps/ipam-cni",
        "deployment.apps/ipam-controller",
        "clusterrole.rbac.authorization.k8s.io/ipam-controller",
        "role.rbac.authorization.k8s.io/ipam-controller-leader-election",
    ] {
        assert!(
            dry.contains(&format!("{object} serverside-applied (server dry run)")),
            "{object} missing from the dry run: {dry}"
        );
    }
    let after_dry = kubectl(
        server,
        &["get", "daemonset", "ipam-cni", "-n", "kube-system"],
    )
    .await;
    assert!(
        !after_dry.status.success(),
        "the dry run created the DaemonSet"
    );

    let real = ok(server, &["apply", "-k", DEPLOY, "--server-side"]).await;
    assert!(!real.contains("dry run"), "{real}");
    let objects = ok(
        server,
        &[
            "get",
            "-n",
            "kube-system",
            "daemonset,serviceaccount,configmap",
            "-o",
            "name",
        ],
    )
    .await;
    for object in [
        "daemonset.apps/ipam-cni",
        "serviceaccount/ipam-cni",
        "configmap/ipam-cni-config-",
    ] {
        assert!(objects.contains(object), "{object} not in {objects}");
    }
    let controller = ok(
        server,
        &[
            "get",
            "-n",
            "ipam-system",
            "deployment/ipam-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}",
        ],
    )
    .await;
    for flag in [
        "--grace=",
        "--interval=",
        "--metrics-listen=",
        "--lease-namespace=$(POD_NAMESPACE)",
    ] {
        assert!(controller.contains(flag), "{controller}");
    }
    the_daemonset_mounts_the_generated_conflist(server).await;
}

/// The DaemonSet names the ConfigMap kustomize generated (its name has a hash suffix).
async fn the_daemonset_mounts_the_generated_conflist(server: &KubeApiServer) {
    let volume = ok(
        server,
        &[
            "get",
            "-n",
            "kube-system",
            "daemonset/ipam-cni",
            "-o",
            "jsonpath={.spec.template.spec.volumes[?(@.name==\"cni-config\")].configMap.name}",
        ],
    )
    .await;
    let conflist = ok(
        server,
        &[
            "get",
            "-n",
            "kube-system",
            "configmap",
            volume.trim(),
            "-o",
            "jsonpath={.data.10-ipam\\.conflist}",
        ],
    )
    .await;
    let on_disk = std::fs::read_to_string(format!("{DEPLOY}/10-ipam.conflist")).unwrap();
    assert_eq!(conflist.trim(), on_disk.trim());
}

/// Whether `user` may `verb` `resource` (in `namespace`, if given), as the server decides.
async fn can(server: &KubeApiServer, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource];
    let as_user = format!("--as={user}");
    args.push(&as_user);
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    let out = kubectl(server, &args).await;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match (out.status.code(), said.as_str()) {
        (Some(0), "yes") => true,
        (Some(1), "no") => false,
        _ => panic!(
            "kubectl {args:?}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn assert_grants(server: &KubeApiServer, user: &str, cases: &[(&str, &str, &str, bool)]) {
    for &(verb, resource, ns, allowed) in cases {
        assert_eq!(
            can(server, user, verb, resource, ns).await,
            allowed,
            "{user} {verb} {resource} in {ns:?}"
        );
    }
}

const IPAM: &str = ".crd.projectcalico.org";

async fn the_plugin_may_do_what_it_needs_and_no_more(server: &KubeApiServer) {
    let r = |plural: &str| format!("{plural}{IPAM}");
    let (blocks, handles, pools) = (r("ipamblocks"), r("ipamhandles"), r("ippools"));
    assert_grants(
        server,
        PLUGIN,
        &[
            ("create", &blocks, "", true),
            ("update", &blocks, "", true),
            ("delete", &handles, "", true),
            ("list", &pools, "", true),
            ("get", "nodes", "", true),
            ("get", "namespaces", "", true),
            ("delete", &pools, "", false),
            ("create", &pools, "", false),
            ("watch", &blocks, "", false),
            ("patch", &blocks, "", false),
            ("get", "secrets", "kube-system", false),
            ("list", "pods", "", false),
            ("update", "nodes", "", false),
        ],
    )
    .await;
}

async fn the_controller_may_do_what_it_needs_and_no_more(server: &KubeApiServer) {
    let r = |plural: &str| format!("{plural}{IPAM}");
    let (blocks, affinities, handles) = (r("ipamblocks"), r("blockaffinities"), r("ipamhandles"));
    let (pools, config) = (r("ippools"), r("ipamconfigs"));
    let leases = "leases.coordination.k8s.io";
    assert_grants(
        server,
        CONTROLLER,
        &[
            ("watch", "pods", "", true),
            ("list", "pods", "", true),
            ("get", "nodes", "", true),
            ("watch", "nodes", "", true),
            ("watch", &blocks, "", true),
            ("update", &blocks, "", true),
            ("delete", &blocks, "", true),
            ("delete", &affinities, "", true),
            ("update", &handles, "", true),
            ("delete", &handles, "", true),
            ("watch", &pools, "", true),
            ("get", &config, "", true),
            ("get", leases, "ipam-system", true),
            ("create", leases, "ipam-system", true),
            ("update", leases, "ipam-system", true),
            ("delete", &pools, "", false),
            ("update", &pools, "", false),
            ("create", &blocks, "", false),
            ("create", &handles, "", false),
            ("update", &config, "", false),
            ("delete", "pods", "", false),
            ("update", "nodes", "", false),
            ("get", "secrets", "ipam-system", false),
            ("list", "secrets", "", false),
            ("delete", leases, "ipam-system", false),
            ("create", leases, "kube-system", false),
            ("get", leases, "default", false),
        ],
    )
    .await;
}
