//! Reservations: reserved addresses are never handed out, and blocks reserved whole (by
//! one reservation or several) are not claimed.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ipam_core::{Error, IpReservation};

fn reservation(cidrs: &[&str]) -> IpReservation {
    IpReservation {
        reserved_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
    }
}

#[test]
fn reserved_addresses_are_passed_over() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/29", 29)]).await;
        ipam.create_reservation("r", reservation(&["10.0.0.0", "10.0.0.2/31"]))
            .await
            .unwrap();
        let got = ipam.auto_assign(&args("n1", 5, 0, "a")).await.unwrap();
        assert_eq!(
            addrs(&got.ipv4),
            ["10.0.0.1", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]
        );
        assert!(matches!(
            ipam.auto_assign(&args("n1", 1, 0, "b")).await,
            Err(Error::PoolExhausted { .. })
        ));
        let err = ipam
            .assign_ip(ip("10.0.0.3"), None, BTreeMap::new(), &node("n1"))
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::Reserved { reservation, .. } if reservation == "r"));
        assert_eq!(
            ipam.reserved_by(ip("10.0.0.2")).await.unwrap().as_deref(),
            Some("r")
        );
        assert_eq!(ipam.reserved_by(ip("10.0.0.4")).await.unwrap(), None);
        // Lifting the reservation makes the addresses usable again.
        ipam.delete_reservation("r").await.unwrap();
        assert_eq!(
            ipam.auto_assign(&args("n1", 3, 0, "c"))
                .await
                .unwrap()
                .ipv4
                .len(),
            3
        );
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn wholly_reserved_blocks_are_not_claimed() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/28", 30)]).await;
        // Block .0/30 by one reservation, block .4/30 by two together.
        ipam.create_reservation("one", reservation(&["10.0.0.0/30"]))
            .await
            .unwrap();
        ipam.create_reservation("two", reservation(&["10.0.0.4/31"]))
            .await
            .unwrap();
        ipam.create_reservation("three", reservation(&["10.0.0.6/31"]))
            .await
            .unwrap();
        let got = ipam.auto_assign(&args("n1", 8, 0, "a")).await.unwrap();
        assert!(
            got.ipv4.iter().all(|n| n.addr() >= ip("10.0.0.8")),
            "{got:?}"
        );
        assert!(!block_exists(ipam.store(), "10.0.0.0/30").await);
        assert!(!block_exists(ipam.store(), "10.0.0.4/30").await);
        assert!(ipam.auto_assign(&args("n2", 1, 0, "b")).await.is_err());
        assert!(!block_exists(ipam.store(), "10.0.0.4/30").await);
        assert_consistent(ipam.store()).await;
    });
}
