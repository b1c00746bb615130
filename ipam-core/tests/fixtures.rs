//! The Calico objects shown in the seed document, loaded into the model types: what they
//! mean, that they are consistent, and that they write back unchanged.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::{
    AffinityState, BlockAffinity, BlockCidr, Datastore, IntendedUse, IpPool, IpamBlock, IpamHandle,
    ReleaseOutcome, ReleaseRequest,
};
use serde_json::Value;

const NGINX: &str =
    "k8s-pod-network.cb07c78e242382171ac035d9b888454f71bb393e788f7feaa7ee13d4ead5cb34";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Loads the spec as `T` and checks it serializes back to the same JSON value.
fn load<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str) -> T {
    let spec = fixture(name)["spec"].clone();
    let value: T = serde_json::from_value(spec.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&value).unwrap(),
        spec,
        "{name} did not write back unchanged"
    );
    value
}

fn before() -> IpamBlock {
    load("ipamblock-192-168-185-0-26-before-nginx.json")
}

fn after() -> IpamBlock {
    load("ipamblock-192-168-185-0-26-after-nginx.json")
}

#[test]
fn fixtures_are_the_calico_objects() {
    for (file, kind, api) in [
        (
            "ipamblock-192-168-185-0-26-before-nginx.json",
            "IPAMBlock",
            "crd.projectcalico.org/v1",
        ),
        (
            "ipamblock-192-168-185-0-26-after-nginx.json",
            "IPAMBlock",
            "crd.projectcalico.org/v1",
        ),
        (
            "ipamhandle-nginx.json",
            "IPAMHandle",
            "crd.projectcalico.org/v1",
        ),
        (
            "ippool-default-ipv4-ippool.json",
            "IPPool",
            "projectcalico.org/v3",
        ),
    ] {
        let v = fixture(file);
        assert_eq!(v["kind"], kind, "{file}");
        assert_eq!(v["apiVersion"], api, "{file}");
    }
    assert_eq!(
        fixture("ipamblock-192-168-185-0-26-after-nginx.json")["metadata"]["name"],
        BlockCidr::new("192.168.185.0/26".parse().unwrap())
            .unwrap()
            .name()
    );
}

#[test]
fn the_block_before_nginx_frees_in_fifo_order() {
    let b = before();
    assert_eq!(b.host(), Some("mac-k8s"));
    assert_eq!(b.allocations.len(), 64);
    assert_eq!(b.in_use(), 8);
    let expected: Vec<u32> = (16..64).chain([7, 14, 15, 5, 2, 3, 6, 4]).collect();
    assert_eq!(b.unallocated.iter().copied().collect::<Vec<_>>(), expected);
    // The next pod gets .16, the head of the queue: what Calico gave nginx.
    let mut next = b.clone();
    let attr = ipam_core::AllocationAttribute {
        handle_id: Some(NGINX.into()),
        ..Default::default()
    };
    assert_eq!(next.assign(1, &attr, |_| false), vec![16]);
    assert_eq!(
        next.sequence_number_for_allocation[&16], b.sequence_number,
        "the allocation records the block's number at the time"
    );
    // Calico leaves stale sequence entries for freed ordinals (7, 14, 15): not a problem.
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    assert!(b.sequence_number_for_allocation.contains_key(&14));
}

#[test]
fn the_block_after_nginx_says_who_holds_what() {
    let b = after();
    let c = b.block_cidr().unwrap();
    let sixteen = c.ordinal_of(ip("192.168.185.16")).unwrap();
    let attr = b.attribute_of(sixteen).unwrap();
    assert_eq!(attr.handle_id.as_deref(), Some(NGINX));
    assert_eq!(attr.secondary["pod"], "nginx");
    assert_eq!(attr.secondary["namespace"], "default");
    assert_eq!(b.sequence_number_for_allocation[&16], 1690113884806720496);
    assert_eq!(b.sequence_number, 1690113884806720498);
    // The freed ordinal 1 (the old csi-node-driver pod) went to the tail of the queue.
    assert_eq!(b.unallocated.front(), Some(&17));
    assert_eq!(b.unallocated.back(), Some(&1));
    assert!(b.attribute_of(1).is_none());
    // Attributes: one entry per distinct owner, every one used, the tunnel's at index 0.
    assert_eq!(b.attributes.len(), 8);
    assert_eq!(
        b.attribute_of(0).unwrap().secondary["type"],
        "vxlanTunnelAddress"
    );
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    // Two ordinals with equal attributes share one entry instead of repeating it.
    let mut shared = b.clone();
    let nginx = b.attribute_of(sixteen).unwrap().clone();
    assert_eq!(shared.assign(1, &nginx, |_| false), vec![17]);
    assert_eq!(shared.allocations[17], shared.allocations[16]);
    assert_eq!(shared.attributes.len(), 8);
    assert!(shared.problems().is_empty());
}

#[test]
fn the_handle_agrees_with_the_block() {
    let h: IpamHandle = load("ipamhandle-nginx.json");
    assert_eq!(h.handle_id, NGINX);
    assert!(!h.deleted);
    let b = after();
    assert_eq!(h.block.len(), 1);
    let held = b.ordinals_of_handle(NGINX).len() as u32;
    assert_eq!(h.block[&b.cidr.to_string()], held);
    assert_eq!(held, 1);
    assert_eq!(h.total(), 1);
}

#[test]
fn the_pool_says_its_block_size_and_uses() {
    let p: IpPool = load("ippool-default-ipv4-ippool.json");
    assert_eq!(p.cidr.to_string(), "192.168.0.0/16");
    assert_eq!(p.effective_block_size(), 26);
    assert!(p.allows(IntendedUse::Workload));
    assert!(p.allows(IntendedUse::Tunnel));
    assert!(!p.allows(IntendedUse::LoadBalancer));
    assert!(p.nat_outgoing);
    assert_eq!(p.node_selector, "all()");
    assert_eq!(p.vxlan_mode.as_deref(), Some("CrossSubnet"));
    assert!(!p.disabled && !p.is_manual());
    assert!(ipam_core::validate_pool("default-ipv4-ippool", &p).is_ok());
}

/// The seed's cluster state in a MemoryStore: pool, block, the nginx handle and the node's
/// confirmed affinity.
async fn seeded() -> ipam_core::Ipam<ipam_core::MemoryStore> {
    let (ipam, _clock) = ipam();
    let store = ipam.store();
    let p: IpPool = load("ippool-default-ipv4-ippool.json");
    store.create("default-ipv4-ippool", p).await.unwrap();
    let b = after();
    let cidr = b.block_cidr().unwrap();
    store.create(&cidr.name(), b).await.unwrap();
    let h: IpamHandle = load("ipamhandle-nginx.json");
    store.create(NGINX, h).await.unwrap();
    let aff = BlockAffinity {
        cidr: cidr.net(),
        node: "mac-k8s".into(),
        state: AffinityState::Confirmed,
        affinity_type: Some("host".into()),
        deleted: false,
        extra: Default::default(),
    };
    let name = ipam_core::names::affinity_name("mac-k8s", &cidr);
    store.create(&name, aff).await.unwrap();
    ipam
}

#[test]
fn allocating_from_the_loaded_block_pops_ordinal_17() {
    pollster::block_on(async {
        let ipam = seeded().await;
        let got = ipam
            .auto_assign(&args("mac-k8s", 1, 0, "k8s-pod-network.centos"))
            .await
            .unwrap();
        assert_eq!(got.ipv4[0].to_string(), "192.168.185.17/26");
        let got = ipam
            .auto_assign(&args("mac-k8s", 1, 0, "k8s-pod-network.other"))
            .await
            .unwrap();
        assert_eq!(got.ipv4[0].to_string(), "192.168.185.18/26");
        let b = block(ipam.store(), "192.168.185.0/26").await.value;
        assert_eq!(b.sequence_number, 1690113884806720500);
        assert_eq!(b.sequence_number_for_allocation[&17], 1690113884806720498);
    });
}

#[test]
fn releasing_nginx_with_a_wrong_sequence_number_is_refused() {
    pollster::block_on(async {
        let ipam = seeded().await;
        let addr = ip("192.168.185.16");
        let mut wrong = ReleaseRequest::new(addr);
        wrong.sequence = Some(1690113884806720495);
        let before = dump(ipam.store()).await;
        let out = ipam.release_ips(&[wrong]).await.unwrap();
        assert_eq!(
            out,
            vec![(
                addr,
                ReleaseOutcome::BadSequenceNumber {
                    current: Some(1690113884806720496)
                }
            )]
        );
        assert_eq!(
            dump(ipam.store()).await,
            before,
            "a refused release writes nothing"
        );
        let held = ipam.get_assignment_attributes(addr).await.unwrap().unwrap();
        assert_eq!(held.handle.as_deref(), Some(NGINX));
        let mut right = ReleaseRequest::new(addr);
        right.sequence = held.sequence;
        let out = ipam.release_ips(&[right]).await.unwrap();
        assert_eq!(out, vec![(addr, ReleaseOutcome::Released)]);
        assert!(
            ipam.get_assignment_attributes(addr)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            ipam.store().get::<IpamHandle>(NGINX).await.is_err(),
            "the handle held only this address"
        );
    });
}
