//! `EtcdStore` beyond the conformance suite, against a real etcd: unreachable and silent
//! servers, a restart under a live client, the one-transaction block-and-handle write, and
//! the round trips of an allocation.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use ipam_core::{
    AllocationAttribute, AutoAssignArgs, BlockCidr, Datastore, HandleId, IpPool, Ipam, IpamBlock,
    IpamHandle, Kind, NodeName, OpCounts, Scope, StoreError, Stored,
};
use ipam_etcd::{EtcdConfig, EtcdStore, HandleWrite};
use ipam_tests::etcd;

/// Far above the configured timeouts: only a hang would reach it.
const HANG: Duration = Duration::from_secs(20);

fn short(endpoint: String) -> EtcdConfig {
    EtcdConfig::new([endpoint]).with_timeouts(Duration::from_millis(500), Duration::from_secs(1))
}

/// Asserts a get and an `auto_assign` on `store` fail as Unavailable (and do not hang).
async fn assert_unavailable(store: EtcdStore) {
    let started = Instant::now();
    let got = tokio::time::timeout(HANG, store.get::<IpPool>("p"))
        .await
        .expect("a request to an unreachable etcd hung");
    assert!(
        matches!(got, Err(StoreError::Unavailable { .. })),
        "expected Unavailable, got {got:?}"
    );
    eprintln!("failed as unavailable after {:?}", started.elapsed());
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    let args = AutoAssignArgs::new(NodeName::new("n1").unwrap(), 1, 0);
    let err = tokio::time::timeout(HANG, ipam.auto_assign(&args))
        .await
        .expect("auto_assign on an unreachable etcd hung")
        .unwrap_err();
    assert!(
        err.is_retryable(),
        "auto_assign's error is retryable: {err}"
    );
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = EtcdStore::connect(short(format!("http://127.0.0.1:{port}")))
        .await
        .expect("connecting sends nothing without credentials");
    assert_unavailable(store).await;
}

#[tokio::test]
async fn silent_server_is_unavailable_after_the_request_timeout() {
    // Accepts TCP connections (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let store = EtcdStore::connect(short(url)).await.unwrap();
    assert_unavailable(store).await;
    drop(silent);
}

#[tokio::test]
async fn credentials_against_an_unreachable_etcd_fail_at_connect() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = short(format!("http://127.0.0.1:{port}")).with_credentials("u", "p");
    let got = tokio::time::timeout(HANG, EtcdStore::connect(config))
        .await
        .expect("connect hung");
    match got {
        Err(e) => assert!(e.is_retryable(), "retryable: {e}"),
        Ok(_) => panic!("authenticating against nothing succeeded"),
    }
}

#[tokio::test]
async fn missing_tls_files_are_refused() {
    let mut config = EtcdConfig::new(["https://127.0.0.1:2379"]);
    config.ca_cert_file = Some("/nonexistent/ca.pem".into());
    match EtcdStore::connect(config).await {
        Err(ipam_etcd::Error::ReadTlsFile { path, .. }) => {
            assert_eq!(path, std::path::Path::new("/nonexistent/ca.pem"))
        }
        Err(e) => panic!("expected ReadTlsFile, got {e}"),
        Ok(_) => panic!("connected without a CA file"),
    }
}

#[tokio::test]
async fn a_client_outlives_an_etcd_restart() {
    let (store, mut server) = etcd::fresh().await;
    let rev = store.create("h", IpamHandle::new("h")).await.unwrap();
    server.kill();
    let got = tokio::time::timeout(HANG, store.get::<IpamHandle>("h"))
        .await
        .expect("hung while etcd was down");
    assert!(
        matches!(got, Err(StoreError::Unavailable { .. })),
        "{got:?}"
    );
    server.restart().unwrap();
    // The same client reconnects on its own; the data survived.
    let mut again = Err(StoreError::not_found::<IpamHandle>("h"));
    for _ in 0..50 {
        again = store.get::<IpamHandle>("h").await;
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.unwrap().revision, rev);
}

fn block_on(cidr: &str, node: &str) -> (String, IpamBlock) {
    let c = BlockCidr::new(cidr.parse().unwrap()).unwrap();
    (
        c.name(),
        IpamBlock::new(c, Some(format!("host:{node}")), 1, None),
    )
}

fn assigned(mut b: Stored<IpamBlock>, handle: &str) -> Stored<IpamBlock> {
    let attr = AllocationAttribute {
        handle_id: Some(handle.to_owned()),
        ..AllocationAttribute::default()
    };
    assert_eq!(b.value.assign(1, &attr, |_| false).len(), 1);
    b
}

fn counting(handle: &str, block: &IpamBlock, n: u32) -> IpamHandle {
    let mut h = IpamHandle::new(handle);
    h.block.insert(block.cidr.to_string(), n);
    h
}

#[tokio::test]
async fn block_and_handle_are_written_together_or_not_at_all() {
    let (store, _server) = etcd::fresh().await;
    let (name, b) = block_on("10.0.0.0/26", "n1");
    store.create(&name, b).await.unwrap();
    let block = store.get::<IpamBlock>(&name).await.unwrap();

    // One transaction, one round trip: both carry the new revision.
    let next = assigned(block.clone(), "h1");
    let write = HandleWrite {
        name: "h1".into(),
        value: counting("h1", &next.value, 1),
        revision: None,
    };
    let before = store.op_counts();
    let rev = store.write_assignment(write, next.clone()).await.unwrap();
    let cost = store.op_counts().since(&before);
    assert_eq!(
        cost,
        OpCounts {
            updates: 1,
            ..OpCounts::default()
        }
    );
    let h = store.get::<IpamHandle>("h1").await.unwrap();
    let b = store.get::<IpamBlock>(&name).await.unwrap();
    assert_eq!((&h.revision, &b.revision), (&rev, &rev));
    assert_eq!(b.value, next.value);
    assert_eq!(
        store.list::<IpamBlock>(Scope::Node("n1")).await.unwrap(),
        vec![b.clone()]
    );

    // A stale block: nothing written, not even the new handle.
    let stale = assigned(block.clone(), "h2");
    let write = HandleWrite {
        name: "h2".into(),
        value: counting("h2", &stale.value, 1),
        revision: None,
    };
    let err = store.write_assignment(write, stale).await.unwrap_err();
    assert_refused(&err, Kind::IpamBlock, "conflict");
    assert!(
        store
            .get::<IpamHandle>("h2")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // A handle that exists already (create expected): nothing written, the block unchanged.
    let next = assigned(b.clone(), "h1");
    let write = HandleWrite {
        name: "h1".into(),
        value: counting("h1", &next.value, 2),
        revision: None,
    };
    let err = store
        .write_assignment(write, next.clone())
        .await
        .unwrap_err();
    assert_refused(&err, Kind::IpamHandle, "exists");
    assert_eq!(store.get::<IpamBlock>(&name).await.unwrap(), b);

    // A stale handle revision: the same.
    let write = HandleWrite {
        name: "h1".into(),
        value: counting("h1", &next.value, 2),
        revision: Some(ipam_core::Revision::from_u64(1)),
    };
    let err = store
        .write_assignment(write, next.clone())
        .await
        .unwrap_err();
    assert_refused(&err, Kind::IpamHandle, "conflict");
    assert_eq!(store.get::<IpamHandle>("h1").await.unwrap(), h);
    assert_eq!(store.get::<IpamBlock>(&name).await.unwrap(), b);

    // Both current: written.
    let write = HandleWrite {
        name: "h1".into(),
        value: counting("h1", &next.value, 2),
        revision: Some(h.revision.clone()),
    };
    store.write_assignment(write, next).await.unwrap();
    assert_eq!(
        store.get::<IpamHandle>("h1").await.unwrap().value.total(),
        2
    );
}

#[tokio::test]
async fn assignment_write_replaces_a_soft_deleted_handle_and_follows_a_moved_block() {
    let (store, _server) = etcd::fresh().await;
    let r = store.create("h", IpamHandle::new("h")).await.unwrap();
    let dead = IpamHandle {
        deleted: true,
        ..IpamHandle::new("h")
    };
    store.update("h", dead, &r).await.unwrap();
    let (name, b) = block_on("10.0.0.64/26", "n1");
    store.create(&name, b).await.unwrap();
    let mut block = assigned(store.get::<IpamBlock>(&name).await.unwrap(), "h");
    block.value.affinity = Some("host:n2".into());
    let write = HandleWrite {
        name: "h".into(),
        value: counting("h", &block.value, 1),
        revision: None,
    };
    let before = store.op_counts();
    store.write_assignment(write, block).await.unwrap();
    // Moving a block costs a second round trip (the first finds the old node).
    assert_eq!(store.op_counts().since(&before).writes(), 1);
    assert_eq!(store.op_counts().since(&before).reads(), 1);
    assert_eq!(store.get::<IpamHandle>("h").await.unwrap().value.total(), 1);
    assert!(
        store
            .list::<IpamBlock>(Scope::Node("n1"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list::<IpamBlock>(Scope::Node("n2"))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The refusal names the object that was refused; callers check that nothing was written.
fn assert_refused(err: &StoreError, kind: Kind, what: &str) {
    let got = match err {
        StoreError::Conflict { kind, .. } => (*kind, "conflict"),
        StoreError::AlreadyExists { kind, .. } => (*kind, "exists"),
        StoreError::NotFound { kind, .. } => (*kind, "missing"),
        e => panic!("unexpected {e}"),
    };
    assert_eq!(got, (kind, what), "{err}");
}

#[tokio::test]
async fn allocation_round_trips_through_ipam() {
    let (store, _server) = etcd::fresh().await;
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    ipam.create_pool("p", IpPool::new("10.1.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    let node = NodeName::new("n1").unwrap();
    let add = |i: u32| {
        AutoAssignArgs::new(node.clone(), 1, 0)
            .with_handle(HandleId::new(format!("net.c{i}")).unwrap())
    };
    ipam.auto_assign(&add(0)).await.unwrap();
    let before = ipam.store().op_counts();
    ipam.auto_assign(&add(1)).await.unwrap();
    let cost = ipam.store().op_counts().since(&before);
    // The node snapshot is one read; the handle and the block are one transaction.
    assert_eq!((cost.reads(), cost.writes()), (1, 1), "{cost:?}");
}

/// A release by handle reads the config and the handle in one transaction and its blocks in
/// another, then writes every block and the handle's delete in one.
#[tokio::test]
async fn release_by_handle_is_two_reads_and_one_write() {
    let (store, _server) = etcd::fresh().await;
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    ipam.create_pool("p", IpPool::new("10.1.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    let handle = HandleId::new("net.c0").unwrap();
    let add = AutoAssignArgs::new(NodeName::new("n1").unwrap(), 1, 0).with_handle(handle.clone());
    let got = ipam.auto_assign(&add).await.unwrap();
    let before = ipam.store().op_counts();
    assert_eq!(ipam.release_by_handle(&handle).await.unwrap(), got.ipv4);
    let cost = ipam.store().op_counts().since(&before);
    assert_eq!((cost.reads(), cost.writes()), (2, 1), "{cost:?}");
    assert!(ipam.ips_by_handle(&handle).await.is_err());
    let addr = got.ipv4[0].addr();
    assert!(
        ipam.get_assignment_attributes(addr)
            .await
            .unwrap()
            .is_none()
    );
}

/// A handle counting addresses in more blocks than one etcd transaction takes (70 blocks:
/// 141 compares, over etcd's default `--max-txn-ops` of 128) is released object by object,
/// completely.
#[tokio::test]
async fn a_release_wider_than_one_transaction_goes_object_by_object() {
    let (store, _server) = etcd::fresh().await;
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    let mut pool = IpPool::new("10.1.0.0/24".parse().unwrap());
    pool.block_size = 32;
    ipam.create_pool("p", pool).await.unwrap();
    let handle = HandleId::new("net.wide").unwrap();
    let n = 70;
    assert!(n + 1 > ipam.store().max_commit_writes());
    let count = u32::try_from(n).unwrap();
    let mut add =
        AutoAssignArgs::new(NodeName::new("n1").unwrap(), count, 0).with_handle(handle.clone());
    // One address per block: the request needs more blocks than the default limit of 20.
    add.max_blocks_per_host = Some(count);
    let got = ipam.auto_assign(&add).await.unwrap();
    assert_eq!(got.ipv4.len(), n);
    let mut released = ipam.release_by_handle(&handle).await.unwrap();
    released.sort();
    let mut want = got.ipv4.clone();
    want.sort();
    assert_eq!(released, want);
    assert!(ipam.ips_by_handle(&handle).await.is_err());
    let snapshot = ipam_core::check::Snapshot::read(ipam.store())
        .await
        .unwrap();
    let report = ipam_core::check::check(
        &snapshot,
        &ipam_core::check::Live::default(),
        time::OffsetDateTime::now_utc(),
    );
    assert_eq!(report.totals.allocations, 0, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}
