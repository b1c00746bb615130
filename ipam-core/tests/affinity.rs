//! Block affinities: two-phase claims and what a crash between their steps leaves, claim
//! and release of affinities, a host's and a pool's affinities, removing a host.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::names::affinity_name;
use ipam_core::{
    AffinityState, BlockAffinity, BlockCidr, Datastore, Error, IpamBlock, ReleaseRequest,
};

fn bc(s: &str) -> BlockCidr {
    BlockCidr::new(s.parse().unwrap()).unwrap()
}

fn affinity(node: &str, cidr: &str, state: AffinityState) -> BlockAffinity {
    BlockAffinity {
        cidr: cidr.parse().unwrap(),
        node: node.into(),
        state,
        affinity_type: Some("host".into()),
        deleted: false,
        extra: Default::default(),
    }
}

async fn affinity_state<D: Datastore>(store: &D, node: &str, cidr: &str) -> Option<AffinityState> {
    let name = affinity_name(node, &bc(cidr));
    store
        .get::<BlockAffinity>(&name)
        .await
        .ok()
        .map(|a| a.value.state)
}

/// Crash after step 1: a pending affinity and no block. The next claim finishes it.
#[test]
fn a_pending_affinity_without_a_block_is_completed() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/26", 26)]).await;
        let s = ipam.store();
        let name = affinity_name("n1", &bc("10.0.0.0/26"));
        s.create(&name, affinity("n1", "10.0.0.0/26", AffinityState::Pending))
            .await
            .unwrap();
        assert_consistent(s).await;
        let got = ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        assert_eq!(got.ipv4[0].to_string(), "10.0.0.0/26");
        assert_eq!(
            affinity_state(s, "n1", "10.0.0.0/26").await,
            Some(AffinityState::Confirmed)
        );
        assert_consistent(s).await;
    });
}

/// Crash after step 2: the block exists for the node, the affinity is still pending. The
/// node's next assignment confirms it and uses the block.
#[test]
fn a_pending_affinity_with_its_block_is_confirmed() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 26)]).await;
        let s = ipam.store();
        let b = IpamBlock::new(bc("10.0.0.128/26"), Some("host:n1".into()), 7, None);
        s.create(&bc("10.0.0.128/26").name(), b).await.unwrap();
        let name = affinity_name("n1", &bc("10.0.0.128/26"));
        s.create(
            &name,
            affinity("n1", "10.0.0.128/26", AffinityState::Pending),
        )
        .await
        .unwrap();
        let got = ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        assert_eq!(got.ipv4[0].to_string(), "10.0.0.128/26");
        assert_eq!(
            affinity_state(s, "n1", "10.0.0.128/26").await,
            Some(AffinityState::Confirmed)
        );
        assert_consistent(s).await;
    });
}

/// A pending affinity owns nothing: another node claims the block, and the stale claim
/// never makes its node the owner of the block or its addresses.
#[test]
fn a_pending_affinity_never_owns_addresses() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/26", 26)]).await;
        let s = ipam.store();
        let name = affinity_name("n1", &bc("10.0.0.0/26"));
        s.create(&name, affinity("n1", "10.0.0.0/26", AffinityState::Pending))
            .await
            .unwrap();
        let got = ipam.auto_assign(&args("n2", 2, 0, "b")).await.unwrap();
        let who = ipam
            .get_assignment_attributes(got.ipv4[0].addr())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who.affinity.as_deref(), Some("host:n2"));
        // n1 may borrow from n2's block (strict affinity is off), but does not own it.
        let n1 = ipam.auto_assign(&args("n1", 1, 0, "c")).await.unwrap();
        let who = ipam
            .get_assignment_attributes(n1.ipv4[0].addr())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(who.affinity.as_deref(), Some("host:n2"));
        assert_ne!(
            affinity_state(s, "n1", "10.0.0.0/26").await,
            Some(AffinityState::Confirmed)
        );
        assert_consistent(s).await;
    });
}

/// An empty block nobody owns (left by a crash or a released affinity) is adopted.
#[test]
fn an_empty_unowned_block_is_adopted() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/26", 26)]).await;
        let s = ipam.store();
        let b = IpamBlock::new(bc("10.0.0.0/26"), None, 5, None);
        s.create(&bc("10.0.0.0/26").name(), b).await.unwrap();
        ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        let b = block(s, "10.0.0.0/26").await.value;
        assert_eq!(b.host(), Some("n1"));
        assert!(
            b.sequence_number > 5,
            "adoption is a write and raises the number"
        );
        assert_consistent(s).await;
    });
}

#[test]
fn claim_and_release_affinity() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 26)]).await;
        let (claimed, refused) = ipam
            .claim_affinity("10.0.0.0/25".parse().unwrap(), &node("n1"))
            .await
            .unwrap();
        assert_eq!(claimed, vec![bc("10.0.0.0/26"), bc("10.0.0.64/26")]);
        assert!(refused.is_empty());
        let (claimed, refused) = ipam
            .claim_affinity("10.0.0.64/26".parse().unwrap(), &node("n2"))
            .await
            .unwrap();
        assert!(claimed.is_empty());
        assert_eq!(refused, vec![bc("10.0.0.64/26")]);
        // A non-empty block is kept with must_be_empty, unowned without it.
        let a = ip("10.0.0.70");
        ipam.assign_ip(a, Some(&handle("a")), Default::default(), &node("n1"))
            .await
            .unwrap();
        let before = dump(ipam.store()).await;
        let err = ipam
            .release_affinity(bc("10.0.0.64/26"), &node("n1"), true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BlockNotEmpty { .. }), "{err}");
        assert_eq!(
            dump(ipam.store()).await,
            before,
            "a refused release leaves the claim as it was"
        );
        ipam.release_affinity(bc("10.0.0.64/26"), &node("n1"), false)
            .await
            .unwrap();
        let b = block(ipam.store(), "10.0.0.64/26").await.value;
        assert_eq!(b.affinity, None);
        assert_eq!(b.attribute_of(6).unwrap().handle_id.as_deref(), Some("a"));
        assert_eq!(
            affinity_state(ipam.store(), "n1", "10.0.0.64/26").await,
            None
        );
        // An empty block goes away with its affinity; releasing again is a no-op.
        ipam.release_affinity(bc("10.0.0.0/26"), &node("n1"), true)
            .await
            .unwrap();
        assert!(!block_exists(ipam.store(), "10.0.0.0/26").await);
        ipam.release_affinity(bc("10.0.0.0/26"), &node("n1"), true)
            .await
            .unwrap();
        // The unowned block's last address released: the block is deleted.
        ipam.release_ips(&[ReleaseRequest::new(a)]).await.unwrap();
        assert!(!block_exists(ipam.store(), "10.0.0.64/26").await);
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn release_host_and_pool_affinities_and_remove_host() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 28), ("q", "10.1.0.0/24", 28)]).await;
        let mut only_q = args("n1", 1, 0, "a");
        only_q.pools4 = vec!["q".into()];
        ipam.auto_assign(&args("n1", 17, 0, "a")).await.unwrap(); // two blocks of p or q
        ipam.claim_affinity("10.0.0.0/26".parse().unwrap(), &node("n2"))
            .await
            .unwrap();
        ipam.auto_assign(&only_q).await.unwrap();
        let n1_before = ipam
            .store()
            .list::<BlockAffinity>(ipam_core::Scope::Node("n1"))
            .await
            .unwrap();
        assert!(n1_before.len() >= 2);
        // must_be_empty keeps n1's non-empty blocks.
        let out = ipam
            .release_host_affinities(&node("n1"), true)
            .await
            .unwrap();
        assert!(out.released.is_empty());
        assert_eq!(out.not_empty.len(), n1_before.len());
        // The pool's affinities go; non-empty blocks stay, unowned.
        let out = ipam
            .release_pool_affinities("10.0.0.0/24".parse().unwrap())
            .await
            .unwrap();
        assert!(!out.released.is_empty());
        for a in ipam
            .store()
            .list::<BlockAffinity>(ipam_core::Scope::All)
            .await
            .unwrap()
        {
            assert!(
                !"10.0.0.0/24"
                    .parse::<ipnet::IpNet>()
                    .unwrap()
                    .contains(&a.value.cidr)
            );
        }
        // Removing the host drops the rest of its claims; its addresses stay allocated.
        let held = ipam.ips_by_handle(&handle("a")).await.unwrap();
        let out = ipam.remove_host(&node("n1")).await.unwrap();
        assert!(out.not_empty.is_empty());
        assert!(
            ipam.store()
                .list::<BlockAffinity>(ipam_core::Scope::Node("n1"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(ipam.ips_by_handle(&handle("a")).await.unwrap(), held);
        assert_consistent(ipam.store()).await;
    });
}
