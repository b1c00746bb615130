//! Stored objects as Calico really writes them: Go's `null` for nil slices and maps, the
//! etcd model's snake-case `affinity_claim_time`, fields this version does not model
//! (`hostAffinity`, `futureField`) and KubeVirt's `alternateOwnerAttrs`. Each is read, put
//! through the block operations, and written back: nothing unknown may be lost, and every
//! `null` must come back as a value Calico reads.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::{
    BlockAffinity, BlockProblem, Cooldown, Datastore, Error, IpamBlock, IpamConfig, IpamHandle,
    ReleaseOutcome, ReleaseRequest,
};
use serde_json::{Value, json};

/// A block as Calico's `newBlock` leaves it once written (KDD): `attributes` nil, so
/// `null`; no `sequenceNumberForAllocation` (a block from before sequence numbers).
fn fresh_calico_block() -> Value {
    json!({
        "cidr": "10.0.0.0/29",
        "affinity": "host:n1",
        "allocations": [null, null, null, null, null, null, null, null],
        "unallocated": [0, 1, 2, 3, 4, 5, 6, 7],
        "attributes": null,
        "sequenceNumber": 1_722_000_000_000_000_000_u64,
        "deleted": false,
        "strictAffinity": false,
    })
}

/// The attribute of a VM's address during a KubeVirt live migration, with a field a later
/// Calico may add.
fn migrating_vm_attr() -> Value {
    json!({
        "handle_id": "k8s-pod-network.vm",
        "secondary": {"namespace": "vms", "pod": "virt-launcher-a", "node": "n1"},
        "alternateOwnerAttrs": {"namespace": "vms", "pod": "virt-launcher-b", "node": "n2"},
        "futureField": {"nested": [1, 2, 3]},
    })
}

/// A block holding the migrating VM's address (ordinal 0) and a pod's (ordinal 1), with an
/// unmodelled block field.
fn block_with_unknown_fields() -> Value {
    json!({
        "cidr": "10.0.0.0/29",
        "affinity": "host:n1",
        "allocations": [0, 1, null, null, null, null, null, null],
        "unallocated": [2, 3, 4, 5, 6, 7],
        "attributes": [
            migrating_vm_attr(),
            {"handle_id": "k8s-pod-network.pod", "secondary": {"pod": "p"},
             "podOnlyField": "must not survive the pod's release"},
        ],
        "sequenceNumber": 10,
        "sequenceNumberForAllocation": {"0": 3, "1": 4},
        "deleted": false,
        "strictAffinity": false,
        "futureBlockField": {"kept": true},
    })
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn encode<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// A MemoryStore holding a 10.0.0.0/24 pool of /29 blocks, the block `spec` owned by n1
/// (with its confirmed affinity), and a handle for each of `handles` counting `count` in it.
async fn seeded(spec: Value, handles: &[(&str, u32)]) -> ipam_core::Ipam<ipam_core::MemoryStore> {
    let (ipam, _clock) = ipam_with(&[("p", "10.0.0.0/24", 29)]).await;
    let b: IpamBlock = decode(spec);
    let cidr = b.block_cidr().unwrap();
    let store = ipam.store();
    store.create(&cidr.name(), b).await.unwrap();
    let aff: BlockAffinity = decode(json!({
        "cidr": "10.0.0.0/29", "node": "n1", "state": "confirmed", "type": "host",
        "deleted": "false",
    }));
    let name = ipam_core::names::affinity_name("n1", &cidr);
    store.create(&name, aff).await.unwrap();
    for &(h, count) in handles {
        let handle: IpamHandle = decode(json!({"handleID": h, "block": {"10.0.0.0/29": count}}));
        store.create(h, handle).await.unwrap();
    }
    ipam
}

async fn stored_block(ipam: &ipam_core::Ipam<ipam_core::MemoryStore>) -> Value {
    encode(&block(ipam.store(), "10.0.0.0/29").await.value)
}

#[test]
fn a_fresh_calico_block_with_null_attributes_is_assigned_from_and_written_as_values() {
    pollster::block_on(async {
        let ipam = seeded(fresh_calico_block(), &[]).await;
        let got = ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        assert_eq!(addrs(&got.ipv4), ["10.0.0.0"]);
        let written = stored_block(&ipam).await;
        assert_eq!(written["attributes"][0]["handle_id"], "a");
        assert_eq!(
            written["sequenceNumberForAllocation"],
            json!({"0": 1_722_000_000_000_000_000_u64}),
            "the missing map was created on first use, keyed by the ordinal's text"
        );
        assert!(written["unallocated"].is_array() && written["allocations"].is_array());
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn null_arrays_and_maps_of_an_empty_block_are_written_back_as_empty_values() {
    let mut spec = fresh_calico_block();
    spec["sequenceNumberForAllocation"] = Value::Null;
    let b: IpamBlock = decode(spec);
    assert!(b.attributes.is_empty() && b.problems().is_empty());
    let written = encode(&b);
    assert_eq!(
        written["attributes"],
        json!([]),
        "Calico's null, as a value"
    );
    assert!(
        written.get("sequenceNumberForAllocation").is_none(),
        "an empty map is left out, as before; Calico creates it on first use"
    );
    let mut expected = fresh_calico_block();
    expected["attributes"] = json!([]);
    assert_eq!(written, expected, "nothing else changed");
}

#[test]
fn an_etcd_block_is_read_with_its_snake_case_claim_time_and_keeps_host_affinity() {
    // The etcd model (`model.AllocationBlock`): `affinity` has no omitempty, the claim time
    // is `affinity_claim_time`, and the deprecated `hostAffinity` may still be there.
    let etcd = json!({
        "cidr": "10.0.0.0/29",
        "affinity": "host:n1",
        "affinity_claim_time": "2024-05-01T10:00:00Z",
        "hostAffinity": "n1",
        "allocations": [null, null, null, null, null, null, null, null],
        "unallocated": [0, 1, 2, 3, 4, 5, 6, 7],
        "attributes": null,
        "sequenceNumber": 7,
        "sequenceNumberForAllocation": null,
        "deleted": false,
    });
    let mut b: IpamBlock = decode(etcd);
    assert_eq!(
        b.affinity_claim_time.as_deref(),
        Some("2024-05-01T10:00:00Z")
    );
    assert_eq!(b.host(), Some("n1"));
    assert_eq!(b.assign(1, &Default::default(), |_| false), vec![0]);
    let written = encode(&b);
    assert_eq!(written["affinityClaimTime"], "2024-05-01T10:00:00Z");
    assert!(written.get("affinity_claim_time").is_none(), "{written}");
    assert_eq!(written["hostAffinity"], "n1");

    let unowned: IpamBlock = decode(json!({
        "cidr": "10.0.0.8/29", "affinity": null,
        "allocations": [null, null, null, null, null, null, null, null],
        "unallocated": [0, 1, 2, 3, 4, 5, 6, 7], "attributes": null, "sequenceNumber": 1,
    }));
    assert_eq!(unowned.affinity, None);
    assert!(unowned.problems().is_empty());
}

#[test]
fn unknown_fields_and_alternate_owners_survive_an_assignment_and_a_release() {
    pollster::block_on(async {
        let ipam = seeded(
            block_with_unknown_fields(),
            &[("k8s-pod-network.vm", 1), ("k8s-pod-network.pod", 1)],
        )
        .await;
        ipam.auto_assign(&args("n1", 1, 0, "new")).await.unwrap();
        let out = ipam
            .release_ips(&[ReleaseRequest::new(ip("10.0.0.1"))])
            .await
            .unwrap();
        assert_eq!(out[0].1, ReleaseOutcome::Released);
        let written = stored_block(&ipam).await;
        assert_eq!(written["futureBlockField"], json!({"kept": true}));
        assert_eq!(written["allocations"][0], 0);
        assert_eq!(
            written["attributes"][0],
            migrating_vm_attr(),
            "the VM's attribute, unknown field and second owner included"
        );
        let texts = written["attributes"].to_string();
        assert!(!texts.contains("podOnlyField"), "{texts}");
        assert_eq!(written["attributes"].as_array().unwrap().len(), 2);
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn a_cooldown_release_rests_the_address_with_only_its_release_time() {
    pollster::block_on(async {
        let ipam = seeded(
            block_with_unknown_fields(),
            &[("k8s-pod-network.vm", 1), ("k8s-pod-network.pod", 1)],
        )
        .await;
        let cooldown = IpamConfig {
            ip_cooldown_seconds: 60,
            ..Default::default()
        };
        ipam.set_config(cooldown).await.unwrap();
        let pod = ip("10.0.0.1");
        let out = ipam.release_ips(&[ReleaseRequest::new(pod)]).await.unwrap();
        assert_eq!(out[0].1, ReleaseOutcome::CoolingDown);
        let written = stored_block(&ipam).await;
        let index = written["allocations"][1].as_u64().unwrap() as usize;
        let resting = &written["attributes"][index];
        let fields: Vec<&String> = resting.as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            ["releasedAt"],
            "as Calico's addCooldownAttribute writes it"
        );
        // So the address belongs to no handle, for us as for Calico.
        let held = ipam.get_assignment_attributes(pod).await.unwrap().unwrap();
        assert!(held.released_at.is_some());
        assert_eq!(held.handle, None);
        assert!(held.attrs.is_empty());
        assert_eq!(written["attributes"][0], migrating_vm_attr());
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn releasing_the_vm_by_handle_into_cooldown_keeps_nothing_of_its_owners() {
    let mut b: IpamBlock = decode(block_with_unknown_fields());
    let freed = b.release_handle(
        "k8s-pod-network.vm",
        Cooldown::Until("2026-01-01T00:00:00Z"),
    );
    assert_eq!(freed, vec![0]);
    let resting = b.attribute_of(0).unwrap();
    assert_eq!(
        encode(resting),
        json!({"releasedAt": "2026-01-01T00:00:00Z"})
    );
    assert!(b.ordinals_of_handle("k8s-pod-network.vm").is_empty());
    assert!(b.problems().is_empty(), "{:?}", b.problems());
}

#[test]
fn a_handle_with_null_blocks_reads_as_empty_and_keeps_unknown_fields() {
    let h: IpamHandle = decode(json!({
        "handleID": "k8s-pod-network.x", "block": null, "deleted": false, "futureField": 1,
    }));
    assert_eq!(h.total(), 0);
    assert_eq!(
        encode(&h),
        json!({"handleID": "k8s-pod-network.x", "block": {}, "deleted": false,
               "futureField": 1})
    );
    let bare: IpamHandle = decode(json!({"handleID": "k8s-pod-network.x"}));
    assert_eq!(bare, IpamHandle::new("k8s-pod-network.x"));
}

#[test]
fn an_affinity_keeps_unknown_fields() {
    let v = json!({"cidr": "10.0.0.0/29", "node": "n1", "state": "confirmed", "type": "host",
                   "deleted": "false", "futureField": ["a"]});
    let aff: BlockAffinity = decode(v.clone());
    assert_eq!(encode(&aff), v);
}

#[test]
fn a_block_with_null_allocations_is_reported_as_corrupt_not_a_panic() {
    pollster::block_on(async {
        let mut spec = fresh_calico_block();
        spec["allocations"] = Value::Null;
        let b: IpamBlock = decode(spec.clone());
        assert_eq!(
            b.problems(),
            vec![BlockProblem::SlotCount { slots: 0, size: 8 }]
        );
        let err = b.validate().unwrap_err();
        assert!(
            matches!(
                &err,
                Error::CorruptObject {
                    kind: "IPAMBlock",
                    ..
                }
            ),
            "{err}"
        );
        let ipam = seeded(spec, &[]).await;
        let taken = ipam
            .assign_ip(ip("10.0.0.3"), None, Default::default(), &node("n1"))
            .await;
        assert!(
            matches!(taken, Err(Error::CorruptObject { .. })),
            "{taken:?}"
        );
        let out = ipam
            .release_ips(&[ReleaseRequest::new(ip("10.0.0.3"))])
            .await
            .unwrap();
        assert_eq!(out[0].1, ReleaseOutcome::NotAllocated);
    });
}
