//! `ipamctl pool list -o yaml | kubectl apply -f -` on a real kube-apiserver with the
//! project's CRDs: the pools come back from the server as they went in.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use serde_json::Value;
use support::Fixture;

/// Pools with every option `pool create` has, set away from its default.
const POOLS: [&[&str]; 3] = [
    &[
        "pods",
        "--cidr",
        "10.244.0.0/16",
        "--block-size",
        "24",
        "--nat-outgoing",
    ],
    &[
        "lb",
        "--cidr",
        "192.0.2.0/24",
        "--allowed-uses",
        "LoadBalancer",
        "--assignment-mode",
        "manual",
    ],
    &[
        "v6",
        "--cidr",
        "fd00:10::/64",
        "--disabled",
        "--node-selector",
        "zone == 'a'",
    ],
];

fn kubectl_apply(server: &KubeApiServer, manifest: &str) -> Output {
    let mut child = server
        .kubectl(ADMIN)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(manifest.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `ipamctl pool list -o json` on the server, as the admin.
fn pools_on_the_server(server: &KubeApiServer) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .arg("--datastore")
        .arg(format!("kubernetes:{}", server.kubeconfig(ADMIN).display()))
        .args(["pool", "list", "-o", "json"])
        .env_remove("IPAM_DATASTORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_list_yaml_applies_back_with_kubectl() {
    let f = Fixture::new();
    for args in POOLS {
        f.expect(0, &[&["pool", "create"][..], args].concat());
    }
    let yaml = f.expect(0, &["pool", "list", "-o", "yaml"]);
    let local = f.json(0, &["pool", "list"]);
    assert_eq!(local["items"].as_array().unwrap().len(), POOLS.len());

    let server = KubeApiServer::start().await;
    server.install_crds().await;
    // kubectl and ipamctl are processes of their own; the server needs no runtime thread.
    let out = kubectl_apply(&server, &yaml);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply refused the output of pool list -o yaml: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["pods", "lb", "v6"] {
        assert!(
            said.contains(&format!("ippool.crd.projectcalico.org/{name} created")),
            "{said}"
        );
    }
    assert_eq!(pools_on_the_server(&server), local, "{yaml}");
}
