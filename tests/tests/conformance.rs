//! The datastore conformance suite on every store that needs no server: `MemoryStore` and
//! `SqliteStore` (a fresh database file per test).

mod memory {
    ipam_tests::datastore_conformance!((ipam_core::MemoryStore::new(), ()));
}

mod sqlite {
    /// A store on a new file in a new temporary folder, which lives as long as the test.
    fn fresh() -> (ipam_sqlite::SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store = ipam_sqlite::SqliteStore::open(dir.path().join("ipam.db"))
            .expect("open a fresh SQLite store");
        (store, dir)
    }

    ipam_tests::datastore_conformance!(fresh());
}
