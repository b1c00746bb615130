//! Helpers shared by the integration tests: an allocator on a manual clock, pools, and a
//! dump of every stored object to prove that refused operations change nothing.

#![allow(dead_code)]

use std::net::IpAddr;

use ipam_core::{
    AutoAssignArgs, BlockAffinity, Datastore, HandleId, IpPool, IpReservation, Ipam, IpamBlock,
    IpamConfig, IpamHandle, ManualClock, MemoryStore, NodeName, Resource, Scope,
};
use serde_json::Value;
use time::OffsetDateTime;

/// The start of every test's manual clock.
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
}

/// An allocator on an empty MemoryStore with a manual clock shared with the test.
pub fn ipam() -> (Ipam<MemoryStore>, std::sync::Arc<ManualClock>) {
    let clock = std::sync::Arc::new(ManualClock::new(t0()));
    (Ipam::new(MemoryStore::new(), clock.clone()), clock)
}

/// [`ipam`] with `pools` (name, CIDR, block size) created, in order.
pub async fn ipam_with(
    pools: &[(&str, &str, u8)],
) -> (Ipam<MemoryStore>, std::sync::Arc<ManualClock>) {
    let (ipam, clock) = ipam();
    for (name, cidr, block_size) in pools {
        ipam.create_pool(name, pool(cidr, *block_size))
            .await
            .unwrap();
    }
    (ipam, clock)
}

pub fn node(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

pub fn handle(h: &str) -> HandleId {
    HandleId::new(h).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn pool(cidr: &str, block_size: u8) -> IpPool {
    let mut p = IpPool::new(cidr.parse().unwrap());
    p.block_size = block_size;
    p
}

/// Strict affinity (no borrowing) with a block limit of `max_blocks` (0: Calico's 20).
pub async fn strict(ipam: &Ipam<MemoryStore>, max_blocks: u32) {
    let c = IpamConfig {
        strict_affinity: true,
        max_blocks_per_host: max_blocks,
        ..Default::default()
    };
    ipam.set_config(c).await.unwrap();
}

pub fn args(n: &str, num4: u32, num6: u32, h: &str) -> AutoAssignArgs {
    AutoAssignArgs::new(node(n), num4, num6).with_handle(handle(h))
}

/// Every live object of every kind, with its name and revision, as JSON.
pub async fn dump<D: Datastore>(store: &D) -> Vec<Value> {
    let mut out = Vec::new();
    dump_kind::<IpPool, D>(store, &mut out).await;
    dump_kind::<IpamBlock, D>(store, &mut out).await;
    dump_kind::<BlockAffinity, D>(store, &mut out).await;
    dump_kind::<IpamHandle, D>(store, &mut out).await;
    dump_kind::<IpamConfig, D>(store, &mut out).await;
    dump_kind::<IpReservation, D>(store, &mut out).await;
    out
}

async fn dump_kind<R: Resource, D: Datastore>(store: &D, out: &mut Vec<Value>) {
    for s in store.list::<R>(Scope::All).await.unwrap() {
        out.push(serde_json::json!({
            "kind": R::KIND.as_str(),
            "name": s.name,
            "revision": s.revision.0,
            "spec": serde_json::to_value(&s.value).unwrap(),
        }));
    }
}

/// Fails with the problems `check_invariants` finds.
pub async fn assert_consistent<D: Datastore>(store: &D) {
    let problems = ipam_core::testing::check_invariants(store).await.unwrap();
    assert!(problems.is_empty(), "inconsistent store: {problems:#?}");
}

/// The stored block named for `cidr`.
pub async fn block<D: Datastore>(store: &D, cidr: &str) -> ipam_core::Stored<IpamBlock> {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    store
        .get::<IpamBlock>(&ipam_core::cidr::cidr_to_name(&net))
        .await
        .unwrap()
}

/// Whether a block for `cidr` exists.
pub async fn block_exists<D: Datastore>(store: &D, cidr: &str) -> bool {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    store
        .get::<IpamBlock>(&ipam_core::cidr::cidr_to_name(&net))
        .await
        .is_ok()
}

/// Addresses as text without prefixes.
pub fn addrs<'a>(nets: impl IntoIterator<Item = &'a ipnet::IpNet>) -> Vec<String> {
    nets.into_iter().map(|n| n.addr().to_string()).collect()
}
