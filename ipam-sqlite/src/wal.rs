//! The WAL file's folder entry, made durable by whoever creates the WAL, once.
//!
//! SQLite's unix VFS opens the WAL with `O_CREAT` on every connection and so fsyncs the
//! database's folder on each connection's first sync, although the WAL has existed for a
//! long time: one plugin process is one connection, so every ADD and DEL paid a folder fsync
//! (~2 ms here, the larger of its two). This workspace builds SQLite with
//! `SQLITE_DISABLE_DIRSYNC` (`.cargo/config.toml`) and makes the sync happen where it matters:
//!
//! - A WAL missing beside a database already in WAL mode (another program removed it) is
//!   created here before SQLite opens the database: under a temporary name, locked
//!   (exclusive `flock`) while no other process can know it, linked to the WAL's name, then
//!   the folder is fsynced, and only then is the lock given up.
//! - A process that finds the WAL takes a shared `flock` on it before SQLite may write to
//!   it: it gets the lock only once the creator's folder fsync has returned.
//! - When SQLite creates the WAL itself (a new database, or one not yet in WAL mode),
//!   [`Wal::is_what_sqlite_opened`] is false once the journal mode is set, and the folder is
//!   fsynced then; the schema migration also fsyncs it inside its write transaction, so a
//!   process that saw the new WAL before its creator's fsync returned either migrates itself
//!   (and syncs) or sees the schema only after a commit that followed a sync.
//! - Nothing of ours deletes the WAL afterwards: every connection is opened with the
//!   checkpoint on close turned off, a WAL a checkpoint resets is truncated, not removed
//!   (`journal_size_limit`), and SQLite deletes a WAL at open only beside an empty database.
//!
//! What is left: another program that removes the WAL (the `sqlite3` shell does when it
//! closes the last connection) exactly while a plugin process is between its preparation
//! here and SQLite's open lets that process's SQLite create the WAL, and a second process
//! could commit into it before the first one's fsync (it does one, seeing the file is not
//! the one prepared). And the very first transaction of a new database (the switch to WAL,
//! before any address exists) runs without its rollback journal's folder sync: a power
//! loss then could only tear page 1 of an empty database, which SQLite's unix VFS assumes
//! a 4 KiB aligned write does not do (powersafe overwrite).
//!
//! A build without the flag is as safe, only slower: SQLite then syncs the folder as well.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags, flock};

use crate::files::{Access, open_error, open_owned};
use crate::{Error, Result};

/// The WAL as prepared: which file it is, if it existed.
#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    found: Option<Found>,
}

#[derive(Debug)]
struct Found {
    dev: u64,
    ino: u64,
    // Held open (and share-locked) so that its inode number cannot be reused until the check.
    _file: File,
}

/// Distinguishes the temporary names of threads of one process opening one database.
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

impl Wal {
    /// Makes sure `db`'s WAL exists with `access`'s mode and its folder entry is durable
    /// (see the module's docs), creating it if missing.
    pub(crate) fn prepare(db: &Path, access: &Access) -> Result<Wal> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let path = PathBuf::from(path);
        let create_error = |source: std::io::Error| Error::CreateFile {
            path: path.clone(),
            source,
        };
        let file = match open_owned(&path, false, access.file_mode()) {
            Ok(Some(file)) => file,
            Ok(None) if in_wal_mode(db) => create(&path, access)?,
            // SQLite creates it; `is_what_sqlite_opened` is then false.
            Ok(None) => return Ok(Wal { path, found: None }),
            Err(e) => return Err(open_error(&path, e)),
        };
        set_group(&file, access).map_err(create_error)?;
        // Waits only while a creator still holds its exclusive lock: until its fsync returned.
        flock(&file, FlockOperation::LockShared).map_err(|e| create_error(e.into()))?;
        let st = rustix::fs::fstat(&file).map_err(|e| create_error(e.into()))?;
        let found = Found {
            dev: st.st_dev,
            ino: st.st_ino,
            _file: file,
        };
        Ok(Wal {
            path,
            found: Some(found),
        })
    }

    /// Whether the WAL's name still names the file [`prepare`](Self::prepare) made durable.
    pub(crate) fn is_what_sqlite_opened(&self) -> bool {
        self.found.as_ref().is_some_and(|f| {
            rustix::fs::stat(&self.path).is_ok_and(|st| st.st_dev == f.dev && st.st_ino == f.ino)
        })
    }

    /// Makes the WAL's folder entry durable, whatever file it names now.
    pub(crate) fn sync_folder(&self) -> Result<()> {
        sync_folder(&self.path).map_err(|source| Error::CreateFile {
            path: self.path.clone(),
            source,
        })
    }
}

/// Creates the WAL under a temporary name, locks it, links it to `wal` and fsyncs the
/// folder; returns it still locked. If another process linked its WAL first, returns that.
fn create(wal: &Path, access: &Access) -> Result<File> {
    let fail = |source: std::io::Error| Error::CreateFile {
        path: wal.to_owned(),
        source,
    };
    let mut temp = wal.as_os_str().to_owned();
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    temp.push(format!(".{}.{n}.new", std::process::id()));
    let temp = PathBuf::from(temp);
    // A leftover of a killed process that had the same process ID.
    let _ = std::fs::remove_file(&temp);
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(&temp, flags, Mode::from_raw_mode(access.file_mode()))
        .map_err(|e| fail(e.into()))?;
    let file = File::from(fd);
    let prepared = rustix::fs::fchmod(&file, Mode::from_raw_mode(access.file_mode()))
        .map_err(std::io::Error::from)
        .and_then(|()| set_group(&file, access))
        // Nobody else can hold it yet: the file has no name another process would open.
        .and_then(|()| flock(&file, FlockOperation::LockExclusive).map_err(Into::into))
        .and_then(|()| rustix::fs::link(&temp, wal).map_err(Into::into));
    let _ = std::fs::remove_file(&temp);
    match prepared {
        Ok(()) => {
            sync_folder(wal).map_err(fail)?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process created it first; its lock says when its fsync is done.
            open_owned(wal, false, access.file_mode())
                .map_err(|e| open_error(wal, e))?
                .ok_or_else(|| fail(std::io::ErrorKind::NotFound.into()))
        }
        Err(e) => Err(fail(e)),
    }
}

/// Whether `db` is a SQLite database whose header says WAL mode (bytes 18 and 19 are 2):
/// SQLite deletes a WAL found beside an empty database, and one beside a foreign file
/// would change a folder the open must leave as it was.
fn in_wal_mode(db: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(db, flags, Mode::empty())
        .map(File::from)
        .is_ok_and(|mut f| f.read_exact(&mut header).is_ok())
        && header.starts_with(b"SQLite format 3\0")
        && header[18..20] == [2, 2]
}

fn set_group(file: &File, access: &Access) -> std::io::Result<()> {
    if let Some(gid) = access.group {
        rustix::fs::fchown(file, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    Ok(())
}

/// fsyncs the folder holding `file`.
fn sync_folder(file: &Path) -> std::io::Result<()> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty())?;
    rustix::fs::fsync(&fd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_missing_wal_of_a_wal_database_is_created_once_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        let mut header = b"SQLite format 3\0".to_vec();
        header.extend([16, 0, 2, 2]);
        std::fs::write(&db, &header).unwrap();
        let first = Wal::prepare(&db, &Access::default()).unwrap();
        let again = Wal::prepare(&db, &Access::default()).unwrap();
        let (a, b) = (first.found.as_ref().unwrap(), again.found.as_ref().unwrap());
        assert_eq!((a.dev, a.ino), (b.dev, b.ino));
        assert!(first.is_what_sqlite_opened());
        assert_eq!(names(dir.path()), ["ipam.db", "ipam.db-wal"]);
        let meta = std::fs::metadata(dir.path().join("ipam.db-wal")).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn no_wal_is_made_beside_a_new_or_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        std::fs::write(&db, b"not a database").unwrap();
        let wal = Wal::prepare(&db, &Access::default()).unwrap();
        assert!(!wal.is_what_sqlite_opened());
        assert_eq!(names(dir.path()), ["ipam.db"]);
    }

    #[test]
    fn a_wal_replaced_behind_our_back_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        std::fs::write(dir.path().join("ipam.db-wal"), b"").unwrap();
        let wal = Wal::prepare(&db, &Access::default()).unwrap();
        assert!(wal.is_what_sqlite_opened());
        std::fs::remove_file(dir.path().join("ipam.db-wal")).unwrap();
        std::fs::write(dir.path().join("ipam.db-wal"), b"").unwrap();
        assert!(!wal.is_what_sqlite_opened());
    }
}
