//! Utilization per pool and per block; available is counted, not derived by subtraction,
//! because reserved and in-use addresses can overlap.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::{IpReservation, Usage};

#[test]
fn counts_per_pool_and_block_with_overlapping_reservations() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/28", 29), ("q", "10.1.0.0/28", 29)]).await;
        let got = ipam.auto_assign(&args("n1", 3, 0, "a")).await.unwrap();
        assert!(
            got.ipv4.iter().all(|n| n.addr() < ip("10.0.0.16")),
            "pool p is first"
        );
        let block = got.ipv4[0].trunc();
        let b = ipam_core::BlockCidr::new(block).unwrap();
        // Reserve the third allocated address and the next free one (after allocation, as
        // an operator might), plus one address of unclaimed space.
        let (third, fourth) = (b.addr(2), b.addr(3));
        let other_block = if block.network() == ip("10.0.0.0") {
            "10.0.0.9"
        } else {
            "10.0.0.1"
        };
        let r = IpReservation {
            reserved_cidrs: vec![third.to_string(), fourth.to_string(), other_block.into()],
        };
        ipam.create_reservation("r", r).await.unwrap();
        let u = ipam.utilization(&[]).await.unwrap();
        assert_eq!(u.len(), 2);
        let p = &u[0];
        assert_eq!(p.name, "p");
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(p.blocks[0].affinity.as_deref(), Some("host:n1"));
        let bu = p.blocks[0].usage;
        assert_eq!(
            bu,
            Usage {
                capacity: 8,
                in_use: 3,
                reserved: 2,
                available: 4
            },
            "available is the 5 free minus the 1 free-and-reserved"
        );
        assert_ne!(bu.available, bu.capacity - bu.in_use - bu.reserved);
        // Pool: 4 in the block plus the 7 free of the 8 unclaimed addresses.
        assert_eq!(
            p.usage,
            Usage {
                capacity: 16,
                in_use: 3,
                reserved: 3,
                available: 11
            }
        );
        assert_eq!(
            u[1].usage,
            Usage {
                capacity: 16,
                in_use: 0,
                reserved: 0,
                available: 16
            }
        );
        // Filtering by name or CIDR.
        let only = ipam.utilization(&["10.1.0.0/28".into()]).await.unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name, "q");
    });
}
