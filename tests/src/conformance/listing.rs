//! The conformance checks of what a store reads back in one call: node-scoped listing,
//! the node snapshot, and the operation counters.

use super::*;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `Scope::Node` lists blocks by their `host:` affinity and affinities by node, sorted by
/// name, and follows objects that move to another node, lose their affinity or are deleted.
pub async fn node_scoped_listing<D: Datastore>(store: D) {
    let s = &store;
    let mut revs = BTreeMap::new();
    let specs = [
        ("10.0.0.0/26", Some("host:a")),
        ("10.0.0.64/26", Some("host:b")),
        ("10.0.0.128/26", Some("virtual:a")),
        ("10.0.0.192/26", None),
        ("10.0.1.0/26", Some("host:a")),
    ];
    let mut blocks = BTreeMap::new();
    for (cidr, aff) in specs {
        let (name, b) = block(cidr, aff);
        revs.insert(name.clone(), s.create(&name, b.clone()).await.unwrap());
        blocks.insert(cidr, (name, b));
    }
    let bname = |c: &str| blocks[c].0.clone();
    let node_blocks = async |n: &str| names::<D, IpamBlock>(s, Scope::Node(n)).await;
    assert_eq!(
        node_blocks("a").await,
        sorted(vec![bname("10.0.0.0/26"), bname("10.0.1.0/26")])
    );
    assert_eq!(node_blocks("b").await, vec![bname("10.0.0.64/26")]);
    assert!(node_blocks("c").await.is_empty());
    assert_eq!(
        names::<D, IpamBlock>(s, Scope::All).await,
        sorted(blocks.values().map(|(n, _)| n.clone()).collect())
    );
    // Full values come back from a node list, not only names.
    let listed = s.list::<IpamBlock>(Scope::Node("b")).await.unwrap();
    let (n, b) = &blocks["10.0.0.64/26"];
    assert_eq!(listed, vec![stored(n, &revs[n], b)]);

    // A block moves from a to b, then b's own block loses its affinity, then one is deleted.
    let (n, b) = &blocks["10.0.0.0/26"];
    let moved = IpamBlock {
        affinity: Some("host:b".into()),
        ..b.clone()
    };
    s.update(n, moved, &revs[n]).await.unwrap();
    let (n, b) = &blocks["10.0.0.64/26"];
    let freed = IpamBlock {
        affinity: None,
        ..b.clone()
    };
    s.update(n, freed, &revs[n]).await.unwrap();
    let n = bname("10.0.1.0/26");
    s.delete::<IpamBlock>(&n, &revs[&n]).await.unwrap();
    assert!(node_blocks("a").await.is_empty());
    assert_eq!(node_blocks("b").await, vec![bname("10.0.0.0/26")]);

    // Affinities by node, through a move and a soft delete.
    let mut arevs = BTreeMap::new();
    for (node, cidr) in [
        ("a", "10.0.0.0/26"),
        ("a", "10.0.1.0/26"),
        ("b", "10.0.0.64/26"),
    ] {
        let (name, v) = affinity(node, cidr, AffinityState::Confirmed);
        arevs.insert(name.clone(), (s.create(&name, v.clone()).await.unwrap(), v));
    }
    let node_affs = async |n: &str| names::<D, BlockAffinity>(s, Scope::Node(n)).await;
    let aname = |n: &str, c: &str| affinity(n, c, AffinityState::Confirmed).0;
    assert_eq!(
        node_affs("a").await,
        sorted(vec![aname("a", "10.0.0.0/26"), aname("a", "10.0.1.0/26")])
    );
    assert_eq!(node_affs("b").await, vec![aname("b", "10.0.0.64/26")]);
    let key = aname("a", "10.0.1.0/26");
    let (rev, v) = &arevs[&key];
    let to_b = BlockAffinity {
        node: "b".into(),
        ..v.clone()
    };
    let rev = s.update(&key, to_b.clone(), rev).await.unwrap();
    assert_eq!(node_affs("a").await, vec![aname("a", "10.0.0.0/26")]);
    assert_eq!(
        node_affs("b").await,
        sorted(vec![key.clone(), aname("b", "10.0.0.64/26")])
    );
    let dead = BlockAffinity {
        deleted: true,
        ..to_b
    };
    s.update(&key, dead, &rev).await.unwrap();
    assert_eq!(node_affs("b").await, vec![aname("b", "10.0.0.64/26")]);
}

/// Each call counts one round trip of its own kind, failed calls included; a list is one
/// round trip however many objects it returns.
pub async fn operation_counters<D: Datastore>(store: D) {
    let start = store.op_counts();
    for i in 0..3 {
        let name = format!("h{i}");
        store.create(&name, IpamHandle::new(&name)).await.unwrap();
    }
    let h = store.get::<IpamHandle>("h0").await.unwrap();
    let _ = store.get::<IpamHandle>("missing").await.unwrap_err();
    assert_eq!(store.list::<IpamHandle>(Scope::All).await.unwrap().len(), 3);
    let r = store
        .update("h0", handle_with("h0", 1), &h.revision)
        .await
        .unwrap();
    let _ = store
        .update("h0", handle_with("h0", 2), &h.revision)
        .await
        .unwrap_err();
    store.delete::<IpamHandle>("h0", &r).await.unwrap();
    let _ = store.create("h1", IpamHandle::new("h1")).await.unwrap_err();
    let counts = store.op_counts().since(&start);
    let want = OpCounts {
        gets: 2,
        lists: 1,
        creates: 4,
        updates: 2,
        deletes: 1,
    };
    assert_eq!(counts, want);
    assert_eq!((counts.reads(), counts.writes()), (3, 7));
}

/// `node_snapshot` returns what the individual reads return, with and without a config, for
/// a node with objects and for one without, and writes nothing.
pub async fn node_snapshot_matches_reads<D: Datastore>(store: D) {
    let s = &store;
    let empty = s.node_snapshot("a").await.unwrap();
    assert!(empty.config.is_none() && empty.pools.is_empty() && empty.blocks.is_empty());
    for (name, cidr) in [("pool-v4", "10.0.0.0/16"), ("pool-v6", "fd00::/48")] {
        s.create(name, IpPool::new(cidr.parse().unwrap()))
            .await
            .unwrap();
    }
    let res = IpReservation {
        reserved_cidrs: vec!["10.0.0.1".into()],
    };
    s.create("res", res).await.unwrap();
    for (cidr, node, state) in [
        ("10.0.0.0/26", "a", AffinityState::Confirmed),
        ("10.0.0.64/26", "a", AffinityState::Pending),
        ("10.0.0.128/26", "b", AffinityState::Confirmed),
    ] {
        let (name, v) = affinity(node, cidr, state);
        s.create(&name, v).await.unwrap();
        let (name, v) = block(cidr, Some(&format!("host:{node}")));
        s.create(&name, v).await.unwrap();
    }
    let (name, v) = block("10.0.0.192/26", None);
    s.create(&name, v).await.unwrap();
    for with_config in [false, true] {
        if with_config {
            s.create(IpamConfig::NAME, IpamConfig::default())
                .await
                .unwrap();
        }
        for node in ["a", "b", "nobody"] {
            let before = s.op_counts();
            let snap = s.node_snapshot(node).await.unwrap();
            let cost = s.op_counts().since(&before);
            assert_eq!(cost.writes(), 0);
            assert!(cost.reads() >= 1, "a snapshot is counted");
            let config = match s.get::<IpamConfig>(IpamConfig::NAME).await {
                Ok(c) => Some(c),
                Err(e) if e.is_not_found() => None,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(snap.config, config);
            assert_eq!(snap.pools, s.list(Scope::All).await.unwrap());
            assert_eq!(snap.reservations, s.list(Scope::All).await.unwrap());
            assert_eq!(snap.affinities, s.list(Scope::Node(node)).await.unwrap());
            // Blocks with room are all there; full ones may be left out (none are here).
            let listed: Vec<Stored<IpamBlock>> = s.list(Scope::Node(node)).await.unwrap();
            assert!(snap.blocks.iter().all(|b| listed.contains(b)));
            let with_room: Vec<_> = listed.into_iter().filter(|b| b.value.has_room()).collect();
            assert_eq!(snap.blocks, with_room);
            let want = match node {
                "a" => 2,
                "b" => 1,
                _ => 0,
            };
            assert_eq!((snap.blocks.len(), snap.affinities.len()), (want, want));
        }
    }
    assert_eq!(s.list::<IpPool>(Scope::All).await.unwrap().len(), 2);
}
