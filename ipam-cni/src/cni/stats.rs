//! The plugin's own metrics: each ADD and DEL adds its latency, outcome and conflicts to a
//! node-local file ([`ipam_core::stats`]), which `ipamctl serve` renders on `/metrics`.
//!
//! Recording never changes an operation's answer: a file that cannot be written is logged
//! and skipped. The file is rewritten in place under an exclusive `flock`, so concurrent
//! plugins add up and a reader (under a shared lock) never sees half of it. It is not
//! synced: losing the last totals in a crash reads, to Prometheus, as a counter reset.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ipam_core::stats::{MAX_FILE_BYTES, PluginStats, Sample};
use rustix::fs::{FlockOperation, flock};

use super::log::Logger;

/// Adds `sample` to the totals in `path`, logging (not failing) when it cannot.
pub fn record(path: &Path, sample: Sample<'_>, log: &Logger) {
    match add(path, sample) {
        Ok(Kept::Added) => {}
        Ok(Kept::Restarted(why)) => log.warn(format_args!(
            "the plugin stats file {} was not readable ({why}); its totals start again",
            path.display()
        )),
        Err(e) => log.warn(format_args!(
            "cannot record the operation in {}: {e}",
            path.display()
        )),
    }
}

/// What happened to the totals already in the file.
#[derive(Debug, PartialEq)]
enum Kept {
    Added,
    /// They were unreadable and were replaced; why.
    Restarted(String),
}

fn add(path: &Path, sample: Sample<'_>) -> Result<Kept, Box<dyn std::error::Error>> {
    // The same checks as the host lock: created 0600, no symlink, owned by us.
    let Some(file) = ipam_sqlite::files::open_owned(path, true, 0o600)? else {
        return Err("the file vanished while it was created".into());
    };
    flock(&file, FlockOperation::LockExclusive)?;
    // Room for what the plugin writes (well under 1 KiB), so it is read in one call.
    let mut text = Vec::with_capacity(2048);
    (&file).take(MAX_FILE_BYTES + 1).read_to_end(&mut text)?;
    let (mut stats, kept) = parse(&text);
    stats.record(sample);
    let mut out = serde_json::to_vec(&stats)?;
    // Padded with spaces (which JSON allows after the value) to the old length rather than
    // truncated: a truncate cost a quarter of a millisecond, a tenth of an ADD.
    if out.len() < text.len() {
        if text.len() as u64 > MAX_FILE_BYTES {
            // Not the plugin's file: it is replaced, not kept at its size.
            file.set_len(out.len() as u64)?;
        } else {
            out.resize(text.len(), b' ');
        }
    }
    file.write_all_at(&out, 0)?;
    Ok(kept)
}

/// The totals in `text`, or none (and why) when the plugin cannot have written it.
fn parse(text: &[u8]) -> (PluginStats, Kept) {
    match PluginStats::parse(text) {
        Ok(stats) => (stats.unwrap_or_default(), Kept::Added),
        Err(why) => (PluginStats::default(), Kept::Restarted(why)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use ipam_core::stats::Outcome;

    use super::*;

    fn add_ok(seconds: f64, conflicts: u64) -> Sample<'static> {
        Sample {
            operation: "add",
            outcome: Outcome::Ok,
            seconds,
            conflicts,
        }
    }

    fn read(path: &Path) -> PluginStats {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn totals_add_up_across_runs_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.stats");
        let log = Logger::new(super::super::log::Level::Warn, None);
        record(&path, add_ok(0.003, 1), &log);
        record(&path, add_ok(0.004, 2), &log);
        let stats = read(&path);
        assert_eq!(stats.operations.len(), 1);
        assert_eq!(
            (stats.operations[0].count, stats.operations[0].conflicts),
            (2, 3)
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn a_shorter_rewrite_is_padded_and_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.stats");
        let log = Logger::new(super::super::log::Level::Warn, None);
        record(&path, add_ok(0.123456789, 0), &log);
        // Totals followed by room to spare: the next rewrite is shorter than the file.
        let mut padded = std::fs::read(&path).unwrap();
        padded.resize(padded.len() + 40, b' ');
        std::fs::write(&path, &padded).unwrap();
        record(&path, add_ok(0.5, 0), &log);
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), padded.len(), "the file was not truncated");
        assert!(after.ends_with(b" "));
        let stats = read(&path);
        assert_eq!(stats.operations[0].count, 2);
        assert!((stats.operations[0].seconds_sum - 0.623456789).abs() < 1e-9);
    }

    #[test]
    fn a_damaged_file_restarts_the_totals_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.stats");
        std::fs::write(&path, br#"{"operations":[{"operation":"add"}]}"#).unwrap();
        let logfile = dir.path().join("log");
        let log = Logger::new(super::super::log::Level::Warn, Some(&logfile));
        record(&path, add_ok(0.003, 0), &log);
        assert_eq!(read(&path).operations[0].count, 1);
        let logged = std::fs::read_to_string(&logfile).unwrap();
        assert!(logged.contains("start again"), "{logged}");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("ipam-cni.stats");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let logfile = dir.path().join("log");
        let log = Logger::new(super::super::log::Level::Warn, Some(&logfile));
        record(&path, add_ok(0.003, 0), &log);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let logged = std::fs::read_to_string(&logfile).unwrap();
        assert!(logged.contains("symbolic link"), "{logged}");
    }

    #[test]
    fn concurrent_writers_lose_no_operation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.db.stats");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let log = Logger::new(super::super::log::Level::Off, None);
                    for _ in 0..25 {
                        record(&path, add_ok(0.001, 0), &log);
                    }
                });
            }
        });
        assert_eq!(read(&path).operations[0].count, 200);
    }
}
