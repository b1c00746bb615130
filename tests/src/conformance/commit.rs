//! The conformance checks of [`Datastore::commit`]: the assignment batch and the release
//! batch, all or nothing.

use ipam_core::{BatchWrite, Datastore, IpamBlock, IpamHandle, Revision, Scope, StoreError, Write};

use super::{block, handle_with, names};

/// `commit` (where a store offers it) applies a handle write and a block update together or
/// not at all; a store that does not offer it refuses every batch.
pub async fn commit_is_all_or_nothing<D: Datastore>(store: D) {
    let s = &store;
    let (bname, b0) = block("10.0.0.0/26", Some("host:a"));
    let rb = s.create(&bname, b0.clone()).await.unwrap();
    let mut b1 = b0.clone();
    b1.sequence_number += 1;
    let mut h = IpamHandle::new("h");
    h.block.insert("10.0.0.0/26".into(), 1);
    let batch = |h: Write<IpamHandle>, rev: &Revision, b: &IpamBlock| {
        let update = Write::Update {
            name: bname.clone(),
            value: b.clone(),
            revision: rev.clone(),
        };
        vec![BatchWrite::Handle(h), BatchWrite::Block(update)]
    };
    let create = || Write::Create {
        name: "h".into(),
        value: h.clone(),
    };
    if !s.supports_commit() {
        assert!(s.commit(batch(create(), &rb, &b1)).await.is_err());
        assert!(s.get::<IpamHandle>("h").await.unwrap_err().is_not_found());
        return;
    }
    // A stale block revision: nothing is applied, not even the handle create.
    let stale = Revision("999999999".into());
    let err = s.commit(batch(create(), &stale, &b1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict { .. } | StoreError::NotFound { .. }
        ),
        "{err}"
    );
    assert!(s.get::<IpamHandle>("h").await.unwrap_err().is_not_found());
    assert_eq!(s.get::<IpamBlock>(&bname).await.unwrap().value, b0);
    // Both at once; the revisions returned are the ones now stored.
    let before = s.op_counts();
    let revs = s.commit(batch(create(), &rb, &b1)).await.unwrap();
    assert_eq!(
        s.op_counts().since(&before).writes(),
        1,
        "one write round trip"
    );
    let (gh, gb) = (
        s.get::<IpamHandle>("h").await.unwrap(),
        s.get::<IpamBlock>(&bname).await.unwrap(),
    );
    assert_eq!((gh.value, &gb.value), (h.clone(), &b1));
    assert_eq!(
        revs,
        vec![Some(gh.revision.clone()), Some(gb.revision.clone())]
    );
    // Creating a live handle again fails, and the block update beside it is not applied.
    let mut b2 = b1.clone();
    b2.sequence_number += 1;
    let err = s
        .commit(batch(create(), &gb.revision, &b2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(s.get::<IpamBlock>(&bname).await.unwrap(), gb);
    // A CAS update of the handle with the block.
    let mut h2 = h.clone();
    h2.block.insert("10.0.0.0/26".into(), 2);
    let upd = Write::Update {
        name: "h".into(),
        value: h2.clone(),
        revision: gh.revision.clone(),
    };
    s.commit(batch(upd, &gb.revision, &b2)).await.unwrap();
    assert_eq!(s.get::<IpamHandle>("h").await.unwrap().value, h2);
    assert_eq!(s.get::<IpamBlock>(&bname).await.unwrap().value, b2);
}

/// `commit` of a release (where a store takes one): block updates and deletes followed by
/// the handle's delete, all applied or none, in one write round trip; a deleted block leaves
/// nothing behind in any listing, and a block that changes node is listed on its new node
/// only. A store that takes none refuses the batch and changes nothing.
pub async fn release_commit_is_all_or_nothing<D: Datastore>(store: D) {
    let s = &store;
    let (kept, b_kept) = block("10.0.0.0/26", Some("host:a"));
    let (gone, b_gone) = block("10.0.0.64/26", None);
    let rk = s.create(&kept, b_kept.clone()).await.unwrap();
    let rg = s.create(&gone, b_gone.clone()).await.unwrap();
    let rh = s.create("h", handle_with("h", 1)).await.unwrap();
    let mut b1 = b_kept.clone();
    b1.sequence_number += 1;
    let batch = |rk: &Revision, rh: &Revision, b: &IpamBlock| {
        vec![
            BatchWrite::Block(Write::Update {
                name: kept.clone(),
                value: b.clone(),
                revision: rk.clone(),
            }),
            BatchWrite::Block(Write::Delete {
                name: gone.clone(),
                revision: rg.clone(),
            }),
            BatchWrite::Handle(Write::Delete {
                name: "h".into(),
                revision: rh.clone(),
            }),
        ]
    };
    // A store that takes no release batch refuses it, and nothing is applied.
    if !s.commits_releases() {
        assert!(s.commit(batch(&rk, &rh, &b1)).await.is_err());
        assert_eq!(s.get::<IpamBlock>(&kept).await.unwrap().value, b_kept);
        assert_eq!(s.get::<IpamBlock>(&gone).await.unwrap().value, b_gone);
        assert!(s.get::<IpamHandle>("h").await.is_ok());
        return;
    }
    // A stale handle or block revision: nothing is applied.
    let stale = Revision("999999999".into());
    for b in [batch(&rk, &stale, &b1), batch(&stale, &rh, &b1)] {
        let err = s.commit(b).await.unwrap_err();
        assert!(err.is_lost_race(), "{err}");
        assert_eq!(s.get::<IpamBlock>(&kept).await.unwrap().value, b_kept);
        assert_eq!(s.get::<IpamBlock>(&gone).await.unwrap().value, b_gone);
        assert!(s.get::<IpamHandle>("h").await.is_ok());
    }
    let before = s.op_counts();
    let revs = s.commit(batch(&rk, &rh, &b1)).await.unwrap();
    assert_eq!(s.op_counts().since(&before).writes(), 1, "one write");
    let now = s.get::<IpamBlock>(&kept).await.unwrap();
    assert_eq!(now.value, b1);
    assert_eq!(revs, vec![Some(now.revision.clone()), None, None]);
    assert!(s.get::<IpamBlock>(&gone).await.unwrap_err().is_not_found());
    assert!(s.get::<IpamHandle>("h").await.unwrap_err().is_not_found());
    assert_eq!(
        names::<D, IpamBlock>(s, Scope::All).await,
        vec![kept.clone()]
    );
    // The deleted block's name is free again.
    s.create(&gone, b_gone.clone()).await.unwrap();

    // A block that moves to node b in a release batch.
    let rh2 = s.create("h2", handle_with("h2", 1)).await.unwrap();
    let mut moved = b1.clone();
    moved.affinity = Some("host:b".into());
    let batch = vec![
        BatchWrite::Block(Write::Update {
            name: kept.clone(),
            value: moved.clone(),
            revision: now.revision.clone(),
        }),
        BatchWrite::Handle(Write::Delete {
            name: "h2".into(),
            revision: rh2,
        }),
    ];
    s.commit(batch).await.unwrap();
    assert!(names::<D, IpamBlock>(s, Scope::Node("a")).await.is_empty());
    assert_eq!(
        names::<D, IpamBlock>(s, Scope::Node("b")).await,
        vec![kept.clone()]
    );
    assert_eq!(s.get::<IpamBlock>(&kept).await.unwrap().value, moved);
}
