//! The real `kubectl` (Debian's, from `PATH`) against the project's own Kubernetes-style
//! API server: the checks of `ipam_tests::kubectl_suite` (printer columns, YAML, label
//! selectors, stale preconditions refused, watch, patch, create, paging), which
//! `k8s_real_kubectl.rs` runs against a real kube-apiserver.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use ipam_apiserver::{Running, ServeOptions};
use ipam_core::{Ipam, MemoryStore};
use ipam_k8s::KubeStore;
use ipam_tests::kubectl_suite::{self as suite, Server, Target};

/// A server over memory holding what [`suite::populate`] made, and kubectl for it.
struct Fixture {
    _server: Running,
    _config: tempfile::TempDir,
    ipam: Ipam<KubeStore>,
    target: Target,
}

async fn fixture() -> Fixture {
    let server = Running::start(
        "127.0.0.1:0",
        MemoryStore::new(),
        ServeOptions::writable_for_tests(),
    )
    .await
    .unwrap();
    let config = tempfile::tempdir().unwrap();
    let kubeconfig = config.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n\
         users:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: local\n  context:\n    \
         cluster: local\n    user: nobody\ncurrent-context: local\n",
        server.url()
    );
    std::fs::write(&kubeconfig, text).unwrap();
    let mut kubectl = Command::new(find_kubectl());
    kubectl
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(config.path().join("cache"))
        .arg("--request-timeout=20s");
    let ipam = suite::populate(KubeStore::for_url(&server.url()).unwrap()).await;
    Fixture {
        _server: server,
        _config: config,
        ipam,
        target: Target::new(Server::Ours, &kubectl),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_shows_printer_columns_and_yaml() {
    let f = fixture().await;
    suite::get_shows_printer_columns_and_yaml(&f.target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_preconditions_are_refused() {
    let f = fixture().await;
    suite::stale_preconditions_are_refused(&f.target, &f.ipam).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_a_new_object() {
    let f = fixture().await;
    suite::watch_streams_a_new_object(&f.target, &f.ipam).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_follow_the_api_rules() {
    let f = fixture().await;
    suite::writes_follow_the_api_rules(&f.target).await;
}
