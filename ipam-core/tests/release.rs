//! Releasing: by address with sequence numbers and owners (ABA), idempotence, by handle,
//! and the read side (ips_by_handle, get_assignment_attributes).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ipam_core::{Datastore, Error, ReleaseOutcome, ReleaseRequest};

#[test]
fn a_stale_sequence_number_cannot_release_a_reallocated_address() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 28)]).await;
        let a = ip("10.0.0.7");
        ipam.assign_ip(a, Some(&handle("old")), BTreeMap::new(), &node("n1"))
            .await
            .unwrap();
        let old_seq = ipam
            .get_assignment_attributes(a)
            .await
            .unwrap()
            .unwrap()
            .sequence;
        ipam.release_ips(&[ReleaseRequest::new(a)]).await.unwrap();
        ipam.assign_ip(a, Some(&handle("new")), BTreeMap::new(), &node("n1"))
            .await
            .unwrap();
        let now = ipam.get_assignment_attributes(a).await.unwrap().unwrap();
        assert_ne!(now.sequence, old_seq, "a new allocation gets a new number");
        // The old owner's late release (A-B-A) is refused and changes nothing.
        let before = dump(ipam.store()).await;
        let mut late = ReleaseRequest::new(a);
        late.sequence = old_seq;
        let out = ipam.release_ips(&[late]).await.unwrap();
        assert_eq!(
            out[0].1,
            ReleaseOutcome::BadSequenceNumber {
                current: now.sequence
            }
        );
        assert_eq!(dump(ipam.store()).await, before);
        // So is a release naming the wrong owner.
        let mut wrong = ReleaseRequest::new(a);
        wrong.handle = Some("old".into());
        let out = ipam.release_ips(&[wrong]).await.unwrap();
        assert_eq!(
            out[0].1,
            ReleaseOutcome::HandleMismatch {
                owner: Some("new".into())
            }
        );
        assert_eq!(dump(ipam.store()).await, before);
        let held = ipam.get_assignment_attributes(a).await.unwrap().unwrap();
        assert_eq!(held.handle.as_deref(), Some("new"));
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn release_is_idempotent() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 28)]).await;
        let got = ipam.auto_assign(&args("n1", 2, 0, "a")).await.unwrap();
        let reqs: Vec<_> = got
            .ipv4
            .iter()
            .map(|n| ReleaseRequest::new(n.addr()))
            .collect();
        let out = ipam.release_ips(&reqs).await.unwrap();
        assert!(
            out.iter().all(|(_, o)| *o == ReleaseOutcome::Released),
            "{out:?}"
        );
        let before = dump(ipam.store()).await;
        let out = ipam.release_ips(&reqs).await.unwrap();
        assert!(
            out.iter().all(|(_, o)| *o == ReleaseOutcome::NotAllocated),
            "{out:?}"
        );
        // Addresses never assigned, or outside every pool, are not allocated either.
        let out = ipam
            .release_ips(&[
                ReleaseRequest::new(ip("10.0.0.200")),
                ReleaseRequest::new(ip("192.0.2.1")),
            ])
            .await
            .unwrap();
        assert!(
            out.iter().all(|(_, o)| *o == ReleaseOutcome::NotAllocated),
            "{out:?}"
        );
        assert_eq!(
            dump(ipam.store()).await,
            before,
            "repeated releases write nothing"
        );
        assert!(
            ipam.store()
                .get::<ipam_core::IpamHandle>("a")
                .await
                .is_err()
        );
    });
}

#[test]
fn release_by_handle_frees_every_family_and_block() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("v4", "10.0.0.0/24", 30), ("v6", "fd00::/120", 126)]).await;
        // Six IPv4 addresses span two /30 blocks.
        let got = ipam.auto_assign(&args("n1", 6, 2, "pod")).await.unwrap();
        let keep = ipam.auto_assign(&args("n1", 1, 0, "other")).await.unwrap();
        let h = ipam
            .store()
            .get::<ipam_core::IpamHandle>("pod")
            .await
            .unwrap()
            .value;
        assert_eq!(h.block.len(), 3);
        assert_eq!(h.total(), 8);
        let mut held = ipam.ips_by_handle(&handle("pod")).await.unwrap();
        held.sort();
        let mut want: Vec<_> = got.all().copied().collect();
        want.sort();
        assert_eq!(held, want);
        let mut freed = ipam.release_by_handle(&handle("pod")).await.unwrap();
        freed.sort();
        assert_eq!(freed, want);
        for a in &want {
            assert!(
                ipam.get_assignment_attributes(a.addr())
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        let before = dump(ipam.store()).await;
        assert!(matches!(
            ipam.release_by_handle(&handle("pod")).await,
            Err(Error::HandleNotFound { .. })
        ));
        assert!(matches!(
            ipam.ips_by_handle(&handle("pod")).await,
            Err(Error::HandleNotFound { .. })
        ));
        assert_eq!(dump(ipam.store()).await, before);
        assert_eq!(
            ipam.ips_by_handle(&handle("other")).await.unwrap(),
            keep.ipv4
        );
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn assignment_attributes_say_who_holds_an_address() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 26)]).await;
        let mut a = args("n1", 1, 0, "k8s-pod-network.abc");
        a.attrs.insert("namespace".into(), "default".into());
        a.attrs.insert("pod".into(), "nginx".into());
        let got = ipam.auto_assign(&a).await.unwrap();
        let who = ipam
            .get_assignment_attributes(got.ipv4[0].addr())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who.ip, got.ipv4[0]);
        assert_eq!(who.handle.as_deref(), Some("k8s-pod-network.abc"));
        assert_eq!(who.attrs["pod"], "nginx");
        assert_eq!(who.affinity.as_deref(), Some("host:n1"));
        assert!(who.sequence.is_some() && who.released_at.is_none());
        assert!(
            ipam.get_assignment_attributes(ip("10.0.0.63"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            ipam.get_assignment_attributes(ip("192.0.2.1"))
                .await
                .unwrap()
                .is_none()
        );
    });
}
