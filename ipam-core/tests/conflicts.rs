//! Conflict storms: many tasks on several nodes allocate and release through a store that
//! fails 30% of compare-and-swap writes, and the result is still exact. And only conflicts
//! are retried: any other datastore error surfaces at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use ipam_core::store::Op;
use ipam_core::testing::{ConflictInjector, Hooked, Hooks, check_invariants};
use ipam_core::{
    Datastore, Error, IpamHandle, Kind, MemoryStore, ReleaseOutcome, ReleaseRequest, Scope,
    StoreError,
};

const NODES: usize = 6;
const TASKS_PER_NODE: usize = 3;
const ROUNDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nodes_stay_exact_under_injected_conflicts() {
    let store = ConflictInjector::injecting(MemoryStore::new(), 0.3, 0x5eed);
    let ipam = Arc::new(ipam_core::Ipam::new(store, ipam_core::SystemClock));
    // 1024 addresses in 128 blocks of 8: enough for every task, small enough to share blocks.
    ipam.create_pool("p4", pool("10.8.0.0/22", 29))
        .await
        .unwrap();
    ipam.create_pool("p6", pool("fd08::/118", 125))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..NODES {
        for t in 0..TASKS_PER_NODE {
            let ipam = ipam.clone();
            tasks.push(tokio::spawn(async move {
                let mut kept: Vec<(String, Vec<IpAddr>)> = Vec::new();
                for r in 0..ROUNDS {
                    let h = format!("k8s-pod-network.n{n}-t{t}-r{r}");
                    let got = ipam
                        .auto_assign(&args(&format!("node-{n}"), 1, 1, &h))
                        .await;
                    let got = got.unwrap_or_else(|e| panic!("{h}: {e}"));
                    let ips: Vec<IpAddr> = got.all().map(|n| n.addr()).collect();
                    match r % 3 {
                        0 => {
                            let freed = ipam.release_by_handle(&handle(&h)).await.unwrap();
                            assert_eq!(freed.len(), 2, "{h}");
                        }
                        1 => {
                            let mut reqs = Vec::new();
                            for ip in &ips {
                                let a = ipam.get_assignment_attributes(*ip).await.unwrap().unwrap();
                                assert_eq!(a.handle.as_deref(), Some(h.as_str()));
                                let mut req = ReleaseRequest::new(*ip);
                                req.sequence = a.sequence;
                                req.handle = Some(h.clone());
                                reqs.push(req);
                            }
                            for (ip, outcome) in ipam.release_ips(&reqs).await.unwrap() {
                                assert_eq!(outcome, ReleaseOutcome::Released, "{h} {ip}");
                            }
                        }
                        _ => kept.push((h, ips)),
                    }
                }
                kept
            }));
        }
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.unwrap());
    }
    assert!(
        ipam.store().injected() > 500,
        "too few conflicts to mean anything: {}",
        ipam.store().injected()
    );
    let problems = check_invariants(&ipam.store().inner).await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let mut seen = HashSet::new();
    for (h, ips) in &kept {
        for ip in ips {
            assert!(seen.insert(*ip), "{ip} handed out twice");
            let a = ipam.get_assignment_attributes(*ip).await.unwrap().unwrap();
            assert_eq!(a.handle.as_deref(), Some(h.as_str()), "{ip}");
        }
        let mut by_handle: Vec<IpAddr> = ipam
            .ips_by_handle(&handle(h))
            .await
            .unwrap()
            .iter()
            .map(|n| n.addr())
            .collect();
        by_handle.sort();
        let mut want = ips.clone();
        want.sort();
        assert_eq!(by_handle, want, "{h}");
    }
    // Nothing else is held: every released address really is free.
    let mut held = 0;
    for pool in ipam.utilization(&[]).await.unwrap() {
        held += pool.usage.in_use;
    }
    assert_eq!(held as usize, seen.len());
    let handles = ipam.store().list::<IpamHandle>(Scope::All).await.unwrap();
    assert_eq!(handles.len(), kept.len(), "released handles are deleted");
}

#[tokio::test]
async fn one_allocator_alone_counts_exactly_the_injected_conflicts() {
    let store = ConflictInjector::injecting(MemoryStore::new(), 0.3, 0x5eed);
    let ipam = ipam_core::Ipam::new(store, ipam_core::SystemClock);
    ipam.create_pool("p4", pool("10.9.0.0/24", 29))
        .await
        .unwrap();
    for r in 0..40 {
        let h = format!("k8s-pod-network.alone-{r}");
        ipam.auto_assign(&args("node-0", 1, 0, &h)).await.unwrap();
        if r % 2 == 0 {
            ipam.release_by_handle(&handle(&h)).await.unwrap();
        }
    }
    assert!(ipam.store().injected() > 10, "{}", ipam.store().injected());
    // Nobody else writes, so every conflict is an injected one, counted once. (Among racing
    // tasks the count can be lower than the injections: a delete that finds itself
    // superseded is not retried, so not counted; see `Ipam::conflicts`.)
    assert_eq!(ipam.conflicts(), ipam.store().injected());
}

/// Fails the next update of one kind once, with a conflict or with `Unavailable`, and
/// counts the updates of that kind it is asked for.
struct FailOnce {
    kind: Kind,
    armed: AtomicBool,
    unavailable: bool,
    writes: AtomicU64,
}

impl FailOnce {
    fn new(kind: Kind, unavailable: bool) -> Hooked<MemoryStore, FailOnce> {
        let hooks = FailOnce {
            kind,
            armed: AtomicBool::new(false),
            unavailable,
            writes: AtomicU64::new(0),
        };
        Hooked::new(MemoryStore::new(), hooks)
    }
}

impl Hooks for FailOnce {
    async fn before_write(&self, op: Op, kind: Kind, name: &str) -> Result<(), StoreError> {
        if op != Op::Update || kind != self.kind {
            return Ok(());
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        if !self.armed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        Err(if self.unavailable {
            StoreError::Unavailable {
                source: "injected outage".into(),
            }
        } else {
            StoreError::Conflict {
                kind,
                name: name.to_owned(),
            }
        })
    }
}

/// Allocates once on a fresh node, then arms the wrapper and allocates again: returns the
/// second result and how many block writes it attempted.
async fn second_assign(unavailable: bool) -> (Result<ipam_core::Assigned, Error>, u64) {
    let ipam = ipam_core::Ipam::new(
        FailOnce::new(Kind::IpamBlock, unavailable),
        ipam_core::SystemClock,
    );
    ipam.create_pool("p", pool("10.9.0.0/24", 26))
        .await
        .unwrap();
    ipam.auto_assign(&args("n1", 1, 0, "first")).await.unwrap();
    let store = &ipam.store().hooks;
    store.armed.store(true, Ordering::SeqCst);
    let before = store.writes.load(Ordering::SeqCst);
    let got = ipam.auto_assign(&args("n1", 1, 0, "second")).await;
    let writes = store.writes.load(Ordering::SeqCst) - before;
    let problems = check_invariants(&ipam.store().inner).await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    (got, writes)
}

#[test]
fn a_conflict_is_retried() {
    pollster::block_on(async {
        let (got, writes) = second_assign(false).await;
        let got = got.unwrap();
        assert_eq!(got.ipv4[0].to_string(), "10.9.0.1/26");
        assert_eq!(writes, 2, "the refused block write and its retry");
    });
}

#[test]
fn an_outage_is_not_retried() {
    pollster::block_on(async {
        let (got, writes) = second_assign(true).await;
        match got {
            Err(Error::Store(StoreError::Unavailable { .. })) => {}
            other => panic!("expected the outage to surface, got {other:?}"),
        }
        assert_eq!(writes, 1, "no second try after a non-conflict error");
        let e = Error::Store(StoreError::Unavailable { source: "x".into() });
        assert!(e.is_retryable(), "the caller may try again later");
    });
}

#[test]
fn retries_are_bounded() {
    pollster::block_on(async {
        let store = ConflictInjector::injecting(MemoryStore::new(), 1.0, 1);
        let ipam = ipam_core::Ipam::new(store, ipam_core::SystemClock);
        ipam.create_pool("p", pool("10.9.0.0/24", 26))
            .await
            .unwrap();
        let got = ipam.auto_assign(&args("n1", 1, 0, "h")).await;
        assert!(
            matches!(got, Err(Error::RetriesExhausted { attempts: 100, .. })),
            "{got:?}"
        );
        let problems = check_invariants(&ipam.store().inner).await.unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    });
}

fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}

/// Every operation's future can be handed to a multi-threaded runtime (a regression test:
/// attempts written as async closures made them `!Send`).
#[test]
fn every_operation_can_be_spawned() {
    // Leaked so that the futures below are 'static, as `tokio::spawn` needs.
    let ipam: &'static ipam_core::Ipam<MemoryStore> = Box::leak(Box::new(ipam_core::Ipam::new(
        MemoryStore::new(),
        ipam_core::SystemClock,
    )));
    let n: &'static ipam_core::NodeName = Box::leak(Box::new(node("n1")));
    let h: &'static ipam_core::HandleId = Box::leak(Box::new(handle("h")));
    let aa: &'static ipam_core::AutoAssignArgs = Box::leak(Box::new(args("n1", 1, 1, "h")));
    let a = ip("10.0.0.1");
    let block = ipam_core::BlockCidr::new("10.0.0.0/26".parse().unwrap()).unwrap();
    spawnable(async move { ipam.auto_assign(aa).await.ok() });
    spawnable(async move { ipam.assign_ip(a, Some(h), BTreeMap::new(), n).await.ok() });
    spawnable(async move { ipam.release_ips(&[ReleaseRequest::new(a)]).await.ok() });
    spawnable(async move { ipam.release_by_handle(h).await.ok() });
    spawnable(async move { ipam.ips_by_handle(h).await.ok() });
    spawnable(async move { ipam.get_assignment_attributes(a).await.ok() });
    spawnable(async move { ipam.claim_affinity(block.net(), n).await.ok() });
    spawnable(async move { ipam.release_affinity(block, n, true).await.ok() });
    spawnable(async move { ipam.release_host_affinities(n, false).await.ok() });
    spawnable(async move { ipam.release_pool_affinities(block.net()).await.ok() });
    spawnable(async move { ipam.remove_host(n).await.ok() });
    spawnable(async move { ipam.get_config().await.ok() });
    spawnable(async move { ipam.set_config(Default::default()).await.ok() });
    spawnable(async move { ipam.create_pool("p", pool("10.0.0.0/24", 26)).await.ok() });
    spawnable(async move { ipam.update_pool("p", pool("10.0.0.0/24", 26)).await.ok() });
    spawnable(async move { ipam.delete_pool("p", true).await.ok() });
    spawnable(async move { ipam.utilization(&[]).await.ok() });
    spawnable(async move { ipam.release_cooled_down(block).await.ok() });
}
