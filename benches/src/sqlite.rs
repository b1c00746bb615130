//! What the SQLite benchmarks share with their worker processes: the durable-commit floor,
//! fresh database files, and the one-line report a worker prints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipam_core::OpCounts;
use rusqlite::{Connection, TransactionBehavior};

/// Name of the worker binary the multi-process benchmark starts.
pub const WORKER_BIN: &str = "sqlite-worker";

/// The raw floor: one-row durable commits on a connection set up as `SqliteStore` sets up
/// its own (WAL, `synchronous=FULL`, the same busy timeout).
pub struct RawCommit {
    conn: Connection,
}

/// What one worker process measured, printed as one `key=value` line on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// auto_assign + release_by_handle cycles done in the timed loop.
    pub cycles: u64,
    /// When the timed loop started, in nanoseconds since the Unix epoch.
    pub start_ns: u128,
    /// When the timed loop ended, in nanoseconds since the Unix epoch.
    pub end_ns: u128,
    /// Datastore round trips of the timed loop.
    pub ops: OpCounts,
}

/// A worker report line that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed worker report {line:?}")]
pub struct BadReport {
    /// The line as printed.
    pub line: String,
}

impl RawCommit {
    /// Opens (creating) `path` with the store's pragmas and a one-row table.
    pub fn open(path: &Path) -> crate::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(ipam_sqlite::BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(crate::Error::NotWal { mode });
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO floor (id, n) VALUES (1, 0);",
        )?;
        Ok(RawCommit { conn })
    }

    /// One write transaction changing one row, committed durably.
    pub fn commit_one(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("UPDATE floor SET n = n + 1 WHERE id = 1")?
            .execute([])?;
        tx.commit()
    }
}

/// Removes a database and its WAL and shared-memory files, so a run starts from nothing.
pub fn remove_db(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl WorkerReport {
    /// Length of the timed loop.
    pub fn elapsed(&self) -> Duration {
        let ns = self.end_ns.saturating_sub(self.start_ns);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.ops;
        write!(
            f,
            "cycles={} start_ns={} end_ns={} gets={} lists={} creates={} updates={} deletes={}",
            self.cycles,
            self.start_ns,
            self.end_ns,
            c.gets,
            c.lists,
            c.creates,
            c.updates,
            c.deletes
        )
    }
}

impl FromStr for WorkerReport {
    type Err = BadReport;

    fn from_str(line: &str) -> Result<Self, BadReport> {
        let bad = || BadReport {
            line: line.to_owned(),
        };
        let mut r = WorkerReport::default();
        for field in line.split_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(bad)?;
            let n: u128 = value.parse().map_err(|_| bad())?;
            let small = || u64::try_from(n).map_err(|_| bad());
            match key {
                "cycles" => r.cycles = small()?,
                "start_ns" => r.start_ns = n,
                "end_ns" => r.end_ns = n,
                "gets" => r.ops.gets = small()?,
                "lists" => r.ops.lists = small()?,
                "creates" => r.ops.creates = small()?,
                "updates" => r.ops.updates = small()?,
                "deletes" => r.ops.deletes = small()?,
                _ => return Err(bad()),
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_its_line() {
        let r = WorkerReport {
            cycles: 7,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
            ops: OpCounts {
                gets: 1,
                lists: 2,
                creates: 3,
                updates: 4,
                deletes: 5,
            },
        };
        assert_eq!(r.to_string().parse::<WorkerReport>().unwrap(), r);
        assert_eq!(r.elapsed(), Duration::from_secs(1));
        assert!("cycles=x".parse::<WorkerReport>().is_err());
        assert!("bogus=1".parse::<WorkerReport>().is_err());
    }

    #[test]
    fn raw_commit_is_durable_and_counts() {
        let dir = std::env::temp_dir().join(format!("ipam-bench-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raw.db");
        remove_db(&path).unwrap();
        let mut raw = RawCommit::open(&path).unwrap();
        raw.commit_one().unwrap();
        raw.commit_one().unwrap();
        let n: i64 = raw
            .conn
            .query_row("SELECT n FROM floor WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let sync: i64 = raw
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL, as the store uses");
        drop(raw);
        remove_db(&path).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
