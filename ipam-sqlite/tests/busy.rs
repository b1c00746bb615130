//! Another process holding the write lock: writers wait for it up to the busy timeout and
//! then report `Unavailable`; readers are not blocked (WAL).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use ipam_core::{Datastore, IpamHandle, StoreError};
use ipam_sqlite::SqliteStore;

#[test]
fn a_held_write_lock_is_unavailable_after_the_timeout_then_clears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    let store = SqliteStore::open(&path).unwrap();
    pollster::block_on(store.create("h", IpamHandle::new("h"))).unwrap();
    store.set_busy_timeout(Duration::from_millis(300)).unwrap();

    // A second connection, as another plugin process would hold it, takes the write lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let err = pollster::block_on(store.create("h2", IpamHandle::new("h2"))).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for the lock"
    );
    // Readers go on while the writer holds the lock.
    let h = pollster::block_on(store.get::<IpamHandle>("h")).unwrap();
    assert!(pollster::block_on(store.node_snapshot("n")).is_ok());

    other.execute_batch("COMMIT").unwrap();
    pollster::block_on(store.update("h", IpamHandle::new("h"), &h.revision)).unwrap();
    pollster::block_on(store.create("h2", IpamHandle::new("h2"))).unwrap();
}

#[test]
fn a_writer_waits_for_a_short_lock_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipam.db");
    let store = SqliteStore::open(&path).unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        other.execute_batch("COMMIT").unwrap();
    });
    let started = Instant::now();
    pollster::block_on(store.create("h", IpamHandle::new("h"))).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it queued on the lock"
    );
    release.join().unwrap();
}
