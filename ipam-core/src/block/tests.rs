//! A block's assignment and release order, cooldown, and the corrupt blocks it refuses.

use super::*;

fn block() -> IpamBlock {
    IpamBlock::new(
        BlockCidr::new("10.0.0.0/29".parse().unwrap()).unwrap(),
        Some("host:n1".into()),
        100,
        None,
    )
}

fn attr(h: &str) -> AllocationAttribute {
    AllocationAttribute {
        handle_id: Some(h.into()),
        ..Default::default()
    }
}

#[test]
fn assign_pops_the_head_and_records_sequence() {
    let mut b = block();
    assert_eq!(b.assign(2, &attr("a"), |_| false), vec![0, 1]);
    assert_eq!(b.sequence_number, 101);
    assert_eq!(b.sequence_number_for_allocation.get(&1), Some(&100));
    assert_eq!(b.attributes.len(), 1, "equal attributes are shared");
    assert_eq!(b.assign(1, &attr("b"), |o| o == 2), vec![3]);
    assert_eq!(
        b.unallocated.front(),
        Some(&2),
        "skipped ordinals keep their place"
    );
    assert!(b.problems().is_empty());
}

#[test]
fn release_pushes_the_tail_fifo() {
    let mut b = block();
    b.assign(3, &attr("a"), |_| false);
    assert_eq!(
        b.release(1, None, None, Cooldown::None),
        ReleaseOutcome::Released
    );
    assert_eq!(b.unallocated.back(), Some(&1));
    assert_eq!(
        b.release(1, None, None, Cooldown::None),
        ReleaseOutcome::NotAllocated
    );
    assert_eq!(b.assign(5, &attr("c"), |_| false), vec![3, 4, 5, 6, 7]);
    assert_eq!(
        b.assign(1, &attr("c"), |_| false),
        vec![1],
        "the longest-free address is reused last"
    );
    assert!(b.problems().is_empty());
}

#[test]
fn release_checks_sequence_and_handle() {
    let mut b = block();
    b.assign(1, &attr("a"), |_| false);
    let seq = b.sequence_number_for_allocation[&0];
    assert_eq!(
        b.release(0, Some(seq + 7), None, Cooldown::None),
        ReleaseOutcome::BadSequenceNumber { current: Some(seq) }
    );
    assert_eq!(
        b.release(0, None, Some("x"), Cooldown::None),
        ReleaseOutcome::HandleMismatch {
            owner: Some("a".into())
        }
    );
    assert_eq!(b.sequence_number, 101, "a refused release changes nothing");
    assert_eq!(
        b.release(0, Some(seq), Some("a"), Cooldown::None),
        ReleaseOutcome::Released
    );
    assert!(b.attributes.is_empty(), "unused attributes are removed");
}

#[test]
fn cooldown_holds_the_address_then_frees_in_release_order() {
    let mut b = block();
    b.assign(3, &attr("a"), |_| false);
    b.release(2, None, None, Cooldown::Until("2026-01-01T00:00:00Z"));
    b.release(0, None, None, Cooldown::Until("2026-01-01T00:00:05Z"));
    assert!(!b.is_live(2) && b.attribute_of(2).is_some());
    assert_eq!(b.ordinals_of_handle("a"), vec![1]);
    let t = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
    assert_eq!(
        b.fold_cooldown(t("2026-01-01T00:00:09Z"), 10),
        Vec::<u32>::new()
    );
    assert_eq!(b.fold_cooldown(t("2026-01-01T00:00:20Z"), 10), vec![2, 0]);
    assert_eq!(
        b.unallocated.iter().rev().take(2).collect::<Vec<_>>(),
        vec![&0, &2]
    );
    assert!(b.problems().is_empty());
}

#[test]
fn problems_are_found() {
    let mut b = block();
    b.assign(2, &attr("a"), |_| false);
    b.unallocated.push_back(0);
    b.unallocated.push_back(3);
    b.attributes.push(Arc::new(attr("orphan")));
    let p: Vec<String> = b.problems().iter().map(ToString::to_string).collect();
    let p = p.join("; ");
    assert!(p.contains("ordinal 0 is both free and allocated"), "{p}");
    assert!(p.contains("ordinal 3 is free twice"), "{p}");
    assert!(p.contains("attribute 1 is not used"), "{p}");
}

#[test]
fn corrupt_blocks_are_refused_and_their_operations_do_not_panic() {
    type Corruption = fn(&mut IpamBlock);
    let cases: [(&str, Corruption); 4] = [
        ("points at missing attribute", |b| {
            b.allocations[0] = Some(9)
        }),
        ("outside the block", |b| b.unallocated.push_front(99)),
        ("free twice", |b| {
            let head = b.unallocated[0];
            b.unallocated.push_front(head)
        }),
        ("allocation slots", |b| b.allocations.truncate(3)),
    ];
    for (problem, corrupt) in cases {
        let mut b = block();
        b.assign(1, &attr("a"), |_| false);
        corrupt(&mut b);
        let err = b.validate().unwrap_err().to_string();
        assert!(
            err.contains("10-0-0-0-29") && err.contains(problem),
            "{err}"
        );
        // Whatever a caller does with it anyway must not panic.
        b.assign(8, &attr("b"), |_| false);
        b.assign_ordinal(99, &attr("c"));
        for o in [0, 1, 7, 8, 99] {
            b.release(o, None, None, Cooldown::Until("2026-01-01T00:00:00Z"));
            b.release(o, None, None, Cooldown::None);
        }
        b.release_handle("b", Cooldown::None);
        b.fold_cooldown(OffsetDateTime::now_utc(), 0);
    }
    let mut tidy = block();
    tidy.assign(1, &attr("a"), |_| false);
    tidy.attributes.push(Arc::new(attr("orphan")));
    assert!(tidy.validate().is_ok(), "an unused attribute is harmless");
}
