//! The argument of `ipam_sqlite`'s `wal` module, checked on the system calls of real
//! processes (`strace`): SQLite is built without its own folder sync, so
//!
//! - when a process's open creates the WAL, the folder is fsynced after the WAL's name
//!   exists and before the first byte is written to it;
//! - a process that finds the WAL (the plugin's steady state) syncs no folder;
//! - every process that commits has fsynced the WAL after its last write to it, so what it
//!   reported is on disk when it exits.
//!
//! Each "process" is this test binary re-run under `strace` with only the ignored
//! `one_write` test selected: it opens the store (the first connection of its process, as a
//! plugin call is) and commits one object.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use ipam_core::{Datastore, IpamHandle};
use ipam_sqlite::SqliteStore;

/// Names the database and the object `one_write` writes, as `PATH NAME`.
const CHILD: &str = "IPAM_SQLITE_DURABILITY_CHILD";

/// The child: one open and one commit. Ignored: run only by the tests below.
#[test]
#[ignore = "run by the durability tests as a traced child process"]
fn one_write() {
    let spec = std::env::var(CHILD).expect("run only by the durability tests");
    let (db, name) = spec.rsplit_once(' ').unwrap();
    let store = SqliteStore::open(db).unwrap();
    pollster::block_on(store.create(name, IpamHandle::new(name))).unwrap();
}

/// What a traced child did to the database folder and the WAL, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The WAL's name was linked (created by `ipam_sqlite`).
    WalLinked,
    /// The WAL was opened with `O_CREAT` (which creates it if it is missing: SQLite does so
    /// for an existing WAL too).
    WalOpenedToCreate,
    /// Bytes were written to the WAL.
    WalWrite,
    /// The WAL was fsynced (or fdatasynced).
    WalSync,
    /// The database's folder was fsynced.
    FolderSync,
}

/// Runs one child under `strace` writing `name` into `db`, and returns its events.
fn traced_write(db: &Path, name: &str) -> Vec<Event> {
    let trace = db.with_file_name(format!("trace-{name}"));
    let status = Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=openat,link,linkat,pwrite64,write,fsync,fdatasync",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "one_write", "--ignored", "--test-threads=1"])
        .env(CHILD, format!("{} {name}", db.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run strace ({e}): install it (apt-get install strace, scripts/install-deps)"
            )
        });
    assert!(status.success(), "the traced child failed");
    let text = std::fs::read_to_string(&trace).unwrap();
    std::fs::remove_file(&trace).unwrap();
    let wal = format!("{}-wal", db.display());
    let folder = db.parent().unwrap().display().to_string();
    text.lines()
        .filter_map(|line| event(line, &wal, &folder))
        .collect()
}

/// One `strace -y` line as an event, if it is one of ours.
fn event(line: &str, wal: &str, folder: &str) -> Option<Event> {
    let call = line
        .split_once(' ')
        .map_or(line, |(_pid, rest)| rest.trim_start());
    let on = |path: &str| call.contains(&format!("<{path}>"));
    if (call.starts_with("link(") || call.starts_with("linkat("))
        && call.contains(&format!("\"{wal}\""))
    {
        return Some(Event::WalLinked);
    }
    if call.starts_with("openat(") && call.contains(&format!("\"{wal}\"")) {
        return call.contains("O_CREAT").then_some(Event::WalOpenedToCreate);
    }
    if (call.starts_with("pwrite64(") || call.starts_with("write(")) && on(wal) {
        return Some(Event::WalWrite);
    }
    if call.starts_with("fsync(") || call.starts_with("fdatasync(") {
        if on(wal) {
            return Some(Event::WalSync);
        }
        if on(folder) {
            return Some(Event::FolderSync);
        }
    }
    None
}

fn position(events: &[Event], wanted: Event) -> Option<usize> {
    events.iter().position(|e| *e == wanted)
}

/// The commit is durable at exit: the WAL was fsynced after the last write to it.
fn assert_commit_synced(events: &[Event]) {
    let last_write = events.iter().rposition(|e| *e == Event::WalWrite);
    let last_sync = events.iter().rposition(|e| *e == Event::WalSync);
    assert!(
        matches!((last_write, last_sync), (Some(w), Some(s)) if s > w),
        "the WAL was not fsynced after its last write: {events:?}"
    );
}

/// The WAL's name was made durable before anything was written to it, in a process that
/// started without a WAL, so whichever of `how` came first created it.
fn assert_named_then_folder_synced_before_writing(events: &[Event], how: Event) {
    let named = position(events, how).expect("the WAL was not created");
    let synced = events[named..]
        .iter()
        .position(|e| *e == Event::FolderSync)
        .map(|i| i + named);
    let first_write = position(events, Event::WalWrite).expect("nothing was written");
    assert!(
        matches!(synced, Some(s) if s < first_write),
        "the folder was not fsynced between the WAL's creation and its first write: {events:?}"
    );
}

#[test]
fn sqlite_is_built_without_its_own_folder_sync() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        options.iter().any(|o| o == "DISABLE_DIRSYNC"),
        "LIBSQLITE3_FLAGS from .cargo/config.toml did not reach the SQLite build: {options:?}"
    );
}

#[test]
fn a_new_database_syncs_its_folder_once_and_every_commit_syncs_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ipam.db");
    let first = traced_write(&db, "first");
    // A new database: SQLite creates the WAL when the journal mode is set.
    assert_named_then_folder_synced_before_writing(&first, Event::WalOpenedToCreate);
    assert_commit_synced(&first);
    for name in ["second", "third"] {
        let steady = traced_write(&db, name);
        assert_eq!(
            position(&steady, Event::FolderSync),
            None,
            "a process that found the WAL synced the folder: {steady:?}"
        );
        assert_eq!(position(&steady, Event::WalLinked), None, "{steady:?}");
        assert_commit_synced(&steady);
    }
    let store = SqliteStore::open(&db).unwrap();
    for name in ["first", "second", "third"] {
        pollster::block_on(store.get::<IpamHandle>(name)).unwrap();
    }
}

#[test]
fn a_wal_removed_by_another_program_is_created_again_durably() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ipam.db");
    traced_write(&db, "before");
    // The sqlite3 shell's way: the last connection to close checkpoints and deletes the WAL.
    let shell = rusqlite::Connection::open(&db).unwrap();
    let _: i64 = shell
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    drop(shell);
    assert!(
        !dir.path().join("ipam.db-wal").exists(),
        "the WAL was not removed"
    );
    let again = traced_write(&db, "after");
    assert_named_then_folder_synced_before_writing(&again, Event::WalLinked);
    assert_commit_synced(&again);
    let store = SqliteStore::open(&db).unwrap();
    for name in ["before", "after"] {
        pollster::block_on(store.get::<IpamHandle>(name)).unwrap();
    }
}
