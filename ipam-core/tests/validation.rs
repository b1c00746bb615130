//! IPAMConfig and pool validation, and the rule that bad input gets a typed error and
//! changes nothing in the store.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ipam_core::{Error, IpReservation, IpamConfig, MemoryStore};

type Ipam = ipam_core::Ipam<MemoryStore>;

/// A store with a pool, a full small pool, an allocation and a reservation.
async fn populated() -> Ipam {
    let (ipam, _) = ipam_with(&[("main", "10.0.0.0/24", 28), ("tiny", "10.9.0.0/30", 30)]).await;
    let mut all_tiny = args("n1", 4, 0, "full");
    all_tiny.pools4 = vec!["tiny".into()];
    ipam.auto_assign(&all_tiny).await.unwrap();
    ipam.assign_ip(
        ip("10.0.0.5"),
        Some(&handle("a")),
        BTreeMap::new(),
        &node("n1"),
    )
    .await
    .unwrap();
    let r = IpReservation {
        reserved_cidrs: vec!["10.0.0.200/30".into()],
    };
    ipam.create_reservation("keep", r).await.unwrap();
    ipam
}

#[test]
fn config_defaults_and_cross_field_rules() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        assert_eq!(ipam.get_config().await.unwrap(), IpamConfig::default());
        let cases = [
            (
                false,
                false,
                0,
                0,
                "autoAllocateBlocks=false requires strictAffinity=true",
            ),
            (
                false,
                true,
                3,
                0,
                "maxBlocksPerHost>0 requires strictAffinity=true",
            ),
            (
                true,
                true,
                0,
                1201,
                "ipCooldownSeconds must be between 0 and 1200",
            ),
        ];
        for (strict, auto, max, cool, why) in cases {
            let c = IpamConfig {
                strict_affinity: strict,
                auto_allocate_blocks: auto,
                max_blocks_per_host: max,
                ip_cooldown_seconds: cool,
                ..Default::default()
            };
            let before = dump(ipam.store()).await;
            let err = ipam.set_config(c).await.unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { reason } if reason == why),
                "{err}"
            );
            assert_eq!(dump(ipam.store()).await, before);
        }
        let ok = IpamConfig {
            strict_affinity: true,
            auto_allocate_blocks: false,
            max_blocks_per_host: 3,
            ip_cooldown_seconds: 1200,
            ..Default::default()
        };
        ipam.set_config(ok.clone()).await.unwrap();
        assert_eq!(ipam.get_config().await.unwrap(), ok);
    });
}

#[test]
fn bad_input_gets_a_typed_error_and_changes_nothing() {
    pollster::block_on(async {
        let ipam = populated().await;
        let before = dump(ipam.store()).await;
        let mut errors = Vec::new();
        macro_rules! refused {
            ($call:expr, $pat:pat) => {{
                let err = $call.await.unwrap_err();
                assert!(matches!(err, $pat), "{}: {err}", stringify!($call));
                assert_eq!(
                    dump(ipam.store()).await,
                    before,
                    "{} wrote",
                    stringify!($call)
                );
                errors.push(err.to_string());
            }};
        }
        refused!(
            ipam.create_pool("x", pool("10.1.0.1/24", 26)),
            Error::InvalidCidr { .. }
        );
        refused!(
            ipam.create_pool("x", pool("10.0.0.128/25", 28)),
            Error::PoolOverlap { .. }
        );
        refused!(
            ipam.create_pool("x", pool("10.0.0.0/8", 28)),
            Error::PoolOverlap { .. }
        );
        refused!(
            ipam.create_pool("x", pool("10.1.0.0/16", 19)),
            Error::BlockSizeOutOfRange { .. }
        );
        refused!(
            ipam.create_pool("x", pool("10.1.0.0/16", 33)),
            Error::BlockSizeOutOfRange { .. }
        );
        refused!(
            ipam.create_pool("x", pool("fd00::/64", 115)),
            Error::BlockSizeOutOfRange { .. }
        );
        refused!(
            ipam.create_pool("x", pool("10.1.0.0/28", 26)),
            Error::InvalidCidr { .. }
        );
        refused!(
            ipam.create_pool("main", pool("10.2.0.0/24", 26)),
            Error::PoolExists { .. }
        );
        refused!(
            ipam.create_pool("Bad Name", pool("10.2.0.0/24", 26)),
            Error::InvalidName { .. }
        );
        let mut bad_selector = pool("10.2.0.0/24", 26);
        bad_selector.node_selector = "a == ".into();
        refused!(
            ipam.create_pool("x", bad_selector),
            Error::InvalidSelector { .. }
        );
        refused!(
            ipam.update_pool("main", pool("10.0.0.0/23", 28)),
            Error::PoolImmutable { .. }
        );
        refused!(
            ipam.update_pool("main", pool("10.0.0.0/24", 27)),
            Error::PoolImmutable { .. }
        );
        refused!(ipam.delete_pool("main", false), Error::PoolInUse { .. });
        let n1 = node("n1");
        refused!(
            ipam.assign_ip(ip("192.0.2.1"), None, BTreeMap::new(), &n1),
            Error::NotInPool { .. }
        );
        refused!(
            ipam.assign_ip(ip("10.0.0.201"), None, BTreeMap::new(), &n1),
            Error::Reserved { .. }
        );
        refused!(
            ipam.assign_ip(ip("10.0.0.5"), None, BTreeMap::new(), &n1),
            Error::AlreadyAssigned { .. }
        );
        let mut tiny = args("n2", 1, 0, "b");
        tiny.pools4 = vec!["tiny".into()];
        refused!(ipam.auto_assign(&tiny), Error::PoolExhausted { .. });
        refused!(
            ipam.auto_assign(&args("n2", 70_000, 0, "b")),
            Error::PoolExhausted { .. }
        );
        refused!(
            ipam.auto_assign(&args("n2", 1, 1, "b")),
            Error::NoCandidatePools { .. }
        );
        refused!(
            ipam.release_by_handle(&handle("nobody")),
            Error::HandleNotFound { .. }
        );
        refused!(
            ipam.ips_by_handle(&handle("nobody")),
            Error::HandleNotFound { .. }
        );
        let bad = IpamConfig {
            auto_allocate_blocks: false,
            ..Default::default()
        };
        refused!(ipam.set_config(bad), Error::InvalidConfig { .. });
        let r = IpReservation {
            reserved_cidrs: vec!["10.0.0.300".into()],
        };
        refused!(ipam.create_reservation("bad", r), Error::InvalidCidr { .. });
        // The messages name what was wrong.
        assert!(
            errors.iter().any(|e| e.contains("overlaps pool \"main\"")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("10.0.0.201 is reserved by IPReservation \"keep\""))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("/19 is outside the IPv4 range /20../32"))
        );
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn pools_can_be_changed_and_deleted() {
    pollster::block_on(async {
        let ipam = populated().await;
        let mut off = pool("10.0.0.0/24", 28);
        off.disabled = true;
        ipam.update_pool("main", off).await.unwrap();
        assert!(ipam.get_pool("10.0.0.0/24").await.unwrap().value.disabled);
        assert!(
            ipam.auto_assign(&args("n1", 1, 0, "x")).await.is_err(),
            "disabled, tiny full"
        );
        ipam.delete_pool("main", true).await.unwrap();
        assert!(matches!(
            ipam.get_pool("main").await,
            Err(Error::PoolNotFound { .. })
        ));
        assert!(matches!(
            ipam.ips_by_handle(&handle("a")).await,
            Err(Error::HandleNotFound { .. })
        ));
        assert!(!block_exists(ipam.store(), "10.0.0.0/28").await);
        assert_consistent(ipam.store()).await;
    });
}
