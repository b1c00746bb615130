//! The heavy checks of the suite: concurrent writers on one object, and the largest blocks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipam_core::{AllocationAttribute, Datastore, IpamBlock, IpamHandle, Scope, StoreError};
use tokio::sync::Barrier;

use super::{block, handle_with, stored};

/// N writers read the same revision of one object in each round, then all write it: exactly
/// one wins each round, every other gets Conflict, and the object counts the rounds.
pub async fn concurrent_writers_one_winner_per_round<D: Datastore + 'static>(store: D) {
    const RACERS: usize = 8;
    const ROUNDS: u32 = 20;
    let store = Arc::new(store);
    store
        .create("counter", handle_with("counter", 0))
        .await
        .unwrap();
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut won = Vec::new();
                for round in 0..ROUNDS {
                    let cur = store.get::<IpamHandle>("counter").await.unwrap();
                    assert_eq!(
                        cur.value.total(),
                        u64::from(round),
                        "everyone reads the round's value"
                    );
                    barrier.wait().await;
                    let next = handle_with("counter", round + 1);
                    match store.update("counter", next, &cur.revision).await {
                        Ok(_) => won.push(round),
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("round {round}: {e}"),
                    }
                    barrier.wait().await;
                }
                won
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("racers finish within two minutes");
    let mut wins = vec![0; ROUNDS as usize];
    for won in all {
        for round in won.expect("racer task did not panic") {
            wins[round as usize] += 1;
        }
    }
    assert_eq!(
        wins,
        vec![1; ROUNDS as usize],
        "exactly one winner per round"
    );
    let last = store.get::<IpamHandle>("counter").await.unwrap();
    assert_eq!(last.value.total(), u64::from(ROUNDS));
}

/// N writers each add to one counter with read-modify-CAS retries: the final count is the
/// number of successful writes, so no write was lost or applied twice.
pub async fn concurrent_counter_counts_every_success<D: Datastore + 'static>(store: D) {
    const WRITERS: u32 = 8;
    const EACH: u32 = 25;
    let store = Arc::new(store);
    store
        .create("counter", handle_with("counter", 0))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut done, mut conflicts) = (0u32, 0u32);
                for _attempt in 0..EACH * 1000 {
                    if done == EACH {
                        break;
                    }
                    let cur = store.get::<IpamHandle>("counter").await.unwrap();
                    let next = handle_with("counter", cur.value.total() as u32 + 1);
                    match store.update("counter", next, &cur.revision).await {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (done, conflicts)
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("writers finish within two minutes");
    let successes: u32 = results
        .into_iter()
        .map(|r| r.expect("writer task did not panic").0)
        .sum();
    assert_eq!(successes, WRITERS * EACH, "every writer got its writes in");
    let last = store.get::<IpamHandle>("counter").await.unwrap();
    assert_eq!(last.value.total(), u64::from(successes));
}

/// A block of the largest size, every ordinal held by its own handle with full Calico-style
/// attributes.
pub fn full_block(cidr: &str, node: &str) -> (String, IpamBlock) {
    let (name, mut b) = block(cidr, Some(&format!("host:{node}")));
    b.affinity_claim_time = Some("2024-05-01T10:00:00Z".into());
    for i in 0..b.allocations.len() {
        let attr = AllocationAttribute {
            handle_id: Some(format!("k8s-pod-network.{i:064x}")),
            secondary: BTreeMap::from([
                ("namespace".into(), "default".into()),
                ("node".into(), node.into()),
                ("pod".into(), format!("web-7d9c8b6f5-{i:05}")),
                (
                    "timestamp".into(),
                    "2024-05-01 10:00:00.123456789 +0000 UTC".into(),
                ),
            ]),
            released_at: None,
            ..Default::default()
        };
        assert_eq!(b.assign(1, &attr, |_| false).len(), 1);
    }
    assert!(b.unallocated.is_empty() && b.allocations.iter().all(Option::is_some));
    (name, b)
}

/// A fully allocated /20 IPv4 block and /116 IPv6 block (4096 ordinals each) come back
/// equal from get, list and node list, after create and after an update.
pub async fn large_blocks_round_trip<D: Datastore>(store: D) {
    for cidr in ["10.96.0.0/20", "fd00:1::/116"] {
        let (name, b) = full_block(cidr, "big");
        let r1 = store.create(&name, b.clone()).await.unwrap();
        assert!(
            store.get::<IpamBlock>(&name).await.unwrap() == stored(&name, &r1, &b),
            "{cidr} after create"
        );
        let mut half = b.clone();
        for handle in (0..2048).map(|i| format!("k8s-pod-network.{i:064x}")) {
            half.release_handle(&handle, ipam_core::Cooldown::None);
        }
        assert_eq!(half.in_use(), 2048);
        let r2 = store.update(&name, half.clone(), &r1).await.unwrap();
        let got = store.list::<IpamBlock>(Scope::Node("big")).await.unwrap();
        assert!(
            got.iter().any(|s| *s == stored(&name, &r2, &half)),
            "{cidr} in the node list"
        );
        assert!(
            store.get::<IpamBlock>(&name).await.unwrap() == stored(&name, &r2, &half),
            "{cidr} after update"
        );
    }
    assert_eq!(store.list::<IpamBlock>(Scope::All).await.unwrap().len(), 2);
}
