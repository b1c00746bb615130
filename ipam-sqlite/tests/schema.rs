//! Opening files: creation, reopening, migration, and refusing files that are not ours
//! without touching them.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use ipam_core::{Datastore, IpamHandle, Revision};
use ipam_sqlite::{Error, SCHEMA_VERSION, SqliteStore};

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// Opens `path` expecting a refusal, and checks the file's bytes did not change.
fn refused_untouched(path: &Path) -> Error {
    let before = std::fs::read(path).unwrap();
    let err = SqliteStore::open(path).unwrap_err();
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "a refused file was modified"
    );
    assert!(
        !path.with_extension("db-wal").exists(),
        "a refused file got a WAL beside it"
    );
    err
}

#[test]
fn creates_missing_folders_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/ipam.db");
    let store = SqliteStore::open(&path).unwrap();
    assert!(path.is_file());
    assert_eq!(store.path(), path);
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn reopening_keeps_objects_and_never_repeats_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    let first: Revision = pollster::block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        let r = s.create("gone", IpamHandle::new("gone")).await.unwrap();
        s.delete::<IpamHandle>("gone", &r).await.unwrap();
        s.create("kept", IpamHandle::new("kept")).await.unwrap()
    });
    pollster::block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        let kept = s.get::<IpamHandle>("kept").await.unwrap();
        assert_eq!(kept.revision, first);
        let again = s.create("gone", IpamHandle::new("gone")).await.unwrap();
        let n = |r: &Revision| r.0.parse::<u64>().unwrap();
        assert!(n(&again) > n(&first), "{again} after {first}");
    });
}

#[test]
fn an_empty_file_is_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    std::fs::write(&path, b"").unwrap();
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(user_version(&path), SCHEMA_VERSION);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (i, content) in [
        b"not a database\n".to_vec(),
        b"hosts 10.0.0.1 node-1\n".repeat(500),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("junk{i}.db"));
        std::fs::write(&path, &content).unwrap();
        let err = refused_untouched(&path);
        assert!(matches!(err, Error::NotADatabase { .. }), "{i}: {err:?}");
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
    }
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    drop(SqliteStore::open(&path).unwrap());
    let newer = SCHEMA_VERSION + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
        // Back to a rollback journal, so that switching it to WAL would show in the header.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }
    let err = refused_untouched(&path);
    match err {
        Error::NewerSchema {
            found, supported, ..
        } => assert_eq!((found, supported), (newer, SCHEMA_VERSION)),
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(user_version(&path), newer);
}

#[test]
fn someone_elses_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let err = refused_untouched(&path);
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
}

/// Processes started at once on a fresh node (a burst of pods) all open a file that does
/// not exist yet: each must get a working store, whoever creates the schema and switches
/// the file to WAL.
#[test]
fn many_openers_of_a_fresh_file_all_succeed() {
    const OPENERS: usize = 8;
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race/ipam.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(OPENERS));
        let handles: Vec<_> = (0..OPENERS)
            .map(|i| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let s = SqliteStore::open(&path)
                        .unwrap_or_else(|e| panic!("round {round}, opener {i}: {e:?}"));
                    let name = format!("h{i}");
                    pollster::block_on(s.create(&name, IpamHandle::new(&name))).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let all = pollster::block_on(s.list::<IpamHandle>(ipam_core::Scope::All)).unwrap();
        assert_eq!(all.len(), OPENERS, "round {round}");
    }
}

/// A database written by schema version 1 (before the `room` column) opens, is migrated, and
/// its blocks are still in the node snapshot (an unknown `room` counts as "may have room").
#[tokio::test]
async fn version_1_files_are_migrated_and_keep_their_blocks() {
    use ipam_core::{BlockCidr, Datastore, IpamBlock};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let block = IpamBlock::new(
        BlockCidr::new("10.0.0.0/26".parse().unwrap()).unwrap(),
        Some("host:n1".into()),
        1,
        None,
    );
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE objects (kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
               node TEXT, deleted INTEGER NOT NULL DEFAULT 0, spec TEXT NOT NULL,
               PRIMARY KEY (kind, name)) WITHOUT ROWID;
             CREATE INDEX objects_by_node ON objects (kind, node, name) WHERE node IS NOT NULL;
             CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
             INSERT INTO revision (id, last) VALUES (1, 7);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO objects (kind, name, revision, node, deleted, spec) VALUES ('IPAMBlock', ?1, 7, 'n1', 0, ?2)",
            ("10-0-0-0-26", serde_json::to_string(&block).unwrap()),
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let snap = store.node_snapshot("n1").await.unwrap();
    assert_eq!(snap.blocks.len(), 1);
    assert_eq!(snap.blocks[0].value, block);
}
