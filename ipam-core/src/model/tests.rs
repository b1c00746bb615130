//! The wire form of the model: string booleans, null or missing fields, unknown fields kept, defaults.

use super::*;
use serde_json::json;

#[test]
fn affinity_deleted_is_a_string_on_the_wire() {
    let aff = BlockAffinity {
        cidr: "10.0.0.0/26".parse().unwrap(),
        node: "n1".into(),
        state: AffinityState::Confirmed,
        affinity_type: Some("host".into()),
        deleted: false,
        extra: Default::default(),
    };
    let v = serde_json::to_value(&aff).unwrap();
    assert_eq!(v["deleted"], json!("false"));
    assert_eq!(v["state"], json!("confirmed"));
    let back: BlockAffinity = serde_json::from_value(
        json!({"cidr":"10.0.0.0/26","node":"n1","state":"pendingDeletion","deleted":"true"}),
    )
    .unwrap();
    assert!(back.deleted);
    assert_eq!(back.state, AffinityState::PendingDeletion);
    assert!(
        serde_json::from_value::<BlockAffinity>(
            json!({"cidr":"10.0.0.0/26","node":"n1","state":"confirmed","deleted":"maybe"})
        )
        .is_err()
    );
}

#[test]
fn pool_defaults_and_unknown_fields_survive() {
    let v = json!({"cidr":"10.0.0.0/16","vxlanMode":"Always","futureField":{"a":1}});
    let pool: IpPool = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(pool.effective_block_size(), 26);
    assert!(pool.allows(IntendedUse::Workload));
    assert!(!pool.allows(IntendedUse::LoadBalancer));
    assert_eq!(serde_json::to_value(&pool).unwrap(), v);
}

#[test]
fn block_fields_read_null_or_missing_as_empty() {
    let nulls = json!({"cidr": "10.0.0.0/30", "allocations": null, "unallocated": null,
        "attributes": null, "sequenceNumber": null, "sequenceNumberForAllocation": null,
        "deleted": null});
    for v in [nulls, json!({"cidr": "10.0.0.0/30"})] {
        let b: IpamBlock = serde_json::from_value(v.clone()).unwrap();
        assert!(b.allocations.is_empty() && b.unallocated.is_empty(), "{v}");
        assert!(b.attributes.is_empty() && b.sequence_number_for_allocation.is_empty());
        assert_eq!((b.sequence_number, b.deleted), (0, false));
        assert!(
            b.extra.is_empty(),
            "known fields are not taken for unknown ones"
        );
    }
}

#[test]
fn sequence_keys_are_ordinals_in_text() {
    // A flattened `extra` makes serde buffer the whole struct; the string keys must
    // still parse as numbers from there, from text as from a value.
    let v = json!({"cidr": "10.0.0.0/30", "sequenceNumberForAllocation": {"3": 9}});
    let b: IpamBlock = serde_json::from_str(&v.to_string()).unwrap();
    assert_eq!(b.sequence_number_for_allocation, BTreeMap::from([(3, 9)]));
    let b: IpamBlock = serde_json::from_value(v).unwrap();
    assert_eq!(b.sequence_number_for_allocation, BTreeMap::from([(3, 9)]));
    let bad = json!({"cidr": "10.0.0.0/30", "sequenceNumberForAllocation": {"x": 9}});
    assert!(serde_json::from_value::<IpamBlock>(bad).is_err());
}

#[test]
fn attribute_nulls_read_as_empty_and_unknown_fields_stay() {
    let v = json!({"handle_id": null, "secondary": null, "alternateOwnerAttrs": null,
        "releasedAt": null, "futureField": [1]});
    let a: AllocationAttribute = serde_json::from_value(v).unwrap();
    assert_eq!(a.extra.get("futureField"), Some(&json!([1])));
    let expected = AllocationAttribute {
        extra: a.extra.clone(),
        ..Default::default()
    };
    assert_eq!(a, expected);
    let migrating = json!({"handle_id": "h", "alternateOwnerAttrs": {"pod": "b"}});
    let a: AllocationAttribute = serde_json::from_value(migrating.clone()).unwrap();
    assert_eq!(a.alternate_owner_attrs["pod"], "b");
    assert_eq!(serde_json::to_value(&a).unwrap(), migrating);
}

#[test]
fn config_defaults_when_fields_absent() {
    let c: IpamConfig = serde_json::from_value(json!({})).unwrap();
    assert_eq!(c, IpamConfig::default());
    assert!(c.auto_allocate_blocks);
    assert_eq!(c.effective_max_blocks(), 20);
}

#[test]
fn the_block_limit_is_the_lower_of_request_and_config_and_20_when_neither() {
    let global = |n| IpamConfig {
        max_blocks_per_host: n,
        ..IpamConfig::default()
    };
    assert_eq!(global(0).block_limit(None), 20);
    assert_eq!(global(0).block_limit(Some(0)), 20);
    assert_eq!(global(0).block_limit(Some(50)), 50);
    assert_eq!(global(4).block_limit(None), 4);
    assert_eq!(global(4).block_limit(Some(0)), 4);
    assert_eq!(global(4).block_limit(Some(2)), 2);
    assert_eq!(
        global(4).block_limit(Some(9)),
        4,
        "a request cannot raise the limit"
    );
}
