//! `ipamctl gc` on SQLite stores: cooldowns come back in FIFO order, a node keeps its last
//! block, a block used between observations is kept, crash leftovers are cleaned up.
#![allow(clippy::unwrap_used)]

mod support;

use ipam_core::{
    AffinityState, BlockAffinity, HandleId, Ipam, IpamBlock, IpamConfig, IpamHandle, ManualClock,
};
use ipam_sqlite::SqliteStore;
use serde_json::Value;
use support::{Fixture, block_on};

fn gc(f: &Fixture, grace: &str) -> Value {
    let state = f.state_file();
    f.json(
        0,
        &["gc", "--grace", grace, "--state", state.to_str().unwrap()],
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

fn blocks_of(f: &Fixture, node: &str) -> Vec<IpamBlock> {
    f.list::<IpamBlock>()
        .into_iter()
        .map(|b| b.value)
        .filter(|b| b.host() == Some(node))
        .collect()
}

/// n1 holds two /29 blocks: the first full (c-full, 8 addresses), the second with one
/// address of c-extra. Returns the second block's CIDR.
fn two_blocks() -> (Fixture, ipnet::IpNet) {
    let f = Fixture::new();
    f.pool("10.0.0.0/24", 29);
    f.assign("n1", 8, "full", "a");
    let extra = f.assign("n1", 1, "extra", "b");
    assert_eq!(blocks_of(&f, "n1").len(), 2);
    (f, extra[0].trunc())
}

fn release(f: &Fixture, container: &str) {
    block_on(
        f.ipam()
            .release_by_handle(&HandleId::new(format!("k8s-pod-network.{container}")).unwrap()),
    )
    .unwrap();
}

#[test]
fn cooled_down_addresses_come_back_in_release_order() {
    let f = Fixture::new();
    f.pool("10.0.0.0/29", 29);
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let clock = std::sync::Arc::new(ManualClock::new(past));
    let ipam = Ipam::new(SqliteStore::open(&f.db).unwrap(), clock.clone());
    block_on(ipam.set_config(IpamConfig {
        ip_cooldown_seconds: 60,
        ..Default::default()
    }))
    .unwrap();
    for i in 0..8 {
        f.assign("n1", 1, &format!("c{i}"), &format!("p{i}"));
    }
    // Released an hour ago, one second apart, in the order 5, 2, 7.
    for i in [5, 2, 7] {
        let h = HandleId::new(format!("k8s-pod-network.c{i}")).unwrap();
        block_on(ipam.release_by_handle(&h)).unwrap();
        clock.advance(time::Duration::seconds(1));
    }
    let block = &blocks_of(&f, "n1")[0];
    assert!(
        block.unallocated.is_empty(),
        "cooling addresses stay allocated"
    );
    let pass = gc(&f, "15m");
    assert_eq!(
        strings(&pass["freed"]),
        ["10.0.0.5", "10.0.0.2", "10.0.0.7"],
        "{pass:#}"
    );
    let block = &blocks_of(&f, "n1")[0];
    assert_eq!(Vec::from(block.unallocated.clone()), [5, 2, 7]);
    // And the allocator hands them out in that order.
    let next: Vec<String> = (0..3)
        .map(|i| {
            f.assign("n1", 1, &format!("n{i}"), "x")[0]
                .addr()
                .to_string()
        })
        .collect();
    assert_eq!(next, ["10.0.0.5", "10.0.0.2", "10.0.0.7"]);
}

#[test]
fn a_nodes_last_block_is_kept() {
    let (f, _) = two_blocks();
    release(&f, "full");
    release(&f, "extra");
    let first = gc(&f, "0s");
    assert!(
        first["blocksReleased"].as_array().unwrap().is_empty(),
        "{first:#}"
    );
    assert_eq!(first["watching"], 1, "one empty block is surplus");
    let second = gc(&f, "0s");
    assert_eq!(
        second["blocksReleased"].as_array().unwrap().len(),
        1,
        "{second:#}"
    );
    let left = blocks_of(&f, "n1");
    assert_eq!(left.len(), 1, "the node keeps one block");
    let third = gc(&f, "0s");
    assert!(third["blocksReleased"].as_array().unwrap().is_empty());
    assert_eq!(third["watching"], 0);
    assert_eq!(blocks_of(&f, "n1").len(), 1);
    f.expect(0, &["check"]);
}

#[test]
fn the_grace_period_is_honoured() {
    let (f, _) = two_blocks();
    release(&f, "extra");
    gc(&f, "1h");
    let second = gc(&f, "1h");
    assert!(second["blocksReleased"].as_array().unwrap().is_empty());
    assert_eq!(blocks_of(&f, "n1").len(), 2);
    // The same state file, a shorter grace: the first observation is old enough now.
    let third = gc(&f, "0s");
    assert_eq!(third["blocksReleased"].as_array().unwrap().len(), 1);
}

#[test]
fn a_block_that_gets_an_allocation_between_observations_is_kept() {
    let (f, second) = two_blocks();
    release(&f, "extra");
    assert_eq!(gc(&f, "0s")["watching"], 1);
    let got = f.assign("n1", 1, "late", "c");
    assert_eq!(got[0].trunc(), second, "the first block is full");
    let pass = gc(&f, "0s");
    assert!(
        pass["blocksReleased"].as_array().unwrap().is_empty(),
        "{pass:#}"
    );
    assert_eq!(blocks_of(&f, "n1").len(), 2);
    // Allocated and released again between two passes: the sequence number moved, so the
    // wait starts over rather than releasing at once.
    release(&f, "late");
    assert_eq!(gc(&f, "0s")["watching"], 1);
    f.assign("n1", 1, "brief", "d");
    release(&f, "brief");
    let pass = gc(&f, "0s");
    assert!(
        pass["blocksReleased"].as_array().unwrap().is_empty(),
        "{pass:#}"
    );
    let pass = gc(&f, "0s");
    assert_eq!(strings(&pass["blocksReleased"]), [format!("n1 {second}")]);
}

#[test]
fn crash_leftovers_are_cleaned_up_after_the_grace_period() {
    let (f, second) = two_blocks();
    // A claim that died after writing its pending affinity.
    f.create(
        "n2-10-0-0-248-29",
        BlockAffinity {
            cidr: "10.0.0.248/29".parse().unwrap(),
            node: "n2".into(),
            state: AffinityState::Pending,
            affinity_type: Some("host".into()),
            deleted: false,
            extra: Default::default(),
        },
    );
    // An assignment that died after writing its handle, and one that counted one too many.
    let mut orphan = IpamHandle::new("k8s-pod-network.dead");
    orphan.block.insert(second.to_string(), 1);
    f.create("k8s-pod-network.dead", orphan);
    f.tamper::<IpamHandle>("k8s-pod-network.extra", |h| {
        h.block.values_mut().for_each(|n| *n += 1)
    });
    assert_eq!(f.run(&["check"]).status.code(), Some(1));
    let first = gc(&f, "0s");
    assert_eq!(first["watching"], 3, "{first:#}");
    let second_pass = gc(&f, "0s");
    assert_eq!(
        strings(&second_pass["affinitiesFixed"]),
        ["n2-10-0-0-248-29 removed (no block)"]
    );
    let mut fixed = strings(&second_pass["handlesFixed"]);
    fixed.sort();
    assert_eq!(
        fixed,
        [
            "k8s-pod-network.dead removed (holds nothing)",
            "k8s-pod-network.extra recounted"
        ]
    );
    f.expect(0, &["check"]);
}

#[test]
fn a_pending_claim_whose_block_holds_addresses_is_confirmed() {
    let (f, second) = two_blocks();
    let aff = f
        .list::<BlockAffinity>()
        .into_iter()
        .find(|a| a.value.cidr == second)
        .unwrap();
    f.tamper::<BlockAffinity>(&aff.name, |a| a.state = AffinityState::Pending);
    gc(&f, "0s");
    let pass = gc(&f, "0s");
    assert_eq!(
        strings(&pass["affinitiesFixed"]),
        [format!("{} confirmed", aff.name)]
    );
    f.expect(0, &["check"]);
}

#[test]
fn interval_mode_runs_the_passes_itself() {
    let (f, _) = two_blocks();
    release(&f, "extra");
    let text = f.expect(
        0,
        &["gc", "--interval", "50ms", "--passes", "2", "--grace", "0s"],
    );
    assert!(text.contains("empty block released"), "{text}");
    assert_eq!(blocks_of(&f, "n1").len(), 1);
    // The default state file sits beside the database.
    let mut state = f.db.clone().into_os_string();
    state.push(".gc-state.json");
    assert!(std::path::Path::new(&state).exists());
}
