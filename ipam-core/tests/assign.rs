//! auto_assign and assign_ip: families, FIFO reuse, pool selection, strict affinity,
//! borrowing, block limits, and the datastore round trips of the steady state.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use ipam_core::{AssignmentMode, AutoAssignArgs, Error, IntendedUse, ReleaseRequest};

#[test]
fn ipv4_ipv6_and_dual_stack() {
    pollster::block_on(async {
        let (ipam, _) =
            ipam_with(&[("v4", "10.244.0.0/16", 26), ("v6", "fd00:10:244::/64", 122)]).await;
        let v4 = ipam.auto_assign(&args("n1", 2, 0, "a")).await.unwrap();
        assert_eq!((v4.ipv4.len(), v4.ipv6.len()), (2, 0));
        assert!(v4.ipv4.iter().all(|n| n.prefix_len() == 26));
        let v6 = ipam.auto_assign(&args("n1", 0, 1, "b")).await.unwrap();
        assert_eq!((v6.ipv4.len(), v6.ipv6.len()), (0, 1));
        assert_eq!(v6.ipv6[0].prefix_len(), 122);
        let dual = ipam.auto_assign(&args("n1", 1, 1, "c")).await.unwrap();
        assert_eq!((dual.ipv4.len(), dual.ipv6.len()), (1, 1));
        // Consecutive addresses of the node's one block, in queue order.
        let base = v4.ipv4[0].network();
        assert_eq!(v4.ipv4[0].addr(), base);
        assert_eq!(dual.ipv4[0].addr().to_string(), {
            let b = ipam_core::BlockCidr::new(v4.ipv4[0].trunc()).unwrap();
            b.addr(2).to_string()
        });
        let mut held = ipam.ips_by_handle(&handle("c")).await.unwrap();
        held.sort();
        let mut want = dual.ipv4.clone();
        want.extend(dual.ipv6.clone());
        want.sort();
        assert_eq!(held, want);
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn dual_stack_is_all_or_nothing() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("v4", "10.244.0.0/16", 26)]).await;
        // No IPv6 pool: the IPv4 half must not be kept.
        let err = ipam.auto_assign(&args("n1", 1, 1, "a")).await.unwrap_err();
        assert!(
            matches!(err, Error::NoCandidatePools { family: "IPv6", .. }),
            "{err}"
        );
        assert!(matches!(
            ipam.ips_by_handle(&handle("a")).await,
            Err(Error::HandleNotFound { .. })
        ));
        let u = ipam.utilization(&[]).await.unwrap();
        assert_eq!(u[0].usage.in_use, 0);
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn released_addresses_are_reused_oldest_first() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 29)]).await;
        let got = ipam.auto_assign(&args("n1", 6, 0, "a")).await.unwrap();
        let ips: Vec<_> = got.ipv4.iter().map(|n| n.addr()).collect();
        // Free the 4th, then the 2nd: they come back after the untouched tail, in that order.
        for i in [3, 1] {
            ipam.release_ips(&[ReleaseRequest::new(ips[i])])
                .await
                .unwrap();
        }
        let next = ipam.auto_assign(&args("n1", 4, 0, "b")).await.unwrap();
        let base = got.ipv4[0].network();
        let b = ipam_core::BlockCidr::new(got.ipv4[0].trunc()).unwrap();
        assert_eq!(b.addr(0), base);
        assert_eq!(
            addrs(&next.ipv4),
            [b.addr(6), b.addr(7), ips[3], ips[1]]
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        );
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn pools_are_chosen_by_selector_use_mode_and_state() {
    pollster::block_on(async {
        let (ipam, _) = ipam();
        let mut gpu = pool("10.1.0.0/24", 28);
        gpu.node_selector = "gpu == 'true' && !has(spot)".into();
        ipam.create_pool("gpu", gpu).await.unwrap();
        let mut lb = pool("10.2.0.0/24", 28);
        lb.allowed_uses = vec![IntendedUse::LoadBalancer];
        ipam.create_pool("lb", lb).await.unwrap();
        let mut manual = pool("10.3.0.0/24", 28);
        manual.assignment_mode = Some(AssignmentMode::Manual);
        ipam.create_pool("manual", manual).await.unwrap();
        let mut off = pool("10.4.0.0/24", 28);
        off.disabled = true;
        ipam.create_pool("off", off).await.unwrap();

        let in_pool = |got: &ipam_core::Assigned, cidr: &str| {
            let net: ipnet::IpNet = cidr.parse().unwrap();
            got.ipv4.iter().all(|a| net.contains(&a.addr()))
        };
        // A node without the label finds no pool for workloads.
        let err = ipam
            .auto_assign(&args("plain", 1, 0, "a"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoCandidatePools { .. }), "{err}");
        // With the label, the selector pool serves it.
        let mut a = args("gpu-node", 1, 0, "b");
        a.node_labels.insert("gpu".into(), "true".into());
        assert!(in_pool(&ipam.auto_assign(&a).await.unwrap(), "10.1.0.0/24"));
        a.node_labels.insert("spot".into(), "1".into());
        assert!(
            ipam.auto_assign(&a).await.is_err(),
            "!has(spot) excludes it"
        );
        // Load balancer addresses come only from the pool that allows them.
        let mut l = args("plain", 1, 0, "c");
        l.intended_use = IntendedUse::LoadBalancer;
        assert!(in_pool(&ipam.auto_assign(&l).await.unwrap(), "10.2.0.0/24"));
        // A manual pool serves only requests that name it, by name or CIDR.
        let mut m = args("plain", 1, 0, "d");
        m.pools4 = vec!["manual".into()];
        assert!(in_pool(&ipam.auto_assign(&m).await.unwrap(), "10.3.0.0/24"));
        m.pools4 = vec!["10.3.0.0/24".into()];
        assert!(in_pool(&ipam.auto_assign(&m).await.unwrap(), "10.3.0.0/24"));
        // A disabled pool serves nobody, even when named, and says why.
        let mut d = args("plain", 1, 0, "e");
        d.pools4 = vec!["off".into()];
        let err = ipam.auto_assign(&d).await.unwrap_err();
        assert!(err.to_string().contains("off (disabled)"), "{err}");
        d.pools4 = vec!["nope".into()];
        assert!(matches!(
            ipam.auto_assign(&d).await,
            Err(Error::PoolNotFound { .. })
        ));
        assert!(matches!(
            ipam.assign_ip(ip("10.4.0.1"), None, BTreeMap::new(), &node("plain"))
                .await,
            Err(Error::NotInPool { .. })
        ));
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn assign_ip_claims_the_block_and_refuses_taken_addresses() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 28)]).await;
        let got = ipam
            .assign_ip(
                ip("10.0.0.21"),
                Some(&handle("a")),
                BTreeMap::new(),
                &node("n1"),
            )
            .await
            .unwrap();
        assert_eq!(got.to_string(), "10.0.0.21/28");
        let b = block(ipam.store(), "10.0.0.16/28").await.value;
        assert_eq!(
            b.host(),
            Some("n1"),
            "the free block was claimed for the node"
        );
        let before = dump(ipam.store()).await;
        let err = ipam
            .assign_ip(
                ip("10.0.0.21"),
                Some(&handle("b")),
                BTreeMap::new(),
                &node("n2"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyAssigned { handle: Some(h), .. } if h == "a"),
            "{err}"
        );
        assert_eq!(dump(ipam.store()).await, before);
        // Without strict affinity another node may take a free address in n1's block.
        ipam.assign_ip(
            ip("10.0.0.22"),
            Some(&handle("b")),
            BTreeMap::new(),
            &node("n2"),
        )
        .await
        .unwrap();
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn strict_affinity_refuses_other_nodes_blocks() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/28", 29)]).await;
        strict(&ipam, 0).await;
        let a = ipam.auto_assign(&args("n1", 8, 0, "a")).await.unwrap();
        let b = ipam.auto_assign(&args("n2", 1, 0, "b")).await.unwrap();
        let b_block = b.ipv4[0].trunc();
        assert_ne!(a.ipv4[0].trunc(), b_block);
        let before = dump(ipam.store()).await;
        // n1's block is full, the only other block is n2's: no borrowing.
        let err = ipam.auto_assign(&args("n1", 1, 0, "c")).await.unwrap_err();
        assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
        // Nor a named address in n2's block.
        let free_in_b = ipam_core::BlockCidr::new(b_block).unwrap().addr(5);
        let err = ipam
            .assign_ip(free_in_b, Some(&handle("c")), BTreeMap::new(), &node("n1"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::StrictAffinity { owner, .. } if owner == "n2"),
            "{err}"
        );
        assert_eq!(dump(ipam.store()).await, before, "refusals change nothing");
    });
}

#[test]
fn without_strict_affinity_a_node_borrows_when_it_cannot_claim() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/28", 29)]).await;
        ipam.auto_assign(&args("n1", 1, 0, "a")).await.unwrap();
        ipam.auto_assign(&args("n2", 1, 0, "b")).await.unwrap();
        // Both blocks are claimed: n3 can claim none and borrows from one of them.
        let got = ipam.auto_assign(&args("n3", 3, 0, "c")).await.unwrap();
        assert_eq!(got.ipv4.len(), 3);
        for a in &got.ipv4 {
            let who = ipam
                .get_assignment_attributes(a.addr())
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(
                who.affinity.as_deref(),
                Some("host:n1" | "host:n2")
            ));
        }
        // A node at its block limit does not borrow, strict affinity or not (Calico's
        // ErrBlockLimit); what it took from its own block first is given back.
        let mut limited = args("n1", 7, 0, "d");
        limited.max_blocks_per_host = Some(1);
        let err = ipam.auto_assign(&limited).await.unwrap_err();
        assert!(matches!(err, Error::BlockLimit { limit: 1, .. }), "{err}");
        let usage = ipam.utilization(&[]).await.unwrap();
        let in_use: u128 = usage.iter().map(|p| p.usage.in_use).sum();
        assert_eq!(in_use, 5, "a, b and c's three");
        assert_consistent(ipam.store()).await;
    });
}

#[test]
fn max_blocks_per_host_stops_claims() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/24", 29)]).await;
        strict(&ipam, 2).await;
        ipam.auto_assign(&args("n1", 16, 0, "a")).await.unwrap();
        let before = dump(ipam.store()).await;
        let err = ipam.auto_assign(&args("n1", 1, 0, "b")).await.unwrap_err();
        assert!(matches!(err, Error::BlockLimit { limit: 2, .. }), "{err}");
        assert_eq!(dump(ipam.store()).await, before);
        // A request asking more than two blocks hold fails whole.
        let err = ipam.auto_assign(&args("n2", 17, 0, "c")).await.unwrap_err();
        assert!(matches!(err, Error::BlockLimit { .. }), "{err}");
        assert!(
            ipam.ips_by_handle(&handle("c")).await.is_err(),
            "nothing kept"
        );
        assert_consistent(ipam.store()).await;
    });
}

/// The steady state: the node owns a non-full block. MemoryStore reads everything it needs in
/// one node snapshot (counted as a list) and writes the block and its new handle in one
/// atomic commit (counted as an update).
#[test]
fn steady_state_round_trips() {
    pollster::block_on(async {
        let (ipam, _) = ipam_with(&[("p", "10.0.0.0/16", 26)]).await;
        ipam.auto_assign(&args("n1", 1, 0, "warm")).await.unwrap();
        let before = ipam_core::Datastore::op_counts(ipam.store());
        ipam.auto_assign(&args("n1", 1, 0, "pod")).await.unwrap();
        let c = ipam_core::Datastore::op_counts(ipam.store()).since(&before);
        assert_eq!(
            (c.gets, c.lists, c.creates, c.updates, c.deletes),
            (0, 1, 0, 1, 0),
            "{c:?}"
        );
        // Without a handle there is nothing to index: only the block is written.
        let before = ipam_core::Datastore::op_counts(ipam.store());
        ipam.auto_assign(&AutoAssignArgs::new(node("n1"), 1, 0))
            .await
            .unwrap();
        let c = ipam_core::Datastore::op_counts(ipam.store()).since(&before);
        assert_eq!((c.reads(), c.writes(), c.updates), (1, 1, 1), "{c:?}");
    });
}
