//! The `ipam-controller` binary as an operator runs it: on an embedded SQLite datastore,
//! with a real kube-apiserver's Pods and Nodes; it releases a planted leak, serves
//! `/metrics` on loopback, and on SIGTERM gives its Lease up and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use ipam_core::{IpPool, Ipam};
use ipam_sqlite::SqliteStore;
use ipam_tests::apiserver::{ADMIN, KubeApiServer};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::*;

/// Kills the controller if the test fails before it is stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_releases_serves_and_hands_the_lease_back() {
    let server = KubeApiServer::start().await;
    namespace(&server, "apps").await;
    create_node(&server, "b-a").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ipam.db");
    let ipam = Ipam::new(SqliteStore::open(&db).unwrap(), ipam_core::SystemClock);
    ipam.create_pool("b", IpPool::new("10.91.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    let leak = plant_leak(&ipam, "b", "b-a", "b-ghost").await;

    let addr = free_addr();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_ipam-controller"))
            .arg(format!("--datastore=sqlite:{}", db.display()))
            .arg(format!(
                "--kubeconfig={}",
                server.kubeconfig(ADMIN).display()
            ))
            .args(["--grace=2s", "--interval=1s", "--lease-duration=3s"])
            .args(["--lease-name=binary", "--identity=binary-1"])
            .arg(format!("--metrics-listen={addr}"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("the planted leak released", || async {
        holder(&ipam, leak).await.is_none()
    })
    .await;
    until("/metrics counts the release", || async {
        let Ok(conn) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        drop(conn);
        let (code, body) = get_metrics(addr, None).await;
        code == 200 && body.contains("ipam_gc_releases_total{reason=\"pod_deleted\"} 1")
    })
    .await;

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let leases = Api::<Lease>::namespaced(server.client(ADMIN).await, "kube-system");
    let lease = leases.get("binary").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "the lease was kept"
    );
}

/// A loopback address with a port free a moment ago.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
