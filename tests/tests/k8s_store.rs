//! `KubeStore` against the Kubernetes-style API server: exact round-trip counts, two
//! `Ipam<KubeStore>` clients racing on one block (a real HTTP 409 and a retry), and the
//! round trips of a steady-state allocation.

// A failed unwrap is a failed check.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipam_apiserver::{Running, ServeOptions};
use ipam_core::store::Op;
use ipam_core::testing::{Hooked, Hooks};
use ipam_core::{
    AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, IpamBlock, IpamHandle, Kind, MemoryStore,
    NodeName, OpCounts, Resource, Scope, StoreError,
};
use ipam_k8s::KubeStore;
use tokio::sync::Semaphore;

async fn server() -> Running {
    Running::start(
        "127.0.0.1:0",
        MemoryStore::new(),
        ServeOptions::writable_for_tests(),
    )
    .await
    .expect("start the API server on 127.0.0.1")
}

fn client(server: &Running) -> KubeStore {
    KubeStore::for_url(&server.url()).expect("a client for the local server")
}

/// Holds a store's first block update until the gate opens, and counts the conflicts its
/// updates get back.
struct Pause {
    gate: Arc<Semaphore>,
    held: AtomicU64,
    conflicts: AtomicU64,
}

impl Hooks for Pause {
    async fn before_write(&self, op: Op, kind: Kind, _name: &str) -> Result<(), StoreError> {
        let first = op == Op::Update
            && kind == IpamBlock::KIND
            && self.held.fetch_add(1, Ordering::SeqCst) == 0;
        if first {
            let permit = self.gate.acquire().await.expect("gate open");
            permit.forget();
        }
        Ok(())
    }

    fn after_write(&self, op: Op, _kind: Kind, error: Option<&StoreError>) {
        if op == Op::Update && matches!(error, Some(StoreError::Conflict { .. })) {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn args(node: &str, handle: &str) -> AutoAssignArgs {
    AutoAssignArgs::new(NodeName::new(node).unwrap(), 1, 0)
        .with_handle(HandleId::new(handle).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_round_trips_of_each_call() {
    let server = server().await;
    let store = client(&server);
    let start = store.op_counts();
    for i in 0..3 {
        let name = format!("h{i}");
        store.create(&name, IpamHandle::new(&name)).await.unwrap();
    }
    let h = store.get::<IpamHandle>("h0").await.unwrap();
    store.get::<IpamHandle>("missing").await.unwrap_err();
    assert_eq!(store.list::<IpamHandle>(Scope::All).await.unwrap().len(), 3);
    let r = store
        .update("h0", IpamHandle::new("h0"), &h.revision)
        .await
        .unwrap();
    let stale = store.update("h0", IpamHandle::new("h0"), &h.revision).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    store.delete::<IpamHandle>("h0", &r).await.unwrap();
    // A refused create costs a read too: the API's 409 does not say whether the object
    // in the way is soft-deleted.
    let dup = store.create("h1", IpamHandle::new("h1")).await;
    assert!(
        matches!(dup, Err(StoreError::AlreadyExists { .. })),
        "{dup:?}"
    );
    let counts = store.op_counts().since(&start);
    let want = OpCounts {
        gets: 3,
        lists: 1,
        creates: 4,
        updates: 2,
        deletes: 1,
    };
    assert_eq!(counts, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_limit_and_continue() {
    let server = server().await;
    let store = client(&server);
    // More than one page of 500.
    for i in 0..1203 {
        let name = format!("h{i:05}");
        store.create(&name, IpamHandle::new(&name)).await.unwrap();
    }
    let before = store.op_counts();
    let all = store.list::<IpamHandle>(Scope::All).await.unwrap();
    assert_eq!(all.len(), 1203);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name));
    assert_eq!(
        store.op_counts().since(&before).lists,
        3,
        "3 pages of at most 500"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_racing_on_one_block_both_win_distinct_addresses() {
    let server = server().await;
    let a = Ipam::new(client(&server), ipam_core::SystemClock);
    let gate = Arc::new(Semaphore::new(0));
    let b = Arc::new(Ipam::new(
        Hooked::new(
            client(&server),
            Pause {
                gate: gate.clone(),
                held: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
            },
        ),
        ipam_core::SystemClock,
    ));
    a.create_pool("pool", IpPool::new("10.244.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    // A claims the node's block; its steady state is one block update per allocation.
    let first = a.auto_assign(&args("n1", "pod-0")).await.unwrap().ipv4[0];

    // B reads the block and stops before writing it ...
    let b2 = b.clone();
    let racer = tokio::spawn(async move { b2.auto_assign(&args("n1", "pod-b")).await });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.store().hooks.held.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never reached its block update"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // ... while A allocates from the same block, moving its resourceVersion.
    let before = a.store().op_counts();
    let second = a.auto_assign(&args("n1", "pod-a")).await.unwrap().ipv4[0];
    let steady = a.store().op_counts().since(&before);
    gate.add_permits(1);
    let got_b = racer.await.unwrap().unwrap().ipv4[0];

    assert!(
        b.store().hooks.conflicts.load(Ordering::SeqCst) >= 1,
        "B's stale block update was not refused with 409"
    );
    let mut all = vec![first.addr(), second.addr(), got_b.addr()];
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        3,
        "addresses handed out twice: {first} {second} {got_b}"
    );
    eprintln!(
        "KubeStore steady-state allocation: {} reads ({} gets, {} lists), {} writes ({} creates, {} updates)",
        steady.reads(),
        steady.gets,
        steady.lists,
        steady.writes(),
        steady.creates,
        steady.updates
    );
    assert_eq!(
        steady.writes(),
        2,
        "block update and handle create: {steady:?}"
    );
}
