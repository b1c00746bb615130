//! Who may read the database: the folder and files are created for the running user only
//! (or also for one configured group), whatever the umask, and nothing planted by another
//! user (a symlink, a file, a writable folder) is followed or trusted.
//!
//! The database holds pod names and namespaces, and the lock beside it stalls every ADD of
//! the host while held, so neither may be readable or lockable by other users. SQLite
//! creates `-wal` and `-shm` itself with the mode of the database file (and `fchmod`s them
//! to exactly that, past the umask; as root it also gives them the database's owner), so
//! getting the database file right is what keeps them right; existing ones are tightened.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, RawMode};

use crate::wal::Wal;
use crate::{Error, Result};

/// The environment variable naming a group (name or number) that may read the database.
pub const GROUP_ENV: &str = "IPAM_SQLITE_GROUP";

/// Who besides the running user may read the database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A group given read access (folder 0750, files 0640); `None`: the owner only (0700,
    /// 0600).
    pub group: Option<u32>,
}

/// What is wrong with a path the database would live at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// The path is a symbolic link, which would let its author choose the file written.
    #[error("it is a symbolic link")]
    Symlink,
    /// Someone else owns it, so they can change it or read it.
    #[error("it is owned by uid {owner}, not by the running user (uid {me})")]
    ForeignOwner {
        /// The owner.
        owner: u32,
        /// The running user.
        me: u32,
    },
    /// Users other than the owner can create or replace entries in the folder.
    #[error("it is writable by group or others (mode {mode:o})")]
    Writable {
        /// The permission bits.
        mode: u32,
    },
    /// It is not a regular file (or, for the folder, not a directory).
    #[error("it is not a regular file or directory of the expected kind")]
    WrongKind,
}

impl Access {
    /// The owner only, unless `$IPAM_SQLITE_GROUP` names a group.
    pub fn from_env() -> Result<Access> {
        match std::env::var(GROUP_ENV) {
            Ok(g) if !g.is_empty() => Ok(Access {
                group: Some(group_id(&g)?),
            }),
            _ => Ok(Access::default()),
        }
    }

    fn dir_mode(&self) -> RawMode {
        if self.group.is_some() { 0o750 } else { 0o700 }
    }

    pub(crate) fn file_mode(&self) -> RawMode {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }
}

/// Creates what is missing of `db`'s folder and checks it, then creates or tightens the
/// database file and any `-shm` beside it, and prepares the `-wal` ([`Wal::prepare`]). Refuses (changing nothing) a folder that
/// others can write to or do not own, and a database path that is a symlink.
pub(crate) fn prepare(db: &Path, access: &Access) -> Result<Wal> {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        create_dir(dir, access)?;
        check_dir(dir)?;
    }
    secure_file(db, true, access)?;
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    secure_file(Path::new(&shm), false, access)?;
    // After the database file: the WAL's folder sync makes the database's entry durable too.
    Wal::prepare(db, access)
}

/// Opens (creating it with `mode` if `create`) a file without following a symlink, checks
/// it is a regular file the running user owns, and sets its mode to exactly `mode`. `None`
/// when it does not exist and `create` is false.
pub fn open_owned(path: &Path, create: bool, mode: RawMode) -> Result<Option<File>, OpenError> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if create {
        flags |= OFlags::CREATE;
    }
    let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(mode)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
        // O_NOFOLLOW on a symlink fails with ELOOP: say what it means.
        Err(rustix::io::Errno::LOOP) => return Err(OpenError::Unsafe(Unsafe::Symlink)),
        Err(e) => return Err(OpenError::Io(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(OpenError::Unsafe(Unsafe::WrongKind));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(OpenError::Unsafe(Unsafe::ForeignOwner {
            owner: st.st_uid,
            me,
        }));
    }
    // Set explicitly: the umask may have removed bits we need (0640 under umask 077), and a
    // file from an older version may be 0644.
    if st.st_mode & 0o7777 != mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| OpenError::Io(e.into()))?;
    }
    Ok(Some(File::from(fd)))
}

/// Why [`open_owned`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The path is not safe to use.
    #[error("{0}")]
    Unsafe(#[source] Unsafe),
    /// The OS refused.
    #[error("{0}")]
    Io(#[source] std::io::Error),
}

/// The store's error for a file that could not be opened safely.
pub(crate) fn open_error(path: &Path, e: OpenError) -> Error {
    match e {
        OpenError::Unsafe(problem) => Error::UnsafePath {
            path: path.to_owned(),
            problem,
        },
        OpenError::Io(source) => Error::CreateFile {
            path: path.to_owned(),
            source,
        },
    }
}

fn secure_file(path: &Path, create: bool, access: &Access) -> Result<()> {
    let file = open_owned(path, create, access.file_mode()).map_err(|e| open_error(path, e))?;
    if let (Some(file), Some(gid)) = (file, access.group) {
        let gid = rustix::fs::Gid::from_raw(gid);
        rustix::fs::fchown(&file, None, Some(gid)).map_err(|e| Error::CreateFile {
            path: path.to_owned(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Creates the missing folders of `dir` with the access mode (set exactly, past the umask),
/// leaving existing ones alone.
fn create_dir(dir: &Path, access: &Access) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_owned)
        .collect();
    missing.reverse();
    for d in missing {
        let made = std::fs::DirBuilder::new()
            .mode(access.dir_mode())
            .create(&d);
        let made = made.and_then(|()| {
            let mode = Mode::from_raw_mode(access.dir_mode());
            rustix::fs::chmod(&d, mode)?;
            if let Some(gid) = access.group {
                rustix::fs::chown(&d, None, Some(rustix::fs::Gid::from_raw(gid)))?;
            }
            Ok(())
        });
        match made {
            Ok(()) => {}
            // Another process made it first; check_dir judges it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::CreateDir { path: d, source }),
        }
    }
    Ok(())
}

/// Refuses a folder that someone else owns or that group or others can write to: they
/// could swap the database or plant a symlink in it.
fn check_dir(dir: &Path) -> Result<()> {
    let st = rustix::fs::stat(dir).map_err(|e| Error::CreateDir {
        path: dir.to_owned(),
        source: e.into(),
    })?;
    let refuse = |problem| Error::UnsafePath {
        path: dir.to_owned(),
        problem,
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Err(refuse(Unsafe::WrongKind));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(refuse(Unsafe::ForeignOwner {
            owner: st.st_uid,
            me,
        }));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(refuse(Unsafe::Writable {
            mode: st.st_mode & 0o7777,
        }));
    }
    Ok(())
}

/// A group number, or a name looked up in `/etc/group`.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let unknown = || Error::UnknownGroup {
        group: group.to_owned(),
    };
    let table = std::fs::read_to_string("/etc/group").map_err(|_| unknown())?;
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_number_and_name() {
        assert_eq!(group_id("1234").unwrap(), 1234);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(matches!(
            group_id("no-such-group-here"),
            Err(Error::UnknownGroup { .. })
        ));
    }

    #[test]
    fn modes_follow_the_access() {
        assert_eq!(Access::default().file_mode(), 0o600);
        assert_eq!(Access { group: Some(5) }.dir_mode(), 0o750);
    }
}
