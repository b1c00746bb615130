//! Calico's allocation rules where a cluster moved from Calico depends on them
//! (`docs/calico-compatibility.md`, F1, F2, F5): the block limit, explicitly requested
//! pools, and namespace selectors.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ipam_core::{Datastore, Error, Labels};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_block_limit_counts_only_the_requests_pools_and_a_request_cannot_raise_it() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("a", "10.1.0.0/24", 30), ("b", "10.2.0.0/24", 30)]).await;
        strict(&ipam, 1).await;
        // A block of pool a does not count against a request for pool b.
        let mut in_a = args("n1", 4, 0, "in-a");
        in_a.pools4 = vec!["a".into()];
        ipam.auto_assign(&in_a).await.unwrap();
        let mut in_b = args("n1", 4, 0, "in-b");
        in_b.pools4 = vec!["b".into()];
        ipam.auto_assign(&in_b).await.unwrap();
        // The node's block of pool b is full and the limit is 1: a request asking for
        // 5 blocks still gets the config's 1.
        let mut more = args("n1", 1, 0, "more");
        more.pools4 = vec!["b".into()];
        more.max_blocks_per_host = Some(5);
        let err = ipam.auto_assign(&more).await.unwrap_err();
        assert!(matches!(err, Error::BlockLimit { limit: 1, .. }), "{err}");
    });
}

#[test]
fn a_requested_pool_is_used_whatever_its_selectors_say() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        let mut elsewhere = pool("10.3.0.0/24", 26);
        elsewhere.node_selector = "zone == 'b'".into();
        elsewhere.namespace_selector = "team == 'x'".into();
        ipam.create_pool("elsewhere", elsewhere).await.unwrap();
        // Not asked for by name: the node (zone a, no namespace) is not selected.
        let mut unnamed = args("n1", 1, 0, "unnamed");
        unnamed.node_labels = labels(&[("zone", "a")]);
        let err = ipam.auto_assign(&unnamed).await.unwrap_err();
        assert!(matches!(err, Error::NoCandidatePools { .. }), "{err}");
        // Asked for by name or CIDR: used, as Calico's determinePools does.
        for name in ["elsewhere", "10.3.0.0/24"] {
            let mut named = args("n1", 1, 0, &format!("named-{}", name.len()));
            named.node_labels = labels(&[("zone", "a")]);
            named.pools4 = vec![name.into()];
            let got = ipam.auto_assign(&named).await.unwrap();
            assert_eq!(got.ipv4.len(), 1, "{name}");
        }
        // A disabled pool stays unusable even by name.
        let mut off = pool("10.4.0.0/24", 26);
        off.disabled = true;
        ipam.create_pool("off", off).await.unwrap();
        let mut named_off = args("n1", 1, 0, "off");
        named_off.pools4 = vec!["off".into()];
        assert!(ipam.auto_assign(&named_off).await.is_err());
    });
}

#[test]
fn a_namespace_selector_selects_by_the_namespaces_labels() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        let mut team = pool("10.5.0.0/24", 26);
        team.namespace_selector = "team == 'x'".into();
        ipam.create_pool("team-x", team).await.unwrap();
        ipam.create_pool("everyone", pool("10.6.0.0/24", 26))
            .await
            .unwrap();
        let in_pool = |got: &ipam_core::Assigned, cidr: &str| {
            let net: ipnet::IpNet = cidr.parse().unwrap();
            got.ipv4.iter().all(|a| net.contains(&a.addr()))
        };
        // Pods of no namespace, of another team or of an unlabelled namespace never get
        // team x's addresses.
        for (i, ns) in [None, Some(labels(&[("team", "y")])), Some(Labels::new())]
            .into_iter()
            .enumerate()
        {
            let mut other = args("n1", 1, 0, &format!("other-{i}"));
            other.namespace_labels = ns;
            let got = ipam.auto_assign(&other).await.unwrap();
            assert!(in_pool(&got, "10.6.0.0/24"), "{got:?} for namespace #{i}");
        }
        // With the open pool disabled, team x still gets addresses, a pod without a
        // namespace none.
        let mut everyone = ipam.get_pool("everyone").await.unwrap().value;
        everyone.disabled = true;
        ipam.update_pool("everyone", everyone).await.unwrap();
        let mut x = args("n1", 1, 0, "team-x-pod");
        x.namespace_labels = Some(labels(&[("team", "x")]));
        assert!(in_pool(&ipam.auto_assign(&x).await.unwrap(), "10.5.0.0/24"));
        let mut none = args("n1", 1, 0, "no-namespace");
        none.namespace_labels = None;
        let err = ipam.auto_assign(&none).await.unwrap_err();
        assert!(matches!(err, Error::NoCandidatePools { .. }), "{err}");
    });
}

#[test]
fn a_pool_whose_namespace_selector_does_not_parse_is_refused() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        let mut bad = pool("10.7.0.0/24", 26);
        bad.namespace_selector = "team ==".into();
        assert!(ipam.create_pool("bad", bad).await.is_err());
    });
}

/// The owner (`host:<node>`) of the block holding `ip`'s address.
async fn owner_of(ipam: &ipam_core::Ipam<ipam_core::MemoryStore>, ip: &ipnet::IpNet) -> String {
    let who = ipam.get_assignment_attributes(ip.addr()).await.unwrap();
    who.and_then(|w| w.affinity).unwrap_or_default()
}

#[test]
fn an_empty_block_of_another_node_is_reclaimed_after_a_minute_when_none_is_free() {
    pollster::block_on(async {
        let (ipam, clock) = ipam();
        // One block in the pool.
        ipam.create_pool("p", pool("10.8.0.0/30", 30))
            .await
            .unwrap();
        ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        ipam.release_by_handle(&handle("a")).await.unwrap();
        // n1's block is empty but was claimed a moment ago: with strict affinity (no
        // borrowing) n2 gets nothing yet.
        strict(&ipam, 0).await;
        let err = ipam.auto_assign(&args("n2", 1, 0, "b")).await.unwrap_err();
        assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
        // A minute later the empty block is n2's.
        clock.advance(time::Duration::seconds(61));
        let got = ipam.auto_assign(&args("n2", 1, 0, "b")).await.unwrap();
        assert_eq!(owner_of(&ipam, &got.ipv4[0]).await, "host:n2");
        assert_consistent(ipam.store()).await;
        // A block in use is never reclaimed, however old.
        clock.advance(time::Duration::seconds(600));
        let err = ipam.auto_assign(&args("n1", 4, 0, "c")).await.unwrap_err();
        assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
        assert_eq!(owner_of(&ipam, &got.ipv4[0]).await, "host:n2");
    });
}

#[test]
fn a_confirmed_affinity_whose_block_is_gone_gets_its_block_back() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.9.0.0/29", 30)]).await;
        strict(&ipam, 1).await;
        let got = ipam.auto_assign(&args("n1", 4, 0, "a")).await.unwrap();
        let cidr = block(ipam.store(), &got.ipv4[0].trunc().to_string()).await;
        // The block vanishes (deleted by hand, or lost); the affinity stays.
        let store = ipam.store();
        store
            .delete::<ipam_core::IpamBlock>(&cidr.name, &cidr.revision)
            .await
            .unwrap();
        // At the limit of one block, n1 is not stuck: its block is created again.
        let again = ipam.auto_assign(&args("n1", 1, 0, "b")).await.unwrap();
        assert_eq!(again.ipv4[0].trunc(), got.ipv4[0].trunc());
    });
}

#[test]
fn a_stale_affinity_is_deleted_and_no_longer_counts() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.10.0.0/29", 30)]).await;
        strict(&ipam, 1).await;
        let got = ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        // The block is handed to n2 behind n1's back; n1's affinity is stale.
        let store = ipam.store();
        let mut b = block(store, &got.ipv4[0].trunc().to_string()).await;
        b.value.affinity = Some("host:n2".into());
        store.update(&b.name, b.value, &b.revision).await.unwrap();
        // n1 drops the stale affinity, so its limit of one lets it claim the other block.
        let again = ipam.auto_assign(&args("n1", 1, 0, "b")).await.unwrap();
        assert_ne!(again.ipv4[0].trunc(), got.ipv4[0].trunc());
        assert_eq!(owner_of(&ipam, &again.ipv4[0]).await, "host:n1");
        let affinities: Vec<_> = store
            .list::<ipam_core::BlockAffinity>(ipam_core::Scope::Node("n1"))
            .await
            .unwrap();
        assert_eq!(affinities.len(), 1, "{affinities:?}");
    });
}

#[test]
fn empty_blocks_of_a_pool_that_no_longer_selects_the_node_are_released() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        let mut zone_a = pool("10.11.0.0/24", 26);
        zone_a.node_selector = "zone == 'a'".into();
        ipam.create_pool("zone-a", zone_a).await.unwrap();
        ipam.create_pool("open", pool("10.12.0.0/24", 26))
            .await
            .unwrap();
        let mut a = args("n1", 1, 0, "a");
        a.node_labels = labels(&[("zone", "a")]);
        a.pools4 = vec!["zone-a".into()];
        let in_a = ipam.auto_assign(&a).await.unwrap();
        let mut kept = args("n1", 1, 0, "kept");
        kept.node_labels = labels(&[("zone", "a")]);
        kept.pools4 = vec!["zone-a".into()];
        ipam.auto_assign(&kept).await.unwrap();
        ipam.release_by_handle(&handle("a")).await.unwrap();
        // The node moved to zone b: its zone-a block still holds "kept", so it stays.
        let mut b = args("n1", 1, 0, "b");
        b.node_labels = labels(&[("zone", "b")]);
        ipam.auto_assign(&b).await.unwrap();
        let zone_a_block = in_a.ipv4[0].trunc().to_string();
        assert_eq!(
            block(ipam.store(), &zone_a_block)
                .await
                .value
                .affinity
                .as_deref(),
            Some("host:n1")
        );
        // Once empty, the next assignment releases it.
        ipam.release_by_handle(&handle("kept")).await.unwrap();
        let mut c = args("n1", 1, 0, "c");
        c.node_labels = labels(&[("zone", "b")]);
        ipam.auto_assign(&c).await.unwrap();
        assert!(
            !block_exists(ipam.store(), &zone_a_block).await,
            "the zone-a block is still there"
        );
        assert_consistent(ipam.store()).await;
    });
}
