//! IP cooldown: a released address rests before reuse, then rejoins the queue in release
//! order; `release_cooled_down` (gc of one block) frees what is due.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ipam_core::{IpamConfig, ReleaseOutcome, ReleaseRequest};

async fn cooldown(ipam: &ipam_core::Ipam<ipam_core::MemoryStore>, secs: u32) {
    let c = IpamConfig {
        ip_cooldown_seconds: secs,
        ..Default::default()
    };
    ipam.set_config(c).await.unwrap();
}

#[test]
fn released_addresses_rest_then_return_in_release_order() {
    pollster::block_on(async {
        let (ipam, clock) = ipam_with(&[("p", "10.0.0.0/29", 29)]).await;
        cooldown(&ipam, 60).await;
        let got = ipam.auto_assign(&args("n1", 6, 0, "a")).await.unwrap();
        let (x, y) = (got.ipv4[4].addr(), got.ipv4[1].addr());
        for a in [x, y] {
            let out = ipam.release_ips(&[ReleaseRequest::new(a)]).await.unwrap();
            assert_eq!(out[0].1, ReleaseOutcome::CoolingDown);
        }
        let who = ipam.get_assignment_attributes(x).await.unwrap().unwrap();
        assert!(who.released_at.is_some());
        assert_eq!(ipam.ips_by_handle(&handle("a")).await.unwrap().len(), 4);
        // Two never-used addresses are left; the resting ones are not handed out.
        let two = ipam.auto_assign(&args("n1", 2, 0, "b")).await.unwrap();
        assert!(!two.ipv4.iter().any(|n| n.addr() == x || n.addr() == y));
        assert!(ipam.auto_assign(&args("n1", 1, 0, "c")).await.is_err());
        clock.advance(time::Duration::seconds(59));
        assert!(ipam.auto_assign(&args("n1", 1, 0, "c")).await.is_err());
        assert!(
            ipam.assign_ip(x, None, BTreeMap::new(), &node("n1"))
                .await
                .is_err(),
            "a resting address cannot be taken by name either"
        );
        clock.advance(time::Duration::seconds(2));
        let back = ipam.auto_assign(&args("n1", 2, 0, "c")).await.unwrap();
        assert_eq!(addrs(&back.ipv4), vec![x.to_string(), y.to_string()]);
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn release_cooled_down_frees_only_what_is_due() {
    pollster::block_on(async {
        let (ipam, clock) = ipam_with(&[("p", "10.0.0.0/28", 28)]).await;
        cooldown(&ipam, 30).await;
        let got = ipam.auto_assign(&args("n1", 3, 0, "a")).await.unwrap();
        let block = ipam_core::BlockCidr::new("10.0.0.0/28".parse().unwrap()).unwrap();
        ipam.release_by_handle(&handle("a")).await.unwrap();
        assert!(ipam.release_cooled_down(block).await.unwrap().is_empty());
        assert_eq!(ipam.utilization(&[]).await.unwrap()[0].usage.in_use, 3);
        clock.advance(time::Duration::seconds(31));
        let mut freed = ipam.release_cooled_down(block).await.unwrap();
        freed.sort();
        let mut want: Vec<_> = got.ipv4.iter().map(|n| n.addr()).collect();
        want.sort();
        assert_eq!(freed, want);
        assert_eq!(ipam.utilization(&[]).await.unwrap()[0].usage.in_use, 0);
        assert!(ipam.release_cooled_down(block).await.unwrap().is_empty());
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn a_rested_address_in_another_nodes_full_block_can_be_borrowed() {
    pollster::block_on(async {
        let (ipam, clock) = ipam_with(&[("p", "10.0.0.0/29", 29)]).await;
        cooldown(&ipam, 10).await;
        let got = ipam.auto_assign(&args("n1", 8, 0, "a")).await.unwrap();
        let x = got.ipv4[3].addr();
        ipam.release_ips(&[ReleaseRequest::new(x)]).await.unwrap();
        assert!(ipam.auto_assign(&args("n2", 1, 0, "b")).await.is_err());
        clock.advance(time::Duration::seconds(11));
        let b = ipam.auto_assign(&args("n2", 1, 0, "b")).await.unwrap();
        assert_eq!(b.ipv4[0].addr(), x);
        assert_consistent(ipam.store()).await;
    });
}
