//! Where the database lives when nobody says otherwise.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable that overrides [`default_path`].
pub const PATH_ENV: &str = "IPAM_SQLITE_PATH";

/// The system-wide location, used when running as root.
const SYSTEM_PATH: &str = "/var/lib/ipam/ipam.db";

/// The database file to use when no configuration names one.
///
/// `$IPAM_SQLITE_PATH` if set and not empty; otherwise `/var/lib/ipam/ipam.db` for root
/// (where a CNI plugin runs), and for anyone else `$XDG_STATE_HOME/ipam/ipam.db`, falling back
/// to `~/.local/state/ipam/ipam.db`.
pub fn default_path() -> PathBuf {
    let root = rustix::process::geteuid().is_root();
    resolve(|k| std::env::var_os(k), root)
}

/// [`default_path`] over an explicit environment, so it can be tested without touching the
/// process's own.
fn resolve(env: impl Fn(&str) -> Option<OsString>, root: bool) -> PathBuf {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set(PATH_ENV) {
        return p;
    }
    if root {
        return PathBuf::from(SYSTEM_PATH);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(state) = set("XDG_STATE_HOME").filter(|p| p.is_absolute()) {
        return state.join("ipam/ipam.db");
    }
    match set("HOME") {
        Some(home) => home.join(".local/state/ipam/ipam.db"),
        // No home at all (a bare service account): the system location is the only sane one.
        None => PathBuf::from(SYSTEM_PATH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn override_wins_for_everyone() {
        let e = [(PATH_ENV, "/tmp/x.db"), ("HOME", "/home/u")];
        assert_eq!(resolve(env(&e), true), PathBuf::from("/tmp/x.db"));
        assert_eq!(resolve(env(&e), false), PathBuf::from("/tmp/x.db"));
    }

    #[test]
    fn root_uses_var_lib() {
        let e = [("HOME", "/root"), ("XDG_STATE_HOME", "/root/.st")];
        assert_eq!(resolve(env(&e), true), PathBuf::from(SYSTEM_PATH));
    }

    #[test]
    fn user_uses_xdg_state_then_home() {
        let e = [("HOME", "/home/u"), ("XDG_STATE_HOME", "/st")];
        assert_eq!(resolve(env(&e), false), PathBuf::from("/st/ipam/ipam.db"));
        let e = [
            ("HOME", "/home/u"),
            ("XDG_STATE_HOME", "rel"),
            (PATH_ENV, ""),
        ];
        assert_eq!(
            resolve(env(&e), false),
            PathBuf::from("/home/u/.local/state/ipam/ipam.db")
        );
        assert_eq!(resolve(env(&[]), false), PathBuf::from(SYSTEM_PATH));
    }
}
