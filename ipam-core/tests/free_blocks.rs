//! The free-block hints of a claim: known-taken blocks are skipped without a read or a list,
//! and a hint made stale by another process never hides a free block.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::{BlockAffinity, Datastore, Ipam, IpamBlock, IpamConfig, MemoryStore, Scope};

/// A /20 pool of 64 /26 blocks with strict affinity (no borrowing hides a failed claim);
/// nodes `o0`..`o{taken-1}` hold one block each.
async fn filled(taken: u32) -> Ipam<MemoryStore> {
    let (ipam, _) = ipam_with(&[("p", "10.0.0.0/20", 26)]).await;
    let c = IpamConfig {
        strict_affinity: true,
        ..Default::default()
    };
    ipam.set_config(c).await.unwrap();
    for i in 0..taken {
        let got = ipam
            .auto_assign(&args(&format!("o{i}"), 1, 0, &format!("h{i}")))
            .await
            .unwrap();
        assert_eq!(got.ipv4.len(), 1);
    }
    ipam
}

/// 63 of 64 blocks taken, all claimed through this allocator: the last claim reads no list
/// beyond the node snapshot and probes only the one free block.
#[test]
fn a_claim_in_a_nearly_full_pool_skips_known_taken_blocks_without_a_list() {
    pollster::block_on(async {
        let ipam = filled(63).await;
        let before = ipam.store().op_counts();
        let got = ipam.auto_assign(&args("x", 1, 0, "hx")).await.unwrap();
        assert_eq!(got.ipv4.len(), 1);
        let spent = ipam.store().op_counts().since(&before);
        // One list is the node snapshot; the probe is one get.
        assert_eq!(spent.lists, 1, "{spent:?}");
        assert!(spent.gets <= 1, "{spent:?}");
        assert_consistent(ipam.store()).await;
    });
}

/// Every block is believed taken; another process (here: the store directly) deletes one.
/// The claim walks the pool on its hints, finds nothing, re-learns them from one list and
/// claims the freed block.
#[test]
fn a_block_freed_behind_the_allocators_back_is_still_claimed() {
    pollster::block_on(async {
        let ipam = filled(64).await;
        let s = ipam.store();
        assert!(ipam.auto_assign(&args("x", 1, 0, "hx")).await.is_err());
        let victim = block(s, "10.0.0.0/26").await;
        let owner = victim.value.host().unwrap().to_owned();
        ipam.release_ips(&[ipam_core::ReleaseRequest::new(ip("10.0.0.0"))])
            .await
            .unwrap();
        let victim = block(s, "10.0.0.0/26").await;
        s.delete::<IpamBlock>(&victim.name, &victim.revision)
            .await
            .unwrap();
        for a in s.list::<BlockAffinity>(Scope::Node(&owner)).await.unwrap() {
            s.delete::<BlockAffinity>(&a.name, &a.revision)
                .await
                .unwrap();
        }
        let got = ipam.auto_assign(&args("x", 1, 0, "hx")).await.unwrap();
        assert_eq!(addrs(&got.ipv4), vec!["10.0.0.0"]);
        assert_consistent(s).await;
    });
}
