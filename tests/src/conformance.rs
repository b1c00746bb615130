//! The datastore conformance suite: one set of checks for every `Datastore`.
//!
//! Each check is a public async function that takes a fresh, empty store and panics on the
//! first broken promise of the contract in `ipam_core::store`. [`datastore_conformance!`]
//! expands to one `#[tokio::test]` per check for a given store constructor, so a backend
//! runs the whole suite with one line:
//!
//! ```text
//! mod sqlite {
//!     // The expression is evaluated once per test; the second element is kept alive for
//!     // the test's duration (a temporary directory, a server guard, or `()`).
//!     ipam_tests::datastore_conformance!((ipam_core::MemoryStore::new(), ()));
//! }
//! ```
//!
//! [`datastore_conformance!`]: crate::datastore_conformance

// A failed unwrap here is a failed check, which is the point of this module.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

use ipam_core::{
    AffinityState, AllocationAttribute, BlockAffinity, BlockCidr, Datastore, IpPool, IpReservation,
    IpamBlock, IpamConfig, IpamHandle, OpCounts, Resource, Revision, Scope, StoreError, Stored,
};

mod commit;
mod listing;
mod load;

pub use commit::{commit_is_all_or_nothing, release_commit_is_all_or_nothing};
pub use listing::{node_scoped_listing, node_snapshot_matches_reads, operation_counters};
pub use load::{
    concurrent_counter_counts_every_success, concurrent_writers_one_winner_per_round, full_block,
    large_blocks_round_trip,
};

/// The one list of conformance checks but `operation_counters`: calls the macro named in
/// brackets with the tokens after it followed by the checks' names, comma-separated
/// (`conformance_checks!([my_macro] server;)` is `my_macro!(server; crud_every_kind, ...)`).
#[macro_export]
macro_rules! conformance_checks {
    ([$($callback:tt)+] $($args:tt)*) => {
        $($callback)+! {$($args)*
            crud_every_kind,
            revisions_never_repeat,
            cas_conflicts_leave_the_object_alone,
            soft_deleted_objects_are_absent,
            node_scoped_listing,
            concurrent_writers_one_winner_per_round,
            concurrent_counter_counts_every_success,
            large_blocks_round_trip,
            node_snapshot_matches_reads,
            commit_is_all_or_nothing,
            release_commit_is_all_or_nothing,
        }
    };
}

/// Expands to one `#[tokio::test]` per conformance check. `$make` is an expression, evaluated
/// in each test (it may `.await`), giving `(store, guard)`: a fresh empty store and whatever
/// must live as long as it. `@without_counters $make` runs every check except
/// `operation_counters`, for a store whose round trips differ by design (KubeStore).
#[macro_export]
macro_rules! datastore_conformance {
    ($make:expr) => {
        $crate::datastore_conformance!(@without_counters $make);
        $crate::datastore_conformance!(@checks $make; operation_counters);
    };
    (@without_counters $make:expr) => {
        $crate::conformance_checks!([$crate::datastore_conformance] @checks $make;);
    };
    (@checks $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (store, _guard) = $make;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

/// The error a failing call must return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    NotFound,
    AlreadyExists,
    Conflict,
}

/// Asserts `r` failed with `want` for an object of kind `R` named `name`.
#[track_caller]
fn assert_err<R: Resource, T: Debug>(r: Result<T, StoreError>, want: Want, name: &str) {
    let (kind, got_name) = match (&r, want) {
        (Err(StoreError::NotFound { kind, name }), Want::NotFound)
        | (Err(StoreError::AlreadyExists { kind, name }), Want::AlreadyExists)
        | (Err(StoreError::Conflict { kind, name }), Want::Conflict) => (*kind, name.as_str()),
        _ => panic!("{} {name:?}: expected {want:?}, got {r:?}", R::KIND),
    };
    assert_eq!((kind, got_name), (R::KIND, name), "error names the object");
}

fn stored<R>(name: &str, revision: &Revision, value: &R) -> Stored<R>
where
    R: Clone,
{
    Stored {
        name: name.to_owned(),
        revision: revision.clone(),
        value: value.clone(),
    }
}

fn block_cidr(s: &str) -> BlockCidr {
    BlockCidr::new(s.parse().expect("test CIDR parses")).expect("test CIDR is a block")
}

fn block(cidr: &str, affinity: Option<&str>) -> (String, IpamBlock) {
    let c = block_cidr(cidr);
    (
        c.name(),
        IpamBlock::new(c, affinity.map(str::to_owned), 1, None),
    )
}

fn affinity(node: &str, cidr: &str, state: AffinityState) -> (String, BlockAffinity) {
    let value = BlockAffinity {
        cidr: cidr.parse().expect("test CIDR parses"),
        node: node.to_owned(),
        state,
        affinity_type: Some("host".to_owned()),
        deleted: false,
        extra: Default::default(),
    };
    (format!("{node}-{}", block_cidr(cidr).name()), value)
}

fn handle_with(name: &str, count: u32) -> IpamHandle {
    let mut h = IpamHandle::new(name);
    h.block.insert("10.0.0.0/26".to_owned(), count);
    h
}

/// The whole get/create/update/delete cycle on one kind: `a` then `b` under `name`.
pub async fn crud_kind<D: Datastore, R: Resource + PartialEq>(store: &D, name: &str, a: R, b: R) {
    assert_err::<R, _>(store.get::<R>(name).await, Want::NotFound, name);
    assert!(store.list::<R>(Scope::All).await.unwrap().is_empty());
    let r1 = store.create(name, a.clone()).await.unwrap();
    assert_eq!(store.get::<R>(name).await.unwrap(), stored(name, &r1, &a));
    assert_eq!(
        store.list::<R>(Scope::All).await.unwrap(),
        vec![stored(name, &r1, &a)]
    );
    assert_err::<R, _>(
        store.create(name, b.clone()).await,
        Want::AlreadyExists,
        name,
    );
    let r2 = store.update(name, b.clone(), &r1).await.unwrap();
    assert_ne!(r1, r2, "an update moves the revision");
    assert_eq!(store.get::<R>(name).await.unwrap(), stored(name, &r2, &b));
    assert_err::<R, _>(
        store.update(name, a.clone(), &r1).await,
        Want::Conflict,
        name,
    );
    assert_err::<R, _>(store.delete::<R>(name, &r1).await, Want::Conflict, name);
    assert_eq!(store.get::<R>(name).await.unwrap(), stored(name, &r2, &b));
    store.delete::<R>(name, &r2).await.unwrap();
    assert_err::<R, _>(store.get::<R>(name).await, Want::NotFound, name);
    assert!(store.list::<R>(Scope::All).await.unwrap().is_empty());
    assert_err::<R, _>(store.delete::<R>(name, &r2).await, Want::NotFound, name);
    assert_err::<R, _>(
        store.update(name, b.clone(), &r2).await,
        Want::NotFound,
        name,
    );
    let r3 = store.create(name, a.clone()).await.unwrap();
    assert!(
        r3 != r1 && r3 != r2,
        "a re-created object gets a new revision"
    );
    assert_eq!(store.get::<R>(name).await.unwrap(), stored(name, &r3, &a));
}

/// get/list/create/update/delete, NotFound, AlreadyExists and Conflict on all six kinds.
pub async fn crud_every_kind<D: Datastore>(store: D) {
    let s = &store;
    let mut pool_b = IpPool::new("10.0.0.0/16".parse().unwrap());
    pool_b.block_size = 24;
    pool_b.disabled = true;
    crud_kind(
        s,
        "pool-1",
        IpPool::new("10.0.0.0/16".parse().unwrap()),
        pool_b,
    )
    .await;
    let (name, a) = block("10.0.0.0/26", Some("host:n1"));
    let mut b = a.clone();
    b.assign(2, &AllocationAttribute::default(), |_| false);
    crud_kind(s, &name, a, b).await;
    let (name, a) = affinity("n1", "10.0.0.0/26", AffinityState::Pending);
    let b = BlockAffinity {
        state: AffinityState::Confirmed,
        ..a.clone()
    };
    crud_kind(s, &name, a, b).await;
    crud_kind(s, "h1", IpamHandle::new("h1"), handle_with("h1", 3)).await;
    let strict = IpamConfig {
        strict_affinity: true,
        ..IpamConfig::default()
    };
    crud_kind(s, IpamConfig::NAME, IpamConfig::default(), strict).await;
    let r = |c: &[&str]| IpReservation {
        reserved_cidrs: c.iter().map(|s| s.to_string()).collect(),
    };
    crud_kind(s, "res", r(&["10.0.0.1"]), r(&["10.0.0.1", "10.1.0.0/24"])).await;
}

/// Every successful write returns a revision never seen before, across objects and across a
/// delete and re-create of the same name; reads return the revision of the last write.
pub async fn revisions_never_repeat<D: Datastore>(store: D) {
    let mut seen = HashSet::new();
    let mut fresh = |r: Revision| {
        assert!(seen.insert(r.clone()), "revision {r} handed out twice");
        r
    };
    for round in 0..5u32 {
        for name in ["a", "b"] {
            let r = fresh(store.create(name, handle_with(name, round)).await.unwrap());
            let r = fresh(store.update(name, handle_with(name, 99), &r).await.unwrap());
            let mut dead = handle_with(name, 99);
            dead.deleted = true;
            let r = fresh(store.update(name, dead, &r).await.unwrap());
            store.delete::<IpamHandle>(name, &r).await.unwrap();
        }
        // Another kind with the same name shares nothing but must not reuse numbers either.
        let r = fresh(
            store
                .create("a", IpPool::new("10.0.0.0/16".parse().unwrap()))
                .await
                .unwrap(),
        );
        assert_eq!(store.get::<IpPool>("a").await.unwrap().revision, r);
        store.delete::<IpPool>("a", &r).await.unwrap();
    }
    assert_eq!(seen.len(), 5 * 7);
}

/// Two writers that read the same revision: the first wins, the second conflicts on both
/// update and delete, and the loser's value is nowhere.
pub async fn cas_conflicts_leave_the_object_alone<D: Datastore>(store: D) {
    let r0 = store.create("h", handle_with("h", 1)).await.unwrap();
    let first = store.get::<IpamHandle>("h").await.unwrap();
    let second = store.get::<IpamHandle>("h").await.unwrap();
    assert_eq!(first.revision, r0);
    let r1 = store
        .update("h", handle_with("h", 2), &first.revision)
        .await
        .unwrap();
    assert_err::<IpamHandle, _>(
        store
            .update("h", handle_with("h", 3), &second.revision)
            .await,
        Want::Conflict,
        "h",
    );
    assert_err::<IpamHandle, _>(
        store.delete::<IpamHandle>("h", &second.revision).await,
        Want::Conflict,
        "h",
    );
    assert_err::<IpamHandle, _>(
        store
            .update(
                "h",
                handle_with("h", 3),
                &Revision("no-such-revision".into()),
            )
            .await,
        Want::Conflict,
        "h",
    );
    assert_eq!(
        store.get::<IpamHandle>("h").await.unwrap(),
        stored("h", &r1, &handle_with("h", 2))
    );
    // A revision of another object is no key to this one.
    let other = store
        .create("other", handle_with("other", 1))
        .await
        .unwrap();
    assert_err::<IpamHandle, _>(
        store.delete::<IpamHandle>("h", &other).await,
        Want::Conflict,
        "h",
    );
    store.delete::<IpamHandle>("h", &r1).await.unwrap();
}

/// Soft-deleted objects of one kind: absent to get, list and node lists; an update of one
/// is NotFound; create replaces it; delete removes it only at its own revision.
pub async fn soft_deleted_kind<D: Datastore, R: Resource + PartialEq>(
    store: &D,
    name: &str,
    live: R,
    dead: R,
    node: Option<&str>,
) {
    assert!(dead.is_deleted() && !live.is_deleted());
    let listed = async || {
        let all = store.list::<R>(Scope::All).await.unwrap();
        let on_node = match node {
            Some(n) => store.list::<R>(Scope::Node(n)).await.unwrap(),
            None => Vec::new(),
        };
        (all, on_node)
    };
    let r1 = store.create(name, live.clone()).await.unwrap();
    let (all, on_node) = listed().await;
    assert_eq!(all.len(), 1);
    assert_eq!(on_node.len(), usize::from(node.is_some()));
    let r2 = store.update(name, dead.clone(), &r1).await.unwrap();
    assert_err::<R, _>(store.get::<R>(name).await, Want::NotFound, name);
    assert_eq!(
        listed().await,
        (vec![], vec![]),
        "soft-deleted objects are not listed"
    );
    assert_err::<R, _>(
        store.update(name, live.clone(), &r2).await,
        Want::NotFound,
        name,
    );
    // Create replaces it, with a new revision; the soft-deleted revision no longer deletes.
    let r3 = store.create(name, live.clone()).await.unwrap();
    assert!(r3 != r1 && r3 != r2);
    assert_eq!(
        store.get::<R>(name).await.unwrap(),
        stored(name, &r3, &live)
    );
    assert_err::<R, _>(store.delete::<R>(name, &r2).await, Want::Conflict, name);
    // The usual end of life: soft-delete, then delete at the soft-deleted revision.
    let r4 = store.update(name, dead, &r3).await.unwrap();
    assert_err::<R, _>(store.delete::<R>(name, &r3).await, Want::Conflict, name);
    store.delete::<R>(name, &r4).await.unwrap();
    assert_err::<R, _>(store.delete::<R>(name, &r4).await, Want::NotFound, name);
    assert_err::<R, _>(store.get::<R>(name).await, Want::NotFound, name);
}

/// [`soft_deleted_kind`] for the three kinds that carry a `deleted` flag.
pub async fn soft_deleted_objects_are_absent<D: Datastore>(store: D) {
    let (name, live) = block("10.0.0.0/26", Some("host:n1"));
    let dead = IpamBlock {
        deleted: true,
        ..live.clone()
    };
    soft_deleted_kind(&store, &name, live, dead, Some("n1")).await;
    let (name, live) = affinity("n1", "10.0.0.0/26", AffinityState::Confirmed);
    let dead = BlockAffinity {
        deleted: true,
        ..live.clone()
    };
    soft_deleted_kind(&store, &name, live, dead, Some("n1")).await;
    let live = handle_with("h", 1);
    let dead = IpamHandle {
        deleted: true,
        ..live.clone()
    };
    soft_deleted_kind(&store, "h", live, dead, None).await;
}

async fn names<D: Datastore, R: Resource>(store: &D, scope: Scope<'_>) -> Vec<String> {
    let list = store.list::<R>(scope).await.unwrap();
    list.into_iter().map(|s| s.name).collect()
}
