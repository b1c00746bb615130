//! One test per finding kind: a healthy store made by the allocator, then one planted fault.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::*;
use crate::model::{ATTR_NAMESPACE, ATTR_POD, AffinityState, AllocationAttribute};
use crate::{AutoAssignArgs, HandleId, Ipam, MemoryStore, NodeName};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

fn pod_attrs(ns: &str, pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ATTR_NAMESPACE.to_owned(), ns.to_owned()),
        (ATTR_POD.to_owned(), pod.to_owned()),
    ])
}

/// Pool 10.0.0.0/24 in /29 blocks; node n1 holds 3 addresses of `net.c1` (default/a),
/// node n2 one of `net.c2` (default/b).
fn healthy() -> Snapshot {
    pollster::block_on(async {
        let ipam = Ipam::new(MemoryStore::new(), crate::SystemClock);
        let mut pool = IpPool::new("10.0.0.0/24".parse().unwrap());
        pool.block_size = 29;
        ipam.create_pool("p", pool).await.unwrap();
        for (node, n, cid, pod) in [("n1", 3, "c1", "a"), ("n2", 1, "c2", "b")] {
            let mut args = AutoAssignArgs::new(NodeName::new(node).unwrap(), n, 0)
                .with_handle(HandleId::new(format!("net.{cid}")).unwrap());
            args.attrs = pod_attrs("default", pod);
            ipam.auto_assign(&args).await.unwrap();
        }
        Snapshot::read(ipam.store()).await.unwrap()
    })
}

fn all_live() -> (LiveOwners, BTreeSet<String>) {
    (
        LiveOwners::parse("net.c1\ndefault/b\n").unwrap(),
        ["n1".to_owned(), "n2".to_owned()].into(),
    )
}

fn run(s: &Snapshot) -> Report {
    let (owners, nodes) = all_live();
    check(
        s,
        &Live {
            owners: Some(&owners),
            nodes: Some(&nodes),
        },
        now(),
    )
}

fn kinds(r: &Report) -> BTreeSet<FindingKind> {
    r.counts().into_keys().collect()
}

fn block_of_node<'a>(s: &'a mut Snapshot, node: &str) -> &'a mut IpamBlock {
    &mut s
        .blocks
        .iter_mut()
        .find(|b| b.value.host() == Some(node))
        .unwrap()
        .value
}

#[test]
fn a_healthy_store_is_clean() {
    let s = healthy();
    let r = run(&s);
    assert!(r.is_clean(), "{:#?}", r.findings);
    assert_eq!(r.totals.allocations, 4);
    assert_eq!(r.totals.blocks, 2);
    // The report survives a JSON round trip, as `release --from-report` reads it back.
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
}

#[test]
fn overlapping_blocks_and_addresses_held_twice() {
    let mut s = healthy();
    let mut twin = s.blocks[0].clone();
    let cidr = twin.value.cidr;
    twin.value.cidr = IpNet::new(cidr.network(), 28).unwrap().trunc();
    twin.value.affinity = None;
    let mut allocations = vec![None; 16];
    allocations[..8].copy_from_slice(&twin.value.allocations);
    twin.value.allocations = allocations;
    twin.value.unallocated.extend(8..16);
    twin.name = "twin".into();
    s.blocks.push(twin);
    let r = run(&s);
    let held: Vec<_> = r.of_kind(FindingKind::AddressHeldTwice).collect();
    assert_eq!(held.len(), 3, "{:#?}", r.findings);
    assert_eq!(r.of_kind(FindingKind::OverlappingBlocks).count(), 1);
}

#[test]
fn blocks_whose_arrays_disagree() {
    let mut s = healthy();
    let b = block_of_node(&mut s, "n1");
    let first_free = *b.unallocated.front().unwrap();
    b.unallocated.push_back(first_free);
    b.unallocated.push_back(0);
    let r = run(&s);
    let problems: Vec<String> = r
        .of_kind(FindingKind::BlockInconsistent)
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("free twice") || problems[1].contains("free twice"));
    assert_eq!(kinds(&r), [FindingKind::BlockInconsistent].into());
}

#[test]
fn handle_counts_disagree_both_ways() {
    let mut s = healthy();
    s.handles
        .iter_mut()
        .find(|h| h.name == "net.c1")
        .unwrap()
        .value
        .block
        .values_mut()
        .for_each(|n| *n += 2);
    s.handles.retain(|h| h.name != "net.c2");
    let r = run(&s);
    let found: Vec<_> = r.of_kind(FindingKind::HandleCountMismatch).collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found.iter().any(|f| matches!(f,
        Finding::HandleCountMismatch { handle, recorded: 5, actual: 3, handle_exists: true, .. }
            if handle == "net.c1")));
    assert!(found.iter().any(|f| matches!(f,
        Finding::HandleCountMismatch { handle, recorded: 0, actual: 1, handle_exists: false, .. }
            if handle == "net.c2")));
}

#[test]
fn affinities_without_blocks_and_blocks_without_affinities() {
    let mut s = healthy();
    let mut stray = s.affinities[0].clone();
    stray.name = "n1-10-0-1-0-29".into();
    stray.value.cidr = "10.0.1.0/29".parse().unwrap(); // no block there
    stray.value.state = AffinityState::Pending;
    s.affinities.push(stray);
    let n2 = block_of_node(&mut s, "n2").cidr;
    s.affinities.retain(|a| a.value.cidr != n2);
    let r = run(&s);
    assert_eq!(
        kinds(&r),
        [
            FindingKind::AffinityWithoutBlock,
            FindingKind::BlockWithoutAffinity
        ]
        .into()
    );
    assert!(r.findings.iter().any(|f| matches!(f,
        Finding::BlockWithoutAffinity { node, in_use: 1, .. } if node == "n2")));
}

#[test]
fn blocks_outside_every_pool() {
    let mut s = healthy();
    s.pools[0].value.cidr = "10.1.0.0/24".parse().unwrap();
    let r = run(&s);
    assert_eq!(kinds(&r), [FindingKind::BlockOutsidePools].into());
    assert_eq!(r.findings.len(), 2);
}

#[test]
fn cooldowns_past_their_time() {
    let mut s = healthy();
    s.config.ip_cooldown_seconds = 60;
    let b = block_of_node(&mut s, "n1");
    let recent = AllocationAttribute {
        handle_id: Some("net.old".into()),
        released_at: Some(rfc3339(now() - time::Duration::seconds(30))),
        ..Default::default()
    };
    let stale = AllocationAttribute {
        released_at: Some(rfc3339(now() - time::Duration::seconds(61))),
        ..recent.clone()
    };
    b.attributes
        .extend([recent, stale].map(std::sync::Arc::new));
    let (ra, sa) = (b.attributes.len() as u32 - 2, b.attributes.len() as u32 - 1);
    let free: Vec<u32> = b.unallocated.drain(..2).collect();
    b.allocations[free[0] as usize] = Some(ra);
    b.allocations[free[1] as usize] = Some(sa);
    let r = run(&s);
    assert_eq!(kinds(&r), [FindingKind::CooldownExpired].into(), "{r:#?}");
    assert_eq!(r.findings.len(), 1, "only the stale one is past its time");
}

#[test]
fn leaks_name_address_sequence_and_handle() {
    let s = healthy();
    let owners = LiveOwners::parse("c1\n").unwrap(); // container ID of net.c1 only
    let r = check(
        &s,
        &Live {
            owners: Some(&owners),
            nodes: None,
        },
        now(),
    );
    let leaks: Vec<_> = r.of_kind(FindingKind::LeakedAllocation).collect();
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    let Finding::LeakedAllocation {
        ip,
        handle,
        sequence,
        pod,
        ..
    } = leaks[0]
    else {
        unreachable!()
    };
    assert_eq!(handle.as_deref(), Some("net.c2"));
    assert_eq!(pod.as_deref(), Some("b"));
    let b = s
        .blocks
        .iter()
        .find(|b| b.value.host() == Some("n2"))
        .unwrap();
    let o = b.value.block_cidr().unwrap().ordinal_of(*ip).unwrap();
    assert_eq!(
        *sequence,
        b.value.sequence_number_for_allocation.get(&o).copied()
    );
    assert!(sequence.is_some());
}

#[test]
fn blocks_of_dead_nodes() {
    let s = healthy();
    let (owners, _) = all_live();
    let nodes: BTreeSet<String> = ["n1".to_owned()].into();
    let r = check(
        &s,
        &Live {
            owners: Some(&owners),
            nodes: Some(&nodes),
        },
        now(),
    );
    assert_eq!(kinds(&r), [FindingKind::DeadNodeBlock].into());
    assert!(
        matches!(&r.findings[0], Finding::DeadNodeBlock { node, in_use: 1, .. } if node == "n2")
    );
}

#[test]
fn live_owners_match_handles_containers_and_pods() {
    let live = LiveOwners::parse("  # comment\n\nk8s.abc\ndef\nns/pod\n").unwrap();
    assert_eq!(live.len(), 3);
    let attr = |h: Option<&str>, pod: Option<(&str, &str)>| AllocationAttribute {
        handle_id: h.map(Into::into),
        secondary: pod.map(|(n, p)| pod_attrs(n, p)).unwrap_or_default(),
        released_at: None,
        ..Default::default()
    };
    assert!(live.is_live(&attr(Some("k8s.abc"), None)));
    assert!(live.is_live(&attr(Some("k8s-pod-network.def"), None)));
    assert!(live.is_live(&attr(Some("x.zzz"), Some(("ns", "pod")))));
    assert!(!live.is_live(&attr(Some("x.zzz"), Some(("ns", "other")))));
    assert!(!live.is_live(&attr(Some("abc"), None)));
    assert!(!LiveOwners::can_judge(&attr(None, None)));
    assert!(LiveOwners::parse("/pod").is_err());
    assert!(LiveOwners::parse("a/b/c").is_err());
}

#[test]
fn an_address_held_in_two_nested_blocks_inside_a_third_is_found() {
    let mut s = healthy();
    let outer = s.blocks[0].value.cidr;
    // Two copies of the block, a /30 and a /31 inside it, both holding the block's first
    // address, which the outer block itself no longer holds: a sweep pairing each block with
    // the widest one containing it would miss this.
    for (prefix, name) in [(30, "mid"), (31, "inner")] {
        let mut b = s.blocks[0].clone();
        b.name = name.into();
        b.value.cidr = IpNet::new(outer.network(), prefix).unwrap().trunc();
        b.value.affinity = None;
        let size = 1usize << (32 - prefix);
        b.value.allocations.truncate(size);
        b.value.unallocated.retain(|&o| (o as usize) < size);
        s.blocks.push(b);
    }
    s.blocks[0].value.allocations[0] = None;
    s.blocks[0].value.unallocated.push_back(0);
    let r = run(&s);
    let pairs: Vec<Vec<IpNet>> = r
        .of_kind(FindingKind::AddressHeldTwice)
        .filter_map(|f| match f {
            Finding::AddressHeldTwice { ip, blocks, .. } if *ip == outer.network() => {
                Some(blocks.clone())
            }
            _ => None,
        })
        .collect();
    let nested = |prefix| IpNet::new(outer.network(), prefix).unwrap().trunc();
    assert_eq!(
        pairs,
        vec![vec![nested(30), nested(31)]],
        "{:#?}",
        r.findings
    );
}

#[test]
fn only_what_breaks_an_invariant_counts_for_check_invariants() {
    let mut s = healthy();
    // A pending claim cut short, and an empty host block whose affinity went: legal.
    let mut pending = s.affinities[0].clone();
    pending.name = "pending".into();
    pending.value.cidr = "10.9.9.0/26".parse().unwrap();
    pending.value.state = AffinityState::Pending;
    s.affinities.push(pending);
    let r = run(&s);
    assert!(
        r.findings.iter().all(|f| !f.breaks_invariant()),
        "{:#?}",
        r.findings
    );
    assert_eq!(r.of_kind(FindingKind::AffinityWithoutBlock).count(), 1);
    // A block that holds addresses without a confirmed affinity: broken.
    s.affinities.retain(|a| a.value.node != "n1");
    let r = run(&s);
    let broken: Vec<_> = r.findings.iter().filter(|f| f.breaks_invariant()).collect();
    assert!(
        broken
            .iter()
            .all(|f| f.kind() == FindingKind::BlockWithoutAffinity),
        "{broken:#?}"
    );
    assert!(!broken.is_empty(), "{:#?}", r.findings);
}

#[test]
fn pods_only_owners_judge_only_pod_allocations() {
    let attr = |h: Option<&str>, _: Option<()>| AllocationAttribute {
        handle_id: h.map(Into::into),
        ..Default::default()
    };
    let live = LiveOwners::from_pods([("default".to_owned(), "a".to_owned())]);
    let mut tunnel = attr(Some("ipip-tunnel-addr-n1"), None);
    tunnel.secondary.insert("node".into(), "n1".into());
    assert!(!live.judges(&tunnel), "an owner that is no pod was judged");
    let mut gone = attr(Some("net.c2"), None);
    gone.secondary = pod_attrs("default", "b");
    assert!(live.judges(&gone) && !live.is_live(&gone));
    let mut alive = attr(Some("net.c1"), None);
    alive.secondary = pod_attrs("default", "a");
    assert!(live.is_live(&alive));
    // Against the healthy store, only pod b's address is a leak.
    let s = healthy();
    let r = check(
        &s,
        &Live {
            owners: Some(&live),
            nodes: None,
        },
        now(),
    );
    assert_eq!(r.of_kind(FindingKind::LeakedAllocation).count(), 1);
}

#[test]
fn tally_counts_per_pool_and_node() {
    let mut s = healthy();
    // n2's address made on n1 (its `node` attribute): borrowed by n1.
    let b = block_of_node(&mut s, "n2");
    let index = b.allocations.iter().flatten().next().copied().unwrap() as usize;
    let mut a = (*b.attributes[index]).clone();
    a.secondary.insert("node".into(), "n1".into());
    b.attributes[index] = a.into();
    let t = tally(&s);
    let key = |node: &str| PoolNode {
        pool: "p".into(),
        node: node.into(),
    };
    assert_eq!(t.pool_size["p"], 256);
    assert_eq!(t.blocks[&key("n1")], 1);
    assert_eq!(t.blocks[&key("n2")], 1);
    // Without a `node` attribute an address counts for its block's node.
    assert_eq!(t.in_use[&key("n1")], 4);
    assert_eq!(t.borrowed[&key("n1")], 1);
    assert!(!t.in_use.contains_key(&key("n2")));
    assert_eq!(Tally::per_node(&t.in_use)["n1"], 4);
}

#[test]
fn read_with_takes_the_steps_it_announces() {
    let mut steps = Vec::new();
    let store = MemoryStore::new();
    pollster::block_on(Snapshot::read_with(&store, |s| steps.push(s))).unwrap();
    assert_eq!(steps.len() as u64, Snapshot::READ_STEPS, "{steps:?}");
    assert_eq!(steps.last(), Some(&"done"));
}

/// Node `gone` has a tunnel address and `held` has one beside a live pod's address; `live`
/// is a node that exists, with its own tunnel address.
fn with_tunnels() -> Snapshot {
    pollster::block_on(async {
        let ipam = Ipam::new(MemoryStore::new(), crate::SystemClock);
        let mut pool = IpPool::new("10.1.0.0/24".parse().unwrap());
        pool.block_size = 29;
        ipam.create_pool("p", pool).await.unwrap();
        let assign = |node: &str, handle: String, attrs: BTreeMap<String, String>| {
            let mut args = AutoAssignArgs::new(NodeName::new(node).unwrap(), 1, 0)
                .with_handle(HandleId::new(handle).unwrap());
            args.attrs = attrs;
            args.attrs.insert("node".into(), node.into());
            args
        };
        for node in ["gone", "held", "live"] {
            let tunnel = BTreeMap::from([("type".to_owned(), "vxlanTunnelAddress".to_owned())]);
            let args = assign(node, format!("vxlan-tunnel-addr-{node}"), tunnel);
            ipam.auto_assign(&args).await.unwrap();
        }
        // A pod on `gone` that is gone too: it does not hold the tunnel address back.
        let args = assign("gone", "net.c9".into(), pod_attrs("default", "deleted"));
        ipam.auto_assign(&args).await.unwrap();
        let args = assign("held", "net.c8".into(), pod_attrs("default", "running"));
        ipam.auto_assign(&args).await.unwrap();
        Snapshot::read(ipam.store()).await.unwrap()
    })
}

#[test]
fn a_deleted_nodes_tunnel_address_goes_once_nothing_else_holds_the_node() {
    let s = with_tunnels();
    let pods = LiveOwners::from_pods([("default".to_owned(), "running".to_owned())]);
    let nodes: BTreeSet<String> = ["live".to_owned()].into();
    let found = dead_node_tunnels(&s, &pods, &nodes);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].node, "gone");
    assert_eq!(found[0].handle.as_deref(), Some("vxlan-tunnel-addr-gone"));
    assert!(found[0].sequence.is_some());
    // Once the pod on `held` is gone too, its node's tunnel address goes as well.
    let none = LiveOwners::from_pods([]);
    assert_eq!(dead_node_tunnels(&s, &none, &nodes).len(), 2);
    // An owner that is neither a pod nor a tunnel holds the node back, as in Calico.
    let mut s = s;
    let b = block_of_node(&mut s, "gone");
    let index = b
        .attributes
        .iter()
        .position(|a| a.handle_id.as_deref() == Some("net.c9"))
        .unwrap();
    let mut a = (*b.attributes[index]).clone();
    a.secondary.retain(|k, _| k == "node");
    b.attributes[index] = a.into();
    let left: Vec<String> = dead_node_tunnels(&s, &none, &nodes)
        .into_iter()
        .map(|t| t.node)
        .collect();
    assert_eq!(left, ["held"]);
}
