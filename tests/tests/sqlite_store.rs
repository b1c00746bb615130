//! SQLite-specific promises beyond the conformance suite: the cost of the steady-state
//! allocation path, and CAS across separate connections to one file.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};

use ipam_core::{
    AutoAssignArgs, Datastore, HandleId, IpPool, Ipam, NodeName, NodeSnapshot, OpCounts, Resource,
    Revision, Scope, StoreError, Stored,
};
use ipam_sqlite::SqliteStore;

fn fresh() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("ipam.db")).unwrap();
    (store, dir)
}

fn args(node: &str, handle: &str) -> AutoAssignArgs {
    AutoAssignArgs::new(NodeName::new(node).unwrap(), 1, 0)
        .with_handle(HandleId::new(handle).unwrap())
}

#[tokio::test]
async fn node_snapshot_is_one_round_trip() {
    let (store, _dir) = fresh();
    let before = store.op_counts();
    store.node_snapshot("n1").await.unwrap();
    let cost = store.op_counts().since(&before);
    assert_eq!(
        cost,
        OpCounts {
            lists: 1,
            ..OpCounts::default()
        }
    );
}

/// A node that owns a block with room: one read transaction (the node snapshot) and one
/// write transaction (create the handle and update the block together) per allocation; a
/// release by handle is one read transaction (config, handle, its blocks) and one write
/// transaction (the block and the handle's delete together).
#[tokio::test]
async fn steady_state_auto_assign_costs_one_read_and_one_write() {
    let (store, _dir) = fresh();
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    ipam.create_pool("pool", IpPool::new("10.244.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    // The first allocation claims the block; the steady state starts after it.
    ipam.auto_assign(&args("n1", "warm")).await.unwrap();
    for i in 0..5 {
        let handle = format!("pod-{i}");
        let before = ipam.store().op_counts();
        let got = ipam.auto_assign(&args("n1", &handle)).await.unwrap();
        let cost = ipam.store().op_counts().since(&before);
        assert_eq!(got.ipv4.len(), 1);
        // The handle and the block go in one write transaction (Datastore::commit).
        let want = OpCounts {
            lists: 1,
            updates: 1,
            ..OpCounts::default()
        };
        assert_eq!(cost, want, "auto_assign #{i}");

        let before = ipam.store().op_counts();
        ipam.release_by_handle(&HandleId::new(&handle).unwrap())
            .await
            .unwrap();
        let cost = ipam.store().op_counts().since(&before);
        assert_eq!(
            cost,
            OpCounts {
                gets: 1,
                updates: 1,
                ..OpCounts::default()
            },
            "release_by_handle #{i}"
        );
    }
}

/// Several connections to one file, used in turn: the CAS races of the conformance suite
/// then run between connections (SQLite's file locks), not only within one.
struct Connections {
    stores: Vec<SqliteStore>,
    next: AtomicUsize,
    _dir: tempfile::TempDir,
}

impl Connections {
    fn open(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stores = (0..n)
            .map(|_| SqliteStore::open(dir.path().join("ipam.db")).unwrap())
            .collect();
        Connections {
            stores,
            next: AtomicUsize::new(0),
            _dir: dir,
        }
    }

    fn pick(&self) -> &SqliteStore {
        &self.stores[self.next.fetch_add(1, Ordering::Relaxed) % self.stores.len()]
    }
}

impl Datastore for Connections {
    async fn get<R: Resource>(&self, name: &str) -> Result<Stored<R>, StoreError> {
        self.pick().get(name).await
    }

    async fn list<R: Resource>(&self, scope: Scope<'_>) -> Result<Vec<Stored<R>>, StoreError> {
        self.pick().list(scope).await
    }

    async fn create<R: Resource>(&self, name: &str, value: R) -> Result<Revision, StoreError> {
        self.pick().create(name, value).await
    }

    async fn update<R: Resource>(
        &self,
        name: &str,
        value: R,
        revision: &Revision,
    ) -> Result<Revision, StoreError> {
        self.pick().update(name, value, revision).await
    }

    async fn delete<R: Resource>(&self, name: &str, revision: &Revision) -> Result<(), StoreError> {
        self.pick().delete::<R>(name, revision).await
    }

    fn op_counts(&self) -> OpCounts {
        let sum = |f: fn(&OpCounts) -> u64| self.stores.iter().map(|s| f(&s.op_counts())).sum();
        OpCounts {
            gets: sum(|c| c.gets),
            lists: sum(|c| c.lists),
            creates: sum(|c| c.creates),
            updates: sum(|c| c.updates),
            deletes: sum(|c| c.deletes),
        }
    }

    async fn node_snapshot(&self, node: &str) -> Result<NodeSnapshot, StoreError> {
        self.pick().node_snapshot(node).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_per_round_across_connections() {
    ipam_tests::conformance::concurrent_writers_one_winner_per_round(Connections::open(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_across_connections_loses_nothing() {
    ipam_tests::conformance::concurrent_counter_counts_every_success(Connections::open(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_never_repeat_across_connections() {
    ipam_tests::conformance::revisions_never_repeat(Connections::open(3)).await;
}

/// The node snapshot reads only blocks with room: a node that has filled a block does not
/// pay for reading it again on every allocation (the `room` flag and its partial index).
#[tokio::test]
async fn the_node_snapshot_skips_full_blocks() {
    let (store, dir) = fresh();
    let ipam = Ipam::new(store, ipam_core::SystemClock);
    let mut pool = IpPool::new("10.244.0.0/16".parse().unwrap());
    pool.block_size = 30;
    ipam.create_pool("pool", pool).await.unwrap();
    for i in 0..6 {
        ipam.auto_assign(&args("n1", &format!("pod-{i}")))
            .await
            .unwrap();
    }
    // Six addresses in /30 blocks: one full block, one with two free addresses.
    let snap = ipam.store().node_snapshot("n1").await.unwrap();
    assert_eq!(snap.affinities.len(), 2);
    assert_eq!(snap.blocks.len(), 1, "only the block with room is read");
    assert!(snap.blocks[0].value.has_room());
    let conn = rusqlite::Connection::open(dir.path().join("ipam.db")).unwrap();
    let rooms: Vec<Option<i64>> = conn
        .prepare("SELECT room FROM objects WHERE kind = 'IPAMBlock' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rooms.iter().filter(|r| **r == Some(0)).count(),
        1,
        "{rooms:?}"
    );
    assert_eq!(
        rooms.iter().filter(|r| **r == Some(1)).count(),
        1,
        "{rooms:?}"
    );
}

/// The WAL stays short: every plugin process reads the whole WAL when it opens the file, so
/// the store checkpoints it every `WAL_CHECKPOINT_PAGES` pages instead of SQLite's 1,000.
#[tokio::test]
async fn the_wal_stays_short_across_many_writes() {
    let (store, dir) = fresh();
    for i in 0..300 {
        let name = format!("h-{i}");
        store
            .create(&name, ipam_core::IpamHandle::new(&name))
            .await
            .unwrap();
    }
    let wal = std::fs::metadata(dir.path().join("ipam.db-wal"))
        .unwrap()
        .len();
    // A page of 4 KiB plus its 24-byte frame header; one transaction may run past the mark.
    let bound = (ipam_sqlite::WAL_CHECKPOINT_PAGES as u64 + 16) * (4096 + 24) + 32;
    assert!(
        wal <= bound,
        "WAL is {wal} bytes after 300 writes, bound {bound}"
    );
}
