//! `ipamctl check` on SQLite stores prepared by the library and corrupted one way each, and
//! `release --from-report` repairing exactly the leaks.
#![allow(clippy::unwrap_used)]

mod support;

use ipam_core::{
    AffinityState, BlockAffinity, HandleId, IpamBlock, IpamConfig, IpamHandle, ManualClock,
    NodeName,
};
use ipam_sqlite::SqliteStore;
use std::collections::BTreeMap;
use std::net::IpAddr;
use support::{Fixture, block_on, kinds};

/// Pool 10.0.0.0/24 in /29 blocks. n1: 3 addresses of c1 (pod default/a), 1 of c3
/// (default/c); n2: 1 of c2 (default/b).
fn store() -> Fixture {
    let f = Fixture::new();
    f.pool("10.0.0.0/24", 29);
    f.assign("n1", 3, "c1", "a");
    f.assign("n2", 1, "c2", "b");
    f.assign("n1", 1, "c3", "c");
    f
}

const ALL_LIVE: &str = "# live pods\ndefault/a\nc2\nk8s-pod-network.c3\n";

/// Runs `check` with complete live lists and returns the report (exit status `code`).
fn check(f: &Fixture, code: i32) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let nodes = dir.path().join("nodes");
    std::fs::write(&live, ALL_LIVE).unwrap();
    std::fs::write(&nodes, "n1\nn2\n").unwrap();
    f.json(
        code,
        &[
            "check",
            "--live",
            live.to_str().unwrap(),
            "--nodes",
            nodes.to_str().unwrap(),
        ],
    )
}

fn block_of(f: &Fixture, node: &str) -> (String, IpamBlock) {
    let b = f
        .list::<IpamBlock>()
        .into_iter()
        .find(|b| b.value.host() == Some(node))
        .unwrap();
    (b.name, b.value)
}

#[test]
fn a_healthy_store_is_clean() {
    let f = store();
    let report = check(&f, 0);
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["totals"]["allocations"], 5);
    let text = f.expect(0, &["check"]);
    assert!(text.contains("No problems found."), "{text}");
    assert!(text.contains("Leaks not checked"), "{text}");
}

#[test]
fn finds_an_address_held_twice() {
    let f = store();
    let (_, mut twin) = block_of(&f, "n1");
    // A /28 over n1's /29 that holds the same ordinals: what a broken writer would leave.
    let net: ipnet::IpNet = format!("{}/28", twin.cidr.network()).parse().unwrap();
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => unreachable!("the fixture is IPv4"),
    };
    let offset = (v4(twin.cidr.network()) - v4(net.trunc().network())) as usize;
    twin.cidr = net.trunc();
    twin.affinity = None;
    let mut allocations = vec![None; 16];
    allocations[offset..offset + 8].copy_from_slice(&twin.allocations);
    twin.unallocated = (0..16u32)
        .filter(|&o| allocations[o as usize].is_none())
        .collect();
    twin.allocations = allocations;
    let name = ipam_core::cidr::cidr_to_name(&twin.cidr);
    f.create(&name, twin);
    let report = check(&f, 1);
    let k = kinds(&report);
    assert!(k.contains("addressHeldTwice"), "{report:#}");
    assert!(k.contains("overlappingBlocks"), "{report:#}");
    let held = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "addressHeldTwice")
        .count();
    assert_eq!(held, 4, "every address n1 holds is held twice");
}

#[test]
fn finds_a_block_whose_arrays_disagree() {
    let f = store();
    let (name, _) = block_of(&f, "n2");
    f.tamper::<IpamBlock>(&name, |b| b.unallocated.push_back(0)); // 0 is allocated
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["blockInconsistent".to_owned()].into());
    let text = f.expect(1, &["check"]);
    assert!(text.contains("blocks whose arrays disagree"), "{text}");
    assert!(text.contains("both free and allocated"), "{text}");
}

#[test]
fn finds_handle_counts_that_disagree() {
    let f = store();
    f.tamper::<IpamHandle>("k8s-pod-network.c1", |h| {
        h.block.values_mut().for_each(|n| *n += 1)
    });
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["handleCountMismatch".to_owned()].into());
    assert_eq!(report["findings"][0]["recorded"], 4);
    assert_eq!(report["findings"][0]["actual"], 3);
}

#[test]
fn finds_an_affinity_without_its_block() {
    let f = store();
    let stray = BlockAffinity {
        cidr: "10.0.0.248/29".parse().unwrap(),
        node: "n1".into(),
        state: AffinityState::Pending,
        affinity_type: Some("host".into()),
        deleted: false,
        extra: Default::default(),
    };
    if f.list::<IpamBlock>()
        .iter()
        .any(|b| b.value.cidr == stray.cidr)
    {
        panic!("the fixture happened to use the stray block; pick another");
    }
    f.create("n1-10-0-0-248-29", stray);
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["affinityWithoutBlock".to_owned()].into());
}

#[test]
fn finds_a_block_without_a_confirmed_affinity() {
    let f = store();
    let (_, b) = block_of(&f, "n2");
    let aff = f
        .list::<BlockAffinity>()
        .into_iter()
        .find(|a| a.value.cidr == b.cidr)
        .unwrap();
    f.tamper::<BlockAffinity>(&aff.name, |a| a.state = AffinityState::Pending);
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["blockWithoutAffinity".to_owned()].into());
    assert_eq!(report["findings"][0]["node"], "n2");
}

#[test]
fn finds_a_block_outside_every_pool() {
    let f = store();
    let cidr = ipam_core::BlockCidr::new("10.9.0.0/29".parse().unwrap()).unwrap();
    f.create(&cidr.name(), IpamBlock::new(cidr, None, 1, None));
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["blockOutsidePools".to_owned()].into());
    assert_eq!(report["findings"][0]["block"], "10.9.0.0/29");
}

#[test]
fn finds_addresses_held_past_their_cooldown() {
    let f = store();
    block_on(async {
        let ipam = f.ipam();
        ipam.set_config(IpamConfig {
            ip_cooldown_seconds: 60,
            ..Default::default()
        })
        .await
        .unwrap();
        // Released an hour ago (by a clock set back), so the 60 s cooldown is long over.
        let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let old = ipam_core::Ipam::new(SqliteStore::open(&f.db).unwrap(), ManualClock::new(past));
        old.release_by_handle(&HandleId::new("k8s-pod-network.c3").unwrap())
            .await
            .unwrap();
    });
    let report = check(&f, 1);
    assert_eq!(kinds(&report), ["cooldownExpired".to_owned()].into());
    // The resting entry holds only `releasedAt`, as Calico's does: no former owner to name.
    assert_eq!(report["findings"][0]["handle"], serde_json::Value::Null);
    assert!(report["findings"][0]["releasedAt"].is_string());
}

#[test]
fn finds_leaks_against_the_live_list_from_stdin() {
    let f = store();
    let out = f.run_with_stdin(&["check", "--live", "-", "-o", "json"], "default/a\nc2\n");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kinds(&report), ["leakedAllocation".to_owned()].into());
    let leak = &report["findings"][0];
    assert_eq!(leak["handle"], "k8s-pod-network.c3");
    assert_eq!(leak["pod"], "c");
    assert!(leak["sequence"].is_u64(), "{leak}");
}

#[test]
fn finds_blocks_of_dead_nodes() {
    let f = store();
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes");
    std::fs::write(&nodes, "n1\n").unwrap();
    let report = f.json(1, &["check", "--nodes", nodes.to_str().unwrap()]);
    assert_eq!(kinds(&report), ["deadNodeBlock".to_owned()].into());
    assert_eq!(report["findings"][0]["node"], "n2");
}

#[test]
fn release_from_report_frees_exactly_the_leaks_and_check_comes_back_clean() {
    let f = store();
    let ipam = f.ipam();
    let live_before =
        block_on(ipam.ips_by_handle(&HandleId::new("k8s-pod-network.c1").unwrap())).unwrap();
    // Report: c2 and c3 leaked (only default/a is listed).
    let out = f.run_with_stdin(&["check", "--live", "-", "-o", "json"], "default/a\n");
    assert_eq!(out.status.code(), Some(1));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    std::fs::write(&report, &out.stdout).unwrap();
    // After the report, c2's address is released and handed to a new pod c9: the report's
    // entry for it is stale and must be skipped.
    let c2 = HandleId::new("k8s-pod-network.c2").unwrap();
    let c2_ip = block_on(ipam.ips_by_handle(&c2)).unwrap()[0].addr();
    block_on(ipam.release_by_handle(&c2)).unwrap();
    let c9 = HandleId::new("k8s-pod-network.c9").unwrap();
    block_on(ipam.assign_ip(
        c2_ip,
        Some(&c9),
        BTreeMap::new(),
        &NodeName::new("n2").unwrap(),
    ))
    .unwrap();

    let done = f.json(0, &["release", "--from-report", report.to_str().unwrap()]);
    let results: Vec<(String, String)> = done["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ip"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(results.len(), 2, "{done:#}");
    for (ip, result) in &results {
        if *ip == c2_ip.to_string() {
            assert!(result.starts_with("skipped"), "{ip}: {result}");
        } else {
            assert_eq!(result, "released", "{ip}");
        }
    }
    // The live allocations are untouched, and the re-used address is still c9's.
    assert_eq!(
        block_on(ipam.ips_by_handle(&HandleId::new("k8s-pod-network.c1").unwrap())).unwrap(),
        live_before
    );
    let who = f.json(0, &["show", "--ip", &c2_ip.to_string()]);
    assert_eq!(who["handle"], "k8s-pod-network.c9");
    let after = f.run_with_stdin(&["check", "--live", "-"], "default/a\nc9\n");
    assert_eq!(
        after.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&after.stdout)
    );
}

#[test]
fn release_from_report_releases_dead_nodes_blocks() {
    let f = store();
    block_on(
        f.ipam()
            .release_by_handle(&HandleId::new("k8s-pod-network.c2").unwrap()),
    )
    .unwrap();
    let out = f.run_with_stdin(&["check", "--nodes", "-", "-o", "yaml"], "n1\n");
    assert_eq!(out.status.code(), Some(1));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.yaml");
    std::fs::write(&report, &out.stdout).unwrap();
    let text = f.expect(0, &["release", "--from-report", report.to_str().unwrap()]);
    assert!(text.contains("affinity released (dead node): n2"), "{text}");
    assert!(
        f.list::<IpamBlock>()
            .iter()
            .all(|b| b.value.host() != Some("n2"))
    );
    let again = f.run_with_stdin(&["check", "--nodes", "-"], "n1\n");
    assert_eq!(again.status.code(), Some(0));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let f = store();
    let out = f.run_with_stdin(&["check", "--live", "-"], "a/b/c\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a/b/c"), "{err}");
    let out = f.run(&["release", "--from-report", "/nonexistent/report.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/report.json"));
}
