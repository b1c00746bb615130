//! The kubeconfig `ipamctl install-cni` writes, used on a real kube-apiserver: with the
//! shipped conflist, the ServiceAccount token and CA as the kubelet mounts them, and the
//! server from the kubelet's variables, the plugin's store reaches the server as the
//! `ipam-cni` ServiceAccount, with exactly the rights `deploy/rbac.yaml` grants it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipam_tests::apiserver::{ADMIN, KubeApiServer};

const PLUGIN_USER: &str = "system:serviceaccount:kube-system:ipam-cni";
const PLUGIN_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
];
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

fn ipamctl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .arg("--datastore")
        .arg(format!("kubernetes:{}", kubeconfig.display()))
        .args(args)
        .env_remove("IPAM_DATASTORE")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The CA file the harness's kubeconfig names.
fn ca_of(server: &KubeApiServer) -> PathBuf {
    let text = std::fs::read_to_string(server.kubeconfig(ADMIN)).unwrap();
    let config: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let ca = &config["clusters"][0]["cluster"]["certificate-authority"];
    PathBuf::from(ca.as_str().unwrap())
}

/// Runs the installer as the init container would, with `sa` as the ServiceAccount mount and
/// `node` holding the host's two CNI directories.
fn install(server: &KubeApiServer, sa: &Path, node: &Path) -> String {
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    for d in ["opt/cni/bin", "etc/cni/net.d"] {
        std::fs::create_dir_all(node.join(d)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .arg("install-cni")
        .arg("--plugin")
        .arg(env!("CARGO_BIN_EXE_ipamctl"))
        .arg("--conflist")
        .arg(format!("{DEPLOY}/10-ipam.conflist"))
        .arg("--bin-dir")
        .arg(node.join("opt/cni/bin"))
        .arg("--conf-dir")
        .arg(node.join("etc/cni/net.d"))
        .arg("--service-account-dir")
        .arg(sa)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", port)
        .env("KUBERNETES_NODE_NAME", "node-installed")
        .output()
        .unwrap();
    ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_kubeconfig_acts_as_the_plugins_service_account() {
    let server = KubeApiServer::start_with_users(&[(PLUGIN_USER, PLUGIN_GROUPS)]).await;
    server.install_crds().await;
    let admin = server.kubeconfig(ADMIN);
    let rbac = format!("{DEPLOY}/rbac.yaml");
    let applied = server
        .kubectl(ADMIN)
        .args(["apply", "-f", &rbac])
        .output()
        .unwrap();
    ok(applied);
    let pool = [
        "pool",
        "create",
        "default-ipv4-ippool",
        "--cidr",
        "10.244.0.0/16",
    ];
    ok(ipamctl(&admin, &pool));

    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("serviceaccount");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), server.token(PLUGIN_USER)).unwrap();
    std::fs::copy(ca_of(&server), sa.join("ca.crt")).unwrap();
    let node = dir.path().join("host");
    install(&server, &sa, &node);

    // The shipped conflist names the kubeconfig where the installer puts it on the host.
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.join("etc/cni/net.d/10-ipam.conflist")).unwrap(),
    )
    .unwrap();
    let named = conflist["plugins"][0]["kubernetes"]["kubeconfig"]
        .as_str()
        .unwrap();
    assert_eq!(named, "/etc/cni/net.d/ipam-kubeconfig");
    // And the node's name in place of the placeholder, as the DaemonSet passes it.
    assert_eq!(conflist["plugins"][0]["nodename"], "node-installed");
    let kubeconfig = node.join(named.trim_start_matches('/'));

    let pools: serde_json::Value =
        serde_json::from_str(&ok(ipamctl(&kubeconfig, &["pool", "list", "-o", "json"]))).unwrap();
    assert_eq!(pools["items"][0]["metadata"]["name"], "default-ipv4-ippool");
    // It is the ServiceAccount, not the admin: the plugin's role creates no pools.
    let refused = ipamctl(
        &kubeconfig,
        &["pool", "create", "x", "--cidr", "10.9.0.0/16"],
    );
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(PLUGIN_USER) || said.contains("denied"),
        "{said}"
    );
}
