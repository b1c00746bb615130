//! Who can reach the database files: modes past the umask, symlinks and foreign folders
//! refused, and an unprivileged user locked out (run as a real uid 65534 process).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use ipam_core::{Datastore, IpamHandle};
use ipam_sqlite::files::Unsafe;
use ipam_sqlite::{Access, Error, SqliteStore};

/// The umask is per process, so every test here sets the same one: the most permissive.
fn permissive_umask() {
    rustix::process::umask(rustix::fs::Mode::empty());
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Opens a fresh database and writes once, so that the WAL and SHM exist.
fn first_open(db: &Path, access: &Access) -> SqliteStore {
    let store = SqliteStore::open_with(db, access).unwrap();
    pollster::block_on(store.create("h1", IpamHandle::new("h1"))).unwrap();
    store
}

fn side(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

#[test]
fn every_file_is_private_under_umask_000() {
    permissive_umask();
    let tmp = scratch();
    let db = tmp.path().join("a/b/ipam.db");
    let _store = first_open(&db, &Access::default());
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
    for file in [db.clone(), side(&db, "-wal"), side(&db, "-shm")] {
        assert!(file.exists(), "{file:?} missing");
        assert_eq!(mode(&file), 0o600, "{file:?}");
    }
}

#[test]
fn a_configured_group_may_read() {
    permissive_umask();
    let tmp = scratch();
    let db = tmp.path().join("g/ipam.db");
    let gid = 65534;
    let _store = first_open(&db, &Access { group: Some(gid) });
    assert_eq!(mode(&tmp.path().join("g")), 0o750);
    for file in [db.clone(), side(&db, "-wal"), side(&db, "-shm")] {
        assert_eq!(mode(&file), 0o640, "{file:?}");
        assert_eq!(std::fs::metadata(&file).unwrap().gid(), gid, "{file:?}");
    }
}

#[test]
fn existing_loose_files_are_tightened() {
    permissive_umask();
    let tmp = scratch();
    let db = tmp.path().join("ipam.db");
    drop(first_open(&db, &Access::default()));
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = SqliteStore::open_with(&db, &Access::default()).unwrap();
    assert_eq!(mode(&db), 0o600);
}

#[test]
fn a_symlink_at_the_database_path_is_refused() {
    permissive_umask();
    let tmp = scratch();
    let target = tmp.path().join("precious");
    std::fs::write(&target, b"not yours").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    for planted in ["ipam.db", "ipam.db-wal"] {
        let dir = tmp.path().join(format!("d-{planted}"));
        private_dir(&dir);
        let link = dir.join(planted);
        symlink(&target, &link).unwrap();
        let err = refused(
            SqliteStore::open_with(dir.join("ipam.db"), &Access::default()),
            "a symlink must be refused",
        );
        assert!(
            matches!(&err, Error::UnsafePath { path, problem: Unsafe::Symlink } if *path == link),
            "{err:?}"
        );
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains(planted), "{err}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"not yours");
    assert_eq!(mode(&target), 0o644);
}

#[test]
fn a_world_writable_or_foreign_folder_is_refused() {
    permissive_umask();
    let tmp = scratch();
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused(
        SqliteStore::open_with(open.join("ipam.db"), &Access::default()),
        "a world-writable folder must be refused",
    );
    assert!(
        matches!(&err, Error::UnsafePath { path, problem: Unsafe::Writable { mode: 0o777 } } if *path == open),
        "{err:?}"
    );
    assert!(!open.join("ipam.db").exists(), "nothing may be created");

    require_root();
    let foreign = tmp.path().join("foreign");
    private_dir(&foreign);
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let err = refused(
        SqliteStore::open_with(foreign.join("ipam.db"), &Access::default()),
        "a foreign folder must be refused",
    );
    assert!(
        matches!(
            &err,
            Error::UnsafePath {
                problem: Unsafe::ForeignOwner { owner: 65534, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!foreign.join("ipam.db").exists(), "nothing may be created");
}

#[test]
fn an_unprivileged_user_cannot_read_the_database() {
    permissive_umask();
    require_root();
    let tmp = scratch();
    let dir = tmp.path().join("state");
    let db = dir.join("ipam.db");
    let _store = first_open(&db, &Access::default());
    // Through the 0700 folder, and with the folder opened up, through the 0600 file.
    assert!(!as_nobody(&["cat", db.to_str().unwrap()]));
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        as_nobody(&["ls", dir.to_str().unwrap()]),
        "the probe itself must work"
    );
    for file in [db.clone(), side(&db, "-wal"), side(&db, "-shm")] {
        assert!(!as_nobody(&["cat", file.to_str().unwrap()]), "{file:?}");
    }
}

/// The error of an open that must fail.
fn refused(opened: Result<SqliteStore, Error>, why: &str) -> Error {
    match opened {
        Ok(_) => panic!("{why}"),
        Err(e) => e,
    }
}

/// Runs `argv` as uid/gid 65534 with no supplementary groups; whether it succeeded.
fn as_nobody(argv: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv (util-linux) is needed to run a probe as uid 65534")
        .success()
}

/// A temporary folder that is private, as under umask 000 `tempdir` alone would not be.
fn scratch() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    tmp
}

/// A folder only its owner can write to, as the umask of these tests would not give.
fn private_dir(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it changes file owners and runs a probe as uid 65534"
    );
}
