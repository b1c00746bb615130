//! The host-wide allocation lock: an exclusive `flock` on a file beside the database.
//!
//! It single-flights allocations on one host so concurrent plugin processes queue instead of
//! colliding on the same block and retrying. Correctness does not depend on it (every write
//! is a compare-and-swap), so a lock that cannot be taken in time, or at all, is logged and
//! the allocation goes ahead without it.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

use super::log::Logger;

/// How long to wait for the lock before going ahead without it.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A held lock (or none, when it could not be taken); released on drop (the kernel drops a
/// `flock` when its file is closed, also when the process dies).
#[derive(Debug)]
pub struct HostLock {
    _file: Option<File>,
}

impl HostLock {
    /// Takes the lock on `path`, waiting at most `wait`. Never fails: problems are logged
    /// and an empty guard is returned.
    pub async fn acquire(path: Option<&Path>, wait: Duration, log: &Logger) -> HostLock {
        let Some(path) = path else {
            return HostLock { _file: None };
        };
        let file = match open(path) {
            Ok(f) => f,
            Err(e) => {
                log.warn(format_args!(
                    "cannot open the lock file {}: {e}; allocating without the host lock",
                    path.display()
                ));
                return HostLock { _file: None };
            }
        };
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return HostLock { _file: Some(file) };
        }
        // Contended: wait in a blocking thread, so the wait can be bounded by a timer.
        let owned: PathBuf = path.to_owned();
        let waiter = tokio::task::spawn_blocking(move || {
            flock(&file, FlockOperation::LockExclusive).map(|()| file)
        });
        match tokio::time::timeout(wait, waiter).await {
            Ok(Ok(Ok(file))) => HostLock { _file: Some(file) },
            Ok(Ok(Err(e))) => {
                log.warn(format_args!(
                    "cannot lock {}: {e}; allocating without the host lock",
                    owned.display()
                ));
                HostLock { _file: None }
            }
            Ok(Err(e)) => {
                log.warn(format_args!(
                    "lock waiter failed: {e}; allocating without the host lock"
                ));
                HostLock { _file: None }
            }
            Err(_) => {
                log.warn(format_args!(
                    "the host lock {} was not free within {}s; allocating without it",
                    owned.display(),
                    wait.as_secs()
                ));
                HostLock { _file: None }
            }
        }
    }

    /// Whether the lock is actually held.
    pub fn is_held(&self) -> bool {
        self._file.is_some()
    }
}

/// The node-local file `suffix` names beside the lock file `lock` (`ipam.lock.upgraded`).
pub fn beside(lock: &Path, suffix: &str) -> PathBuf {
    let mut name = lock.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens (creating it 0600, past the umask) the lock file without following a symlink, and
/// refuses one owned by someone else: whoever can open the file can hold the lock and stall
/// every ADD on the host for [`LOCK_WAIT`], so only its owner may. A missing directory is
/// made (0700), as calico-ipam makes the one of its `ipam_lock_file`.
fn open(path: &Path) -> Result<File, ipam_sqlite::files::OpenError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ipam_sqlite::files::OpenError::Io)?;
    }
    ipam_sqlite::files::open_owned(path, true, 0o600)?
        // The invariant: with `create` set, `open_owned` returns a file or an error.
        .ok_or_else(|| ipam_sqlite::files::OpenError::Io(std::io::ErrorKind::NotFound.into()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn second_taker_waits_then_degrades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.lock");
        let logfile = dir.path().join("log");
        let log = Logger::new(super::super::log::Level::Warn, Some(&logfile));
        let rt = rt();
        let first = rt.block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(first.is_held());
        // flock locks belong to the open file description, so a second open contends.
        let second = rt.block_on(HostLock::acquire(
            Some(&path),
            Duration::from_millis(50),
            &log,
        ));
        assert!(!second.is_held());
        assert!(
            std::fs::read_to_string(&logfile)
                .unwrap()
                .contains("without it")
        );
        drop(first);
        let third = rt.block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(third.is_held());
    }

    #[test]
    fn an_unopenable_lock_file_degrades() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let log = Logger::new(super::super::log::Level::Off, None);
        let lock = rt().block_on(HostLock::acquire(
            Some(&file.join("x/ipam.db.lock")),
            LOCK_WAIT,
            &log,
        ));
        assert!(!lock.is_held());
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calico/ipam.lock");
        let log = Logger::new(super::super::log::Level::Off, None);
        let lock = rt().block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(lock.is_held());
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("ipam-cni.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let logfile = dir.path().join("log");
        let log = Logger::new(super::super::log::Level::Warn, Some(&logfile));
        let lock = rt().block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(!lock.is_held());
        assert!(
            std::fs::read_to_string(&logfile)
                .unwrap()
                .contains("symbolic link")
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let mode = std::fs::metadata(&target).unwrap().permissions();
        assert_ne!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn the_lock_is_private_and_a_foreign_one_is_refused() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root: it runs a probe as uid 65534 and changes a file's owner"
        );
        let dir = tempfile::tempdir().unwrap();
        // Open the folder up: only the file's own mode may keep the probe out.
        let open_mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.path(), open_mode).unwrap();
        let path = dir.path().join("ipam.db.lock");
        let log = Logger::new(super::super::log::Level::Off, None);
        let held = rt().block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(held.is_held());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        drop(held);
        // util-linux flock(1) opens the file and takes the lock: as uid 65534 it cannot.
        let probe = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["flock", "-n", "-E", "7"])
            .arg(&path)
            .arg("true")
            .status()
            .expect("setpriv and flock (util-linux) are needed for this test");
        assert!(!probe.success(), "an unprivileged user took the lock");
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let foreign = rt().block_on(HostLock::acquire(Some(&path), LOCK_WAIT, &log));
        assert!(
            !foreign.is_held(),
            "a lock file owned by another user was used"
        );
    }
}
